"""WeatherBench 2 inputs to evaluate: climatologies by (hour, dayofyear) and regions, checked
against independent numpy computations on the real ERA5 samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from .conftest import ENSEMBLE_GRIB, UK_T2M_GRIB, assert_clean_error, run_cli

UK_WEEK = "2019-03-25/2019-03-31T23"


def _area_weights(lat: np.ndarray) -> np.ndarray:
    """Cell areas between the midpoints of neighbouring rows (outer edges half a spacing out),
    written out here independently of era5latent.evaluation.metrics."""
    lat = np.asarray(lat, dtype=np.float64)
    d = lat[1] - lat[0]
    edges = np.concatenate([[lat[0] - d / 2], (lat[:-1] + lat[1:]) / 2, [lat[-1] + d / 2]])
    edges = np.clip(edges, -90, 90)
    return np.abs(np.diff(np.sin(np.deg2rad(edges))))


def _acc_numpy(t: np.ndarray, r: np.ndarray, c: np.ndarray, w2: np.ndarray) -> float:
    out = []
    for i in range(t.shape[0]):
        af, at = r[i] - c[i], t[i] - c[i]
        out.append(np.sum(w2 * af * at) / np.sqrt(np.sum(w2 * af**2) * np.sum(w2 * at**2)))
    return float(np.mean(out))


def _noisy_copy(src_ds: xr.Dataset, path: Path, scale: dict[str, float]) -> Path:
    rng = np.random.default_rng(3)
    ds = src_ds.load().copy()
    for v, s in scale.items():
        ds[v] = ds[v] + rng.normal(0, s, ds[v].shape).astype(np.float32)
    ds.to_zarr(path, mode="w", consolidated=False)
    return path


@pytest.fixture(scope="module")
def uk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset, xr.Dataset]:
    """(reconstruction store of the held-out week, truth week, hour x dayofyear climatology)."""
    if not UK_T2M_GRIB.is_file():
        pytest.skip(f"real ERA5 sample {UK_T2M_GRIB} not found (set ERA5LATENT_REAL_DATA)")
    from era5latent.io.sources import open_source

    src = open_source(str(UK_T2M_GRIB))
    week = src.ds.sel(time=slice("2019-03-25", "2019-03-31T23"))
    tmp = tmp_path_factory.mktemp("uk")
    recon = _noisy_copy(week, tmp / "recon.zarr", {"t2m": 0.7})
    week.to_zarr(tmp / "truth.zarr", mode="w", consolidated=False)  # faster to open than GRIB
    # a WB2-layout climatology: hourly means of the first three weeks, plus a day-of-year trend
    # so that the right day matters; latitudes ascending and longitudes 0..360 as WB2 writes them
    train = src.ds.t2m.sel(time=slice("2019-03-01", "2019-03-21T23")).values.astype(np.float64)
    hourly = train.reshape(21, 24, *train.shape[1:]).mean(axis=0)  # (hour, lat, lon)
    doys = np.arange(1, 367)
    clim = np.zeros((24, 366, *train.shape[1:]), dtype=np.float32)
    clim[:] = hourly[:, None]
    clim += (0.05 * (doys - 84))[None, :, None, None].astype(np.float32)
    lat, lon = src.ds.latitude.values, src.ds.longitude.values
    ds = xr.Dataset({"2m_temperature": (("hour", "dayofyear", "latitude", "longitude"),
                                        clim[:, :, ::-1])},
                    coords={"hour": np.arange(24), "dayofyear": doys, "latitude": lat[::-1],
                            "longitude": np.mod(lon, 360.0)})
    return recon, week, ds


def _truth(recon: Path) -> Path:
    return recon.parent / "truth.zarr"


def _independent_uk_acc(week: xr.Dataset, recon: Path, clim: xr.Dataset,
                        mask: np.ndarray | None = None) -> float:
    t = week.t2m.values.astype(np.float64)
    r = xr.open_zarr(recon, consolidated=False).t2m.values.astype(np.float64)
    times = week.time.to_index()
    c = clim["2m_temperature"].values.astype(np.float64)
    hours, days = list(clim.hour.values), list(clim.dayofyear.values)
    c = np.stack([c[hours.index(h), days.index(d), ::-1]
                  for h, d in zip(times.hour, times.day_of_year)])
    w2 = _area_weights(week.latitude.values)[:, None] * np.ones(t.shape[-1])
    if mask is not None:
        w2 = w2 * mask
    return _acc_numpy(t, r, c, w2)


def test_acc_against_a_wb2_climatology_equals_numpy_on_real_uk_t2m(uk, tmp_path: Path) -> None:
    from era5latent.evaluation.score import evaluate
    from era5latent.io.sources import open_source

    recon, week, clim = uk
    report = evaluate(open_source(str(UK_T2M_GRIB)), open_source(str(recon)), climatology=clim,
                      time_chunk=50)
    (rec,) = report.records
    assert rec["acc_reference"] == "climatology (by day of year and hour)"
    assert rec["n_samples"] == 168
    assert rec["acc"] == pytest.approx(_independent_uk_acc(week, recon, clim), rel=1e-9)
    # the hour and the day both matter: a climatology taken at hour 0 only scores differently
    flat = clim.copy()
    flat["2m_temperature"] = flat["2m_temperature"].isel(hour=[0] * 24).assign_coords(
        hour=np.arange(24))
    other = evaluate(open_source(str(UK_T2M_GRIB)), open_source(str(recon)), climatology=flat)
    assert abs(other.records[0]["acc"] - rec["acc"]) > 1e-3


def test_acc_and_rmse_over_a_lat_lon_box_equal_numpy(uk) -> None:
    from era5latent.evaluation.score import evaluate
    from era5latent.io.sources import open_source

    recon, week, clim = uk
    report = evaluate(open_source(str(UK_T2M_GRIB)), open_source(str(recon)), climatology=clim,
                      region="51,54.5,-6,0.5")
    (rec,) = report.records
    lat, lon = week.latitude.values, week.longitude.values
    mask = ((lat >= 51) & (lat <= 54.5))[:, None] & ((lon >= -6) & (lon <= 0.5))[None, :]
    assert rec["region"] == "51,54.5,-6,0.5"
    assert rec["acc"] == pytest.approx(_independent_uk_acc(week, recon, clim, mask), rel=1e-9)
    t = week.t2m.values.astype(np.float64)
    r = xr.open_zarr(recon, consolidated=False).t2m.values.astype(np.float64)
    w2 = _area_weights(lat)[:, None] * mask
    rmse = np.mean([np.sqrt(np.sum(w2 * (r[i] - t[i]) ** 2) / w2.sum()) for i in range(len(t))])
    assert rec["rmse"] == pytest.approx(rmse, rel=1e-9)
    assert rec["max_abs_error"] == pytest.approx(float(np.abs(r - t)[:, mask].max()))


def test_dayofyear_climatology_with_levels_on_the_real_ensemble(tmp_path: Path) -> None:
    """WB2's (dayofyear, level, latitude, longitude) layout, ``temperature`` with a level dim,
    scored per member; tropics and extra-tropics as WB2 defines them."""
    if not ENSEMBLE_GRIB.is_file():
        pytest.skip(f"real ERA5 sample {ENSEMBLE_GRIB} not found (set ERA5LATENT_REAL_DATA)")
    from era5latent.evaluation.score import evaluate
    from era5latent.io.sources import open_source
    from era5latent.io.variables import parse_subset

    src = open_source(str(ENSEMBLE_GRIB))
    recon = _noisy_copy(src.ds, tmp_path / "recon.zarr", {"t": 0.8, "z": 30.0})
    lat, lon = src.ds.latitude.values, src.ds.longitude.values
    member_mean = src.ds.t.mean("number").values.astype(np.float64)  # (time, level, lat, lon)
    clim = np.zeros((366, 2, len(lat), len(lon)), dtype=np.float32)
    clim[:] = member_mean.mean(axis=0)[None]
    clim[0] += 0.5  # 1 January differs from 2 January
    ds = xr.Dataset({"temperature": (("dayofyear", "level", "latitude", "longitude"), clim)},
                    coords={"dayofyear": np.arange(1, 367), "level": [850, 500],
                            "latitude": lat, "longitude": lon})
    t_all = src.ds.t.sel(level=850).values.astype(np.float64)  # (time, number, lat, lon)
    r_all = xr.open_zarr(recon, consolidated=False).t.sel(level=850).values.astype(np.float64)
    doy = src.ds.time.to_index().day_of_year
    c = np.stack([clim[d - 1, 0] for d in doy]).astype(np.float64)
    t = t_all.reshape(-1, len(lat), len(lon))
    r = r_all.reshape(-1, len(lat), len(lon))
    c = np.repeat(c, t_all.shape[1], axis=0)
    for region, rows in (("global", np.ones(len(lat), bool)),
                         ("tropics", np.abs(lat) <= 20),
                         ("extra-tropics", np.abs(lat) >= 20)):
        report = evaluate(src, open_source(str(recon)), subset=parse_subset("t850"),
                          climatology=ds, region=region, time_chunk=3)
        (rec,) = report.records
        w2 = _area_weights(lat)[:, None] * rows[:, None] * np.ones(len(lon))
        assert rec["acc_reference"] == "climatology (by day of year)"
        assert rec["acc"] == pytest.approx(_acc_numpy(t, r, c, w2), rel=1e-9), region


def test_wb2_climatology_through_the_cli_and_its_errors(uk, tmp_path: Path) -> None:
    recon, week, clim = uk
    clim = clim.sel(dayofyear=slice(80, 95))  # the days the week needs: a small store to write
    path = tmp_path / "clim.zarr"
    clim.to_zarr(path, mode="w", consolidated=False)
    out = tmp_path / "e.json"
    res = run_cli("evaluate", _truth(recon), recon, "--climatology", path, "--region", "tropics",
                  "--json", out)
    assert_clean_error(res, "tropics", "no point")
    res = run_cli("evaluate", _truth(recon), recon, "--climatology", path, "--json", out)
    assert res.exit_code == 0, res.stderr
    import json

    doc = json.loads(out.read_text())
    assert doc["acc_reference"] == "climatology (by day of year and hour)"
    assert doc["records"][0]["acc"] == pytest.approx(_independent_uk_acc(week, recon, clim),
                                                     rel=1e-9)
    six_hourly = clim.isel(hour=[0, 6, 12, 18])
    path6 = tmp_path / "clim6.zarr"
    six_hourly.to_zarr(path6, mode="w", consolidated=False)
    assert_clean_error(run_cli("evaluate", _truth(recon), recon, "--climatology", path6),
                       "hours", "every hour")
    assert_clean_error(run_cli("evaluate", _truth(recon), recon, "--region", "50,60,east,west"),
                       "region", "LAT0,LAT1,LON0,LON1")


def test_region_masks_follow_wb2() -> None:
    from era5latent.errors import GridMismatchError, OptionError
    from era5latent.evaluation.regions import parse_region

    lat = np.linspace(90, -90, 37)  # 5 degrees
    lon = np.arange(0, 360, 5.0)
    europe = parse_region("35,75,-12.5,42.5").mask(lat, lon)  # WB2's Europe, across 0 degrees
    cols = europe.any(axis=0)
    assert cols[lon == 350].all() and cols[lon == 40].all() and not cols[lon == 180].any()
    assert not cols[lon == 345].any() and not cols[lon == 45].any()
    rows = europe.any(axis=1)
    assert set(lat[rows]) == {35, 40, 45, 50, 55, 60, 65, 70, 75}
    trop = parse_region("tropics").mask(lat, lon).any(axis=1)
    extra = parse_region("extra-tropics").mask(lat, lon).any(axis=1)
    assert set(lat[trop]) == set(np.arange(-20, 21, 5.0))
    assert set(lat[extra]) == {x for x in lat if abs(x) >= 20}  # +-20 in both, as in WB2
    nh = parse_region("northern-hemisphere")
    assert nh == parse_region("nh") and nh.name == "northern-extra-tropics"
    assert set(lat[nh.mask(lat, lon).any(axis=1)]) == {x for x in lat if x >= 20}
    with pytest.raises(OptionError, match="LAT0 <= LAT1"):
        parse_region("60,50,0,10")
    with pytest.raises(GridMismatchError, match="no point"):
        parse_region("10,20,0,10").mask(np.linspace(58, 50, 33), np.linspace(-10, 2, 49))
