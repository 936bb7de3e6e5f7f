"""The whole path through the CLI: sample -> train -> encode -> info -> decode, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .conftest import ENSEMBLE_GRIB, UK_T2M_GRIB, assert_clean_error, run_cli, tree_bytes


def encode_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(data), "--model", str(model), "--subset", "z500,z850,t850,t2m",
            "--out", str(out), "--device", "cpu", "--time-chunk", "4", *extra]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory, sample_zarr: Path, tiny_model: Path) -> Path:
    out = tmp_path_factory.mktemp("enc") / "latent.zarr"
    res = run_cli(*encode_args(sample_zarr, tiny_model, out))
    assert res.exit_code == 0, res.stderr
    return out


def test_round_trip_keeps_dims_coords_names_units_dtype(encoded: Path, sample_zarr: Path,
                                                         tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "recon.zarr"
    res = run_cli("decode", encoded, "--model", tiny_model, "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    src = xr.open_zarr(sample_zarr)
    rec = xr.open_zarr(out)
    assert set(rec.data_vars) == {"geopotential", "temperature", "2m_temperature"}
    for name in rec.data_vars:
        assert rec[name].dims == src[name].dims
        assert rec[name].dtype == src[name].dtype == np.float32
        assert rec[name].attrs["units"] == src[name].attrs["units"]
    for c in ("time", "latitude", "longitude"):
        np.testing.assert_array_equal(rec[c].values, src[c].values)
    assert list(rec["level"].values) == [500, 850]
    z = rec["geopotential"].sel(level=500).values
    assert np.isfinite(z).all() and abs(float(z.mean()) - float(
        src["geopotential"].sel(level=500).mean())) < 0.05 * float(src["geopotential"].sel(level=500).mean())
    assert np.isnan(rec["temperature"].sel(level=500).values).all()  # not decoded: NaN, not invented


def test_info_reports_groups_ratios_and_json(encoded: Path) -> None:
    res = run_cli("info", encoded, "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["complete"] and info["chunks_done"] == info["chunks_total"] == 6
    groups = {g["group"]: g for g in info["groups"]}
    assert groups["z"]["channels"] == ["z500", "z850"] and groups["surface"]["channels"] == ["t2m"]
    z = groups["z"]
    assert z["float32_bytes"] == 24 * 2 * 33 * 64 * 4
    assert z["code_bytes"] == 24 * 4 * 8 * 16  # 4x8 tokens, 128 bits
    assert z["compression_ratio"] == pytest.approx(z["float32_bytes"] / z["bytes_on_disk"])
    text = run_cli("info", encoded)
    assert text.exit_code == 0 and "complete" in text.stdout and "z500,z850" in text.stdout


def test_decode_subset_and_time_to_netcdf(encoded: Path, tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "t850.nc"
    res = run_cli("decode", encoded, "--model", tiny_model, "--out", out, "--subset", "t850",
                  "--time", "2020-01-02/2020-01-03", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    ds = xr.open_dataset(out)
    assert list(ds.data_vars) == ["temperature"] and list(ds["level"].values) == [850]
    assert str(ds.time.values[0])[:10] == "2020-01-02" and ds.sizes["time"] == 5


def test_batched_and_single_sample_encoding_agree(sample_zarr: Path, tiny_model: Path,
                                                  tmp_path: Path, encoded: Path) -> None:
    one = tmp_path / "one.zarr"
    assert run_cli(*encode_args(sample_zarr, tiny_model, one, "--batch-size", "1")).exit_code == 0
    a, b = xr.open_zarr(encoded), xr.open_zarr(one)
    for g in ("codes_z", "codes_t", "codes_surface"):
        bits_a = np.unpackbits(a[g].values, axis=-1)
        bits_b = np.unpackbits(b[g].values, axis=-1)
        assert (bits_a == bits_b).mean() >= 0.9999, g
    ra, rb = tmp_path / "ra.zarr", tmp_path / "rb.zarr"
    for store, out in ((encoded, ra), (one, rb)):
        assert run_cli("decode", store, "--model", tiny_model, "--out", out,
                       "--device", "cpu").exit_code == 0
    za = xr.open_zarr(ra)["geopotential"].sel(level=500).values
    zb = xr.open_zarr(rb)["geopotential"].sel(level=500).values
    np.testing.assert_allclose(za, zb, rtol=1e-4, atol=1.0)


# -- errors: one line on stderr, exit code 2, nothing damaged -----------------------------------

def test_bad_subset(sample_zarr: Path, tiny_model: Path, tmp_path: Path) -> None:
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z501x",
                  "--out", tmp_path / "x.zarr")
    assert_clean_error(res, "z501x")
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "u850",
                  "--out", tmp_path / "x.zarr")
    assert_clean_error(res, "u850", "holds")
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z700",
                  "--out", tmp_path / "x.zarr")
    assert_clean_error(res, "not trained on z700")
    assert not (tmp_path / "x.zarr").exists()


def test_grid_that_does_not_match_the_model(tiny_model: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.zarr"
    assert run_cli("sample", other, "--grid", "17x32", "--times", "2", "--variables", "z,t,t2m,msl",
                   "--levels", "500,850").exit_code == 0
    res = run_cli("encode", other, "--model", tiny_model, "--subset", "z500", "--out",
                  tmp_path / "x.zarr")
    assert_clean_error(res, "17x32", "33x64")


def test_nan_in_input_is_refused_and_store_left_resumable(sample_zarr: Path, tiny_model: Path,
                                                         tmp_path: Path) -> None:
    import zarr

    bad = tmp_path / "nan.zarr"
    shutil.copytree(sample_zarr, bad)
    levels = list(xr.open_zarr(bad)["level"].values)
    zarr.open_array(bad / "geopotential", mode="r+")[10, levels.index(500), 3, 3] = np.nan
    out = tmp_path / "x.zarr"
    res = run_cli(*encode_args(bad, tiny_model, out))
    assert_clean_error(res, "NaN", "2020-01-03")
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["chunks_done"] == 2 and not info["complete"]  # chunks before the bad one are kept


def test_unreadable_and_truncated_files(tiny_model: Path, tmp_path: Path, real_data: Path) -> None:
    trunc = tmp_path / "cut.grib"
    trunc.write_bytes(ENSEMBLE_GRIB.read_bytes()[:5000])
    res = run_cli("encode", trunc, "--model", tiny_model, "--subset", "z500", "--out",
                  tmp_path / "x.zarr")
    assert res.exit_code == 2 and "Traceback" not in res.stderr
    garbage = tmp_path / "junk.nc"
    garbage.write_bytes(b"\x89HDF not really")
    assert_clean_error(run_cli("train", garbage, "--subset", "z500", "--out", tmp_path / "m"),
                       "cannot read")
    assert_clean_error(run_cli("info", tmp_path / "missing.zarr"), "no such")


def test_existing_output_without_overwrite(encoded: Path, sample_zarr: Path, tiny_model: Path,
                                          tmp_path: Path) -> None:
    out = tmp_path / "recon.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run_cli("decode", encoded, "--model", tiny_model, "--out", out)
    assert_clean_error(res, "not an era5latent output", "choose another --out")
    assert (out / "keep.txt").read_text() == "mine"
    ours = tmp_path / "ours.zarr"
    assert run_cli("decode", encoded, "--model", tiny_model, "--out", ours).exit_code == 0
    res = run_cli("decode", encoded, "--model", tiny_model, "--out", ours)
    assert_clean_error(res, "already exists", "--overwrite")
    other = tmp_path / "notastore"
    other.mkdir()
    (other / "mine.txt").write_text("mine")
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500", "--out", other)
    assert_clean_error(res, "not a latent store", "choose another --out")
    assert (other / "mine.txt").read_text() == "mine"


def test_checkpoint_that_is_not_one(sample_zarr: Path, encoded: Path, tmp_path: Path,
                                    tiny_model: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    assert_clean_error(run_cli("encode", sample_zarr, "--model", junk, "--subset", "z500",
                               "--out", tmp_path / "x.zarr"), "safetensors")
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(tiny_model.read_bytes()[:-1000])
    assert_clean_error(run_cli("decode", encoded, "--model", truncated, "--out", tmp_path / "y.zarr"))
    import torch
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    assert_clean_error(run_cli("decode", encoded, "--model", plain, "--out", tmp_path / "y.zarr"),
                       "era5latent")


def test_decode_refuses_another_model(encoded: Path, tiny_model: Path, tmp_path: Path) -> None:
    from era5latent.model.checkpoint import load_checkpoint, save_checkpoint

    loaded = load_checkpoint(str(tiny_model))
    loaded.meta.training = {**loaded.meta.training, "note": "another model"}
    other = tmp_path / "other.safetensors"
    save_checkpoint(loaded.model, loaded.meta, str(other))
    res = run_cli("decode", encoded, "--model", other, "--out", tmp_path / "y.zarr")
    assert_clean_error(res, "not the model")


def test_store_made_differently_is_refused(sample_zarr: Path, tiny_model: Path, encoded: Path,
                                           tmp_path: Path) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(encoded, copy)
    before = tree_bytes(copy)
    res = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500", "--out", copy)
    assert_clean_error(res, "made differently", "--overwrite")
    assert tree_bytes(copy) == before
    again = run_cli(*encode_args(sample_zarr, tiny_model, copy))  # same command: nothing to do
    assert again.exit_code == 0 and tree_bytes(copy) == before
    over = run_cli("encode", sample_zarr, "--model", tiny_model, "--subset", "z500", "--out", copy,
                   "--overwrite", "--device", "cpu")
    assert over.exit_code == 0
    assert json.loads(run_cli("info", copy, "--json").stdout)["groups"][0]["channels"] == ["z500"]


# -- real data and learning ----------------------------------------------------------------------

@pytest.mark.realdata
@pytest.mark.parametrize("grib,subset,times", [
    (ENSEMBLE_GRIB, "z500,z850,t500,t850", "2017-01-01/"),
    (UK_T2M_GRIB, "t2m", "/2019-03-02T23"),
])
def test_real_grib_train_encode_decode(real_data: Path, tmp_path: Path, grib: Path,
                                       subset: str, times: str) -> None:
    model = tmp_path / "m.safetensors"
    assert run_cli("train", grib, "--subset", subset, "--out", model, "--steps", "5",
                   "--batch-size", "2", "--device", "cpu").exit_code == 0
    latent = tmp_path / "l.zarr"
    res = run_cli("encode", grib, "--model", model, "--subset", subset, "--out", latent,
                  "--time", times, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "r.nc"
    assert run_cli("decode", latent, "--model", model, "--out", out, "--device", "cpu").exit_code == 0
    rec = xr.open_dataset(out)
    src = xr.open_dataset(grib, engine="cfgrib", backend_kwargs={"indexpath": ""})
    name = subset.split(",")[0].rstrip("0123456789")
    assert name in rec.data_vars and rec[name].attrs["units"] == src[name].attrs["units"]
    np.testing.assert_array_equal(rec.latitude.values, src.latitude.values)
    np.testing.assert_array_equal(rec.longitude.values, src.longitude.values)
    if "number" in src.dims:
        assert rec.sizes["number"] == 10



def test_version_and_quiet_and_progress_lines(sample_zarr, tiny_model, tmp_path) -> None:
    """--version prints it; without a terminal, progress is one-line records on stderr (rate,
    percentage); --quiet silences them."""
    import era5latent
    from era5latent.cli import common as cli

    res = run_cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"era5latent {era5latent.__version__}"
    base = ("encode", sample_zarr, "--model", tiny_model, "--subset", "z500", "--device", "cpu",
            "--time-chunk", "8")
    every = cli.PROGRESS_EVERY_S
    cli.PROGRESS_EVERY_S = 0.0  # a record at every update
    try:
        res = run_cli(*base, "--out", tmp_path / "a.zarr")
        assert res.exit_code == 0, res.stderr
        lines = [ln for ln in res.stderr.splitlines() if ln.startswith("encode: ")]
        assert lines and lines[-1].startswith("encode: 100.0% (24/24 samples)"), res.stderr
        assert all("samples/s" in ln for ln in lines)
        res = run_cli("--quiet", *base, "--out", tmp_path / "b.zarr")
        assert res.exit_code == 0 and res.stderr == ""
    finally:
        cli.PROGRESS_EVERY_S = every
