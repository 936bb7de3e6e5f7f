"""How much of its capacity a latent code uses: the entropy per stored bit, and bytes per value.

A stored code bit is one (token position, bit index) of a group's codes. Over the samples of a
store (time steps, and members where there are several) each such bit is 1 with some frequency
``p``; its binary entropy ``H(p) = -p log2 p - (1 - p) log2 (1 - p)`` is the information it can
carry per sample, at most 1 bit. The **entropy per stored bit** is the mean of ``H(p)`` over every
token position and bit index: 1 when every bit is a fair coin, 0 when every bit is constant (it
then carries nothing, and zstd removes it on disk). It is a first-order measure: it does not see
correlations between bits, so a store can compress below ``entropy per stored bit x raw size``.

Counted per group, streamed one time chunk at a time (a few bytes of counts per stored bit).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from era5latent.errors import Era5LatentError

__all__ = ["BitCounts", "binary_entropy", "entropy_per_bit", "store_usage", "with_usage"]


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Elementwise ``H(p)`` in bits; 0 at p = 0 and p = 1."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.where((p > 0) & (p < 1), h, 0.0)


class BitCounts:
    """Per stored bit, how many samples had it set; fed packed or unpacked codes."""

    def __init__(self) -> None:
        self.ones: np.ndarray | None = None  # int64 (h, w, K)
        self.n = 0

    def add_bits(self, bits: np.ndarray) -> None:
        """Bool codes ``(..., h, w, K)``: every leading index is a sample."""
        bits = np.asarray(bits, dtype=bool)
        flat = bits.reshape(-1, *bits.shape[-3:])
        ones = flat.sum(axis=0, dtype=np.int64)
        self.ones = ones if self.ones is None else self.ones + ones
        self.n += flat.shape[0]

    def add_packed(self, packed: np.ndarray, code_bits: int) -> None:
        """Packed codes ``(..., h, w, K/8)`` uint8, MSB first (the store's form)."""
        self.add_bits(np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=-1)[..., :code_bits])

    def entropy(self) -> float:
        """Mean binary entropy per stored bit (NaN before any sample)."""
        if self.ones is None or self.n == 0:
            return float("nan")
        return float(binary_entropy(self.ones / self.n).mean())

    def constant_fraction(self) -> float:
        """Fraction of stored bits that never changed over the samples."""
        if self.ones is None or self.n == 0:
            return float("nan")
        return float(((self.ones == 0) | (self.ones == self.n)).mean())


def entropy_per_bit(bits: np.ndarray) -> float:
    """Mean entropy per stored bit of bool codes ``(samples..., h, w, K)``."""
    counts = BitCounts()
    counts.add_bits(bits)
    return counts.entropy()


#: ``info`` reads at most this many time chunks, evenly spread, for the entropy (a store of
#: decades would otherwise be read whole); the sizes on disk are always the whole store's
INFO_CHUNKS = 32


def store_usage(path: str, max_chunks: int | None = None) -> dict[str, dict[str, Any]]:
    """Per group of the latent store at ``path``: ``entropy_per_bit``, ``constant_bits`` (the
    fraction of stored bits that never change), ``bytes_per_value`` (codes on disk over the
    values the group's channels hold), ``raw_bytes_per_value`` (the packed codes without zstd),
    ``code_bits`` and ``samples``. Only written time chunks are read; their checksums are
    checked (a damaged chunk is a :class:`~era5latent.errors.CorruptChunkError`)."""
    from era5latent.store.core import open_latent_store

    store = open_latent_store(path)
    done = store.done()
    lat_n = store.array("latitude").shape[0]
    lon_n = store.array("longitude").shape[0]
    on_disk = store.nbytes_on_disk()
    out: dict[str, dict[str, Any]] = {}
    for g, spec in store.groups.items():
        code_bits = int(spec.code_bits)
        counts = BitCounts()
        written = np.flatnonzero(done)
        read = written if max_chunks is None or len(written) <= max_chunks else \
            written[np.unique(np.linspace(0, len(written) - 1, max_chunks).round().astype(int))]
        skipped = 0
        for i in read:
            try:
                counts.add_packed(store.read_chunk(g, int(i)), code_bits)
            except Era5LatentError:  # a damaged chunk: verify reports it; the rest still count
                skipped += 1
        arr = store.codes(g)
        per_time = int(np.prod(arr.shape[1:], dtype=np.int64))  # packed bytes per time step
        steps = sum(b - a for a, b in (store.chunk_bounds(int(i)) for i in np.flatnonzero(done)))
        samples_per_time = per_time // (int(np.prod(arr.shape[-3:-1])) * arr.shape[-1])
        values = steps * samples_per_time * len(spec.channels) * lat_n * lon_n
        out[g] = {"entropy_per_bit": counts.entropy(),
                  "constant_bits": counts.constant_fraction(),
                  "bytes_per_value": on_disk[g] / values if values else float("nan"),
                  "raw_bytes_per_value": steps * per_time / values if values else float("nan"),
                  "code_bits": code_bits, "samples": counts.n, "chunks_read": len(read) - skipped,
                  "chunks_unreadable": skipped}
    return out


def with_usage(info: dict[str, Any], path: str) -> dict[str, Any]:
    """``info``'s summary (``store.summary``) with each group's code usage added
    (``entropy_per_bit``, ``constant_bits``, ``bytes_per_value``, ``raw_bytes_per_value``,
    ``entropy_samples``), from at most :data:`INFO_CHUNKS` time chunks."""
    usage = store_usage(path, INFO_CHUNKS)
    for g in info["groups"]:
        u = usage[g["group"]]
        g.update({k: u[k] for k in ("entropy_per_bit", "constant_bits", "bytes_per_value",
                                    "raw_bytes_per_value", "chunks_unreadable")},
                 entropy_samples=u["samples"])
    return info
