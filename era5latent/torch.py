"""A PyTorch dataset over a latent store, for models that work in latent space.

:class:`LatentDataset` yields the binary codes of one time step (and one member of each sample
dim, e.g. the ensemble ``number``) as a float tensor ``(group, bits, token_lat, token_lon)``:
every group of the store (or those asked for) stacked on the first axis, each token's
``code_bits`` bits on the second, in ``{-1, +1}`` (``bits="pm1"``, the sign of the BSQ code; the
model's code vector is that divided by ``sqrt(code_bits)``) or ``{0, 1}`` (``bits="01"``).
With ``lead_times`` it yields ``(input, target)`` pairs for forecasting in latent space.
:meth:`LatentDataset.to_latent` turns predicted codes back into a latent Dataset for
:func:`era5latent.decode`.

It is safe under a multi-worker ``DataLoader``: it holds only the store's path and metadata;
each process opens the Zarr arrays itself on first use (and again if it finds itself in a new
process), and an item reads only the chunk(s) that hold its time steps, keeping decompressed
chunks per process (``cache_mb``) for the next items.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
import zarr
from torch.utils.data import Dataset

from era5latent.api import latent_dataset
from era5latent.errors import OptionError
from era5latent.io.sources import time_index_range
from era5latent.io.zarrio import array
from era5latent.store.core import codes_name, open_latent_store
from era5latent.store.spec import GroupSpec

__all__ = ["LatentDataset"]

Bits = Literal["pm1", "01"]
#: one item: the codes at t, or (codes at t, codes at t + lead)
Item = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class LatentDataset(Dataset[Item]):
    """Codes of a latent store as tensors ``(group, bits, token_lat, token_lon)``.

    Args:
        store: path of a complete latent store (``era5latent encode`` output).
        groups: groups to stack, in this order (default: all, in store order). They must share
            the token grid and code bits (groups of one model always do).
        time: ``"START/END"`` (inclusive ISO, either side may be empty, as ``--time``) or a
            ``slice`` of time indices; default all times.
        lead_times: ``None`` for single tensors; an ``int`` ``k`` for pairs
            ``(x[t], x[t + k])``; a sequence of ints for ``(x[t], stack(x[t + k] for k))`` shaped
            ``(len(lead_times), group, bits, h, w)``. Leads count time steps of the store (check
            :attr:`times` is regular if you mean hours). Only ``t`` whose every target lies in
            the selected times are items.
        bits: ``"pm1"`` for ``{-1, +1}`` or ``"01"`` for ``{0, 1}``.
        dtype: tensor dtype.
        cache_mb: decompressed Zarr chunks kept per process, in MiB (codes are small: a store
            of a year of one group at 72 x 144 tokens is 240 MiB); at least one chunk per group
            and lead is always kept.

    Items are ordered time-major, then over the sample dims (ensemble members are extra
    items); :meth:`locate` maps an index back to its time and sample position.
    """

    def __init__(self, store: str | os.PathLike[str], groups: Sequence[str] | None = None,
                 time: str | slice | None = None, lead_times: int | Sequence[int] | None = None,
                 bits: Bits = "pm1", dtype: torch.dtype = torch.float32,
                 cache_mb: float = 64.0) -> None:
        self.path = os.fspath(store)
        opened = open_latent_store(self.path)
        opened.require_complete()
        self.meta: dict[str, Any] = opened.meta
        specs = opened.groups
        names = list(specs) if groups is None else list(groups)
        unknown = [g for g in names if g not in specs]
        if unknown or not names:
            raise OptionError(f"groups {names}: {self.path} holds groups {', '.join(specs)}; "
                              "choose from those")
        self.specs: dict[str, GroupSpec] = {g: specs[g] for g in names}
        geometry = {(s.code_bits, s.token_grid) for s in self.specs.values()}
        if len(geometry) > 1:
            raise OptionError(f"groups {names} do not share one token grid and code size "
                              f"({sorted(geometry)}); make one dataset per group")
        if bits not in ("pm1", "01"):
            raise OptionError(f"bits={bits!r}: expected 'pm1' ({{-1, +1}}) or '01' ({{0, 1}})")
        self.bits: Bits = bits
        self.dtype = dtype
        self.code_bits, self.token_grid = next(iter(geometry))
        self.time_chunk = opened.time_chunk
        self.sample_dims = opened.sample_dims
        self.sample_coords = {d: opened.coord(d) for d in self.sample_dims}
        self.sample_shape = tuple(len(v) for v in self.sample_coords.values())
        self.latitude = opened.coord("latitude")
        self.longitude = opened.coord("longitude")
        all_times = opened.times
        self.start, self.stop = _time_bounds(all_times, time, self.path)
        self.times: np.ndarray = all_times[self.start:self.stop]
        if lead_times is None:
            self.leads: tuple[int, ...] = ()
        else:
            self.leads = (lead_times,) if isinstance(lead_times, int) else tuple(lead_times)
            if not self.leads or any(not isinstance(k, int) or k < 1 for k in self.leads):
                raise OptionError(f"lead_times={lead_times!r}: expected a positive number of "
                                  "time steps, or a non-empty sequence of them")
        self._single_lead = isinstance(lead_times, int)
        self.n_inputs = len(self.times) - (max(self.leads) if self.leads else 0)
        if self.n_inputs < 1:
            raise OptionError(f"lead_times {list(self.leads)} reach past the {len(self.times)} "
                              f"selected time step(s) of {self.path}; select more times")
        self.samples_per_time = int(np.prod(self.sample_shape, dtype=np.int64))
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache_min = len(self.specs) * (2 + len(self.leads))
        self._cached = 0
        self._pid: int | None = None
        self._arrays: dict[str, zarr.Array[Any]] = {}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._lut: tuple[np.ndarray, np.dtype[Any] | None] | None = None

    # -- shape --------------------------------------------------------------------------
    @property
    def groups(self) -> list[str]:
        return list(self.specs)

    @property
    def channels(self) -> dict[str, list[str]]:
        """Channel codes per group (what each group's tokens encode)."""
        return {g: list(s.channels) for g, s in self.specs.items()}

    @property
    def item_shape(self) -> tuple[int, int, int, int]:
        return (len(self.specs), self.code_bits, *self.token_grid)

    def __len__(self) -> int:
        return self.n_inputs * self.samples_per_time

    def locate(self, index: int) -> tuple[int, tuple[int, ...]]:
        """Item ``index`` -> (time index in :attr:`times`, index along each sample dim)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        t, s = divmod(index, self.samples_per_time)
        return t, tuple(int(i) for i in np.unravel_index(s, self.sample_shape))

    # -- reading ------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_pid=None, _arrays={}, _cache=OrderedDict(), _cached=0)  # no open handles
        return state

    def _array(self, group: str) -> zarr.Array[Any]:
        if self._pid != os.getpid():  # first use, or a new (worker) process: open our own
            root = zarr.open_group(self.path, mode="r", zarr_format=3)
            self._arrays = {}
            for g in self.specs:
                self._arrays[g] = array(root, codes_name(g))
            self._cache.clear()
            self._cached = 0
            self._pid = os.getpid()
        return self._arrays[group]

    def _chunk(self, group: str, c: int) -> np.ndarray:
        key = (group, c)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        arr = self._array(group)
        data = np.asarray(arr[c * self.time_chunk:(c + 1) * self.time_chunk])
        self._cache[key] = data
        self._cached += data.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > self._cache_min:
            self._cached -= self._cache.popitem(last=False)[1].nbytes
        return data

    def _frame(self, t: int, sample: tuple[int, ...]) -> torch.Tensor:
        """Codes at time index ``t`` (of :attr:`times`): ``(group, bits, h, w)``."""
        ts = self.start + t
        c, r = divmod(ts, self.time_chunk)
        packed = np.stack([self._chunk(g, c)[(r,) + sample] for g in self.specs])  # (G, h, w, B)
        # unpack and convert in one table lookup, in numpy: element-wise torch ops on small
        # tensors wake torch's thread pool per item, which is slow in the main process
        lut, np_dtype = self._lookup()
        g, h, w, nbytes = packed.shape
        values = lut[packed].reshape(g, h, w, nbytes * 8)[..., :self.code_bits]  # MSB first
        x = torch.from_numpy(np.ascontiguousarray(values.transpose(0, 3, 1, 2)))
        return x if np_dtype is not None else x.to(self.dtype)

    def _lookup(self) -> tuple[np.ndarray, np.dtype[Any] | None]:
        """Byte -> its 8 bits as values of the item dtype (``pm1`` or ``01``), built once."""
        if self._lut is None:
            try:
                np_dtype: np.dtype[Any] | None = torch.empty(0, dtype=self.dtype).numpy().dtype
            except TypeError:  # no numpy twin (bfloat16): build float32, convert in torch
                np_dtype = None
            bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # (256, 8)
            table = bits.astype(np.float32) * 2 - 1 if self.bits == "pm1" else bits
            self._lut = (table.astype(np_dtype or np.float32), np_dtype)
        return self._lut

    def __getitem__(self, index: int) -> Item:
        t, sample = self.locate(index)
        x = self._frame(t, sample)
        if not self.leads:
            return x
        targets = [self._frame(t + k, sample) for k in self.leads]
        return x, (targets[0] if self._single_lead else torch.stack(targets))

    # -- back to codes ------------------------------------------------------------------
    def to_latent(self, codes: torch.Tensor | np.ndarray, time: Any) -> xr.Dataset:
        """Codes ``(N, *sample_shape, group, bits, h, w)`` at ``time`` (N times) -> latent Dataset.

        ``codes`` are in this dataset's convention (``pm1`` or ``01``; thresholded at 0 or 0.5,
        so clipped regressions work too) or boolean (e.g. ``logits > 0``). The result is what
        :func:`era5latent.decode` takes (with the model the store was made with).
        """
        arr = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
        times = np.atleast_1d(np.asarray(time, dtype="datetime64[ns]"))
        want = (len(times), *self.sample_shape, *self.item_shape)
        if arr.shape != want:
            raise OptionError(f"codes of shape {arr.shape}: expected {want} (time, "
                              f"{', '.join(self.sample_dims) + ', ' if self.sample_dims else ''}"
                              "group, bits, token_lat, token_lon)")
        on = arr if arr.dtype == np.bool_ else arr > (0.0 if self.bits == "pm1" else 0.5)
        on = np.moveaxis(on, -3, -1)  # (..., G, h, w, K)
        packed = np.packbits(on, axis=-1)  # MSB first, as the store
        lead = 1 + len(self.sample_shape)
        out = {g: np.ascontiguousarray(packed[(slice(None),) * lead + (i,)])
               for i, g in enumerate(self.specs)}
        meta = {**self.meta, "groups": {g: self.meta["groups"][g] for g in self.specs},
                "complete": True}
        return latent_dataset(out, meta, times, self.sample_coords, self.latitude,
                               self.longitude)

    def __repr__(self) -> str:
        pairs = f", lead_times={list(self.leads)}" if self.leads else ""
        return (f"LatentDataset({self.path!r}, groups={self.groups}, {len(self)} items of "
                f"{self.item_shape}, bits={self.bits!r}{pairs})")


def _time_bounds(times: np.ndarray, time: str | slice | None, path: str) -> tuple[int, int]:
    n = len(times)
    if time is None:
        return 0, n
    if isinstance(time, slice):
        start, stop, step = time.indices(n)
        if step != 1:
            raise OptionError(f"time={time!r}: expected a slice without a step")
        if stop <= start:
            raise OptionError(f"time={time!r} selects no time step of {path} ({n} steps)")
        return start, stop
    return time_index_range(times, time, path)
