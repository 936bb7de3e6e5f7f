"""Streaming encode and decode: a source's time chunks through the WLA, into a store and back.

Work is cut into time chunks of the store (``time_chunk`` steps). Each chunk is read, checked,
normalised, pushed through the model in batches of ``batch_size`` samples counted from the chunk's
own start, packed, written as one chunk-aligned region and marked done. Because batches are a
function of the chunk alone, a resumed run computes exactly the bytes an uninterrupted run would.
A reader thread prefetches the next chunk while the model works on the current one.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from era5latent import faults
from era5latent.errors import (GridMismatchError, OptionError, StoreError, StoreExistsError,
                               SubsetError)
from era5latent.fsutil import (check_output_name, exists, full_path, is_url,
                               remove_partial_writes)
from era5latent.model.checkpoint import LoadedModel, check_same_model
from era5latent.model.wla import pack_bits, unpack_bits
from era5latent.sources import (Source, SourceLayout, check_finite, grid_info, iso,
                                time_index_range)
from era5latent.store import (CorruptArrayError, CorruptChunkError, GroupSpec, LatentStore, StoreSpec,
                              StoreLockedError, check_unlocked, create_latent_store, is_store, jsonable, open_latent_store,
                              part_range, writer_lock)
from era5latent.unseen import adopt_store_levels
from era5latent.variables import Channel, group_channels, parse_channel, variable_by_name

T = TypeVar("T")
#: progress(done_samples, total_samples) -- called after each chunk
Progress = Callable[[int, int], None]


def resolve_device(device: str) -> torch.device:
    """``auto`` -> first CUDA device if present else CPU; ``cpu``; ``cuda``/``cuda:N``."""
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d == "cpu":
        return torch.device("cpu")
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: no CUDA device is available here; use --device cpu")
        dev = torch.device(d)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise OptionError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def check_grid(source: Source, loaded: LoadedModel) -> None:
    want = loaded.meta.grid
    have = grid_info(source.latitude, source.longitude)
    same = want["shape"] == have["shape"] and all(
        np.allclose(want[k], have[k], atol=1e-6) for k in ("latitude", "longitude"))
    if not same:
        raise GridMismatchError(
            f"{source.path} is on a {have['shape'][0]}x{have['shape'][1]} grid (lat "
            f"{have['latitude'][0]}..{have['latitude'][1]}, lon {have['longitude'][0]}.."
            f"{have['longitude'][1]}) but {loaded.path} was trained on {want['shape'][0]}x"
            f"{want['shape'][1]} (lat {want['latitude'][0]}..{want['latitude'][1]}, lon "
            f"{want['longitude'][0]}..{want['longitude'][1]}); regrid the data or train a model on "
            "this grid")


def check_model_channels(channels: tuple[Channel, ...], loaded: LoadedModel) -> None:
    trained = loaded.meta.groups
    for g, chs in group_channels(channels).items():
        if g not in trained:
            raise SubsetError(
                f"{loaded.path} has no autoencoder for group {g!r} ({', '.join(c.code for c in chs)}); "
                f"it was trained for groups {', '.join(trained)}: choose from "
                f"{','.join(c.code for cs in trained.values() for c in cs)}")
        extra = [c.code for c in chs if c not in trained[g]]
        if extra:
            levels_only = all(c.level is not None and c.name in {t.name for t in trained[g]}
                              for c in chs if c not in trained[g])
            raise SubsetError(
                f"{loaded.path} was not trained on {', '.join(extra)}; group {g} knows "
                f"{','.join(c.code for c in trained[g])}" + (
                    "; encode --allow-unseen-levels encodes them anyway (out of distribution, "
                    "docs/variables.md)" if levels_only else ""))


def _prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` on a background thread, ``depth`` ahead; exceptions re-raised here."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for it in items:
                if stop.is_set():
                    return
                q.put(("item", it))
            q.put(("end", None))
        except BaseException as err:  # handed to the consumer
            q.put(("error", err))

    th = threading.Thread(target=run, name="era5latent-reader", daemon=True)
    th.start()
    try:
        while True:
            kind, val = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise val
            yield val
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


class _Writer:
    """Run writes on one background thread, at most ``depth`` behind; errors re-raised here.

    Writes happen in submission order (one thread), so a chunk's done flag still follows its
    codes; ``drain`` waits for all of them.
    """

    def __init__(self, depth: int = 2) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="era5latent-writer")
        self._pending: list[Future[None]] = []
        self._depth = depth

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        while len(self._pending) >= self._depth:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(fn, *args))

    def drain(self) -> None:
        try:
            while self._pending:
                self._pending.pop(0).result()
        finally:
            self._pool.shutdown(wait=True)

    def drain_quietly(self) -> None:
        """Wait for writes in flight, ignoring their errors (an error is already on its way)."""
        for f in self._pending:
            f.exception()
        self._pending.clear()
        self._pool.shutdown(wait=True)


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


def _normaliser(loaded: LoadedModel, channels: tuple[Channel, ...]) -> tuple[np.ndarray, np.ndarray]:
    mean, std = loaded.meta.channel_stats(channels)
    shape = (len(channels), 1, 1)
    return mean.numpy().reshape(shape), std.numpy().reshape(shape)


def _to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on ``device``; on CUDA staged in pinned memory and copied asynchronously,
    so the copy overlaps the work already queued (PyTorch caches the pinned blocks)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _to_host(parts: list[torch.Tensor], device: torch.device) -> np.ndarray:
    """Batch results -> one host array. Each was sent with ``.to("cpu", non_blocking=True)``
    as soon as it was queued (on CUDA into pinned memory, overlapping the next batch; on the CPU
    a no-op); one synchronisation here makes them all readable."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return np.concatenate([p.numpy() for p in parts], axis=0)


@torch.inference_mode()
def encode_block(loaded: LoadedModel, channels: tuple[Channel, ...], x: np.ndarray,
                 batch_size: int, device: torch.device) -> dict[str, np.ndarray]:
    """Encode raw fields ``(N, C, H, W)`` -> packed codes per group ``(N, h, w, bytes)``.

    Bits are packed on the device, so 1/32 of the float codes' bytes come back."""
    mean, std = _normaliser(loaded, channels)
    z = ((x - mean) / std).astype(np.float32)
    out: dict[str, np.ndarray] = {}
    for g, chs in group_channels(channels).items():
        idx = [channels.index(c) for c in chs]
        meta = torch.tensor([c.meta for c in chs], dtype=torch.float32, device=device)
        parts = []
        for s in range(0, z.shape[0], batch_size):
            xb = _to_device(z[s:s + batch_size, idx], device)
            parts.append(pack_bits(loaded.model.encode(g, xb, meta)).to("cpu", non_blocking=True))
        out[g] = _to_host(parts, device)
    return out


@torch.inference_mode()
def decode_block(loaded: LoadedModel, group: str, chs: tuple[Channel, ...], packed: np.ndarray,
                 code_bits: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Packed codes ``(N, h, w, bytes)`` of one group -> physical fields ``(N, C, H, W)``."""
    meta = torch.tensor([c.meta for c in chs], dtype=torch.float32, device=device)
    mean, std = _normaliser(loaded, chs)
    parts = []
    for s in range(0, packed.shape[0], batch_size):
        bits = unpack_bits(_to_device(packed[s:s + batch_size], device), code_bits)
        parts.append(loaded.model.decode(group, bits, meta).float().to("cpu", non_blocking=True))
    z = _to_host(parts, device)
    return np.asarray(z * std + mean, dtype=np.float32)


def read_fields(source: Source, channels: tuple[Channel, ...], a: int, b: int) -> np.ndarray:
    """Raw fields of source time steps ``[a, b)``: ``(nt, *sample, C, H, W)``, checked finite."""
    x = source.read(channels, a, b)
    check_finite(x, f"{source.path} between {iso(source.times[a])} and {iso(source.times[b - 1])}")
    return x


def encode_fields(loaded: LoadedModel, channels: tuple[Channel, ...], x: np.ndarray,
                  batch_size: int, device: torch.device, precision: str) -> dict[str, np.ndarray]:
    """Fields ``(nt, *sample, C, H, W)`` -> packed codes per group ``(nt, *sample, h, w, B)``.

    The one encode step every path runs (CLI, Python API, Dask workers), so all give equal bits.
    """
    lead = x.shape[:-3]
    with autocast(device, precision):
        codes = encode_block(loaded, channels, x.reshape(-1, *x.shape[-3:]), batch_size, device)
    return {g: c.reshape(*lead, *c.shape[1:]) for g, c in codes.items()}


def decode_fields(loaded: LoadedModel, groups: Mapping[str, tuple[Channel, ...]],
                  specs: Mapping[str, GroupSpec], packed: Mapping[str, np.ndarray | None],
                  batch_size: int, device: torch.device, precision: str,
                  fill_shape: tuple[int, ...] | None = None) -> dict[Channel, np.ndarray]:
    """Packed codes per group ``(nt, *sample, h, w, B)`` -> fields per channel ``(nt, *sample, H, W)``.

    A group whose codes are None (a damaged chunk, allowed) gives NaN fields of ``fill_shape``.
    The one decode step every path runs (CLI, Python API, Dask workers).
    """
    block: dict[Channel, np.ndarray] = {}
    for g, chs in groups.items():
        p = packed[g]
        if p is None:
            if fill_shape is None:  # a caller's bug, not bad input
                raise ValueError(f"codes of group {g} are missing and no fill_shape was given")
            for ch in chs:
                block[ch] = np.full(fill_shape, np.nan, dtype=np.float32)
            continue
        p = np.asarray(p)
        lead = p.shape[:-3]
        with autocast(device, precision):
            y = decode_block(loaded, g, chs, p.reshape(-1, *p.shape[-3:]), specs[g].code_bits,
                             batch_size, device)
        y = y.reshape(*lead, *y.shape[1:])  # (nt, *sample, C, H, W)
        for k, ch in enumerate(chs):
            block[ch] = y[..., k, :, :]
            if variable_by_name(ch.name).nonnegative:  # precipitation, radiation: never below 0
                np.maximum(block[ch], 0.0, out=block[ch])
    return block


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


def _store_spec(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...],
                t0: int, t1: int, time_chunk: int) -> StoreSpec:
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
    )


def _open_for_resume(out: str, spec: StoreSpec, wait: float = 0.0) -> LatentStore:
    deadline = time.monotonic() + wait
    while True:  # ``wait``: another process may still be laying the store out in place (URLs)
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
            f"subset, time range or source){busy}; choose another --out, or pass --overwrite "
            "to replace it" + (" once that writer has finished" if busy else ""))
    return store



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
    store: LatentStore
    t0: int
    batch_size: int
    device: torch.device
    precision: str = "fp32"
    resumed: bool = False
    part: tuple[int, int] | None = None  # (I, N): only the I-th of N shares; never completes
    #: a chunk already read (to check the source before creating the store), used once
    first: tuple[int, np.ndarray] | None = field(default=None, repr=False, compare=False)
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

    def todo(self) -> list[int]:
        done = self.store.done()
        return [i for i in self.chunk_range() if not done[i]]

    def chunk_samples(self, i: int) -> int:
        a, b = self.spec.chunk_bounds(i)
        return (b - a) * self.samples_per_step

    def read_chunk(self, i: int) -> np.ndarray:
        """Raw fields of chunk ``i``: ``(nt, *sample, C, H, W)``, checked finite."""
        if self.first is not None and self.first[0] == i:
            x, self.first = self.first[1], None
            return x
        a, b = self.spec.chunk_bounds(i)
        return read_fields(self.source, self.channels, self.t0 + a, self.t0 + b)

    def encode_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return encode_fields(self.loaded, self.channels, x, self.batch_size, self.device,
                             self.precision)

    def write_chunk(self, i: int, codes: dict[str, np.ndarray]) -> None:
        self.store.write_chunk(i, codes)

    def run_chunk(self, i: int) -> int:
        """Encode and write chunk ``i``; returns the number of samples it held."""
        x = self.read_chunk(i)
        faults.point("encode.chunk-read")
        self.write_chunk(i, self.encode_chunk(x))
        return self.chunk_samples(i)

    def finish(self) -> None:
        """Mark the store complete (whole-store jobs; a part leaves that to ``finalize``)."""
        if self.part is None and not self.store.finished:
            for key, value in self.root_attrs.items():
                self.store.root.attrs[key] = jsonable(value)
            self.store.mark_complete()  # also repairs a kill between marking and consolidating


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; others checked against the device."""
    p = precision.strip().lower()
    if p == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if p not in PRECISIONS:
        raise OptionError(f"--precision {precision!r}: expected auto, fp32, bf16 or fp16")
    if p == "fp16" and device.type != "cuda":
        raise OptionError("--precision fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return p


def autocast(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=PRECISIONS[precision])


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
    loaded.model.to(dev).eval()
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


def prepare_encode(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...], out: str,
                   *, time_range: str | None = None, batch_size: int = 8, device: str = "auto",
                   overwrite: bool = False, time_chunk: int | None = None,
                   precision: str = "auto", break_lock: bool = False,
                   part: tuple[int, int] | None = None) -> EncodeJob:
    """Check everything, then create the store (or open it to resume): a job ready to run.

    With ``part`` ``(I, N)`` the job owns only the I-th of N contiguous shares of the time chunks
    (``store.part_range``) and never marks the store complete. Processes that create the same
    store at once are safe: the one that loses the race opens the winner's store and resumes.
    """
    if part is not None and overwrite:
        raise OptionError("--overwrite with --parts would let each part wipe the others' work; "
                          "delete the store first, or encode without --parts")
    check_output_name(out, "a latent store", "a Zarr directory (.zarr, or no extension)")
    dev, prec, time_chunk = ready_to_encode(source, loaded, channels, batch_size=batch_size,
                                            time_chunk=time_chunk, device=device,
                                            precision=precision)
    t0, t1 = source.time_indices(time_range)
    spec = _store_spec(source, loaded, channels, t0, t1, time_chunk)
    resumed = False
    first: tuple[int, np.ndarray] | None = None  # the first chunk, read to check the source
    wait = 60.0 if is_url(out) else 0.0  # in-place creation on object storage is not atomic
    if exists(out) and not overwrite:
        if not is_store(out):
            raise StoreError(f"{out} exists and is not a latent store; choose another --out")
        # made differently is said first: waiting for a live writer of another subset or model
        # would not help
        store = _open_for_resume(out, spec, wait)
        check_unlocked(out, break_lock, part)
        resumed = True
    else:
        if is_store(out):
            check_unlocked(out, break_lock, part)
        # the first chunk is read and checked before anything is created: a source with bad
        # values (NaN, damaged chunks) leaves no store behind
        owned = part_range(spec.n_chunks, part)
        if len(owned):
            a, b = spec.chunk_bounds(owned[0])
            first = (owned[0], read_fields(source, channels, t0 + a, t0 + b))
        try:
            create_latent_store(out, dataclasses.replace(spec, parts=part and part[1]),
                                overwrite=overwrite)
            store = open_latent_store(out, mode="r+")
        except StoreExistsError:  # another process (e.g. a concurrent part) created it first
            store = _open_for_resume(out, spec, wait)
            resumed = True
    if resumed:
        spec = dataclasses.replace(spec, time_chunk=store.time_chunk)  # the store's chunking wins
    return EncodeJob(source, loaded, channels, spec, store, t0, batch_size, dev, prec, resumed,
                     part, first)


def encode(source: Source, loaded: LoadedModel, channels: tuple[Channel, ...], out: str, *,
           time_range: str | None = None, batch_size: int = 8, device: str = "auto",
           overwrite: bool = False, time_chunk: int | None = None, precision: str = "auto",
           break_lock: bool = False, progress: Progress | None = None,
           part: tuple[int, int] | None = None,
           root_attrs: Mapping[str, Any] | None = None) -> EncodeResult:
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
                         part=part)
    job.root_attrs = dict(root_attrs or {})
    with writer_lock(out, break_lock, part):
        if job.resumed and part is None:  # the whole store is ours: nobody else is writing
            remove_partial_writes(out)  # chunk files a killed writer left half-written
        try:
            return _run(job, out, progress)
        except BaseException:
            _forget_if_empty(job, out)
            raise


def _forget_if_empty(job: EncodeJob, out: str) -> None:
    """After a failure: remove the store this run created if not one time chunk reached it
    (a whole-store writer holds the only lock, so nobody else is writing it)."""
    from era5latent.fsutil import remove_tree

    if job.resumed or job.part is not None:
        return
    try:
        empty = not job.store.done().any()
    except Exception:  # cannot tell: keep it (a re-run resumes or says what is wrong)
        return
    if empty:
        remove_tree(out)


def _run(job: EncodeJob, out: str, progress: Progress | None) -> EncodeResult:
    todo = job.todo()
    total = job.total_samples()
    finished = total - sum(job.chunk_samples(i) for i in todo)
    if progress:
        progress(finished, total)
    start = time.perf_counter()
    writer = _Writer()  # reading, computing and writing overlap
    try:
        for i, x in _prefetch((i, job.read_chunk(i)) for i in todo):
            faults.point("encode.chunk-read")
            writer.submit(job.write_chunk, i, job.encode_chunk(x))
            finished += job.chunk_samples(i)
            if progress:
                progress(finished, total)
        writer.drain()
    except BaseException:
        writer.drain_quietly()
        raise
    seconds = time.perf_counter() - start
    job.finish()
    spec = job.spec
    owned = len(job.chunk_range())
    return EncodeResult(out, {g.name: list(g.channels) for g in spec.groups}, len(spec.times),
                        sum(job.chunk_samples(i) for i in todo), owned, len(todo),
                        owned - len(todo), seconds, job.resumed)


# -- decode ------------------------------------------------------------------------------------

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
                zarr_format: int = 3) -> DecodePlan:
    """Check the store and the model, select channels and times, lay out the output."""
    from era5latent import fields  # the ERA5-layout output writer

    check_output_name(out, "decoded fields", "Zarr (.zarr, or no extension) or NetCDF (.nc)")
    store = open_latent_store(store_path)
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
                                       "model_sha256": loaded.sha256},
                                overwrite=overwrite, zarr_format=zarr_format)
    return DecodePlan(store, groups, times, lo, hi, sample_coords, lat, lon, writer, damaged)


def decode(store_path: str, loaded: LoadedModel, out: str, *, subset: tuple[Channel, ...] | None = None,
           time_range: str | None = None, batch_size: int = 8, device: str = "auto",
           overwrite: bool = False, precision: str = "auto", allow_corrupt: bool = False,
           progress: Progress | None = None, zarr_format: int = 3) -> DecodeResult:
    """Decode a latent store into ERA5 fields at ``out`` (Zarr v3 or, with ``zarr_format=2``,
    v2; or NetCDF by extension)."""
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: expected a positive integer")
    dev = resolve_device(device)  # every option checked before the output is laid out
    prec = resolve_precision(precision, dev)
    plan = plan_decode(store_path, loaded, out, subset=subset, time_range=time_range,
                       overwrite=overwrite, allow_corrupt=allow_corrupt, zarr_format=zarr_format)
    loaded.model.to(dev).eval()
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

    def read(a: int) -> tuple[int, dict[str, np.ndarray | None]]:
        codes, lost = read_codes(store, groups, a, min(a + step, hi), allow_corrupt=allow_corrupt)
        corrupt.extend(lost)
        return a, codes

    def fill(a: int) -> tuple[int, ...]:
        return (min(a + step, hi) - a, *sample_shape, len(lat), len(lon))

    def write(offset: int, block: dict[Channel, np.ndarray]) -> None:
        writer.write(offset, block)
        faults.point("decode.block-written")

    done_samples = 0
    background = _Writer()  # reading, computing and writing overlap
    try:
        for a, packed in _prefetch(read(a) for a in range(lo, hi, step)):
            block = decode_fields(loaded, groups, specs, packed, batch_size, dev, prec, fill(a))
            background.submit(write, a - lo, block)
            done_samples += (min(a + step, hi) - a) * per_step
            if progress:
                progress(done_samples, total)
        background.drain()
    except BaseException:
        background.drain_quietly()
        writer.abort()
        raise
    writer.close()
    return DecodeResult(out, writer.variables, hi - lo, total, time.perf_counter() - start_t,
                        [c.code for chs in groups.values() for c in chs], corrupt)
