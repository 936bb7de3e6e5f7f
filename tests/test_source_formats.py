"""Every file a user downloads opens and round-trips through encode and decode with the right
times, dim names and attributes: classic NetCDF 3, a single-pressure-level GRIB, a GRIB of forecast
steps. The inputs are derived here from the real samples in ../shared/data (skipped without them),
so nothing is invented: the NetCDF 3 is the ensemble GRIB written by xarray's scipy engine, the
single-level GRIB is its 850 hPa messages, the forecast GRIB is the UK t2m messages of 00 and 12
UTC re-labelled by ecCodes as steps 0, 3, 6 and 9 h of those reference times.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .conftest import ENSEMBLE_GRIB, UK_T2M_GRIB, assert_clean_error, run_cli

pytestmark = pytest.mark.realdata

GRIB_KW = {"indexpath": ""}


@pytest.fixture(scope="module")
def derived(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not (ENSEMBLE_GRIB.is_file() and UK_T2M_GRIB.is_file()):
        pytest.skip("real ERA5 samples not found (set ERA5LATENT_REAL_DATA)")
    pytest.importorskip("scipy")
    import eccodes

    d = tmp_path_factory.mktemp("derived")
    ens = xr.open_dataset(ENSEMBLE_GRIB, engine="cfgrib", backend_kwargs=GRIB_KW)
    ens.isel(number=slice(0, 2)).to_netcdf(d / "ens3.nc", engine="scipy")  # classic NetCDF 3
    with open(ENSEMBLE_GRIB, "rb") as f, open(d / "ens850.grib", "wb") as out:
        while (h := eccodes.codes_grib_new_from_file(f)) is not None:
            if eccodes.codes_get(h, "level") == 850 and eccodes.codes_get(h, "number") < 2:
                out.write(eccodes.codes_get_message(h))
            eccodes.codes_release(h)
    with open(UK_T2M_GRIB, "rb") as f, open(d / "steps.grib", "wb") as out:
        n = 0
        while (h := eccodes.codes_grib_new_from_file(f)) is not None and n < 4:
            if eccodes.codes_get(h, "hour") % 12 == 0:
                n += 1
                for step in (0, 3, 6, 9):
                    h2 = eccodes.codes_clone(h)
                    eccodes.codes_set(h2, "stepType", "instant")
                    eccodes.codes_set(h2, "step", step)
                    out.write(eccodes.codes_get_message(h2))
                    eccodes.codes_release(h2)
            eccodes.codes_release(h)
    return {"nc3": d / "ens3.nc", "level": d / "ens850.grib", "steps": d / "steps.grib",
            "dir": d}


def _train(data: Path, subset: str, out: Path) -> Path:
    res = run_cli("train", data, "--subset", subset, "--out", out, "--steps", "2",
                  "--batch-size", "2", "--device", "cpu", "--checkpoint-every", "2")
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def ens_model(derived: dict[str, Path]) -> Path:
    return _train(derived["nc3"], "z500,z850,t500,t850", derived["dir"] / "ens.safetensors")


@pytest.fixture(scope="module")
def uk_model(derived: dict[str, Path]) -> Path:
    return _train(derived["steps"], "t2m", derived["dir"] / "uk.safetensors")


def _round_trip(data: Path, model: Path, subset: str, tmp: Path, out: str, *extra: str
                ) -> xr.Dataset:
    tmp.mkdir(exist_ok=True)
    latent = tmp / "latent.zarr"
    res = run_cli("encode", data, "--model", model, "--subset", subset, "--out", latent,
                  "--device", "cpu", *extra)
    assert res.exit_code == 0, res.stderr
    res = run_cli("decode", latent, "--model", model, "--out", tmp / out, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    if out.endswith(".nc"):
        return xr.open_dataset(tmp / out, engine="h5netcdf")
    return xr.open_zarr(tmp / out)


def test_classic_netcdf3_opens_and_round_trips(derived: dict[str, Path], ens_model: Path,
                                               tmp_path: Path) -> None:
    from era5latent.io.sources import detect_format, open_source

    path = derived["nc3"]
    assert path.read_bytes()[:3] == b"CDF"  # really classic NetCDF, which h5netcdf cannot read
    src = open_source(path)
    assert detect_format(str(path)) == "netcdf" and src.sample_shape == (2,)
    ref = xr.open_dataset(path, engine="scipy")
    out = _round_trip(path, ens_model, "z500,z850,t500,t850", tmp_path, "recon.zarr")
    assert set(out.dims) == set(ref.dims)  # number, time, isobaricInhPa, latitude, longitude
    np.testing.assert_array_equal(out["time"].values, ref["time"].values)
    np.testing.assert_array_equal(np.sort(out["isobaricInhPa"].values),
                                  np.sort(ref["isobaricInhPa"].values))
    for name in ("z", "t"):
        # the source's dim names; the order is time first, as every decoded store
        assert out[name].dims == ("time", "number", "isobaricInhPa", "latitude", "longitude")
        assert set(out[name].dims) == set(ref[name].dims)
        for k, v in ref[name].attrs.items():  # the source's attributes, verbatim
            assert out[name].attrs[k] == v, (name, k)
        assert np.isfinite(out[name].values).all()
    assert out["isobaricInhPa"].attrs["standard_name"] == "air_pressure"
    assert out.attrs["Conventions"] == ref.attrs["Conventions"]


def test_a_file_whose_name_lies_opens_by_its_content(derived: dict[str, Path], tmp_path: Path
                                                     ) -> None:
    from era5latent.io.sources import open_source

    disguised = tmp_path / "download.grib"  # a NetCDF 3 file with a GRIB name
    disguised.write_bytes(derived["nc3"].read_bytes())
    assert open_source(disguised).layout.format == "netcdf"


def test_single_pressure_level_grib_is_a_one_level_axis(derived: dict[str, Path],
                                                        ens_model: Path, tmp_path: Path) -> None:
    from era5latent.io.sources import open_source

    raw = xr.open_dataset(derived["level"], engine="cfgrib", backend_kwargs=GRIB_KW)
    assert raw["isobaricInhPa"].ndim == 0  # what CDS gives for one level: a scalar coordinate
    src = open_source(derived["level"])
    assert src.describe_available() == "t@850, z@850"
    out = _round_trip(derived["level"], ens_model, "z850,t_850", tmp_path, "recon.nc")
    assert out["z"].dims == ("time", "number", "isobaricInhPa", "latitude", "longitude")
    assert out["isobaricInhPa"].values.tolist() == [850]
    np.testing.assert_array_equal(out["time"].values, raw["time"].values)


def test_forecast_steps_become_valid_times(derived: dict[str, Path], uk_model: Path,
                                           tmp_path: Path) -> None:
    from era5latent.io.sources import open_source

    raw = xr.open_dataset(derived["steps"], engine="cfgrib", backend_kwargs=GRIB_KW)
    assert raw.sizes["step"] == 4 and raw.sizes["time"] == 4
    valid = np.sort(raw["valid_time"].values.reshape(-1))
    assert len(np.unique(valid)) == 16
    src = open_source(derived["steps"])
    np.testing.assert_array_equal(src.times, valid)
    out = _round_trip(derived["steps"], uk_model, "t2m", tmp_path, "recon.zarr")
    assert out["t2m"].dims == ("valid_time", "latitude", "longitude")
    np.testing.assert_array_equal(out["valid_time"].values, valid)
    assert out["latitude"].values[0] == raw["latitude"].values[0]


def test_one_step_on_either_time_axis(derived: dict[str, Path], uk_model: Path,
                                      tmp_path: Path) -> None:
    raw = xr.open_dataset(derived["steps"], engine="cfgrib", backend_kwargs=GRIB_KW)
    out = _round_trip(derived["steps"], uk_model, "t2m", tmp_path / "v", "recon.zarr",
                      "--step", "6h")
    np.testing.assert_array_equal(out["valid_time"].values,
                                  raw["valid_time"].sel(step=np.timedelta64(6, "h")).values)
    out = _round_trip(derived["steps"], uk_model, "t2m", tmp_path / "r", "recon.zarr",
                      "--step", "6", "--time-axis", "reference")
    assert out["t2m"].dims == ("time", "latitude", "longitude")
    np.testing.assert_array_equal(out["time"].values, raw["time"].values)
    assert out["t2m"].shape == (4, 33, 49)


def test_step_errors_are_one_line(derived: dict[str, Path], uk_model: Path, tmp_path: Path) -> None:
    base = ("encode", derived["steps"], "--model", uk_model, "--subset", "t2m", "--out",
            tmp_path / "x.zarr", "--device", "cpu")
    assert_clean_error(run_cli(*base, "--step", "4h"), "--step 4h", "0h, 3h, 6h, 9h")
    assert_clean_error(run_cli(*base, "--time-axis", "reference"), "pick one with --step")
    assert_clean_error(run_cli(*base, "--time-axis", "later"), "expected valid or reference")
    assert_clean_error(run_cli("encode", UK_T2M_GRIB, "--model", uk_model, "--subset", "t2m",
                               "--out", tmp_path / "y.zarr", "--step", "6"), "holds step(s) 0h")
    assert not (tmp_path / "x.zarr").exists()


def test_train_selects_the_time_axis_and_step_as_encode_does(derived: dict[str, Path],
                                                              tmp_path: Path) -> None:
    raw = xr.open_dataset(derived["steps"], engine="cfgrib", backend_kwargs=GRIB_KW)
    refs = raw["time"].values
    base = ("train", derived["steps"], "--subset", "t2m", "--steps", "2", "--batch-size", "2",
            "--device", "cpu", "--checkpoint-every", "2", "--val-fraction", "0")
    assert_clean_error(run_cli(*base, "--out", tmp_path / "a.safetensors", "--time-axis",
                               "reference"), "pick one with --step")
    assert_clean_error(run_cli(*base, "--out", tmp_path / "b.safetensors", "--step", "4h"),
                       "--step 4h", "0h, 3h, 6h, 9h")
    # reference times exist only on the reference axis; a loader worker process reopens the
    # source with the same axis and step
    span = f"{str(refs[0])[:19]}/{str(refs[-1])[:19]}"
    res = run_cli(*base, "--out", tmp_path / "c.safetensors", "--time-axis", "reference",
                  "--step", "6h", "--time", span, "--workers", "1")
    assert res.exit_code == 0, res.stderr
    # on the valid axis, step 6h puts the same four fields six hours later: the reference span
    # then holds only the first three of them
    res = run_cli(*base, "--out", tmp_path / "d.safetensors", "--step", "6h", "--time", span)
    assert res.exit_code == 0, res.stderr
