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
