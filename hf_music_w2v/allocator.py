"""glibc's allocator settings for a process that reads batches of audio: keep freed buffers instead of unmapping them.

A batch of NSynth notes is 64 arrays of 256 KB. By default glibc maps buffers that large fresh from the kernel
(its mmap threshold) or gives the top of its heap back when they are freed (its trim threshold), so every
batch's reads page-fault their memory in again: `.iter(batch_size=64)` ran at about 0.7x of the same reads with the
buffers kept (BENCHMARKS.md). The training runs call `keep_freed_memory()` when they start.
"""

import ctypes
import os

#: The thresholds set: the environment variable and `GLIBC_TUNABLES` name by which an operator sets each at start-up,
#: its `mallopt` parameter (glibc's malloc.h) and the value set here. Buffers below 32 MB come from the heap (older
#: glibc, 2.26 for one, refuses a larger mmap threshold), and up to 256 MB of freed memory stays in the process.
THRESHOLDS = (
    ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", -3, 32 << 20),
    ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", -1, 256 << 20),
)


def keep_freed_memory() -> list[str]:
    """Set glibc's mmap and trim thresholds for this process and the processes it starts from now on.

    A threshold the operator already set (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `GLIBC_TUNABLES`,
    read by glibc at start-up) is left as it is. Forked workers inherit the setting; the environment variables are
    set too, for workers started by spawn or forkserver. Returns the names of the settings made; none where the C
    library has no `mallopt` (macOS, Windows) or refuses it.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return []
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    made = []
    for name, tunable, parameter, value in THRESHOLDS:
        if name in os.environ or tunable in tunables:
            continue
        if mallopt(parameter, value) == 1:
            os.environ[name] = str(value)
            made.append(name)
    return made


__all__ = ["THRESHOLDS", "keep_freed_memory"]
