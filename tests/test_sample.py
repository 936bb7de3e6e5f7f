"""The synthetic ERA5-like sample: layout, determinism, options, calibration, Zarr round trip."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from era5latent.errors import OptionError, StoreExistsError
from era5latent.io.sample import (TARGETS, expected_lag1, make_sample, mid_band, parse_grid,
                               write_sample, zonal_slope)
from era5latent.io.variables import VARIABLES, WB2_LEVELS

LONG = {v.name: v.wb2_name for v in VARIABLES}
PRESSURE = ("z", "t", "u", "v", "q")
SURFACE = ("t2m", "u10", "v10", "msl")

# Tolerances documented in docs/sample-data.md: over a year of samples the grid-point mean is within
# 0.06 standard deviations and the grid-point std within 6% of TARGETS; the lag-1 autocorrelation of the
# anomaly is within 0.03 of expected_lag1.
MEAN_TOL, STD_TOL, LAG_TOL = 0.06, 0.06, 0.03


@pytest.fixture(scope="module")
def default_ds() -> xr.Dataset:
    return make_sample()


@pytest.fixture(scope="module")
def year_ds() -> xr.Dataset:
    return make_sample(grid=(37, 72), times=146, start="2021-01-01", freq="60h", seed=1)


def channels(ds: xr.Dataset):
    for short in PRESSURE + SURFACE:
        da = ds[LONG[short]]
        if "level" in da.dims:
            for lev in ds.level.values:
                yield f"{short}{int(lev)}", da.sel(level=lev).values
        else:
            yield short, da.values


def pooled_lag1(x: np.ndarray) -> float:
    """Lag-1 correlation along axis 0 of a zero-mean field (no mean removal: no bias from short series)."""
    a, b = x[:-1].astype(np.float64), x[1:].astype(np.float64)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


# -- layout --------------------------------------------------------------------------------------------


def test_default_layout_is_weatherbench2(default_ds: xr.Dataset) -> None:
    ds = default_ds
    assert list(ds.data_vars) == [LONG[n] for n in PRESSURE + SURFACE]
    assert dict(ds.sizes) == {"time": 64, "level": 13, "latitude": 73, "longitude": 144}
    for n in PRESSURE:
        da = ds[LONG[n]]
        assert da.dims == ("time", "level", "latitude", "longitude")
        assert da.encoding["chunks"] == (1, 13, 73, 144)
    for n in SURFACE:
        assert ds[LONG[n]].dims == ("time", "latitude", "longitude")
        assert ds[LONG[n]].encoding["chunks"] == (1, 73, 144)
    for name, da in ds.data_vars.items():
        assert da.dtype == np.float32, name
        assert da.attrs["units"] and da.attrs["long_name"], name
        assert np.isfinite(da.values).all(), name
    assert ds.geopotential.attrs["units"] == "m2 s-2"
    assert ds.specific_humidity.attrs["units"] == "kg kg-1"
    assert ds.mean_sea_level_pressure.attrs["units"] == "Pa"
    lat, lon = ds.latitude.values, ds.longitude.values
    assert lat[0] == 90.0 and lat[-1] == -90.0 and (np.diff(lat) < 0).all()
    np.testing.assert_allclose(np.diff(lat), -2.5)
    assert lon[0] == 0.0 and lon[-1] == pytest.approx(360 - 2.5) and np.allclose(np.diff(lon), 2.5)
    assert ds.level.dtype == np.int64 and tuple(ds.level.values) == WB2_LEVELS
    assert ds.level.attrs["units"] == "hPa"
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds.time.values[0] == np.datetime64("2020-01-01T00:00")
    assert (np.diff(ds.time.values) == np.timedelta64(6, "h")).all()
    assert "synthetic" in ds.attrs and ds.attrs["seed"] == 0 and ds.attrs["generator_version"]


def test_poles_are_single_valued_for_scalars(default_ds: xr.Dataset) -> None:
    for n in ("z", "t", "q", "t2m", "msl"):
        x = default_ds[LONG[n]].values
        for row in (0, -1):
            pole = x[..., row, :]
            spread = (pole.max(-1) - pole.min(-1)).max()
            assert spread <= 1e-5 * np.abs(pole).max(), (n, row, spread)


def test_humidity_positive(default_ds: xr.Dataset, year_ds: xr.Dataset) -> None:
    assert (default_ds.specific_humidity.values > 0).all()
    assert (year_ds.specific_humidity.values > 0).all()


def test_physical_shape(default_ds: xr.Dataset) -> None:
    ds = default_ds.mean(("time", "longitude"))
    lat = ds.latitude.values
    eq, pole = np.abs(lat) < 10, np.abs(lat) > 75
    for name, lev in (("geopotential", 500), ("temperature", 850), ("specific_humidity", 850)):
        prof = ds[name].sel(level=lev).values
        assert prof[eq].mean() > prof[pole].mean(), name  # high tropics, low poles
    assert ds["2m_temperature"].values[eq].mean() > 295 > ds["2m_temperature"].values[pole].mean()
    u250 = ds.u_component_of_wind.sel(level=250).values
    jet = lat[np.argmax(np.where(lat > 0, u250, -np.inf))]
    assert 20 <= jet <= 55 and u250.max() > 20  # subtropical / mid-latitude jet
    msl = ds.mean_sea_level_pressure.values
    assert 100_000 < msl.mean() < 102_000
    assert msl[(lat < -55) & (lat > -70)].mean() < msl[np.abs(np.abs(lat) - 30) < 6].mean()  # lows poleward


def test_winds_are_geostrophic_ish() -> None:
    ds = make_sample(grid=(73, 144), times=8, variables=("z", "u", "v"), levels=(500,), seed=3)
    lat = ds.latitude.values
    z = ds.geopotential.values[:, 0]
    u = ds.u_component_of_wind.values[:, 0]
    v = ds.v_component_of_wind.values[:, 0]
    dz_row = np.gradient(z, axis=1)  # rows run north to south: u_g ~ +dz/drow in the north
    dz_x = np.gradient(z, axis=2)
    ue, ve = u - u.mean(-1, keepdims=True), v - v.mean(-1, keepdims=True)
    for hemi, sign in ((lat > 0, 1), (lat < 0, -1)):
        sel = mid_band(lat) & hemi
        cu = np.corrcoef(ue[:, sel].ravel(), sign * (dz_row - dz_row.mean(-1, keepdims=True))[:, sel].ravel())[0, 1]
        cv = np.corrcoef(ve[:, sel].ravel(), sign * dz_x[:, sel].ravel())[0, 1]
        assert cu > 0.6 and cv > 0.6, (cu, cv)


# -- determinism ---------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs() -> None:
    kw = dict(grid=(19, 36), times=5, levels=(500, 850))
    a, b, c = make_sample(seed=7, **kw), make_sample(seed=7, **kw), make_sample(seed=8, **kw)
    for name in a.data_vars:
        assert a[name].values.tobytes() == b[name].values.tobytes(), name
        assert not np.array_equal(a[name].values, c[name].values), name
    short = make_sample(seed=7, **{**kw, "times": 3})
    xr.testing.assert_identical(short, a.isel(time=slice(0, 3)).assign_attrs(a.attrs))


def test_variable_streams_do_not_depend_on_other_variables() -> None:
    kw = dict(grid=(19, 36), times=3, levels=(500,), seed=2)
    both = make_sample(variables=("z", "t2m"), **kw)
    alone = make_sample(variables=("t2m",), **kw)
    np.testing.assert_array_equal(both["2m_temperature"].values, alone["2m_temperature"].values)


# -- options -------------------------------------------------------------------------------------------


def test_option_handling() -> None:
    ds = make_sample(grid=(10, 20), times=4, start="2019-03-01T06", freq="1h",
                     variables=("temperature", "2t", "msl"), levels=(850, 500), seed=3)
    assert list(ds.data_vars) == ["temperature", "2m_temperature", "mean_sea_level_pressure"]
    assert tuple(ds.level.values) == (500, 850)  # WB2 order: ascending
    assert dict(ds.sizes) == {"time": 4, "level": 2, "latitude": 10, "longitude": 20}
    assert ds.longitude.values[-1] == 342.0 and ds.latitude.values[-1] == -90.0
    assert str(ds.time.values[0])[:16] == "2019-03-01T06:00"
    assert (np.diff(ds.time.values) == np.timedelta64(1, "h")).all()
    surf = make_sample(grid="12x24", times=2, freq="1D", variables=("u10", "v10"))
    assert "level" not in surf.dims and "level" not in surf.coords
    assert surf["10m_u_component_of_wind"].dims == ("time", "latitude", "longitude")
    assert (np.diff(surf.time.values) == np.timedelta64(1, "D")).all()
    odd = make_sample(grid=(5, 7), times=1, variables=("z",), levels=(10, 1000))  # tiny odd grid, 10 hPa
    assert odd.geopotential.sel(level=10).mean() > odd.geopotential.sel(level=1000).mean() + 2e5


@pytest.mark.parametrize("kwargs, needle", [
    (dict(variables=("z", "zz")), "unknown variable"),
    (dict(variables=("z", "tp")), "no calibration"),
    (dict(variables=("z", "geopotential")), "twice"),
    (dict(variables=()), "no variables"),
    (dict(levels=(500, 500)), "twice"),
    (dict(levels=(0,)), "1..1000"),
    (dict(levels=(1100,)), "1..1000"),
    (dict(levels=()), "no pressure levels"),
    (dict(freq="every hour"), "freq"),
    (dict(freq="-6h"), "freq"),
    (dict(start="yesterday-ish"), "start"),
    (dict(times=0), "times"),
    (dict(seed=-1), "seed"),
    (dict(grid=(3, 144)), "too small"),
    (dict(grid="73by144"), "NLATxNLON"),
])
def test_bad_options_raise_option_error(kwargs: dict, needle: str) -> None:
    base = dict(grid=(10, 20), times=2)
    with pytest.raises(OptionError, match=needle) as info:
        make_sample(**{**base, **kwargs})
    assert "\n" not in str(info.value)


def test_parse_grid() -> None:
    assert parse_grid("73x144") == (73, 144)
    assert parse_grid(" 721X1440 ") == (721, 1440)
    assert parse_grid("4x4") == (4, 4)
    for bad in ("", "73", "73x", "x144", "73x144x2", "a x b", "3x144", "73x3", "0x0", "-73x144", "73.5x144"):
        with pytest.raises(OptionError):
            parse_grid(bad)


# -- calibration ---------------------------------------------------------------------------------------


def test_year_matches_calibration_targets(year_ds: xr.Dataset) -> None:
    bad = []
    seen = 0
    for code, x in channels(year_ds):
        m, s = TARGETS[code]
        dm, ds_ = (x.mean() - m) / s, x.std() / s - 1
        seen += 1
        if abs(dm) > MEAN_TOL or abs(ds_) > STD_TOL:
            bad.append(f"{code}: mean {x.mean():.5g} vs {m:.5g}, std {x.std():.4g} vs {s:.4g}")
    assert seen == 5 * 13 + 4
    assert not bad, bad


def test_headline_targets_are_the_published_ones() -> None:
    assert TARGETS["z500"] == pytest.approx((54117, 3360), rel=0.01)
    assert TARGETS["t850"] == pytest.approx((274.57, 15.62), rel=0.01)


@pytest.mark.parametrize("name, level, freq, hours", [
    ("z", 500, "12h", 12), ("t", 850, "6h", 6), ("u", 250, "6h", 6), ("msl", None, "12h", 12),
])
def test_lag1_autocorrelation_matches_target(name: str, level: int | None, freq: str, hours: float) -> None:
    ds = make_sample(grid=(37, 72), times=24, freq=freq, variables=(name,),
                     levels=(level,) if level else WB2_LEVELS, seed=5)
    da = ds[LONG[name]]
    x = (da.sel(level=level) if level else da).values
    lat = ds.latitude.values
    eddy = (x - x.mean(-1, keepdims=True))[:, mid_band(lat)]
    target = expected_lag1(name, level, hours)
    assert pooled_lag1(eddy) == pytest.approx(target, abs=LAG_TOL)


def test_expected_lag1_follows_real_era5() -> None:
    assert expected_lag1("z", 500, 12) == pytest.approx(0.909)  # measured, ERA5 ensemble sample, 12 h
    assert expected_lag1("t", 850, 12) == pytest.approx(0.848)
    assert expected_lag1("2t", None, 1) == pytest.approx(0.977)  # measured, hourly UK t2m
    steps = [0.5, 1, 3, 6, 12, 24, 48, 120]
    for name, lev in (("z", 500), ("t2m", None), ("q", 700), ("v10", None)):
        r = [expected_lag1(name, lev, h) for h in steps]
        assert all(0 < b < a < 1 for a, b in zip(r, r[1:])), (name, r)
    assert expected_lag1("z", 500, 1) > expected_lag1("u", 500, 1)


def test_spectra_are_red_and_steep(default_ds: xr.Dataset) -> None:
    lat = default_ds.latitude.values
    z500 = zonal_slope(default_ds.geopotential.sel(level=500).values, lat, 8, 36)
    z850 = zonal_slope(default_ds.geopotential.sel(level=850).values, lat, 8, 36)
    t850 = zonal_slope(default_ds.temperature.sel(level=850).values, lat, 8, 36)
    q700 = zonal_slope(default_ds.specific_humidity.sel(level=700).values, lat, 8, 36)
    assert -6.0 < z500 < -3.8  # ERA5 (3-degree sample, Jan 2017): -4.6
    assert -5.0 < z850 < -3.0  # ERA5: -3.8
    assert -3.5 < t850 < -1.8  # ERA5: -2.4
    assert z500 < z850  # z smoother aloft
    assert q700 < -1.5


# -- Zarr ----------------------------------------------------------------------------------------------


def test_write_sample_round_trips(tmp_path: Path) -> None:
    kw = dict(grid=(19, 36), times=5, variables=("z", "q", "t2m"), levels=(500, 850), seed=4)
    path = tmp_path / "s.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no zarr/xarray warnings on write or read
        opened = write_sample(str(path), **kw)
        back = xr.open_zarr(path)
    mem = make_sample(**kw)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    for name in mem.data_vars:
        np.testing.assert_array_equal(back[name].values, mem[name].values)
        assert back[name].dtype == np.float32
        assert back[name].encoding["chunks"] == mem[name].encoding["chunks"]
        assert back[name].attrs == mem[name].attrs
    assert back.geopotential.encoding["chunks"] == (1, 2, 19, 36)
    np.testing.assert_array_equal(back.time.values, mem.time.values)
    np.testing.assert_array_equal(back.latitude.values, mem.latitude.values)
    assert back.level.dtype == np.int64 and back.attrs["seed"] == 4
    assert set(opened.data_vars) == set(mem.data_vars)
    with pytest.raises(StoreExistsError, match="overwrite"):
        write_sample(str(path), **kw)
    again = write_sample(path, overwrite=True, **{**kw, "seed": 5})
    assert not np.array_equal(again.geopotential.values, mem.geopotential.values)


# -- real data -----------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_close_to_real_era5(real_data: Path) -> None:
    def grib(name: str) -> xr.Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return xr.open_dataset(real_data / name, engine="cfgrib", backend_kwargs={"indexpath": ""}).load()

    real = grib("era5-levels-members.grib")
    lat = real.latitude.values
    syn = [make_sample(grid=(61, 120), times=4, start="2017-01-01", freq="12h", variables=("z", "t"),
                       levels=(500, 850), seed=s) for s in range(8)]
    for short, lev, slope_tol in (("z", 500, 0.6), ("z", 850, 0.6), ("t", 500, 0.6), ("t", 850, 0.6)):
        r = real[short].sel(isobaricInhPa=lev).values.astype(np.float64)
        s = np.stack([d[LONG[short]].sel(level=lev).values for d in syn]).astype(np.float64)
        assert abs(s.mean() - r.mean()) < 0.1 * r.std(), (short, lev)
        assert s.std() == pytest.approx(r.std(), rel=0.15), (short, lev)
        pr, ps = r.mean((0, 1, 3)), s.mean((0, 1, 3))
        assert np.corrcoef(pr, ps)[0, 1] > 0.94, (short, lev)
        assert zonal_slope(s, lat, 8, 45) == pytest.approx(zonal_slope(r, lat, 8, 45), abs=slope_tol)
        er, es = r - r.mean(-1, keepdims=True), s - s.mean(-1, keepdims=True)
        lag_r = np.corrcoef(er[:, :-1][..., mid_band(lat), :].ravel(), er[:, 1:][..., mid_band(lat), :].ravel())[0, 1]
        lag_s = np.corrcoef(es[:, :-1][..., mid_band(lat), :].ravel(), es[:, 1:][..., mid_band(lat), :].ravel())[0, 1]
        assert lag_s == pytest.approx(lag_r, abs=0.05), (short, lev)
        eddy_r = np.sqrt((er[..., mid_band(lat), :] ** 2).mean())
        eddy_s = np.sqrt((es[..., mid_band(lat), :] ** 2).mean())
        assert eddy_s == pytest.approx(eddy_r, rel=0.3), (short, lev)

    uk = grib("era5-t2m-uk-2019-03.grib").t2m
    hours = pd.DatetimeIndex(uk.time.values).hour.values
    x = uk.values.astype(np.float64)
    comp = np.stack([x[hours == h].mean(0) for h in range(24)])
    des = x - comp[hours]
    lag_real = np.corrcoef(des[:-1].ravel(), des[1:].ravel())[0, 1]
    assert lag_real == pytest.approx(expected_lag1("t2m", None, 1), abs=0.005)
    z = real.z.sel(isobaricInhPa=500).values
    e = z - z.mean(-1, keepdims=True)
    sel = mid_band(lat)
    lag_z = np.corrcoef(e[:, :-1][..., sel, :].ravel(), e[:, 1:][..., sel, :].ravel())[0, 1]
    assert lag_z == pytest.approx(expected_lag1("z", 500, 12), abs=0.005)
