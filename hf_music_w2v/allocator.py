"""glibc's allocator settings for a process that reads batches of audio: keep freed buffers instead of unmapping them.

A batch of NSynth notes is 64 arrays of 256 KB. By default glibc maps buffers that large fresh from the kernel
(its mmap threshold) or gives the top of its heap back when they are freed (its trim threshold), so every
batch's reads page-fault their memory in again: `.iter(batch_size=64)` ran at 0.66x of the same reads with the
buffers kept (BENCHMARKS.md). The training runs call `keep_freed_memory()` when they start.
"""

import ctypes
import os

#: `mallopt` parameters (glibc's malloc.h) and the values set: buffers below 64 MB come from the heap, and up to
#: 256 MB of freed memory stays in the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
SETTINGS = {"MALLOC_MMAP_THRESHOLD_": (_M_MMAP_THRESHOLD, 64 << 20), "MALLOC_TRIM_THRESHOLD_": (_M_TRIM_THRESHOLD, 256 << 20)}


def keep_freed_memory() -> list[str]:
    """Set glibc's mmap and trim thresholds for this process and the workers it forks from now on.

    A threshold the environment already sets (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, read by glibc
    at start-up) is left as it is. Returns the names of the settings made; none where the C library has no
    `mallopt` (macOS, Windows) or refuses it.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return []
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return [name for name, (parameter, value) in SETTINGS.items()
            if name not in os.environ and mallopt(parameter, value) == 1]


__all__ = ["SETTINGS", "keep_freed_memory"]
