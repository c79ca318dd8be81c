"""Folders shared by every pytest-xdist worker of one test run."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
from filelock import FileLock


def run_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> tuple[Path, FileLock]:
    """``(folder, its lock)`` shared by all pytest-xdist workers of this run (under their
    basetemps' parent, which is this run's), or of this session without xdist. Hold the lock
    while filling the folder; the folder is not created."""
    root = tmp_path_factory.getbasetemp()
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and root.name == f"popen-{worker}":  # not a pytest run nested in a worker
        root = root.parent
    return root / name, FileLock(root / f"{name}.lock")


REPO = Path(__file__).resolve().parent.parent


def load_script(path: str, name: str) -> ModuleType:
    """A script of the checkout that is no module of the package (``tools/gpu_check.py``,
    ``benchmarks/bench_latency.py``), loaded afresh by its path under ``name``, which
    ``sys.modules`` then holds (dataclasses look their module up while it loads)."""
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def current_umask() -> int:
    """The process's umask now, read without setting it (Linux: ``/proc/self/status``; where
    that does not tell, the usual 022): what the writers' files get (they let the kernel apply
    it) is compared with it."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022
