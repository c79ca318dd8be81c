"""Folders shared by every pytest-xdist worker of one test run."""

from __future__ import annotations

import os
from pathlib import Path

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
