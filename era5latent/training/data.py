"""The streaming training loader: block-shuffled samples read in the source's own chunks.

Samples are the (time, member) frames of a time range, numbered ``t * members + m``. The time
range is cut into *blocks* of the source's time chunk (one read each), and every epoch is one
seeded permutation of all samples built in two levels:

1. the blocks are permuted;
2. consecutive permuted blocks form *windows* of about ``window_samples`` samples, and the samples
   inside a window are shuffled.

The training *stream* is the epochs one after another, and global batch ``j`` is stream positions
``[j * B, (j + 1) * B)``, whatever the world size: rank ``r`` of ``W`` takes positions
``r * B / W`` to ``(r + 1) * B / W`` of it. So every sample is visited exactly once per epoch
across ranks, the batches do not depend on how many ranks or workers there are, and resuming at
step ``s`` only needs ``s`` (and the seed).

The unit of work handed to loader workers is a *run* of ``R`` consecutive global batches (about
one window). Worker ``w`` of ``n`` produces runs ``w, w + n, ...``, so the DataLoader's round-robin
returns them in order. A worker reads each block its run needs once (normalising there, in the
worker) and keeps the last blocks in a small cache, so a block is read a bounded number of
times per epoch (about twice per rank: by its window's run and by a neighbour run that straddles)
and memory stays a few windows whatever the length of the data. When the whole training range
fits in ``cache_bytes`` the cache keeps every block: the in-memory path for small data is the
same code, reading each block once in total.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from era5latent.errors import Era5LatentError
from era5latent.store.masks import check_no_inf
from era5latent.io.sources import Source, open_source
from era5latent.io.variables import Channel


def source_time_chunk(source: Source, default: int = 8) -> int:
    """The time chunk of the source's first variable (its read unit), or ``default``."""
    for name in source.ds.data_vars:
        enc = source.ds[name].encoding
        chunks = enc.get("chunks") or enc.get("preferred_chunks")
        dims = source.ds[name].dims
        if isinstance(chunks, dict):
            t = chunks.get("time")
            return int(t) if t else default
        if chunks and "time" in dims and len(chunks) == len(dims):
            return max(1, int(chunks[dims.index("time")]))
        return default
    return default


class SourceRef:
    """A source that can travel to worker processes: reopened there by path, else pickled."""

    def __init__(self, source: Source, storage_options: dict[str, Any] | None = None) -> None:
        self.path = source.path
        self.storage_options = storage_options
        self.open_options = dict(source.open_options)  # time_axis, step: reopened alike
        reopen = "://" in source.path or os.path.exists(source.path)
        self._pickled: Source | None = None if reopen else source
        self._source: Source | None = source

    def get(self) -> Source:
        if self._source is None:
            self._source = open_source(self.path, self.storage_options, **self.open_options)
        return self._source

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "storage_options": self.storage_options,
                "open_options": self.open_options, "_pickled": self._pickled,
                "_source": self._pickled}


@dataclass(frozen=True)
class Layout:
    """The sample space and its cut into blocks (pure arithmetic, shared by all ranks)."""

    t0: int  # first time index of the range in the source
    n_times: int
    members: int  # samples per time step (product of sample dims, e.g. ensemble members)
    block: int  # time steps per block

    @property
    def n_samples(self) -> int:
        return self.n_times * self.members

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_times / self.block)

    def block_samples(self, b: int) -> np.ndarray:
        a = b * self.block * self.members
        return np.arange(a, min((b + 1) * self.block, self.n_times) * self.members)


class Schedule:
    """The seeded, world-size independent order of samples (see the module docstring)."""

    def __init__(self, layout: Layout, seed: int, global_batch: int, window_samples: int) -> None:
        self.layout, self.seed, self.batch = layout, seed, global_batch
        per_block = layout.block * layout.members
        self.blocks_per_window = max(1, math.ceil(window_samples / per_block))
        self.run_batches = max(1, round(self.blocks_per_window * per_block / global_batch))
        self._epoch: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Every sample index once, block-shuffled (cached for the last epoch asked)."""
        if self._epoch is not None and self._epoch[0] == epoch:
            return self._epoch[1]
        rng = np.random.default_rng([self.seed, epoch])
        blocks = rng.permutation(self.layout.n_blocks)
        parts = []
        for w in range(0, len(blocks), self.blocks_per_window):
            ids = np.concatenate([self.layout.block_samples(int(b))
                                  for b in blocks[w:w + self.blocks_per_window]])
            parts.append(rng.permutation(ids))
        order = np.concatenate(parts).astype(np.int64)
        self._epoch = (epoch, order)
        return order

    def positions(self, start: int, stop: int) -> np.ndarray:
        """Sample indices at stream positions ``[start, stop)`` (crossing epochs as needed)."""
        n = self.layout.n_samples
        out = []
        p = start
        while p < stop:
            epoch, off = divmod(p, n)
            take = min(stop - p, n - off)
            out.append(self.epoch_order(epoch)[off:off + take])
            p += take
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def rank_batch(self, j: int, rank: int, world: int) -> np.ndarray:
        """Rank ``rank``'s share of global batch ``j``."""
        b = self.batch // world
        a = j * self.batch + rank * b
        return self.positions(a, a + b)


class BlockReader:
    """Reads normalised blocks ``(samples, C, H, W)`` float32 with a small LRU cache."""

    def __init__(self, ref: SourceRef, channels: tuple[Channel, ...], layout: Layout,
                 mean: np.ndarray, std: np.ndarray, cache_bytes: int) -> None:
        self.ref, self.channels, self.layout = ref, channels, layout
        # (C, 1, 1), or (C, H, W) for channels normalised by their mean field
        self.mean = mean.astype(np.float32).reshape(len(channels), *mean.shape[-2:]) \
            if mean.ndim == 3 else mean.astype(np.float32).reshape(-1, 1, 1)
        self.inv_std = (1.0 / std).astype(np.float32).reshape(-1, 1, 1)
        self.cache_bytes = cache_bytes
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def block(self, b: int) -> np.ndarray:
        if b in self.cache:
            self.cache.move_to_end(b)
            return self.cache[b]
        lay = self.layout
        a = lay.t0 + b * lay.block
        src = self.ref.get()
        x = src.read(self.channels, a, min(a + lay.block, lay.t0 + lay.n_times))
        check_no_inf(x, f"{src.path} (training data)")  # NaN: masked (the loop fills it)
        x = x.reshape(-1, *x.shape[-3:])  # (t * members, C, H, W)
        x -= self.mean
        x *= self.inv_std
        self.cache[b] = x
        used = sum(v.nbytes for v in self.cache.values())
        while len(self.cache) > 1 and used > self.cache_bytes:
            used -= self.cache.popitem(last=False)[1].nbytes
        return x

    def samples(self, ids: np.ndarray) -> np.ndarray:
        """Normalised samples ``(len(ids), C, H, W)`` in the order of ``ids``."""
        per_block = self.layout.block * self.layout.members
        blocks = ids // per_block
        out: np.ndarray | None = None
        for b in np.unique(blocks):
            sel = np.nonzero(blocks == b)[0]
            x = self.block(int(b))[ids[sel] - b * per_block]
            if out is None:
                out = np.empty((len(ids), *x.shape[1:]), np.float32)
            out[sel] = x
        assert out is not None, "samples() needs at least one id"
        return out


class TrainStream(IterableDataset[dict[str, torch.Tensor]]):
    """Runs ``[first_run, last_run)`` of this rank, as ``{"x": (R, b, C, H, W), "ids": (R, b)}``."""

    def __init__(self, schedule: Schedule, reader: BlockReader, rank: int, world: int,
                 first_run: int, last_run: int) -> None:
        self.schedule, self.reader = schedule, reader
        self.rank, self.world = rank, world
        self.first_run, self.last_run = first_run, last_run

    def run(self, k: int) -> dict[str, torch.Tensor]:
        R = self.schedule.run_batches
        ids = np.stack([self.schedule.rank_batch(j, self.rank, self.world)
                        for j in range(k * R, (k + 1) * R)])  # (R, b)
        x = self.reader.samples(ids.ravel())
        return {"x": torch.from_numpy(x.reshape(*ids.shape, *x.shape[1:])),
                "ids": torch.from_numpy(ids)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        for k in range(self.first_run + wid, self.last_run, nw):
            try:
                yield self.run(k)
            except Era5LatentError as err:  # crosses the process boundary as data, not traceback
                yield {"error": err}  # type: ignore[dict-item]
                return


def batches(stream: TrainStream, workers: int, pin_memory: bool, skip: int = 0
            ) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
    """This rank's batches ``(x (b, C, H, W), ids (b,))`` in stream order, skipping the first
    ``skip`` batches of the first run (a resume in the middle of a run)."""
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=2 if workers else None,
                        multiprocessing_context="spawn" if workers else None,
                        persistent_workers=False)
    first = True
    for item in loader:
        if "error" in item:
            raise item["error"]  # a worker's one-line library error
        x, ids = item["x"], item["ids"]
        for i in range(skip if first else 0, x.shape[0]):
            yield x[i], ids[i]
        first = False
