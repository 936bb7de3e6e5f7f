"""Training: groups one at a time, the objective's options, logs, checkpoints of a run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TRAIN_DATA_SUBSET as SUBSET
from tests.conftest import assert_clean_error, run_cli


@pytest.fixture
def data(train_zarr: Path) -> Path:
    return train_zarr  # the shared training source (conftest)


def _train(data: Path, out: Path, steps: int, *extra: str, subset: str = SUBSET) -> None:
    res = run_cli("train", data, "--subset", subset, "--out", out, "--steps", str(steps),
                  "--batch-size", "4", "--device", "cpu", "--checkpoint-every", "2",
                  "--val-every", "2", *extra)
    assert res.exit_code == 0, res.stderr


def test_groups_trained_apart_and_combined_equal_a_joint_run(data: Path, tmp_path: Path) -> None:
    joint, z, s, both = (tmp_path / f"{n}.safetensors" for n in ("joint", "z", "s", "both"))
    extra = ("--adversarial-weight", "0.5", "--disc-start", "1")
    _train(data, joint, 3, *extra)
    _train(data, z, 3, "--group", "z", *extra)
    _train(data, s, 3, "--group", "surface", *extra)
    res = run_cli("combine", z, s, "--out", both)
    assert res.exit_code == 0, res.stderr
    a, b = load_file(str(joint)), load_file(str(both))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)  # bit for bit
    from era5latent.model.checkpoint import load_checkpoint, read_meta

    assert set(read_meta(str(both)).groups) == {"z", "surface"}
    load_checkpoint(str(both))  # strict load of the combined file


def test_combine_refuses_what_is_not_one_model(data: Path, tmp_path: Path) -> None:
    z, z2, small = (tmp_path / f"{n}.safetensors" for n in ("z", "z2", "small"))
    _train(data, z, 1, "--group", "z")
    _train(data, z2, 1, "--group", "z", "--seed", "1")
    _train(data, small, 1, "--group", "surface", "--preset", "small")
    assert_clean_error(run_cli("combine", z, z2, "--out", tmp_path / "o.safetensors"),
                       "group 'z' is in more than one")
    assert_clean_error(run_cli("combine", z, small, "--out", tmp_path / "o.safetensors"),
                       "another preset")
    assert not (tmp_path / "o.safetensors").exists()
    assert_clean_error(run_cli("train", data, "--subset", SUBSET, "--out", tmp_path / "x",
                               "--group", "q", "--device", "cpu"), "--group 'q'")


def test_ema_weights_are_saved_and_differ_from_the_raw_ones(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    _train(data, out, 4, "--ema", "0.5")
    from era5latent.model.checkpoint import split_mean_fields

    saved, mean_fields = split_mean_fields(load_file(str(out)))
    assert mean_fields  # z and the sample's t2m are normalised by their mean fields
    state = load_file(str(out) + ".state.safetensors")
    raw = {k[4:]: v for k, v in state.items() if k.startswith("raw.")}
    assert raw.keys() == saved.keys()
    moved = [k for k in saved if not torch.equal(saved[k], raw[k])]
    assert len(moved) > len(saved) // 2  # the checkpoint holds the average, not the raw weights
    from era5latent.model.checkpoint import read_meta

    assert read_meta(str(out)).training["weights"] == "ema"


@pytest.mark.parametrize("extra", [("--ema", "0.9"), ("--adversarial-weight", "0.5"),
                                   ("--quantizer", "upstream"), ("--level-weights", "none"),
                                   ("--grad-accum", "2")])
def test_each_option_resumes_to_the_uninterrupted_state(data: Path, tmp_path: Path,
                                                       extra: tuple[str, ...]) -> None:
    full, cut = tmp_path / "full.safetensors", tmp_path / "cut.safetensors"
    _train(data, full, 4, *extra)
    _train(data, cut, 2, "--resume", *extra)  # nothing to resume: a fresh run, stopped at 2 ...
    _train(data, cut, 4, "--resume", *extra)  # ... and continued
    a, b = load_file(str(full)), load_file(str(cut))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_options_change_the_objective(data: Path, tmp_path: Path) -> None:
    """Each objective option changes what is optimised: the logged loss terms say how."""
    def last(log_dir: Path) -> dict[str, float]:
        rows = list(csv.DictReader(open(log_dir / "metrics.csv")))
        return {k: float(v) for k, v in rows[-1].items() if v}

    runs = {}
    for name, extra in {"base": (), "adv": ("--adversarial-weight", "1.0"),
                        "up": ("--quantizer", "upstream")}.items():
        logs = tmp_path / name
        _train(data, tmp_path / f"{name}.safetensors", 2, "--log-dir", str(logs),
               "--log-every", "1", *extra)
        runs[name] = last(logs)
    assert "z/g_loss" not in runs["base"] and "z/g_loss" in runs["adv"]
    assert runs["adv"]["z/d_weight"] > 0 and runs["adv"]["z/d_loss"] > 0
    # upstream's entropy form sums nats over the 32 bits: far larger terms than bits averaged
    assert runs["up"]["z/entropy_sample"] > 5 * runs["base"]["z/entropy_sample"]
    for r in runs.values():
        assert {"lr", "samples_per_second", "val_rmse/z500", "val_rmse/t2m"} <= set(r)
    # TensorBoard event files and a scoreable checkpoint per save
    assert list((tmp_path / "base").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "base" / "checkpoints").iterdir()) == [
        "step0000002.safetensors"]


def test_level_weights_follow_the_variance() -> None:
    from era5latent.training.losses import level_weights
    from era5latent.io.variables import parse_subset

    chs = parse_subset("t500,t850,z500")
    std = {"t500": 1.0, "t850": 2.0, "z500": 3.0}
    assert torch.equal(level_weights(chs, std, "variance"), torch.ones(3))  # z: not level-weighted
    w = level_weights(parse_subset("t500,t850"), std, "variance")
    torch.testing.assert_close(w, torch.tensor([0.4, 1.6]))  # var 1 and 4, mean 1
    assert torch.equal(level_weights(parse_subset("t500,t850"), std, "none"), torch.ones(2))


def test_a_fooled_discriminator_lowers_the_adversarial_term() -> None:
    from era5latent.model.discriminator import PatchDiscriminator
    from era5latent.training.losses import hinge_d_loss, hinge_g_loss

    torch.manual_seed(0)
    disc = PatchDiscriminator(32, 32)
    x = torch.randn(2, 3, 33, 64)
    meta = torch.tensor([500.0, 850.0, 1000.0])
    logits = disc(x, meta)
    assert logits.shape[:2] == (2, 1)
    # any channel subset, any order: permuting (x, meta) together gives the same logits
    p = torch.tensor([2, 0, 1])
    torch.testing.assert_close(disc(x[:, p], meta[p]), logits, rtol=1e-4, atol=1e-5)
    # the generator's term falls as the discriminator calls its fakes real
    assert hinge_g_loss(logits + 1.0) < hinge_g_loss(logits)
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    assert hinge_d_loss(torch.full((4,), -1.0), torch.full((4,), 1.0)) == 2


def test_upstream_quantizer_form_scales_the_straight_through_gradient() -> None:
    from era5latent.model.wla import WLA, preset_config

    torch.manual_seed(0)
    model = WLA(preset_config("tiny", (33, 64), ("z",)))
    ae = model.autoencoders["z"]
    x = torch.randn(1, 2, 33, 64)
    meta = torch.tensor([500.0, 850.0])
    grads = []
    for gain in (1.0, 1 / 32 ** 0.5):
        out = ae(x, meta, gain)
        (g,) = torch.autograd.grad(out.recon.square().mean(), ae.quantizer.proj.weight)
        grads.append(g)  # the gradient reaching the encoder through the sign
    torch.testing.assert_close(grads[1], grads[0] / 32 ** 0.5)


@pytest.mark.slow
def test_tiny_preset_with_the_defaults_learns_better_than_the_mean(tmp_path: Path) -> None:
    """Every option at its default but the step budget: on held-out times the reconstruction
    beats the training period's mean field by a margin (fails if learning regresses)."""
    import era5latent
    import xarray as xr

    data = tmp_path / "d.zarr"
    assert run_cli("sample", data, "--grid", "33x64", "--times", "96", "--variables", "z,t",
                   "--levels", "500,850", "--seed", "3").exit_code == 0
    out = tmp_path / "m.safetensors"
    subset = "z500,z850,t500,t850"
    res = run_cli("train", data, "--subset", subset, "--out", out, "--steps", "150",
                  "--device", "cpu", "--time", "2020-01-01/2020-01-21T18")
    assert res.exit_code == 0, res.stderr
    assert "codes z:" in res.stdout and "bits of entropy per stored bit" in res.stdout
    ds = xr.open_zarr(data)
    train_times, test_times = ds.time.values[:84], ds.time.values[84:]
    recon = era5latent.decode(era5latent.encode(ds.sel(time=test_times), str(out), subset,
                                                device="cpu"), str(out), device="cpu")
    w = np.cos(np.deg2rad(ds.latitude.values))[:, None]
    for name, level in (("geopotential", 500), ("temperature", 850)):
        truth = ds[name].sel(level=level)
        mean_field = truth.sel(time=train_times).mean("time").values
        test = truth.sel(time=test_times).values
        rec = recon[name].sel(level=level).values

        def rmse(pred: np.ndarray) -> float:
            return float(np.sqrt(((pred - test) ** 2 * w).mean() / w.mean()))

        assert rmse(rec) < 0.9 * rmse(mean_field), (name, rmse(rec), rmse(mean_field))


def test_dry_run_prints_the_memory_and_writes_nothing(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    res = run_cli("train", data, "--subset", SUBSET, "--out", out, "--dry-run", "--batch-size",
                  "4", "--memory-budget", "1")
    assert res.exit_code == 0, res.stderr
    assert "saved activations (one group, batch 4)" in res.stdout
    assert "largest batch per rank in 1 GB" in res.stdout
    assert not out.exists()
    with_ckpt = run_cli("train", data, "--subset", SUBSET, "--out", out, "--dry-run",
                        "--batch-size", "4", "--checkpoint-activations")
    line = [ln for ln in res.stdout.splitlines() if "saved activations" in ln][0]
    line_ck = [ln for ln in with_ckpt.stdout.splitlines() if "saved activations" in ln][0]
    assert float(line_ck.split()[-2]) <= float(line.split()[-2])


def test_no_adversarial_term_for_precipitation() -> None:
    from era5latent.training.loop import _adversarial_ok
    from era5latent.io.variables import parse_subset

    assert _adversarial_ok(parse_subset("t2m,msl"))
    assert not _adversarial_ok(parse_subset("t2m,tp"))  # the surface group holds precipitation


def test_decoded_precipitation_is_never_negative() -> None:
    import numpy as np

    from era5latent.model.checkpoint import CheckpointMeta, LoadedModel
    from era5latent.model.wla import WLA, preset_config
    from era5latent.pipeline import decode_fields
    from era5latent.io.variables import group_channels, parse_subset

    chs = parse_subset("msl,tp")
    cfg = preset_config("tiny", (33, 64), ("surface",))
    torch.manual_seed(0)
    meta = CheckpointMeta(cfg, group_channels(chs), {"msl": {"mean": 0.0, "std": 1.0},
                                                      "tp": {"mean": 0.0, "std": 1.0}}, {})
    loaded = LoadedModel(WLA(cfg).eval(), meta, "0" * 64, "m.safetensors")
    h, w = cfg.token_grid
    packed = np.random.default_rng(0).integers(0, 256, (2, h, w, cfg.code_bytes), dtype=np.uint8)
    from types import SimpleNamespace

    out = decode_fields(loaded, group_channels(chs), {"surface": SimpleNamespace(
        code_bits=cfg.code_bits)}, {"surface": packed}, 2, torch.device("cpu"), "fp32")
    assert out[chs[0]].min() < 0  # the untrained model's raw output goes below zero ...
    assert out[chs[1]].min() == 0  # ... and precipitation is clipped there


def test_evaluate_scores_a_checkpoint_of_a_run(data: Path, tmp_path: Path) -> None:
    import json

    logs = tmp_path / "logs"
    _train(data, tmp_path / "m.safetensors", 2, "--log-dir", str(logs))
    ckpt = logs / "checkpoints" / "step0000002.safetensors"
    res = run_cli("evaluate", data, "--model", ckpt, "--baselines", "none", "--time",
                  "2020-01-05/", "--json", "-")
    assert res.exit_code == 0, res.stderr
    records = json.loads(res.stdout)["records"]
    assert {r["channel"] for r in records if r["method"] == "wla"} == {"z500", "z850", "t2m"}
    assert all(r["rmse"] > 0 for r in records)
