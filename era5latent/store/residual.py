"""The residual layer's arrays in a latent store: names, layout, and chunk reads and writes.

Per group ``G`` (docs/format.md, version 3), in the store's subgroup ``residual`` (which plain
``xr.open_zarr`` of the store does not read; ``xr.open_zarr(store, group="residual")`` does):
``residual/streams_G`` (uint8 rows, one per time chunk, the channels' streams concatenated in
channel order, then zeros), ``residual/nbytes_G`` (int64 stream lengths per channel) and
``residual/sha256_G`` (sha256 of a row's lengths and streams). The
store's IO for the layer lives here; the numbers are made in :mod:`era5latent.pipeline.residual.core`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
from zarr.codecs import ZstdCodec

from era5latent.errors import StoreError
from era5latent.io.zarrio import CRC, write_rows
from era5latent.store.arrays import CorruptArrayError, CorruptChunkError, read_array
from era5latent.store.layout import RESIDUAL
from era5latent.store.spec import StoreSpec, StoreView

STREAMS, LENGTHS, SUMS = f"{RESIDUAL}/streams_", f"{RESIDUAL}/nbytes_", f"{RESIDUAL}/sha256_"


def residual_name(group: str) -> str:
    """The residual byte streams of a group: ``(time_chunk, byte)`` uint8, one row per chunk."""
    return STREAMS + group


def residual_arrays(group: str) -> list[str]:
    return [STREAMS + group, LENGTHS + group, SUMS + group]


def residual_capacity(per_channel_values: int) -> int:
    """Bytes a row reserves per channel: twice the chunk's float32 size plus room for a header
    (an error-bounded stream of noise at a tiny bound can exceed the raw size; the unused tail
    is zeros, which zstd stores in a few bytes)."""
    return 2 * 4 * per_channel_values + 4096


def residual_layout(n_channels: int, time_chunk: int, sample: tuple[int, ...], n_lat: int,
                    n_lon: int, n_chunks: int) -> list[tuple[str, tuple[int, int]]]:
    """(array name prefix, shape) of a group's three arrays; each is chunked ``(1, shape[1])``."""
    per_channel = time_chunk * int(np.prod(sample, dtype=np.int64)) * n_lat * n_lon
    return [(STREAMS, (n_chunks, n_channels * residual_capacity(per_channel))),
            (LENGTHS, (n_chunks, n_channels)), (SUMS, (n_chunks, 32))]


def residual_digest(lengths: np.ndarray, row: np.ndarray) -> bytes:
    """The sha256 recorded for a row: over its lengths (int64 little-endian) and the streams
    (the row's first ``sum(lengths)`` bytes)."""
    n = int(np.sum(lengths))
    h = hashlib.sha256(np.ascontiguousarray(lengths, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(row[:n], dtype=np.uint8).tobytes())
    return h.digest()


def create_residual_arrays(create_array: Callable[..., Any], spec: StoreSpec,
                           sample_shape: tuple[int, ...]) -> None:
    """Lay out every group's residual arrays (``create_array`` as in ``era5latent.store.core._create``)."""
    if spec.residual is None:
        return
    for g in spec.groups:
        n_ch = len(g.channels)
        (_, streams), (_, lengths), (_, sums) = residual_layout(
            n_ch, spec.time_chunk, sample_shape, len(spec.latitude), len(spec.longitude),
            spec.n_chunks)
        create_array(
            STREAMS + g.name, shape=streams, chunks=(1, streams[1]), dtype="uint8",
            dimension_names=("time_chunk", f"byte_{g.name}"),
            compressors=[ZstdCodec(level=1), CRC],
            fill_value=0,
            attributes={"group": g.name, "channels": list(g.channels),
                        "codec": spec.residual["codec"],
                        "description": "per time chunk: the channels' error-bounded residual "
                                       "streams, concatenated in channel order (lengths in "
                                       f"{LENGTHS + g.name}), zero-padded"})
        create_array(
            LENGTHS + g.name, shape=lengths, chunks=(1, n_ch), dtype="int64",
            dimension_names=("time_chunk", f"channel_{g.name}"), compressors=[CRC],
            fill_value=0,
            attributes={"channels": list(g.channels),
                        "description": "bytes of each channel's residual stream (0: none)"})
        create_array(
            SUMS + g.name, shape=sums, chunks=(1, 32), dtype="uint8",
            dimension_names=("time_chunk", "sha256"), compressors=[CRC], fill_value=0,
            attributes={"description": "sha256 of each time chunk's residual lengths (int64 "
                                       "LE) and streams, set at write time"})


def write_residual(store: StoreView, g: str, channels: tuple[str, ...], i: int,
                   streams: dict[str, bytes]) -> None:
    """Row ``i`` of group ``g``: streams by channel code (absent: no residual), lengths, sha256."""
    arr = store.array(STREAMS + g)
    lengths = np.array([len(streams.get(c, b"")) for c in channels], dtype=np.int64)
    cap = arr.shape[1]
    if int(lengths.sum()) > cap:  # far above any stream seen; say so rather than truncate
        raise StoreError(f"{store.path}: the residuals of group {g}, time chunk {i}, take "
                         f"{int(lengths.sum())} bytes, more than the {cap} reserved; give a "
                         "larger --max-error (or --residual-codec sz3)")
    row = np.zeros(cap, dtype=np.uint8)
    data = b"".join(streams.get(c, b"") for c in channels)
    row[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    write_rows(arr, i, i + 1, row)
    write_rows(store.array(LENGTHS + g), i, i + 1, lengths)
    write_rows(store.array(SUMS + g), i, i + 1,
               np.frombuffer(residual_digest(lengths, row), dtype=np.uint8))


def read_residual(store: StoreView, group: str, i: int) -> dict[str, bytes]:
    """The streams of time chunk ``i`` of ``group`` by channel code (channels without a
    residual absent), verified against their sha256: a :class:`CorruptChunkError` naming the
    damaged array otherwise."""
    channels = store.groups[group].channels
    try:
        lengths = np.asarray(read_array(store.array(LENGTHS + group), i, store.path),
                             dtype=np.int64)
        row = np.asarray(read_array(store.array(STREAMS + group), i, store.path),
                         dtype=np.uint8)
        want = bytes(np.asarray(read_array(store.array(SUMS + group), i, store.path),
                                dtype=np.uint8))
    except CorruptArrayError as err:
        raise CorruptChunkError(store.path, group, i, err.why, err.name) from None
    if lengths.shape != (len(channels),) or (lengths < 0).any() or \
            int(lengths.sum()) > row.size or residual_digest(lengths, row) != want:
        raise CorruptChunkError(store.path, group, i, "checksum mismatch", STREAMS + group)
    out: dict[str, bytes] = {}
    pos = 0
    for c, n in zip(channels, lengths.tolist()):
        if n:
            out[c] = row[pos:pos + n].tobytes()
        pos += n
    return out
