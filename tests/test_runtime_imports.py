"""The runtime never imports torch, and imports its heavy backends only when used."""

import pkgutil
import subprocess
import sys

import tinyfaces_trt.runtime as runtime

HEAVY = ("torch", "onnxruntime", "tensorrt", "cupy", "cuda")


def _runtime_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(runtime.__path__, "tinyfaces_trt.runtime.")]


def test_every_runtime_module_imports_without_torch_or_heavy_backends():
    modules = _runtime_modules()
    assert "tinyfaces_trt.runtime.backends.tensorrt_runner" in modules  # the walk found them all
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _console_scripts() -> dict[str, str]:
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    return project["project"]["scripts"]


def test_every_commands_help_imports_no_heavy_package():
    """``--help`` (and the argument checks before any work) of every command loads none of
    torch, onnx, the GPU packages, PyAV or Ray: tf-export's took 3 s and, without torch,
    ended in a traceback."""
    scripts = _console_scripts()
    assert {"tf-detect", "tf-export", "tf-anonymize", "tf-serve"} <= set(scripts)
    heavy = (*HEAVY, "onnx", "av", "ray")
    code = ("import contextlib, importlib, io, sys\n"
            f"for target in {list(scripts.values())!r}:\n"
            "    module, func = target.split(':')\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        getattr(importlib.import_module(module), func)(['--help'])\n"
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
