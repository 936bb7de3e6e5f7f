"""Reading a local Zarr source's chunk files directly, for sources cut into many small chunks.

A WeatherBench 2 store holds one time step per chunk, so a 32-step read of three variables is
96 chunks. zarr-python spends Python on each chunk (its indexers and its event loop), which
holds the GIL and stalls the model thread beside the reader. On the tiny benchmark's 73 x 144
source, a 32-step read of five channels took 24-26 ms of CPU and kept the GIL from another
thread for 11-13 ms; read here, 16.5 ms and none (``benchmarks/paired_experiments.py stalls``
with ``ERA5LATENT_DIRECT_READS`` 0 and 1).

:func:`open_array` reads an array's own metadata (Zarr v2 or v3). Where its chunks are plain
(floating point, one of the common compressors, no sharding or array-to-array codecs, at most
:data:`MAX_CHUNK_BYTES`), :meth:`ArrayFiles.read` reads a box of it with one
``open``/``read``/``decode`` per chunk: numcodecs decompresses without the GIL, and nothing else
runs per chunk. A missing chunk file is the array's fill value, as in zarr. Anything else is
None, and the caller reads through xarray and zarr-python (with zarrs).

It runs in the calling thread: it is for a reader beside a model on the CPU, where the read's
CPU and GIL time are what count. Where its wall time counts instead (a model on a GPU waiting
for data), zarrs' decompression on every core is faster (a 32-step 1-degree read: 42-52 ms
against 62-64 ms on two cores, ``paired_experiments.py read-paths --grid 181x360``), and the
pipeline turns this path off
(:meth:`era5latent.io.sources.Source.use_direct_reads`).

What the box holds is the caller's to check (:meth:`era5latent.io.sources.Source.read` compares
its first direct read with xarray's before it relies on this path).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the largest decoded chunk read here. zarr-python's Python costs about 0.1 ms a chunk (24-26
#: against 16.5 ms of CPU for 96 chunks): as much as decompressing a 73 x 144 chunk, a
#: twentieth of a 1 MiB one (zstd, about 0.6 GB/s here). Larger chunks (a 721 x 1440 field is
#: 4 MB) stay with zarrs, which decompresses them in Rust on every core
MAX_CHUNK_BYTES = 1 << 20

#: Zarr v2 compressors (numcodecs ids) and Zarr v3 bytes-to-bytes codecs read here
_V2_COMPRESSORS = ("zstd", "blosc", "lz4", "zlib", "gzip")
_V3_COMPRESSORS = ("zstd", "blosc", "gzip")  # then an optional crc32c

Selection = slice | np.ndarray  # a range of indices (step 1), or indices


@dataclass(frozen=True)
class ArrayFiles:
    """A local Zarr array whose chunks this module decodes itself."""

    root: str  # the array's directory
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]  # as stored (byte order included)
    fill_value: float
    dims: tuple[str, ...]  # the array's dimension names
    key: Callable[[tuple[int, ...]], str]  # chunk index -> file path below ``root``
    compressor: Any  # a numcodecs codec, or None: chunks are raw bytes
    crc32c: bool  # each chunk ends in a CRC-32C of the bytes before it (Zarr v3's crc32c codec)

    def read(self, sel: Sequence[Selection]) -> np.ndarray:
        """``array[sel]`` as float32, one selection per dimension: a slice with step 1, or an
        integer array of indices."""
        sel = [np.asarray(s, dtype=np.int64) if not isinstance(s, slice) else
               slice(*s.indices(n)) for s, n in zip(sel, self.shape)]
        out = np.empty([s.stop - s.start if isinstance(s, slice) else s.size for s in sel],
                       dtype=np.float32)
        spans = [_chunk_spans(s, c) for s, c in zip(sel, self.chunks)]
        for parts in itertools.product(*spans):
            chunk = self._chunk(tuple(p[0] for p in parts))
            out[tuple(p[2] for p in parts)] = chunk[tuple(p[1] for p in parts)]
        return out

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        """Chunk ``index`` decoded; a missing file is the fill value. A damaged one raises
        ``ValueError`` (or the decompressor's own error)."""
        path = os.path.join(self.root, self.key(index))
        try:
            with open(path, "rb") as f:
                data: Any = f.read()
        except FileNotFoundError:
            return np.full(self.chunks, self.fill_value, dtype=np.float32)
        if self.crc32c:
            data = strip_crc32c(data, path)
        if self.compressor is not None:
            data = self.compressor.decode(data)
        got, want = memoryview(data).nbytes, self.nbytes
        if got != want:
            raise ValueError(f"{path}: the chunk decodes to {got} bytes, not the {want} its "
                             "shape holds")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.chunks)

    @functools.cached_property
    def nbytes(self) -> int:
        """The bytes of one decoded chunk."""
        return int(np.prod(self.chunks)) * self.dtype.itemsize


def strip_crc32c(data: Any, path: str) -> Any:
    """A chunk's bytes (``bytes`` or a uint8 array) without the CRC-32C that Zarr v3's crc32c
    codec appends, checked; a ``ValueError`` saying "checksum" (zarr-python's word, which
    :func:`era5latent.store.arrays.why_unreadable` reads) where it does not match."""
    import google_crc32c

    body, stored = data[:-4], bytes(data[-4:])
    if len(stored) < 4 or google_crc32c.value(body) != int.from_bytes(stored, "little"):
        raise ValueError(f"{path}: stored and computed checksum do not match")
    return body


def _chunk_spans(sel: Selection, size: int) -> list[tuple[int, Selection, Selection]]:
    """The chunks (of ``size`` along one dimension) that ``sel`` touches: for each, its index,
    what to take inside it, and where that goes in the output."""
    if isinstance(sel, slice):
        a, b = sel.start, sel.stop
        return [(c, slice(max(a, c * size) - c * size, min(b, (c + 1) * size) - c * size),
                 slice(max(a, c * size) - a, min(b, (c + 1) * size) - a))
                for c in range(a // size, -(-b // size))]
    out: list[tuple[int, Selection, Selection]] = []
    for c in np.unique(sel // size):
        pos = np.flatnonzero(sel // size == c)
        out.append((int(c), sel[pos] - int(c) * size, pos))
    return out


def open_array(path: str) -> ArrayFiles | None:
    """The array at local directory ``path`` if its chunks can be read here, else None
    (anything unreadable or unusual included: the caller's reader then says what is wrong)."""
    try:
        if os.path.isfile(os.path.join(path, "zarr.json")):
            with open(os.path.join(path, "zarr.json"), encoding="utf-8") as f:
                return _v3(path, json.load(f))
        if os.path.isfile(os.path.join(path, ".zarray")):
            with open(os.path.join(path, ".zarray"), encoding="utf-8") as f:
                meta = json.load(f)
            attrs: dict[str, Any] = {}
            if os.path.isfile(os.path.join(path, ".zattrs")):
                with open(os.path.join(path, ".zattrs"), encoding="utf-8") as f:
                    attrs = json.load(f)
            return _v2(path, meta, attrs)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return None


def _float_dtype(text: str) -> np.dtype[Any] | None:
    dt = np.dtype(text)
    return dt if dt.kind == "f" and dt.itemsize in (4, 8) else None


def _fill(value: Any) -> float | None:
    """A chunk file's absence as a value (None: left to zarr, e.g. Zarr v2's null, whose
    meaning readers disagree on)."""
    if value == "NaN":
        return float("nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None  # "Infinity", hex strings: rare enough to leave to zarr


def _plain(shape: Sequence[int], chunks: Sequence[int], dims: Sequence[Any],
           dtype: np.dtype[Any]) -> bool:
    return (len(shape) == len(chunks) == len(dims) > 0 and all(c > 0 for c in chunks)
            and all(isinstance(d, str) for d in dims)
            and int(np.prod(chunks)) * dtype.itemsize <= MAX_CHUNK_BYTES)


def _v3(path: str, meta: dict[str, Any]) -> ArrayFiles | None:
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or \
            meta.get("storage_transformers") or meta["chunk_grid"]["name"] != "regular":
        return None
    base = {"float32": "f4", "float64": "f8"}.get(meta["data_type"])
    codecs = meta["codecs"]
    if base is None or not codecs or codecs[0]["name"] != "bytes":
        return None
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    dtype = _float_dtype(("<" if endian == "little" else ">") + base)
    shape = tuple(meta["shape"])
    chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    dims = tuple(meta.get("dimension_names") or ())
    fill = _fill(meta.get("fill_value"))
    if dtype is None or fill is None or not _plain(shape, chunks, dims, dtype):
        return None
    names = [c["name"] for c in codecs[1:]]
    crc = names[-1:] == ["crc32c"]
    rest = names[:-1] if crc else names
    if len(rest) > 1 or (rest and rest[0] not in _V3_COMPRESSORS):
        return None
    compressor = None
    if rest:
        import numcodecs

        # decoding needs no level: zstd and blosc frames describe themselves
        compressor = {"zstd": numcodecs.Zstd, "blosc": numcodecs.Blosc,
                      "gzip": numcodecs.GZip}[rest[0]]()
    enc = meta.get("chunk_key_encoding", {"name": "default"})
    sep = str(enc.get("configuration", {}).get("separator",
                                                "/" if enc["name"] == "default" else "."))
    if enc["name"] not in ("default", "v2"):
        return None
    prefix = ("c",) if enc["name"] == "default" else ()

    def key(index: tuple[int, ...]) -> str:
        return sep.join((*prefix, *map(str, index)))

    return ArrayFiles(path, shape, chunks, dtype, fill, dims, key, compressor, crc)


def _v2(path: str, meta: dict[str, Any], attrs: dict[str, Any]) -> ArrayFiles | None:
    if meta.get("zarr_format") != 2 or meta.get("filters") or meta.get("order", "C") != "C":
        return None
    dtype = _float_dtype(meta["dtype"]) if isinstance(meta["dtype"], str) else None
    shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
    dims = tuple(attrs.get("_ARRAY_DIMENSIONS") or ())
    fill = _fill(meta.get("fill_value"))
    if dtype is None or fill is None or not _plain(shape, chunks, dims, dtype):
        return None
    comp = meta.get("compressor")
    compressor = None
    if comp is not None:
        if comp.get("id") not in _V2_COMPRESSORS:
            return None
        import numcodecs

        compressor = numcodecs.get_codec(dict(comp))
    sep = meta.get("dimension_separator", ".")

    def key(index: tuple[int, ...]) -> str:
        return str(sep).join(map(str, index))

    return ArrayFiles(path, shape, chunks, dtype, fill, dims, key, compressor, False)
