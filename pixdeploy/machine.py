"""What this machine has, for bounds that protect it: the CPUs this process may use and the memory it may still
allocate. Options that fork processes or size allocations are checked against these before anything starts,
so a typo (``--workers 100000``, ``--batch 65536``) is one line instead of a stalled machine or a process the
kernel kills without a word. Torch-free; standard library only."""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int | None:
    """Bytes this process may still allocate before the kernel reclaims or kills: the system's MemAvailable,
    lowered to what the cgroup (a container's limit) has left. None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
                break
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(need: int, what: str, advice: str) -> None:
    """Refuse (`PixdeployError`) work estimated to need more memory than this machine has available, before
    any of it is allocated; nothing is refused where the available memory cannot be read."""
    from pixdeploy.errors import PixdeployError

    have = available_memory()
    if have is not None and need > have:
        raise PixdeployError(f"{what} would need about {gib(need)} of memory (estimated before allocating); "
                             f"this machine has {gib(have)} available: {advice}")
