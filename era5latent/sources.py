"""Opening and normalising ERA5 sources: WeatherBench 2 Zarr, CDS NetCDF and GRIB.

Whatever the source looks like, :func:`open_source` returns a :class:`Source` whose dataset has

* canonical short variable names (``z``, ``t``, ``u``, ``v``, ``q``, ``t2m``, ``u10``, ``v10``,
  ``msl``), whatever the source called them;
* dims ``time, *sample_dims, [level,] latitude, longitude`` in that order, where sample dims are any
  extra dims such as the ensemble ``number`` (kept through encode and decode);
* latitude descending (north first); longitude ascending, 0..360 for global grids (regional grids
  keep a convention in which they are contiguous);
* integer pressure levels in hPa.

The original layout is recorded in :class:`SourceLayout` so that decode can give fields back with
the source's names, units and coordinates. Data stay lazy: nothing is read until
:meth:`Source.read` is asked for a time range.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from era5latent.errors import DataValueError, OptionError, SourceError, SubsetError
from era5latent.fsutil import fast_zarr, is_url
from era5latent.variables import Channel, lookup_variable

_TIME_DIMS = ("time", "valid_time")
_LEVEL_DIMS = ("level", "pressure_level", "isobaricInhPa", "plev", "lev")
_LAT_DIMS = ("latitude", "lat")
_LON_DIMS = ("longitude", "lon")
_GRIB_EXT = (".grib", ".grb", ".grib1", ".grib2", ".grb2")
_NC_EXT = (".nc", ".nc4", ".netcdf", ".cdf", ".h5")


@dataclass(frozen=True)
class SourceLayout:
    """How the source laid its data out, so outputs can follow it (JSON-safe)."""

    format: str  # "zarr" | "netcdf" | "grib"
    names: dict[str, str]  # canonical short name -> source variable name
    units: dict[str, str]  # canonical short name -> source units attr
    lat_descending: bool
    lon_min: float  # the source's own longitude convention: its smallest longitude

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceLayout:
        """From a store's attributes: unknown keys (a newer writer's) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Source:
    """A normalised, lazily read ERA5 source."""

    path: str
    ds: xr.Dataset
    layout: SourceLayout
    sample_dims: tuple[str, ...] = field(default=())

    # -- shape ---------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return (self.ds.sizes["latitude"], self.ds.sizes["longitude"])

    @property
    def latitude(self) -> np.ndarray:
        return np.asarray(self.ds["latitude"].values, dtype=np.float64)

    @property
    def longitude(self) -> np.ndarray:
        return np.asarray(self.ds["longitude"].values, dtype=np.float64)

    @property
    def times(self) -> np.ndarray:
        return np.asarray(self.ds["time"].values).astype("datetime64[ns]")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.ds.sizes[d] for d in self.sample_dims)

    def sample_coords(self) -> dict[str, np.ndarray]:
        return {d: np.asarray(self.ds[d].values) for d in self.sample_dims}

    # -- channels ------------------------------------------------------------------------
    def available(self) -> list[Channel]:
        """Every channel the source holds, in catalogue order."""
        out: list[Channel] = []
        for name in self.ds.data_vars:
            da = self.ds[name]
            if "level" in da.dims:
                out.extend(Channel(str(name), int(lev)) for lev in self.ds["level"].values)
            else:
                out.append(Channel(str(name)))
        return out

    def describe_available(self) -> str:
        by_var: dict[str, list[str]] = {}
        for ch in self.available():
            by_var.setdefault(ch.name, []).append(str(ch.level) if ch.level is not None else "")
        # sorted: an unconsolidated Zarr store lists its variables in no fixed order
        parts = [f"{v}@{'/'.join(levs)}" if levs != [""] else v for v, levs in sorted(by_var.items())]
        return ", ".join(parts) or "nothing usable"

    def check_channels(self, channels: tuple[Channel, ...]) -> None:
        have = set(self.available())
        missing = [ch.code for ch in channels if ch not in have]
        if missing:
            raise SubsetError(
                f"{self.path} has no {', '.join(missing)}; it holds {self.describe_available()}; "
                "choose channels from those with --subset")

    def units_of(self, ch: Channel) -> str:
        return self.layout.units.get(ch.name, ch.units)

    # -- time ----------------------------------------------------------------------------
    def time_indices(self, time_range: str | None) -> tuple[int, int]:
        """Half-open index range ``[start, stop)`` of an inclusive ISO ``START/END`` range."""
        return time_index_range(self.times, time_range, self.path)

    # -- data ----------------------------------------------------------------------------
    def read(self, channels: tuple[Channel, ...], start: int, stop: int) -> np.ndarray:
        """Values for ``channels`` over time indices ``[start, stop)``.

        Returns float32 of shape ``(time, *sample_shape, C, latitude, longitude)``. Each
        variable is read once for all its levels: its chunks usually hold every level, and
        reading level by level decompressed them once per level.
        """
        by_var: dict[str, list[int]] = {}
        for k, ch in enumerate(channels):
            by_var.setdefault(ch.name, []).append(k)
        out: np.ndarray | None = None
        for name, ks in by_var.items():
            da = self.ds[name].isel(time=slice(start, stop))
            if channels[ks[0]].level is not None:
                da = da.sel(level=[channels[k].level for k in ks]).transpose(
                    "time", *self.sample_dims, "level", "latitude", "longitude")
            else:
                da = da.expand_dims("level", axis=-3)
            try:
                vals = np.asarray(da.values, dtype=np.float32)
            except MemoryError:
                raise
            except Exception as err:  # what a reader raises on a damaged or missing chunk varies
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                t = self.times
                raise SourceError(
                    f"cannot read {self.layout.names.get(name, name)} between {iso(t[start])} "
                    f"and {iso(t[stop - 1])} from "
                    f"{self.path}: {first}; the source is damaged or unreachable: check it, or "
                    "download it again") from None
            if out is None:
                out = np.empty((*vals.shape[:-3], len(channels), *vals.shape[-2:]), np.float32)
            out[..., ks, :, :] = vals
        if out is None:
            raise SubsetError("no channels to read; pass at least one, e.g. --subset z500")
        return out


def grid_info(lat: np.ndarray, lon: np.ndarray) -> dict[str, Any]:
    """What identifies a grid: its shape and the first/last latitude and longitude."""
    return {"shape": [int(lat.size), int(lon.size)],
            "latitude": [float(lat[0]), float(lat[-1])],
            "longitude": [float(lon[0]), float(lon[-1])]}


def time_index_range(times: np.ndarray, time_range: str | None, where: str) -> tuple[int, int]:
    """Half-open index range ``[start, stop)`` of sorted ``times`` inside an inclusive ISO
    ``START/END`` range (``None``: all of them); ``where`` names the data in the error."""
    if time_range is None:
        return 0, len(times)
    start, end = parse_time_range(time_range)
    lo = 0 if start is None else int(np.searchsorted(times, start, side="left"))
    hi = len(times) if end is None else int(np.searchsorted(times, end, side="right"))
    if hi <= lo:
        raise OptionError(f"--time {time_range} selects no time step; {where} covers "
                          f"{iso(times[0])} to {iso(times[-1])}")
    return lo, hi


def parse_time_range(text: str) -> tuple[np.datetime64 | None, np.datetime64 | None]:
    """``START/END`` (ISO, inclusive; either side may be empty) -> datetimes."""
    if text.count("/") != 1:
        raise OptionError(
            f"--time {text!r}: expected START/END in ISO form, e.g. 2020-01-01/2020-01-31T18")
    a, _, b = text.partition("/")
    try:
        start = np.datetime64(pd.Timestamp(a.strip()), "ns") if a.strip() else None
        end = np.datetime64(pd.Timestamp(b.strip()), "ns") if b.strip() else None
    except (ValueError, TypeError) as err:
        raise OptionError(
            f"--time {text!r}: {err}; expected START/END in ISO form, e.g. 2020-01-01/2020-01-31T18"
        ) from None
    if start is not None and end is not None and end < start:
        raise OptionError(f"--time {text!r}: END is before START; swap them")
    return start, end


def iso(t: Any) -> str:
    """A time (numpy datetime64 of any unit) as ISO 8601 to the second: how messages show times."""
    return str(np.datetime_as_string(np.asarray(t).astype("datetime64[s]"), unit="s"))


def detect_format(path: str) -> str:
    low = path.rstrip("/").lower()
    if low.endswith(_GRIB_EXT):
        return "grib"
    if low.endswith(_NC_EXT):
        return "netcdf"
    if low.endswith(".zarr") or is_url(path):
        return "zarr"
    if os.path.isdir(path):
        return "zarr"
    if os.path.isfile(path):
        with open(path, "rb") as f:
            magic = f.read(8)
        if magic.startswith(b"GRIB"):
            return "grib"
        if magic.startswith((b"\x89HDF", b"CDF")):
            return "netcdf"
    raise SourceError(
        f"cannot tell the format of {path}: expected a Zarr store (.zarr), NetCDF (.nc) or GRIB "
        "(.grib); rename it with one of those extensions")


def _open_raw(path: str, fmt: str, storage_options: dict[str, Any] | None) -> xr.Dataset:
    if not is_url(path) and not os.path.exists(path):
        raise SourceError(f"no such file or directory: {path}; check the path")
    try:
        # the readers' own warnings (an unconsolidated store, a dtype zarrs or the Zarr spec does
        # not know, cfgrib's notes) never reach the user raw: what matters is checked after
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "zarr":
                with fast_zarr(path):
                    opened: xr.Dataset = xr.open_zarr(path, chunks=None, consolidated=None,
                                                      storage_options=storage_options,
                                                      decode_timedelta=False)
                    return opened
            if fmt == "netcdf":
                return xr.open_dataset(path, engine="h5netcdf", chunks=None,
                                       decode_timedelta=False)
            return _open_grib(path)
    except Exception as err:  # any reader failure means the file is unreadable to us
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SourceError(
            f"cannot read {path} as {fmt}: {first}; check that the file is complete and really "
            f"{fmt}") from None


class _Captured(logging.Handler):
    """Keeps cfgrib's log records (tracebacks included) from the user's terminal."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def corrupted(self) -> str | None:
        """What the first damaged message said, if cfgrib skipped one."""
        for r in self.records:
            if "corrupted" in r.getMessage():
                err = r.exc_info[1] if r.exc_info else None
                return f"{err or r.getMessage()} (a damaged or truncated message)"
        return None


def _open_grib(path: str) -> xr.Dataset:
    import cfgrib

    kwargs = {"indexpath": ""}  # never write index files beside the source
    log = logging.getLogger("cfgrib")
    captured = _Captured()
    log.addHandler(captured)
    propagate, log.propagate = log.propagate, False
    try:
        try:
            ds = xr.open_dataset(path, engine="cfgrib", backend_kwargs=kwargs,
                                 decode_timedelta=False)
        except cfgrib.dataset.DatasetBuildError:
            # several hypercubes (e.g. pressure and surface fields in one file): merge them
            parts = cfgrib.open_datasets(path, backend_kwargs=kwargs)
            parts = [p.drop_vars([c for c in ("step", "surface", "heightAboveGround", "meanSea")
                                  if c in p.coords]) for p in parts]
            ds = xr.merge(parts, compat="override", join="exact")
    finally:
        log.removeHandler(captured)
        log.propagate = propagate
    if (why := captured.corrupted()) is not None:  # cfgrib skipped it and went on: we do not
        raise ValueError(why)
    return ds


def _canonical_name(name: str, da: xr.DataArray) -> str | None:
    for candidate in (name, da.attrs.get("GRIB_shortName"), da.attrs.get("GRIB_cfVarName"),
                      da.attrs.get("long_name", "").replace(" ", "_")):
        if candidate:
            v = lookup_variable(str(candidate))
            if v is not None:
                return v.name
    return None


def normalise(raw: xr.Dataset, path: str, fmt: str) -> Source:
    """Bring any ERA5 layout into the canonical one (see module docstring)."""
    ds = raw
    # time: CDS 'valid_time' dim, or GRIB 'time' dim with a 'valid_time' coordinate
    time_dim = next((d for d in _TIME_DIMS if d in ds.dims), None)
    if time_dim is None:
        scalar = next((d for d in _TIME_DIMS if d in ds.coords and ds[d].ndim == 0), None)
        if scalar is None:
            raise SourceError(
                f"{path} has no time dimension (looked for {', '.join(_TIME_DIMS)}); found dims "
                f"{', '.join(map(str, ds.dims)) or 'none'}")
        ds = ds.expand_dims(scalar)
        time_dim = scalar
    if "step" in ds.dims:
        raise SourceError(f"{path} holds forecasts with a 'step' dimension; expected analyses "
                          "(one time axis): select a single step first")
    if time_dim != "time":
        ds = ds.drop_vars([c for c in ("time",) if c in ds.coords]).rename({time_dim: "time"})
    ds = ds.drop_vars([c for c in ds.coords if c not in ds.dims], errors="ignore")

    renames: dict[str, str] = {}
    for cands, dim in ((_LEVEL_DIMS, "level"), (_LAT_DIMS, "latitude"), (_LON_DIMS, "longitude")):
        found = next((d for d in cands if d in ds.dims), None)
        if found is not None and found != dim:
            renames[found] = dim
    ds = ds.rename(renames)
    for need in ("latitude", "longitude"):
        if need not in ds.dims or need not in ds.coords:
            raise SourceError(f"{path} has no {need} coordinate; expected dims named latitude/lat "
                              "and longitude/lon with coordinate values")

    names: dict[str, str] = {}
    units: dict[str, str] = {}
    keep: dict[str, xr.DataArray] = {}
    for name, da in ds.data_vars.items():
        canon = _canonical_name(str(name), da)
        if canon is None or canon in keep or not {"latitude", "longitude"} <= set(da.dims):
            continue
        if "time" not in da.dims:
            continue
        names[canon] = str(name)
        units[canon] = str(da.attrs.get("units", ""))
        keep[canon] = da
    if not keep:
        raise SourceError(
            f"{path} holds no known ERA5 variable (found {', '.join(map(str, ds.data_vars)) or 'none'}); "
            "expected e.g. geopotential/z, temperature/t, 2m_temperature/t2m")
    _check_units(path, units)
    ds = xr.Dataset(keep)

    if "level" in ds.dims:
        lev = np.asarray(ds["level"].values, dtype=np.float64)
        if "plev" in renames or (lev.size and lev.max() > 2000):  # Pa -> hPa
            lev = lev / 100.0
        ds = ds.assign_coords(level=np.rint(lev).astype(np.int64))

    _check_time(path, ds)
    check_values(path, ds, names)
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    lat_desc = bool(lat.size < 2 or lat[0] > lat[-1])
    if not lat_desc:
        ds = ds.isel(latitude=slice(None, None, -1))
    ds = _normalise_longitude(ds, lon)
    layout = SourceLayout(fmt, names, units, lat_desc, float(lon.min()) if lon.size else 0.0)

    sample_dims = tuple(
        str(d) for d in ds.dims if d not in ("time", "level", "latitude", "longitude"))
    order = ("time", *sample_dims, "level", "latitude", "longitude")
    ds = ds.transpose(*[d for d in order if d in ds.dims])
    return Source(path=path, ds=ds, layout=layout, sample_dims=sample_dims)


def _normalise_longitude(ds: xr.Dataset, lon: np.ndarray) -> xr.Dataset:
    if lon.size < 2:
        return ds
    step = float(np.median(np.abs(np.diff(lon))))
    is_global = abs(lon.size * step - 360.0) < step / 2
    if is_global:
        new = np.mod(lon, 360.0)
    elif lon.min() >= 0 and lon.max() > 180 and np.any(np.abs(np.diff(lon)) > 180 - step):
        new = np.where(lon > 180, lon - 360, lon)  # regional grid crossing 0E: keep it contiguous
    else:
        new = lon
    ds = ds.assign_coords(longitude=new)
    out: xr.Dataset = ds.sortby("longitude")
    return out


def _check_time(path: str, ds: xr.Dataset) -> None:
    t = np.asarray(ds["time"].values)
    if t.size == 0:
        raise SourceError(f"{path} has an empty time axis")
    if "time" not in ds.coords or not np.issubdtype(t.dtype, np.datetime64):
        found = (f"values of type {t.dtype} (e.g. {str(t.flat[0])[:30]!r})"
                 if "time" in ds.coords else "no coordinate values")
        raise SourceError(
            f"{path} has a time axis with {found}; expected datetimes (a CF time coordinate "
            "with units such as 'hours since 1900-01-01'): add or fix the time coordinate")
    if t.size > 1:
        d = np.diff(t.astype("datetime64[ns]").astype(np.int64))
        if np.any(d == 0):
            i = int(np.argmax(d == 0)) + 1
            raise SourceError(f"{path} has a duplicated time {iso(t[i])} at index {i}; "
                              "de-duplicate the times first")
        if np.any(d < 0):
            i = int(np.argmax(d < 0)) + 1
            raise SourceError(f"{path} has times out of order at index {i} ({iso(t[i])}); "
                              "sort the source by time first")


def check_values(path: str, ds: xr.Dataset, names: dict[str, str]) -> None:
    """What the source's coordinates and variables must be before anything is encoded:
    latitude and longitude non-empty, finite, without duplicates (latitude within +-90); every
    variable real-valued (floating point, or integers such as CF-packed ones), never complex,
    boolean, text or objects. One :class:`SourceError` naming what was found and the fix."""
    for axis in ("latitude", "longitude"):
        v = np.asarray(ds[axis].values)
        if v.size == 0:
            raise SourceError(f"{path} has an empty {axis} axis; expected a grid of at least "
                              "one point: select a non-empty region")
        if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
            raise SourceError(f"{path}: {axis} holds {v.dtype} values; expected degrees as "
                              "real numbers")
        v = v.astype(np.float64)
        if not np.isfinite(v).all():
            raise SourceError(f"{path}: {axis} holds {int((~np.isfinite(v)).sum())} NaN or "
                              f"infinite value(s); expected finite degrees: fix the {axis} "
                              "coordinate")
        if np.unique(v).size != v.size:
            raise SourceError(f"{path}: {axis} holds duplicated values; expected each "
                              f"{axis} once: de-duplicate the grid")
        if axis == "latitude" and np.abs(v).max() > 90:
            raise SourceError(f"{path}: latitude reaches {float(np.abs(v).max())}; expected "
                              "degrees within -90..90")
    for canon, name in names.items():
        dt = ds[canon].dtype
        if np.issubdtype(dt, np.complexfloating):
            raise DataValueError(f"{path}: {name} is complex ({dt}); expected real fields: take "
                                 "the real part (or the magnitude) first")
        if not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)) or \
                dt == np.bool_:
            raise DataValueError(f"{path}: {name} holds {dt} values; expected floating-point "
                                 "fields (or CF-packed integers)")


def _check_units(path: str, units: dict[str, str]) -> None:
    zu = units.get("z", "").replace("**", "").replace("^", "").strip().lower()
    if zu in ("m", "gpm", "metres", "meters", "geopotential metres"):
        raise DataValueError(
            f"{path}: geopotential is in {units['z']!r} (geopotential height); expected m2 s-2: "
            "multiply by 9.80665 and set units to 'm2 s-2'")


def open_source(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
                ) -> Source:
    """Open any supported ERA5 source (local path or fsspec URL) and normalise it."""
    p = os.fspath(path)
    fmt = detect_format(p)
    return normalise(_open_raw(p, fmt, storage_options), p, fmt)


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite values (the model cannot encode them)."""
    if not np.isfinite(values).all():
        n = int(values.size - np.isfinite(values).sum())
        raise DataValueError(
            f"{what} holds {n} NaN or infinite value(s); expected finite fields: fill or mask them "
            "before encoding, or choose another --time range")
