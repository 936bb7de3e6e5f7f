"""``era5latent verify``: every byte of a latent store checked, every array named.

Checks, in order (one :class:`Check` each): that the store is a tree of plain files (no
symbolic link, fifo, device or socket; checked first, without opening any file), the format and the attributes' schema (what opening
the store refuses), the metadata digests recorded at finalize (every ``zarr.json``, subgroups'
included), the build state, then every array of the store, at the root and in its subgroups
(``_era5latent/build_done``, ``residual/streams_G``, ...), chunk by chunk: each chunk's crc32c
(zarr checks it on read, format version 2) and, for codes, each time chunk's sha256. Damage is
reported, never raised; one flipped byte anywhere fails a check that names the array (or document)
and chunk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from era5latent.errors import StoreError
from era5latent.fsutil import is_url, not_plain_files
from era5latent.store.masks import STATIC, CorruptMaskError, mask_arrays, read_masks, read_static
from era5latent.store.residual import residual_name
from era5latent.store.arrays import CorruptArrayError, CorruptChunkError, read_array
from era5latent.store.core import codes_name, DONE, LatentStore, open_latent_store
from era5latent.store.layout import TOKEN_DIMS
from era5latent.store.meta import DIGEST_KEY, ROOT_DOC, read_doc


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _root_problem(path: str) -> str | None:
    """Why the root document cannot be parsed, if it cannot (named, where zarr only says
    'not a store')."""
    try:
        data = read_doc(path, ROOT_DOC)
    except (OSError, KeyError):
        return None
    try:
        json.loads(data)
    except ValueError as err:
        return f"{ROOT_DOC} (the store's root metadata) is not valid JSON: {err}"
    return None


def verify(path: str, model_sha256: str | None = None) -> list[Check]:
    """Every integrity check ``era5latent verify`` prints, in order."""
    checks: list[Check] = []
    if not is_url(path) and os.path.isdir(path):  # before anything reads a file of it
        found = not_plain_files(path, limit=10)
        if found:  # a link may lead out of the store, a fifo would hang the read: stop here
            return [Check("files", False, "; ".join(found) + ": a store holds plain files "
                          "only; replace each by a copy of the file (cp -L), or re-encode")]
    try:
        store = open_latent_store(path)
    except StoreError as err:
        root = _root_problem(path)
        return [Check("format", False, root or str(err))]
    meta = store.meta
    checks.append(Check("format", True, f"{meta['format']} version {meta['format_version']}"))
    checks.append(_metadata(store))
    n_t = store.array("time").shape[0]
    checks.append(Check("attributes", True,
                        f"{len(store.groups)} groups, {n_t} times, {store.array(DONE).shape[0]} "
                        "time chunks consistent with the arrays"))
    try:
        done = store.done()
    except CorruptArrayError as err:
        checks.append(Check("build", False, f"done flags unreadable: {err.chunk} of "
                                            f"{store.where(DONE)} ({err.why})"))
        done = None
    if done is not None:
        checks.append(Check("build", bool(done.all()) and store.complete,
                            f"{int(done.sum())} of {done.size} time chunks done"
                            + ("" if store.complete else ", store not marked complete")))
    checks.extend(_arrays(store, done))
    if model_sha256 is not None:
        have = meta["model"]["sha256"]
        checks.append(Check("model", have == model_sha256,
                            "sha256 matches" if have == model_sha256 else
                            f"store was made with {have[:12]}, --model is {model_sha256[:12]}"))
    return checks


def _metadata(store: LatentStore) -> Check:
    problems = store.metadata_problems()
    if problems:
        return Check("metadata", False, "; ".join(problems))
    if DIGEST_KEY in store.meta:
        return Check("metadata", True, f"{len(store.meta[DIGEST_KEY])} documents match the "
                                       "digests recorded at finalize")
    if store.version < 2:
        return Check("metadata", True, "format version 1 records no metadata digest (not "
                                       "checked); re-encode to get one")
    return Check("metadata", True, "not sealed yet (the store is unfinished)")


def _is_crc(arr: zarr.Array[Any]) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in arr.compressors)


def _arrays(store: LatentStore, done: np.ndarray | None) -> list[Check]:
    """One check per array: every chunk read (crc32c), codes against their sha256."""
    ours = {codes_name(g): g for g in store.groups}
    residuals = {store.where(residual_name(g)): g for g in store.groups} \
        if store.has_residual else {}
    masks = set(mask_arrays(store.mask_channels)) if store.has_mask else set()
    try:  # other tools' arrays too, in any subgroup
        found = {k for k, v in store.root.members(max_depth=None) if isinstance(v, zarr.Array)}
    except Exception:  # a damaged document of a node not era5latent's: that node is not listed
        found = set(store.root.array_keys())
    names = sorted(found | set(store.own_arrays()))
    coords = {store.where(n) for n in ("time", "latitude", "longitude", *store.sample_dims,
                                       *TOKEN_DIMS)}
    out: list[Check] = []
    for name in names:
        try:
            arr = store.array(name)
        except StoreError as err:
            out.append(Check(f"array {name}", False, str(err)))
            continue
        bad: list[str] = []
        n0 = -(-arr.shape[0] // arr.chunks[0]) if arr.ndim else 1
        c0 = arr.chunks[0] if arr.ndim else 1
        if name in ours:
            g = ours[name]
            for i in range(n0):
                try:
                    if done is not None and done[i]:
                        store.read_chunk(g, i)
                    else:  # unwritten: only its crc32c, if any bytes are there
                        read_array(arr, slice(i * c0, (i + 1) * c0), store.path)
                except (CorruptChunkError, CorruptArrayError) as err:
                    bad.append(f"chunk {i} ({err.why})")
        elif name in residuals:
            g = residuals[name]
            for i in range(n0):
                try:
                    if done is not None and done[i]:
                        store.read_residual(g, i)  # row, lengths and sha256 together
                    else:
                        read_array(arr, slice(i * c0, (i + 1) * c0), store.path)
                except (CorruptChunkError, CorruptArrayError) as err:
                    bad.append(f"chunk {i} ({err.why}"
                               + (f" in {err.array}" if isinstance(err, CorruptChunkError)
                                  and err.array != name else "") + ")")
        elif name in masks:
            bad = _mask_chunks(store, name, arr, n0, c0, done)
        else:
            for i in range(n0):
                sel: Any = slice(i * c0, (i + 1) * c0) if arr.ndim else Ellipsis
                try:
                    read_array(arr, sel, store.path)
                except CorruptArrayError as err:
                    bad.append(f"chunk {i} ({err.why})")
            if name in coords and \
                    arr.nchunks_initialized < arr.nchunks:
                bad.append("chunk missing (zarr would read its fill value)")
        how = "crc32c" if _is_crc(arr) else "no crc32c (format version 1)"
        if name in ours or name in residuals or name in masks:
            how += " and sha256"
        out.append(Check(f"array {name}", not bad, "; ".join(bad) or f"{n0} chunk(s), {how} ok"))
    return out


def _mask_chunks(store: LatentStore, name: str, arr: zarr.Array[Any], n0: int, c0: int,
                 done: np.ndarray | None) -> list[str]:
    """What is damaged in one mask array: the static mask against its sha256 in the root
    attributes; each written time chunk's record (state, sha256 and own masks together)."""
    bad: list[str] = []
    if name.startswith(STATIC):
        try:
            read_static(store, name[len(STATIC):])
        except CorruptMaskError as err:
            bad.append(f"chunk 0 ({err.why})")
        return bad
    for i in range(n0):
        try:
            read_array(arr, slice(i * c0, (i + 1) * c0), store.path)  # its crc32c
            if done is not None and done[i]:
                read_masks(store, i)
        except CorruptArrayError as err:
            bad.append(f"chunk {i} ({err.why})")
        except CorruptMaskError as err:
            bad.append(f"chunk {i} ({err.why}" + (f" in {err.array}" if err.array != name
                                                   else "") + ")")
    return bad
