"""The steps every path shares: devices and precision, the model's encode and decode of a block,
and the overlap of reads and writes with the model (:class:`Background`).

The one encode step (:func:`encode_fields`) and the one decode step (:func:`decode_fields`) live
here, so the CLI, the Python API and Dask workers all give equal bits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from era5latent.errors import GridMismatchError, SubsetError
from era5latent.fsutil import is_url
from era5latent.model.checkpoint import LoadedModel
from era5latent.model.devices import autocast
from era5latent.model.wla import pack_bits, unpack_bits
from era5latent.store.masks import check_no_inf
from era5latent.io.sources import Source, grid_info, iso
from era5latent.store.spec import GroupSpec
from era5latent.io.variables import Channel, group_channels, variable_by_name

T = TypeVar("T")
K = TypeVar("K")
#: progress(done_samples, total_samples) -- called after each chunk
Progress = Callable[[int, int], None]


def check_grid(source: Source, loaded: LoadedModel) -> None:
    want = loaded.meta.grid
    have = grid_info(source.latitude, source.longitude)
    same = want["shape"] == have["shape"] and all(
        np.allclose(want[k], have[k], atol=1e-6) for k in ("latitude", "longitude") if k in want)
    if not same:
        trained = (f" (lat {want['latitude'][0]}..{want['latitude'][1]}, lon "
                   f"{want['longitude'][0]}..{want['longitude'][1]})"
                   if "latitude" in want and "longitude" in want else "")
        raise GridMismatchError(
            f"{source.path} is on a {have['shape'][0]}x{have['shape'][1]} grid (lat "
            f"{have['latitude'][0]}..{have['latitude'][1]}, lon {have['longitude'][0]}.."
            f"{have['longitude'][1]}) but {loaded.path} was trained on {want['shape'][0]}x"
            f"{want['shape'][1]}{trained}; regrid the data or train a model on this grid")


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


def one_io_thread(device: torch.device, *paths: str) -> bool:
    """Whether a stream's reads and writes share one background thread (:class:`Background`):
    beside a model on the CPU, when every path is local (the work is CPU, not waiting)."""
    return device.type == "cpu" and not any(is_url(p) for p in paths)


class Background:
    """A stream's reads ahead and writes behind, off the model's thread; errors re-raised on the
    model's thread. Use it as a context manager: leaving it waits for the writes (and, on an
    error, for what is running, quietly).

    Beside a model on the CPU, reading and writing local files (``shared``, the default; see
    :func:`one_io_thread`), one thread does both, in the order they were asked for: a reader and
    a writer of their own made three busy threads on two cores, and in one of two paired tests
    the model thread's CPU time in the pipeline rose 7% over the same chunks alone, against
    none with one thread (docs/benchmarks.md, "Tiny encode, seventh round"). Beside a GPU, or
    where a read or a write waits on the network, they are two threads, so that one does not
    hold up the other.

    Writes run in submission order, on one thread, so a chunk's done flag still follows its
    codes; after one fails, the later ones are skipped (none may land after a failed one).
    """

    def __init__(self, shared: bool = True, depth: int = 2) -> None:
        self._writes = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="era5latent-io" if shared else "era5latent-writer")
        self._reads = self._writes if shared else ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="era5latent-reader")
        self._pending: deque[Future[None]] = deque()  # writes not known to be done
        self._ahead: deque[Future[Any]] = deque()  # reads not handed out yet
        self._depth = depth
        self._failed = False  # set on the writer's thread: later writes are skipped

    def __enter__(self) -> Background:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.drain()
        else:
            self.drain_quietly()

    def read_ahead(self, read: Callable[[K], T], keys: Iterable[K]) -> Iterator[tuple[K, T]]:
        """``(k, read(k))`` for each of ``keys``, in order, each read ``depth`` ahead of the
        consumer. The first ``depth`` reads are queued now, ahead of any write submitted after
        this call (on the shared thread a write queued first would delay the first read)."""
        todo = iter(keys)

        def keyed(k: K) -> tuple[K, T]:
            return k, read(k)

        def queue_next() -> None:
            for k in todo:
                self._ahead.append(self._reads.submit(keyed, k))
                return

        for _ in range(self._depth):
            queue_next()

        def results() -> Iterator[tuple[K, T]]:
            try:
                while self._ahead:
                    got = self._ahead[0].result()
                    self._ahead.popleft()
                    queue_next()
                    yield got
            finally:  # the consumer stopped early or failed: reads not started are not run
                for f in self._ahead:
                    f.cancel()
                self._ahead.clear()

        return results()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` behind, waiting first while ``depth`` writes are in flight."""
        while len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._writes.submit(self._call, fn, *args))

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """One write, unless an earlier one failed (e.g. laying the store out): a write must
        not land after one that did not."""
        if self._failed:
            return
        try:
            fn(*args)
        except BaseException:
            self._failed = True
            raise

    def drain(self) -> None:
        """Wait for every write; re-raise the first that failed."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._shutdown()

    def drain_quietly(self) -> None:
        """Wait for what is running, ignoring its errors (an error is already on its way)."""
        for f in self._ahead:
            f.cancel()
        for f in (*self._pending, *self._ahead):
            if not f.cancelled():
                f.exception()
        self._pending.clear()
        self._ahead.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        self._writes.shutdown(wait=True)
        self._reads.shutdown(wait=True)


def normaliser(loaded: LoadedModel, channels: tuple[Channel, ...]) -> tuple[np.ndarray, np.ndarray]:
    return loaded.meta.channel_stats(channels)  # (C, 1, 1) or (C, H, W), and (C, 1, 1)


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch on ``device``; on CUDA staged in pinned memory and copied asynchronously,
    so the copy overlaps the work already queued (PyTorch caches the pinned blocks)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def to_host(parts: list[torch.Tensor], device: torch.device) -> np.ndarray:
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

    NaN (a masked point, :mod:`era5latent.store.masks`) enters the model as 0 in normalised units,
    the channel's training mean. Bits are packed on the device, so 1/32 of the float codes'
    bytes come back."""
    mean, std = normaliser(loaded, channels)
    z = ((x - mean) / std).astype(np.float32)
    missing = np.isnan(z)
    if missing.any():  # masked points (fields with missing values): the training mean, 0
        z[missing] = 0.0
    del missing
    out: dict[str, np.ndarray] = {}
    with loaded.model.reuse_generated_weights():  # one PVUM generation per group, not per batch
        for g, chs in group_channels(channels).items():
            idx = [channels.index(c) for c in chs]
            meta = torch.tensor([c.meta for c in chs], dtype=torch.float32, device=device)
            parts = []
            for s in range(0, z.shape[0], batch_size):
                xb = to_device(z[s:s + batch_size, idx], device)
                parts.append(pack_bits(loaded.model.encode(g, xb, meta)).to("cpu",
                                                                         non_blocking=True))
            out[g] = to_host(parts, device)
    return out


@torch.inference_mode()
def decode_block(loaded: LoadedModel, group: str, chs: tuple[Channel, ...], packed: np.ndarray,
                 code_bits: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Packed codes ``(N, h, w, bytes)`` of one group -> physical fields ``(N, C, H, W)``."""
    meta = torch.tensor([c.meta for c in chs], dtype=torch.float32, device=device)
    mean, std = normaliser(loaded, chs)
    parts = []
    with loaded.model.reuse_generated_weights():  # one PVUM generation, not one per batch
        for s in range(0, packed.shape[0], batch_size):
            bits = unpack_bits(to_device(packed[s:s + batch_size], device), code_bits)
            parts.append(loaded.model.decode(group, bits, meta).float().to("cpu",
                                                                           non_blocking=True))
    z = to_host(parts, device)
    return np.asarray(z * std + mean, dtype=np.float32)


def read_fields(source: Source, channels: tuple[Channel, ...], a: int, b: int) -> np.ndarray:
    """Raw fields of source time steps ``[a, b)``: ``(nt, *sample, C, H, W)``, checked for
    infinities (NaN, a missing value, is the mask layer's: :func:`era5latent.store.masks.split_masked`
    says which channels may hold it)."""
    x = source.read(channels, a, b)
    check_no_inf(x, fields_where(source, a, b))
    return x


def fields_where(source: Source, a: int, b: int) -> str:
    """How errors name source time steps ``[a, b)``."""
    return f"{source.path} between {iso(source.times[a])} and {iso(source.times[b - 1])}"


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
                  fill_shape: tuple[int, ...] | None = None,
                  residuals: Mapping[str, Mapping[str, np.ndarray] | None] | None = None,
                  masks: Mapping[str, np.ndarray | None] | None = None
                  ) -> dict[Channel, np.ndarray]:
    """Packed codes per group ``(nt, *sample, h, w, B)`` -> fields per channel ``(nt, *sample, H, W)``.

    A group whose codes are None (a damaged chunk, allowed) gives NaN fields of ``fill_shape``.
    ``residuals`` (a residual layer's, by group then channel code, shaped as the fields) are
    added after the WLA's reconstruction (``residual.apply_residual``); a group whose residuals
    are None (damaged, allowed) gives NaN fields too. ``masks`` (a mask layer's, by channel
    code, shaped as the fields) put NaN back where the source was missing; a mask that is None
    (damaged, allowed) makes its channel NaN. The one decode step every path runs (CLI, Python
    API, Dask workers).
    """
    from era5latent.pipeline.residual.core import apply_residual

    block: dict[Channel, np.ndarray] = {}
    for g, chs in groups.items():
        p = packed[g]
        if p is not None and residuals is not None and g in residuals and residuals[g] is None:
            fill_shape = fill_shape or (*p.shape[:-3], *_field_grid(loaded))
            p = None
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
        res = (residuals or {}).get(g) or {}
        for k, ch in enumerate(chs):
            block[ch] = y[..., k, :, :]
            nonneg = variable_by_name(ch.name).nonnegative
            if nonneg:  # precipitation, radiation: never below 0
                np.maximum(block[ch], 0.0, out=block[ch])
            if ch.code in res:
                block[ch] = apply_residual(block[ch], res[ch.code], nonneg)
    for ch in block:
        if masks is not None and ch.code in masks:
            m = masks[ch.code]
            if m is None:
                block[ch] = np.full_like(block[ch], np.nan)
            else:
                block[ch] = np.where(m, np.float32(np.nan), block[ch])
    return block


def _field_grid(loaded: LoadedModel) -> tuple[int, int]:
    shape = loaded.meta.grid["shape"]
    return int(shape[0]), int(shape[1])
