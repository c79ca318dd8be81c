"""How much memory this process may still take: the machine's available memory, lowered to
what its control group (a container's limit) has left.

Where Linux overcommits, a process that outgrows memory is not told (no MemoryError): the
kernel's out-of-memory killer ends it, without a message. Work whose footprint is known up
front (the frames a video job holds) is checked against :func:`available_bytes` instead.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Where the control-group file systems are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_bytes(root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> int | None:
    """Bytes this process may still allocate: the least of the machine's available memory
    (Linux's ``MemAvailable``; elsewhere free physical pages) and what its control group has
    left under its limit (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``); None where
    none of these can be read. ``root`` and ``proc``: where to read them (tests)."""
    known = [value for value in (_meminfo_available(proc), _cgroup_left(root, proc))
             if value is not None]
    if not known:
        known = [value for value in (_free_pages(),) if value is not None]
    return min(known) if known else None


def _meminfo_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _free_pages() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_left(root: Path, proc: Path) -> int | None:
    """The limit less the usage of this process's memory control group, None where it has no
    limit or none can be read. The group's path in ``/proc/self/cgroup`` is looked for under
    the mount first, then the mount's root (a container sees its own group there)."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2, the unified hierarchy
            files = ("memory.max", "memory.current")
            mounts = [root, root / "unified"]
        elif "memory" in controllers.split(","):
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
            mounts = [root / "memory"]
        else:
            continue
        for mount in mounts:
            for folder in (mount / group.lstrip("/"), mount):
                left = _limit_less_usage(folder, *files)
                if left is not None:
                    return left
    return None


def _limit_less_usage(folder: Path, limit_file: str, usage_file: str) -> int | None:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    if limit_text == "max":
        return None
    try:
        limit = int(limit_text)
    except ValueError:
        return None
    if limit >= 1 << 60:  # v1's "no limit": the largest page-aligned int64
        return None
    return max(0, limit - usage)
