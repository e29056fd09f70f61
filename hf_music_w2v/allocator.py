"""glibc's allocator settings for a training process: keep freed memory for reuse instead of unmapping it.

By default glibc maps every buffer of 128 KB or more fresh from the kernel (its mmap threshold) and gives the top
of its heap back when 128 KB of it is free (its trim threshold), so each batch's audio clips and each update's
activations (a batch of 64 notes through the small model's first conv layer is 210 MB) are page-faulted and
zeroed by the kernel again on every use. Measured on a fine-tuning run of the demo's model on CPU
(`benchmarks/allocator_memory.py`, BENCHMARKS.md): 30 million page faults in 30 updates. With every buffer taken
from the heap and up to 1 GB of freed memory kept, 0.4 million, and the run was 2.7x as fast; its peak memory grew
from 1.37 to 1.96 GB. The training runs call `keep_freed_memory()` when they start.
"""

import ctypes
import os

#: The settings made: `mallopt`'s parameter (glibc's malloc.h) and value, then the environment variables and
#: `GLIBC_TUNABLES` names by which an operator makes the same choice at start-up (any of them leaves it alone).
#: No buffer is mapped on its own (glibc still maps one when its heap cannot grow), and the heap's top is given
#: back once 1 GB of it is free (mallopt takes an int, so at most 2 GB could be asked).
SETTINGS = (
    (-4, 0, ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_"), ("glibc.malloc.mmap_max", "glibc.malloc.mmap_threshold")),
    (-1, 1 << 30, ("MALLOC_TRIM_THRESHOLD_",), ("glibc.malloc.trim_threshold",)),
)


def keep_freed_memory() -> list[str]:
    """Take every buffer from glibc's heap and keep up to 1 GB of freed memory, in this process and the ones it starts.

    A choice the operator already made (`MALLOC_MMAP_MAX_`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or
    `GLIBC_TUNABLES`, read by glibc at start-up) is left as it is. Forked workers inherit the setting; the
    environment variables are set too, for workers started by spawn or forkserver. Returns the names of the
    environment variables for the settings made; none where the C library has no `mallopt` (macOS, Windows) or
    refuses it.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return []
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    made = []
    for parameter, value, names, tunable_names in SETTINGS:
        if any(name in os.environ for name in names) or any(name in tunables for name in tunable_names):
            continue
        if mallopt(parameter, value) == 1:
            os.environ[names[0]] = str(value)
            made.append(names[0])
    return made


__all__ = ["SETTINGS", "keep_freed_memory"]
