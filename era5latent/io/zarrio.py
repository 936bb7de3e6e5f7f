"""Zarr helpers every era5latent writer shares (latent stores and decoded fields): the crc32c
codec that ends each array's codec chain, the CF time units, an array looked up with a one-line
error, whole-chunk writes that skip zarr-python's event loop, what zarr opens for a local path or
a URL, and metadata consolidation."""

from __future__ import annotations

import os
import uuid
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from era5latent.errors import StoreError
from era5latent.io.chunkread import strip_crc32c
from era5latent.io.zarrbytes import zstd_codec, encode_chunk
from era5latent.fsutil import is_url, url_fs

TIME_UNITS = "seconds since 1970-01-01T00:00:00"


#: the last bytes-to-bytes codec of every array era5latent writes (latent stores and decoded
#: fields): a 4-byte CRC-32C per chunk that zarr-python and zarrs check on every read, so a
#: damaged chunk of any array (coordinates and flags included) is an error, never wrong values
CRC = Crc32cCodec()


def array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of ``group``; a :class:`StoreError` if it is missing or a group."""
    try:
        node = group[name]
    except KeyError:
        raise StoreError(f"{group.store}: array {name!r} is missing; the store is damaged or not "
                         "an era5latent store") from None
    except Exception as err:  # its zarr.json is damaged: zarr raises whatever its parser does
        raise StoreError(f"{group.store}: the metadata of array {name!r} is unreadable "
                         f"({type(err).__name__}); the store is damaged: re-encode it") from None
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{group.store}: {name!r} is a group where an array was expected; the "
                         "store is damaged or not an era5latent store")
    return node


def write_rows(arr: zarr.Array[Any], a: int, b: int, value: np.ndarray) -> None:
    """``arr[a:b] = value``, written as one chunk file when ``a:b`` is exactly one whole chunk of
    a local Zarr v3 array of integers or bools, chunked along its first axis only, whose codecs
    are bytes, zstd and crc32c (the bookkeeping and code arrays of a latent store).

    The file holds zarr-python's bytes (the same numcodecs zstd, the same crc32c, an all-fill
    chunk deleted as ``write_empty_chunks=False`` does; ``tests/test_zarrio.py`` compares them)
    and is renamed into place as zarr-python's LocalStore does. What it skips is zarr-python's
    round trip through its event-loop thread, about 2 ms of CPU per write, most of it Python
    that holds the GIL: the seven writes per time chunk of a three-group encode took 16-17 ms of
    CPU and now take 4-5 ms (``benchmarks/paired_experiments.py stalls``). Anything
    else (a URL, a partial last chunk, other codecs or dtypes) goes through zarr-python."""
    path = _chunk_file(arr, a, b)
    if path is None:
        arr[a:b] = np.asarray(value).reshape((b - a, *arr.shape[1:]))
        return
    value = np.asarray(value).reshape(arr.chunks)
    if not arr.config.write_empty_chunks and bool((value == arr.metadata.fill_value).all()):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return
    data = encode_chunk(value, np.dtype(arr.dtype), _codecs(arr))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    replace_file(path, data)


def replace_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` as zarr-python's LocalStore does: to a temporary name beside it
    (``*.partial``, which a resumed encode clears), then renamed into place, so a reader sees
    the old file or the new one, never part of one."""
    tmp = f"{path}.{uuid.uuid4().hex}.partial"  # zarr-python's own temporary name
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_rows(arr: zarr.Array[Any], a: int, b: int) -> np.ndarray:
    """``arr[a:b]``, read from its one chunk file where :func:`write_rows` would write it: a
    missing file is fill values, a crc32c that does not match raises a ``ValueError`` saying
    "checksum" (zarr-python's word, which :func:`era5latent.store.arrays.why_unreadable`
    reads), as does a chunk that decodes to the wrong size. Anything else goes through
    zarr-python."""
    path = _chunk_file(arr, a, b)
    if path is None:
        return np.asarray(arr[a:b])
    try:
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), dtype=np.uint8)
    except FileNotFoundError:
        return np.full(arr.chunks, arr.metadata.fill_value, dtype=arr.dtype)
    for spec in reversed(_codecs(arr)[1:]):
        if spec["name"] == "zstd":
            data = np.frombuffer(zstd_codec(**spec["configuration"]).decode(data), dtype=np.uint8)
            continue
        data = strip_crc32c(data, path)
    dtype = np.dtype(arr.dtype)
    if data.size != int(np.prod(arr.chunks)) * dtype.itemsize:
        raise ValueError(f"{path}: the chunk decodes to {data.size} bytes, not the "
                         f"{int(np.prod(arr.chunks)) * dtype.itemsize} its shape holds")
    out: np.ndarray = data.view(dtype.newbyteorder("<")).reshape(arr.chunks).astype(dtype)
    return out


#: the codec chains :func:`write_rows` writes itself (after the bytes codec)
_DIRECT_CODECS = {("zstd", "crc32c"), ("crc32c",), ("zstd",), ()}


def _codecs(arr: zarr.Array[Any]) -> list[dict[str, Any]]:
    """The codec chain of a Zarr v3 array, each as its metadata document says it."""
    return [dict(cast(Any, c).to_dict()) for c in getattr(arr.metadata, "codecs", ())]


def _chunk_file(arr: zarr.Array[Any], a: int, b: int) -> str | None:
    """The file of chunk ``a:b`` of ``arr`` when :func:`write_rows` and :func:`read_rows` can
    write and read it themselves; None where zarr-python must."""
    from zarr.storage import LocalStore

    meta = arr.metadata
    if meta.zarr_format != 3 or not isinstance(arr.store, LocalStore) or \
            np.dtype(arr.dtype).kind not in "biu" or tuple(arr.chunks[1:]) != arr.shape[1:]:
        return None
    step = arr.chunks[0]
    if b - a != step or a % step or b > arr.shape[0]:
        return None
    names = [c["name"] for c in _codecs(arr)]
    if not names or names[0] != "bytes" or tuple(names[1:]) not in _DIRECT_CODECS:
        return None
    key = meta.chunk_key_encoding.encode_chunk_key((a // step,) + (0,) * (len(arr.shape) - 1))
    return os.path.join(str(arr.store.root), *arr.path.split("/"), *key.split("/"))


def zarr_store(path: str, read_only: bool = False) -> Any:
    """What zarr opens: the local path itself, or an fsspec store for a URL."""
    if not is_url(path):
        return path
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(path, read_only=read_only)


def consolidate(path: str) -> None:
    """Consolidate metadata so readers open the finished store with one request (through
    zarr-python; a local latent store is sealed with ``zarrbytes.consolidated_root`` instead)."""
    import warnings

    with warnings.catch_warnings():  # zarr notes that v3 consolidation is not in the spec yet
        warnings.simplefilter("ignore", UserWarning)
        zarr.consolidate_metadata(zarr_store(path), zarr_format=3)


def is_store(path: str) -> bool:
    """Whether ``path`` (a local path or a URL) holds a Zarr group or array."""
    if is_url(path):
        fs, p = url_fs(path)
        return bool(fs.isfile(p.rstrip("/") + "/zarr.json"))
    return os.path.isfile(os.path.join(path, "zarr.json"))

