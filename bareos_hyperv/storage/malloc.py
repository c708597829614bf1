"""glibc malloc tunables for the agent process's bulk SMB I/O.

smbprotocol makes several chunk-sized copies per message; with glibc's defaults each multi-MiB buffer
is mmap'd and unmapped again, and the page faults cost more than the protocol work.  Raising both the
trim threshold (256 MiB) and the mmap threshold (64 MiB) together keeps those buffers on the heap
(``reference/performance-notes.md`` finding 2: 8 MiB reads 161 -> ~400 MB/s, writes doubled; either
alone is worse).

This changes the whole process's allocator, so it is never done at import: the agent process calls
:func:`tune_malloc_for_bulk_io` once at start-up.  Never call it inside bareos-fd.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = [
    "MMAP_THRESHOLD",
    "M_MMAP_THRESHOLD",
    "M_TRIM_THRESHOLD",
    "TRIM_THRESHOLD",
    "tune_malloc_for_bulk_io",
]

log = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 256 * 1024 * 1024
MMAP_THRESHOLD = 64 * 1024 * 1024


def tune_malloc_for_bulk_io() -> bool:
    """Set glibc's trim and mmap thresholds for large buffers; False (and a log line) where not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("mallopt not available (not glibc); malloc left at its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    ok = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    if not ok:
        log.warning("mallopt refused the bulk-I/O thresholds; malloc may be slower for large buffers")
    return ok
