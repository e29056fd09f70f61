"""Peak memory of the running process, for the benchmarks that measure each mode in a fresh process."""

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak RSS in MB. Not getrusage's ru_maxrss: Linux carries that over exec from the forked
    parent, so every child of a 13 GB benchmark process reported 13 GB; /proc's VmHWM is this process's own."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
