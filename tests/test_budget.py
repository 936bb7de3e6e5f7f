"""When training stops: --max-time, patience, and --resume after either (training.budget)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.conftest import TRAIN_DATA_SUBSET as SUBSET
from tests.conftest import assert_clean_error, run_cli


def _opts(**kw: object) -> object:
    from era5latent.training import TrainOptions

    base: dict[str, object] = dict(batch_size=4, device="cpu", val_every=2, checkpoint_every=50,
                                   warmup_steps=2, val_fraction=0.2)
    return TrainOptions(**(base | kw))  # type: ignore[arg-type]


def _train(data: Path, out: Path, opts: object) -> object:
    from era5latent.io.sources import open_source
    from era5latent.training import train
    from era5latent.io.variables import parse_subset

    return train(open_source(str(data)), parse_subset(SUBSET), str(out), opts)  # type: ignore


def test_budget_rules() -> None:
    from era5latent.training.budget import Budget, parse_duration

    assert parse_duration("90s") == 90 and parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400 and parse_duration("2.5") == 2.5
    b = Budget(steps=None, max_time=100.0, warmup_steps=10, patience=2, decay_fraction=0.2)
    assert b.lr(0, 1.0) == pytest.approx(0.1) and b.lr(50, 1.0) == 1.0  # warm-up, then stable
    b.validated(1.0)
    b.validated(0.999)  # under min_delta: no improvement
    b.decide(40, 10.0, 0.1)
    assert b.decay_start is None  # one bad validation, patience 2
    b.validated(0.9999)
    b.decide(50, 10.0, 0.1)
    assert (b.decay_start, b.decay_steps, b.decay_reason) == (50, 10, "patience")
    assert b.lr(55, 1.0) < 1.0 and b.lr(60, 1.0) == pytest.approx(0.05)
    b.decide(59, 11.0, 0.1)
    assert not b.stopped
    b.decide(60, 11.0, 0.1)
    assert b.stop_reason == "patience" and b.stopped_at == 60
    t = Budget(steps=None, max_time=100.0, warmup_steps=0)
    t.decide(10, 80.0, 1.0)  # 80% of the time: decay over what the remaining 20 s allow
    assert t.decay_reason == "max-time" and t.decay_steps == 19
    t.decide(12, 100.0, 1.0)
    assert t.stop_reason == "max-time"
    again = Budget(steps=None, max_time=50.0)
    again.resume(t.state())  # a new run after a time stop: stable phase again, its own budget
    assert not again.stopped and again.decay_start is None and again.max_time == 50.0
    done = Budget(steps=None, max_time=50.0)
    done.resume(b.state())
    assert done.stopped and done.stop_reason == "patience"
    fixed = Budget(steps=100, max_time=None)
    fixed.decide(99, 1e6, 1.0)
    assert not fixed.stopped
    fixed.decide(100, 1e6, 1.0)
    assert fixed.stop_reason == "steps" and math.isinf(fixed.best_val)


def test_bad_durations_are_one_line_errors(train_zarr: Path, tmp_path: Path) -> None:
    for bad in ("soon", "-5m", "0", "10 minutes"):
        res = run_cli("train", train_zarr, "--subset", SUBSET, "--out", tmp_path / "m",
                      "--max-time", bad)
        assert_clean_error(res, "--max-time", "10m")


def test_max_time_stops_with_a_usable_checkpoint_and_resume_goes_on(train_zarr: Path,
                                                                     tmp_path: Path) -> None:
    from era5latent.model.checkpoint import load_checkpoint, read_meta

    out = tmp_path / "m.safetensors"
    res = run_cli("train", train_zarr, "--subset", SUBSET, "--out", out, "--max-time", "4s",
                  "--batch-size", "4", "--device", "cpu", "--val-every", "5")
    assert res.exit_code == 0, res.stderr
    assert "stopped: --max-time reached" in res.stdout
    meta = read_meta(str(out))
    first = meta.training["steps"]
    assert first > 0 and meta.training["stop_reason"] == "max-time"
    load_checkpoint(str(out))  # whole and loadable
    enc = run_cli("encode", train_zarr, "--model", out, "--subset", SUBSET, "--out",
                  tmp_path / "l.zarr", "--device", "cpu")
    assert enc.exit_code == 0, enc.stderr
    res = run_cli("train", train_zarr, "--subset", SUBSET, "--out", out, "--max-time", "3s",
                  "--batch-size", "4", "--device", "cpu", "--val-every", "5", "--resume")
    assert res.exit_code == 0, res.stderr
    assert read_meta(str(out)).training["steps"] > first  # went on from where it stopped


def test_patience_stops_records_why_and_resume_has_nothing_to_do(train_zarr: Path,
                                                                 tmp_path: Path) -> None:
    from era5latent.model.checkpoint import read_meta

    out = tmp_path / "m.safetensors"
    # a 99% improvement per validation is never met: patience runs out at the second one
    res = _train(train_zarr, out, _opts(patience=1, min_delta=0.99, max_time=600.0))
    assert res.stop_reason == "patience"  # type: ignore[attr-defined]
    meta = read_meta(str(out)).training
    assert meta["stop_reason"] == "patience"
    budget = meta["budget"]
    assert budget["decay_reason"] == "patience" and budget["decay_start"] == 4
    assert meta["steps"] == budget["decay_start"] + budget["decay_steps"]
    steps = meta["steps"]
    again = _train(train_zarr, out, _opts(patience=1, min_delta=0.99, max_time=600.0,
                                          resume=True))
    assert again.stop_reason == "finished"  # type: ignore[attr-defined]
    assert read_meta(str(out)).training["steps"] == steps
    # --steps beyond where it stopped: a fixed run continues from the checkpoint
    more = _train(train_zarr, out, _opts(patience=1, min_delta=0.99, steps=steps + 2,
                                         resume=True))
    assert more.steps == steps + 2 and more.stop_reason == "steps"  # type: ignore[attr-defined]


def test_train_reports_the_codes_use_of_their_bits(train_zarr: Path, tmp_path: Path) -> None:
    res = _train(train_zarr, tmp_path / "m.safetensors", _opts(steps=4))
    usage = res.code_usage  # type: ignore[attr-defined]
    assert set(usage) == {"z", "surface"}
    for u in usage.values():
        assert 0.0 <= u["entropy_per_bit"] <= 1.0 and 0.0 <= u["constant_bits"] <= 1.0
        assert 0 < u["bytes_per_value"] <= u["raw_bytes_per_value"] * 1.05
