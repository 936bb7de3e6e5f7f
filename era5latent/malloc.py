"""Process-wide memory-allocator settings for the model's batch loop (glibc only)."""

from __future__ import annotations

import functools
import os
import sys


@functools.cache
def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep glibc from handing the model's freed buffers back to the OS after every batch.

    By default glibc serves large blocks with fresh ``mmap`` pages and trims the top of the
    heap on ``free``, so each batch's activations and arrays cost page faults again: encode with
    the tiny preset on CPU ran ~1.6x slower than with fixed thresholds (docs/benchmarks.md).
    Sets what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` would: blocks up to 32 MiB
    come from the heap and up to 256 MiB of freed memory is kept for reuse. Process-wide, so
    the CLI calls it and library users may; True when applied, False off glibc or when either
    variable is set (the user's choice wins).
    """
    if sys.platform != "linux" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(
        mallopt(m_trim_threshold, trim_threshold))
