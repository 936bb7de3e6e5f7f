"""The Python API: everything the CLI does, as functions on typed inputs and xarray Datasets.

Import it as ``import era5latent`` (the names below are exported lazily, so importing the package
stays free of torch until one is used)::

    latent = era5latent.encode(ds, model, "z500,t850,t2m")   # xr.Dataset of packed codes
    fields = era5latent.decode(latent, model)                # xr.Dataset in WB2 layout
    latent = era5latent.open_latent("latent.zarr")           # a store on disk, lazily

A *latent Dataset* is the in-memory form of a latent store (docs/format.md): one uint8 variable
``codes_<group>`` per group with dims ``(time, *sample_dims, token_lat, token_lon, byte)`` and
the store's attribute ``era5latent``; coordinates ``time``, the sample dims (e.g. ``number``),
the source grid ``latitude``/``longitude`` (what decode returns to) and ``token_lat``/
``token_lon``, the centre of each token's patch. :func:`encode` returns one, :func:`open_latent`
reads one, :func:`decode` accepts either.

Work is cut into the store's time chunks (``time_chunk`` steps, batches counted from each
chunk's start) exactly as ``era5latent encode``/``decode`` do, so results are bitwise the ones
the CLI writes for the same options, whatever the input's dask chunking.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import xarray as xr

from era5latent.errors import CheckpointError, OptionError, StoreError
from era5latent.evaluation.score import EvalReport
from era5latent.io.fields import FieldWriter, field_coord_attrs
from era5latent.model.checkpoint import LoadedModel, check_same_model, load_checkpoint
from era5latent.model.devices import place_for_inference, resolve_device, resolve_precision
from era5latent.pipeline import (
    DecodeResult,
    EncodeResult,
    store_spec,
    decode_fields,
    decode_precision,
    encode_fields,
    first_step_masks,
    read_fields,
    read_residuals,
    ready_to_encode,
    select_store_channels,
)
from era5latent.store.masks import read_masks, split_masked
from era5latent.io.sources import Source, SourceLayout, iso, normalise, open_source
from era5latent.store.core import ATTR, codes_name, LatentStore, open_latent_store
from era5latent.store.spec import GroupSpec, jsonable
from era5latent.store.layout import DONE, TOKEN_DIMS, token_coords
from era5latent.store.verify import Check
from era5latent.training import TrainOptions, TrainResult
from era5latent.io.variables import Channel, parse_subset

if TYPE_CHECKING:  # dask.distributed is imported only when a cluster is used
    from era5latent.pipeline.distributed import FinalizeResult

__all__ = [
    "Channels",
    "DataLike",
    "ModelLike",
    "decode",
    "decode_to_file",
    "encode",
    "encode_to_store",
    "evaluate_reconstruction",
    "finalize",
    "info",
    "load_model",
    "open_latent",
    "train_model",
    "verify",
]

#: a subset: ``"z500,t850,t2m"``, ``["z500", "t2m"]`` or parsed channels
Channels = str | Sequence[str] | Sequence[Channel]
#: ERA5 data: an xarray Dataset (any layout ``open_source`` accepts) or a path/URL to open
DataLike = xr.Dataset | str | os.PathLike[str]
#: a model: loaded, or the path of a checkpoint to load (on the CPU)
ModelLike = LoadedModel | str | os.PathLike[str]
#: progress(done_samples, total_samples)
Progress = Callable[[int, int], None]

_IN_MEMORY = "<xarray.Dataset>"
#: a latent Dataset's variable of a masked channel's mask: ``mask_sst``
MASK_VAR = "mask_"
_TIME_ATTRS = {"standard_name": "time"}  # what a stored time coordinate opens with


# -- small conversions ---------------------------------------------------------------------------

def _channels(subset: Channels) -> tuple[Channel, ...]:
    if isinstance(subset, str):
        return parse_subset(subset)
    items = list(subset)
    if items and all(isinstance(c, Channel) for c in items):
        return tuple(cast(list[Channel], items))
    return parse_subset([str(c) for c in items])


def _model(model: ModelLike) -> LoadedModel:
    return model if isinstance(model, LoadedModel) else load_model(model)


def _source(data: DataLike) -> Source:
    if isinstance(data, xr.Dataset):
        label = str(data.encoding.get("source") or _IN_MEMORY)
        return normalise(data, label, "xarray")
    return open_source(data)


def _windows(n: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _is_dask(data: Any) -> bool:
    from dask.base import is_dask_collection

    return bool(is_dask_collection(data))


# -- models --------------------------------------------------------------------------------------

def load_model(path: str | os.PathLike[str], device: str = "cpu") -> LoadedModel:
    """Load a checkpoint written by :func:`train_model` (strictly; see docs/format.md).

    ``device`` is where the weights go (``cpu``, ``cuda``, ``cuda:N``); :func:`encode` and
    :func:`decode` move the model to their own ``device`` when it differs.
    """
    return load_checkpoint(os.fspath(path), device)


# -- the latent Dataset --------------------------------------------------------------------------

def _token_coords(meta: Mapping[str, Any], lat: np.ndarray, lon: np.ndarray,
                  store: LatentStore | None = None
                  ) -> dict[str, tuple[str, np.ndarray, dict[str, Any]]]:
    """Centre of each token's patch (``store.layout.token_centres``): the store's own
    ``token_lat``/``token_lon`` arrays (format version 3), else computed from the model config."""
    if store is not None and store.version >= 3:
        return {d: (d, store.coord(d), dict(store.array(d).attrs)) for d in TOKEN_DIMS}
    return {d: (d, v, a) for d, (v, a) in token_coords(meta.get("model", {}), lat, lon).items()}


def latent_dataset(codes: Mapping[str, Any], meta: Mapping[str, Any], times: np.ndarray,
                    sample_coords: Mapping[str, np.ndarray], lat: np.ndarray, lon: np.ndarray,
                    array_attrs: Mapping[str, Mapping[str, Any]] | None = None,
                    store: LatentStore | None = None,
                    masks: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Assemble a latent Dataset from packed codes per group (numpy or dask) and the masks of
    masked channels by code (``mask_CH``, bool ``(time, *sample, latitude, longitude)``)."""
    dims = ("time", *sample_coords, "token_lat", "token_lon", "byte")
    groups = {g: GroupSpec.from_dict(g, d) for g, d in meta["groups"].items()}
    data_vars = {}
    for g, arr in codes.items():
        spec = groups[g]
        attrs = dict(array_attrs[g]) if array_attrs and g in array_attrs else {
            "group": g, "channels": list(spec.channels), "code_bits": spec.code_bits,
            "bit_order": "big", "description": "packed sign bits of the WLA binary latent codes"}
        data_vars[codes_name(g)] = xr.Variable(dims, arr, attrs)
    for code, m in (masks or {}).items():
        data_vars[MASK_VAR + code] = xr.Variable(
            ("time", *sample_coords, "latitude", "longitude"), m,
            {"channel": code, "description": f"True where {code} was missing (NaN) in the "
                                             "source; decode puts NaN back there"})
    coords: dict[str, Any] = {"time": ("time", np.asarray(times).astype("datetime64[ns]"),
                                       _TIME_ATTRS),
                              **{d: (d, np.asarray(v)) for d, v in sample_coords.items()},
                              "latitude": ("latitude", lat, field_coord_attrs("latitude")),
                              "longitude": ("longitude", lon, field_coord_attrs("longitude")),
                              **_token_coords(meta, lat, lon, store)}
    return xr.Dataset(data_vars, coords=coords, attrs={ATTR: dict(meta)})


def _read_mask_chunk(path: str, i: int) -> dict[str, np.ndarray]:
    return read_masks(open_latent_store(path), i)


def _lazy_masks(store: LatentStore) -> dict[str, Any]:
    """The mask layer as lazy arrays by masked channel (one dask chunk per time chunk, each
    checked against ``mask/sha256`` when computed)."""
    import dask.array as dsa
    from dask.delayed import delayed

    if not store.has_mask:
        return {}
    sample = tuple(store.array(d).shape[0] for d in store.sample_dims)
    grid = (store.array("latitude").shape[0], store.array("longitude").shape[0])
    n_chunks = store.array(DONE).shape[0]
    out: dict[str, list[Any]] = {c: [] for c in store.mask_channels}
    for i in range(n_chunks):
        a, b = store.chunk_bounds(i)
        task = delayed(_read_mask_chunk, pure=True)(store.path, i)
        for c in out:
            out[c].append(dsa.from_delayed(  # type: ignore[no-untyped-call]
                task[c], shape=(b - a, *sample, *grid), dtype=bool))
    return {c: dsa.concatenate(p, axis=0) if p else  # type: ignore[no-untyped-call]
            dsa.zeros((0, *sample, *grid), dtype=bool)
            for c, p in out.items()}


def open_latent(path: str | os.PathLike[str], *, allow_incomplete: bool = False) -> xr.Dataset:
    """Open a latent store as a lazy Dataset (dask-backed codes, one dask chunk per store chunk).

    The Dataset has the store's attribute ``era5latent`` (groups, channels, model, source
    layout, ...) and coordinates ``time`` (datetime64), the sample dims, ``latitude``/``longitude``
    (the source grid) and ``token_lat``/``token_lon`` (token patch centres). An unfinished store
    is refused unless ``allow_incomplete`` (its unwritten chunks read as zeros).
    """
    import dask.array as dsa

    p = os.fspath(path)
    store = open_latent_store(p)
    if not allow_incomplete:
        store.require_complete(", or pass allow_incomplete=True")
    codes: dict[str, Any] = {}
    attrs: dict[str, dict[str, Any]] = {}
    for g in store.groups:
        arr = store.codes(g)
        codes[g] = dsa.from_zarr(arr, chunks=arr.chunks)  # type: ignore[no-untyped-call]
        attrs[g] = dict(arr.attrs)
    ds = latent_dataset(codes, store.meta, store.times,
                         {d: store.coord(d) for d in store.sample_dims},
                         store.coord("latitude"), store.coord("longitude"), attrs, store,
                         _lazy_masks(store))
    ds.encoding["source"] = p if "://" in p else os.path.abspath(p)
    return ds


def _grid(latent: xr.Dataset, meta: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The source grid: the coordinates, or (when a selection such as ``latent[["codes_z"]]``
    dropped them) the regular grid the metadata describes."""
    if "latitude" in latent.coords and "longitude" in latent.coords:
        return np.asarray(latent["latitude"].values), np.asarray(latent["longitude"].values)
    grid = meta["source"]["grid"]
    n_lat, n_lon = grid["shape"]
    (lat0, lat1), (lon0, lon1) = grid["latitude"], grid["longitude"]
    return (np.linspace(float(lat0), float(lat1), int(n_lat)),
            np.linspace(float(lon0), float(lon1), int(n_lon)))


def _latent_meta(latent: xr.Dataset) -> dict[str, Any]:
    meta = latent.attrs.get(ATTR)
    if not isinstance(meta, dict) or "groups" not in meta or "model" not in meta:
        raise StoreError(f"this Dataset has no '{ATTR}' attribute with groups and model; expected a "
                         "latent Dataset from era5latent.encode or era5latent.open_latent")
    return meta


# -- encode --------------------------------------------------------------------------------------

def encode(data: DataLike, model: ModelLike, subset: Channels, *, batch_size: int = 8,
           device: str = "auto", precision: str = "auto", time_chunk: int | None = None,
           progress: Progress | None = None) -> xr.Dataset:
    """Encode ``subset`` of ERA5 ``data`` into a latent Dataset (codes in memory).

    ``data`` is an xarray Dataset in any layout ``era5latent encode`` reads (WB2, CDS, GRIB via
    cfgrib; in memory or dask-backed) or a path. It is read ``time_chunk`` steps at a time
    (default: what ``era5latent encode`` chooses, ``pipeline.auto_time_chunk``), so memory holds
    a few chunks of fields plus the codes (``code_bits / 8`` bytes per token). Select
    times first (``ds.sel(time=...)``). The codes equal, bit for bit, what ``era5latent encode``
    writes with the same ``--batch-size`` and ``--time-chunk``. Raises
    :class:`~era5latent.errors.Era5LatentError` subclasses for bad input, as the CLI does.
    """
    loaded = _model(model)
    channels = _channels(subset)
    source = _source(data)
    dev, prec, time_chunk = ready_to_encode(source, loaded, channels, batch_size=batch_size,
                                            time_chunk=time_chunk, device=device,
                                            precision=precision)
    n = len(source.times)
    static = first_step_masks(source, channels, 0, n)  # masked channels (missing values)
    spec = store_spec(source, loaded, channels, 0, n, time_chunk, static=static)
    if isinstance(data, xr.Dataset):  # no file behind it: keep the label, not a made-up path
        spec = dataclasses.replace(spec, source={**spec.source, "path": source.path})
    meta = jsonable(spec.attrs()) | {"complete": True}
    per_step = int(np.prod(source.sample_shape, dtype=np.int64))
    parts: dict[str, list[np.ndarray]] = {g.name: [] for g in spec.groups}
    mask_parts: dict[str, list[np.ndarray]] = {c: [] for c in static}
    if progress:
        progress(0, n * per_step)
    for a, b in _windows(n, time_chunk):
        x = read_fields(source, channels, a, b)
        for code, m in split_masked(x, channels, tuple(static), source.path,
                                    iso(source.times[0])).items():
            mask_parts[code].append(m)
        for g, c in encode_fields(loaded, channels, x, batch_size, dev, prec).items():
            parts[g].append(c)
        if progress:
            progress(b * per_step, n * per_step)
    codes = {g: np.concatenate(p, axis=0) for g, p in parts.items()}
    masks = {c: np.concatenate(p, axis=0) for c, p in mask_parts.items()}
    return latent_dataset(codes, meta, source.times, source.sample_coords(), source.latitude,
                           source.longitude, masks=masks)


# -- decode --------------------------------------------------------------------------------------

class _MemoryFields(FieldWriter):
    """``FieldWriter`` in its in-memory (NetCDF) mode, handing back a Dataset instead of a file."""

    def __init__(self, times: np.ndarray, sample_coords: dict[str, np.ndarray], lat: np.ndarray,
                 lon: np.ndarray, groups: dict[str, tuple[Channel, ...]], layout: SourceLayout,
                 attrs: dict[str, Any]) -> None:
        # a name that never exists: nothing is written (close() is never called)
        super().__init__("\0in-memory.nc", times, sample_coords, lat, lon, groups, layout, attrs)


def _residual_store(latent: xr.Dataset, residual: bool) -> LatentStore | None:
    """The store behind ``latent`` when it has a residual layer to apply, else None."""
    src = latent.encoding.get("source")
    if not residual or not src:
        return None
    store = open_latent_store(str(src))
    return store if store.has_residual else None


def _store_window(store: LatentStore, store_times: np.ndarray, times: np.ndarray
                  ) -> tuple[int, int]:
    """Store time indices ``[i0, i1)`` of the window ``times`` (which must be contiguous)."""
    idx = np.searchsorted(store_times, times)
    if len(idx) and (idx[-1] - idx[0] != len(idx) - 1 or idx[-1] >= len(store_times)
                     or not np.array_equal(store_times[idx], times)):
        raise OptionError(f"{store.path} has a residual layer, applied to contiguous time "
                          "ranges of the store only; select times with a slice (latent.sel("
                          "time=slice(a, b))), or pass residual=False for the WLA alone")
    return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, 0)


def _mask_vars(latent: xr.Dataset, meta: Mapping[str, Any],
               groups: Mapping[str, tuple[Channel, ...]], label: str) -> dict[str, Any]:
    """The masks (numpy or dask) of the masked channels being decoded; a masked channel whose
    ``mask_CH`` the Dataset lacks is refused (its NaN could not be put back)."""
    masked = set((meta.get("mask") or {}).get("channels", []))
    out: dict[str, Any] = {}
    for chs in groups.values():
        for c in chs:
            if c.code not in masked:
                continue
            if MASK_VAR + c.code not in latent.data_vars:
                raise StoreError(f"{label} masks {c.code} (missing values) but the Dataset holds "
                                 f"no {MASK_VAR + c.code}; keep it in the selection (decode puts "
                                 "NaN back from it), or leave the channel out with subset=")
            out[c.code] = latent[MASK_VAR + c.code].data
    return out


def decode(latent: xr.Dataset | str | os.PathLike[str], model: ModelLike, *,
           subset: Channels | None = None, batch_size: int = 8, device: str = "auto",
           precision: str = "auto", residual: bool = True) -> xr.Dataset:
    """Decode a latent Dataset (or store path) into ERA5 fields, as ``era5latent decode`` writes them.

    Returns WeatherBench 2 layout with the source's own variable names, units, latitude
    orientation and longitude convention; pressure variables share one ascending ``level`` axis
    (levels not decoded for a variable are NaN). When the codes are dask-backed (as from
    :func:`open_latent`) the result is lazy: one dask task per time chunk decodes every variable
    of that chunk; ``.load()`` it or write it with ``.to_zarr()``. Otherwise it is computed now.
    Select times with ``latent.sel(time=...)``; ``subset`` picks channels. Values equal, bit for
    bit, those ``era5latent decode`` writes with the same ``--batch-size``. A store's residual
    layer (``encode --max-error``) is applied when the Dataset came from :func:`open_latent`
    (its ``encoding["source"]``), unless ``residual=False``; it needs ``precision`` fp32 (or
    auto) and a contiguous time selection.
    """
    import dask.array as dsa
    from dask.delayed import delayed

    if batch_size < 1:
        raise OptionError(f"batch_size {batch_size}: expected a positive integer")
    if not isinstance(latent, xr.Dataset):
        latent = open_latent(latent)
    loaded = _model(model)
    meta = _latent_meta(latent)
    label = str(latent.encoding.get("source") or "the latent Dataset")
    check_same_model(loaded, meta["model"]["sha256"], label)
    from era5latent.pipeline.unseen import adopt_store_levels

    adopt_store_levels(meta, loaded)  # levels encoded with --allow-unseen-levels
    present = {g: d for g, d in meta["groups"].items() if codes_name(g) in latent.data_vars}
    if not present:
        raise StoreError(f"{label} holds no codes_<group> variable; expected one of "
                         f"{', '.join(codes_name(g) for g in meta['groups'])}")
    view = LatentStore(label, cast(Any, None), {**meta, "groups": present})
    groups = select_store_channels(view, _channels(subset) if subset is not None else None)
    specs = view.groups
    dev = resolve_device(device)
    rstore = _residual_store(latent, residual)
    prec = decode_precision(rstore.path, precision, dev, True) if rstore is not None else \
        resolve_precision(precision, dev)
    place_for_inference(loaded.model, dev)
    layout = SourceLayout.from_dict(meta["source"]["layout"])
    times = np.asarray(latent["time"].values).astype("datetime64[ns]")
    sample_coords = {d: np.asarray(latent[d].values) for d in meta.get("sample_dims", [])}
    lat, lon = _grid(latent, meta)
    attrs = {"decoded_from": label, "model_sha256": loaded.sha256,
             "residual_applied": rstore is not None}
    windows = _windows(len(times), int(meta.get("time_chunk", 8)))
    codes = {g: latent[codes_name(g)].data for g in groups}
    masks = _mask_vars(latent, meta, groups, label)
    store_times = rstore.times if rstore is not None else times
    spans = [_store_window(rstore, store_times, times[a:b]) if rstore is not None else (a, b)
             for a, b in windows]

    if not any(_is_dask(c) for c in codes.values()):
        writer = _MemoryFields(times, sample_coords, lat, lon, groups, layout, attrs)
        for (a, b), (i0, i1) in zip(windows, spans):
            packed = {g: np.asarray(c[a:b]) for g, c in codes.items()}
            res = read_residuals(rstore, groups, i0, i1)[0] if rstore is not None else None
            m = {c: np.asarray(v[a:b]) for c, v in masks.items()}
            writer.write(a, decode_fields(loaded, groups, specs, packed, batch_size, dev, prec,
                                          residuals=res, masks=m))
        return writer.dataset()

    # lazy: one task per time chunk, each filling a FieldWriter of its own
    template = _MemoryFields(times[:0], sample_coords, lat, lon, groups, layout, attrs)
    pieces: dict[str, list[Any]] = {template.out_name(v): [] for v in template.vars}
    for (a, b), span in zip(windows, spans):
        task = delayed(_lazy_window, pure=False)(
            times[a:b], sample_coords, lat, lon, groups, layout, attrs,
            {g: c[a:b] for g, c in codes.items()}, loaded, specs, batch_size, dev, prec,
            (rstore.path, span) if rstore is not None else None,
            {c: v[a:b] for c, v in masks.items()})
        for v in template.vars:
            name = template.out_name(v)
            shape = (b - a, *template._shape(v)[1:])
            pieces[name].append(dsa.from_delayed(  # type: ignore[no-untyped-call]
                task[name], shape=shape, dtype=np.float32))
    data = {name: dsa.concatenate(p, axis=0)  # type: ignore[no-untyped-call]
            for name, p in pieces.items()}
    return template.dataset(data, times)


def _lazy_window(times: np.ndarray, sample_coords: dict[str, np.ndarray], lat: np.ndarray,
                 lon: np.ndarray, groups: dict[str, tuple[Channel, ...]], layout: SourceLayout,
                 attrs: dict[str, Any], packed: Mapping[str, np.ndarray], loaded: LoadedModel,
                 specs: Mapping[str, GroupSpec], batch_size: int, device: Any,
                 precision: str, residual: tuple[str, tuple[int, int]] | None = None,
                 masks: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    res = None
    if residual is not None:  # (store path, store time span): this window's residuals
        res = read_residuals(open_latent_store(residual[0]), groups, *residual[1])[0]
    writer = _MemoryFields(times, sample_coords, lat, lon, groups, layout, attrs)
    m = {c: np.asarray(v) for c, v in (masks or {}).items()}
    writer.write(0, decode_fields(loaded, groups, specs, packed, batch_size, device, precision,
                                  residuals=res, masks=m))
    return {writer.out_name(v): writer._mem[v] for v in writer.vars}


# -- the CLI's other commands ----------------------------------------------------------------------

def encode_to_store(data: DataLike, model: ModelLike, subset: Channels,
                    out: str | os.PathLike[str], *, time_range: str | None = None,
                    batch_size: int = 8, device: str = "auto", overwrite: bool = False,
                    time_chunk: int | None = None, precision: str = "auto",
                    break_lock: bool = False,
                    progress: Progress | None = None, max_error: str | None = None,
                    residual_codec: str = "sz3") -> EncodeResult:
    """``era5latent encode``: write a latent store at ``out`` (resumable; see docs/cli.md).

    ``max_error`` (``encode --max-error``, e.g. ``"*=1%"``) adds the error-bounded residual
    layer, compressed with ``residual_codec`` (``sz3`` or ``zfp``): docs/residuals.md."""
    from era5latent.pipeline import encode as pipeline_encode

    return pipeline_encode(_source(data), _model(model), _channels(subset), os.fspath(out),
                           time_range=time_range, batch_size=batch_size, device=device,
                           overwrite=overwrite, time_chunk=time_chunk, precision=precision,
                           break_lock=break_lock, progress=progress, max_error=max_error,
                           residual_codec=residual_codec)


def decode_to_file(latent: str | os.PathLike[str], model: ModelLike, out: str | os.PathLike[str],
                   *, subset: Channels | None = None, time_range: str | None = None,
                   batch_size: int = 8, device: str = "auto", overwrite: bool = False,
                   precision: str = "auto", progress: Progress | None = None,
                   residual: bool = True) -> DecodeResult:
    """``era5latent decode``: write decoded fields to ``out`` (Zarr, or NetCDF for ``.nc``);
    ``residual=False`` is ``--no-residual``."""
    from era5latent.pipeline import decode as pipeline_decode

    return pipeline_decode(os.fspath(latent), _model(model), os.fspath(out),
                           subset=_channels(subset) if subset is not None else None,
                           time_range=time_range, batch_size=batch_size, device=device,
                           overwrite=overwrite, precision=precision, progress=progress,
                           residual=residual)


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``era5latent info --json``: groups, channels, times, bytes, ratios, the codes' use of
    their bits (entropy per stored bit) and build progress."""
    from era5latent.evaluation.bitusage import with_usage
    from era5latent.store.info import summary

    return with_usage(summary(os.fspath(path)), os.fspath(path))


def verify(path: str | os.PathLike[str], model: ModelLike | None = None) -> list[Check]:
    """``era5latent verify``: every integrity check, in order (``ok`` False where one fails).

    Format, layout, build state, each chunk's sha256, and, with ``model`` (a checkpoint path or a
    loaded model), that the store was made with that model. Damage is reported, never raised.
    """
    from era5latent.model.checkpoint import file_sha256
    from era5latent.store.verify import verify as verify_store

    sha = None
    if isinstance(model, LoadedModel):
        sha = model.sha256
    elif model is not None:
        p = os.fspath(model)
        if not os.path.isfile(p):
            raise CheckpointError(f"no such checkpoint: {p}; pass the .safetensors file the "
                                  "store was encoded with")
        sha = file_sha256(p)
    return verify_store(os.fspath(path), sha)


def finalize(path: str | os.PathLike[str], *, parts: int | None = None,
             break_lock: bool = False) -> FinalizeResult:
    """``era5latent finalize``: mark a store written by ``encode --parts`` runs complete."""
    from era5latent.pipeline.distributed import finalize as finalize_store

    return finalize_store(os.fspath(path), parts, break_lock)


def train_model(data: DataLike, subset: Channels, out: str | os.PathLike[str], *, preset: str = "tiny",
          steps: int | None = None, batch_size: int = 8, lr: float | None = None, device: str = "auto",
          time_range: str | None = None, val_fraction: float = 0.1, checkpoint_every: int = 100,
          patch_stride: int | None = None, seed: int = 0, resume: bool = False,
          progress: Callable[[int, int, float], None] | None = None,
          **options: Any) -> TrainResult:
    """``era5latent train``: train a WLA on ``subset`` of ``data`` and write it to ``out``.

    ``options`` are the other :class:`era5latent.training.TrainOptions` fields, named as the
    CLI's options are (``workers``, ``group``, ``level_weights``, ``adversarial_weight``,
    ``disc_start``, ``ema``, ``quantizer``, ``precision``, ``checkpoint_activations``,
    ``grad_accum``, ``log_dir``, ...). Run inside ``torchrun`` it trains data-parallel.
    (Not named ``train``: that would shadow the ``era5latent.training`` verb's name.)
    """
    import dataclasses

    from era5latent.training import train as run_train

    known = {f.name for f in dataclasses.fields(TrainOptions)} - {"overrides"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptionError(f"train_model got unknown options {unknown}; expected some of "
                          f"{sorted(known)}")
    opts = TrainOptions(preset=preset, steps=steps, batch_size=batch_size, lr=lr, device=device,
                        time_range=time_range, val_fraction=val_fraction, resume=resume,
                        seed=seed, checkpoint_every=checkpoint_every,
                        overrides={"patch_stride": patch_stride} if patch_stride else {},
                        **options)
    return run_train(_source(data), _channels(subset), os.fspath(out), opts, progress=progress)


def evaluate_reconstruction(truth: DataLike, recon: DataLike, *, latent: str | os.PathLike[str] | None = None,
             subset: Channels | None = None, time_range: str | None = None,
             baselines: Sequence[str] = ("bitround", "zfp"), sweep: Sequence[float] | None = None,
             climatology: DataLike | None = None, plot_dir: str | os.PathLike[str] | None = None,
             region: str = "global", time_chunk: int | None = None) -> EvalReport:
    """``era5latent evaluate``: score ``recon`` against ``truth`` beside classical codecs.

    ``recon`` may be the Dataset :func:`decode` returns. The baselines are sized to the WLA's
    bytes per value, which needs the latent store (``latent``); without it only the
    reconstruction is scored. ``climatology`` may be a WeatherBench 2 climatology (a path, or a
    Dataset with a ``dayofyear`` dim). (Not named ``evaluate``: that is the
    ``era5latent.evaluation`` package.)
    """
    from era5latent.evaluation.score import evaluate as run_evaluate

    return run_evaluate(
        _source(truth), _source(recon), subset=_channels(subset) if subset is not None else None,
        time_range=time_range, latent=open_latent_store(os.fspath(latent)) if latent else None,
        climatology=_climatology(climatology),
        baselines=list(baselines), sweep=list(sweep) if sweep is not None else None,
        plot_dir=os.fspath(plot_dir) if plot_dir is not None else None, region=region,
        time_chunk=time_chunk)


def _climatology(data: DataLike | None) -> Any:
    """A WB2 climatology (path or Dataset with ``dayofyear``) as it is; anything else as a source."""
    if data is None:
        return None
    if isinstance(data, xr.Dataset):
        return data if "dayofyear" in data.dims else _source(data)
    return os.fspath(data)
