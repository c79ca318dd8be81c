"""core.locks.waiting_lock: the lock file shared by processes around a long job. Its waits are
tested through their users (tests/test_export_cache.py, the shape locks in
tests/test_torch_cuda.py); here the paths that have no user-level trace."""

from __future__ import annotations

import errno
import fcntl

import pytest

from tinyfaces_trt.core.locks import LockOutcome, LockWords, waiting_lock

filelock = pytest.importorskip("filelock")

WORDS = LockWords(doing="testing", other="the other test", alone="tests itself", unlocked="testing")


def _lock(path, said: list[str], warned: list[str]):
    return waiting_lock(path, WORDS, say=said.append, warn=warned.append, step_s=0.2, limit_s=1.0)


def test_a_file_system_without_flock_runs_the_job_unlocked_and_says_so(tmp_path, monkeypatch):
    """filelock's own fallback there (a marker file) is refused: a marker left by a killed
    process on another host would hold every later process for the whole wait."""
    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    said: list[str] = []
    warned: list[str] = []
    path = tmp_path / "job.lock"
    with _lock(path, said, warned) as outcome:
        ran = True
    assert ran and outcome == LockOutcome(waited=False, held=False) and said == []
    assert warned == [f"cannot lock {path} ([Errno {errno.ENOSYS}] Function not implemented); "
                      "testing without the lock"]


def test_the_lock_is_released_when_the_job_fails(tmp_path, monkeypatch):
    released = []

    made = []

    class Spy(filelock.FileLock):  # kept alive here: a release by its finalizer does not count
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

        def release(self, *args, **kwargs):
            if self.is_locked:  # a release that lets the lock go (others find it unlocked)
                released.append(str(self.lock_file))
            return super().release(*args, **kwargs)

    monkeypatch.setattr(filelock, "FileLock", Spy)
    path = tmp_path / "sub" / "job.lock"  # the folder is made
    said: list[str] = []
    with pytest.raises(ValueError):
        with _lock(path, said, said) as outcome:
            assert outcome == LockOutcome(waited=False, held=True)
            with pytest.raises(filelock.Timeout):  # held, as another process would find it
                filelock.FileLock(path).acquire(timeout=0)
            raise ValueError("the job failed")
    assert released == [str(path)]
    with filelock.FileLock(path).acquire(timeout=0):
        pass
    assert said == []


def test_the_block_is_told_whether_it_waited_and_whether_it_holds_the_lock(tmp_path):
    """A holder that lets go within the limit: waited and held; one that never does: the
    block runs after the limit without the lock, and is told so (ONNX Runtime's engine cache,
    written in place, is then left alone)."""
    path = tmp_path / "job.lock"
    holder = filelock.FileLock(path, thread_local=False)
    holder.acquire()
    said: list[str] = []

    def say(message: str) -> None:  # the holder lets go once the wait has begun
        said.append(message)
        if len(said) == 1:
            holder.release()

    with waiting_lock(path, WORDS, say=say, warn=said.append, step_s=1.0,
                      limit_s=30.0) as outcome:  # a margin for a loaded machine
        assert outcome == LockOutcome(waited=True, held=True)
    assert said[0].startswith("another process is testing; waiting for it to finish")
    holder.acquire()
    try:
        said.clear()
        with _lock(path, said, said) as outcome:
            assert outcome == LockOutcome(waited=True, held=False)
    finally:
        holder.release()
    assert said[-1].startswith(f"gave up waiting for the lock {path} after 1 s")
