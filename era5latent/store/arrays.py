"""A latent store's arrays read chunk by chunk, and the errors that name a damaged chunk."""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from era5latent.errors import StoreError
from era5latent.fsutil import os_error_of
from era5latent.io.zarrio import read_rows
from era5latent.store.layout import codes_name


def read_array(arr: zarr.Array[Any], sel: Any, where: str) -> np.ndarray:
    """``arr[sel]``; a chunk that fails its crc32c or cannot be decoded is a
    :class:`CorruptArrayError` naming the array (and chunk, when ``sel`` is one index)."""
    try:
        return _read(arr, sel)
    except (OSError, MemoryError):
        raise
    except Exception as err:
        os_err = os_error_of(err)
        if os_err is not None:
            raise os_err from None
        chunk = f"chunk {sel // arr.chunks[0]}" if isinstance(sel, int) else _bad_chunk(arr, sel)
        raise CorruptArrayError(where, arr.path or "?", chunk, why_unreadable(err)) from None


def _read(arr: zarr.Array[Any], sel: Any) -> np.ndarray:
    """``arr[sel]``; one index of an array chunked row by row, or a slice that is one whole
    chunk, read from its file (:func:`era5latent.io.zarrio.read_rows`)."""
    if arr.ndim and isinstance(sel, (int, np.integer)) and arr.chunks[0] == 1 and \
            0 <= sel < arr.shape[0]:
        row: np.ndarray = read_rows(arr, int(sel), int(sel) + 1)[0]
        return row
    if arr.ndim and isinstance(sel, slice) and sel.step in (None, 1):
        lo, hi, _ = sel.indices(arr.shape[0])
        if hi - lo == arr.chunks[0] and lo % arr.chunks[0] == 0:
            return read_rows(arr, lo, hi)
    out: np.ndarray = np.asarray(arr[sel])
    return out


def _bad_chunk(arr: zarr.Array[Any], sel: Any) -> str:
    """Which chunk (along the first axis) of a failed read of ``arr[sel]`` is damaged."""
    if arr.ndim == 0:
        return "chunk 0"
    lo, hi, _ = (sel if isinstance(sel, slice) else slice(None)).indices(arr.shape[0])
    c0 = arr.chunks[0]
    for i in range(lo // c0, -(-hi // c0)):
        try:
            arr[i * c0:(i + 1) * c0]
        except Exception:
            return f"chunk {i}"
    return "a chunk"


def why_unreadable(err: BaseException) -> str:
    text = str(err)
    if "checksum" in text.lower():
        return "crc32c mismatch"
    return f"unreadable: {type(err).__name__}"


class CorruptArrayError(StoreError):
    """A chunk of a store's array fails its crc32c or cannot be decoded."""

    def __init__(self, path: str, name: str, chunk: str, why: str) -> None:
        self.path, self.name, self.chunk, self.why = path, name, chunk, why
        super().__init__(f"{path}: {chunk} of array {name} is corrupt ({why}); the store is "
                         "damaged: re-encode it (era5latent verify lists every damaged chunk)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.name, self.chunk, self.why))


class CorruptChunkError(StoreError):
    """A time chunk's codes (or residuals) cannot be read or do not match their checksum."""

    def __init__(self, path: str, group: str, chunk: int, why: str, array: str = "") -> None:
        self.path, self.group, self.chunk, self.why = path, group, chunk, why
        self.array = array or codes_name(group)
        super().__init__(f"{path}: time chunk {chunk} of group {group} ({self.array}) is corrupt "
                         f"({why}); re-encode that time range, or decode with --allow-corrupt to "
                         "fill it with NaN")

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt intact where Dask hands it back
        return (type(self), (self.path, self.group, self.chunk, self.why, self.array))
