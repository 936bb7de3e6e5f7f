"""Fields with missing values (sst NaN over land): train, encode, decode, verify, evaluate.

A masked field round-trips with NaN exactly where the source has NaN and the usual error
elsewhere, through encode/decode, the Python API, --parts, resume and verify; a flipped byte in
the mask is caught (verify exit 3, decode exit 2 one line). Data: the sample with a pseudo land
mask (``era5latent.io.samplemask``, with a moving sea-ice edge so the mask changes over time) and
cfgrib's ``fields_with_missing_values.grib`` (tests/data/README.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.conftest import assert_clean_error, cli_subprocess, run_cli, tree_bytes

DATA = Path(__file__).parent / "data"
SUBSET = "t2m,msl,sst"
SST = "sea_surface_temperature"


def encode_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["encode", str(data), "--model", str(model), "--subset", SUBSET, "--out", str(out),
            "--device", "cpu", "--time-chunk", "2", *extra]


@pytest.fixture(scope="module")
def masked_zarr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 six-hourly steps, 33 x 64: t2m, msl and sst (NaN over land and a moving ice edge)."""
    from era5latent.io.samplemask import write_masked_sample

    path = tmp_path_factory.mktemp("masked") / "m.zarr"
    write_masked_sample(path, times=8, ice=True)
    return path


@pytest.fixture(scope="module")
def masked_model(tmp_path_factory: pytest.TempPathFactory, masked_zarr: Path) -> Path:
    out = tmp_path_factory.mktemp("mmodel") / "wla.safetensors"
    res = run_cli("train", masked_zarr, "--subset", SUBSET, "--out", out, "--steps", "10",
                  "--batch-size", "4", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def masked_store(tmp_path_factory: pytest.TempPathFactory, masked_zarr: Path,
                 masked_model: Path) -> Path:
    out = tmp_path_factory.mktemp("mstore") / "latent.zarr"
    res = run_cli(*encode_args(masked_zarr, masked_model, out))
    assert res.exit_code == 0, res.stderr
    return out


def _decode(store: Path, model: Path, out: Path, *extra: str) -> xr.Dataset:
    res = run_cli("decode", store, "--model", model, "--out", out, "--device", "cpu", *extra)
    assert res.exit_code == 0, res.stderr
    return xr.open_zarr(out).load()


def _check_round_trip(src: xr.Dataset, rec: xr.Dataset) -> None:
    """NaN exactly where the source has NaN; finite, with an error like t2m's, elsewhere."""
    truth, got = src[SST].values, rec[SST].values
    assert np.isnan(truth).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))
    valued = ~np.isnan(truth)
    err = float(np.sqrt(np.mean((got[valued] - truth[valued]) ** 2)))
    t2m = src["2m_temperature"].values
    err_t2m = float(np.sqrt(np.mean((rec["2m_temperature"].values - t2m) ** 2)))
    assert np.isfinite(err) and err < 3 * err_t2m + 1.0, (err, err_t2m)
    assert not np.isnan(rec["2m_temperature"].values).any()


def test_training_ignores_masked_points(masked_model: Path) -> None:
    from era5latent.model.checkpoint import read_meta

    meta = read_meta(str(masked_model))
    stats = meta.normalisation["sst"]
    assert np.isfinite(stats["mean"]) and 250 < stats["mean"] < 320 and stats["std"] > 0
    assert "NaN" not in json.dumps(meta.training)  # losses and validation error finite


def test_round_trip_restores_nan_exactly(masked_store: Path, masked_zarr: Path,
                                        masked_model: Path, tmp_path: Path) -> None:
    rec = _decode(masked_store, masked_model, tmp_path / "rec.zarr")
    _check_round_trip(xr.open_zarr(masked_zarr).load(), rec)
    res = run_cli("verify", masked_store, "--model", masked_model)
    assert res.exit_code == 0, res.stdout
    assert "array mask/steps_sst" in res.stdout and "array mask/static_sst" in res.stdout


def test_store_layout_static_and_per_chunk(masked_store: Path, masked_zarr: Path,
                                          masked_model: Path, tmp_path: Path) -> None:
    import zarr

    meta = xr.open_zarr(masked_store).attrs["era5latent"]
    assert meta["format_version"] == 4 and meta["mask"]["channels"] == ["sst"]
    assert meta["mask"]["fill"] == "mean"
    # plain xarray sees the codes only; the mask layer opens as its own group
    assert list(xr.open_zarr(masked_store).data_vars) == ["codes_surface"]
    state = zarr.open_array(masked_store / "mask" / "state")[...]
    assert set(state.ravel().tolist()) == {1, 2}  # the ice edge moves: some chunks own a mask
    written = {p.parts[-3] for p in (masked_store / "mask" / "steps_sst" / "c").rglob("*")
               if p.is_file()}
    assert written == {str(i) for i in np.flatnonzero(state[:, 0] == 2)}
    # a static mask (land only): no per-chunk masks at all
    from era5latent.io.samplemask import write_masked_sample

    land = write_masked_sample(tmp_path / "land.zarr", times=4)
    out = tmp_path / "land-latent.zarr"
    assert run_cli(*encode_args(tmp_path / "land.zarr", masked_model, out)).exit_code == 0
    assert (zarr.open_array(out / "mask" / "state")[...] == 1).all()
    assert not (out / "mask" / "steps_sst" / "c").exists()
    _check_round_trip(land.load(), _decode(out, masked_model, tmp_path / "land-rec.zarr"))


def test_unmasked_stores_stay_version_3(masked_zarr: Path, masked_model: Path,
                                        tmp_path: Path) -> None:
    out = tmp_path / "l.zarr"
    res = run_cli("encode", masked_zarr, "--model", masked_model, "--subset", "t2m,msl",
                  "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    meta = xr.open_zarr(out).attrs["era5latent"]
    assert meta["format_version"] == 3 and "mask" not in meta and not (out / "mask").exists()


def test_python_api_round_trip(masked_store: Path, masked_zarr: Path, masked_model: Path,
                               tmp_path: Path) -> None:
    import era5latent

    src = xr.open_zarr(masked_zarr).load()
    ref = _decode(masked_store, masked_model, tmp_path / "ref.zarr")
    latent = era5latent.encode(src, masked_model, SUBSET, time_chunk=2, device="cpu")
    assert "mask_sst" in latent.data_vars
    mem = era5latent.decode(latent, masked_model, device="cpu")
    lazy = era5latent.decode(era5latent.open_latent(masked_store), masked_model,
                             device="cpu").load()
    for v in ref.data_vars:
        np.testing.assert_array_equal(mem[v].values, ref[v].values)
        np.testing.assert_array_equal(lazy[v].values, ref[v].values)
    window = era5latent.decode(era5latent.open_latent(masked_store).isel(time=slice(1, 6)),
                               masked_model, device="cpu").load()
    # NaN in the same places; values to float32 rounding (the window batches its steps
    # differently, and a model's output may differ by an ulp with the batch it ran in)
    np.testing.assert_array_equal(np.isnan(window[SST].values), np.isnan(ref[SST].values[1:6]))
    np.testing.assert_allclose(window[SST].values, ref[SST].values[1:6], rtol=1e-6)
    from era5latent.errors import StoreError

    with pytest.raises(StoreError, match="mask_sst"):
        era5latent.decode(era5latent.open_latent(masked_store)[["codes_surface"]],
                          masked_model, device="cpu")


def test_parts_and_resume_are_byte_identical(masked_store: Path, masked_zarr: Path,
                                             masked_model: Path, tmp_path: Path) -> None:
    parts = tmp_path / "parts.zarr"
    for p in ("2/2", "1/2"):
        res = run_cli(*encode_args(masked_zarr, masked_model, parts, "--parts", p))
        assert res.exit_code == 0, res.stderr
    assert run_cli("finalize", parts).exit_code == 0
    assert tree_bytes(parts) == tree_bytes(masked_store)
    killed = tmp_path / "killed.zarr"
    res = cli_subprocess(*encode_args(masked_zarr, masked_model, killed),
                         env={"ERA5LATENT_FAULT": "encode.mask-written:2"})
    assert res.returncode == -9 and killed.exists()
    res = cli_subprocess(*encode_args(masked_zarr, masked_model, killed))
    assert res.returncode == 0, res.stderr
    assert tree_bytes(killed) == tree_bytes(masked_store)
    assert run_cli("verify", killed).exit_code == 0


def _flip(store: Path, array: str) -> None:
    files = sorted(p for p in (store / array / "c").rglob("*") if p.is_file())
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    files[0].write_bytes(bytes(data))


@pytest.mark.parametrize("array", ["mask/steps_sst", "mask/static_sst", "mask/state",
                                   "mask/sha256"])
def test_a_flipped_mask_byte_is_caught(masked_store: Path, masked_model: Path, tmp_path: Path,
                                       array: str) -> None:
    bad = tmp_path / "bad.zarr"
    shutil.copytree(masked_store, bad)
    _flip(bad, array)
    res = run_cli("verify", bad)
    assert res.exit_code == 3, res.stdout
    assert any(ln.startswith("FAIL") and array in ln for ln in res.stdout.splitlines()), \
        res.stdout
    out = tmp_path / "rec.zarr"
    assert_clean_error(run_cli("decode", bad, "--model", masked_model, "--out", out,
                               "--device", "cpu"), "corrupt", "mask")
    assert not out.exists()
    rec = _decode(bad, masked_model, out, "--allow-corrupt")
    assert np.isnan(rec[SST].values).any()
    assert not np.isnan(rec["mean_sea_level_pressure"].values).any()  # only sst is lost


def test_a_chunk_mask_swapped_whole_is_caught(masked_store: Path, tmp_path: Path) -> None:
    """A mask chunk replaced by another chunk's (valid crc32c): only the sha256 tells."""
    import zarr

    bad = tmp_path / "bad.zarr"
    shutil.copytree(masked_store, bad)
    state = zarr.open_array(bad / "mask" / "state")[...]
    own = np.flatnonzero(state[:, 0] == 2)
    assert len(own) >= 2
    a, b = (bad / "mask" / "steps_sst" / "c" / str(i) / "0" / "0" for i in own[:2])
    a.write_bytes(b.read_bytes())
    res = run_cli("verify", bad)
    assert res.exit_code == 3 and "checksum mismatch" in res.stdout, res.stdout


def test_bad_values_are_one_line_errors(masked_zarr: Path, masked_model: Path,
                                        tmp_path: Path) -> None:
    ds = xr.open_zarr(masked_zarr).load()
    inf = ds.copy(deep=True)
    inf[SST][3, 20, 5] = np.inf
    inf.to_zarr(tmp_path / "inf.zarr", zarr_format=3, consolidated=False)
    out = tmp_path / "x.zarr"
    assert_clean_error(run_cli(*encode_args(tmp_path / "inf.zarr", masked_model, out)),
                       "infinite")
    assert_clean_error(run_cli("train", tmp_path / "inf.zarr", "--subset", SUBSET, "--out",
                               tmp_path / "m.safetensors", "--steps", "1", "--device", "cpu"),
                       "infinite")
    late = ds.copy(deep=True)
    late["2m_temperature"][5, 3, 3] = np.nan  # t2m had no NaN at the first time step
    late.to_zarr(tmp_path / "late.zarr", zarr_format=3, consolidated=False)
    out = tmp_path / "y.zarr"
    res = run_cli(*encode_args(tmp_path / "late.zarr", masked_model, out))
    assert_clean_error(res, "NaN", "t2m", "first time")
    info = json.loads(run_cli("info", out, "--json").stdout)
    assert info["chunks_done"] == 2 and not info["complete"]  # earlier chunks kept: resumable


def test_residual_bound_leaves_masked_points_out(masked_zarr: Path, masked_model: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "r.zarr"
    res = run_cli(*encode_args(masked_zarr, masked_model, out, "--max-error", "sst=0.5,t2m=0.5"))
    assert res.exit_code == 0, res.stderr
    assert run_cli("verify", out).exit_code == 0
    rec = _decode(out, masked_model, tmp_path / "rec.zarr")
    truth = xr.open_zarr(masked_zarr)[SST].values
    got = rec[SST].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(truth))
    valued = ~np.isnan(truth)
    assert np.max(np.abs(got[valued] - truth[valued])) <= 0.5


def test_evaluate_leaves_masked_points_out(masked_store: Path, masked_zarr: Path,
                                          masked_model: Path, tmp_path: Path) -> None:
    from era5latent.evaluation.metrics import MetricAccumulator, latitude_weights

    rec = tmp_path / "rec.zarr"
    _decode(masked_store, masked_model, rec)
    res = run_cli("evaluate", masked_zarr, rec, "--latent", masked_store, "--baselines",
                  "bitround,sz3", "--json", tmp_path / "ev.json")
    assert res.exit_code == 0, res.stderr
    records = json.loads((tmp_path / "ev.json").read_text())["records"]
    sst = [r for r in records if r["channel"] == "sst"]
    assert {r["method"] for r in sst} >= {"wla", "bitround", "sz3"}
    assert all(np.isfinite(r["rmse"]) and np.isfinite(r["max_abs_error"]) for r in sst)
    # the accumulator's RMSE is the weighted RMSE over the valued points only
    src = xr.open_zarr(masked_zarr)
    t, r = src[SST].values.astype(np.float64), xr.open_zarr(rec)[SST].values.astype(np.float64)
    lat = src["latitude"].values
    acc = MetricAccumulator(lat)
    acc.add(t, r, np.zeros(t.shape[1:]))
    w = latitude_weights(lat)[:, None] * ~np.isnan(t)
    want = np.mean(np.sqrt(np.nansum(w * (r - t) ** 2, axis=(1, 2)) / w.sum(axis=(1, 2))))
    assert acc.result()["rmse"] == pytest.approx(want, rel=1e-9)
    wla = next(x for x in sst if x["method"] == "wla")
    assert wla["rmse"] == pytest.approx(want, rel=1e-6)


def test_cfgrib_fields_with_missing_values(tmp_path: Path) -> None:
    """cfgrib's sample: t2m with missing values whose mask changes between its two times."""
    pytest.importorskip("cfgrib")
    grib = tmp_path / "fields_with_missing_values.grib"
    shutil.copy(DATA / grib.name, grib)
    model, out, rec = tmp_path / "w.safetensors", tmp_path / "l.zarr", tmp_path / "rec.nc"
    res = run_cli("train", grib, "--subset", "t2m", "--out", model, "--steps", "4",
                  "--batch-size", "2", "--device", "cpu", "--val-fraction", "0")
    assert res.exit_code == 0, res.stderr
    res = run_cli("encode", grib, "--model", model, "--subset", "t2m", "--out", out,
                  "--device", "cpu", "--time-chunk", "1")
    assert res.exit_code == 0, res.stderr
    assert run_cli("verify", out).exit_code == 0
    res = run_cli("decode", out, "--model", model, "--out", rec, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    src = xr.open_dataset(grib, engine="cfgrib", backend_kwargs={"indexpath": ""})["t2m"].values
    got = xr.open_dataset(rec)["t2m"].values
    assert np.isnan(src).sum() > 20000
    np.testing.assert_array_equal(np.isnan(got), np.isnan(src))
    assert np.isfinite(got[~np.isnan(src)]).all()


def test_dask_encode_and_decode(masked_store: Path, masked_zarr: Path, masked_model: Path,
                                tmp_path: Path) -> None:
    """The Dask path (EncodeJob.run_chunk on workers, decode tasks) writes the same store and
    puts NaN back in the same places."""
    import logging

    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as lc, \
            Client(lc) as client:
        addr = client.scheduler.address
        out = tmp_path / "dask.zarr"
        res = run_cli(*encode_args(masked_zarr, masked_model, out, "--scheduler", addr,
                                   "--chunks-per-task", "1"))
        assert res.exit_code == 0, res.stderr
        assert tree_bytes(out) == tree_bytes(masked_store)
        rec = tmp_path / "rec.zarr"
        res = run_cli("decode", out, "--model", masked_model, "--out", rec, "--device", "cpu",
                      "--scheduler", addr)
        assert res.exit_code == 0, res.stderr
    ref = _decode(masked_store, masked_model, tmp_path / "ref.zarr")
    got = xr.open_zarr(rec)
    np.testing.assert_array_equal(np.isnan(got[SST].values), np.isnan(ref[SST].values))
    np.testing.assert_allclose(got[SST].values, ref[SST].values, atol=1e-3)


def test_a_store_laid_out_in_memory_has_the_bytes_zarr_writes_file_by_file(
        masked_zarr: Path, masked_model: Path, tmp_path: Path) -> None:
    """``create_latent_store`` lays a local store out in memory, then writes the files: every
    document and coordinate chunk is the same as laying it out through zarr-python, with the
    residual and mask layers too."""
    import dataclasses

    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset
    from era5latent.model.checkpoint import load_checkpoint
    from era5latent.pipeline.encoding import prepare_encode
    from era5latent.store import core

    job = prepare_encode(open_source(str(masked_zarr)), load_checkpoint(str(masked_model)),
                         parse_subset(SUBSET), str(tmp_path / "unused.zarr"), device="cpu",
                         time_chunk=4, max_error="t2m=0.5", lay_out=False)
    spec = dataclasses.replace(job.spec, parts=2)
    assert spec.mask and spec.residual
    (tmp_path / "zarr").mkdir()
    core._create(str(tmp_path / "zarr"), spec)
    core.create_latent_store(str(tmp_path / "files.zarr"), spec)

    a, b = tree_bytes(tmp_path / "zarr"), tree_bytes(tmp_path / "files.zarr")
    assert sorted(a) == sorted(b) and len(a) > 20
    assert [k for k in a if a[k] != b[k]] == []


def test_chunks_written_as_files_have_the_bytes_zarr_python_writes(
        masked_zarr: Path, masked_model: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """encode writes whole chunks of codes, checksums, residual rows, masks and done flags as
    files itself (``zarrio.write_rows``): the store is byte for byte the one zarr-python writes,
    with the residual and mask layers and a partial last time chunk (8 steps in chunks of 3)."""
    from era5latent.io import zarrio

    real = zarrio._chunk_file
    direct: list[str] = []

    def counted(arr, a, b):  # type: ignore[no-untyped-def]
        path = real(arr, a, b)
        if path is not None:
            direct.append(arr.path)
        return path

    args = ("--time-chunk", "3", "--max-error", "t2m=0.5")
    monkeypatch.setattr(zarrio, "_chunk_file", counted)
    res = run_cli(*encode_args(masked_zarr, masked_model, tmp_path / "files.zarr", *args))
    assert res.exit_code == 0, res.stderr
    monkeypatch.setattr(zarrio, "_chunk_file", lambda arr, a, b: None)
    res = run_cli(*encode_args(masked_zarr, masked_model, tmp_path / "zarr.zarr", *args))
    assert res.exit_code == 0, res.stderr

    written = set(direct)
    for kind in ("codes_", "_era5latent/sha256_", "build_done", "mask/steps_", "mask/state",
                 "resid"):
        assert any(kind in p for p in written), (kind, sorted(written))
    a, b = tree_bytes(tmp_path / "zarr.zarr"), tree_bytes(tmp_path / "files.zarr")
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
