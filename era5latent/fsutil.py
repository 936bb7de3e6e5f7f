"""Safe writes: outputs appear whole or not at all.

Every output (store, checkpoint, decoded file) is built at a temporary name in the target's own
directory (same filesystem, so the final rename is atomic) and moved into place on success; on
failure the temporary is removed and an existing target is untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from era5latent.errors import StoreError, StoreExistsError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _parent(path: str) -> str:
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(parent):
        raise StoreError(f"cannot create {path}: directory {parent} does not exist; create it first")
    return parent


@contextmanager
def atomic_dir(path: str, overwrite: bool) -> Iterator[str]:
    """Yield a temporary directory beside ``path``; on success, move it to ``path``.

    An existing ``path`` is replaced only when ``overwrite`` is set, and only after the new one is
    complete.
    """
    parent = _parent(path)
    if os.path.exists(path) and not overwrite:
        raise StoreExistsError(f"{path} already exists; pass --overwrite to replace it")
    try:
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    except OSError as err:
        raise StoreError(f"cannot write in {parent}: {err.strerror}; choose a writable output") from None
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if os.path.exists(path):
            trash = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.old-")
            os.rename(path, os.path.join(trash, "old"))
            os.rename(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success, move it to ``path``."""
    parent = _parent(path)
    if os.path.exists(path) and not overwrite:
        raise StoreExistsError(f"{path} already exists; pass --overwrite to replace it")
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.tmp-")
    except OSError as err:
        raise StoreError(f"cannot write in {parent}: {err.strerror}; choose a writable output") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
