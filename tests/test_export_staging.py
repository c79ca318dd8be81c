"""Where an export is staged and how it is committed: an --out that is a mount point (a Docker or
Kubernetes volume), on another file system, or under a read-only folder is built inside itself
and committed file by file, a failed commit leaving the previous export loadable; and the
cleanup of killed runs' temporaries in containers (a new host name per start, a reused process
id) and of a folder left aside by a killed ``replace_folder``."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from faults import temporaries
from test_reliability_export import _snapshot
from tinyfaces_trt.core import files
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.manifest import MANIFEST_NAME, load_export_folder

ROOT = Path(__file__).resolve().parent.parent
OTHER_HOST = "0123abcd" if files.HOST_TAG != "0123abcd" else "fedc9876"




def _inside(path: object, folder: Path) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(folder) and Path(os.path.abspath(path)) != folder


def simulate_mount(monkeypatch, mount: Path) -> None:
    """``mount`` behaves as a mount point of another file system: os.path.ismount says so, it
    cannot be renamed (EBUSY) and nothing is renamed across it (EXDEV)."""
    real_ismount, real_replace = os.path.ismount, os.replace

    def ismount(path):
        return Path(os.path.abspath(path)) == mount or real_ismount(path)

    def replace(src, dst, **kwargs):
        if mount in (Path(os.path.abspath(src)), Path(os.path.abspath(dst))):
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        if _inside(src, mount) != _inside(dst, mount):
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os.path, "ismount", ismount)
    monkeypatch.setattr(os, "replace", replace)


def _export(export_pipeline, seeded, out: Path, lines: list[str], **kwargs) -> Path:
    model, config = seeded
    return export_pipeline.export_model(model, config, out, verify=False, log=lines.append,
                                        **kwargs)


# ------------------------------------------------------------ where the export is staged


@pytest.mark.parametrize("content", ["empty", "previous export", "previous export and README"])
def test_an_export_into_a_mount_point_is_built_inside_it(content, old_export, seeded,
                                                         fast_export, monkeypatch):
    """A volume mounted at --out: the export is staged inside it and moved in file by file
    (it used to fail after the whole export with EBUSY, or EXDEV after deleting the previous
    manifest when the folder held other files)."""
    out = old_export
    if content == "empty":
        for path in out.iterdir():
            path.unlink()
    if content.endswith("README"):
        (out / "README.txt").write_text("the user's")
    simulate_mount(monkeypatch, out)
    lines: list[str] = []
    assert _export(fast_export, seeded, out, lines, fp16=True, engine=False) == \
        out / MANIFEST_NAME
    assert (f"{out}: it is a mount point; building the export in a hidden folder inside it, "
            f"then moving the files in one by one, manifest last") in lines
    loaded = load_export_folder(out)  # the new export, complete and verified
    assert not loaded.untrained and loaded.onnx_fp16 is not None
    expected = ["manifest.json", "model.onnx", "model_fp16.onnx"]
    if content.endswith("README"):
        expected.append("README.txt")
        assert (out / "README.txt").read_text() == "the user's"
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)
    assert temporaries(out.parent) == []


def test_an_export_under_a_read_only_folder_is_built_inside_the_out_folder(old_export, seeded,
                                                                          fast_export,
                                                                          monkeypatch):
    """A writable volume below a read-only root file system (Kubernetes
    readOnlyRootFilesystem): nothing can be made beside --out, so nothing is tried there."""
    out, parent = old_export, old_export.parent
    real_access, real_mkdir = os.access, os.mkdir

    def access(path, mode, **kwargs):
        return False if Path(path) == parent and mode & os.W_OK else real_access(path, mode,
                                                                                 **kwargs)

    def mkdir(path, *args, **kwargs):
        if Path(path).parent == parent:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os, "mkdir", mkdir)
    lines: list[str] = []
    _export(fast_export, seeded, out, lines)
    assert (f"{out}: {parent} is not writable; building the export in a hidden folder inside "
            f"it, then moving the files in one by one, manifest last") in lines
    assert not load_export_folder(out).untrained
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert temporaries(parent) == []


@pytest.mark.parametrize("where", ["inside a mount point", "beside, the user's files kept"])
@pytest.mark.parametrize("failing", ["model_fp16.onnx", MANIFEST_NAME])
def test_a_failed_move_leaves_the_previous_export_loadable(where, failing, old_export, seeded,
                                                           fast_export, monkeypatch):
    """A rename failing half-way through the file-by-file commit: one error line naming the
    folder and the reason, the previous export back as it was, no staging folder left (the
    previous manifest used to be deleted first)."""
    out = old_export
    (out / "README.txt").write_text("the user's")
    engine = b"an engine the new export lacks"
    (out / "model.engine").write_bytes(engine)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["files"]["engine_fp32"] = "model.engine"
    manifest["checksums"]["model.engine"] = {"sha256": hashlib.sha256(engine).hexdigest(),
                                             "bytes": len(engine)}
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert load_export_folder(out).engine_fp32 == out / "model.engine"
    before = _snapshot(out)
    if where.startswith("inside"):
        simulate_mount(monkeypatch, out)
    real_replace, failed = os.replace, []

    def replace(src, dst, **kwargs):
        if Path(dst) == out / failing and not failed:  # once: moving back works
            failed.append(src)
            raise OSError(errno.EIO, "Input/output error", str(src))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(TinyFacesError) as info:
        _export(fast_export, seeded, out, [], fp16=True, engine=False)
    assert failed
    assert str(info.value) == (f"cannot write the export folder {out}: Input/output error; the "
                               f"previous export in {out} is left as it was")
    assert _snapshot(out) == before
    loaded = load_export_folder(out)
    assert loaded.untrained and loaded.engine_fp32 == out / "model.engine"
    assert temporaries(out.parent) == []


def test_a_commit_that_cannot_rename_is_one_error_and_leaves_the_folder(old_export, seeded,
                                                                        fast_export,
                                                                        monkeypatch):
    """A mount nothing detected beforehand (EBUSY at the swap): a TinyFacesError naming the
    folder, the reason and what to do, not a bare OSError; the folder and its parent as they
    were."""
    out = old_export
    before = _snapshot(out)
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        if Path(src) == out:
            raise OSError(errno.EBUSY, "Device or resource busy", str(src))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(TinyFacesError) as info:
        _export(fast_export, seeded, out, [])
    assert str(info.value) == (
        f"cannot write the export folder {out}: Device or resource busy (a mount point, or on "
        f"another file system than the folder above it: if this persists, export into a new "
        f"folder inside it); {out} is left as it was")
    assert _snapshot(out) == before and load_export_folder(out).untrained
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


#: Run in a private mount namespace: exports into real mount points, prints what it found.
IN_MOUNTS = textwrap.dedent("""
    import copy, json, sys
    from pathlib import Path
    import onnx
    from tinyfaces_trt.core.files import staging_inside_reason
    from tinyfaces_trt.core.manifest import load_export_folder
    from tinyfaces_trt.export import export_pipeline
    from tinyfaces_trt.export.model import TinyFacesNet

    proto = onnx.load(sys.argv[1])
    export_pipeline.torch_to_onnx = lambda *a, **k: copy.deepcopy(proto)
    model = TinyFacesNet(50).eval()  # its weights are not exported (the graph above is)
    result = {}
    for out in map(Path, sys.argv[2:]):
        reason = staging_inside_reason(out)
        export_pipeline.export_model(model, model.detector_config(), out, verify=False,
                                     log=lambda _: None)
        result[out.name] = [reason, load_export_folder(out).untrained,
                            sorted(p.name for p in out.iterdir()),
                            sorted(p.name for p in out.parent.iterdir())]
    print(json.dumps(result))
""")


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for mount points")
def test_exports_into_real_mount_points(old_export, export_dir, tmp_path):
    """A tmpfs at --out (another device), and a bind mount of a folder of the same file system
    (os.path.ismount cannot see it, /proc/self/mountinfo can), each holding a previous export
    and a file of the user's."""
    probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("this machine does not allow user mount namespaces")
    tmpfs, bound, source = tmp_path / "tmpfs", tmp_path / "bound", tmp_path / "source"
    for folder in (tmpfs, bound, source):
        folder.mkdir()
    script = ('mount -t tmpfs tmpfs "$1" && cp "$4"/* "$1"/ && echo mine > "$1/README.txt" && '
              'cp "$4"/* "$3"/ && echo mine > "$3/README.txt" && mount --bind "$3" "$2" && '
              'exec "$5" -c "$6" "$7" "$1" "$2"')
    done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script, "sh", str(tmpfs),
                           str(bound), str(source), str(old_export), sys.executable, IN_MOUNTS,
                           str(export_dir / "model.onnx")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    names = ["README.txt", "manifest.json", "model.onnx"]
    siblings = sorted(p.name for p in tmp_path.iterdir())
    assert found == {"tmpfs": ["it is a mount point", False, names, siblings],
                     "bound": ["it is a mount point", False, names, siblings]}


# ------------------------------------------------------------ stale temporaries


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout)


def test_this_process_id_is_alive_only_for_what_this_process_made(tmp_path):
    """A restarted container's process often has the id of the killed one (1): a temporary
    with this process's id is kept only if this process made it and has not finished it."""
    me = f".tf-tmp-{os.getpid()}.{files.HOST_TAG}-"
    earlier = [tmp_path / f"{me}export-abcd1234", tmp_path / f".tf-tmp-{os.getpid()}-export-ef56"]
    for path in earlier:  # a killed process's, which had this id
        path.mkdir()
    (earlier[0] / "model.onnx").write_bytes(b"half")
    half = tmp_path / f"{me}k1ll3d_x-photo.json"
    half.write_text("{")
    staging = files.staging_dir(tmp_path, "export")
    with files.atomic_output(tmp_path / "photo.json") as tmp:
        tmp.write_text("{}")
        removed = files.remove_stale_temporaries(tmp_path)
        assert sorted(removed) == sorted(earlier + [half])
        assert staging.is_dir() and tmp.is_file()
    # what this process finished is forgotten: the same name again is a leftover
    tmp.write_text("{")
    files.replace_folder(staging, tmp_path / "exp")
    staging.mkdir()
    assert sorted(files.remove_stale_temporaries(tmp_path)) == sorted([tmp, staging])
    discarded = files.staging_dir(tmp_path, "export")
    files.discard_temporary(discarded)
    assert not discarded.exists()
    discarded.mkdir()
    assert files.remove_stale_temporaries(tmp_path) == [discarded]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "photo.json"]


def test_another_hosts_temporaries_are_removed_after_a_day(tmp_path):
    """A container gets a new host name each start: its killed run's leftovers carry a host
    that is never this one again. They are kept while recently modified (another machine may
    be writing them), removed after 24 h without a change."""
    day_ago = time.time() - 25 * 3600
    prefix = f".tf-tmp-{_dead_pid()}.{OTHER_HOST}-"
    old_file, new_file = tmp_path / f"{prefix}abcd1234-a.json", tmp_path / f"{prefix}efgh5678-b.json"
    old_dir, busy_dir = tmp_path / f"{prefix}export-ijkl9012", tmp_path / f"{prefix}export-mnop3456"
    old_file.write_text("{")
    new_file.write_text("{")
    for folder in (old_dir, busy_dir):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"half")
        os.utime(folder / "model.onnx", (day_ago, day_ago))
    (busy_dir / "model_fp16.onnx").write_bytes(b"being written")  # a file written now
    for path in (old_file, old_dir, busy_dir):
        os.utime(path, (day_ago, day_ago))
    assert sorted(files.remove_stale_temporaries(tmp_path)) == sorted([old_file, old_dir])
    assert sorted(tmp_path.iterdir()) == sorted([new_file, busy_dir])
    assert files.FOREIGN_TEMPORARY_AGE_S == 24 * 3600


#: replace_folder killed (SIGKILL) between its two renames, or after them.
KILLED_REPLACE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from tinyfaces_trt.core import files

    parent, when = Path(sys.argv[1]), sys.argv[2]
    staging = files.staging_dir(parent, "export")
    (staging / "model.onnx").write_text("new")
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(src)
        if when == "between" and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst)

    os.replace = replace
    if when == "after":
        files.shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    files.replace_folder(staging, parent / "my export")
""")


@pytest.mark.parametrize("when", ["between", "after"])
def test_a_folder_a_killed_replace_left_aside_is_put_back(when, tmp_path, caplog):
    """Killed between moving the old folder aside and the new one in: the target is missing,
    and the next cleanup puts the old folder back (it used to delete it). Killed after: the
    new folder is in place and the old one is removed."""
    target = tmp_path / "my export"
    target.mkdir()
    (target / "model.onnx").write_text("old")
    done = subprocess.run([sys.executable, "-c", KILLED_REPLACE, str(tmp_path), when], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(files.TEMP_PREFIX))
    asides = [name for name in left if "-old-" in name]
    assert len(asides) == 1 and asides[0].endswith("-my export")
    assert target.exists() == (when == "after")
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.core.files"):
        removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my export"]
    if when == "between":
        assert (target / "model.onnx").read_text() == "old"
        assert [p.name for p in removed] == [name for name in left if name not in asides]
        assert (f"restored {target}: an interrupted run had moved it aside (to {asides[0]}) to "
                f"replace it") in caplog.text
    else:
        assert (target / "model.onnx").read_text() == "new"
        assert [p.name for p in removed] == asides
        assert "restored" not in caplog.text


def test_another_hosts_folder_left_aside_is_put_back_at_once(tmp_path):
    """A folder moved aside by a killed run of another host (this container before it
    restarted): put back where its name is free, whatever its age; removed where the new one
    is in place (once old)."""
    prefix = f".tf-tmp-1.{OTHER_HOST}-old-"
    aside = tmp_path / f"{prefix}abcd1234-models"
    aside.mkdir()
    (aside / "model.onnx").write_text("old")
    assert files.remove_stale_temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert (tmp_path / "models" / "model.onnx").read_text() == "old"
    replaced = tmp_path / f"{prefix}efgh5678-models"
    replaced.mkdir()
    day_ago = time.time() - 25 * 3600
    os.utime(replaced, (day_ago, day_ago))
    assert files.remove_stale_temporaries(tmp_path) == [replaced]


def test_an_export_puts_back_the_folder_a_killed_export_left_aside(old_export, seeded,
                                                                   fast_export, monkeypatch):
    """The cleanup runs before the export looks at --out: the previous folder is back, so an
    export that then fails (here: no TensorRT for --engine) leaves it as it was."""
    out = old_export
    before = _snapshot(out)
    aside = out.with_name(f".tf-tmp-{_dead_pid()}.{files.HOST_TAG}-old-abcd1234-{out.name}")
    out.rename(aside)
    monkeypatch.setattr(fast_export, "tensorrt_problem", lambda: "NVIDIA TensorRT is not installed")
    with pytest.raises(fast_export.TensorRTUnavailableError, match="is left as it was"):
        _export(fast_export, seeded, out, [], engine=True)
    assert _snapshot(out) == before and load_export_folder(out).untrained
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
