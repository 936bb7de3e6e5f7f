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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from era5latent.errors import DataValueError, OptionError, SourceError, SubsetError
from era5latent.fsutil import fast_zarr, is_url
from era5latent.io.units import unit_problem
from era5latent.io.variables import Channel, lookup_variable, variable_by_name

_TIME_DIMS = ("time", "valid_time")
_LEVEL_DIMS = ("level", "pressure_level", "isobaricInhPa", "plev", "lev")
_LAT_DIMS = ("latitude", "lat")
_LON_DIMS = ("longitude", "lon")
_GRIB_EXT = (".grib", ".grb", ".grib1", ".grib2", ".grb2")
_NC_EXT = (".nc", ".nc4", ".netcdf", ".cdf", ".h5")


@dataclass(frozen=True)
class SourceLayout:
    """How the source laid its data out, so outputs can follow it (JSON-safe)."""

    format: str  # "zarr" | "netcdf" | "grib" | "xarray"
    names: dict[str, str]  # canonical short name -> source variable name
    units: dict[str, str]  # canonical short name -> source units attr
    lat_descending: bool
    lon_min: float  # the source's own longitude convention: its smallest longitude
    #: canonical dim -> the source's name for it (``time`` -> ``valid_time``, ``level`` ->
    #: ``pressure_level``); absent: the source used the canonical name
    dims: dict[str, str] = field(default_factory=dict)
    #: canonical short name -> the source variable's attributes, verbatim (JSON-safe ones)
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the source dataset's own attributes (JSON-safe ones)
    global_attrs: dict[str, Any] = field(default_factory=dict)
    #: which time the time axis holds: "valid" (reference + step) or "reference"
    time_axis: str = "valid"
    #: the forecast step selected with ``--step`` (hours), if any
    step_hours: float | None = None
    #: the source's pressure levels were in Pa (CMIP ``plev``); era5latent works in hPa
    level_pa: bool = False
    #: canonical coordinate (``time``, ``level``, ``latitude``, ``longitude``) -> its attributes
    coord_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceLayout:
        """From a store's attributes: unknown keys (a newer writer's) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def json_attrs(attrs: Mapping[Any, Any]) -> dict[str, Any]:
    """The attributes that survive JSON unchanged (strings, numbers, booleans, lists of them);
    numpy scalars become Python ones, anything else is left out."""
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iufb":
            v = v.tolist()
        if isinstance(v, float) and not np.isfinite(v):
            continue
        if isinstance(v, (str, bool, int, float)) or (
                isinstance(v, list) and all(isinstance(x, (str, bool, int, float)) for x in v)):
            out[str(k)] = v
    return out


@dataclass
class Source:
    """A normalised, lazily read ERA5 source."""

    path: str
    ds: xr.Dataset
    layout: SourceLayout
    sample_dims: tuple[str, ...] = field(default=())
    #: how it was opened (``time_axis``, ``step``): workers that reopen the path pass them again
    open_options: dict[str, Any] = field(default_factory=dict)
    #: (variable, levels) -> the variable with those levels selected and its dims in read order,
    #: made once: xarray's level selection and transpose cost the reader thread 1.5-2 ms a read
    _views: dict[tuple[str, tuple[Any, ...]], xr.DataArray] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    #: whether every variable is its file's array in the file's own index order (latitude not
    #: flipped, longitude not sorted), up to dimension names and order: set by :func:`normalise`;
    #: only then may a Zarr source's chunk files be read directly (:mod:`era5latent.io.chunkread`)
    in_file_order: bool = False
    #: whether :meth:`read` may read chunk files directly at all (:meth:`use_direct_reads`)
    direct_reads: bool = True
    #: (variable, levels) -> its direct reader, or None where xarray reads it
    _direct: dict[tuple[str, tuple[Any, ...]], Callable[[int, int], np.ndarray] | None] = field(
        default_factory=dict, init=False, repr=False, compare=False)

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
    def _level_selection(self, levels: list[Any]) -> slice | list[int]:
        """Positions of ``levels`` on the level axis: a slice where they are a run of neighbours
        in order (Zarr reads a slice of a chunk about twice as fast as a list of positions)."""
        pos = [int(p) for p in self.ds.get_index("level").get_indexer(levels)]
        if min(pos) < 0:  # checked by check_channels; said here too rather than read wrongly
            missing = [lv for lv, p in zip(levels, pos) if p < 0]
            raise SubsetError(f"{self.path} has no level {missing[0]}; it holds "
                              f"{self.describe_available()}")
        if pos == list(range(pos[0], pos[0] + len(pos))):
            return slice(pos[0], pos[0] + len(pos))
        return pos

    def _view(self, name: str, levels: tuple[Any, ...]) -> xr.DataArray:
        """Variable ``name`` at ``levels`` (``(None,)``: a single-level variable) with its dims
        in the order :meth:`read` returns them; lazily indexed, made once per level set."""
        view = self._views.get((name, levels))
        if view is None:
            view = self.ds[name]
            if levels[0] is not None:
                view = view.isel(level=self._level_selection(list(levels))).transpose(
                    "time", *self.sample_dims, "level", "latitude", "longitude")
            self._views[(name, levels)] = view
        return view

    def use_direct_reads(self, on: bool) -> None:
        """Let :meth:`read` read a local Zarr source's small chunk files itself
        (:mod:`era5latent.io.chunkread`: less CPU and GIL time, for a reader beside a model on
        the CPU), or not (zarrs, faster where nothing else needs the cores: a model on a GPU)."""
        if on != self.direct_reads:
            self.direct_reads = on
            self._direct.clear()

    def _direct_reader(self, name: str, levels: tuple[Any, ...]
                       ) -> Callable[[int, int], np.ndarray] | None:
        """``start, stop -> values`` of :meth:`_view` read from its chunk files by
        :mod:`era5latent.io.chunkread`, or None where xarray must read it: not a local Zarr
        source in its files' order, chunks that module does not read, CF packing or a fill
        value xarray masks, ``ERA5LATENT_DIRECT_READS=0``, or a first read that differs from
        xarray's. Made once per variable and level set."""
        key = (name, levels)
        if key not in self._direct:
            try:
                self._direct[key] = self._make_direct_reader(name, levels)
            except Exception:  # a damaged array or coordinate: xarray's read says what is wrong
                self._direct[key] = None
        return self._direct[key]

    def _make_direct_reader(self, name: str, levels: tuple[Any, ...]
                            ) -> Callable[[int, int], np.ndarray] | None:
        from era5latent.io.chunkread import open_array

        if not (self.direct_reads and self.in_file_order) or self.layout.format != "zarr" or \
                is_url(self.path) or \
                os.environ.get("ERA5LATENT_DIRECT_READS", "1") == "0":
            return None
        var = self.ds[name]
        enc = var.encoding
        fill = enc.get("_FillValue")
        if any(k in enc for k in ("scale_factor", "add_offset", "missing_value")) or (
                fill is not None and not (isinstance(fill, (float, np.floating))
                                          and np.isnan(fill))):
            return None  # xarray unpacks or masks: its read, not the file's values
        arr = open_array(os.path.join(self.path, self.layout.names[name]))
        if arr is None:
            return None
        canonical = {source: canon for canon, source in self.layout.dims.items()}
        dims = tuple(canonical.get(d, d) for d in arr.dims)
        if sorted(dims) != sorted(map(str, var.dims)) or \
                any(var.sizes[d] != n for d, n in zip(dims, arr.shape)):
            return None  # a dimension added, stacked or selected on opening
        view = self._view(name, levels)
        order = [dims.index(str(d)) for d in view.dims]
        at = None if levels[0] is None else self._level_selection(list(levels))
        lev: slice | np.ndarray = slice(None) if at is None else \
            at if isinstance(at, slice) else np.asarray(at, dtype=np.int64)

        def read(start: int, stop: int) -> np.ndarray:
            sel = [slice(start, stop) if d == "time" else lev if d == "level" else slice(None)
                   for d in dims]
            box: np.ndarray = arr.read(sel).transpose(order)
            return box

        mine = read(0, 1)
        theirs = np.asarray(view.isel(time=slice(0, 1)).values, dtype=np.float32)
        if mine.shape != theirs.shape or not np.array_equal(mine, theirs, equal_nan=True):
            return None
        return read

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
            levels = tuple(channels[k].level for k in ks)
            view = self._view(name, levels)
            try:  # (xarray's expand_dims would read the values outside this try)
                direct = self._direct_reader(name, levels)
                vals = direct(start, stop) if direct is not None else \
                    np.asarray(view.isel(time=slice(start, stop)).values, dtype=np.float32)
                if channels[ks[0]].level is None:
                    vals = vals[..., None, :, :]  # a level axis of one
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


def _magic(path: str) -> str | None:
    """What the first bytes of a local file say it is: grib, netcdf3, hdf5 (NetCDF 4) or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"GRIB"):
        return "grib"
    if head.startswith(b"CDF") and head[3:4] in (b"\x01", b"\x02", b"\x05"):
        return "netcdf3"
    if head.startswith(b"\x89HDF"):
        return "hdf5"
    return None


def detect_format(path: str) -> str:
    """zarr, netcdf or grib: a local file by its first bytes (a '.nc' download that is really
    GRIB opens as GRIB), else by its name."""
    if not is_url(path) and os.path.isfile(path):
        magic = _magic(path)
        if magic is not None:
            return "grib" if magic == "grib" else "netcdf"
    low = path.rstrip("/").lower()
    if low.endswith(_GRIB_EXT):
        return "grib"
    if low.endswith(_NC_EXT):
        return "netcdf"
    if low.endswith(".zarr") or is_url(path):
        return "zarr"
    if os.path.isdir(path):
        return "zarr"
    raise SourceError(
        f"cannot tell the format of {path}: expected a Zarr store (.zarr), NetCDF (.nc) or GRIB "
        "(.grib); rename it with one of those extensions")


#: xarray engines for NetCDF, in the order tried: h5netcdf reads NetCDF 4 (HDF5), scipy reads
#: classic NetCDF 3 (CDS grib_to_netcdf, ERA-Interim), netCDF4 reads both where it is installed
NETCDF_ENGINES = ("h5netcdf", "scipy", "netcdf4")


def _netcdf_engines(path: str) -> list[str]:
    """The engines to try for ``path``, those that can read its format first."""
    import importlib.util

    modules = {"h5netcdf": "h5netcdf", "scipy": "scipy", "netcdf4": "netCDF4"}
    installed = [e for e in NETCDF_ENGINES if importlib.util.find_spec(modules[e]) is not None]
    magic = None if is_url(path) else _magic(path)
    preferred = {"netcdf3": ("scipy", "netcdf4"), "hdf5": ("h5netcdf", "netcdf4")}.get(magic or "")
    if preferred:
        return [e for e in preferred if e in installed] or installed
    return installed


def _open_netcdf(path: str) -> xr.Dataset:
    engines = _netcdf_engines(path)
    errors: list[str] = []
    for engine in engines:
        try:
            ds: xr.Dataset = xr.open_dataset(path, engine=engine, chunks=None,
                                             decode_timedelta=False)
            return ds
        except Exception as err:  # try the next engine; report them all if none reads it
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            errors.append(f"{engine}: {first}")
    kind = {"netcdf3": "classic NetCDF 3", "hdf5": "NetCDF 4 (HDF5)"}.get(
        _magic(path) or "", "NetCDF")
    if not engines:
        raise SourceError(f"cannot read {path}: no NetCDF engine is installed; install scipy "
                          "(classic NetCDF) or h5netcdf (NetCDF 4)")
    raise SourceError(f"cannot read {path} as {kind} (tried {'; '.join(errors)}); check that the "
                      "file is complete, or install netCDF4 to try its reader")


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
                return _open_netcdf(path)
            return _open_grib(path)
    except SourceError:
        raise
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
                                  if c in p.coords and c not in p.dims]) for p in parts]
            ds = xr.merge(parts, compat="override", join="exact")
    finally:
        log.removeHandler(captured)
        log.propagate = propagate
    if (why := captured.corrupted()) is not None:  # cfgrib skipped it and went on: we do not
        raise ValueError(why)
    return ds


def _canonical_name(name: str, da: xr.DataArray) -> str | None:
    """The catalogue name of a source variable: its own name, else what its GRIB or CF
    attributes say it is (shortName, cfgrib name, paramId, long name)."""
    for candidate in (name, da.attrs.get("GRIB_shortName"), da.attrs.get("GRIB_cfVarName"),
                      da.attrs.get("GRIB_paramId"), da.attrs.get("long_name", "")):
        if candidate is not None and str(candidate).strip():
            v = lookup_variable(str(candidate))
            if v is not None:
                if v.name == "z" and da.attrs.get("GRIB_typeOfLevel") == "surface":
                    return "zs"  # geopotential on the surface: ERA5's orography
                return v.name
    return None


TIME_AXES = ("valid", "reference")


def parse_step(text: str) -> float:
    """A forecast step as hours: ``6`` (hours), ``6h``, ``90min``, ``1d``, ``PT6H``."""
    t = text.strip()
    try:
        hours = float(t) if t.replace(".", "", 1).isdigit() else \
            pd.Timedelta(t).total_seconds() / 3600.0
    except (ValueError, TypeError):
        raise OptionError(f"--step {text!r}: expected a forecast step such as 6, 6h, 90min or "
                          "PT6H") from None
    if not np.isfinite(hours) or hours < 0:
        raise OptionError(f"--step {text!r}: expected a step of zero or more hours")
    return hours


def _step_hours(step: xr.DataArray, path: str) -> np.ndarray:
    vals = np.asarray(step.values)
    if vals.dtype.kind == "m":
        return np.asarray(vals / np.timedelta64(1, "h"), dtype=np.float64)
    unit = str(step.attrs.get("units", "hours")).split(" since ")[0].strip().lower()
    factor = {"hours": 1.0, "hour": 1.0, "h": 1.0, "minutes": 1 / 60, "minute": 1 / 60,
              "seconds": 1 / 3600, "second": 1 / 3600, "s": 1 / 3600, "days": 24.0,
              "day": 24.0}.get(unit)
    if factor is None:
        raise SourceError(f"{path}: forecast step in unknown units {unit!r}; expected hours, "
                          "minutes, seconds or days")
    return np.asarray(vals, dtype=np.float64) * factor


def _fmt_hours(h: np.ndarray | float) -> str:
    return ", ".join(f"{x:g}h" for x in np.atleast_1d(h))


def _select_step(ds: xr.Dataset, path: str, step: str | None) -> tuple[xr.Dataset, float | None]:
    if step is None:
        return ds, None
    want = parse_step(step)
    if "step" not in ds.coords:
        raise OptionError(f"--step {step}: {path} holds no forecast step (analyses); drop --step")
    hours = _step_hours(ds["step"], path)
    idx = np.flatnonzero(np.isclose(np.atleast_1d(hours), want))
    if not idx.size:
        raise OptionError(f"--step {step}: {path} holds step(s) {_fmt_hours(hours)}; choose "
                          "one of them")
    if "step" in ds.dims:
        ds = ds.isel(step=int(idx[0]))
    return ds, want


def _flatten_steps(ds: xr.Dataset, path: str, time_dim: str) -> xr.Dataset:
    """(reference time, step) -> one axis of valid times, in time order."""
    if "valid_time" in ds.coords and set(ds["valid_time"].dims) == {time_dim, "step"}:
        valid = ds["valid_time"].transpose(time_dim, "step").values.astype("datetime64[ns]")
    else:
        hours = _step_hours(ds["step"], path)
        ref = np.asarray(ds[time_dim].values).astype("datetime64[ns]")
        valid = ref[:, None] + (hours * 3.6e12).astype("timedelta64[ns]")[None, :]
    flat = valid.reshape(-1)
    uniq, counts = np.unique(flat, return_counts=True)
    if np.any(counts > 1):
        raise SourceError(
            f"{path} holds forecasts whose valid times overlap ({iso(uniq[np.argmax(counts > 1)])} "
            "comes from two reference times); pick one forecast step with --step, or use "
            "--time-axis reference with --step")
    st = ds.drop_vars([c for c in ds.coords if c in ("valid_time",) or
                       (c not in ds.dims and {time_dim, "step"} & set(ds[c].dims))])
    st = st.stack(_valid=(time_dim, "step"))
    st = st.drop_vars(["_valid", time_dim, "step"]).assign_coords(_valid=flat)
    order = np.argsort(flat, kind="stable")
    out: xr.Dataset = st.isel(_valid=order).rename({"_valid": "valid_time"})
    return out


def _choose_time(ds: xr.Dataset, path: str, time_axis: str) -> tuple[xr.Dataset, str]:
    """Make one time dimension ``time`` of the chosen kind; returns the dataset and the name of
    the source coordinate whose values it holds (what decode calls the axis)."""
    time_dim = next((d for d in (*_TIME_DIMS, "forecast_reference_time") if d in ds.dims), None)
    if time_dim is None:
        scalar = next((d for d in _TIME_DIMS if d in ds.coords and ds[d].ndim == 0), None)
        if scalar is None:
            raise SourceError(
                f"{path} has no time dimension (looked for {', '.join(_TIME_DIMS)}); found dims "
                f"{', '.join(map(str, ds.dims)) or 'none'}")
        ds = ds.expand_dims(scalar)
        time_dim = scalar
    if "step" in ds.dims:
        if time_axis == "reference":
            hours = _step_hours(ds["step"], path)
            raise OptionError(f"{path} holds forecast steps {_fmt_hours(hours)}: with --time-axis "
                              "reference pick one with --step")
        ds = _flatten_steps(ds, path, time_dim)
        time_dim = "valid_time"
    name = time_dim
    want = "valid_time" if time_axis == "valid" else (
        "time" if time_dim != "time" else "forecast_reference_time")
    alt = ds.coords.get(want) if want != time_dim else None
    if alt is not None and alt.dims in ((), (time_dim,)):
        alt_vals = np.atleast_1d(np.asarray(alt.values)).astype("datetime64[ns]")
        own = np.asarray(ds[time_dim].values).astype("datetime64[ns]")
        if alt_vals.shape == own.shape and not np.array_equal(alt_vals, own):
            ds = ds.assign_coords({time_dim: alt_vals})
            name = want
    elif time_axis == "reference" and time_dim == "valid_time" and "step" in ds.coords and \
            np.any(_step_hours(ds["step"], path) != 0):
        raise OptionError(f"--time-axis reference: {path} holds only valid times of forecasts "
                          "(no reference time); use --time-axis valid")
    if time_dim != "time":
        ds = ds.drop_vars([c for c in ("time",) if c in ds.coords]).rename({time_dim: "time"})
    return ds, name


def _scalar_level_as_axis(ds: xr.Dataset) -> xr.Dataset:
    """A single-level selection (scalar ``isobaricInhPa``/``level`` coordinate) as a one-level
    axis of its pressure variables."""
    if any(d in ds.dims for d in _LEVEL_DIMS):
        return ds
    lev = next((c for c in _LEVEL_DIMS if c in ds.coords and ds[c].ndim == 0), None)
    if lev is None:
        return ds
    out: dict[str, xr.DataArray] = {}
    for name, da in ds.data_vars.items():
        canon = _canonical_name(str(name), da)
        if canon is not None and variable_by_name(canon).pressure and lev in da.coords:
            out[str(name)] = da.expand_dims(lev, axis=-3 if da.ndim >= 2 else 0)
        else:
            out[str(name)] = da.drop_vars(lev, errors="ignore")
    return xr.Dataset(out, attrs=ds.attrs)


def normalise(raw: xr.Dataset, path: str, fmt: str, *, time_axis: str = "valid",
              step: str | None = None) -> Source:
    """Bring any ERA5 layout into the canonical one (see module docstring).

    ``time_axis``: ``valid`` (default) makes the valid time (reference time + step) the time
    axis; a GRIB of several forecast steps then becomes one axis of valid times. ``reference``
    keeps the forecast reference time (one step must then be chosen). ``step`` (``6h``) selects
    one forecast step first.
    """
    axis = time_axis.strip().lower()
    if axis not in TIME_AXES:
        raise OptionError(f"--time-axis {time_axis!r}: expected valid or reference")
    ds, step_hours = _select_step(raw, path, step)
    ds, time_name = _choose_time(ds, path, axis)
    ds = _scalar_level_as_axis(ds)
    coord_attrs = {"time": json_attrs(raw[time_name].attrs) if time_name in raw.variables
                   else {}}
    ds = ds.drop_vars([c for c in ds.coords if c not in ds.dims], errors="ignore")

    renames: dict[str, str] = {}
    for cands, dim in ((_LEVEL_DIMS, "level"), (_LAT_DIMS, "latitude"), (_LON_DIMS, "longitude")):
        found = next((d for d in cands if d in ds.dims), None)
        if found is not None and found != dim:
            renames[found] = dim
    for found, dim in renames.items():
        coord_attrs[dim] = json_attrs(ds[found].attrs) if found in ds.coords else {}
    for dim in ("level", "latitude", "longitude"):
        if dim in ds.coords and dim not in coord_attrs:
            coord_attrs[dim] = json_attrs(ds[dim].attrs)
    ds = ds.rename(renames)
    for need in ("latitude", "longitude"):
        if need not in ds.dims or need not in ds.coords:
            raise SourceError(f"{path} has no {need} coordinate; expected dims named latitude/lat "
                              "and longitude/lon with coordinate values")

    names: dict[str, str] = {}
    units: dict[str, str] = {}
    var_attrs: dict[str, dict[str, Any]] = {}
    keep: dict[str, xr.DataArray] = {}
    for name, da in ds.data_vars.items():
        canon = _canonical_name(str(name), da)
        if canon is None or canon in keep or not {"latitude", "longitude"} <= set(da.dims):
            continue
        if "time" not in da.dims:
            continue
        if variable_by_name(canon).pressure and "level" not in da.dims:
            if canon != "z":
                continue  # a pressure variable without a level cannot be a channel
            canon = "zs"  # geopotential without a level: the surface's (ERA5's orography)
            if canon in keep:
                continue
        names[canon] = str(name)
        units[canon] = str(da.attrs.get("units", ""))
        var_attrs[canon] = json_attrs(da.attrs)
        keep[canon] = da
    if not keep:
        raise SourceError(
            f"{path} holds no known ERA5 variable (found {', '.join(map(str, ds.data_vars)) or 'none'}); "
            "expected e.g. geopotential/z, temperature/t, 2m_temperature/t2m")
    _check_units(path, units, names)
    ds = xr.Dataset(keep)

    level_pa = False
    if "level" in ds.dims:
        lev = np.asarray(ds["level"].values, dtype=np.float64)
        if "plev" in renames or (lev.size and lev.max() > 2000):  # Pa -> hPa
            lev = lev / 100.0
            level_pa = True
        ds = ds.assign_coords(level=np.rint(lev).astype(np.int64))

    _check_time(path, ds)
    check_values(path, ds, names)
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    lat_desc = bool(lat.size < 2 or lat[0] > lat[-1])
    if not lat_desc:
        ds = ds.isel(latitude=slice(None, None, -1))
    ds, lon_sorted = _normalise_longitude(ds, lon)
    dims = {"time": time_name} if time_name != "time" else {}
    dims.update({dim: found for found, dim in renames.items()})
    layout = SourceLayout(fmt, names, units, lat_desc, float(lon.min()) if lon.size else 0.0,
                          dims=dims, attrs=var_attrs, global_attrs=json_attrs(raw.attrs),
                          time_axis=axis, step_hours=step_hours, level_pa=level_pa,
                          coord_attrs={k: v for k, v in coord_attrs.items() if v})

    sample_dims = tuple(
        str(d) for d in ds.dims if d not in ("time", "level", "latitude", "longitude"))
    order = ("time", *sample_dims, "level", "latitude", "longitude")
    ds = ds.transpose(*[d for d in order if d in ds.dims])
    return Source(path=path, ds=ds, layout=layout, sample_dims=sample_dims,
                  open_options={"time_axis": axis, "step": step},
                  in_file_order=lat_desc and not lon_sorted)


def _normalise_longitude(ds: xr.Dataset, lon: np.ndarray) -> tuple[xr.Dataset, bool]:
    """Longitudes in the source's convention made global (0..360) or contiguous; returns the
    dataset and whether it had to be sorted along longitude."""
    if lon.size < 2:
        return ds, False
    step = float(np.median(np.abs(np.diff(lon))))
    is_global = abs(lon.size * step - 360.0) < step / 2
    if is_global:
        new = np.mod(lon, 360.0)
    elif lon.min() >= 0 and lon.max() > 180 and np.any(np.abs(np.diff(lon)) > 180 - step):
        new = np.where(lon > 180, lon - 360, lon)  # regional grid crossing 0E: keep it contiguous
    else:
        new = lon
    ds = ds.assign_coords(longitude=new)
    if np.all(np.diff(new) > 0):  # already in order (WeatherBench 2, CDS): no sortby, whose
        return ds, False  # index array made every read a fancy selection, twice as slow as a slice
    out: xr.Dataset = ds.sortby("longitude")
    return out, True


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


def _check_units(path: str, units: dict[str, str], names: dict[str, str]) -> None:
    """Refuse a field whose units attribute names other units than ERA5's (era5latent.io.units)."""
    for canon, found in units.items():
        want = variable_by_name(canon).units
        fix = unit_problem(found, want)
        if fix is not None:
            raise DataValueError(
                f"{path}: {names[canon]} is in {found!r}; expected {want!r} (ERA5's units for "
                f"{canon}): {fix} and set its units attribute to {want!r}")


def open_source(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                *, time_axis: str = "valid", step: str | None = None) -> Source:
    """Open any supported ERA5 source (local path or fsspec URL) and normalise it.

    ``time_axis`` and ``step``: see :func:`normalise`."""
    p = os.fspath(path)
    fmt = detect_format(p)
    return normalise(_open_raw(p, fmt, storage_options), p, fmt, time_axis=time_axis, step=step)


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite values (the model cannot encode them)."""
    if not np.isfinite(values).all():
        n = int(values.size - np.isfinite(values).sum())
        raise DataValueError(
            f"{what} holds {n} NaN or infinite value(s); expected finite fields: fill or mask them "
            "before encoding, or choose another --time range")
