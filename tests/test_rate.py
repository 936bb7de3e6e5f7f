"""A rate the user chooses (train --target-bpv/--target-ratio) and the codes' use of their bits
(info, evaluation.bitusage), checked against independent numpy computations on real stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import TRAIN_DATA_SUBSET as SUBSET
from tests.conftest import assert_clean_error, run_cli


def _numpy_usage(store: Path, group: str, channels: int) -> tuple[float, float]:
    """Entropy per stored bit and bytes per value on disk, by hand: every bit position's
    frequency of ones over time and members, H(p) averaged; the codes' chunk files summed."""
    root = zarr.open_group(str(store), mode="r")
    arr = root[f"codes_{group}"]
    packed = np.asarray(arr[...])
    bits = np.unpackbits(packed, axis=-1)[..., :arr.attrs["code_bits"]]
    p = bits.reshape(-1, *bits.shape[-3:]).mean(axis=0)
    h = np.zeros_like(p)
    inner = (p > 0) & (p < 1)
    q = p[inner]
    h[inner] = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    chunk_dir = store / f"codes_{group}" / "c"
    on_disk = sum(f.stat().st_size for f in chunk_dir.rglob("*") if f.is_file())
    lat, lon = root["latitude"].shape[0], root["longitude"].shape[0]
    values = packed.shape[0] * int(np.prod(packed.shape[1:-3])) * channels * lat * lon
    return float(h.mean()), on_disk / values


@pytest.fixture(scope="module")
def rated(tmp_path_factory: pytest.TempPathFactory, train_zarr: Path) -> tuple[Path, Path, str]:
    tmp = tmp_path_factory.mktemp("rate")
    model, store = tmp / "m.safetensors", tmp / "l.zarr"
    res = run_cli("train", train_zarr, "--subset", SUBSET, "--out", model, "--steps", "40",
                  "--batch-size", "4", "--device", "cpu", "--target-bpv", "0.05")
    assert res.exit_code == 0, res.stderr
    enc = run_cli("encode", train_zarr, "--model", model, "--subset", SUBSET, "--out", store,
                  "--device", "cpu")
    assert enc.exit_code == 0, enc.stderr
    return model, store, res.stdout


def test_target_bpv_is_chosen_printed_recorded_and_reached(rated: tuple[Path, Path, str]) -> None:
    from era5latent.model.checkpoint import read_meta

    model, store, stdout = rated
    assert "rate: target 0.05 B/value" in stdout
    rate = read_meta(str(model)).training["rate"]
    assert rate["target_bytes_per_value"] == 0.05
    cfg = read_meta(str(model)).config
    assert (cfg.patch_stride, cfg.code_bits) == (rate["patch_stride"], rate["code_bits"])
    info = json.loads(run_cli("info", store, "--json").stdout)
    values = sum(g["float32_bytes"] for g in info["groups"]) / 4
    raw = sum(g["code_bytes"] for g in info["groups"]) / values
    assert abs(raw / 0.05 - 1) <= 0.10, raw  # the codes as stored, before zstd: within 10%
    # zstd only removes what repeats (codes that recur over time): never above the raw size
    assert info["bytes_on_disk"] / values <= raw * 1.02


def test_info_reports_what_numpy_computes(rated: tuple[Path, Path, str]) -> None:
    _, store, _ = rated
    info = json.loads(run_cli("info", store, "--json").stdout)
    for g in info["groups"]:
        entropy, bpv = _numpy_usage(store, g["group"], len(g["channels"]))
        assert g["entropy_per_bit"] == pytest.approx(entropy, rel=1e-12, abs=1e-12)
        assert g["bytes_per_value"] == pytest.approx(bpv, rel=1e-12)
        assert 0 < g["entropy_per_bit"] <= 1
    table = run_cli("info", store)
    assert table.exit_code == 0 and "bits of entropy per stored bit" in table.stdout


def test_entropy_of_known_codes() -> None:
    from era5latent.evaluation.bitusage import BitCounts, entropy_per_bit

    rng = np.random.default_rng(0)
    fair = rng.random((4000, 2, 3, 16)) < 0.5
    assert entropy_per_bit(fair) == pytest.approx(1.0, abs=0.01)
    const = np.zeros((50, 2, 3, 16), dtype=bool)
    assert entropy_per_bit(const) == 0.0
    half = fair.copy()
    half[..., :8] = True  # half the bits dead
    counts = BitCounts()
    counts.add_packed(np.packbits(half, axis=-1), 16)
    assert counts.entropy() == pytest.approx(0.5, abs=0.01)
    assert counts.constant_fraction() == 0.5


def test_target_ratio_is_the_same_request(train_zarr: Path, tmp_path: Path) -> None:
    from era5latent.training.rate import choose_rate

    a = choose_rate((33, 64), {"z": 2, "surface": 1}, 0.05, preset_stride=8, padding=2)
    b = choose_rate((33, 64), {"z": 2, "surface": 1}, 4 / 80, preset_stride=8, padding=2)
    assert a == b and abs(a.relative_error) <= 0.10
    res = run_cli("train", train_zarr, "--subset", SUBSET, "--out", tmp_path / "m",
                  "--target-ratio", "80", "--target-bpv", "0.05")
    assert_clean_error(res, "--target-bpv", "--target-ratio")


@pytest.mark.parametrize("args, needles", [
    (("--target-bpv", "5"), ("--target-bpv", "float32", "less than 4")),
    (("--target-bpv", "1e-7"), ("--target-bpv", "closest code size", "between")),
    (("--target-ratio", "0"), ("--target-ratio", "above 1")),
    (("--target-bpv", "-1"), ("--target-bpv", "positive")),
])
def test_impossible_rates_are_one_line_errors(train_zarr: Path, tmp_path: Path,
                                              args: tuple[str, ...],
                                              needles: tuple[str, ...]) -> None:
    out = tmp_path / "m.safetensors"
    assert_clean_error(run_cli("train", train_zarr, "--subset", SUBSET, "--out", out, *args),
                       *needles)
    assert not out.exists()
