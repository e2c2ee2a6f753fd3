"""Process-level performance knobs for CPU rendering (opt-in)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(top_pad_mb: int = 64) -> bool:
    """Ask glibc's malloc to keep freed memory instead of returning it to the OS.

    PyTorch's CPU allocator does not cache, so each op's multi-MB output is a fresh
    allocation; by default glibc hands large blocks back to the kernel and the next op pays a
    page fault per 4 KiB page. On virtual machines (and under memory pressure) those faults
    can cost more than the arithmetic. This sets ``M_MMAP_THRESHOLD`` to its 32 MiB maximum
    and disables trimming, trading a higher steady RSS for speed. Process-wide; call it once
    at start-up (the benchmark and CLI may). Returns False where glibc is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        ok &= libc.mallopt(_M_TOP_PAD, top_pad_mb * 1024 * 1024)
        return bool(ok)
    except (OSError, AttributeError):
        return False
