"""The export cache shared by processes: one export per key; a process that finds the key
being exported waits (saying so, for a bounded time) and reuses it; a holder killed
mid-export blocks no one; a file system without locks exports unlocked."""

from __future__ import annotations

import errno
import logging
import re
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from tinyfaces_trt import export_cache
from tinyfaces_trt.export import export_pipeline
from tinyfaces_trt.export_cache import cache_key, cached_export

pytest.importorskip("filelock")
from filelock import FileLock  # noqa: E402

#: cached_export in a child process. "wait": any export of its own is a failure (exit 3);
#: "hold": its export says so and never ends (the test kills it).
CHILD = textwrap.dedent("""
    import sys, time
    from tinyfaces_trt import export_cache
    from tinyfaces_trt.export import export_pipeline
    mode, weights, cache = sys.argv[1:]
    def say(line):
        print(line, file=sys.stderr, flush=True)
    def exporting(*args, **kwargs):
        say("EXPORTING")
        if mode == "wait":
            sys.exit(3)
        time.sleep(600)
    export_cache.reference_model = lambda *args, **kwargs: (None, None)
    export_pipeline.export_model = exporting
    print(export_cache.cached_export(weights, cache_dir=cache, progress=say).path)
""")


def _child(mode: str, checkpoint, cache) -> subprocess.Popen:
    """The child, killed after 120 s whatever it does (its pipes then close: no read hangs)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(checkpoint), str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, child.kill)
    watchdog.daemon = True
    watchdog.start()
    return child


@pytest.fixture
def fake_export(monkeypatch, export_dir):
    """export_model stands in by copying the session's export; returns the folders it wrote."""
    exports = []

    def export(model, config, out, **kwargs):
        exports.append(out)
        shutil.copytree(export_dir, out)

    monkeypatch.setattr(export_cache, "reference_model", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(export_pipeline, "export_model", export)
    return exports


def test_a_process_waits_for_the_export_another_holds_then_reuses_it(checkpoint, export_dir, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / cache_key(checkpoint)
    lock = FileLock(f"{target}.lock")  # this process is the one exporting
    lock.acquire()
    child = _child("wait", checkpoint, cache)
    try:
        waiting = child.stderr.readline()  # returns once the child has found the lock held
        assert waiting == (f"another process is exporting into the cache {target}; waiting for it "
                           f"to finish (lock {target}.lock) ...\n")
        assert child.poll() is None
        shutil.copytree(export_dir, target)  # this process's export lands
    finally:
        lock.release()
    try:
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "EXPORTING" not in err
    assert err.splitlines()[-1] == f"using the export the other process wrote: {target}"
    assert out == f"{target}\n"


def test_an_export_killed_mid_way_leaves_no_lock_behind(checkpoint, tmp_path, fake_export):
    cache = tmp_path / "cache"
    target = cache / cache_key(checkpoint)
    holder = _child("hold", checkpoint, cache)
    try:
        assert holder.stderr.readline().endswith(f"into the cache {target} (one time) ...\n")
        assert holder.stderr.readline() == "EXPORTING\n"  # holding the lock
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own
    holder.wait(timeout=60)

    def progress(line: str) -> None:
        assert "waiting" not in line, line  # fails here rather than waiting for ever

    folder = cached_export(checkpoint, cache_dir=cache, progress=progress)
    assert folder.path == target and fake_export == [target]


def test_the_wait_is_bounded_and_said(checkpoint, tmp_path, fake_export, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / cache_key(checkpoint)
    monkeypatch.setattr(export_cache, "LOCK_WAIT_STEP_S", 0.3)
    monkeypatch.setattr(export_cache, "LOCK_WAIT_LIMIT_S", 1.0)
    hung = FileLock(f"{target}.lock")  # a holder that never finishes
    hung.acquire()
    try:
        lines: list[str] = []
        folder = cached_export(checkpoint, cache_dir=cache, progress=lines.append)
    finally:
        hung.release()
    assert folder.path == target and fake_export == [target]
    assert lines[0].startswith(f"another process is exporting into the cache {target}; waiting")
    still = [line for line in lines if line.startswith("still waiting for the other export (")]
    assert len(still) <= 3 and all(line.endswith("at 1 s this process exports itself)")
                                   for line in still)  # none where the machine stalls
    assert re.match(rf"gave up waiting for the lock {re.escape(str(target))}\.lock after \d+ s ",
                    lines[len(still) + 1])  # 1 s, or more on a loaded machine
    assert lines[len(still) + 2].startswith("exporting weights")


def test_a_file_system_without_locks_exports_unlocked(checkpoint, tmp_path, fake_export,
                                                       monkeypatch, caplog):
    import filelock

    class NoLocks(filelock.FileLock):
        def acquire(self, *args, **kwargs):
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(filelock, "FileLock", NoLocks)
    cache = tmp_path / "cache"
    target = cache / cache_key(checkpoint)
    lines: list[str] = []
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export_cache"):
        folder = cached_export(checkpoint, cache_dir=cache, progress=lines.append)
    assert folder.path == target and fake_export == [target]
    assert [r.getMessage() for r in caplog.records] == [
        f"cannot lock {target}.lock ([Errno {errno.ENOLCK}] No locks available); exporting "
        "without the lock"]
    assert not [line for line in lines if "waiting" in line]
