"""Process-level memory tuning for the chunk-heavy data path.

Every chunk that crosses gRPC becomes a fresh ~1 MiB bytes object. glibc serves allocations of
that size with mmap by default (above a dynamic threshold), so each one costs hundreds of page
faults and is unmapped again on free; measured here, that made copying a 40 MB model in 1 MiB
chunks 5-8x slower than reusing heap memory. :func:`tune_malloc` raises the mmap threshold so
chunk-sized blocks come from (and return to) the heap, and bounds what the heap may keep unused.
It also caps glibc at two arenas: each gRPC handler thread would otherwise get an arena of its
own that keeps freed chunks, and the coordinator's memory would grow with the number of nodes
uploading at once (measured: P=10M, N=8: peak RSS 734 MB with the default, 599 MB with two).
Called once by the ``fedhive`` command before any thread starts; a no-op where glibc is absent.

:func:`startup_gc` runs a process's start-up (imports, task, model) without cyclic garbage
collection (one full collection at its end instead of several during torch's import) and then
freezes what is still alive: torch's hundreds of thousands of long-lived objects are otherwise
traversed by every full collection, during start-up (measured: ~0.8 CPU-s per process) and again
whenever a round's allocations trigger one.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20
ARENAS = 2


def tune_malloc() -> bool:
    """Returns True when the settings were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    ok = mallopt(M_ARENA_MAX, ARENAS) == 1 and ok
    return ok


@contextlib.contextmanager
def startup_gc() -> Iterator[None]:
    """No cyclic GC inside the block; then one full collection (start-up's garbage cycles, e.g.
    a task's model that was only needed to read the initial weights: frozen, it would never be
    freed), :func:`gc.freeze` of everything still alive (later collections skip it), and GC
    resumes as it was. For a command's one start-up, not for code that runs repeatedly in one
    process (frozen objects are never collected)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        if enabled:
            gc.enable()
