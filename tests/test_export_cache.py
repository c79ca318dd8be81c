"""The export cache shared by processes: one export per key; a process that finds the key
being exported waits (saying so, for a bounded time) and reuses it; a holder killed
mid-export blocks no one; a file system without locks exports unlocked. An entry holds the
weights its key and manifest name (a checkpoint replaced while it loads is refused); a cache
that cannot be written is one clear error, leaving nothing behind."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from faults import enospc, temporaries
from helpers_weights import save_another_epoch
from tinyfaces_trt import export_cache
from tinyfaces_trt.core.errors import TinyFacesError, WeightsError
from tinyfaces_trt.core.manifest import MANIFEST_NAME
from tinyfaces_trt.detectors import create_detector
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
        shutil.copytree(export_dir, out, dirs_exist_ok=True)

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
    assert err.splitlines()[-1] == f"using the export another run wrote: {target}"
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_entry_recording_other_weights_is_exported_again(checkpoint, export_dir, tmp_path,
                                                            fake_export, caplog):
    """What the race of a replaced checkpoint used to leave: the key of one checkpoint, the
    manifest (and weights) of another."""
    cache = tmp_path / "cache"
    target = cache / cache_key(checkpoint)
    shutil.copytree(export_dir, target)
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    other = "ab" * 32
    manifest["weights"]["sha256"] = other
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export_cache"):
        folder = cached_export(checkpoint, cache_dir=cache, progress=lambda _: None)
    assert fake_export == [target]
    assert {r.getMessage() for r in caplog.records} == {  # before the lock and under it
        f"export cache {target} holds the export of other weights (sha256 {other}, not "
        f"{_sha256(checkpoint)}); exporting it again"}
    assert folder.identity.weights_sha256 == _sha256(checkpoint)


def test_an_entry_of_older_default_thresholds_is_exported_again(checkpoint, export_dir, tmp_path,
                                                                fake_export, caplog):
    """The cache exports with the variant's defaults; the matconvnet variant's NMS threshold
    became the release demo's 0.1 (it was 0.3): an entry written before kept running 0.3."""
    cache = tmp_path / "cache"
    target = cache / cache_key(checkpoint)
    shutil.copytree(export_dir, target)
    assert cached_export(checkpoint, cache_dir=cache).path == target and fake_export == []
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    manifest["config"]["nms_thresh"] = 0.4
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt.export_cache"):
        cached_export(checkpoint, cache_dir=cache, progress=lambda _: None)
    assert fake_export == [target]
    assert f"export cache {target} records nms_thresh 0.4 (now 0.3); exporting again" in {
        r.getMessage() for r in caplog.records}


def test_a_checkpoint_replaced_while_it_loads_is_refused(checkpoint, seeded, tmp_path,
                                                         monkeypatch):
    """A training run saves latest.pth (atomically) while the cache loads it: nothing is
    exported under the key of the bytes hashed first."""
    latest = tmp_path / "latest.pth"
    shutil.copy(checkpoint, latest)
    first = _sha256(latest)

    def load_then_replaced(weights, depth=None, variant=None):
        save_another_epoch(latest)
        return seeded

    monkeypatch.setattr(export_cache, "reference_model", load_then_replaced)
    cache = tmp_path / "cache"
    with pytest.raises(WeightsError) as info:
        cached_export(latest, cache_dir=cache, progress=lambda _: None)
    assert str(info.value) == (
        f"{latest} changed while it was being read (sha256 {first[:16]}... before loading, "
        f"{_sha256(latest)[:16]}... now): is a training run writing it? Nothing was exported; "
        f"run again once the file is complete")
    assert [p.name for p in cache.iterdir()] == [f"{first[:16]}.lock"]


def test_a_full_cache_is_one_clear_error_leaving_nothing(checkpoint, seeded, export_dir, tmp_path,
                                                         monkeypatch):
    import onnx

    proto = onnx.load(str(export_dir / "model.onnx"))
    monkeypatch.setattr(export_cache, "reference_model", lambda *args, **kwargs: seeded)
    monkeypatch.setattr(export_pipeline, "torch_to_onnx", lambda *args, **kwargs: proto)

    def full(model, path):
        Path(path).write_bytes(b"\0" * 1000)  # a part of the model, then the disk is full
        raise enospc()

    monkeypatch.setattr(export_pipeline.onnx, "save", full)
    cache = tmp_path / "cache"
    with pytest.raises(TinyFacesError) as info:
        create_detector("onnxruntime", weights=checkpoint, cache_dir=cache, progress=lambda _: None)
    assert str(info.value) == (f"cannot write the export cache {cache}: No space left on device "
                               f"(set TINYFACES_CACHE to a writable folder with free space)")
    assert [p.name for p in cache.iterdir()] == [f"{cache_key(checkpoint)}.lock"]


#: create_detector on a read-only cache; prints the error it raises.
READ_ONLY = textwrap.dedent("""
    import sys
    from tinyfaces_trt import create_detector
    try:
        create_detector("onnxruntime", weights=sys.argv[1], cache_dir=sys.argv[2])
    except Exception as exc:
        print(type(exc).__name__, exc)
""")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a read-only mount")
def test_a_read_only_cache_is_one_clear_error(checkpoint, tmp_path):
    probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("this machine does not allow user mount namespaces")
    cache = tmp_path / "cache"
    cache.mkdir()
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
              'exec "$2" -c "$3" "$4" "$1"')
    done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script, "sh", str(cache),
                           sys.executable, READ_ONLY, str(checkpoint)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cannot lock" not in done.stderr  # refused before the lock, the load, the export
    assert done.stdout == (f"TinyFacesError cannot write the export cache {cache}: Read-only file "
                           f"system (set TINYFACES_CACHE to a writable folder with free space)\n")
    assert list(cache.iterdir()) == [] and temporaries(tmp_path) == []
