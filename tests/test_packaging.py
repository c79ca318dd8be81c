"""What an install from the published files needs: the source distribution holds every file
of the checkout, the dependency floors are the versions the code needs, and a command whose
extra is missing says so in one line."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tinyfaces_trt.core.errors import BackendUnavailableError
from tinyfaces_trt.core.optional import MIN_ONNXRUNTIME_VERSION

REPO = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout (the list of tracked files)")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def test_the_sdist_holds_every_tracked_file(tmp_path: Path) -> None:
    """Built from a copy of the tracked files (the egg-info stays out of the checkout): the
    tests' helpers, docs/ and examples/ the README links to, tools/ and benchmarks/ come
    along, so that the tests run from the unpacked sdist."""
    tracked = [name for name in _tracked_files() if (REPO / name).is_file()]  # not deleted
    src = tmp_path / "src"
    for name in tracked:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.build_sdist(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=src,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (archive,) = (tmp_path / "dist").glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        shipped = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    assert sorted(set(tracked) - shipped - {".gitignore"}) == []
    assert not [n for n in shipped if "__pycache__" in n or n.endswith(".pyc")]


def _floor(requirement: str) -> str:
    text = (REPO / "pyproject.toml").read_text()
    floors = set(re.findall(rf'"{re.escape(requirement)}>=([0-9.]+)"', text))
    assert len(floors) == 1, floors
    return floors.pop()


def test_the_onnxruntime_floor_is_the_version_that_loads_our_exports(export_dir: Path) -> None:
    """The exporter writes ONNX IR version 10 (ONNX Runtime 1.16 and 1.17 refuse it: "Unsupported
    model IR version: 10, max supported IR version: 9"), which ONNX Runtime loads from 1.18 on;
    both extras that install it ask for that, and the runtime checks it. An exporter that
    writes a newer IR version fails here: the floor then has to move with it."""
    import onnx

    assert _floor("onnxruntime") == MIN_ONNXRUNTIME_VERSION == "1.18"
    for name in ("model.onnx", "model_fp16.onnx"):
        assert onnx.load(str(export_dir / name), load_external_data=False).ir_version <= 10


def test_an_older_onnxruntime_is_one_error_naming_the_upgrade(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime

    from tinyfaces_trt.runtime.backends.onnxruntime_runner import import_onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.17.3")
    with pytest.raises(BackendUnavailableError) as info:
        import_onnxruntime()
    assert str(info.value) == ("the onnxruntime backend needs the onnxruntime package >= 1.18, "
                               "found the onnxruntime package 1.17.3; "
                               "pip install 'tinyfaces-trt[onnxruntime]'")
    monkeypatch.setattr(onnxruntime, "__version__", "1.18.0")
    assert import_onnxruntime() is onnxruntime


def test_the_pillow_floor_measures_labels_in_the_default_font() -> None:
    """Box labels are measured with ImageDraw.textbbox in ImageFont.load_default(), which
    Pillow before 9.2 refuses ("Only supported for TrueType fonts")."""
    from PIL import Image, ImageDraw, ImageFont

    assert _floor("pillow") == "9.2"
    draw = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    left, top, right, bottom = draw.textbbox((0, 0), "0.97", font=ImageFont.load_default())
    assert right > left and bottom > top


def test_tf_parity_without_torch_is_one_line_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tinyfaces_trt.parity import cli

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch: ModuleNotFoundError
    assert cli.main(["--untrained", "--depth", "50"]) == cli.EXIT_SETUP
    err = capsys.readouterr().err
    assert err.startswith("tf-parity: error: tf-parity (its reference is the PyTorch model) "
                          "needs torch, which is not installed ("), err
    assert err.rstrip().endswith("; pip install 'tinyfaces-trt[export]'")
    assert len(err.splitlines()) == 1
