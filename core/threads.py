"""A helper thread whose end its owner knows for sure, even after Ctrl-C.

Two CPython behaviours make ``Thread.start`` / ``Thread.join`` unsafe around native work
(an ONNX Runtime run, an FFmpeg encode) that an interrupt must not outlive:

- a KeyboardInterrupt that breaks ``Thread.join`` marks the thread as stopped while it still
  runs, so a later ``join`` returns at once (closing an FFmpeg container under the running
  encode then crashed the process);
- a signal breaks ``Thread.start``'s wait for the new thread, so an interrupt can land after
  the thread began but before the caller's ``try`` (a process that exits while ONNX Runtime
  runs on another thread aborts in its C++ teardown).

:class:`Worker` ends on an :class:`threading.Event` instead, and :meth:`Worker.cancel` settles
atomically with the thread's first step whether the work runs at all.

Also here: how many cores this process may use (:func:`usable_cores`), the warning for a
CPU run asked for more threads than that (:func:`warn_if_oversubscribed`), and Python's cyclic
garbage collector paused while any thread is inside :func:`no_cycle_collection`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any


WAIT_SLICE_S = 0.25


class Worker:
    """Runs ``fn()`` once on a daemon thread named ``name``.

    After :meth:`cancel`, either ``fn`` never runs or :meth:`stop` waits for its end; in
    between, :meth:`wait` reports the end and :meth:`result` gives ``fn``'s value or raises
    its exception.
    """

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._fn = fn
        self._done = threading.Event()
        self._claim: dict[str, str] = {}  # who came first, the thread or cancel (setdefault is atomic)
        self._value: Any = None
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Starts the thread (an interrupt may land in here: :meth:`stop` still knows)."""
        self.thread.start()

    def _run(self) -> None:
        if self._claim.setdefault("by", "thread") != "thread":
            return  # cancelled before it began
        try:
            self._value = self._fn()
        except BaseException as exc:  # noqa: BLE001 (raised by result())
            self._error = exc
        finally:
            self._done.set()

    def cancel(self) -> bool:
        """Keeps ``fn`` from beginning if it has not yet; True when it had begun."""
        return self._claim.setdefault("by", "cancel") == "thread"

    def wait(self, timeout: float | None = None) -> bool:
        """True once ``fn`` has ended, or was cancelled before it began; False on timeout.
        Ctrl-C raises here as usual."""
        if self._claim.get("by") == "cancel":
            return True
        return self._wait_until(None if timeout is None else time.monotonic() + timeout)

    def stop(self, timeout: float | None = None, ask: Callable[[], object] | None = None,
             then: Callable[[], object] | None = None) -> bool:
        """:meth:`cancel`, then waits for ``fn``'s end through any further interruption (the
        stop is under way), then runs ``then`` (closing what ``fn`` used) if it has ended.

        An interruption is any exception raised while it waits: Ctrl-C, and what a signal
        handler raises between bytecodes (``sys.exit`` in a SIGTERM handler, a request
        timeout's ``TimeoutError``).

        Args:
            timeout: seconds to wait at most (None: until it ends).
            ask: tells ``fn`` to stop; called first, and again after each further
                interruption (one may land inside it); an ``ask`` that fails twice running
                is not called again (the wait goes on).
            then: runs once ``fn`` has ended or never began, not after a timeout.

        Returns:
            True once ended or never begun, False when ``timeout`` ran out first.

        Raises:
            BaseException: the first interruption that came while it waited, once ``then``
                has run (so a caller that does not re-raise still stops).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        interruption: BaseException | None = None
        failed_asks = 0
        while True:
            try:
                if ask is not None and failed_asks < 2:
                    failed_asks += 1
                    ask()
                    failed_asks = 0
                ended = not self.cancel() or self._wait_until(deadline)
                break
            except BaseException as exc:  # noqa: BLE001 (raised once the work has ended)
                if interruption is None:
                    interruption = exc
        try:
            if ended and then is not None:
                then()
        finally:
            if interruption is not None:
                raise interruption
        return ended

    def _wait_until(self, deadline: float | None) -> bool:
        # in slices: a signal the kernel hands to another thread does not break this
        # thread's wait, and Python raises it here only at the next slice
        while True:
            left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S,
                                                             deadline - time.monotonic())
            if self._done.wait(max(0.0, left)):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def result(self) -> Any:
        """``fn``'s value, or its exception raised; call once :meth:`wait` is True."""
        if self._error is not None:
            raise self._error
        return self._value


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; else ``os.cpu_count()``), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def warn_if_oversubscribed(threads: int | None) -> None:
    """Warns (``warnings.warn``, a ``RuntimeWarning``) when ``threads`` is more than the
    usable cores: accepted, but ONNX Runtime's threads then wait for one another (64 on 2
    cores made a detect some 40 times slower). The warning points at the first caller outside
    the ``tinyfaces_trt`` package (the line that asked for the threads)."""
    cores = usable_cores()
    if threads is None or threads <= cores:
        return
    level, frame = 2, sys._getframe(1)
    while frame.f_back is not None and \
            frame.f_globals.get("__name__", "").partition(".")[0] == "tinyfaces_trt":
        level, frame = level + 1, frame.f_back
    warnings.warn(f"threads={threads} is more than the {cores} core(s) this process may use "
                  f"(os.cpu_count(): {os.cpu_count()}); ONNX Runtime's threads will wait for "
                  f"one another and each detect runs slower; threads={cores} or None (all "
                  f"cores) is faster", RuntimeWarning, stacklevel=level)


class _CollectorPauses:
    """How many threads are inside :func:`no_cycle_collection`, and whether the collector was
    on when the first of them came in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.was_enabled = False


_PAUSES = _CollectorPauses()


def _collector_after_fork() -> None:
    global _PAUSES
    if _PAUSES.count and _PAUSES.was_enabled:  # the pausing threads are not in the child
        gc.enable()
    _PAUSES = _CollectorPauses()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_collector_after_fork)


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """Python's cyclic garbage collector off while any thread is inside (a CUDA graph
    capture: a collection in the capturing thread could free or destroy a device object,
    which the capture forbids); back on when the last one leaves, if it was on when the first
    came in. Threads may leave in any order (one switch for the process: two captures that
    each restored what they had found turned it on under the other)."""
    with _PAUSES.lock:
        if _PAUSES.count == 0:
            _PAUSES.was_enabled = gc.isenabled()
            gc.disable()
        _PAUSES.count += 1
    try:
        yield
    finally:
        with _PAUSES.lock:
            _PAUSES.count -= 1
            if _PAUSES.count == 0 and _PAUSES.was_enabled:
                gc.enable()
