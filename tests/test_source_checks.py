"""Sources are checked up front: each defect is one line, exit 2, and nothing is written.

Time coordinates must be datetimes; latitude and longitude non-empty, finite and without
duplicates; fields real-valued. Options like ``--time A/B/C`` and absurd ``--parts`` are refused;
a damaged GRIB file gives the documented message with cfgrib's traceback kept off the terminal.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .conftest import UK_T2M_GRIB, assert_clean_error, run_cli
from .test_sources import wb2_dataset


def _strings_as_time(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_coords(time=[f"day {i}" for i in range(ds.sizes["time"])])


def _no_time_coordinate(ds: xr.Dataset) -> xr.Dataset:
    return ds.drop_vars("time")


def _float_time(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_coords(time=np.arange(ds.sizes["time"], dtype=np.float64))


def _empty_latitude(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(latitude=slice(0, 0))


def _nan_latitude(ds: xr.Dataset) -> xr.Dataset:
    lat = ds["latitude"].values.copy()
    lat[3] = np.nan
    return ds.assign_coords(latitude=lat)


def _duplicate_longitude(ds: xr.Dataset) -> xr.Dataset:
    lon = ds["longitude"].values.copy()
    lon[5] = lon[4]
    return ds.assign_coords(longitude=lon)


def _complex(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign(geopotential=ds["geopotential"].astype("c8") * (1 + 1j))


def _text(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign(geopotential=ds["geopotential"].astype(str))


DEFECTS: dict[str, tuple[Callable[[xr.Dataset], xr.Dataset], str]] = {
    "time of strings": (_strings_as_time, "expected datetimes"),
    "no time coordinate": (_no_time_coordinate, "expected datetimes"),
    "float time without units": (_float_time, "expected datetimes"),
    "empty latitude": (_empty_latitude, "empty latitude"),
    "NaN latitude": (_nan_latitude, "NaN"),
    "duplicate longitude": (_duplicate_longitude, "duplicated"),
    "complex field": (_complex, "complex"),
    "text field": (_text, "expected floating-point"),
}


@pytest.mark.parametrize("fmt", ["zarr", "nc"])
@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_source_defect_is_one_line_and_leaves_nothing(defect: str, fmt: str,
                                                           tiny_model: Path,
                                                           tmp_path: Path) -> None:
    make, needle = DEFECTS[defect]
    ds = make(wb2_dataset())
    src = tmp_path / f"bad.{fmt}"
    try:
        with warnings.catch_warnings():  # the writers' notes on these odd datasets
            warnings.simplefilter("ignore")
            if fmt == "zarr":
                ds.to_zarr(src, zarr_format=3, consolidated=False)
            else:
                ds.to_netcdf(src, engine="h5netcdf", invalid_netcdf=True)
    except Exception as err:  # a format that cannot hold the defect at all
        pytest.skip(f"{fmt} cannot store this defect: {type(err).__name__}")
    out = tmp_path / "latent.zarr"
    res = run_cli("encode", src, "--model", tiny_model, "--subset", "z500", "--out", out,
                  "--device", "cpu")
    assert_clean_error(res, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_malformed_time_and_parts_options_are_refused(sample_zarr: Path, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    out = tmp_path / "latent.zarr"
    args = ["encode", sample_zarr, "--model", tiny_model, "--subset", "z500", "--out", out,
            "--device", "cpu"]
    assert_clean_error(run_cli(*args, "--time", "2020-01-01/2020-01-02/2020-01-03"),
                       "expected START/END")
    assert_clean_error(run_cli(*args, "--parts", "1/99999999999999999999"), "--parts",
                       "I <= N <=")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_grib_is_the_documented_line_without_cfgrib_traceback(
        real_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.grib"
    data = UK_T2M_GRIB.read_bytes()
    cut.write_bytes(data[:len(data) // 2 + 1000])  # ends inside a message
    res = run_cli("encode", cut, "--model", tiny_model, "--subset", "t2m", "--out",
                  tmp_path / "l.zarr", "--device", "cpu")
    assert_clean_error(res, f"cannot read {cut} as grib", "check that the file is complete")
    assert "corrupted" not in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.grib"]


def test_grib_messages_of_several_hypercubes_print_nothing_of_cfgrib(
        real_data: Path, tiny_model: Path, tmp_path: Path) -> None:
    from .conftest import ENSEMBLE_GRIB

    mixed = tmp_path / "mixed.grib"
    mixed.write_bytes(ENSEMBLE_GRIB.read_bytes() + UK_T2M_GRIB.read_bytes())
    res = run_cli("encode", mixed, "--model", tiny_model, "--subset", "z500", "--out",
                  tmp_path / "l.zarr", "--device", "cpu")
    assert_clean_error(res, "grid")  # the tiny model's grid is another: one line, nothing else
    assert "DatasetBuildError" not in res.stderr and "skipping" not in res.stderr
