"""Interrupts where CPython lets them land around helper threads, made deterministic."""

from __future__ import annotations

import threading


def interrupted_thread_start(began: threading.Event) -> type[threading.Thread]:
    """A Thread class whose ``start()`` raises KeyboardInterrupt once the new thread's work has
    begun (``began`` set): a signal breaks Thread.start's wait for the new thread, so the
    interrupt can land after the work began but before the caller's ``try``."""

    class InterruptedStart(threading.Thread):
        def start(self) -> None:
            super().start()
            assert began.wait(5)
            raise KeyboardInterrupt

    return InterruptedStart
