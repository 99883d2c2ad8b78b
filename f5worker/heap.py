"""Handing the C heap's free pages back to the system after each job (glibc's ``malloc_trim``).

A job's tensors, audio buffers and codec state are malloc'ed by its thread and by the scheduler's,
each allocating from a glibc arena of its own. ``free`` returns memory to the system only from the
top of a heap, so what a job frees below a block still in use stays resident: on the mixed load of
``bench/load.py`` (500 jobs) RSS rose 152 MiB over the 10-job figure, while the memory in use grew
by a fraction of that. ``malloc_trim(0)`` gives every arena's free pages back (``madvise``), which
held the rise to 65 MiB, flat after the first ~50 jobs; the price is ~40 ms a job on the tiny model
on CPU, most of it the next job faulting the pages in again (BENCHMARKS.md section 10).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` from the process's own symbols; ``None`` on a C library without it (musl, macOS)."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return malloc_trim


MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Give the heap's free pages back to the system; ``True`` if glibc released any."""
    return MALLOC_TRIM is not None and MALLOC_TRIM(0) == 1
