"""The package graph: no cycle, no forbidden import, and docs/DESIGN.md draws the current one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from helpers_run import load_script

ROOT = Path(__file__).resolve().parent.parent


graph_tool = load_script("tools/import_graph.py", "import_graph")


def test_the_project_keeps_every_rule():
    assert graph_tool.violations(graph_tool.collect()) == []


def test_design_doc_draws_the_current_graph():
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    start = text.index(graph_tool.BEGIN)
    end = text.index(graph_tool.END) + len(graph_tool.END)
    assert text[start:end] == graph_tool.design_section(), \
        "docs/DESIGN.md is stale: run python tools/import_graph.py --write"


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    for folder in graph_tool.FOLDERS:
        (tmp_path / folder).mkdir(exist_ok=True)
    return tmp_path


@pytest.mark.parametrize("files, expected", [
    ({"runtime/pipeline.py": "def f():\n    import torch\n"},
     "tinyfaces_trt.runtime.pipeline imports torch: runtime never imports torch"),
    ({"runtime/pipeline.py": "from tinyfaces_trt.export.model import build_model\n",
      "export/model.py": ""},
     "tinyfaces_trt.runtime.pipeline imports tinyfaces_trt.export.model: runtime may not import export"),
    ({"core/progress.py": "import numpy, tqdm, os\ndef f():\n    import scipy.ndimage\n"},
     "tinyfaces_trt.core.progress imports scipy: core imports only the standard library and "
     "filelock, numpy, tqdm"),
    ({"core/config.py": "from ..runtime import pipeline\n", "runtime/pipeline.py": ""},
     "tinyfaces_trt.core.config imports tinyfaces_trt.runtime.pipeline: core may not import runtime"),
    ({"runtime/decode.py": "from tinyfaces_trt.kernels.binding import load_library\n",
      "kernels/binding.py": ""},
     "runtime reaches kernels only through tinyfaces_trt.runtime.backends.cuda_stages"),
    ({"export/model.py": "from tinyfaces_trt.detectors import create_detector\n",
      "tinyfaces_trt/detectors.py": ""},
     "export may not import app"),
    ({"tinyfaces_trt/a/x.py": "from tinyfaces_trt.b import y\n", "tinyfaces_trt/a/__init__.py": "",
      "tinyfaces_trt/b/y.py": "def f():\n    from tinyfaces_trt.a import x\n", "tinyfaces_trt/b/__init__.py": ""},
     "import cycle between packages: app.a -> app.b -> app.a"),
])
def test_the_checker_catches_what_it_forbids(tmp_path, monkeypatch, files, expected):
    root = _tree(tmp_path, files)
    monkeypatch.setattr(graph_tool, "ROOT", root)  # node_of looks for subpackage folders there
    problems = graph_tool.violations(graph_tool.collect(root))
    assert any(expected in p for p in problems), problems


def test_runtime_imports_without_torch_or_heavy_backends_from_a_checkout():
    """``import tinyfaces_trt.runtime`` works from a plain checkout without installing (no
    .pth file, no editable finder: ``-S`` skips them; the third-party packages' folder is put
    on the path by hand) and loads neither torch nor a GPU backend."""
    import numpy

    site_packages = str(Path(numpy.__file__).resolve().parent.parent)
    code = ("import sys; sys.path[:0] = sys.argv[1:]; import tinyfaces_trt.runtime as r; "
            "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'cuda', 'av', 'ray') "
            "if m in sys.modules]; print(r.__file__); print(heavy)")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT), site_packages],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    path, heavy = out.stdout.splitlines()
    assert Path(path) == ROOT / "runtime" / "__init__.py"
    assert heavy == "[]"
