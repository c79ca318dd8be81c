"""core.threads.Worker: its owner knows when the work has ended, wherever Ctrl-C lands; and
core.threads.no_cycle_collection, shared by threads that capture CUDA graphs."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time

import pytest
from helpers_threads import interrupted_thread_start

from tinyfaces_trt.core import threads
from tinyfaces_trt.core.threads import Worker, no_cycle_collection


class Job:
    """Work that runs until asked to stop, then takes ``linger_s`` more to end."""

    def __init__(self, linger_s: float = 0.0) -> None:
        self.began, self.asked, self.ended = threading.Event(), threading.Event(), threading.Event()
        self.linger_s = linger_s

    def __call__(self) -> str:
        self.began.set()
        self.asked.wait(10)
        time.sleep(self.linger_s)
        self.ended.set()
        return "done"


def _sigint_after(*delays: float) -> list[threading.Timer]:
    """Ctrl-C sent to the main thread, ``delays`` seconds from now."""
    main = threading.main_thread().ident
    timers = [threading.Timer(d, signal.pthread_kill, (main, signal.SIGINT)) for d in delays]
    for timer in timers:
        timer.start()
    return timers


def _cancel(timers: list[threading.Timer]) -> None:
    for timer in timers:
        timer.cancel()
        timer.join()


def test_result_and_exception_come_back():
    worker = Worker(lambda: 42, "t")
    worker.start()
    assert worker.wait(5) and worker.result() == 42

    def fails():
        raise ValueError("no")

    worker = Worker(fails, "t")
    worker.start()
    assert worker.wait(5)
    with pytest.raises(ValueError, match="no"):
        worker.result()


def test_an_interrupted_wait_still_knows_the_work_runs():
    """Thread.join broken by Ctrl-C marks the thread stopped while it runs (a later join
    returned at once; closing the video container under the encode crashed the process)."""
    job = Job(linger_s=0.3)
    worker = Worker(job, "t")
    worker.start()
    timers: list[threading.Timer] = []
    try:
        with pytest.raises(KeyboardInterrupt):  # the work waits to be asked: no race
            timers += _sigint_after(0.2)
            worker.wait()
    finally:
        _cancel(timers)
    assert worker.stop(timeout=10, ask=job.asked.set) and job.ended.is_set()


def test_cancelled_before_it_began_the_work_never_runs():
    job = Job()
    worker = Worker(job, "t")
    assert worker.stop(timeout=0) and worker.wait(0)  # never started: nothing to wait for
    worker.start()
    worker.thread.join(5)
    assert not job.began.is_set()


def test_an_interrupt_in_thread_start_after_the_work_began(monkeypatch):
    """A signal breaks Thread.start's wait: the work may have begun before the caller's try."""
    job = Job(linger_s=0.2)

    monkeypatch.setattr(threads.threading, "Thread", interrupted_thread_start(job.began))
    worker = Worker(job, "t")
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):
        worker.start()
    assert worker.stop(timeout=10, ask=job.asked.set) and job.ended.is_set()


def test_stop_waits_through_further_interrupts_and_asks_again():
    """Ctrl-C twice: the second lands while the work, asked to stop, finishes (raising it
    then left ONNX Runtime running at exit)."""
    job = Job()
    asked, interrupted = [], threading.Event()

    def ask() -> None:
        asked.append(1)
        if len(asked) == 1:  # the first ask: a further Ctrl-C comes while the work ends
            threading.Timer(0.05, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGINT)).start()
        else:
            interrupted.set()

    def work() -> str:
        job.began.set()
        interrupted.wait(10)  # ends only once stop() has taken the second Ctrl-C
        job.ended.set()
        return "done"

    worker = Worker(work, "t")
    worker.start()
    assert job.began.wait(5)
    closed = []
    with pytest.raises(KeyboardInterrupt):  # raised once the work has ended, not dropped
        worker.stop(timeout=20, ask=ask, then=lambda: closed.append(job.ended.is_set()))
    assert closed == [True] and len(asked) == 2  # first, then after the Ctrl-C


def test_then_runs_only_once_the_work_has_ended():
    job = Job()
    worker = Worker(job, "t")
    worker.start()
    assert job.began.wait(5)
    closed = []
    assert worker.stop(timeout=0.1, then=lambda: closed.append(1)) is False and closed == []
    assert worker.stop(timeout=10, ask=job.asked.set, then=lambda: closed.append(1))
    assert closed == [1] and job.ended.is_set()


def test_ctrl_c_handed_to_another_thread_still_ends_the_wait():
    """The kernel may deliver the terminal's SIGINT to any thread; Python then raises it in
    the main thread only when that thread next runs bytecode: an unbroken wait for the work
    (minutes for a large ONNX Runtime run) ignored Ctrl-C that long."""
    job = Job()
    worker = Worker(job, "t")
    worker.start()
    assert job.began.wait(5)
    # sent from a third thread: signal.pthread_kill checks for signals in its caller
    sender = threading.Timer(0.05, signal.pthread_kill, (worker.thread.ident, signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt):
            sender.start()
            worker.wait()
        still_running = not job.ended.is_set()
    finally:
        sender.join()
        job.asked.set()
        worker.wait(10)
    assert still_running  # raised while the work went on, not after it


def test_stop_says_when_the_work_outlasts_the_timeout():
    job = Job()
    worker = Worker(job, "t")
    worker.start()
    assert job.began.wait(5)
    assert worker.stop(timeout=0.1) is False and not job.ended.is_set()
    job.asked.set()
    assert worker.wait(5)


def test_the_collector_stays_off_until_the_last_pausing_thread_leaves():
    """Two captures in two threads, the first to begin ending first: the collector stays off
    for the second (each restoring what it had found turned it on under the other)."""
    first_in, first_out, second_in = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with no_cycle_collection():
            first_in.set()
            assert second_in.wait(5)
        first_out.set()

    def second():
        assert first_in.wait(5)
        with no_cycle_collection():
            second_in.set()
            assert first_out.wait(5)
            seen["inside, the first gone"] = gc.isenabled()

    assert gc.isenabled()
    runs = [threading.Thread(target=first), threading.Thread(target=second)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(10)
    assert seen == {"inside, the first gone": False} and gc.isenabled()


def test_the_collector_is_left_as_the_caller_had_it():
    gc.disable()
    try:
        with no_cycle_collection():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ValueError, match="inside"):
        with no_cycle_collection():
            raise ValueError("inside")
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_pause_has_its_collector_back():
    read, write = os.pipe()
    with no_cycle_collection():
        pid = os.fork()
        if pid == 0:  # the child: report, then leave at once
            os.write(write, b"1" if gc.isenabled() else b"0")
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0 and gc.isenabled()
