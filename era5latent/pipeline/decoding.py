"""Streaming decode: a latent store's time chunks through the WLA into ERA5 fields."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from era5latent import faults
from era5latent.errors import OptionError, StoreError, SubsetError
from era5latent.fsutil import check_output_name, full_path
from era5latent.store.masks import read_mask_range
from era5latent.model.checkpoint import LoadedModel, check_same_model
from era5latent.model.devices import (place_for_inference, resolve_device, resolve_precision,
                                      strict_fp32)
from era5latent.pipeline.common import Background, Progress, decode_fields, one_io_thread
from era5latent.io.sources import SourceLayout, iso, time_index_range
from era5latent.store.residual import residual_name
from era5latent.store.arrays import CorruptArrayError, CorruptChunkError
from era5latent.store.core import LatentStore, open_latent_store
from era5latent.pipeline.unseen import adopt_store_levels
from era5latent.io.variables import Channel, parse_channel


def read_codes(store: LatentStore, groups: Iterable[str], a: int, b: int, *,
               allow_corrupt: bool = False) -> tuple[dict[str, np.ndarray | None], list[str]]:
    """Packed codes of store times ``[a, b)`` per group, checksum-verified, and the damaged chunks.

    A damaged chunk raises :class:`CorruptChunkError`; with ``allow_corrupt`` its group's codes
    are None instead and the second value says which group and times were lost.
    """
    step, times = store.time_chunk, None
    out: dict[str, np.ndarray | None] = {}
    corrupt: list[str] = []
    flags: dict[int, str | None] = {}  # chunk -> why its done flag is unusable (None: it is set)

    def flag(c: int) -> str | None:
        if c not in flags:
            try:
                flags[c] = None if store.done(c, c + 1).all() else "its done flag is not set"
            except CorruptArrayError as err:
                flags[c] = f"its done flag is corrupt: {err.why}"
        return flags[c]

    for g in groups:
        parts: list[np.ndarray] = []
        for c in range(a // step, (b - 1) // step + 1):
            c0, c1 = store.chunk_bounds(c)
            try:
                if (why := flag(c)) is not None:
                    raise CorruptChunkError(store.path, g, c, why)
                chunk = store.read_chunk(g, c)
            except CorruptChunkError:
                store.check_not_replaced()  # not damage: another process replaced the store
                if not allow_corrupt:
                    raise
                times = store.times if times is None else times
                corrupt.append(f"group {g} times {iso(times[c0])}..{iso(times[c1 - 1])}")
                out[g] = None
                break
            parts.append(chunk[max(a, c0) - c0:min(b, c1) - c0])
        else:
            out[g] = np.concatenate(parts)
    return out, corrupt


# -- decode ------------------------------------------------------------------------------------

def read_residuals(store: LatentStore, groups: Mapping[str, tuple[Channel, ...]], a: int,
                   b: int, *, allow_corrupt: bool = False
                   ) -> tuple[dict[str, dict[str, np.ndarray] | None], list[str]]:
    """The residual layer of store times ``[a, b)``: per group, each bounded channel's residual
    ``(b - a, *sample, H, W)``, checksum-verified (empty for a store without residuals).

    A damaged chunk raises :class:`CorruptChunkError` naming the residual array; with
    ``allow_corrupt`` its group is None instead (decode fills it with NaN) and the second value
    says which group and times were lost.
    """
    from era5latent.pipeline.residual.core import decode_residual

    out: dict[str, dict[str, np.ndarray] | None] = {}
    corrupt: list[str] = []
    r = store.residual
    if r is None:
        return out, corrupt
    codec, bounded = r["codec"], set(r["channels"])
    step = store.time_chunk
    grid = (*(store.coord(d).size for d in store.sample_dims), store.coord("latitude").size,
            store.coord("longitude").size)
    for g, chs in groups.items():
        wanted = [c.code for c in chs if c.code in bounded]
        if not wanted:
            continue
        parts: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
        for c in range(a // step, (b - 1) // step + 1):
            c0, c1 = store.chunk_bounds(c)
            try:
                streams = store.read_residual(g, c)
                missing = [ch for ch in wanted if ch not in streams]
                if missing:
                    raise CorruptChunkError(store.path, g, c, f"no residual stream for "
                                            f"{', '.join(missing)}", residual_name(g))
            except CorruptChunkError as err:
                store.check_not_replaced()
                if not allow_corrupt:
                    raise
                times = store.times
                corrupt.append(f"group {g} residuals ({err.array}) times "
                               f"{iso(times[c0])}..{iso(times[c1 - 1])}")
                out[g] = None
                break
            for ch in wanted:
                full = decode_residual(codec, streams[ch], (c1 - c0, *grid))
                parts[ch].append(full[max(a, c0) - c0:min(b, c1) - c0])
        else:
            out[g] = {ch: np.concatenate(p) for ch, p in parts.items()}
    return out, corrupt


def read_group_masks(store: LatentStore, groups: Mapping[str, tuple[Channel, ...]], a: int,
                     b: int, *, allow_corrupt: bool = False
                     ) -> tuple[dict[str, np.ndarray | None], list[str]]:
    """The mask layer of store times ``[a, b)`` for the masked channels among ``groups``
    (:func:`era5latent.store.masks.read_mask_range`); empty for a store without one."""
    if not store.has_mask:
        return {}, []
    return read_mask_range(store, [c.code for chs in groups.values() for c in chs], a, b,
                           allow_corrupt=allow_corrupt)


def decode_precision(store: str | LatentStore, precision: str, device: Any, residual: bool
                     ) -> str:
    """The precision a decode of ``store`` (a path, or the store opened) runs at. A store with
    a residual layer decodes in fp32 (``auto`` means fp32 there): its bound holds for
    reconstructions within the drift margin of the encoder's fp32 one, and bf16 drifts far more
    (docs/residuals.md); other precisions are refused unless ``residual`` is False
    (``--no-residual``)."""
    if not residual:
        return resolve_precision(precision, device)
    store_path = store if isinstance(store, str) else store.path
    try:
        has = (open_latent_store(store) if isinstance(store, str) else store).has_residual
    except StoreError:  # said better by plan_decode
        has = False
    if not has:
        return resolve_precision(precision, device)
    strict_fp32(device)  # GPU drift is unmeasured (docs/residuals.md)
    if precision.strip().lower() == "auto":
        return "fp32"
    p = resolve_precision(precision, device)
    if p != "fp32":
        raise OptionError(f"--precision {precision}: {store_path} has a residual layer, whose "
                          "error bound holds for fp32 decodes only (bf16 drifts past the margin "
                          "it keeps); use --precision fp32, or --no-residual for the WLA's "
                          "reconstruction alone")
    return p


@dataclass
class DecodeResult:
    path: str
    variables: list[str]
    times: int
    samples: int
    seconds: float
    channels: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # filled with NaN under allow_corrupt


def select_store_channels(store: LatentStore, subset: tuple[Channel, ...] | None
                          ) -> dict[str, tuple[Channel, ...]]:
    have = {g: tuple(parse_channel(c) for c in spec.channels) for g, spec in store.groups.items()}
    if subset is None:
        return have
    all_have = {c for chs in have.values() for c in chs}
    missing = [c.code for c in subset if c not in all_have]
    if missing:
        raise SubsetError(f"{store.path} holds no {', '.join(missing)}; it holds "
                          f"{','.join(c.code for chs in have.values() for c in chs)}")
    return {g: tuple(c for c in chs if c in subset) for g, chs in have.items()
            if any(c in subset for c in chs)}


@dataclass
class DecodePlan:
    """Everything both decoders (here and on a cluster) settle before decoding a single block."""

    store: LatentStore
    groups: dict[str, tuple[Channel, ...]]
    times: np.ndarray
    lo: int
    hi: int
    sample_coords: dict[str, np.ndarray]
    lat: np.ndarray
    lon: np.ndarray
    writer: Any  # fields.FieldWriter, laid out at its temporary path
    damaged: list[str] = field(default_factory=list)  # metadata damage let through (allowed)


def check_store_metadata(store: LatentStore, allow_corrupt: bool) -> list[str]:
    """The store's metadata against the digests recorded at finalize: damage is a
    :class:`StoreError` naming the document, or with ``allow_corrupt`` a list of warnings."""
    problems = store.metadata_problems()
    if problems and not allow_corrupt:
        raise StoreError(f"{store.path}: metadata damaged: {'; '.join(problems)}; re-encode the "
                         "store, or decode with --allow-corrupt to use it as it is")
    return [f"metadata {p}" for p in problems]


def check_store_model(store: LatentStore, loaded: LoadedModel) -> None:
    """The store's code geometry is the model's (what bounds the memory decode asks for)."""
    cfg = loaded.meta.config
    for g, spec in store.groups.items():
        if spec.code_bits != cfg.code_bits or tuple(spec.token_grid) != tuple(cfg.token_grid):
            raise StoreError(
                f"{store.path}: group {g} holds {spec.code_bits}-bit codes on a "
                f"{spec.token_grid[0]}x{spec.token_grid[1]} token grid, but {loaded.path} makes "
                f"{cfg.code_bits}-bit codes on {cfg.token_grid[0]}x{cfg.token_grid[1]}; the "
                "store's attributes are damaged: re-encode it")


def plan_decode(store_path: str, loaded: LoadedModel, out: str, *,
                subset: tuple[Channel, ...] | None = None, time_range: str | None = None,
                overwrite: bool = False, allow_corrupt: bool = False,
                zarr_format: int = 3, residual: bool = True,
                opened: LatentStore | None = None) -> DecodePlan:
    """Check the store (``opened``: already opened from ``store_path``) and the model, select
    channels and times, lay out the output."""
    from era5latent.io import fields  # the ERA5-layout output writer

    check_output_name(out, "decoded fields", "Zarr (.zarr, or no extension) or NetCDF (.nc)")
    store = opened or open_latent_store(store_path)
    store.require_complete()
    damaged = check_store_metadata(store, allow_corrupt)
    check_same_model(loaded, store.meta["model"]["sha256"], store_path)
    check_store_model(store, loaded)
    adopt_store_levels(store.meta, loaded)  # levels encoded with --allow-unseen-levels
    groups = select_store_channels(store, subset)
    times = store.times
    lo, hi = time_index_range(times, time_range, store_path)
    layout = SourceLayout.from_dict(store.meta["source"]["layout"])
    sample_coords = {d: store.coord(d) for d in store.sample_dims}
    lat = store.coord("latitude")
    lon = store.coord("longitude")
    writer = fields.FieldWriter(out, times[lo:hi], sample_coords, lat, lon, groups, layout,
                                attrs={"decoded_from": full_path(store_path),
                                       "model_sha256": loaded.sha256,
                                       # evaluate sizes its baselines by the layers used
                                       "residual_applied": bool(residual and store.has_residual)},
                                overwrite=overwrite, zarr_format=zarr_format)
    return DecodePlan(store, groups, times, lo, hi, sample_coords, lat, lon, writer, damaged)


def decode(store_path: str, loaded: LoadedModel, out: str, *, subset: tuple[Channel, ...] | None = None,
           time_range: str | None = None, batch_size: int = 8, device: str = "auto",
           overwrite: bool = False, precision: str = "auto", allow_corrupt: bool = False,
           progress: Progress | None = None, residual: bool = True,
           zarr_format: int = 3) -> DecodeResult:
    """Decode a latent store into ERA5 fields at ``out`` (Zarr v3 or, with ``zarr_format=2``,
    v2; or NetCDF by extension).

    A store's residual layer is applied unless ``residual`` is False (``--no-residual``)."""
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: expected a positive integer")
    dev = resolve_device(device)  # every option checked before the output is laid out
    try:  # opened once for both steps below
        opened: LatentStore | None = open_latent_store(store_path)
    except StoreError:  # said by plan_decode, after the options
        opened = None
    prec = decode_precision(opened or store_path, precision, dev, residual)
    plan = plan_decode(store_path, loaded, out, subset=subset, time_range=time_range,
                       overwrite=overwrite, allow_corrupt=allow_corrupt, zarr_format=zarr_format,
                       residual=residual, opened=opened)
    place_for_inference(loaded.model, dev)
    store, groups, lo, hi, writer = plan.store, plan.groups, plan.lo, plan.hi, plan.writer
    sample_coords, lat, lon = plan.sample_coords, plan.lat, plan.lon
    specs = store.groups
    step = store.time_chunk
    per_step = int(np.prod([len(v) for v in sample_coords.values()], dtype=np.int64))
    total = (hi - lo) * per_step
    if progress:
        progress(0, total)
    start_t = time.perf_counter()

    corrupt: list[str] = list(plan.damaged)
    sample_shape = tuple(len(v) for v in sample_coords.values())

    def read(a: int) -> tuple[dict[str, np.ndarray | None],
                              dict[str, dict[str, np.ndarray] | None] | None,
                              dict[str, np.ndarray | None]]:
        codes, lost = read_codes(store, groups, a, min(a + step, hi), allow_corrupt=allow_corrupt)
        corrupt.extend(lost)
        res = None
        if residual and store.has_residual:
            res, lost = read_residuals(store, groups, a, min(a + step, hi),
                                       allow_corrupt=allow_corrupt)
            corrupt.extend(lost)
        masks, lost = read_group_masks(store, groups, a, min(a + step, hi),
                                       allow_corrupt=allow_corrupt)
        corrupt.extend(lost)
        return codes, res, masks

    def fill(a: int) -> tuple[int, ...]:
        return (min(a + step, hi) - a, *sample_shape, len(lat), len(lon))

    def write(offset: int, block: dict[Channel, np.ndarray]) -> None:
        writer.write(offset, block)
        faults.point("decode.block-written")

    done_samples = 0
    try:  # reading, computing and writing overlap; beside a CPU model on one background thread
        with Background(shared=one_io_thread(dev, store_path, out)) as io:
            for a, (packed, res, masks) in io.read_ahead(read, range(lo, hi, step)):
                block = decode_fields(loaded, groups, specs, packed, batch_size, dev, prec,
                                      fill(a), res, masks)
                io.submit(write, a - lo, block)
                done_samples += (min(a + step, hi) - a) * per_step
                if progress:
                    progress(done_samples, total)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return DecodeResult(out, writer.variables, hi - lo, total, time.perf_counter() - start_t,
                        [c.code for chs in groups.values() for c in chs], corrupt)
