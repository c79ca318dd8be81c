"""How much memory this process may still take: the machine's available memory, lowered to
what its control groups (a container's, a batch job's, a systemd slice's limit) have left.

Where Linux overcommits, a process that outgrows memory is not told (no MemoryError): the
kernel's out-of-memory killer ends it, without a message. Work whose footprint is known up
front (the frames a video job holds) is checked against :func:`available_bytes` instead.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

#: Where the control-group file systems are mounted.
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: (limit, usage, the reclaimable page cache in memory.stat) of each cgroup version.
_V2_FILES = ("memory.max", "memory.current", "inactive_file")
_V1_FILES = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")


def available_bytes(root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> int | None:
    """Bytes this process may still allocate: the least of the machine's available memory
    (Linux's ``MemAvailable``; elsewhere free physical pages) and what each control group it
    is in, and each group above that, has left under its limit (cgroup v2 ``memory.max``, v1
    ``memory.limit_in_bytes``; the group's usage less its inactive page cache, which the
    kernel reclaims before it kills: the working set, as container runtimes count it); None
    where none of these can be read. ``root`` and ``proc``: where to read them (tests)."""
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
    """The least room under the limits of this process's memory control group and of every
    group above it, None where none has a limit or none can be read. A group's path (from
    ``/proc/self/cgroup``) that is not under the mount (a container sees its own group at the
    mount's root) is read from the mount's root."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    rooms: list[int] = []
    for line in lines:
        _, controllers, group = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2, the unified hierarchy
            files, mounts = _V2_FILES, [root, root / "unified"]
        elif "memory" in controllers.split(","):
            files, mounts = _V1_FILES, [root / "memory"]
        else:
            continue
        for mount in mounts:
            if not mount.is_dir():
                continue
            path = PurePosixPath("/") / group.strip()
            for folder in [mount / str(p).lstrip("/") for p in (path, *path.parents)]:
                if folder.is_dir():
                    room = _room(folder, *files)
                    if room is not None:
                        rooms.append(room)
    return min(rooms) if rooms else None


def _room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    """The group's limit less its working set, None without a limit or where unreadable."""
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
    return max(0, limit - max(0, usage - _stat(folder, inactive_key)))


def _stat(folder: Path, key: str) -> int:
    """A counter of the group's ``memory.stat`` (0 where it cannot be read)."""
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
