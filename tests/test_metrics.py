"""WeatherBench 2 metrics against hand-computed values on tiny grids."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from era5latent.evaluation import metrics as M
from era5latent.errors import GridMismatchError, OptionError, SourceError


def _sind(x):
    return np.sin(np.deg2rad(x))


# ------------------------------------------------------------------ latitude weights


def test_weights_three_rows_by_hand():
    # cells: -90..-30, -30..30, 30..90 -> areas 0.5, 1, 0.5 -> mean-1 weights
    np.testing.assert_allclose(M.latitude_weights([60.0, 0.0, -60.0]), [0.75, 1.5, 0.75])


def test_weights_asymmetric_by_hand():
    lat = [80.0, 40.0, 0.0]  # edges 90 (clamped from 100), 60, 20, -20
    area = np.array([1 - _sind(60), _sind(60) - _sind(20), 2 * _sind(20)])
    np.testing.assert_allclose(M.latitude_weights(lat), area / area.mean())


def test_weights_global_with_poles_match_wb2_formula():
    lat = np.linspace(90, -90, 73)  # 2.5 degrees, both poles, descending like WB2
    d = np.deg2rad(2.5)
    expect = np.cos(np.deg2rad(lat)) * np.sin(d / 2)
    expect[[0, -1]] = np.sin(d / 4) ** 2
    w = M.latitude_weights(lat)
    np.testing.assert_allclose(w, expect / expect.mean(), rtol=1e-10)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w, w[::-1])  # symmetric
    assert w[0] < w[1] / 4 and w[0] == w.min()  # poles small (a cap of half a spacing)
    assert np.argmax(w) == 36  # equator largest


def test_weights_without_poles_are_cos_lat():
    lat = np.arange(-89.5, 90, 1.0)  # ascending, no poles
    w = M.latitude_weights(lat)
    c = np.cos(np.deg2rad(lat))
    np.testing.assert_allclose(w, c / c.mean(), rtol=1e-10)


def test_weights_follow_given_order():
    lat = np.array([10.0, -30.0, 50.0, -10.0, 30.0, -50.0])
    s = np.sort(lat)
    w_sorted = M.latitude_weights(s)
    w = M.latitude_weights(lat)
    for i, v in enumerate(lat):
        assert w[i] == pytest.approx(w_sorted[np.searchsorted(s, v)])


def test_weights_regional_grid():
    lat = np.arange(50.0, 58.5, 1.0)  # 50..58N; end cells reach 49.5 and 58.5
    edges = np.arange(49.5, 59.0, 1.0)
    area = np.diff(_sind(edges))
    np.testing.assert_allclose(M.latitude_weights(lat), area / area.mean())


def test_weights_single_row_and_bad_input():
    np.testing.assert_allclose(M.latitude_weights([45.0]), [1.0])
    with pytest.raises(SourceError, match="repeated"):
        M.latitude_weights([10.0, 10.0, 0.0])
    with pytest.raises(SourceError, match="-90..90"):
        M.latitude_weights([0.0, 45.0, 95.0])
    with pytest.raises(SourceError):
        M.latitude_weights([[0.0, 1.0]])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-90, 90, allow_nan=False), min_size=2, max_size=40, unique=True))
def test_weights_properties(lats):
    lat = np.array(lats)
    if np.min(np.diff(np.sort(lat))) < 1e-6:
        return
    w = M.latitude_weights(lat)
    assert w.shape == lat.shape
    assert np.all(w >= 0)
    assert w.mean() == pytest.approx(1.0)
    # the weighted mean of a constant field is that constant
    f = np.full((lat.size, 3), 7.5)
    assert float(M.weighted_spatial_mean(f, lat)) == pytest.approx(7.5)


# ------------------------------------------------------------------ weighted means and errors


LAT3 = np.array([60.0, 0.0, -60.0])  # weights 0.75, 1.5, 0.75


def test_weighted_mean_3x4_by_hand():
    f = np.array([[1.0, 2, 3, 4], [5, 6, 7, 8], [0, 0, 0, 4]])
    # row means 2.5, 6.5, 1.0 -> (0.75*2.5 + 1.5*6.5 + 0.75*1.0) / 3
    expect = (0.75 * 2.5 + 1.5 * 6.5 + 0.75 * 1.0) / 3
    assert float(M.weighted_spatial_mean(f, LAT3)) == pytest.approx(expect)
    stack = np.stack([f, 2 * f])
    np.testing.assert_allclose(M.weighted_spatial_mean(stack, LAT3), [expect, 2 * expect])


def _truth(t=3, lat=LAT3, nlon=4, seed=0):
    return np.random.default_rng(seed).normal(280, 5, (t, len(lat), nlon))


def test_constant_offset():
    t = _truth()
    assert M.rmse(t, t + 1.5, LAT3) == pytest.approx(1.5)
    assert M.rmse(t, t + 1.5, LAT3, sqrt_before_time_mean=False) == pytest.approx(1.5)
    assert M.bias(t, t + 1.5, LAT3) == pytest.approx(1.5)
    assert M.bias(t, t - 2.0, LAT3) == pytest.approx(-2.0)
    assert M.mae(t, t - 2.0, LAT3) == pytest.approx(2.0)
    assert M.max_abs_error(t, t - 2.0) == pytest.approx(2.0)


def test_rmse_time_order_by_hand():
    t = np.zeros((2, 3, 4))
    r = np.stack([np.full((3, 4), 1.0), np.full((3, 4), 3.0)])
    assert M.rmse(t, r, LAT3) == pytest.approx(2.0)  # mean(1, 3)
    assert M.rmse(t, r, LAT3, sqrt_before_time_mean=False) == pytest.approx(np.sqrt(5.0))


def test_weighted_rmse_and_mae_by_hand():
    t = np.zeros((3, 4))
    r = np.zeros((3, 4))
    r[0] = 2.0  # error only in the 60N row (weight 0.75 of total 3)
    assert M.rmse(t, r, LAT3) == pytest.approx(np.sqrt(0.75 * 4 / 3))
    assert M.mae(t, r, LAT3) == pytest.approx(0.75 * 2 / 3)
    assert M.bias(t, -r, LAT3) == pytest.approx(-0.5)
    # alternating +-1 errors: bias 0, mae 1
    e = np.array([1.0, -1.0, 1.0, -1.0])
    assert M.bias(t, t + e, LAT3) == pytest.approx(0.0)
    assert M.mae(t, t + e, LAT3) == pytest.approx(1.0)


def test_acc():
    t = _truth(t=4)
    clim = t.mean(axis=0)
    assert M.acc(t, t, clim, LAT3) == pytest.approx(1.0)
    assert M.acc(t, 2 * t - clim, clim, LAT3) == pytest.approx(1.0)  # scaled anomalies
    assert M.acc(t, 2 * clim - t, clim, LAT3) == pytest.approx(-1.0)
    # per-time climatology broadcasts too; zero truth anomaly gives NaN
    assert np.isnan(M.acc(t[:1], t[:1], t[:1], LAT3))
    with pytest.raises(GridMismatchError):
        M.acc(t, t, np.zeros((5, 4)), LAT3)


def test_acc_by_hand():
    # one time, uncentred anomalies a_t = (1, 0, 0) rows, a_f = (1, 1, 0) rows
    clim = np.zeros((3, 1))
    t = np.array([[1.0], [0.0], [0.0]])
    f = np.array([[1.0], [1.0], [0.0]])
    # weights 0.75, 1.5, 0.75: sum(w a_f a_t) = 0.75, sum(w a_f^2) = 2.25, sum(w a_t^2) = 0.75
    expect = 0.75 / np.sqrt((0.75 + 1.5) * 0.75)
    assert M.acc(t, f, clim, LAT3) == pytest.approx(expect)


# ------------------------------------------------------------------ spectra


def _grid(nlat=19, nlon=64):
    lat = np.linspace(90, -90, nlat)
    lon = np.arange(nlon) * 360 / nlon
    return lat, lon


@pytest.mark.parametrize("k", [1, 5, 13, 31])
def test_spectrum_of_pure_wave_peaks_at_k(k):
    lat, lon = _grid()
    f = 3.0 * np.cos(k * np.deg2rad(lon))[None, :] * np.ones((lat.size, 1))
    p = M.zonal_power_spectrum(f, lat)
    assert p.shape == (33,)
    assert int(np.argmax(p)) == k
    assert p[k] == pytest.approx(4.5)  # A^2 / 2
    assert p.sum() == pytest.approx(float(M.weighted_spatial_mean(f**2, lat)))


def test_spectrum_parseval_and_nyquist():
    lat, lon = _grid()
    rng = np.random.default_rng(1)
    f = rng.normal(size=(2, lat.size, lon.size))
    p = M.zonal_power_spectrum(f, lat)
    assert p.sum() == pytest.approx(float(np.mean(M.weighted_spatial_mean(f**2, lat))))
    nyq = np.cos(np.pi * np.arange(lon.size))[None, :] * np.ones((lat.size, 1))
    assert M.zonal_power_spectrum(nyq, lat)[-1] == pytest.approx(1.0)


def test_small_scale_power_ratio():
    lat, lon = _grid()
    rng = np.random.default_rng(2)
    t = rng.normal(size=(2, lat.size, lon.size))
    assert M.small_scale_power_ratio(t, t, lat) == pytest.approx(1.0)
    smooth = (t + np.roll(t, 1, -1) + np.roll(t, -1, -1)) / 3
    assert M.small_scale_power_ratio(t, smooth, lat) < 0.3
    assert M.small_scale_power_ratio(t, 2 * t, lat) == pytest.approx(4.0)
    with pytest.raises(OptionError):
        M.small_scale_power_ratio(t, t, lat, fraction=0)


# ------------------------------------------------------------------ xarray and channel_metrics


def _da(values, lat, lon, dims=("time", "latitude", "longitude")):
    coords = {"latitude": lat, "longitude": lon, "time": np.arange(values.shape[0])}
    return xr.DataArray(values, dims=dims, coords={d: coords[d] for d in dims})


def test_dataarray_inputs_take_coords_and_reorder_dims():
    lat, lon = _grid(7, 8)
    t = _truth(3, lat, 8)
    dt = _da(t, lat, lon)
    dr = _da(np.transpose(t + 1.0, (0, 2, 1)), lat, lon, ("time", "longitude", "latitude"))
    assert M.rmse(dt, dr) == pytest.approx(1.0)
    assert M.bias(dt, dr) == pytest.approx(1.0)
    shifted = _da(t, lat[::-1], lon)
    with pytest.raises(GridMismatchError, match="latitude"):
        M.rmse(dt, shifted)
    with pytest.raises(OptionError, match="lat"):
        M.rmse(t, t)


def test_shape_mismatch():
    t = _truth()
    with pytest.raises(GridMismatchError, match="shape"):
        M.rmse(t, t[:, :2], LAT3)
    with pytest.raises(GridMismatchError, match="latitudes"):
        M.rmse(t, t, [0.0, 1.0])


def test_channel_metrics():
    lat, lon = _grid(9, 16)
    t = _truth(4, lat, 16)
    m = M.channel_metrics(t, t + 0.5, lat)
    assert m["rmse"] == pytest.approx(0.5)
    assert m["rmse_sqrt_after_time_mean"] == pytest.approx(0.5)
    assert m["bias"] == pytest.approx(0.5)
    assert m["mae"] == pytest.approx(0.5)
    assert m["max_abs_error"] == pytest.approx(0.5)
    assert 0 < m["acc"] < 1  # uncentred ACC: a bias lowers it
    assert M.channel_metrics(t, t, lat)["acc"] == pytest.approx(1.0)
    assert m["acc_reference"] == "truth time mean"
    assert m["n_samples"] == 4
    assert len(m["spectrum_truth"]) == 9
    m2 = M.channel_metrics(t, t, lat, climatology=np.full((9, 16), 280.0), spectra=False)
    assert m2["acc_reference"] == "climatology" and m2["acc"] == pytest.approx(1.0)
    assert m2["small_scale_power_ratio"] == pytest.approx(1.0)
    assert "spectrum_truth" not in m2
