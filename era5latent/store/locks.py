"""Writer locks of local latent stores: lock files beside the store, never inside it.

A writer holds ``.NAME.era5latent.lock`` (a whole-store writer) or
``.NAME.era5latent.lock.part-I-of-N`` (``encode --parts I/N``) in the store's parent directory,
``NAME`` being the store's directory name: JSON ``{pid, host}``. Beside the store, zarr never
sees them (a file inside the store made zarr warn on every open) and they survive the store's
replacement by ``--overwrite``. Object-store URLs have no lock files (docs/distributed.md).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from era5latent.errors import StoreError
from era5latent.fsutil import is_url

LOCK = "era5latent.lock"


def lock_name(part: tuple[int, int] | None = None) -> str:
    """``era5latent.lock`` for whole-store writers, ``era5latent.lock.part-I-of-N`` for parts."""
    return LOCK if part is None else f"{LOCK}.part-{part[0]}-of-{part[1]}"


def lock_path(path: str, part: tuple[int, int] | None = None) -> str:
    """The lock file of store ``path`` (or of its part ``(I, N)``), beside the store."""
    full = os.path.abspath(path.rstrip("/") or path)
    return os.path.join(os.path.dirname(full), f".{os.path.basename(full)}.{lock_name(part)}")


def lock_part(name: str) -> tuple[int, int] | None:
    if name == LOCK:
        return None
    i, _, n = name[len(LOCK) + len(".part-"):].partition("-of-")
    return int(i), int(n)


def _conflicts(mine: tuple[int, int] | None, theirs: tuple[int, int] | None) -> bool:
    """Whole-store writers exclude everyone; parts exclude the same part and other part counts."""
    if mine is None or theirs is None:
        return True
    return mine == theirs or mine[1] != theirs[1]


class StoreLockedError(StoreError):
    """Another live process is writing the store (``holder``: who, as words)."""

    holder = "another process"


def lock_holder(lock: str) -> dict[str, Any] | None:
    try:
        with open(lock) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


def is_stale(lock: str, holder: dict[str, Any] | None) -> bool:
    if holder is None:  # half-written by a process killed while taking it (allow a moment)
        try:
            return os.path.getmtime(lock) < time.time() - 10
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False  # cannot tell: only the user can say that process is gone
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return False


def lock_files(path: str) -> list[str]:
    """The lock names (``era5latent.lock...``) held beside store ``path``."""
    full = os.path.abspath(path.rstrip("/") or path)
    prefix = f".{os.path.basename(full)}."
    try:
        names = os.listdir(os.path.dirname(full))
    except OSError:
        return []
    found = [n[len(prefix):] for n in names if n.startswith(prefix)]
    return sorted(n for n in found
                  if n == LOCK or re.fullmatch(re.escape(LOCK) + r"\.part-\d+-of-\d+", n))


def check_unlocked(path: str, break_lock: bool = False, part: tuple[int, int] | None = None,
                   *, ignore: str | None = None) -> None:
    """Refuse when a live writer that conflicts with ours holds ``path``; clear stale locks.

    A whole-store writer (``part`` None) conflicts with every lock; part ``(I, N)`` with the
    whole-store lock, the same part's lock and parts of another count. Object-store URLs have
    no lock files.
    """
    if is_url(path):
        return
    for name in lock_files(path):
        if name == ignore or not _conflicts(part, lock_part(name)):
            continue
        lock = lock_path(path, lock_part(name))
        holder = lock_holder(lock)
        if not os.path.exists(lock):
            continue
        if break_lock or is_stale(lock, holder):
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
            continue
        who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
        err = StoreLockedError(
            f"{path} is being written by {who} (lock file {lock}); wait for it to finish, or if "
            "that process is gone, pass --break-lock")
        err.holder = f"by {who}"
        raise err


@contextmanager
def writer_lock(path: str, break_lock: bool = False,
                part: tuple[int, int] | None = None) -> Iterator[None]:
    """Hold the store's lock file (or part ``(I, N)``'s) for the duration.

    Local stores only: object-store URLs are not locked (see docs/distributed.md).
    """
    if is_url(path):
        yield
        return
    name = lock_name(part)
    lock = lock_path(path, part)
    while True:
        check_unlocked(path, break_lock, part)
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # raced with another writer: look again (it raises if that one is live)
        except OSError as err:  # taken before a new store is laid out: its directory's faults
            raise StoreError(f"cannot take the writer lock {lock}: {err.strerror or err}; "
                             "choose a writable --out") from None
        break
    with os.fdopen(fd, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    try:
        # a conflicting writer may have taken its own lock between our look and our create:
        # look again now that ours is visible (then at worst both back off, never both write)
        check_unlocked(path, False, part, ignore=name)
        yield
    finally:
        if (lock_holder(lock) or {}).get("pid") == os.getpid():
            os.unlink(lock)
