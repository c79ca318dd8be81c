"""A lock file that processes sharing a cache take around a long job (an export, a compile),
so that one process does it and the others wait for its result instead of repeating it.

The lock is an OS file lock (``flock``, through :mod:`filelock`, imported on use: the
``export`` extra and torch require it), released when its holder exits or is killed. The wait
is bounded and said as it goes; where the lock cannot be taken (a file system without
``flock``: filelock's marker-file fallback is refused, as a marker from a killed process on
another host would never clear) or the wait runs out (a hung holder), the job runs without
it, and :attr:`LockOutcome.held` tells the job so: the export and compile caches write their
results atomically, so running one twice only duplicates the work; ONNX Runtime's TensorRT
engine cache, written in place, is then not written (``runtime/backends/ort_tensorrt.py``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Say = Callable[[str], None]
#: Seconds between attempts while waiting (filelock's default, 0.05 s, costs many file-system
#: calls per waiter on a network file system).
POLL_INTERVAL_S = 0.25


@dataclass(frozen=True)
class LockWords:
    """How the waits for one kind of job are said.

    Attributes:
        doing: what the holder does, after "another process is"
            ("exporting into the cache X").
        other: the holder's job, after "still waiting for" ("the other export").
        alone: what this process does when it stops waiting, after "this process"
            ("exports itself").
        unlocked: the job as a participle, before "without the lock" ("exporting").
    """

    doing: str
    other: str
    alone: str
    unlocked: str


@dataclass(frozen=True)
class LockOutcome:
    """How a :func:`waiting_lock` block came to run.

    Attributes:
        waited: it waited for another process holding the lock.
        held: it holds the lock (False: the lock could not be taken, the wait gave up, or
            the caller needed none).
    """

    waited: bool
    held: bool


@contextlib.contextmanager
def waiting_lock(path: str | Path, words: LockWords, *, say: Say, warn: Say, step_s: float,
                 limit_s: float) -> Iterator[LockOutcome]:
    """Holds the lock file ``path`` for the block; yields whether it waited for another process
    and whether it holds the lock.

    Args:
        path: the lock file (its folder is created).
        words: how the waits are said.
        say: takes the waiting messages: at the start of a wait, every ``step_s`` seconds of
            it, and when it gives up after ``limit_s`` seconds and goes on without the lock.
        warn: takes the message that the lock cannot be taken (the block then runs without it).
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    waited = locked = False
    start = time.monotonic()
    lock = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock = FileLock(path, fallback_to_soft=False)
        except TypeError:  # filelock < 3.30 has no marker-file fallback to refuse
            lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
            locked = True
        except Timeout:
            waited = True
            say(f"another process is {words.doing}; waiting for it to finish (lock {path}) ...")
        while not locked:
            held = time.monotonic() - start
            if held >= limit_s:
                say(f"gave up waiting for the lock {path} after {held:.0f} s (its holder may "
                    "hang); going on without it")
                break
            try:
                lock.acquire(timeout=min(step_s, limit_s - held), poll_interval=POLL_INTERVAL_S)
                locked = True
            except Timeout:
                if time.monotonic() - start < limit_s:
                    say(f"still waiting for {words.other} ({time.monotonic() - start:.0f} s; "
                        f"at {limit_s:.0f} s this process {words.alone})")
    except (OSError, NotImplementedError) as exc:
        warn(f"cannot lock {path} ({exc}); {words.unlocked} without the lock")
    try:
        yield LockOutcome(waited=waited, held=locked)
    finally:
        if locked and lock is not None:
            lock.release()


__all__ = ["POLL_INTERVAL_S", "LockOutcome", "LockWords", "waiting_lock"]
