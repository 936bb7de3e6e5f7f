"""Streaming encode: a source's time chunks through the WLA into a latent store.

Work is cut into time chunks of the store (``time_chunk`` steps). Each chunk is read, checked,
normalised, pushed through the model in batches of ``batch_size`` samples counted from the chunk's
own start, packed, written as one chunk-aligned region and marked done. Because batches are a
function of the chunk alone, a resumed run computes exactly the bytes an uninterrupted run would.
The next chunks are read, and the last written, in the background while the model works on the
current one (:class:`~era5latent.pipeline.common.Background`). With a
residual layer (``--max-error``), each chunk's codes are decoded in fp32 and the residual written
with them, before the done flag (:mod:`era5latent.pipeline.residual`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from era5latent import faults
from era5latent.errors import Era5LatentError, OptionError, StoreError, StoreExistsError
from era5latent.fsutil import (LATENT, check_output_name, check_replaceable, exists, is_url,
                               parent_dir, remove_partial_writes)
from era5latent.model.checkpoint import LoadedModel
from era5latent.model.devices import (place_for_inference, resolve_device, resolve_precision,
                                      strict_fp32)
from era5latent.pipeline.common import (Background, Progress, check_grid,
                                        check_model_channels, decode_fields, encode_fields,
                                        fields_where, one_io_thread, read_fields)
from era5latent.store.masks import FILL, mask_sha, split_masked, static_masks
from era5latent.pipeline.residual import ResidualSpec, make_residuals, parse_max_error
from era5latent.io.sources import Source, grid_info, iso
from era5latent.io.zarrio import is_store
from era5latent.store.core import (check_unlocked, create_latent_store, LatentStore,
                                   open_latent_store, StoreLockedError, writer_lock)
from era5latent.store.spec import GroupSpec, jsonable, part_range, StoreSpec
from era5latent.io.variables import Channel, group_channels, variable_by_name


# -- encode ------------------------------------------------------------------------------------

@dataclass
class EncodeResult:
    path: str
    groups: dict[str, list[str]]
    times: int
    samples: int
    chunks_total: int
    chunks_written: int
    chunks_skipped: int
    seconds: float
    resumed: bool = False

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def residual_spec(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...],
                  max_error: str | None, codec: str = "sz3") -> ResidualSpec | None:
    """``--max-error`` (and ``--residual-codec``) against the channels' units and the model's
    training std; None without ``max_error``. Checked before any store is created."""
    if max_error is None:
        if codec != "sz3":
            raise OptionError(f"--residual-codec {codec} without --max-error: the codec is for "
                              "the residual layer; give --max-error too, or leave the codec out")
        return None
    return parse_max_error(max_error, tuple(c.code for c in channels),
                           {c.code: source.units_of(c) for c in channels},
                           {c.code: float(loaded.meta.normalisation[c.code]["std"])
                            for c in channels}, codec)


def mask_spec(static: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """The root attribute ``mask`` for the static masks of a store's masked channels (None
    without any: no mask layer, format version 3)."""
    if not static:
        return None
    return {"channels": list(static), "fill": FILL,
            "static_sha256": {c: mask_sha(m) for c, m in static.items()}}


def first_step_masks(source: Source, channels: tuple[Channel, ...], t0: int, t1: int
                     ) -> dict[str, np.ndarray]:
    """The static masks of a store of source times ``[t0, t1)``: its first time step's."""
    if t1 <= t0:
        return {}
    return static_masks(read_fields(source, channels, t0, t0 + 1), channels)


def store_spec(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...],
                t0: int, t1: int, time_chunk: int,
                residual: ResidualSpec | None = None,
                static: Mapping[str, np.ndarray] | None = None) -> StoreSpec:
    cfg = loaded.meta.config
    groups = tuple(
        GroupSpec(g, tuple(c.code for c in chs), tuple(c.meta for c in chs),
                  tuple(source.units_of(c) for c in chs), cfg.code_bits, cfg.token_grid)
        for g, chs in group_channels(channels).items())
    return StoreSpec(
        groups=groups,
        times=source.times[t0:t1],
        sample_coords=source.sample_coords(),
        latitude=source.latitude,
        longitude=source.longitude,
        time_chunk=time_chunk,
        model=loaded.provenance(),
        normalisation={c.code: loaded.meta.normalisation[c.code] for c in channels},
        source={"path": os.path.abspath(source.path) if "://" not in source.path else source.path,
                "layout": source.layout.to_dict(),
                "grid": grid_info(source.latitude, source.longitude)},
        residual=jsonable(residual.to_dict()) if residual else None,
        mask=mask_spec(static or {}),
        static_masks=dict(static or {}),
    )


def _open_for_resume(out: str, spec: StoreSpec) -> LatentStore:
    # on object storage another process may still be laying the store out in place (not atomic)
    deadline = time.monotonic() + (60.0 if is_url(out) else 0.0)
    while True:
        try:
            store = open_latent_store(out, mode="r+")
            break
        except StoreError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    have = {k: store.meta.get(k) for k in spec.identity() if k != "model_sha256"}
    have["model_sha256"] = store.meta.get("model", {}).get("sha256")
    # a store of an older format version this package reads is finished in its own format
    want = spec.identity() | {"format_version": store.version}
    diff = [k for k in want if jsonable(want[k]) != jsonable(have.get(k))]
    if diff:
        try:  # only to say whether it is being written: never breaks a lock here
            check_unlocked(out, False)
            busy = ""
        except StoreLockedError as err:
            busy = f"; it is being written now ({err.holder}) with those settings"
        raise StoreError(
            f"{out} exists but was made differently ({', '.join(diff)} differ: another model, "
            f"subset, time range, source, --max-error or missing values){busy}; choose another --out, or pass --overwrite "
            "to replace it" + (" once that writer has finished" if busy else ""))
    return store



@dataclass
class EncodedChunk:
    """One time chunk's output: packed codes per group, residual streams per group and
    channel code (empty without a residual layer), and the masks of the masked channels by
    channel code (empty without a mask layer)."""

    codes: dict[str, np.ndarray]
    residuals: dict[str, dict[str, bytes]] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)


def residual_streams(loaded: LoadedModel, channels: tuple[Channel, ...], spec: StoreSpec,
                     residual: ResidualSpec, x: np.ndarray, codes: dict[str, np.ndarray],
                     batch_size: int, device: torch.device, where: str = "",
                     masks: Mapping[str, np.ndarray] | None = None
                     ) -> dict[str, dict[str, bytes]]:
    """The residual streams of one chunk: its codes decoded in fp32 (as decode does, clip
    included), ``x - recon`` per bounded channel compressed and checked (``residual.core``).
    Masked points (``masks``) are out of the bound: their residual is 0 (decode puts NaN
    there)."""
    groups = group_channels(channels)
    specs = {g.name: g for g in spec.groups}
    strict_fp32(device)  # the reference reconstruction is true fp32, on CUDA too
    recon = decode_fields(loaded, groups, specs, codes, batch_size, device, "fp32")
    truth: dict[str, np.ndarray] = {}
    for k, c in enumerate(channels):
        m = (masks or {}).get(c.code)
        truth[c.code] = x[..., k, :, :] if m is None or not m.any() else \
            np.where(m, recon[c], x[..., k, :, :])
    nonneg = {c.code: variable_by_name(c.name).nonnegative for c in channels}
    streams = make_residuals(truth, {c.code: v for c, v in recon.items()}, residual, nonneg,
                             where)
    return {g: {c.code: streams[c.code] for c in chs if c.code in streams}
            for g, chs in groups.items()}


@dataclass
class EncodeJob:
    """One encode, cut into time chunks that can run anywhere, in any order, any number of times.

    ``run_chunk(i)`` reads, checks, encodes and writes time chunk ``i`` and sets its done flag; its
    result depends on nothing but ``i``, which is what makes resumed, parallel and distributed
    runs bitwise identical to a sequential one.
    """

    source: Source
    loaded: LoadedModel
    channels: tuple[Channel, ...]
    spec: StoreSpec
    #: None until :meth:`lay_out` creates it: ``encode`` lays a new local store out in the
    #: background while the model encodes the first time chunk
    store: LatentStore | None
    t0: int
    batch_size: int
    device: torch.device
    precision: str = "fp32"
    resumed: bool = False
    part: tuple[int, int] | None = None  # (I, N): only the I-th of N shares; never completes
    #: a chunk already read (to check the source before creating the store), used once
    first: tuple[int, np.ndarray] | None = field(default=None, repr=False, compare=False)
    residual: ResidualSpec | None = None  # the residual layer, None: codes only
    #: extra root attributes (e.g. the build recipe) written just before the store is sealed,
    #: so that its metadata digest covers them
    root_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_step(self) -> int:
        return int(np.prod(self.source.sample_shape, dtype=np.int64))

    def chunk_range(self) -> range:
        """The time chunks this job owns: all of them, or its part's contiguous share."""
        return part_range(self.spec.n_chunks, self.part)

    def total_samples(self) -> int:
        return sum(self.chunk_samples(i) for i in self.chunk_range())

    @property
    def mask_channels(self) -> tuple[str, ...]:
        """The masked channels: the store's, or before it is laid out the spec's."""
        if self.store is not None:
            return self.store.mask_channels
        return tuple(self.spec.mask["channels"]) if self.spec.mask else ()

    @property
    def laid_out(self) -> LatentStore:
        """The store, once :meth:`lay_out` has run (asking before is a bug, not bad input)."""
        if self.store is None:
            raise RuntimeError("the latent store is not laid out yet")
        return self.store

    def todo(self) -> list[int]:
        if self.store is None:  # not laid out yet: nothing is done
            return list(self.chunk_range())
        done = self.store.done()
        return [i for i in self.chunk_range() if not done[i]]

    def lay_out(self, out: str, overwrite: bool) -> None:
        """Create the planned store at ``out`` and open it. When another process (a concurrent
        part) created it first, open that one to resume; its time chunking wins."""
        try:
            create_latent_store(out, dataclasses.replace(self.spec, parts=self.part and self.part[1]),
                                overwrite=overwrite)
            self.store = open_latent_store(out, mode="r+")
        except StoreExistsError:
            self.store, self.resumed = _open_for_resume(out, self.spec), True
            if self.store.time_chunk != self.spec.time_chunk:
                self.spec = dataclasses.replace(self.spec, time_chunk=self.store.time_chunk)
                self.first = None  # read in our chunking, not the store's

    def chunk_samples(self, i: int) -> int:
        a, b = self.spec.chunk_bounds(i)
        return (b - a) * self.samples_per_step

    def read_chunk(self, i: int) -> np.ndarray:
        """Raw fields of chunk ``i``: ``(nt, *sample, C, H, W)``, checked for infinities (NaN
        is checked against the store's masked channels by :meth:`encode_chunk`)."""
        if self.first is not None and self.first[0] == i:
            x, self.first = self.first[1], None
            return x
        a, b = self.spec.chunk_bounds(i)
        x = read_fields(self.source, self.channels, self.t0 + a, self.t0 + b)
        # a NaN outside the masked channels is said here, where the times are known
        split_masked(x, self.channels, self.mask_channels,
                     fields_where(self.source, self.t0 + a, self.t0 + b),
                     iso(self.source.times[self.t0]))
        return x

    def encode_chunk(self, x: np.ndarray) -> EncodedChunk:
        masks = split_masked(x, self.channels, self.mask_channels, self.source.path,
                             iso(self.source.times[self.t0]))
        codes = encode_fields(self.loaded, self.channels, x, self.batch_size, self.device,
                              self.precision)
        if self.residual is None:
            return EncodedChunk(codes, masks=masks)
        return EncodedChunk(codes, residual_streams(self.loaded, self.channels, self.spec,
                                                    self.residual, x, codes, self.batch_size,
                                                    self.device, self.source.path, masks),
                            masks)

    def write_chunk(self, i: int, chunk: EncodedChunk) -> None:
        self.laid_out.write_chunk(i, chunk.codes, chunk.residuals, chunk.masks)

    def run_chunk(self, i: int) -> int:
        """Encode and write chunk ``i``; returns the number of samples it held."""
        x = self.read_chunk(i)
        faults.point("encode.chunk-read")
        self.write_chunk(i, self.encode_chunk(x))
        return self.chunk_samples(i)

    def finish(self) -> None:
        """Mark the store complete (whole-store jobs; a part leaves that to ``finalize``)."""
        store = self.laid_out
        if self.part is None and not store.finished:
            # root_attrs are sealed with the rest; also repairs a store left complete but not
            # consolidated
            store.mark_complete(self.root_attrs)


#: with ``--time-chunk`` left to choose: at most this many steps per store chunk ...
AUTO_TIME_CHUNK = 32
#: ... and at most this many bytes of source fields per chunk (encode holds a few chunks)
AUTO_CHUNK_FIELD_BYTES = 512 << 20


def auto_time_chunk(source: Source, channels: tuple[Channel, ...]) -> int:
    """The default time chunk: ``AUTO_TIME_CHUNK`` steps, halved until one chunk of the source's
    fields fits in ``AUTO_CHUNK_FIELD_BYTES`` (e.g. 16 steps for five channels at 721 x 1440).

    Not 8: each chunk writes two small objects per group and a done flag, and on the tiny preset
    that per-chunk work cost as much CPU as its compute (docs/benchmarks.md).
    """
    per_step = 4 * len(channels) * int(np.prod(source.sample_shape, dtype=np.int64)) * \
        source.grid[0] * source.grid[1]
    tc = AUTO_TIME_CHUNK
    while tc > 1 and tc * per_step > AUTO_CHUNK_FIELD_BYTES:
        tc //= 2
    return tc


def ready_to_encode(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...], *,
                    batch_size: int, time_chunk: int | None, device: str, precision: str
                    ) -> tuple[torch.device, str, int]:
    """Every check before encoding (options, channels, grid); the model placed on its device.

    Returns the device, the precision and the time chunk (``None``: :func:`auto_time_chunk`).
    """
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: expected a positive integer")
    if time_chunk is not None and time_chunk < 1:
        raise OptionError(f"--time-chunk {time_chunk}: expected a positive integer")
    source.check_channels(channels)
    check_model_channels(channels, loaded)
    check_grid(source, loaded)
    if time_chunk is not None:
        check_time_chunk(source, channels, time_chunk)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    place_for_inference(loaded.model, dev)
    # beside a model on the CPU the reader's CPU and GIL time count; beside a GPU, its speed
    source.use_direct_reads(dev.type == "cpu")
    return dev, prec, time_chunk or auto_time_chunk(source, channels)


#: the most bytes of source fields one time chunk may hold (encode holds a few chunks in memory)
MAX_CHUNK_FIELD_BYTES = 8 << 30


def check_time_chunk(source: Source, channels: tuple[Channel, ...], time_chunk: int) -> None:
    """Refuse a ``--time-chunk`` whose chunks could not be held in memory."""
    per_step = 4 * len(channels) * int(np.prod(source.sample_shape, dtype=np.int64)) * \
        source.grid[0] * source.grid[1]
    # not capped at the source's length: zarr writes whole chunks, so a chunk longer than the
    # data is still allocated whole
    if time_chunk > 1 and time_chunk * per_step > MAX_CHUNK_FIELD_BYTES:
        most = max(1, MAX_CHUNK_FIELD_BYTES // per_step)
        raise OptionError(
            f"--time-chunk {time_chunk}: one chunk would hold {time_chunk * per_step / 2**30:.0f} GiB "
            f"of fields (at most {MAX_CHUNK_FIELD_BYTES >> 30} GiB); expected at most {most}, "
            "or leave it out to let encode choose")


def _read_first_chunk(source: Source, channels: tuple[Channel, ...], t0: int, t1: int,
                      time_chunk: int, part: tuple[int, int] | None
                      ) -> tuple[tuple[int, np.ndarray] | None, dict[str, np.ndarray]]:
    """The first time chunk a new store's job owns, read and checked before anything is created
    (a source with bad values, NaN outside masked channels or damaged chunks, leaves no store
    behind), and the store's static masks (:func:`first_step_masks`), taken from that chunk
    when it starts the range rather than read again."""
    owned = part_range(-(-(t1 - t0) // time_chunk), part)
    if not len(owned):
        return None, first_step_masks(source, channels, t0, t1)
    a, b = owned[0] * time_chunk, min((owned[0] + 1) * time_chunk, t1 - t0)
    x = read_fields(source, channels, t0 + a, t0 + b)
    static = (static_masks(x[:1], channels) if a == 0
              else first_step_masks(source, channels, t0, t1))
    split_masked(x, channels, tuple(static), fields_where(source, t0 + a, t0 + b),
                 iso(source.times[t0]))
    return (owned[0], x), static


def prepare_encode(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...], out: str,
                   *, time_range: str | None = None, batch_size: int = 8, device: str = "auto",
                   overwrite: bool = False, time_chunk: int | None = None,
                   precision: str = "auto", break_lock: bool = False,
                   part: tuple[int, int] | None = None, max_error: str | None = None,
                   residual_codec: str = "sz3", lay_out: bool = True) -> EncodeJob:
    """Check everything, then create the store (or open it to resume): a job ready to run.

    With ``part`` ``(I, N)`` the job owns only the I-th of N contiguous shares of the time chunks
    (``store.part_range``) and never marks the store complete. Processes that create the same
    store at once are safe: the one that loses the race opens the winner's store and resumes.
    With ``lay_out`` False, a new local store is checked but not created: the caller calls
    :meth:`EncodeJob.lay_out` (``encode`` does so in the background, under the writer lock).
    """
    if part is not None and overwrite:
        raise OptionError("--overwrite with --parts would let each part wipe the others' work; "
                          "delete the store first, or encode without --parts")
    check_output_name(out, "a latent store", "a Zarr directory (.zarr, or no extension)")
    dev, prec, time_chunk = ready_to_encode(source, loaded, channels, batch_size=batch_size,
                                            time_chunk=time_chunk, device=device,
                                            precision=precision)
    residual = residual_spec(source, loaded, channels, max_error, residual_codec)
    t0, t1 = source.time_indices(time_range)
    if exists(out) and not overwrite:
        if not is_store(out):
            raise StoreError(f"{out} exists and is not a latent store; choose another --out")
        # made differently is said first: waiting for a live writer of another subset or model
        # would not help
        spec = store_spec(source, loaded, channels, t0, t1, time_chunk, residual,
                          first_step_masks(source, channels, t0, t1))
        store = _open_for_resume(out, spec)
        check_unlocked(out, break_lock, part)
        spec = dataclasses.replace(spec, time_chunk=store.time_chunk)  # the store's chunking wins
        return EncodeJob(source, loaded, channels, spec, store, t0, batch_size, dev, prec, True,
                         part, None, residual)
    if is_store(out):
        check_unlocked(out, break_lock, part)
    if not is_url(out):  # what laying it out would refuse, said before any work
        parent_dir(out)
        if overwrite:
            check_replaceable(out, LATENT)
    # the first chunk, read to check the source before anything is created
    first, static = _read_first_chunk(source, channels, t0, t1, time_chunk, part)
    spec = store_spec(source, loaded, channels, t0, t1, time_chunk, residual, static)
    job = EncodeJob(source, loaded, channels, spec, None, t0, batch_size, dev, prec, False,
                    part, first, residual)
    if lay_out or is_url(out):
        job.lay_out(out, overwrite)
    return job


def encode(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...], out: str, *,
           time_range: str | None = None, batch_size: int = 8, device: str = "auto",
           overwrite: bool = False, time_chunk: int | None = None, precision: str = "auto",
           break_lock: bool = False, progress: Progress | None = None,
           part: tuple[int, int] | None = None, max_error: str | None = None,
           residual_codec: str = "sz3", root_attrs: Mapping[str, Any] | None = None
           ) -> EncodeResult:
    """Encode ``channels`` of ``source`` into a latent store at ``out`` (resuming if possible).

    The store's lock file is held throughout, so a second encode into the same store is refused
    rather than interleaved; a lock left by a killed process on this host is cleared. With
    ``part`` ``(I, N)``, only that part's time chunks are encoded, under that part's own lock,
    and the store is left for ``finalize`` (or an encode without parts) to mark complete.
    ``root_attrs`` are written into the store's root attributes before it is sealed (keys the
    store's schema does not know, such as ``era5latent_recipe``).
    """
    job = prepare_encode(source, loaded, channels, out, time_range=time_range,
                         batch_size=batch_size, device=device, overwrite=overwrite,
                         time_chunk=time_chunk, precision=precision, break_lock=break_lock,
                         part=part, max_error=max_error, residual_codec=residual_codec,
                         lay_out=False)
    job.root_attrs = dict(root_attrs or {})
    with writer_lock(out, break_lock, part):
        if job.resumed and part is None:  # the whole store is ours: nobody else is writing
            remove_partial_writes(out)  # chunk files a killed writer left half-written
        try:
            return _run(job, out, progress, overwrite)
        except BaseException as err:
            kept = _forget_if_empty(job, out)
            if kept and isinstance(err, Era5LatentError) and len(err.args) == 1 and \
                    type(err).__str__ is BaseException.__str__:  # say what was kept, and why
                err.args = (f"{err.args[0]} ({kept} time chunk(s) encoded before it are kept "
                            f"in {out}: the same command resumes from there)",)
            raise


def _forget_if_empty(job: EncodeJob, out: str) -> int:
    """After a failure: remove the store this run created if not one time chunk reached it
    (a whole-store writer holds the only lock, so nobody else is writing it). Returns the
    number of time chunks kept (0: nothing, or a store this run did not create)."""
    from era5latent.fsutil import remove_tree

    if job.resumed or job.part is not None or job.store is None:
        return 0
    try:
        done = int(job.store.done().sum())
    except Exception:  # cannot tell: keep it (a re-run resumes or says what is wrong)
        return 0
    if not done:
        remove_tree(out)
    return done


def _run(job: EncodeJob, out: str, progress: Progress | None, overwrite: bool = False
         ) -> EncodeResult:
    todo = job.todo()
    total = job.total_samples()
    finished = total - sum(job.chunk_samples(i) for i in todo)
    if progress:
        progress(finished, total)
    start = time.perf_counter()
    # reading, computing and writing overlap; beside a CPU model on one background thread
    with Background(shared=one_io_thread(job.device, job.source.path, out)) as io:
        chunks = io.read_ahead(job.read_chunk, todo)  # queued before the lay-out: chunk 0 is
        if job.store is None:  # already in memory, and a new store is laid out while it encodes
            io.submit(_lay_out_first, job, out, overwrite)
        for i, x in chunks:
            faults.point("encode.chunk-read")
            io.submit(job.write_chunk, i, job.encode_chunk(x))
            finished += job.chunk_samples(i)
            if progress:
                progress(finished, total)
    seconds = time.perf_counter() - start
    job.finish()
    spec = job.spec
    owned = len(job.chunk_range())
    return EncodeResult(out, {g.name: list(g.channels) for g in spec.groups}, len(spec.times),
                        sum(job.chunk_samples(i) for i in todo), owned, len(todo),
                        owned - len(todo), seconds, job.resumed)


def _lay_out_first(job: EncodeJob, out: str, overwrite: bool) -> None:
    """The writer's first task for a new store: lay it out. On a tiny model that took as long
    as 5% of a 100-step encode; here it overlaps the first chunk's compute."""
    planned = job.spec.time_chunk
    job.lay_out(out, overwrite)
    if job.spec.time_chunk != planned:  # chunks are being encoded in our chunking: stop them
        raise StoreError(
            f"{out} was created meanwhile by another encode, with {job.spec.time_chunk}-step "
            f"time chunks, not {planned}; run the same command again to resume it")
