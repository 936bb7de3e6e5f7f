"""Zarr helpers every era5latent writer shares (latent stores and decoded fields): the crc32c
codec that ends each array's codec chain, the CF time units, an array looked up with a one-line
error, what zarr opens for a local path or a URL, and metadata consolidation."""

from __future__ import annotations

import os
from typing import Any

import zarr
from zarr.codecs import Crc32cCodec

from era5latent.errors import StoreError
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


def zarr_store(path: str, read_only: bool = False) -> Any:
    """What zarr opens: the local path itself, or an fsspec store for a URL."""
    if not is_url(path):
        return path
    from zarr.storage import FsspecStore

    return FsspecStore.from_url(path, read_only=read_only)


def consolidate(path: str) -> None:
    """Consolidate metadata so readers open the finished store with one request."""
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
