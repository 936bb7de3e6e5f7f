"""The sample generator's calibration (:mod:`era5latent.io.sample`): grid-point targets and
spectral parameters measured on real ERA5, their look-up by variable and level, and the
deterministic climatology (zonal-mean shapes, the seasonal term, a fixed pseudo land mask, the
t2m diurnal cycle) with the constants that make each channel's mean and standard deviation
match :data:`TARGETS` by construction (docs/sample-data.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import cast

import numpy as np

from era5latent.errors import OptionError
from era5latent.io.variables import WB2_LEVELS, lookup_variable

# ---------------------------------------------------------------------------------------------------
# Calibration tables. Pressure tables run over WB2_LEVELS ascending (50 .. 1000 hPa).
# ---------------------------------------------------------------------------------------------------

DEFAULT_VARIABLES: tuple[str, ...] = ("z", "t", "u", "v", "q", "t2m", "u10", "v10", "msl")

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
CONST: dict[str, dict[str, float]] = {
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

M0_DAMP = 0.25  # amplitude factor on zonally symmetric (m = 0) modes: ERA5 anomalies are mostly eddies
WINTER = 0.35  # anomaly amplitude x (1 + WINTER * s * tanh(lat / 20)): stronger in the winter hemisphere
_DIURNAL_K = 4.0  # t2m diurnal half-range (K) over pseudo-land at the equator
DIURNAL_PEAK_H = 14.5  # local solar time of the t2m maximum
_Z_STRAT_RT = 287.05 * 230.0  # R * T for the hypsometric extension of z above 50 hPa



# ---------------------------------------------------------------------------------------------------
# Parameter look-up
# ---------------------------------------------------------------------------------------------------


def _at_level(values: list[float], level: float) -> float:
    """Interpolate a per-WB2-level table in ln p; constant beyond 50 and 1000 hPa."""
    return float(np.interp(math.log(level), _LOGP, np.asarray(values, dtype=np.float64)))


def param(name: str, key: str, level: int | None) -> float:
    table = _PARAMS.get(name, {})
    if key in table and level is not None:
        return _at_level(table[key], level)
    return float(CONST[name][key])


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
    r12, r24, r36 = (param(name, k, level) for k in ("rho12", "rho24", "rho36"))
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


def land_fraction(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
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


def linear_shapes(name: str, level: int | None, lat: np.ndarray,
                   land: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(P, S): annual shape and seasonal shape (value at mid-January = P + S), arbitrary units."""
    mu = np.sin(np.deg2rad(lat))
    zero = np.zeros_like(lat)
    if name == "z":
        w = param("z", "w", level)
        def prof(x: np.ndarray) -> np.ndarray:
            return w * _plateau(x, 46, 14.5) + (1 - w) * _msl_shape(x)

        p = prof(lat)
        sym = param("z", "k", level) * (p - float(prof(_REF_LAT).mean()))
        return p, -param("z", "r", level) * mu * np.abs(mu) - sym
    if name == "t":
        def prof(x: np.ndarray) -> np.ndarray:
            return param("t", "c", level) * _plateau(x, 45, 20) + param("t", "ant", level) * _gauss(x, -90, 15)

        p = prof(lat)
        sp = param("t", "polar", level)
        step = np.sign(lat) * (1.0 - _plateau(lat, 22, 6))
        sym = param("t", "k", level) * (p - float(prof(_REF_LAT).mean()))
        return p, -param("t", "r", level) * ((1 - sp) * step + sp * mu * np.abs(mu)) - sym
    if name == "u":
        jl, jw = param("u", "jlat", level), (15.0 if level is not None and level <= 70 else 12.0)
        p = (param("u", "jamp", level) * _gauss(np.abs(lat), jl, jw)
             - param("u", "east", level) * _gauss(np.abs(lat), param("u", "elat", level), 10))
        return p, param("u", "r", level) * (_gauss(lat, jl, jw) - _gauss(lat, -jl, jw))
    if name == "v":
        return param("v", "hadley", level) * _hadley(lat), zero
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


def q_shape(level: int | None, lat: np.ndarray, season: float) -> np.ndarray:
    """Moisture shape: a tropical maximum following the ITCZ (5 S in January, 10 N in July)."""
    return _gauss(lat, 2.5 - 7.5 * season, param("q", "width", level))


def gshape(name: str, lat: np.ndarray, land: np.ndarray | None) -> np.ndarray:
    c = CONST[name]
    g = c["g0"] + _gauss(np.abs(lat), c["gc"], c["gw"])
    if name == "t2m":
        assert land is not None
        g = g * (0.35 + 1.1 * land)
    return g


def diurnal_amp(lat: np.ndarray, land: np.ndarray) -> np.ndarray:
    # sqrt(cos(lat)): no diurnal cycle at the poles, so pole rows stay single-valued
    return cast(np.ndarray,
                _DIURNAL_K * (0.15 + 0.85 * land) * np.sqrt(np.maximum(np.cos(np.deg2rad(lat)), 0.0)))


_REF_LAT = np.linspace(90.0, -90.0, 181)[:, None]
_REF_LON = np.arange(0.0, 360.0, 1.0)[None, :]
_REF_SEASONS = np.cos(2 * np.pi * (np.arange(24) + 0.5) / 24)  # E[s] = 0, E[s^2] = 1/2


@lru_cache(maxsize=1)
def _ref_land() -> np.ndarray:
    return land_fraction(_REF_LAT, _REF_LON)


@dataclass(frozen=True)
class Calib:
    mean: float
    a: float  # climatology scale
    e_shape: float  # E[P] over the reference grid and a year
    b: float  # anomaly scale (sigma of the lognormal factor for q)


@lru_cache(maxsize=None)
def calibration(name: str, level: int | None) -> Calib:
    """Solve the scales so that a year of samples has the target grid-point mean and std."""
    mean, std = _target(name, level)
    land = _ref_land() if name in ("t2m", "msl") else None
    lat = _REF_LAT
    if name == "q":
        f = param("q", "f", level)
        shapes = np.stack([np.broadcast_to(q_shape(level, lat, s), lat.shape) for s in _REF_SEASONS])
        e_shape, var_shape = float(shapes.mean()), float(shapes.var())
        a = math.sqrt(f * std**2 / var_shape) if f > 0 and var_shape > 0 else 0.0
        clim_sq = mean**2 + (a**2) * var_shape
        sigma = math.sqrt(math.log(1.0 + (std**2 - a**2 * var_shape) / clim_sq))
        return Calib(mean, a, e_shape, sigma)
    f = param(name, "f", level)
    p, s = linear_shapes(name, level, lat, land)
    shape = np.broadcast_to(p, land.shape if land is not None else lat.shape)
    e_shape = float(shape.mean())
    var_shape = float(((shape - e_shape) ** 2).mean() + 0.5 * np.mean(np.broadcast_to(s, shape.shape) ** 2))
    rem = std**2
    if name == "t2m":
        assert land is not None
        rem -= 0.5 * float(np.mean(diurnal_amp(lat, land) ** 2))
    a = math.sqrt(f * rem / var_shape) if f > 0 and var_shape > 1e-12 else 0.0
    if a == 0.0:
        f = 0.0
    g2 = np.broadcast_to(gshape(name, lat, land), shape.shape) ** 2
    e_g2 = float(np.mean(g2) + 0.5 * WINTER**2 * np.mean(g2 * np.tanh(lat / 20.0) ** 2))
    b = math.sqrt((1.0 - f) * rem / e_g2)
    return Calib(mean, a, e_shape, b)
