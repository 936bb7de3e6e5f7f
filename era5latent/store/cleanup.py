"""``cleanup``: remove what killed runs left at an output, and nothing else.

A killed run can leave, beside its output ``NAME``, a temporary build directory or file
(``.NAME.tmp-*``, made by :func:`era5latent.fsutil.atomic_dir` / ``atomic_file``), a replaced
output's trash (``.NAME.old-*``) and its lock file (``.NAME.era5latent.lock[.part-I-of-N]``,
:mod:`era5latent.store.locks`); inside a latent store, zarr's half-written chunk files (``*.partial``).

What counts as left behind (everything else is kept, and said so):

* a lock file whose process is gone from this host (a lock of another host, or of a live
  process, is kept: only the user can tell that a process elsewhere is gone);
* temporary directories, files and ``*.partial`` chunks only while no live lock holds the output,
  no process on this host has a file open in them, and nothing in them changed for
  ``min_age`` seconds (a live decode or training run has no lock but keeps writing).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from era5latent.errors import StoreError
from era5latent.fsutil import is_url, leftovers
from era5latent.store.locks import is_stale, lock_files, lock_holder, lock_part, lock_path

#: seconds a temporary must have been left unchanged before it counts as a killed run's
DEFAULT_MIN_AGE = 300.0


@dataclass
class Item:
    path: str
    why: str


@dataclass
class CleanupResult:
    path: str
    dry_run: bool
    removed: list[Item] = field(default_factory=list)  # (or would be, with dry_run)
    kept: list[Item] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _newest_mtime(path: str) -> float:
    newest = os.lstat(path).st_mtime
    if os.path.isdir(path) and not os.path.islink(path):
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
                except OSError:
                    pass
    return newest


def _open_paths() -> set[str]:
    """Every file any process of this host (that we may look at) has open (Linux /proc)."""
    out: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        for sub in ("fd", "cwd"):
            d = f"/proc/{pid}/{sub}"
            try:
                targets = [os.readlink(d)] if sub == "cwd" else [
                    os.readlink(os.path.join(d, fd)) for fd in os.listdir(d)]
            except OSError:
                continue
            out.update(targets)
    return out


def _in_use(path: str, open_paths: set[str]) -> bool:
    p = os.path.realpath(path)
    return any(o == p or o.startswith(p + os.sep) for o in open_paths)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def cleanup(path: str, *, dry_run: bool = False, min_age: float = DEFAULT_MIN_AGE
            ) -> CleanupResult:
    """Remove (or with ``dry_run`` only list) what killed runs left at output ``path``."""
    if is_url(path):
        raise StoreError(f"cleanup {path}: object storage has no lock or temporary files of "
                         "era5latent's to remove; pass a local path")
    full = os.path.abspath(path.rstrip("/") or path)
    parent = os.path.dirname(full)
    if not os.path.isdir(parent):
        raise StoreError(f"cleanup {path}: directory {parent} does not exist; check the path")
    res = CleanupResult(path, dry_run)
    now = time.time()
    live: list[str] = []
    for name in lock_files(full):
        lock = lock_path(full, lock_part(name))
        holder = lock_holder(lock)
        if is_stale(lock, holder):
            who = f"pid {holder.get('pid')} is gone" if holder else "half-written, no holder"
            res.removed.append(Item(lock, f"stale lock: {who}"))
        else:
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "unknown"
            live.append(who)
            res.kept.append(Item(lock, f"lock of a live or unknown writer ({who})"))
    candidates = [(os.path.join(parent, n), "temporary of a killed run") for n in leftovers(full)]
    if os.path.isdir(full):
        for root, _, files in os.walk(full):
            candidates += [(os.path.join(root, n), "half-written zarr chunk")
                           for n in files if n.endswith(".partial")]
    open_paths = _open_paths() if candidates else set()
    for p, why in sorted(candidates):
        if live:
            res.kept.append(Item(p, f"{why}? kept: the output is locked by {live[0]}"))
        elif _in_use(p, open_paths):
            res.kept.append(Item(p, f"{why}? kept: a process on this host has it open"))
        elif (age := now - _newest_mtime(p)) < min_age:
            res.kept.append(Item(p, f"{why}? kept: changed {age:.0f} s ago, may be a live run's "
                                    f"(older than {min_age:.0f} s counts as left behind)"))
        else:
            res.removed.append(Item(p, why))
    if not dry_run:
        for item in res.removed:
            try:
                _remove(item.path)
            except FileNotFoundError:
                pass
    return res
