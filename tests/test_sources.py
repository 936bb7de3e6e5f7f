"""Opening and normalising ERA5 layouts: WB2 Zarr, CDS NetCDF, GRIB, and their variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from era5latent.errors import DataValueError, OptionError, SourceError, SubsetError
from era5latent.io.sources import open_source
from era5latent.io.variables import parse_subset

from .conftest import ENSEMBLE_GRIB, UK_T2M_GRIB


def wb2_dataset(nlat: int = 9, nlon: int = 16, nt: int = 3) -> xr.Dataset:
    """A tiny WB2-layout dataset whose values encode their own coordinates (for checking)."""
    lat = np.linspace(90, -90, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    time = pd.date_range("2020-01-01", periods=nt, freq="6h")
    level = np.array([500, 850])
    rng = np.random.default_rng(0)
    z = 50000 + 100 * lat[None, None, :, None] + lon[None, None, None, :] \
        + rng.normal(size=(nt, 2, nlat, nlon))
    t2m = 280 + 0.1 * lat[None, :, None] + 0.01 * lon[None, None, :] + np.zeros((nt, 1, 1))
    return xr.Dataset(
        {"geopotential": (("time", "level", "latitude", "longitude"), z.astype("f4"),
                          {"units": "m2 s-2"}),
         "2m_temperature": (("time", "latitude", "longitude"), t2m.astype("f4"), {"units": "K"})},
        coords={"time": time, "level": level, "latitude": lat, "longitude": lon})


def _write_zarr(ds: xr.Dataset, path: Path) -> Path:
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return path


def test_wb2_zarr_opens_in_canonical_layout(tmp_path: Path) -> None:
    src = open_source(_write_zarr(wb2_dataset(), tmp_path / "a.zarr"))
    assert set(src.ds.data_vars) == {"z", "t2m"}
    assert src.ds["z"].dims == ("time", "level", "latitude", "longitude")
    assert src.layout.names == {"z": "geopotential", "t2m": "2m_temperature"}
    assert src.grid == (9, 16) and src.sample_dims == ()
    x = src.read(parse_subset("z500,t2m"), 0, 2)
    assert x.shape == (2, 2, 9, 16) and x.dtype == np.float32


@pytest.mark.parametrize("variant", ["ascending", "lon180", "lonlat-order"])
def test_layout_variants_normalise_to_the_same_values(tmp_path: Path, variant: str) -> None:
    ref = wb2_dataset()
    ds = ref
    if variant == "ascending":
        ds = ref.isel(latitude=slice(None, None, -1))
    elif variant == "lon180":
        ds = ref.assign_coords(longitude=((ref.longitude + 180) % 360) - 180).sortby("longitude")
    else:
        ds = ref.transpose("time", "level", "longitude", "latitude")
    a = open_source(_write_zarr(ref, tmp_path / "ref.zarr"))
    b = open_source(_write_zarr(ds, tmp_path / "var.zarr"))
    chs = parse_subset("z850,t2m")
    np.testing.assert_array_equal(a.read(chs, 0, 3), b.read(chs, 0, 3))
    np.testing.assert_array_equal(a.latitude, b.latitude)
    np.testing.assert_array_equal(a.longitude, b.longitude)
    assert b.layout.lat_descending == (variant != "ascending")
    assert (b.layout.lon_min < 0) == (variant == "lon180")


def test_cds_netcdf_short_names_valid_time_and_int16_packing(tmp_path: Path) -> None:
    ref = wb2_dataset()
    cds = ref.rename({"geopotential": "z", "2m_temperature": "t2m", "time": "valid_time",
                      "level": "pressure_level"})
    enc = {"z": {"dtype": "int16", "scale_factor": 2.0, "add_offset": 50000.0,
                 "_FillValue": -32767},
           "t2m": {"dtype": "int16", "scale_factor": 0.01, "add_offset": 280.0,
                   "_FillValue": -32767}}
    path = tmp_path / "cds.nc"
    cds.to_netcdf(path, engine="h5netcdf", encoding=enc)
    src = open_source(path)
    assert src.layout.format == "netcdf" and src.layout.names == {"z": "z", "t2m": "t2m"}
    got = src.read(parse_subset("z500,t2m"), 0, 3)
    want = open_source(_write_zarr(ref, tmp_path / "ref.zarr")).read(parse_subset("z500,t2m"), 0, 3)
    np.testing.assert_allclose(got, want, atol=1.01)  # int16 quantisation step


def test_missing_channel_lists_what_the_source_has(tmp_path: Path) -> None:
    src = open_source(_write_zarr(wb2_dataset(), tmp_path / "a.zarr"))
    with pytest.raises(SubsetError, match=r"no t850.*holds t2m, z@500/850;"):
        src.check_channels(parse_subset("z500,t850"))


def test_time_range_selection(tmp_path: Path) -> None:
    src = open_source(_write_zarr(wb2_dataset(nt=8), tmp_path / "a.zarr"))
    assert src.time_indices("2020-01-01T06/2020-01-02T00") == (1, 5)
    assert src.time_indices("/2020-01-01T06") == (0, 2)
    assert src.time_indices("2020-01-02/") == (4, 8)
    with pytest.raises(OptionError, match="selects no time"):
        src.time_indices("2021-01-01/2021-02-01")
    for bad in ("2020-01-01", "yesterday/today", "2020-02-01/2020-01-01"):
        with pytest.raises(OptionError):
            src.time_indices(bad)


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "nope.zarr")
    junk = tmp_path / "junk.grib"
    junk.write_bytes(b"GRIB" + b"\0" * 100)
    with pytest.raises(SourceError, match="cannot read"):
        open_source(junk)
    ds = wb2_dataset()
    ds["geopotential"].attrs["units"] = "m"
    with pytest.raises(DataValueError, match="9.80665"):
        open_source(_write_zarr(ds, tmp_path / "gpm.zarr"))
    dup = wb2_dataset().isel(time=[0, 1, 1])
    with pytest.raises(SourceError, match="duplicated time"):
        open_source(_write_zarr(dup, tmp_path / "dup.zarr"))
    notime = wb2_dataset().isel(time=0, drop=True)
    notime.to_netcdf(tmp_path / "notime.nc", engine="h5netcdf")
    with pytest.raises(SourceError, match="no time dimension"):
        open_source(tmp_path / "notime.nc")


@pytest.mark.realdata
def test_real_grib_samples_open(real_data: Path) -> None:
    ens = open_source(ENSEMBLE_GRIB)
    assert ens.sample_dims == ("number",) and ens.sample_shape == (10,)
    assert ens.grid == (61, 120) and ens.latitude[0] == 90.0
    x = ens.read(parse_subset("z500,t850"), 0, 1)
    assert x.shape == (1, 10, 2, 61, 120)
    assert 4.5e4 < x[:, :, 0].mean() < 6e4 and 240 < x[:, :, 1].mean() < 290
    uk = open_source(UK_T2M_GRIB)
    assert uk.grid == (33, 49) and len(uk.times) == 744
    assert uk.longitude[0] == -10.0  # regional grid crossing 0E stays contiguous
    assert uk.layout.names == {"t2m": "t2m"} and uk.layout.units == {"t2m": "K"}


@pytest.mark.parametrize("zarrs", ["1", "0"])
def test_a_damaged_source_chunk_is_a_clear_error(tmp_path: Path, zarrs: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERA5LATENT_ZARRS", zarrs)  # either codec pipeline: the same clear error
    path = _write_zarr(wb2_dataset(nt=4), tmp_path / "wb2.zarr")
    chunk = next(p for p in sorted((path / "geopotential").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:10])  # a truncated download
    src = open_source(str(path))
    with pytest.raises(SourceError, match=r"cannot read geopotential between .* damaged or unreachable"):
        src.read(parse_subset("z500,t2m"), 0, 4)
    np.testing.assert_array_equal(src.read(parse_subset("t2m"), 0, 4)[:, 0],  # the rest reads
                                  wb2_dataset(nt=4)["2m_temperature"].values)


def test_new_catalogue_variables_open_by_any_name(tmp_path: Path) -> None:
    """sp, tp, w, r, the 100 m wind (cfgrib's u100), the surface geopotential and a variable
    known only by its GRIB paramId attribute all open as their catalogue channels."""
    ref = wb2_dataset()
    lev = ref["geopotential"]
    sfc = ref["2m_temperature"]
    ds = xr.Dataset({
        "sp": (sfc * 360.0).assign_attrs(units="Pa"), "tp": (sfc * 0 + 1e-3).assign_attrs(units="m"),
        "w": (lev * 0 + 0.1).assign_attrs(units="Pa s**-1"),
        "r": (lev * 0 + 50.0).assign_attrs(units="%"),
        "u100": (sfc - 280.0).assign_attrs(units="m s**-1"), "z": sfc * 0 + 500.0,
        "var_x": (sfc.dims, (sfc * 0 + 1.0).values, {"GRIB_paramId": 172}),
    }).drop_vars("z").assign(z=(sfc.dims, (sfc * 0 + 500.0).values, {"units": "m2 s-2"}))
    ds = ds.rename({"time": "valid_time", "level": "pressure_level"})
    path = tmp_path / "cds.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    src = open_source(path)
    assert src.layout.names == {"sp": "sp", "tp": "tp", "w": "w", "r": "r", "u100m": "u100",
                                "lsm": "var_x", "zs": "z"}
    x = src.read(parse_subset("sp,tp,w500,r_850,100u,lsm,zs"), 0, 1)
    np.testing.assert_allclose(x[0, [1, 2, 3, 5, 6]].mean(axis=(1, 2)), [1e-3, 0.1, 50.0, 1.0, 500.0],
                               rtol=1e-6)


def test_a_grid_already_in_longitude_order_is_read_with_slices_not_an_index_array(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sortby`` on a grid already in order gave every read an index array along longitude,
    which zarr reads as a fancy selection, twice as slow; a rolled grid still reads right."""
    import zarr

    calls: list[tuple[Any, ...]] = []
    real = zarr.Array.get_orthogonal_selection

    def spy(self: Any, selection: Any, *a: Any, **k: Any) -> Any:
        calls.append(tuple(selection) if isinstance(selection, tuple) else (selection,))
        return real(self, selection, *a, **k)

    monkeypatch.setattr(zarr.Array, "get_orthogonal_selection", spy)
    ref = wb2_dataset()
    src = open_source(_write_zarr(ref, tmp_path / "in-order.zarr"))
    x = src.read(parse_subset("z500,t2m"), 0, 2)
    assert not any(isinstance(s, np.ndarray) for sel in calls for s in sel), calls
    rolled = ref.assign_coords(longitude=((ref.longitude + 180) % 360) - 180).sortby("longitude")
    y = open_source(_write_zarr(rolled, tmp_path / "rolled.zarr")).read(
        parse_subset("z500,t2m"), 0, 2)
    np.testing.assert_array_equal(x, y)
