"""Safe writes: outputs appear whole or not at all.

Every output (store, checkpoint, decoded file) is built at a temporary name in the target's own
directory (same filesystem, so the final rename is atomic) and moved into place on success; on
failure the temporary is removed and an existing target is untouched.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from era5latent.errors import StoreError, StoreExistsError


# -- URLs (fsspec: s3://, gs://, ...) --------------------------------------------------------------
# Object stores have no atomic rename: outputs there are created in place (see store/core.py).
# Credentials and endpoints come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL, ...), as fsspec and botocore read them.

def is_url(path: str) -> bool:
    """``scheme://...`` (an fsspec URL), as opposed to a local path."""
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", os.fspath(path)))


def anonymous_options(url: str) -> dict[str, Any]:
    """fsspec storage options for unauthenticated reads of a public bucket (s3:// or gs://)."""
    scheme = url.split("://", 1)[0].lower() if is_url(url) else ""
    if scheme in ("s3", "s3a"):
        return {"anon": True}
    if scheme in ("gs", "gcs"):
        return {"token": "anon"}
    return {}


def url_fs(url: str) -> tuple[Any, str]:
    """The fsspec filesystem of ``url`` and the path within it."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url)
    return fs, str(path)


#: zarrs' Rust codec pipeline for zarr-python (https://github.com/zarrs/zarrs-python)
ZARRS_PIPELINE = "zarrs.ZarrsCodecPipeline"
# zarr.config.set saves and restores a global: two threads interleaving their blocks could leave
# zarrs set for everyone (a Dask worker runs several tasks at once)
_ZARR_CONFIG_LOCK = threading.RLock()


@contextmanager
def fast_zarr(path: str) -> Iterator[bool]:
    """Arrays of the local Zarr store ``path`` opened inside this block use zarrs.

    zarr-python picks an array's codec pipeline when the array is opened, so the choice outlives
    the block and no global setting is left changed. zarrs reads, writes and (de)compresses
    chunks in Rust without holding the GIL: reading a time chunk of the source took a third of
    the time and stalled the model thread beside it less (zarr-python's and xarray's own Python
    still holds the GIL for about half of a read, which is why a source's small chunks are read
    by :mod:`era5latent.io.chunkread` instead: docs/benchmarks.md). Used for the
    source and for decoded outputs; latent stores keep zarr-python, whose bytes are the same on
    local disks and object storage. zarrs reports I/O errors as RuntimeError: see
    :func:`os_error_of`. Yields whether zarrs is used: not for URLs (zarrs supports only some
    object stores), not when it is not installed (it needs Python >= 3.11), and not with
    ``ERA5LATENT_ZARRS=0``.
    """
    import importlib.util

    import zarr

    use = (not is_url(path) and os.environ.get("ERA5LATENT_ZARRS", "1") != "0"
           and importlib.util.find_spec("zarrs") is not None)
    if not use:
        yield False
        return
    with _ZARR_CONFIG_LOCK, zarr.config.set({"codec_pipeline.path": ZARRS_PIPELINE}):
        yield True


def os_error_of(err: BaseException) -> OSError | None:
    """The operating-system error behind ``err``, if any: ``err`` itself, or the one zarrs
    reports as ``RuntimeError("... (os error 28)")``."""
    if isinstance(err, OSError):
        return err
    m = re.search(r"\(os error (\d+)\)", str(err)) if isinstance(err, RuntimeError) else None
    if m is None:
        return None
    code = int(m.group(1))
    return OSError(code, os.strerror(code))


def exists(path: str) -> bool:
    """``os.path.exists`` for local paths and fsspec URLs alike."""
    if not is_url(path):
        return os.path.exists(path)
    fs, p = url_fs(path)
    return bool(fs.exists(p))


def not_plain_files(root: str, limit: int = 3) -> list[str]:
    """What in the local directory tree ``root`` is neither a plain file nor a directory
    (symbolic links, fifos, devices, sockets), as ``'REL (what)'`` lines; at most ``limit``.

    One ``os.scandir`` walk: the entry types come from the directory listing itself, so no
    file is opened and no link is followed (a fifo would block a reader forever)."""
    import stat

    found: list[str] = []
    todo = [root]
    while todo and len(found) < limit:
        here = todo.pop()
        try:
            entries = list(os.scandir(here))
        except OSError:
            continue  # unreadable: whoever reads it says so
        for e in sorted(entries, key=lambda e: e.name):
            if e.is_symlink():
                rel = os.path.relpath(e.path, root)
                try:
                    found.append(f"{rel} (a symbolic link to {os.readlink(e.path)})")
                except OSError:
                    found.append(f"{rel} (a symbolic link)")
            elif e.is_dir(follow_symlinks=False):
                todo.append(e.path)
            elif not e.is_file(follow_symlinks=False):
                mode = e.stat(follow_symlinks=False).st_mode
                kind = ("a fifo" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                        else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
                        else "a special file")
                found.append(f"{os.path.relpath(e.path, root)} ({kind})")
            if len(found) >= limit:
                break
    return found


def check_plain_tree(path: str, what: str = "latent store") -> None:
    """Refuse a local store holding anything but plain files and directories (a link could lead
    a reader or a writer out of it; a fifo would hang it). The root itself may be a link."""
    if is_url(path) or not os.path.isdir(path):
        return
    found = not_plain_files(path)
    if found:
        raise StoreError(f"{path} holds {found[0]}; expected a {what} of plain files only: "
                         "replace it by a copy of the file (cp -L), or re-encode the store")


def full_path(path: str) -> str:
    """An absolute local path, or the URL unchanged (what provenance attributes record)."""
    return path if is_url(path) else os.path.abspath(path)


def remove_tree(path: str) -> None:
    """Delete a directory or an object-store prefix, if present."""
    if not is_url(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    fs, p = url_fs(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


# -- what an existing output is: --overwrite replaces only our own outputs of the same kind -------

LATENT, DECODED, SAMPLE = "latent store", "decoded fields", "sample data"
#: build-embed-map's outputs: a Zarr map (``--out``) and the upstream-layout ``--npz``
EMBED_MAP, EMBED_NPZ = "embedding map", "embedding map .npz"
#: the zip comment of an ``--npz`` era5latent wrote: how ``--overwrite`` knows the file is ours
#: (a comment, not a member, so ``numpy.load`` still lists only ``arr_0``)
NPZ_MARKER = b"era5latent embedding map"

#: extensions of formats era5latent never writes: an output named so is refused (a typo or a
#: misunderstanding: `--out rec.csv` would otherwise be a Zarr directory named rec.csv)
FOREIGN_EXTENSIONS = frozenset(
    ".csv .tsv .txt .json .yaml .yml .xml .html .md .pdf .png .jpg .jpeg .gif .tif .tiff "
    ".parquet .npz .npy .pkl .pickle .pt .pth .ckpt .safetensors .grib .grb .grib1 .grib2 "
    ".grb2 .h5 .hdf5 .hdf .mat .xls .xlsx .zip .tar .gz .tgz .bz2 .xz .zst .7z .py .sh .log "
    ".db .sqlite .feather .arrow .orc .avro".split())


def check_output_name(path: str, what: str, writes: str) -> None:
    """Refuse an output whose extension names a format era5latent does not write."""
    base = os.path.basename(path.rstrip("/"))
    ext = os.path.splitext(base)[1].lower()
    if ext in FOREIGN_EXTENSIONS:
        raise StoreError(f"{path}: era5latent does not write {ext} files; {what} is written as "
                         f"{writes}: choose an --out ending in one of those")


def _zarr_attrs(doc_path: str, v2: bool = False) -> dict[str, Any] | None:
    import json

    try:
        with open(doc_path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    attrs = doc if v2 else doc.get("attributes") if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) else None


def output_kind(path: str) -> str | None:
    """Which era5latent output ``path`` (local) holds, recognised by its attributes: LATENT,
    DECODED, SAMPLE, EMBED_MAP or EMBED_NPZ, else None (someone else's file or directory)."""
    if os.path.isdir(path):
        attrs = _zarr_attrs(os.path.join(path, "zarr.json"))
        if attrs is None and os.path.isfile(os.path.join(path, ".zattrs")):  # Zarr v2 output
            attrs = _zarr_attrs(os.path.join(path, ".zattrs"), v2=True)
        if attrs is None:
            return None
        meta = attrs.get("era5latent")
        if isinstance(meta, dict) and meta.get("format") == "era5latent.latent":
            return LATENT
        if isinstance(meta, dict) and "decoded_from" in meta:
            return DECODED
        if attrs.get("generator") == "era5latent.io.sample":
            return SAMPLE
        if "era5latent_embedmap_version" in attrs:
            return EMBED_MAP
        return None
    if os.path.isfile(path) and path.endswith(".npz"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                return EMBED_NPZ if z.comment.startswith(NPZ_MARKER) else None
        except (OSError, zipfile.BadZipFile):
            return None
    if os.path.isfile(path):
        try:
            import h5py  # type: ignore[import-untyped]

            with h5py.File(path, "r") as f:
                return DECODED if "era5latent_decoded_from" in f.attrs else None
        except Exception:  # not HDF5/NetCDF-4 at all
            return None
    return None


def decoded_attrs(path: str) -> dict[str, Any] | None:
    """The ``era5latent`` attributes of a decoded-fields output (local Zarr v3 or v2, or
    NetCDF, whose flat ``era5latent_KEY`` attributes are strings), else None."""
    if os.path.isdir(path):
        attrs = _zarr_attrs(os.path.join(path, "zarr.json"))
        if attrs is None:
            attrs = _zarr_attrs(os.path.join(path, ".zattrs"), v2=True)
        meta = (attrs or {}).get("era5latent")
        return meta if isinstance(meta, dict) and "decoded_from" in meta else None
    if os.path.isfile(path):
        try:
            import h5py

            with h5py.File(path, "r") as f:
                flat = {k[len("era5latent_"):]: v.decode() if isinstance(v, bytes) else str(v)
                        for k, v in f.attrs.items() if k.startswith("era5latent_")}
        except Exception:  # not HDF5/NetCDF-4 at all
            return None
        return flat if "decoded_from" in flat else None
    return None


def check_replaceable(path: str, kind: str, option: str = "--out") -> None:
    """``--overwrite`` of ``path`` (given as ``option``): allowed only when it is an era5latent
    ``kind``."""
    if not os.path.lexists(path):
        return
    have = output_kind(path)
    if have != kind:
        found = f"an era5latent {have}" if have else (
            "a directory that is not an era5latent output" if os.path.isdir(path) else
            "a file that is not an era5latent output")
        raise StoreError(f"{path} is {found}; --overwrite replaces only an era5latent "
                         f"{kind}: move it away or choose another {option}")


def leftovers(path: str) -> list[str]:
    """Temporary directories and files of earlier runs beside ``path`` (``.NAME.tmp-*``,
    ``.NAME.old-*``): what a killed run leaves. Local paths only."""
    if is_url(path):
        return []
    full = os.path.abspath(path.rstrip("/") or path)
    base = os.path.basename(full)
    try:
        names = os.listdir(os.path.dirname(full))
    except OSError:
        return []
    return sorted(n for n in names if n.startswith((f".{base}.tmp-", f".{base}.old-")))


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parent_dir(path: str) -> str:
    """The existing directory a local output ``path`` will be created in (a one-line
    :class:`StoreError` when it is missing, or ``path`` is a URL)."""
    if is_url(path):
        raise StoreError(f"cannot write {path}: this output must be a local path (object storage "
                         "has no atomic rename); write it locally and copy it up")
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise StoreError(f"cannot create {path}: directory {parent} does not exist; create it first")
    return parent


def commit_dir(src: str, dst: str, replace: bool) -> None:
    """Rename the finished directory ``src`` to ``dst``. With ``replace``, an existing ``dst``
    (the caller checked it is ours) is moved aside first, deleted after, and put back if the
    rename fails. A ``dst`` that another process made meanwhile (no ``replace``) wins: the
    rename fails on a non-empty directory, never replacing one."""
    old = None
    if replace and os.path.lexists(dst):
        old = tempfile.mkdtemp(dir=parent_dir(dst), prefix=f".{os.path.basename(dst)}.old-")
        os.rename(dst, os.path.join(old, "old"))
    try:
        os.rename(src, dst)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        raise StoreExistsError(f"{dst} already exists (made by another process meanwhile); "
                               "pass --overwrite to replace it") from None
    finally:
        if old is not None:
            if not os.path.lexists(dst):
                os.rename(os.path.join(old, "old"), dst)
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str, overwrite: bool, kind: str | None = None) -> Iterator[str]:
    """Yield a temporary directory beside ``path``; on success, move it to ``path``.

    An existing ``path`` is replaced only when ``overwrite`` is set, only when it is an
    era5latent output of ``kind`` (when given; see :func:`check_replaceable`), and only after
    the new one is complete.
    """
    parent = parent_dir(path)
    if kind is not None:  # not ours: --overwrite would not help either, so say that first
        check_replaceable(path, kind)
    if os.path.exists(path) and not overwrite:
        raise StoreExistsError(f"{path} already exists; pass --overwrite to replace it")
    try:
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    except OSError as err:
        raise StoreError(f"cannot write in {parent}: {err.strerror}; choose a writable output") from None
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
    try:
        yield tmp
        commit_dir(tmp, path, replace=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str, overwrite: bool = True, kind: str | None = None) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success, move it to ``path`` (an existing
    one only if it is an era5latent output of ``kind``, when given)."""
    parent = parent_dir(path)
    if kind is not None:
        check_replaceable(path, kind)
    if os.path.exists(path) and not overwrite:
        raise StoreExistsError(f"{path} already exists; pass --overwrite to replace it")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    except OSError as err:
        raise StoreError(f"cannot write in {parent}: {err.strerror}; choose a writable output") from None
    os.close(fd)
    try:
        yield tmp
        # mkstemp makes 0600, and writers that replace the file (safetensors) keep that: give
        # the finished file the mode of any other output
        os.chmod(tmp, 0o666 & ~umask())
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_partial_writes(path: str) -> int:
    """Delete zarr's half-written chunk files (``*.partial``) that a killed writer left in the
    local store ``path``; returns how many. Call it only while holding the whole store's lock:
    another writer's in-flight chunk looks the same."""
    if is_url(path) or not os.path.isdir(path):
        return 0
    n = 0
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(".partial"):
                os.unlink(os.path.join(root, name))
                n += 1
    return n
