"""``tf-export`` when things go wrong around it: the checkpoint replaced while it loads (a
training run saving ``latest.pth``), an engine that cannot be built over a previous folder
holding one, and an --out that is a symbolic link (a blue/green layout)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from faults import temporaries
from helpers_weights import save_another_epoch
from tinyfaces_trt.core.files import replace_folder, staging_dir
from tinyfaces_trt.core.manifest import MANIFEST_NAME, load_export_folder
from tinyfaces_trt.export import export_pipeline
from tinyfaces_trt.export.cli_export import EXIT_ENGINE_FAILED, EXIT_ERROR, EXIT_NO_TENSORRT, EXIT_OK, main
from tinyfaces_trt.export.trt_build import EngineBuildError


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def fast_onnx(export_dir, seeded, monkeypatch):
    """The torch -> ONNX step (the slow part) replaced by the shared export's graph, and the
    load of the session's checkpoint by the network it holds (the session's: the graph above
    does not come from the loaded one); returns the weights paths the CLI loaded."""
    import onnx

    from tinyfaces_trt.export import weights

    proto = onnx.load(str(export_dir / "model.onnx"))
    monkeypatch.setattr(export_pipeline, "torch_to_onnx", lambda *a, **k: copy.deepcopy(proto))
    loaded = []
    monkeypatch.setattr(weights, "load_model", lambda path, **kwargs: loaded.append(Path(path))
                        or seeded)
    return loaded


def test_a_checkpoint_replaced_while_it_loads_is_refused(checkpoint, tmp_path, capsys,
                                                         monkeypatch):
    """The manifest would record the new file's sha256 beside the old file's weights."""
    from tinyfaces_trt.export import weights

    latest = tmp_path / "latest.pth"
    shutil.copy(checkpoint, latest)
    first = _sha256(latest)
    load = weights.load_model

    def load_then_replaced(*args, **kwargs):
        loaded = load(*args, **kwargs)
        save_another_epoch(latest)
        return loaded

    monkeypatch.setattr(weights, "load_model", load_then_replaced)
    out = tmp_path / "exp"
    assert main(["--weights", str(latest), "--out", str(out), "--no-verify"]) == EXIT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"tf-export: error: {latest} changed while it was being read (sha256 {first[:16]}... "
        f"before loading, {_sha256(latest)[:16]}... now): is a training run writing it? Nothing "
        f"was exported; run again once the file is complete")
    assert not out.exists() and temporaries(tmp_path) == []


@pytest.mark.parametrize("tensorrt", ["missing", "build fails"])
def test_a_failed_engine_leaves_the_previous_folder_and_its_engine(tensorrt, checkpoint, export_dir,
                                                                   tmp_path, capsys, monkeypatch,
                                                                   fast_onnx):
    previous = tmp_path / "exp"  # its engine was built earlier, on the GPU machine
    shutil.copytree(export_dir, previous)
    engine = previous / "model.engine"
    engine.write_bytes(b"an engine" * 1000)
    manifest = json.loads((previous / MANIFEST_NAME).read_text())
    manifest["files"]["engine_fp32"] = engine.name
    manifest["checksums"][engine.name] = {"sha256": _sha256(engine), "bytes": engine.stat().st_size}
    (previous / MANIFEST_NAME).write_text(json.dumps(manifest))
    before = _snapshot(previous)
    if tensorrt == "missing":
        monkeypatch.setattr(export_pipeline, "tensorrt_problem",
                            lambda: "NVIDIA TensorRT is not installed")
    else:
        def failed(onnx_fp32, *args, **kwargs):
            raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_fp32} (see the "
                                   f"TensorRT errors above)")

        monkeypatch.setattr(export_pipeline, "tensorrt_problem", lambda: None)
        monkeypatch.setattr(export_pipeline, "build_engine", failed)
    code = main(["--weights", str(checkpoint), "--out", str(previous), "--engine", "--no-verify"])
    assert fast_onnx == [checkpoint]
    last = capsys.readouterr().err.splitlines()[-1]
    if tensorrt == "missing":
        assert code == EXIT_NO_TENSORRT
        assert last == (f"tf-export: error: NVIDIA TensorRT is not installed: no engine can be "
                        f"built here, so "
                        f"{previous} is left as it was (nothing exported); re-run with --engine on "
                        f"a machine with TensorRT >= 10, or without --engine to replace its ONNX "
                        f"files")
    else:
        assert code == EXIT_ENGINE_FAILED
        assert last == (f"tf-export: error: TensorRT failed to build an engine from "
                        f"{previous / 'model.onnx'} (see the TensorRT errors above); {previous} is "
                        f"left as it was (the previous export: the new ONNX files were not written)")
    assert _snapshot(previous) == before and load_export_folder(previous).engine_fp32 == engine
    assert temporaries(tmp_path) == []


def test_fp16_without_tensorrt_leaves_a_folder_with_an_engine_as_it_was(
        checkpoint, export_dir, tmp_path, capsys, fast_onnx, monkeypatch):
    """--fp16 (an engine implied) on a machine without TensorRT replaced a folder holding an
    fp16 engine by its ONNX files alone, exit 0, the engine gone without a word. A folder
    without an engine is still replaced (exit 0, ONNX only)."""
    previous = tmp_path / "previous"
    shutil.copytree(export_dir, previous)
    (previous / "model_fp16.engine").write_bytes(b"an engine" * 1000)
    before = _snapshot(previous)
    monkeypatch.setattr(export_pipeline, "tensorrt_problem",
                        lambda: "NVIDIA TensorRT is not installed")
    code = main(["--weights", str(checkpoint), "--out", str(previous), "--fp16", "--no-verify"])
    assert code == EXIT_NO_TENSORRT
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"tf-export: error: NVIDIA TensorRT is not installed: no engine can be built here, and "
        f"{previous} holds model_fp16.engine (maybe hours of building), which an export without "
        "one would remove: it is left as it was (nothing exported); re-run on a machine with "
        "TensorRT >= 10, or give another --out for the ONNX files alone")
    assert _snapshot(previous) == before and fast_onnx == [checkpoint]
    (previous / "model_fp16.engine").unlink()
    assert main(["--weights", str(checkpoint), "--out", str(previous), "--fp16",
                 "--no-verify"]) == EXIT_OK
    assert sorted(p.name for p in previous.iterdir()) == [MANIFEST_NAME, "model.onnx",
                                                          "model_fp16.onnx"]


def test_out_a_symbolic_link_replaces_the_folder_it_points_to(checkpoint, export_dir, tmp_path,
                                                              capsys, fast_onnx):
    """current -> v1: the link stays, v1 gets the new export, nothing is left aside."""
    v1, current = tmp_path / "v1", tmp_path / "current"
    shutil.copytree(export_dir, v1)
    manifest = json.loads((v1 / MANIFEST_NAME).read_text())
    manifest["weights"]["sha256"] = "ab" * 32  # another checkpoint's export
    (v1 / MANIFEST_NAME).write_text(json.dumps(manifest))
    current.symlink_to("v1")
    assert main(["--weights", str(checkpoint), "--out", str(current), "--no-verify",
                 "--no-engine"]) == EXIT_OK
    assert fast_onnx == [checkpoint]
    captured = capsys.readouterr()
    assert captured.out == f"{current / MANIFEST_NAME}\n"
    assert f"tf-export: {current} is a symbolic link: exporting into the folder it points to, {v1}" \
        in captured.err.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]
    assert os.readlink(current) == "v1"
    assert load_export_folder(v1).identity.weights_sha256 == _sha256(checkpoint)


def test_replace_folder_replaces_a_link_leaving_nothing_aside(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "model.onnx").write_text("old")
    (tmp_path / "current").symlink_to("v1")
    staging = staging_dir(tmp_path, "export")
    (staging / "model.onnx").write_text("new")
    replace_folder(staging, tmp_path / "current")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v1"]
    assert not (tmp_path / "current").is_symlink()
    assert (tmp_path / "current" / "model.onnx").read_text() == "new"
    assert (tmp_path / "v1" / "model.onnx").read_text() == "old"


def test_a_failed_export_removes_the_folders_it_made_and_simplify_is_checked_first(
        checkpoint, tmp_path, capsys, fast_onnx, monkeypatch):
    """--out new/sub/out on a failed export left new/ and new/sub/ behind, empty; --simplify
    without a simplifier failed only after the load and the whole ONNX export."""
    from tinyfaces_trt.core.errors import TinyFacesError
    from tinyfaces_trt.export import onnx_export

    work = tmp_path / "work"
    work.mkdir()

    def broken(*args, **kwargs):
        raise TinyFacesError("the exporter failed")

    monkeypatch.setattr(export_pipeline, "torch_to_onnx", broken)
    assert main(["--weights", str(checkpoint), "--out", str(work / "new" / "sub" / "out"),
                 "--no-verify"]) == EXIT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == "tf-export: error: the exporter failed"
    assert list(work.iterdir()) == []
    fast_onnx.clear()
    monkeypatch.setattr(onnx_export, "SIMPLIFIERS", ("no_such_simplifier_here",))
    assert main(["--weights", str(checkpoint), "--out", str(work / "out"), "--simplify"]) == \
        EXIT_ERROR
    assert capsys.readouterr().err.splitlines()[-1] == (
        "tf-export: error: --simplify needs onnxslim or onnxsim; install one (pip install "
        "onnxslim) or leave out --simplify")
    assert fast_onnx == [] and list(work.iterdir()) == []
