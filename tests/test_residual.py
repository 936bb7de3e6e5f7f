"""The error-bounded residual layer (encode --max-error): every decoded value within its bound.

Random fields through the numeric core, the tiny sample through the CLI (plain, resumed after a
kill, in parts, through the Python API), both real ERA5 samples (skipped without them), the
integrity checks on residual chunks, and the bounds refused as one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from era5latent.errors import DataValueError, OptionError
from era5latent.pipeline.residual import ResidualSpec, parse_max_error
from era5latent.pipeline.residual.core import apply_residual, make_residuals, max_abs_error
from era5latent.pipeline.residual.spec import ChannelBound

from .conftest import assert_clean_error, cli_subprocess, run_cli, tree_bytes

SUBSET = "z500,z850,t850,t2m"
SPEC = "*=1%,t2m=0.5"


def encode_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(data), "--model", str(model), "--subset", SUBSET, "--out", str(out),
            "--device", "cpu", "--time-chunk", "4", "--max-error", SPEC, *extra]


def bounds_of(store: Path) -> dict[str, float]:
    from era5latent.store.core import open_latent_store

    r = open_latent_store(str(store)).residual
    assert r is not None
    return {c: float(b["max_error"]) for c, b in r["channels"].items()}


def assert_within(truth_path: Path, decoded: object, store: Path, subset: str = SUBSET,
                  **read: object) -> None:
    """Every decoded value of every bounded channel within the store's bound of the source."""
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    chs = parse_subset(subset)
    src = open_source(str(truth_path), **read)  # type: ignore[arg-type]
    dec = decoded if not isinstance(decoded, (str, Path)) else open_source(str(decoded))
    n = len(dec.times)  # type: ignore[attr-defined]
    i0 = int(np.searchsorted(src.times, dec.times[0]))  # type: ignore[attr-defined]
    truth, got = src.read(chs, i0, i0 + n), dec.read(chs, 0, n)  # type: ignore[attr-defined]
    for k, c in enumerate(chs):
        err = max_abs_error(got[..., k, :, :], truth[..., k, :, :])
        assert err <= bounds_of(store)[c.code], (c.code, err, bounds_of(store)[c.code])


# -- the numeric core on random fields ------------------------------------------------------

@pytest.mark.parametrize("codec", ["sz3", "zfp"])
def test_random_fields_come_back_within_bound(codec: str) -> None:
    rng = np.random.default_rng(0)
    truth = {"a": rng.normal(280, 10, (3, 2, 17, 23)).astype(np.float32),
             "tp": np.abs(rng.normal(0, 1e-3, (3, 2, 17, 23))).astype(np.float32)}
    recon = {k: (v + rng.normal(0, 0.3 * v.std(), v.shape)).astype(np.float32)
             for k, v in truth.items()}
    recon["tp"] = np.maximum(recon["tp"], 0)  # as decode clips a non-negative variable
    bounds = {"a": 0.05, "tp": 2e-5}
    spec = ResidualSpec(codec, "test", {k: ChannelBound(b, b / 10, "u", "") for k, b in
                                        bounds.items()})
    streams = make_residuals(truth, recon, spec, {"a": False, "tp": True})
    for k, b in bounds.items():
        from era5latent.pipeline.residual.core import decode_residual

        got = apply_residual(recon[k], decode_residual(codec, streams[k], truth[k].shape),
                             k == "tp")
        # the bound holds with the margin to spare: room for decode drift
        assert max_abs_error(got, truth[k]) <= b - b / 10
        assert len(streams[k]) < truth[k].nbytes


def test_clip_at_zero_never_breaks_a_bound() -> None:
    """Clipping toward 0 a value whose truth is >= 0 only brings it closer."""
    rng = np.random.default_rng(1)
    truth = np.abs(rng.normal(0, 1, 10_000)).astype(np.float32)
    truth[::3] = 0
    near = (truth + rng.uniform(-0.1, 0.1, truth.size)).astype(np.float32)
    clipped = apply_residual(near, np.zeros_like(near), nonnegative=True)
    assert (np.abs(clipped - truth) <= np.abs(near - truth)).all()
    assert clipped.min() >= 0


def test_negative_truth_in_a_nonnegative_variable_is_refused_not_broken() -> None:
    truth = {"tp": np.full((1, 8, 8), -1.0, np.float32)}
    spec = ResidualSpec("sz3", "tp=0.01", {"tp": ChannelBound(0.01, 0.001, "m", "")})
    with pytest.raises(DataValueError, match="cannot be kept within"):
        make_residuals(truth, {"tp": np.zeros((1, 8, 8), np.float32)}, spec, {"tp": True})


def test_max_error_spec_parsing() -> None:
    chans = ("z500", "t850", "t2m")
    units = {"z500": "m**2 s**-2", "t850": "K", "t2m": "K"}
    std = {"z500": 3000.0, "t850": 10.0, "t2m": 12.0}
    s = parse_max_error("z500=5,*=1%,t2m=0.2K", chans, units, std)
    assert {c: b.max_error for c, b in s.channels.items()} == pytest.approx(
        {"z500": 5.0, "t850": 0.1, "t2m": 0.2})
    assert parse_max_error("z500=5m2 s-2", chans, units, std).channels["z500"].max_error == 5
    only = parse_max_error("t850=0.5", chans, units, std)
    assert set(only.channels) == {"t850"}  # the others: codes only
    for bad, needle in [("t850=-1", "positive"), ("t850=nan", "positive"),
                        ("t850=inf", "positive"), ("q700=1", "not among"),
                        ("t850=5m", "is in K"), ("t850", "CHANNEL=VALUE"),
                        ("t850=abc", "not a number"), ("t850=1,t850=2", "twice"),
                        ("t850=1e-6", "below what decode")]:
        with pytest.raises(OptionError, match=needle):
            parse_max_error(bad, chans, units, std)


# -- through the CLI on the tiny sample ------------------------------------------------------

@pytest.fixture(scope="module")
def bounded_store(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path,
                  tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("bounded") / "latent.zarr"
    res = run_cli(*encode_args(sample_zarr, tiny_model, out))
    assert res.exit_code == 0, res.stderr
    return out


def test_decode_is_within_bound_and_no_residual_is_not(bounded_store: Path, sample_zarr: Path,
                                                       tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.zarr"
    res = run_cli("decode", bounded_store, "--model", tiny_model, "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    assert_within(sample_zarr, out, bounded_store)
    plain = tmp_path / "plain.zarr"
    assert run_cli("decode", bounded_store, "--model", tiny_model, "--out", plain, "--device",
                   "cpu", "--no-residual").exit_code == 0
    with pytest.raises(AssertionError):  # the 20-step WLA alone is far from these bounds
        assert_within(sample_zarr, plain, bounded_store)
    # a time range that starts inside a store chunk
    part = tmp_path / "part.zarr"
    assert run_cli("decode", bounded_store, "--model", tiny_model, "--out", part, "--device",
                   "cpu", "--time", "2020-01-01T18/2020-01-03T06", "--subset", "t2m").exit_code == 0
    assert_within(sample_zarr, part, bounded_store, subset="t2m")


def test_bf16_decode_of_a_bounded_store_is_refused(bounded_store: Path, tiny_model: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "d.zarr"
    res = run_cli("decode", bounded_store, "--model", tiny_model, "--out", out, "--device", "cpu",
                  "--precision", "bf16")
    assert_clean_error(res, "--precision bf16", "fp32", "--no-residual")
    assert not out.exists()
    assert run_cli("decode", bounded_store, "--model", tiny_model, "--out", out, "--device", "cpu",
                   "--precision", "bf16", "--no-residual").exit_code == 0


def test_info_shows_both_layers(bounded_store: Path) -> None:
    res = run_cli("info", bounded_store, "--json")
    assert res.exit_code == 0, res.stderr
    r = json.loads(res.stdout)["residual"]
    assert r["present"] and r["codec"] == "sz3" and r["spec"] == SPEC
    assert r["codes_bytes"] > 0 and r["residual_bytes"] > 0
    total = r["float32_bytes_written"] / (r["codes_bytes"] + r["residual_bytes"])
    assert r["total_ratio"] == pytest.approx(total)
    assert r["channels"]["t2m"]["max_error"] == 0.5
    text = run_cli("info", bounded_store).stdout
    assert "residuals (sz3)" in text and "t2m 0.5 K" in text


def test_decode_drift_across_thread_counts_is_inside_the_margin(
        bounded_store: Path, tiny_model: Path) -> None:
    """The residual was made against a 1-thread fp32 decode; other thread counts (and batch
    sizes) must land within the margin the bound keeps for them."""
    import torch

    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline import decode_fields, read_codes, select_store_channels
    from era5latent.store.core import open_latent_store

    store = open_latent_store(str(bounded_store))
    loaded = load_checkpoint(str(tiny_model))
    groups = select_store_channels(store, None)
    codes, _ = read_codes(store, groups, 0, 24)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads, batch in ((1, 8), (2, 8), (4, 3)):
            torch.set_num_threads(threads)
            outs.append(decode_fields(loaded, groups, store.groups, codes, batch,
                                      torch.device("cpu"), "fp32"))
    finally:
        torch.set_num_threads(before)
    margins = {c: b["margin"] for c, b in store.residual["channels"].items()}  # type: ignore[index]
    for other in outs[1:]:
        for ch, v in other.items():
            assert max_abs_error(v, outs[0][ch]) <= margins[ch.code], ch.code


@pytest.mark.parametrize("bad, needle", [
    ("t850=-1", "positive"), ("t850=nan", "positive"), ("q700=1", "not among"),
    ("t850=5m", "is in K"), ("*=1%,t2m", "CHANNEL=VALUE")])
def test_bad_bounds_are_one_line_errors_and_write_nothing(bad: str, needle: str,
                                                          sample_zarr: Path, tiny_model: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    args = encode_args(sample_zarr, tiny_model, out)
    args[args.index("--max-error") + 1] = bad
    assert_clean_error(run_cli(*args), needle)
    assert not out.exists() and not list(tmp_path.iterdir())



def test_a_residual_codec_without_a_bound_is_refused(sample_zarr: Path, tiny_model: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    args = encode_args(sample_zarr, tiny_model, out)
    del args[args.index("--max-error"):args.index("--max-error") + 2]
    assert_clean_error(run_cli(*args, "--residual-codec", "zfp"), "without --max-error")
    assert_clean_error(run_cli(*encode_args(sample_zarr, tiny_model, out, "--residual-codec",
                                            "lz4")), "--residual-codec 'lz4'")
    assert not out.exists()


def test_verify_catches_a_flipped_residual_byte_and_allow_corrupt_fills_one_chunk(
        bounded_store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    res = run_cli("verify", bounded_store)
    assert res.exit_code == 0, res.stdout
    assert "PASS  array residual/streams_z: 6 chunk(s), crc32c and sha256 ok" in res.stdout
    store = tmp_path / "latent.zarr"
    shutil.copytree(bounded_store, store)
    chunk = store / "residual" / "streams_t" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x40
    chunk.write_bytes(bytes(data))
    res = run_cli("verify", store)
    assert res.exit_code == 3
    fails = [ln for ln in res.stdout.splitlines() if ln.startswith("FAIL")]
    assert fails == ["FAIL  array residual/streams_t: chunk 2 (crc32c mismatch)"], res.stdout
    out = tmp_path / "d.zarr"
    res = run_cli("decode", store, "--model", tiny_model, "--out", out, "--device", "cpu")
    assert_clean_error(res, "time chunk 2 of group t", "residual/streams_t",
                       "--allow-corrupt")
    res = run_cli("decode", store, "--model", tiny_model, "--out", out, "--device", "cpu",
                  "--allow-corrupt")
    assert res.exit_code == 0, res.stderr
    assert "group t residuals (residual/streams_t) times 2020-01-03T00:00:00..2020-01-03T18:00:00" \
        in res.stderr
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    got = open_source(str(out)).read(parse_subset(SUBSET), 0, 24)
    nan = np.isnan(got)
    assert nan[8:12, 2].all() and not nan[:8].any() and not nan[12:].any()
    assert not nan[8:12, [0, 1, 3]].any()  # only group t's chunk
    # everything else still within its bound
    truth = open_source(str(sample_zarr)).read(parse_subset(SUBSET), 0, 24)
    ok = ~nan
    for k, c in enumerate(SUBSET.split(",")):
        assert np.abs(got[:, k][ok[:, k]] - truth[:, k][ok[:, k]]).max() <= \
            bounds_of(store)[c]


def test_resumed_after_a_kill_with_residuals_written_equals_uninterrupted(
        bounded_store: Path, sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    killed = cli_subprocess(*encode_args(sample_zarr, tiny_model, out),
                            env={"ERA5LATENT_FAULT": "encode.residual-written:3",
                                 "OMP_NUM_THREADS": "1"})
    assert killed.returncode == -9, killed.stderr
    again = cli_subprocess(*encode_args(sample_zarr, tiny_model, out),
                           env={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr
    clean = tmp_path / "clean.zarr"  # an uninterrupted run on the same thread count
    assert cli_subprocess(*encode_args(sample_zarr, tiny_model, clean),
                          env={"OMP_NUM_THREADS": "1"}).returncode == 0
    assert tree_bytes(out) == tree_bytes(clean)
    dec = tmp_path / "d.zarr"
    assert run_cli("decode", out, "--model", tiny_model, "--out", dec, "--device",
                   "cpu").exit_code == 0
    assert_within(sample_zarr, dec, out)
    assert run_cli("verify", out).exit_code == 0


def test_parts_then_finalize(bounded_store: Path, sample_zarr: Path, tiny_model: Path,
                             tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    for p in ("2/2", "1/2"):
        res = run_cli(*encode_args(sample_zarr, tiny_model, out, "--parts", p))
        assert res.exit_code == 0, res.stderr
    assert run_cli("finalize", out).exit_code == 0
    assert tree_bytes(out) == tree_bytes(bounded_store)
    # resuming with another bound is refused: the store was made differently
    args = encode_args(sample_zarr, tiny_model, out)
    args[args.index("--max-error") + 1] = "*=2%"
    assert_clean_error(run_cli(*args), "max-error")


def test_python_api_round_trip(sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    import era5latent

    out = tmp_path / "latent.zarr"
    era5latent.encode_to_store(str(sample_zarr), str(tiny_model), SUBSET, out, device="cpu",
                               time_chunk=4, max_error=SPEC, residual_codec="zfp")
    assert era5latent.info(out)["residual"]["codec"] == "zfp"
    from era5latent.io.sources import open_source

    for ds in (era5latent.decode(era5latent.open_latent(out), str(tiny_model), device="cpu"),
               era5latent.decode(era5latent.open_latent(out).sel(
                   time=slice("2020-01-02T06", "2020-01-04")), str(tiny_model), device="cpu")):
        path = tmp_path / f"api{len(ds.time)}.zarr"
        ds.load().to_zarr(path)
        assert_within(sample_zarr, open_source(str(path)), out)
    with pytest.raises(OptionError, match="fp32"):
        era5latent.decode(era5latent.open_latent(out), str(tiny_model), device="cpu",
                          precision="bf16")


# -- real ERA5 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["uk", "ensemble"])
def test_real_samples_within_bound(case: str, real_data: Path, tmp_path: Path) -> None:
    from .conftest import ENSEMBLE_GRIB, UK_T2M_GRIB

    grib, subset, time, spec = {
        "uk": (UK_T2M_GRIB, "t2m", "2019-03-25/2019-03-25T23", "t2m=0.3"),
        "ensemble": (ENSEMBLE_GRIB, "z500,z850,t500,t850", None, "*=2%,t850=0.2K"),
    }[case]
    model = tmp_path / "wla.safetensors"
    res = run_cli("train", grib, "--subset", subset, "--out", model, "--steps", "10",
                  "--batch-size", "4", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    out, dec = tmp_path / "latent.zarr", tmp_path / "d.zarr"
    args = ["encode", grib, "--model", model, "--subset", subset, "--out", out, "--device",
            "cpu", "--max-error", spec] + (["--time", time] if time else [])
    res = run_cli(*args)
    assert res.exit_code == 0, res.stderr
    assert run_cli("decode", out, "--model", model, "--out", dec, "--device",
                   "cpu").exit_code == 0
    assert_within(grib, dec, out, subset=subset)


def test_stores_without_residuals_are_unchanged_and_version_2_is_read(
        sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    import zarr

    from era5latent.errors import StoreError
    from era5latent.store.core import open_latent_store

    out = tmp_path / "plain.zarr"
    args = encode_args(sample_zarr, tiny_model, out)
    del args[args.index("--max-error"):args.index("--max-error") + 2]
    assert run_cli(*args).exit_code == 0
    store = open_latent_store(str(out))
    assert store.version == 3 and not store.has_residual
    assert not (out / "residual").exists() and (out / "_era5latent").is_dir()
    assert json.loads(run_cli("info", out, "--json").stdout)["residual"]["present"] is False
    from .oldformats import as_version_2

    as_version_2(out)
    assert open_latent_store(str(out)).version == 2  # read as before
    root = zarr.open_group(str(out), mode="r+")
    meta = dict(root.attrs["era5latent"])
    root.attrs["era5latent"] = meta | {"format_version": 2, "residual": {"codec": "sz3"}}
    with pytest.raises(StoreError, match="residual"):  # a layer version 2 cannot have
        open_latent_store(str(out))


def test_dask_encode_and_decode_keep_the_bound(sample_zarr: Path, tiny_model: Path,
                                               tmp_path: Path) -> None:
    import logging

    from distributed import Client, LocalCluster

    out, dec = tmp_path / "latent.zarr", tmp_path / "d.zarr"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as lc, \
            Client(lc) as client:
        addr = client.scheduler.address
        res = run_cli(*encode_args(sample_zarr, tiny_model, out, "--residual-codec", "zfp",
                                   "--scheduler", addr, "--chunks-per-task", "2"))
        assert res.exit_code == 0, res.stderr
        res = run_cli("decode", out, "--model", tiny_model, "--out", dec, "--device", "cpu",
                      "--scheduler", addr)
        assert res.exit_code == 0, res.stderr
    assert_within(sample_zarr, dec, out)
    assert run_cli("verify", out).exit_code == 0


def test_evaluate_shows_both_layers_and_the_bound(bounded_store: Path, sample_zarr: Path,
                                                  tiny_model: Path, tmp_path: Path) -> None:
    from era5latent.store.info import channel_layers
    from era5latent.store.core import open_latent_store

    with_res, plain = tmp_path / "d.zarr", tmp_path / "plain.zarr"
    for out, extra in ((with_res, []), (plain, ["--no-residual"])):
        assert run_cli("decode", bounded_store, "--model", tiny_model, "--out", out,
                       "--device", "cpu", *extra).exit_code == 0
    layers = channel_layers(open_latent_store(str(bounded_store)))
    docs = {}
    for out in (with_res, plain):
        res = run_cli("evaluate", sample_zarr, out, "--latent", bounded_store, "--subset",
                      "t850,t2m", "--baselines", "sz3", "--json", "-")
        assert res.exit_code == 0, res.stderr
        docs[out.name] = json.loads(res.stdout[res.stdout.index("{"):])
    for name, applied in (("d.zarr", True), ("plain.zarr", False)):
        recs = docs[name]["records"]
        for ch in ("t850", "t2m"):
            wla = next(r for r in recs if r["method"] == "wla" and r["channel"] == ch)
            layer = layers[ch]
            assert wla["residual_applied"] is applied
            assert wla["codes_bytes_per_value"] == pytest.approx(layer["codes_bytes_per_value"])
            assert wla["residual_bytes_per_value"] > 0
            both = layer["codes_bytes_per_value"] + layer["residual_bytes_per_value"]
            # the baselines are sized to what the reconstruction used: both layers, or codes
            assert wla["bytes_per_value"] == pytest.approx(
                both if applied else layer["codes_bytes_per_value"])
            assert wla["total_ratio"] == pytest.approx(4.0 / both)
            assert wla["max_error_bound"] == layer["max_error"]
            assert wla["within_bound"] is (True if applied else None)
            if applied:
                assert wla["max_abs_error"] <= wla["max_error_bound"]
    table = run_cli("evaluate", sample_zarr, with_res, "--latent", bounded_store, "--subset",
                    "t2m", "--baselines", "none").stdout
    assert "two layers" in table and "yes" in table
