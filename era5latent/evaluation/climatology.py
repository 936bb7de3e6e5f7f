"""Climatologies for the anomaly correlation (ACC): WeatherBench 2's, or a store's time mean.

WeatherBench 2 publishes climatologies as Zarr with dims ``(hour, dayofyear, latitude,
longitude)`` (or ``(dayofyear, latitude, longitude)``), ``dayofyear`` 1..366 and ``hour`` 0..23,
variables named the WB2 way (``2m_temperature``; ``temperature`` with a ``level`` dim; or with a
level suffix, ``temperature_850``). Its ACC takes, for each sample, the climatology at that
sample's day of year and hour (``climatology.sel(dayofyear=time.dt.dayofyear,
hour=time.dt.hour)``); :meth:`Climatology.fields` does the same for a chunk of times, reading
only the (hour, day) slices the chunk needs.

Anything else that opens as a source (a Zarr, NetCDF or GRIB of fields with a time axis) is used
as before: its time mean, one map per channel (:class:`TimeMeanClimatology`).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Protocol

import numpy as np

from era5latent.errors import GridMismatchError, OptionError, SourceError
from era5latent.io.variables import Channel, lookup_variable, parse_channel


class ClimatologyLike(Protocol):
    reference: str

    def fields(self, ch: Channel, times: np.ndarray) -> np.ndarray:
        """(len(times), latitude, longitude) float64 on the truth's grid (or one broadcastable
        (1, latitude, longitude) map)."""
        ...


def _index_on(values: np.ndarray, wanted: np.ndarray, what: str, path: str,
              periodic: bool = False) -> np.ndarray:
    """Positions in ``values`` of each of ``wanted`` (within 1e-6 degrees)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.asarray(wanted, dtype=np.float64)
    if periodic:
        v, w = np.mod(v, 360.0), np.mod(w, 360.0)
    order = np.argsort(v)
    pos = np.clip(np.searchsorted(v[order], w), 0, len(v) - 1)
    best = order[pos]
    alt = order[np.clip(pos - 1, 0, len(v) - 1)]
    pick = np.where(np.abs(v[alt] - w) < np.abs(v[best] - w), alt, best)
    off = np.abs(v[pick] - w)
    if periodic:
        off = np.minimum(off, 360.0 - off)
    if np.any(off > 1e-6):
        raise GridMismatchError(
            f"climatology {path} has {what} {v.min():g}..{v.max():g} (x{len(v)}) that do not "
            f"include the truth's {w.min():g}..{w.max():g} (x{len(w)}): expected a climatology "
            "on the truth's grid (regrid it first)")
    return pick


class WB2Climatology:
    """A WeatherBench 2 climatology (dims ``hour``?, ``dayofyear``, ``latitude``, ``longitude``)."""

    reference = "climatology (by day of year and hour)"

    def __init__(self, ds: Any, path: str, lat: np.ndarray, lon: np.ndarray) -> None:
        self.ds = ds
        self.path = path
        lat_name = "latitude" if "latitude" in ds.dims else "lat"
        lon_name = "longitude" if "longitude" in ds.dims else "lon"
        if lat_name not in ds.dims or lon_name not in ds.dims:
            raise SourceError(f"climatology {path} has dims {tuple(ds.dims)}: expected "
                              "latitude and longitude (WB2 layout)")
        self.lat_name, self.lon_name = lat_name, lon_name
        self.lat_idx = _index_on(ds[lat_name].values, lat, "latitudes", path)
        self.lon_idx = _index_on(ds[lon_name].values, lon, "longitudes", path, periodic=True)
        self.doys = np.asarray(ds["dayofyear"].values).astype(np.int64)
        self.hours = (np.asarray(ds["hour"].values).astype(np.int64) if "hour" in ds.dims
                      else None)
        if self.hours is None:
            self.reference = "climatology (by day of year)"

    def _variable(self, ch: Channel) -> Any:
        """The DataArray for ``ch``, its level selected."""
        for name in self.ds.data_vars:
            try:
                if parse_channel(str(name)) == ch:  # level-suffixed names, temperature_850
                    return self.ds[name]
            except Exception:  # noqa: BLE001 - not a channel name; try it as a variable
                pass
            var = lookup_variable(str(name))
            if var is None or var.name != ch.name:
                continue
            da = self.ds[name]
            if ch.level is None:
                return da
            if "level" not in da.dims:
                continue
            levels = np.asarray(da["level"].values, dtype=np.float64)
            hit = np.nonzero(np.isclose(levels, ch.level))[0]
            if hit.size:
                return da.isel(level=int(hit[0]))
            raise OptionError(f"climatology {self.path} has {name} on levels "
                              f"{[int(x) for x in levels]} but not {ch.level} hPa: expected a "
                              f"climatology with {ch.code}")
        raise OptionError(f"climatology {self.path} has no {ch.code} (variables "
                          f"{', '.join(map(str, self.ds.data_vars))}): expected e.g. "
                          f"{ch.var.wb2_name!r}" + (" with a 'level' dim" if ch.level else ""))

    def fields(self, ch: Channel, times: np.ndarray) -> np.ndarray:
        import pandas as pd

        t = pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]"))
        doy = np.asarray(t.day_of_year, dtype=np.int64)
        pos_d = np.searchsorted(self.doys, doy)
        if np.any(pos_d >= len(self.doys)) or np.any(self.doys[np.minimum(pos_d, len(self.doys) - 1)] != doy):
            missing = sorted(set(doy.tolist()) - set(self.doys.tolist()))
            raise OptionError(f"climatology {self.path} lacks day(s) of year {missing[:5]}: "
                              "expected dayofyear 1..366 (WB2 layout)")
        da = self._variable(ch)
        keys: list[tuple[int, ...]]
        if self.hours is not None:
            hr = np.asarray(t.hour, dtype=np.int64)
            pos_h = np.array([int(np.nonzero(self.hours == h)[0][0]) if np.any(self.hours == h)
                              else -1 for h in hr])
            if np.any(pos_h < 0):
                raise OptionError(
                    f"climatology {self.path} has hours {self.hours.tolist()} but the truth has "
                    f"samples at {sorted(set(hr[pos_h < 0].tolist()))} h: expected a "
                    "climatology with every hour the truth has (or one by day of year only)")
            keys = list(zip(pos_h.tolist(), pos_d.tolist()))
        else:
            keys = [(int(d),) for d in pos_d]
        out = np.empty((len(keys), len(self.lat_idx), len(self.lon_idx)), dtype=np.float64)
        cache: dict[tuple[int, ...], np.ndarray] = {}
        for i, key in enumerate(keys):
            if key not in cache:
                sel = (dict(hour=key[0], dayofyear=key[1]) if len(key) == 2
                       else dict(dayofyear=key[0]))
                m = np.asarray(da.isel(sel).transpose(self.lat_name, self.lon_name).values,
                               dtype=np.float64)
                cache[key] = m[np.ix_(self.lat_idx, self.lon_idx)]
            out[i] = cache[key]
        return out


class TimeMeanClimatology:
    """A source's time mean per channel (one map), the climatology ``evaluate`` always took."""

    reference = "climatology (time mean)"

    def __init__(self, src: Any, grid: tuple[int, int]) -> None:
        if src.grid != grid:
            raise GridMismatchError(f"climatology {src.path} is on a {src.grid} grid, the truth "
                                    f"on {grid}; give a climatology on the same grid")
        self.src = src
        self.grid = grid
        self.cache: dict[Channel, np.ndarray] = {}

    def fields(self, ch: Channel, times: np.ndarray) -> np.ndarray:
        if ch not in self.cache:
            self.src.check_channels((ch,))
            n = len(self.src.times)
            acc = np.zeros(self.grid)
            count = 0
            for a in range(0, n, 64):
                x = self.src.read((ch,), a, min(a + 64, n))
                x = x.reshape(-1, *x.shape[-2:])
                acc += x.sum(axis=0)
                count += x.shape[0]
            self.cache[ch] = (acc / count)[None]
        return self.cache[ch]


def is_wb2_climatology(path: str) -> bool:
    """Whether ``path`` opens as a dataset with a ``dayofyear`` dimension (GRIB never does:
    it is not even opened here, so that cfgrib writes no index file beside it)."""
    if path.lower().endswith((".grib", ".grb", ".grib1", ".grib2", ".grb2")):
        return False
    try:
        ds = _open(path)
    except Exception:  # noqa: BLE001 - not something xarray opens as a WB2 climatology
        return False
    return "dayofyear" in ds.dims


def _open(path: str) -> Any:
    import xarray as xr

    if os.path.isdir(path) or path.rstrip("/").endswith(".zarr") or "://" in path:
        with warnings.catch_warnings():  # WB2's stores are consolidated; others need not be
            warnings.simplefilter("ignore", RuntimeWarning)
            return xr.open_zarr(path, consolidated=None, decode_timedelta=False)
    return xr.open_dataset(path)


def open_climatology(path: str | os.PathLike[str] | Any, lat: np.ndarray, lon: np.ndarray
                     ) -> ClimatologyLike:
    """A WB2 climatology (``dayofyear`` dim), an xarray Dataset in that layout, or any source
    (its time mean), aligned to the truth's ``lat``/``lon``."""
    if hasattr(path, "data_vars") and "dayofyear" in getattr(path, "dims", ()):
        return WB2Climatology(path, "<dataset>", lat, lon)
    p = os.fspath(path)
    if is_wb2_climatology(p):
        return WB2Climatology(_open(p), p, lat, lon)
    from era5latent.io.sources import open_source

    return TimeMeanClimatology(open_source(p), (len(lat), len(lon)))
