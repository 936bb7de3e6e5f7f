"""Synthetic ERA5-like data in the exact WeatherBench 2 layout, calibrated against real ERA5.

The factory behind tests, examples and benchmarks: no download, any grid, deterministic per seed.

Public API::

    make_sample(grid=(73, 144), times=64, start="2020-01-01T00", freq="6h",
                variables=("z", "t", "u", "v", "q", "t2m", "u10", "v10", "msl"),
                levels=WB2_LEVELS, seed=0) -> xr.Dataset       # in memory
    write_sample(path, *, overwrite=False, **same_kwargs) -> xr.Dataset  # streams Zarr v3, opens it
    parse_grid("73x144") -> (73, 144)
    TARGETS["z500"] -> (mean, std)      # the calibration targets (ERA5 grid-point statistics)
    expected_lag1("z", 500, 6.0)        # the lag-1 autocorrelation the generator uses at a step

Model of one channel (variable ``v`` at level ``p``), at latitude ``phi``, longitude ``lam``, time ``t``::

    value = mean + a * (P(phi, lam) + s(t) * S(phi, lam) - E[P]) + D(t2m only) + b * g(phi, lam) * x(t)
    q     = (mean + a * (P(phi, s(t)) - E[P])) * exp(sigma * x(t) - sigma**2 / 2)      # q > 0

* ``P``/``S``: analytic zonal-mean shapes (annual mean, seasonal term with ``s = cos(2 pi (doy-15)/365.25)``,
  +1 in mid-January); t2m and msl add a fixed pseudo land mask (continents do not depend on the seed).
  ``D`` is a t2m diurnal cycle, largest over pseudo-land, peaking at 14:30 local solar time.
* ``x``: a unit-variance Gaussian random field, AR(1) in time, correlated between levels. Built by FFT on the
  latitude-doubled periodic domain (2 (nlat - 1) x nlon, wavenumbers in cycles per 360 degrees, power
  ``(1 + K^2/K0^2)^(-beta/2)``); at each latitude zonal wavenumber ``m`` gets the power of physical
  wavenumber ``m / cos(phi)`` (so a pole row is single-valued) and every row is renormalised to unit
  variance, analytically. Pressure-level u/v (and u10/v10) take a geostrophic part from the z (msl) field.
* ``a``, ``b``, ``sigma`` are solved so that the grid-point mean and standard deviation over a year match
  :data:`TARGETS` by construction: ``a`` takes the fraction ``f_clim`` of the variance, ``b`` the rest.

Everything is float32 on the WB2 grid: latitude 90 .. -90 (both poles), longitude 0 .. 360 - 360/nlon.
See docs/sample-data.md for the calibration against the real ERA5 samples and what does not match.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from era5latent.errors import OptionError
from era5latent.fsutil import SAMPLE, atomic_dir, check_output_name
from era5latent.io.variables import VARIABLES, WB2_LEVELS, Variable, lookup_variable

__all__ = ["make_sample", "write_sample", "parse_grid", "TARGETS", "expected_lag1", "GENERATOR_VERSION"]

#: Bumped whenever the same arguments would produce different bytes.
GENERATOR_VERSION = "1"

DEFAULT_VARIABLES: tuple[str, ...] = ("z", "t", "u", "v", "q", "t2m", "u10", "v10", "msl")

# ---------------------------------------------------------------------------------------------------
# Calibration tables. Pressure tables run over WB2_LEVELS ascending (50 .. 1000 hPa).
# ---------------------------------------------------------------------------------------------------

_LOGP = np.log(np.asarray(WB2_LEVELS, dtype=np.float64))

# Grid-point (unweighted) mean and standard deviation of ERA5 over many years at 0.25 degrees: the
# normalisation statistics published with WeatherBench / Aurora (z500 54115 / 3353, t850 274.56 / 15.59;
# CRA5 quotes 54117 / 3360 and 274.57 / 15.62). Rounded to 4-5 significant digits.
_PRESSURE_TARGETS: dict[str, tuple[list[float], list[float]]] = {
    "z": ([199373, 157642, 133141, 115330, 101223, 89414, 69980, 54115, 40648, 28929, 13750, 7015, 738.2],
          [5875.6, 5510.6, 5823.9, 5820.2, 5536.6, 5091.9, 4150.9, 3353.2, 2695.8, 2136.4, 1470.3, 1229.0,
           1072.3]),
    "t": ([212.49, 208.40, 213.32, 218.06, 222.77, 228.87, 242.14, 252.95, 261.13, 267.40, 274.56, 277.36,
           281.01],
          [10.263, 12.529, 8.929, 7.190, 8.529, 10.717, 12.691, 13.064, 13.420, 14.765, 15.589, 16.088, 17.140]),
    "u": ([5.653, 10.280, 13.541, 14.209, 13.346, 11.802, 8.817, 6.563, 4.815, 3.345, 1.418, 0.617, -0.033],
          [15.293, 13.526, 16.043, 17.676, 17.967, 17.119, 14.343, 11.984, 10.334, 9.169, 8.188, 7.941, 6.142]),
    "v": ([0.004, 0.014, -0.037, -0.045, -0.030, -0.023, -0.018, -0.024, -0.027, 0.022, 0.143, 0.205, 0.187],
          [7.059, 7.479, 9.572, 11.881, 13.380, 13.340, 11.230, 9.182, 7.804, 6.871, 6.264, 6.471, 5.308]),
    "q": ([2.678e-6, 2.634e-6, 5.255e-6, 1.941e-5, 5.774e-5, 1.274e-4, 3.856e-4, 8.530e-4, 1.541e-3, 2.432e-3,
           4.576e-3, 6.033e-3, 7.030e-3],
          [3.572e-7, 5.704e-7, 3.794e-6, 2.268e-5, 7.447e-5, 1.684e-4, 5.079e-4, 1.079e-3, 1.770e-3, 2.549e-3,
           4.112e-3, 5.071e-3, 5.914e-3]),
}
_SURFACE_TARGETS: dict[str, tuple[float, float]] = {
    "t2m": (278.51, 21.220), "u10": (-0.051, 5.548), "v10": (0.189, 4.765), "msl": (100958.0, 1332.2),
}

#: Calibration targets by channel code (``z500``, ``t2m``): (grid-point mean, grid-point std) of ERA5,
#: unweighted over the 0.25-degree grid and all times of many years. The generator matches them by
#: construction over a full year of samples (tests check it).
TARGETS: dict[str, tuple[float, float]] = {
    **{f"{n}{lev}": (m[i], s[i]) for n, (m, s) in _PRESSURE_TARGETS.items() for i, lev in enumerate(WB2_LEVELS)},
    **_SURFACE_TARGETS,
}

# Per-level model parameters (ascending levels 50 .. 1000 hPa); see the module docstring and
# docs/sample-data.md. f: fraction of the variance carried by the deterministic climatology;
# beta: 2-d spectral slope; rho12/24/36: lag correlations at 12/24/36 h (z, t at 500/850 measured on the
# real ERA5 ensemble sample, the rest interpolated or estimated).
_PARAMS: dict[str, dict[str, list[float]]] = {
    "z": {
        "beta": [6.2, 6.0, 5.9, 5.8, 5.8, 5.8, 5.7, 5.6, 5.4, 5.2, 4.8, 4.6, 4.5],
        "f": [0.92, 0.94, 0.95, 0.95, 0.95, 0.95, 0.94, 0.93, 0.92, 0.91, 0.88, 0.80, 0.65],
        "w": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0.8, 0.5, 0.25, 0.0],  # plateau vs msl-like shape
        "r": [0.8, 0.4, 0.25, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.0, -0.1, -0.1, -0.15],
        # profile steeper in July than in January (ERA5 extrapolates z, t below the Antarctic ice
        # sheet, coldest in austral winter): S -= k (P - E[P])
        "k": [0.05, 0.05, 0.04, 0.04, 0.04, 0.04, 0.05, 0.065, 0.08, 0.1, 0.14, 0.17, 0.2],
        "rho12": [0.97, 0.95, 0.94, 0.92, 0.915, 0.91, 0.91, 0.909, 0.90, 0.89, 0.871, 0.86, 0.85],
        "rho24": [0.92, 0.87, 0.84, 0.80, 0.79, 0.78, 0.775, 0.769, 0.75, 0.72, 0.676, 0.66, 0.64],
        "rho36": [0.87, 0.80, 0.76, 0.70, 0.69, 0.685, 0.68, 0.677, 0.65, 0.62, 0.562, 0.54, 0.52],
    },
    "t": {
        "beta": [4.6, 4.2, 4.0, 3.9, 3.9, 4.0, 4.1, 4.1, 3.9, 3.7, 3.4, 3.3, 3.3],
        "f": [0.80, 0.86, 0.86, 0.88, 0.86, 0.88, 0.89, 0.89, 0.90, 0.91, 0.925, 0.92, 0.91],
        "c": [-0.3, -1.0, -0.5, 0.0, 0.5, 1, 1, 1, 1, 1, 1, 1, 1],  # tropics warm (+) / cold (-)
        "ant": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -0.15, -0.25, -0.3],  # extra-cold Antarctic
        "r": [0.8, 0.35, 0.4, 0.5, 0.3, 0.12, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
        "polar": [1, 1, 1, 0.7, 0.3, 0, 0, 0, 0, 0, 0, 0, 0],  # seasonal shape: pole-weighted vs step at 22
        "k": [0, 0, 0, 0, 0, 0, 0, 0, 0.02, 0.04, 0.075, 0.09, 0.1],
        "rho12": [0.95, 0.90, 0.87, 0.85, 0.83, 0.82, 0.82, 0.820, 0.825, 0.835, 0.848, 0.85, 0.85],
        "rho24": [0.88, 0.78, 0.72, 0.68, 0.64, 0.62, 0.615, 0.614, 0.64, 0.67, 0.718, 0.72, 0.72],
        "rho36": [0.82, 0.70, 0.62, 0.56, 0.51, 0.49, 0.488, 0.487, 0.53, 0.58, 0.647, 0.65, 0.65],
    },
    "u": {
        "f": [0.7, 0.6, 0.65, 0.65, 0.65, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35, 0.3, 0.3],
        "jlat": [60, 38, 33, 32, 32, 33, 35, 38, 40, 42, 45, 48, 50],
        "jamp": [0.3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        "east": [0.4, 0.5, 0.3, 0.2, 0.15, 0.12, 0.1, 0.1, 0.15, 0.25, 0.5, 0.7, 0.8],
        "elat": [0, 0, 0, 0, 0, 0, 0, 0, 5, 10, 12, 12, 12],
        "r": [1.0, 0.6, 0.4, 0.35, 0.35, 0.35, 0.35, 0.35, 0.3, 0.3, 0.25, 0.2, 0.2],
        "geo": [0.85] * 10 + [0.8, 0.7, 0.6],
    },
    "v": {
        "f": [0.02] * 13,
        "hadley": [0, -0.3, -0.8, -1, -0.7, -0.4, -0.1, 0, 0, 0.1, 0.6, 1, 1],
        "geo": [0.85] * 10 + [0.8, 0.7, 0.6],
    },
    "q": {
        "f": [0, 0, 0.3, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.65, 0.65, 0.65, 0.65],
        "width": [20, 20, 20, 20, 21, 22, 24, 25, 27, 28, 30, 31, 32],
    },
}

# Per-variable constants: spectral roll-off K0 (cycles per 360 deg) and slope beta where not per level,
# anomaly-std shape g = g0 + exp(-((|lat| - gc) / gw)^2), vertical decorrelation scale in ln p, lag
# correlations at 12/24/36 h where not per level, f_clim of single-level fields.
_CONST: dict[str, dict[str, float]] = {
    "z": {"k0": 7, "g0": 0.07, "gc": 57, "gw": 19, "H": 3.5},
    "t": {"k0": 8, "g0": 0.3, "gc": 60, "gw": 30, "H": 1.6},
    "u": {"k0": 9, "beta": 4.0, "g0": 0.35, "gc": 45, "gw": 20, "H": 2.5,
          "rho12": 0.82, "rho24": 0.58, "rho36": 0.43},
    "v": {"k0": 9, "beta": 4.0, "g0": 0.35, "gc": 50, "gw": 20, "H": 2.5,
          "rho12": 0.78, "rho24": 0.50, "rho36": 0.35},
    "q": {"k0": 12, "beta": 3.6, "H": 1.2, "rho12": 0.78, "rho24": 0.55, "rho36": 0.42},
    "t2m": {"k0": 10, "beta": 4.0, "g0": 0.25, "gc": 65, "gw": 25, "f": 0.97},
    "u10": {"k0": 12, "beta": 3.6, "g0": 0.5, "gc": 50, "gw": 20, "f": 0.5, "geo": 0.6,
            "rho12": 0.75, "rho24": 0.48, "rho36": 0.33},
    "v10": {"k0": 12, "beta": 3.6, "g0": 0.5, "gc": 50, "gw": 20, "f": 0.1, "geo": 0.6,
            "rho12": 0.72, "rho24": 0.44, "rho36": 0.30},
    "msl": {"k0": 7, "beta": 4.8, "g0": 0.15, "gc": 58, "gw": 18, "f": 0.6,
            "rho12": 0.88, "rho24": 0.70, "rho36": 0.58},
}

# Hourly lag correlation of 2 m temperature after removing each grid point's mean diurnal cycle,
# measured on the real ERA5 sample (British Isles, March 2019, 744 hourly fields).
_T2M_LAGS_H = (1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 36.0, 48.0)
_T2M_RHO = (0.977, 0.931, 0.875, 0.702, 0.470, 0.419, 0.124, 0.096)

_M0_DAMP = 0.25  # amplitude factor on zonally symmetric (m = 0) modes: ERA5 anomalies are mostly eddies
_WINTER = 0.35  # anomaly amplitude x (1 + _WINTER * s * tanh(lat / 20)): stronger in the winter hemisphere
_DIURNAL_K = 4.0  # t2m diurnal half-range (K) over pseudo-land at the equator
_DIURNAL_PEAK_H = 14.5  # local solar time of the t2m maximum
_Z_STRAT_RT = 287.05 * 230.0  # R * T for the hypsometric extension of z above 50 hPa

_TITLES = {
    "z": "Geopotential", "t": "Temperature", "u": "U component of wind", "v": "V component of wind",
    "q": "Specific humidity", "t2m": "2 metre temperature", "u10": "10 metre U wind component",
    "v10": "10 metre V wind component", "msl": "Mean sea level pressure",
}


# ---------------------------------------------------------------------------------------------------
# Parameter look-up
# ---------------------------------------------------------------------------------------------------


def _at_level(values: list[float], level: float) -> float:
    """Interpolate a per-WB2-level table in ln p; constant beyond 50 and 1000 hPa."""
    return float(np.interp(math.log(level), _LOGP, np.asarray(values, dtype=np.float64)))


def _param(name: str, key: str, level: int | None) -> float:
    table = _PARAMS.get(name, {})
    if key in table and level is not None:
        return _at_level(table[key], level)
    return float(_CONST[name][key])


def _target(name: str, level: int | None) -> tuple[float, float]:
    if level is None:
        return _SURFACE_TARGETS[name]
    means, stds = _PRESSURE_TARGETS[name]
    mean = _at_level(means, level)
    if name == "z" and level < WB2_LEVELS[0]:
        mean = means[0] + _Z_STRAT_RT * math.log(WB2_LEVELS[0] / level)
    return mean, _at_level(stds, level)


def _lag_anchors(name: str, level: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(lags in hours, correlations) that define the lag-correlation curve of a channel."""
    if name == "t2m":
        return np.asarray(_T2M_LAGS_H), np.asarray(_T2M_RHO)
    r12, r24, r36 = (_param(name, k, level) for k in ("rho12", "rho24", "rho36"))
    # Below 12 h, borrow the shape of the hourly t2m curve (the only hourly ERA5 evidence at hand):
    # -ln rho(dt) = -ln rho(12 h) * (-ln rho_t2m(dt)) / (-ln rho_t2m(12 h)).
    c12 = -math.log(r12)
    t2m_c = -np.log(np.asarray(_T2M_RHO[:5]))
    short = np.exp(-c12 * t2m_c[:4] / t2m_c[4])
    return np.asarray([1.0, 2.0, 3.0, 6.0, 12.0, 24.0, 36.0]), np.concatenate([short, [r12, r24, r36]])


#: the latitude band (both hemispheres) of the eddy statistics the generator is calibrated on
MID_LATITUDES = (30.0, 60.0)


def mid_band(lat: np.ndarray) -> np.ndarray:
    """Rows of ``lat`` inside :data:`MID_LATITUDES` (either hemisphere)."""
    return cast(np.ndarray, (np.abs(lat) >= MID_LATITUDES[0]) & (np.abs(lat) <= MID_LATITUDES[1]))


def zonal_slope(x: np.ndarray, lat: np.ndarray, lo: int, hi: int) -> float:
    """Log-log slope of the zonal power spectrum of ``x`` (..., lat, lon) over the mid-latitude
    rows, zonal wavenumbers ``lo..hi``: the spectral statistic the calibration and its tests use."""
    x = x[..., mid_band(lat), :]
    p = np.abs(np.fft.rfft(x - x.mean(-1, keepdims=True), axis=-1)) ** 2
    p = p.reshape(-1, p.shape[-1]).mean(0)
    k = np.arange(lo, hi + 1)
    return float(np.polyfit(np.log(k), np.log(p[lo:hi + 1]), 1)[0])


def expected_lag1(name: str, level: int | None, step_hours: float) -> float:
    """The AR(1) coefficient the generator uses for a channel at a time step of ``step_hours``.

    ``-ln rho`` is interpolated log-log between measured/estimated anchors (1 h .. 36-48 h) and
    extrapolated with the end slopes, so the lag-1 autocorrelation of the anomaly at the sample's
    time step matches ERA5 at that step.
    """
    v = lookup_variable(name)
    if v is None or v.name not in DEFAULT_VARIABLES:
        raise OptionError(f"unknown variable {name!r}: expected one of {', '.join(DEFAULT_VARIABLES)}")
    if step_hours <= 0:
        raise OptionError(f"time step {step_hours} h is not positive: expected a positive step")
    lags, rho = _lag_anchors(v.name, level if v.pressure else None)
    x, y = np.log(lags), np.log(-np.log(rho))
    lx = math.log(step_hours)
    if lx <= x[0]:
        ly = y[0] + (y[1] - y[0]) / (x[1] - x[0]) * (lx - x[0])
    elif lx >= x[-1]:
        ly = y[-1] + (y[-1] - y[-2]) / (x[-1] - x[-2]) * (lx - x[-1])
    else:
        ly = float(np.interp(lx, x, y))
    return float(math.exp(-math.exp(ly)))


# ---------------------------------------------------------------------------------------------------
# Deterministic climatology: shapes, pseudo land, calibration constants
# ---------------------------------------------------------------------------------------------------


def _plateau(lat: np.ndarray, lat0: float, width: float) -> np.ndarray:
    return cast(np.ndarray, 0.5 * (1.0 - np.tanh((np.abs(lat) - lat0) / width)))


def _gauss(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-(((x - centre) / width) ** 2))


def _hadley(lat: np.ndarray) -> np.ndarray:
    """Meridional wind of the lower Hadley branch: equatorward, peak 1 at 8.5 degrees."""
    x = lat / 8.5
    return -x * np.exp(0.5 * (1.0 - x * x))


@lru_cache(maxsize=1)
def _land_terms() -> tuple[np.ndarray, ...]:
    # Fixed geography: the pseudo continents never depend on the sample seed.
    rng = np.random.default_rng(20190301)
    n = 28
    m = rng.integers(1, 6, n).astype(np.float64)
    k = rng.integers(1, 6, n).astype(np.float64)
    amp = rng.standard_normal(n) / np.sqrt(m * k)
    ph1, ph2 = rng.uniform(0.0, 2.0 * np.pi, (2, n))
    return m, k, amp, ph1, ph2


def _land_raw(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    m, k, amp, ph1, ph2 = _land_terms()
    phi = np.deg2rad(lat)[..., None]
    lam = np.deg2rad(lon)[..., None]
    # cos(phi)^min(m, 2) makes every longitude-dependent term vanish at the poles.
    terms = amp * np.cos(phi) ** np.minimum(m, 2) * np.cos(m * lam + ph1) * np.cos(k * phi + ph2)
    return cast(np.ndarray, terms.sum(-1))


@lru_cache(maxsize=1)
def _land_threshold() -> tuple[float, float]:
    lat = np.linspace(89.5, -89.5, 180)[:, None]
    lon = np.arange(0.5, 360.0, 1.0)[None, :]
    raw = _land_raw(lat, lon)
    w = np.broadcast_to(np.cos(np.deg2rad(lat)), raw.shape).ravel()
    order = np.argsort(raw.ravel())
    cum = np.cumsum(w[order]) / w.sum()
    thr = float(raw.ravel()[order][np.searchsorted(cum, 0.74)])  # ~26% land before Antarctica is added
    return thr, float(raw.std())


def _land(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Smooth pseudo land fraction in [0, 1] (about 29% of the area, with an Antarctica)."""
    thr, sd = _land_threshold()
    raw = _land_raw(lat, lon)
    land = 1.0 / (1.0 + np.exp(-(raw - thr) / (0.12 * sd)))
    antarctica = 1.0 / (1.0 + np.exp((lat + 70.0) / 2.0))
    arctic_sea = 1.0 / (1.0 + np.exp(-(lat - 82.0) / 2.0))
    return np.maximum(land * (1.0 - arctic_sea), antarctica)


def _msl_shape(lat: np.ndarray) -> np.ndarray:
    return cast(np.ndarray, 0.6 * _gauss(np.abs(lat), 32, 10) - _gauss(lat, -64, 8)
                - 0.5 * _gauss(lat, 60, 10) + 0.25 * _gauss(np.abs(lat), 90, 12))


def _linear_shapes(name: str, level: int | None, lat: np.ndarray,
                   land: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(P, S): annual shape and seasonal shape (value at mid-January = P + S), arbitrary units."""
    mu = np.sin(np.deg2rad(lat))
    zero = np.zeros_like(lat)
    if name == "z":
        w = _param("z", "w", level)
        def prof(x: np.ndarray) -> np.ndarray:
            return w * _plateau(x, 46, 14.5) + (1 - w) * _msl_shape(x)

        p = prof(lat)
        sym = _param("z", "k", level) * (p - float(prof(_REF_LAT).mean()))
        return p, -_param("z", "r", level) * mu * np.abs(mu) - sym
    if name == "t":
        def prof(x: np.ndarray) -> np.ndarray:
            return _param("t", "c", level) * _plateau(x, 45, 20) + _param("t", "ant", level) * _gauss(x, -90, 15)

        p = prof(lat)
        sp = _param("t", "polar", level)
        step = np.sign(lat) * (1.0 - _plateau(lat, 22, 6))
        sym = _param("t", "k", level) * (p - float(prof(_REF_LAT).mean()))
        return p, -_param("t", "r", level) * ((1 - sp) * step + sp * mu * np.abs(mu)) - sym
    if name == "u":
        jl, jw = _param("u", "jlat", level), (15.0 if level is not None and level <= 70 else 12.0)
        p = (_param("u", "jamp", level) * _gauss(np.abs(lat), jl, jw)
             - _param("u", "east", level) * _gauss(np.abs(lat), _param("u", "elat", level), 10))
        return p, _param("u", "r", level) * (_gauss(lat, jl, jw) - _gauss(lat, -jl, jw))
    if name == "v":
        return _param("v", "hadley", level) * _hadley(lat), zero
    if name == "t2m":
        assert land is not None
        p = np.cos(np.deg2rad(lat)) ** 1.5 - 0.7 * _gauss(lat, -90, 17) + zero * land
        hemi = np.where(lat >= 0, 1.0, 0.55)  # the ocean-covered south has the weaker seasonal cycle
        return p, -0.45 * hemi * mu * np.sqrt(np.abs(mu)) * (0.4 + 0.6 * land)
    if name == "msl":
        assert land is not None
        return _msl_shape(lat) + zero * land, 0.5 * land * (_gauss(lat, 50, 15) - _gauss(lat, -30, 12))
    if name == "u10":
        p = _gauss(np.abs(lat), 50, 12) + 0.4 * _gauss(lat, -52, 10) - 0.9 * _gauss(np.abs(lat), 13, 9)
        return p, 0.2 * (_gauss(lat, 50, 12) - _gauss(lat, -50, 12))
    if name == "v10":
        return _hadley(lat), zero
    raise KeyError(name)  # catalogue invariant


def _q_shape(level: int | None, lat: np.ndarray, season: float) -> np.ndarray:
    """Moisture shape: a tropical maximum following the ITCZ (5 S in January, 10 N in July)."""
    return _gauss(lat, 2.5 - 7.5 * season, _param("q", "width", level))


def _gshape(name: str, lat: np.ndarray, land: np.ndarray | None) -> np.ndarray:
    c = _CONST[name]
    g = c["g0"] + _gauss(np.abs(lat), c["gc"], c["gw"])
    if name == "t2m":
        assert land is not None
        g = g * (0.35 + 1.1 * land)
    return g


def _diurnal_amp(lat: np.ndarray, land: np.ndarray) -> np.ndarray:
    # sqrt(cos(lat)): no diurnal cycle at the poles, so pole rows stay single-valued
    return cast(np.ndarray,
                _DIURNAL_K * (0.15 + 0.85 * land) * np.sqrt(np.maximum(np.cos(np.deg2rad(lat)), 0.0)))


_REF_LAT = np.linspace(90.0, -90.0, 181)[:, None]
_REF_LON = np.arange(0.0, 360.0, 1.0)[None, :]
_REF_SEASONS = np.cos(2 * np.pi * (np.arange(24) + 0.5) / 24)  # E[s] = 0, E[s^2] = 1/2


@lru_cache(maxsize=1)
def _ref_land() -> np.ndarray:
    return _land(_REF_LAT, _REF_LON)


@dataclass(frozen=True)
class _Calib:
    mean: float
    a: float  # climatology scale
    e_shape: float  # E[P] over the reference grid and a year
    b: float  # anomaly scale (sigma of the lognormal factor for q)


@lru_cache(maxsize=None)
def _calibration(name: str, level: int | None) -> _Calib:
    """Solve the scales so that a year of samples has the target grid-point mean and std."""
    mean, std = _target(name, level)
    land = _ref_land() if name in ("t2m", "msl") else None
    lat = _REF_LAT
    if name == "q":
        f = _param("q", "f", level)
        shapes = np.stack([np.broadcast_to(_q_shape(level, lat, s), lat.shape) for s in _REF_SEASONS])
        e_shape, var_shape = float(shapes.mean()), float(shapes.var())
        a = math.sqrt(f * std**2 / var_shape) if f > 0 and var_shape > 0 else 0.0
        clim_sq = mean**2 + (a**2) * var_shape
        sigma = math.sqrt(math.log(1.0 + (std**2 - a**2 * var_shape) / clim_sq))
        return _Calib(mean, a, e_shape, sigma)
    f = _param(name, "f", level)
    p, s = _linear_shapes(name, level, lat, land)
    shape = np.broadcast_to(p, land.shape if land is not None else lat.shape)
    e_shape = float(shape.mean())
    var_shape = float(((shape - e_shape) ** 2).mean() + 0.5 * np.mean(np.broadcast_to(s, shape.shape) ** 2))
    rem = std**2
    if name == "t2m":
        assert land is not None
        rem -= 0.5 * float(np.mean(_diurnal_amp(lat, land) ** 2))
    a = math.sqrt(f * rem / var_shape) if f > 0 and var_shape > 1e-12 else 0.0
    if a == 0.0:
        f = 0.0
    g2 = np.broadcast_to(_gshape(name, lat, land), shape.shape) ** 2
    e_g2 = float(np.mean(g2) + 0.5 * _WINTER**2 * np.mean(g2 * np.tanh(lat / 20.0) ** 2))
    b = math.sqrt((1.0 - f) * rem / e_g2)
    return _Calib(mean, a, e_shape, b)


# ---------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------

_GRID_RE = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")


def parse_grid(text: str) -> tuple[int, int]:
    """``"73x144"`` -> ``(73, 144)``: latitudes (both poles included) x longitudes, each at least 4."""
    m = _GRID_RE.match(str(text))
    if m is None:
        raise OptionError(f"grid {text!r} is not NLATxNLON: expected e.g. '73x144' or '721x1440'")
    return _check_grid((int(m.group(1)), int(m.group(2))), text)


def _check_grid(grid: object, shown: object) -> tuple[int, int]:
    if isinstance(grid, str):
        return parse_grid(grid)
    pair: Any = grid  # any 2-item iterable; the sizes are checked below
    try:
        nlat, nlon = pair
    except (TypeError, ValueError):
        raise OptionError(f"grid {shown!r} is not a pair: expected (nlat, nlon), e.g. (73, 144)") from None
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in (nlat, nlon)):
        raise OptionError(f"grid {shown!r} has non-integer sizes: expected two integers, e.g. (73, 144)")
    if nlat < 4 or nlon < 4:
        raise OptionError(f"grid {shown!r} is too small: expected at least 4 latitudes and 4 longitudes, "
                          f"e.g. '73x144'")
    return int(nlat), int(nlon)


@dataclass(frozen=True)
class _Spec:
    nlat: int
    nlon: int
    time: pd.DatetimeIndex
    variables: tuple[Variable, ...]
    levels: tuple[int, ...]  # ascending, empty when only single-level fields are asked for
    seed: int

    @property
    def lat(self) -> np.ndarray:
        return np.linspace(90.0, -90.0, self.nlat)

    @property
    def lon(self) -> np.ndarray:
        return np.arange(self.nlon) * (360.0 / self.nlon)


def _spec(grid: object = (73, 144), times: int = 64, start: str = "2020-01-01T00", freq: str = "6h",
          variables: tuple[str, ...] | list[str] | str = DEFAULT_VARIABLES,
          levels: tuple[int, ...] | list[int] = WB2_LEVELS, seed: int = 0) -> _Spec:
    nlat, nlon = _check_grid(grid, grid)
    if isinstance(times, bool) or not isinstance(times, (int, np.integer)) or times < 1:
        raise OptionError(f"times={times!r}: expected a positive integer number of time steps")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"seed={seed!r}: expected a non-negative integer")
    try:
        t0 = pd.Timestamp(start)
    except (ValueError, TypeError):
        raise OptionError(f"start={start!r} is not a date: expected e.g. '2020-01-01T00'") from None
    if t0 is pd.NaT:
        raise OptionError(f"start={start!r} is not a date: expected e.g. '2020-01-01T00'")
    if t0.tzinfo is not None:
        t0 = t0.tz_convert(None)
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
        index = pd.date_range(t0, periods=int(times), freq=offset).as_unit("ns")
    except (ValueError, TypeError):
        raise OptionError(f"freq={freq!r} is not a time step: expected a pandas frequency such as "
                          f"'1h', '6h', '12h' or '1D'") from None
    if times > 1 and not (np.diff(index.asi8) > 0).all():
        raise OptionError(f"freq={freq!r} does not step forward: expected a positive step such as '6h'")
    if isinstance(variables, str):
        variables = [x for x in variables.split(",") if x.strip()]
    chosen: list[Variable] = []
    for name in variables:
        v = lookup_variable(str(name))
        if v is None:
            raise OptionError(f"unknown variable {name!r}: expected some of {', '.join(DEFAULT_VARIABLES)} "
                              f"(or their WB2 long names)")
        if v.name not in DEFAULT_VARIABLES:
            raise OptionError(f"variable {name!r} ({v.name}) has no calibration in the sample "
                              f"generator: expected some of {', '.join(DEFAULT_VARIABLES)}")
        if v in chosen:
            raise OptionError(f"variable {name!r} is listed twice: list each variable once")
        chosen.append(v)
    if not chosen:
        raise OptionError("no variables: expected some of " + ", ".join(DEFAULT_VARIABLES))
    levs: tuple[int, ...] = ()
    if any(v.pressure for v in chosen):
        out: list[int] = []
        for lev in levels:
            if isinstance(lev, bool) or not isinstance(lev, (int, np.integer)) or not 1 <= lev <= 1000:
                raise OptionError(f"level {lev!r} is not a pressure level: expected integers in 1..1000 hPa, "
                                  f"e.g. {','.join(map(str, WB2_LEVELS))}")
            if int(lev) in out:
                raise OptionError(f"level {lev} is listed twice: list each level once")
            out.append(int(lev))
        if not out:
            raise OptionError("no pressure levels for the pressure-level variables: expected e.g. (500, 850) "
                              "or drop z/t/u/v/q")
        levs = tuple(sorted(out))
    return _Spec(nlat, nlon, index, tuple(chosen), levs, int(seed))


# ---------------------------------------------------------------------------------------------------
# The engine: unit random fields, AR(1) states, assembly
# ---------------------------------------------------------------------------------------------------


def _stream_id(name: str) -> int:
    return [v.name for v in VARIABLES].index(name)


class _Grid:
    """FFT machinery on the latitude-doubled periodic domain (2 (nlat - 1) x nlon)."""

    def __init__(self, nlat: int, nlon: int) -> None:
        self.nlat, self.nlon = nlat, nlon
        self.ny = 2 * (nlat - 1)
        self.nkx = nlon // 2 + 1
        self.ky = np.fft.fftfreq(self.ny, 1.0 / self.ny)  # cycles per 360 degrees
        self.kx = np.arange(self.nkx, dtype=np.float64)
        self.coslat = np.maximum(np.cos(np.deg2rad(np.linspace(90.0, -90.0, nlat))), 0.0)
        c = np.full(self.nkx, 2.0)
        c[0] = 1.0
        if nlon % 2 == 0:
            c[-1] = 1.0
        self.csq = c**2  # weight of each rfft column in the variance of a row

    def power(self, beta: float, k0: float) -> np.ndarray:
        k2 = self.ky[:, None] ** 2 + self.kx[None, :] ** 2
        p = (1.0 + k2 / k0**2) ** (-beta / 2.0)
        p[0, 0] = 0.0
        p[:, 0] *= _M0_DAMP**2
        return p

    def polar(self, beta: float, k0: float) -> np.ndarray:
        """|filter|^2 per (row, m): zonal wavenumber m at latitude phi gets the power of m / cos(phi)."""
        top = max(self.kx[-1], 1.0)
        m_all = np.concatenate([self.kx, np.geomspace(top, 64.0 * top, 257)[1:]])
        k2 = self.ky[:, None] ** 2 + m_all[None, :] ** 2
        s_all = ((1.0 + k2 / k0**2) ** (-beta / 2.0)).sum(0)  # zonal spectrum of the flat field, any m
        logs = np.log(s_all)
        m_eff = self.kx[None, :] / np.maximum(self.coslat[:, None], 1e-12)
        s_eff = np.exp(np.interp(m_eff, m_all, logs, right=-np.inf))
        return np.where(self.kx[None, :] == 0, 1.0, s_eff / s_all[None, : self.nkx])

    def rownorm(self, power: np.ndarray, pol2: np.ndarray) -> np.ndarray:
        var = (self.csq[None, :] * pol2 * power.sum(0)[None, :]).sum(1)
        ok = var > 1e-9 * var.max()  # a derivative can vanish identically on a pole row: leave it at 0
        return np.where(ok, 1.0 / np.sqrt(np.where(ok, var, 1.0)), 0.0)


class _Channelset:
    """Unit random fields of one variable over its levels: spectra, filters, vertical mixing."""

    def __init__(self, grid: _Grid, name: str, levels: tuple[int | None, ...]) -> None:
        self.name, self.levels = name, levels
        k0 = _CONST[name]["k0"]
        betas = [_param(name, "beta", lev) for lev in levels]
        pw = [grid.power(b, k0) for b in betas]
        # Spectral arrays are kept as (kx, ky): the FFT over ky then runs along contiguous memory.
        self.amp = np.ascontiguousarray(np.sqrt(np.stack(pw)).transpose(0, 2, 1), dtype=np.float32)
        pol2 = [grid.polar(b, k0) for b in betas]
        self.pol = np.sqrt(np.stack(pol2)).astype(np.float32)  # (nlev, nlat, nkx)
        self.norm = np.stack([grid.rownorm(p, q) for p, q in zip(pw, pol2)]).astype(np.float32)
        if name in ("z", "msl"):  # geostrophic wind parts: d/drow and d/dx of the same field
            ky2, kx2 = grid.ky[:, None] ** 2, grid.kx[None, :] ** 2
            self.norm_dy = np.stack([grid.rownorm(p * ky2, q) for p, q in zip(pw, pol2)]).astype(np.float32)
            self.norm_dx = np.stack([grid.rownorm(p * kx2, q) for p, q in zip(pw, pol2)]).astype(np.float32)
        if len(levels) > 1:
            lp = np.log(np.asarray(levels, dtype=np.float64))
            corr = np.exp(-np.abs(lp[:, None] - lp[None, :]) / _CONST[name]["H"])
            self.mix: np.ndarray | None = np.linalg.cholesky(corr).astype(np.float32)
        else:
            self.mix = None


# (calibration, annual base, seasonal term, anomaly shape); the arrays are None for q
_StaticRow = tuple[_Calib, np.ndarray | None, np.ndarray | None, np.ndarray | None]


class _Engine:
    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.grid = _Grid(spec.nlat, spec.nlon)
        names = [v.name for v in spec.variables]
        lat2 = spec.lat[:, None]
        lon2 = spec.lon[None, :]
        self.lat2 = lat2
        self.land = _land(lat2, lon2)
        # Noise streams: one per variable, plus z / msl when only their winds are asked for.
        need = list(names)
        if ("u" in names or "v" in names) and "z" not in need:
            need.append("z")
        if ("u10" in names or "v10" in names) and "msl" not in need:
            need.append("msl")
        self.rng = {n: np.random.Generator(np.random.SFC64(np.random.SeedSequence([spec.seed, _stream_id(n)])))
                    for n in need}
        self.sets: dict[str, _Channelset] = {}
        for n in need:
            pressure = lookup_variable(n).pressure  # type: ignore[union-attr]
            self.sets[n] = _Channelset(self.grid, n, spec.levels if pressure else (None,))
        self.need = need
        self.names = names
        self.state: dict[str, np.ndarray] = {}
        self._phi: dict[tuple[str, int | None, float], float] = {}
        # Deterministic parts on this grid.
        self.static: dict[str, list[_StaticRow]] = {}
        for n in names:
            rows: list[_StaticRow] = []
            for lev in self.sets[n].levels:
                cal = _calibration(n, lev)
                land = self.land if n in ("t2m", "msl") else None
                g = np.asarray(_gshape(n, lat2, land), dtype=np.float32) if n != "q" else None
                if n == "q":
                    rows.append((cal, None, None, None))
                else:
                    p, s = _linear_shapes(n, lev, lat2, land)
                    base = (cal.mean + cal.a * (p - cal.e_shape)).astype(np.float64)
                    rows.append((cal, base, (cal.a * s).astype(np.float64), g))
            self.static[n] = rows
        self.diurnal = _diurnal_amp(lat2, self.land) if "t2m" in names else None
        self.geo = {n: np.asarray([_param(n, "geo", lev) for lev in self.sets[n].levels], dtype=np.float32)
                    for n in names if n in ("u", "v", "u10", "v10")}
        self.tanh = np.tanh(lat2 / 12.0).astype(np.float32)  # sign of f, smoothly through the equator
        self.winter = np.tanh(lat2 / 20.0)

    # -- unit innovations -------------------------------------------------------------------------

    def _white(self, name: str) -> np.ndarray:
        """Complex white noise (nlev, nkx, ny), unit variance in real and imaginary parts, mixed over levels."""
        cs = self.sets[name]
        g = self.grid
        nlev = len(cs.levels)
        xi = self.rng[name].standard_normal((nlev, g.nkx, g.ny, 2), dtype=np.float32)
        if cs.mix is not None:
            # einsum, not matmul: OpenBLAS threads spin badly on a busy machine for these skinny products
            xi = np.einsum("kj,jn->kn", cs.mix, xi.reshape(nlev, -1)).reshape(xi.shape)
        return xi.view(np.complex64)[..., 0]

    def _synth(self, coef: np.ndarray, pol: np.ndarray, norm: np.ndarray) -> np.ndarray:
        """Spectral coefficients (nlev, nkx, ny) -> unit-variance rows (nlev, nlat, nlon)."""
        g = self.grid
        rows = np.fft.ifft(coef, axis=-1, norm="forward")[..., : g.nlat]
        rows = np.ascontiguousarray(rows.transpose(0, 2, 1))
        rows *= pol
        field = np.fft.irfft(rows, n=g.nlon, axis=-1, norm="forward")
        field *= norm[..., None]
        return field.astype(np.float32, copy=False)

    def _geostrophic(self, src: str, coef: np.ndarray) -> dict[str, np.ndarray]:
        """Unit d/drow and d/dx fields of z (or msl): u ~ -d/dy(north) = +d/drow and v ~ +d/dx (NH signs)."""
        g, cs = self.grid, self.sets[src]
        return {
            "dy": self._synth(coef * (1j * g.ky[None, :]).astype(np.complex64), cs.pol, cs.norm_dy),
            "dx": self._synth(coef * (1j * g.kx[:, None]).astype(np.complex64), cs.pol, cs.norm_dx),
        }

    # -- time stepping ------------------------------------------------------------------------------

    def steps(self) -> Iterator[tuple[int, str, np.ndarray]]:
        """Per time step, per variable: (step, short name, float32 field (nlev, nlat, nlon)).

        One variable at a time, so memory holds the AR(1) states plus one variable's temporaries. Each
        noise stream draws once per step, so the values do not depend on the processing order.
        """
        spec = self.spec
        hours = spec.time.asi8 / 3.6e12  # ns -> h
        order = [n for n in ("z", "msl", "u", "v", "u10", "v10", "t", "q", "t2m") if n in self.need]
        wind_src = {"u": "z", "v": "z", "u10": "msl", "v10": "msl"}
        sources = {wind_src[n] for n in self.names if n in wind_src}
        for i, t in enumerate(spec.time):
            dt = float(hours[i] - hours[i - 1]) if i else 0.0
            season = math.cos(2.0 * math.pi * (t.day_of_year - 1 + t.hour / 24.0 + t.minute / 1440.0 - 15.0)
                              / 365.25)
            utc_h = t.hour + t.minute / 60.0 + t.second / 3600.0
            geo: dict[str, dict[str, np.ndarray]] = {}
            for n in order:
                cs = self.sets[n]
                coef = self._white(n)
                coef *= cs.amp
                x = self._synth(coef, cs.pol, cs.norm) if n in self.names else None
                if n in sources:
                    geo[n] = self._geostrophic(n, coef)
                del coef
                if x is None:
                    continue
                if n in wind_src:
                    src, d = wind_src[n], ("dy" if n in ("u", "u10") else "dx")
                    mask = self.sets[src].norm_dy if d == "dy" else self.sets[src].norm_dx
                    w = self.geo[n][:, None, None] * self.tanh[None] * (mask[..., None] > 0)  # (nlev, nlat, 1)
                    x = (w * geo[src][d] + np.sqrt(1.0 - w * w) * x).astype(np.float32)
                self._advance(n, x, dt, i)
                yield i, n, self._assemble(n, self.state[n], season, utc_h)

    def _advance(self, n: str, x: np.ndarray, dt: float, i: int) -> None:
        """AR(1): state = phi * state + sqrt(1 - phi^2) * innovation; the first state is the innovation."""
        if i == 0:
            self.state[n] = x
            return
        st = self.state[n]
        for k, lev in enumerate(self.sets[n].levels):
            key = (n, lev, dt)
            if key not in self._phi:
                self._phi[key] = expected_lag1(n, lev, dt)
            phi = self._phi[key]
            st[k] *= np.float32(phi)
            st[k] += np.float32(math.sqrt(1.0 - phi * phi)) * x[k]

    def _assemble(self, n: str, x: np.ndarray, season: float, utc_h: float) -> np.ndarray:
        g = self.grid
        res = np.empty((len(self.sets[n].levels), g.nlat, g.nlon), dtype=np.float32)
        for k, (lev, row) in enumerate(zip(self.sets[n].levels, self.static[n])):
            cal, base, seas, gsh = row
            if n == "q":
                clim = cal.mean + cal.a * (_q_shape(lev, self.lat2, season) - cal.e_shape)
                clim = np.maximum(clim, 0.05 * cal.mean)
                res[k] = clim * np.exp(cal.b * x[k] - 0.5 * cal.b**2)
                continue
            assert base is not None and seas is not None and gsh is not None  # all set unless q
            val = base + season * seas
            if n == "t2m":
                assert self.diurnal is not None  # set whenever t2m is asked for
                local = utc_h + self.spec.lon[None, :] / 15.0
                val = val + self.diurnal * np.cos(2.0 * np.pi * (local - _DIURNAL_PEAK_H) / 24.0)
            res[k] = val + (cal.b * gsh * (1.0 + _WINTER * season * self.winter)) * x[k]
        return res


# ---------------------------------------------------------------------------------------------------
# Datasets and Zarr
# ---------------------------------------------------------------------------------------------------


def _dims(v: Variable) -> tuple[str, ...]:
    return ("time", "level", "latitude", "longitude") if v.pressure else ("time", "latitude", "longitude")


def _chunks(spec: _Spec, v: Variable) -> tuple[int, ...]:
    # WeatherBench 2 chunking: one time step per chunk, all levels, the whole grid.
    return (1, len(spec.levels), spec.nlat, spec.nlon) if v.pressure else (1, spec.nlat, spec.nlon)


def _var_attrs(v: Variable) -> dict[str, str]:
    return {"long_name": _TITLES[v.name], "units": v.units, "short_name": v.name}


def _coords(spec: _Spec) -> dict[str, xr.Variable]:
    coords = {
        "time": xr.Variable("time", spec.time.values.astype("datetime64[ns]"), {"long_name": "time"}),
        "latitude": xr.Variable("latitude", spec.lat, {"units": "degrees_north", "long_name": "latitude"}),
        "longitude": xr.Variable("longitude", spec.lon, {"units": "degrees_east", "long_name": "longitude"}),
    }
    if spec.levels:
        coords["level"] = xr.Variable("level", np.asarray(spec.levels, dtype=np.int64),
                                      {"units": "hPa", "long_name": "pressure level"})
    return coords


def _attrs(spec: _Spec) -> dict[str, object]:
    return {
        "title": "Synthetic ERA5-like sample in the WeatherBench 2 layout",
        "synthetic": "yes: not real data; Gaussian random fields on an analytic climatology",
        "generator": "era5latent.io.sample",
        "generator_version": GENERATOR_VERSION,
        "seed": int(spec.seed),
        "calibration": "grid-point mean/std per channel match ERA5 (WeatherBench/Aurora statistics) over a "
                       "year; see docs/sample-data.md",
        "time_chunk": 1,
    }


def make_sample(grid: tuple[int, int] = (73, 144), times: int = 64, start: str = "2020-01-01T00",
                freq: str = "6h", variables: tuple[str, ...] = DEFAULT_VARIABLES,
                levels: tuple[int, ...] = WB2_LEVELS, seed: int = 0) -> xr.Dataset:
    """An in-memory synthetic ERA5-like dataset in the exact WeatherBench 2 layout.

    ``grid`` is (nlat, nlon) (or ``"73x144"``): latitude 90 .. -90 with both poles, longitude
    0 .. 360 - 360/nlon. ``variables`` take short or WB2 long names; ``levels`` (hPa, 1..1000) are
    sorted ascending as in WB2. Same arguments, same bytes. Raises :class:`OptionError` on bad options.
    """
    spec = _spec(grid, times, start, freq, variables, levels, seed)
    engine = _Engine(spec)
    nt = len(spec.time)
    arrays = {v.name: np.empty((nt, *_chunks(spec, v)[1:]), dtype=np.float32) for v in spec.variables}
    for i, name, field in engine.steps():
        arrays[name][i] = field if arrays[name].ndim == 4 else field[0]
    data_vars = {}
    for v in spec.variables:
        da = xr.Variable(_dims(v), arrays[v.name], _var_attrs(v))
        da.encoding["chunks"] = _chunks(spec, v)
        data_vars[v.wb2_name] = da
    return xr.Dataset(data_vars, coords=_coords(spec), attrs=_attrs(spec))


def write_sample(path: str | os.PathLike[str], *, overwrite: bool = False, **kwargs: object) -> xr.Dataset:
    """Generate like :func:`make_sample` and stream it into a Zarr v3 store at ``path``, time step by time
    step (memory stays at a few time steps), chunked like WB2: ``(1, nlevels, nlat, nlon)`` per time step.
    Returns the store opened lazily with ``xr.open_zarr``. Refuses an existing path unless ``overwrite``.
    """
    spec = _spec(**kwargs)  # type: ignore[arg-type]
    final = os.fspath(path)
    check_output_name(final, "sample data", "a Zarr directory (.zarr, or no extension)")
    with atomic_dir(final, overwrite, SAMPLE) as path:  # a new store appears whole; an old one stays until then
        import dask.array as dsa

        nt = len(spec.time)
        template = xr.Dataset(
            {v.wb2_name: xr.Variable(_dims(v), dsa.zeros((nt, *_chunks(spec, v)[1:]), chunks=_chunks(spec, v),
                                                          dtype=np.float32), _var_attrs(v))
             for v in spec.variables},
            coords=_coords(spec), attrs=_attrs(spec))
        encoding = {v.wb2_name: {"chunks": _chunks(spec, v)} for v in spec.variables}
        step_bytes = sum(4 * math.prod(_chunks(spec, v)) for v in spec.variables)
        block = max(1, min(nt, (64 << 20) // step_bytes))  # time steps buffered per write (1 on big grids)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            template.to_zarr(path, mode="w", compute=False, zarr_format=3, consolidated=True, encoding=encoding)
        import zarr

        group = zarr.open_group(path, mode="r+", zarr_format=3)
        # arrays this function just wrote through to_zarr above
        targets = {v.name: cast("zarr.Array[Any]", group[v.wb2_name]) for v in spec.variables}
        pressure = {v.name: v.pressure for v in spec.variables}
        buf: dict[str, np.ndarray] = {}
        for i, name, field in _Engine(spec).steps():
            field = field if pressure[name] else field[0]
            if block == 1:
                targets[name][i] = field  # one chunk, written as soon as it exists
                continue
            j = i % block
            if name not in buf:
                buf[name] = np.empty((block, *field.shape), dtype=np.float32)
            buf[name][j] = field
            if j + 1 == block or i + 1 == nt:
                targets[name][i - j: i + 1] = buf[name][: j + 1]
    return cast(xr.Dataset, xr.open_zarr(final))
