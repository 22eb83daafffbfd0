"""Probes of this process: resident memory, open file descriptors, asyncio tasks, and the C heap
(glibc ``malloc_trim`` and ``mallinfo2`` through ctypes).

Every probe is cheap and synchronous; psutil and ctypes load on first use. Where a probe is not
available (another C library, another OS) it returns ``None`` or ``False`` instead of raising.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

__all__ = ["asyncio_tasks", "c_library", "mallinfo", "malloc_trim", "open_fds", "process_rss"]


@functools.cache
def c_library() -> Any:
    """The C library through ctypes (``None`` when not found); loaded once."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def malloc_trim() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``, which also
    releases whole free pages inside the heap, not only at its top). ``False`` where the C
    library has no such call (musl, macOS, Windows)."""
    libc = c_library()
    fn = getattr(libc, "malloc_trim", None) if libc is not None else None
    if fn is None:
        return False
    fn(0)
    return True


_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")


@functools.cache
def _mallinfo2() -> Any:
    """glibc's ``mallinfo2`` with its result type set, or ``None`` (not glibc, or before 2.33)."""
    import ctypes

    class _Info(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in _MALLINFO2_FIELDS]  # bounded: the 10 mallinfo2 fields

    fn = getattr(c_library(), "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _Info
    return fn


def mallinfo() -> dict[str, int] | None:
    """glibc's ``mallinfo2()``: ``uordblks`` bytes in use and ``fordblks`` bytes free in the main heap,
    ``hblkhd`` bytes in mmap'ed blocks (``None`` off glibc). Native allocations (the QUIC library,
    OpenSSL) show here and not in tracemalloc; Python's small objects live in mmap'ed arenas."""
    fn = _mallinfo2()
    if fn is None:
        return None
    info = fn()
    return {f: int(getattr(info, f)) for f in _MALLINFO2_FIELDS}


def process_rss() -> int:
    """Resident set size of this process in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def open_fds() -> int | None:
    """Open file descriptors (handles on Windows) of this process; ``None`` when unknown."""
    import psutil

    proc = psutil.Process()
    try:
        if hasattr(proc, "num_fds"):
            return int(proc.num_fds())
        return int(proc.num_handles())
    except (psutil.Error, OSError):
        return None


def asyncio_tasks() -> int | None:
    """Tasks alive on the running event loop; ``None`` outside one."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return len(asyncio.all_tasks(loop))
