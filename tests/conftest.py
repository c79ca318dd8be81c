"""Fixtures shared by the test modules: one seeded ResNet-50, its checkpoint and its export
(made once per run, whatever the number of pytest-xdist workers), a copy of that export to
replace and an export whose torch -> ONNX step is the shared export's graph; the number of
workers for ``-n auto``; each worker's share of the cores for torch and OpenMP."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal

from tinyfaces_trt.core.threads import usable_cores  # imports neither numpy nor torch


def _threads_per_worker() -> int | None:
    """The cores each pytest-xdist worker may compute on (its share, at least 1); None outside
    a run of several workers. Workers that each start a thread per core wait for one another:
    on 2 cores the suite took 181-193 s that way, 159-163 s this way (2026-12-03)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    return max(1, usable_cores() // workers) if workers >= 2 else None


#: None too where the run's environment sets OMP_NUM_THREADS itself (left to it).
THREADS_PER_WORKER = None if "OMP_NUM_THREADS" in os.environ else _threads_per_worker()
if THREADS_PER_WORKER is not None:  # before numpy's OpenBLAS loads; subprocesses inherit it
    os.environ["OMP_NUM_THREADS"] = str(THREADS_PER_WORKER)

import pytest  # noqa: E402
import torch  # noqa: E402

if THREADS_PER_WORKER is not None:
    torch.set_num_threads(THREADS_PER_WORKER)

from helpers_run import run_folder  # noqa: E402
from tinyfaces_trt.core.files import atomic_output  # noqa: E402
from tinyfaces_trt.core.manifest import MANIFEST_NAME  # noqa: E402
from tinyfaces_trt.export.model import build_model  # noqa: E402
from tinyfaces_trt.export_cache import cached_export  # noqa: E402

#: ``-n auto``'s cap: each worker holds torch, ResNet-50 exports and ONNX sessions (~1.6 GB),
#: and the suite's longest file (tests/test_kernels_cpu.py, ~40 s) bounds the gain beyond 4.
MAX_AUTO_WORKERS = 4


def pytest_configure(config: pytest.Config) -> None:
    """Python's Ctrl-C handler, where the run was started with SIGINT ignored: a shell starts a
    background job (``pytest ... &`` in a script, nohup) that way, and Python then never raises
    KeyboardInterrupt, which the tests of what Ctrl-C does send themselves."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: ignored where xdist is absent
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for ``-n auto``: one per usable core, at most :data:`MAX_AUTO_WORKERS`."""
    return min(MAX_AUTO_WORKERS, usable_cores())


@pytest.fixture(scope="session")
def seeded():
    """(model, config) of the seeded ResNet-50 network."""
    model = build_model(depth=50, seed=0)
    return model, model.detector_config()


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, seeded):
    """The seeded ResNet-50 as a tiny-faces-pytorch checkpoint (``{"model": state_dict}``)."""
    folder, lock = run_folder(tmp_path_factory, "seeded50")
    path = folder / "seeded50.pth"
    with lock:
        if not path.exists():
            folder.mkdir(exist_ok=True)
            with atomic_output(path) as tmp:  # a worker killed mid-save leaves no short file
                torch.save({"model": seeded[0].state_dict()}, tmp)
    return path


@pytest.fixture(scope="session")
def export_dir(checkpoint):
    """Its export folder (fp32 + fp16 ONNX), made once per run through the export cache (whose
    lock makes the other workers wait for it)."""
    return cached_export(checkpoint, fp16=True, cache_dir=checkpoint.parent / "cache",
                         progress=lambda _: None, verify=False).path


@pytest.fixture
def old_export(export_dir, tmp_path):
    """A copy of the shared export, marked untrained (the new export is not)."""
    folder = tmp_path / "ex"
    shutil.copytree(export_dir, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["untrained"] = True
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def fast_export(export_dir, monkeypatch):
    """The torch -> ONNX step replaced by the shared export's graph (the slow part of an
    export; everything after it, staging, saving, swapping, runs for real)."""
    import onnx

    from tinyfaces_trt.export import export_pipeline

    proto = onnx.load(str(export_dir / "model.onnx"))
    monkeypatch.setattr(export_pipeline, "torch_to_onnx", lambda *a, **k: copy.deepcopy(proto))
    return export_pipeline
