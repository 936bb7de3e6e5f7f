"""The streaming join: rows spilled per output chunk, duplicates resolved, chunks assembled;
and the exact PCA fitted from a streamed covariance."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from era5latent.embed.grid import N_LAT, N_LON, Grid
from era5latent.embed.options import ProgressFn
from era5latent.embed.readers import InputSource
from era5latent.errors import EmbedMapError


class Spill:
    """Append-only per-chunk files: ``k.idx`` (int32 cell, int32 count) and ``k.vec`` (float32)."""

    def __init__(self, root: Path, grid: Grid, chunk_lat: int, chunk_lon: int) -> None:
        self.root = root
        self.grid = grid
        self.cl, self.cw = chunk_lat, chunk_lon
        self.n_cc = math.ceil(N_LON / chunk_lon)
        self.n_chunks = math.ceil(N_LAT / chunk_lat) * self.n_cc
        self.sizes = np.zeros(self.n_chunks, dtype=np.int64)
        root.mkdir(parents=True, exist_ok=True)

    def chunk_of(self, cells: np.ndarray) -> np.ndarray:
        r, c = self.grid.place(cells)
        return cast(np.ndarray, (r // self.cl) * self.n_cc + c // self.cw)

    def bounds(self, k: int) -> tuple[int, int, int, int]:
        r0, c0 = (k // self.n_cc) * self.cl, (k % self.n_cc) * self.cw
        return r0, min(N_LAT, r0 + self.cl), c0, min(N_LON, c0 + self.cw)

    def append(self, cells: np.ndarray, counts: np.ndarray, vecs: np.ndarray) -> None:
        keys = self.chunk_of(cells)
        order = np.argsort(keys, kind="stable")
        keys, cells, counts = keys[order], cells[order], counts[order]
        vecs = vecs[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)]
        for s, e in zip(starts, ends):
            k = int(keys[s])
            idx = np.empty((e - s, 2), dtype=np.int32)
            idx[:, 0], idx[:, 1] = cells[s:e], counts[s:e]
            with open(self.root / f"{k}.idx", "ab") as f:
                idx.tofile(f)
            with open(self.root / f"{k}.vec", "ab") as f:
                np.ascontiguousarray(vecs[s:e]).tofile(f)
            self.sizes[k] += e - s

    def records(self, k: int, dim: int, block: int) -> Iterator[tuple[np.ndarray, np.ndarray,
                                                                       np.ndarray]]:
        """(cells, counts, vectors) of chunk k, ``block`` records at a time."""
        n = int(self.sizes[k])
        with open(self.root / f"{k}.idx", "rb") as fi, open(self.root / f"{k}.vec", "rb") as fv:
            for s in range(0, n, block):
                m = min(block, n - s)
                idx = np.fromfile(fi, dtype=np.int32, count=2 * m).reshape(m, 2)
                vec = np.fromfile(fv, dtype=np.float32, count=m * dim).reshape(m, dim)
                yield idx[:, 0].astype(np.int64), idx[:, 1].astype(np.int64), vec


def _group_mean(keys: np.ndarray, counts: np.ndarray, vecs: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, summed counts, count-weighted sums float64) of rows sharing a key."""
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
    w = counts[order].astype(np.float64)
    sums = np.add.reduceat(vecs[order].astype(np.float64) * w[:, None], starts, axis=0)
    return ks[starts], np.add.reduceat(w, starts), sums


def dedupe(cells: np.ndarray, vecs: np.ndarray, rows: np.ndarray, si: int,
            first_at: np.ndarray, policy: str, sources: Sequence[InputSource]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Apply the duplicate policy to one batch: (cells, counts, vectors)."""
    tag = (np.int64(si) << 40) | rows
    uniq, first_idx = np.unique(cells, return_index=True)
    seen_before = first_at[uniq] >= 0
    in_batch_dups = len(uniq) != len(cells)
    if not in_batch_dups and not seen_before.any():
        first_at[cells] = tag
        return cells, np.ones(len(cells), np.int64), vecs
    if policy == "error":
        if seen_before.any():
            c = int(uniq[np.flatnonzero(seen_before)[0]])
            dup_row = int(rows[np.flatnonzero(cells == c)[0]])
            prev = int(first_at[c])
        else:
            mask = np.ones(len(cells), bool)
            mask[first_idx] = False
            k = int(np.flatnonzero(mask)[0])
            c, dup_row = int(cells[k]), int(rows[k])
            prev = int(tag[np.flatnonzero(cells == c)[0]])
        p_src, p_row = sources[prev >> 40].label, prev & ((1 << 40) - 1)
        raise EmbedMapError(
            f"{sources[si].label} row {dup_row}: duplicate grid id {c:07d} (first at {p_src} row "
            f"{p_row}); pass --duplicates first or --duplicates mean (or --aggregate mean for "
            "per-modality rows)")
    newly = uniq[~seen_before]
    first_at[newly] = tag[first_idx[~seen_before]]
    if policy == "first":
        keep = first_idx[~seen_before]
        keep.sort()
        return cells[keep], np.ones(len(keep), np.int64), vecs[keep]
    # mean: pre-reduce within the batch; chunks merge across batches later
    u, cnt, sums = _group_mean(cells, np.ones(len(cells), np.int64), vecs)
    return u, cnt.astype(np.int64), (sums / cnt[:, None]).astype(np.float32)


class Assembler:
    """Turns one chunk's spill into (local cell indices, final vectors float32)."""

    def __init__(self, spill: Spill, dim: int, merge: bool) -> None:
        self.spill, self.dim, self.merge = spill, dim, merge
        self.block = max(1024, (32 << 20) // (4 * dim))

    def chunk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        sp = self.spill
        r0, r1, c0, c1 = sp.bounds(k)
        width = c1 - c0
        if not self.merge:  # at most one record per cell: read whole (bounded by chunk size)
            (cells, _, vecs), = list(sp.records(k, self.dim, int(sp.sizes[k]) or 1))
            r, c = sp.grid.place(cells)
            return (r - r0) * width + (c - c0), vecs
        n_local = (r1 - r0) * width
        acc = np.zeros((n_local, self.dim), dtype=np.float64)
        cnt = np.zeros(n_local, dtype=np.float64)
        for cells, counts, vecs in sp.records(k, self.dim, self.block):
            r, c = sp.grid.place(cells)
            u, w, sums = _group_mean((r - r0) * width + (c - c0), counts, vecs)
            acc[u] += sums
            cnt[u] += w
        local = np.flatnonzero(cnt)
        return local, (acc[local] / cnt[local, None]).astype(np.float32)


def fit_pca(asm: Assembler, k: int, prog: ProgressFn) -> dict[str, Any]:
    """Exact PCA from a streamed, shifted D x D covariance over every valid cell."""
    dim = asm.dim
    todo = [c for c in range(asm.spill.n_chunks) if asm.spill.sizes[c]]
    ref = None
    n = 0
    s1 = np.zeros(dim, dtype=np.float64)
    s2 = np.zeros((dim, dim), dtype=np.float64)
    for i, c in enumerate(todo):
        _, x = asm.chunk(c)
        if ref is None:
            ref = x.mean(axis=0, dtype=np.float64).astype(np.float32)
        xc = x - ref
        n += len(xc)
        s1 += xc.sum(axis=0, dtype=np.float64)
        s2 += (xc.T @ xc).astype(np.float64)
        prog("pca", i + 1, len(todo))
    if n < 2:
        raise EmbedMapError(f"--pca needs at least 2 valid cells, found {n}")
    cov = (s2 - np.outer(s1, s1) / n) / (n - 1)
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    w, v = np.clip(w[::-1], 0, None), v[:, ::-1]
    comps = v[:, :k].T.copy()
    flip = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(flip == 0, 1, flip)[:, None]
    total = w.sum()
    return {"components": comps.astype(np.float32),
            "mean": (ref + s1 / n).astype(np.float32),  # type: ignore[operator]
            "variance": w[:k], "ratio": w[:k] / total if total > 0 else np.zeros(k), "n": n}
