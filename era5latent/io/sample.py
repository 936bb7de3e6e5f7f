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
from typing import Any, cast

import numpy as np
import pandas as pd
import xarray as xr

from era5latent.errors import OptionError
from era5latent.fsutil import SAMPLE, atomic_dir, check_output_name
from era5latent.io.sampleclim import (CONST, DEFAULT_VARIABLES, DIURNAL_PEAK_H, M0_DAMP, WINTER,
                                     Calib, calibration, diurnal_amp, gshape, land_fraction,
                                     linear_shapes, param, q_shape)
from era5latent.io.sampleclim import TARGETS as TARGETS
from era5latent.io.sampleclim import expected_lag1 as expected_lag1
from era5latent.io.sampleclim import mid_band as mid_band
from era5latent.io.sampleclim import zonal_slope as zonal_slope
from era5latent.io.variables import VARIABLES, WB2_LEVELS, Variable, lookup_variable

__all__ = ["make_sample", "write_sample", "parse_grid", "TARGETS", "expected_lag1", "GENERATOR_VERSION"]

#: Bumped whenever the same arguments would produce different bytes.
GENERATOR_VERSION = "1"

_TITLES = {
    "z": "Geopotential", "t": "Temperature", "u": "U component of wind", "v": "V component of wind",
    "q": "Specific humidity", "t2m": "2 metre temperature", "u10": "10 metre U wind component",
    "v10": "10 metre V wind component", "msl": "Mean sea level pressure",
}


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
        p[:, 0] *= M0_DAMP**2
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
        k0 = CONST[name]["k0"]
        betas = [param(name, "beta", lev) for lev in levels]
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
            corr = np.exp(-np.abs(lp[:, None] - lp[None, :]) / CONST[name]["H"])
            self.mix: np.ndarray | None = np.linalg.cholesky(corr).astype(np.float32)
        else:
            self.mix = None


# (calibration, annual base, seasonal term, anomaly shape); the arrays are None for q
_StaticRow = tuple[Calib, np.ndarray | None, np.ndarray | None, np.ndarray | None]


class _Engine:
    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.grid = _Grid(spec.nlat, spec.nlon)
        names = [v.name for v in spec.variables]
        lat2 = spec.lat[:, None]
        lon2 = spec.lon[None, :]
        self.lat2 = lat2
        self.land = land_fraction(lat2, lon2)
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
                cal = calibration(n, lev)
                land = self.land if n in ("t2m", "msl") else None
                g = np.asarray(gshape(n, lat2, land), dtype=np.float32) if n != "q" else None
                if n == "q":
                    rows.append((cal, None, None, None))
                else:
                    p, s = linear_shapes(n, lev, lat2, land)
                    base = (cal.mean + cal.a * (p - cal.e_shape)).astype(np.float64)
                    rows.append((cal, base, (cal.a * s).astype(np.float64), g))
            self.static[n] = rows
        self.diurnal = diurnal_amp(lat2, self.land) if "t2m" in names else None
        self.geo = {n: np.asarray([param(n, "geo", lev) for lev in self.sets[n].levels], dtype=np.float32)
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
                clim = cal.mean + cal.a * (q_shape(lev, self.lat2, season) - cal.e_shape)
                clim = np.maximum(clim, 0.05 * cal.mean)
                res[k] = clim * np.exp(cal.b * x[k] - 0.5 * cal.b**2)
                continue
            assert base is not None and seas is not None and gsh is not None  # all set unless q
            val = base + season * seas
            if n == "t2m":
                assert self.diurnal is not None  # set whenever t2m is asked for
                local = utc_h + self.spec.lon[None, :] / 15.0
                val = val + self.diurnal * np.cos(2.0 * np.pi * (local - DIURNAL_PEAK_H) / 24.0)
            res[k] = val + (cal.b * gsh * (1.0 + WINTER * season * self.winter)) * x[k]
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
