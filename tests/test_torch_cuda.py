"""The torch-cuda runner on the CPU: protocol, BatchNorm folding, compiled-vs-eager
equivalence, the compile cache across processes, and the errors without a GPU.

Compiling on the CPU is gcc-bound (about 7 s for the stand-in network in a fresh Inductor
cache on 2 cores, without Inductor's vector-ISA probes: NO_ISA_PROBES), so one worker process
compiles and a second one shows the cache hit; everything else runs eagerly. The GPU half
lives in test_torch_cuda_gpu.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import weakref
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from helpers_cai import RequiresGrad
from helpers_runners import CurrentStream
from helpers_torch_cuda import INPUT_SHAPE, net_input, stand_in
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import BackendUnavailableError, NetworkInputError, TinyFacesError
from tinyfaces_trt.core.runner import NetworkRunner, RunnerBase, capabilities_of
from tinyfaces_trt.detectors import BACKENDS, available_backends, create_detector
from tinyfaces_trt.export import aoti, torch_cuda, torch_settings
from tinyfaces_trt.export.compile_cache import CompileCache
from tinyfaces_trt.export.torch_cuda import TorchCudaRunner, fold_batchnorm
from tinyfaces_trt.export import torch_runner as torch_runner_module
from tinyfaces_trt.export.torch_runner import TorchRunner, ieee_fp32_convolutions
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.runtime.pipeline import Detector

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
# compiled vs eager float32 on the CPU: same math, different kernels and summation order
COMPILED_ATOL = 1e-5
# the runner (BatchNorm folded, NHWC) vs the plain model in float32: same math in another
# order, so outputs of magnitude ~10 differ by a few ulps (3.8e-6 seen on an AMD EPYC)
FOLDED_TOL = {"rtol": 1e-5, "atol": 1e-5}


def _reference(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------------------------------
# Protocol and eager execution
# ---------------------------------------------------------------------------------------------

def test_cpu_runner_is_a_batched_host_runner():
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    assert isinstance(runner, RunnerBase) and isinstance(runner, NetworkRunner)
    caps = capabilities_of(runner)
    assert caps.batch and not caps.device_io
    assert runner.stream is None


def test_eager_matches_the_model_and_leaves_it_unchanged():
    model = stand_in()
    weight = model.conv1.weight
    x = net_input()
    out = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager").run(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
    assert out.shape == (2, 125, 4, 6)
    np.testing.assert_allclose(out, _reference(model, x), **FOLDED_TOL)
    assert model.conv1.weight is weight and not model.training


def test_batch_rows_equal_single_images():
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager",
                             channels_last=False)
    x = net_input()
    singles = [runner.run(x[i:i + 1]) for i in range(len(x))]  # first: not padded into 2
    batch = runner.run(x)
    for i in range(len(x)):
        # batch and single images block the convolutions differently: float32 rounding
        np.testing.assert_allclose(batch[i:i + 1], singles[i], atol=2e-5)


def _as_compiled(runner: TorchCudaRunner) -> None:
    """Its eager shapes recorded as compiled ones (same numbers; compiling takes a minute
    on the CPU): padding applies to shapes that cost to prepare."""
    for record in runner.records.values():
        record.mode = "compile"


def test_a_smaller_batch_runs_padded_into_a_prepared_one():
    """A video's last, shorter batch compiles nothing new: it runs in the full batch's shape
    and only its own rows come back."""
    model = stand_in()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager")
    runner.warmup([(4, 3, 32, 48)])
    assert runner.batch_shape_for((3, 3, 32, 48)) == (3, 3, 32, 48)  # eager: adding is free
    _as_compiled(runner)
    x = net_input((3, 3, 32, 48))
    out = runner.run(x)
    assert out.shape == (3, 125, 4, 6) and out.flags.c_contiguous
    np.testing.assert_allclose(out, _reference(model, x), rtol=1e-5, atol=2e-5)
    assert list(runner.records) == [(4, 3, 32, 48)]  # nothing new prepared
    assert runner.batch_shape_for((5, 3, 32, 48)) == (5, 3, 32, 48)  # larger: its own
    assert runner.batch_shape_for((2, 3, 40, 48)) == (2, 3, 40, 48)  # another image size
    runner.warmup([(2, 3, 32, 48)])
    _as_compiled(runner)
    assert runner.batch_shape_for((1, 3, 32, 48)) == (2, 3, 32, 48)  # the smallest that fits
    assert runner.batch_shape_for((4, 3, 32, 48)) == (4, 3, 32, 48)


def test_a_recurring_smaller_batch_gets_its_own_shape(monkeypatch):
    """Single images after batches would do a batch's work each time: after a few padded
    runs the shape is prepared for itself."""
    monkeypatch.setattr(torch_cuda, "PADDED_RUNS_BEFORE_OWN_SHAPE", 2)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    runner.run(net_input((4, 3, 32, 48)))  # prepared on the way (not by warmup)
    _as_compiled(runner)
    runner.prepare_after = 2  # the own shape is prepared at once, not run eager first: it recurs
    x = net_input((1, 3, 32, 48))
    for _ in range(2):
        runner.run(x)
    assert list(runner.records) == [(4, 3, 32, 48)]
    runner.run(x)
    assert list(runner.records) == [(4, 3, 32, 48), (1, 3, 32, 48)]


def test_a_batch_padded_into_a_warmed_up_shape_stays_padded(monkeypatch):
    """The shapes warmup() was given are the caller's choice (a service's sizes and batch
    sizes): a smaller batch runs padded into them however often it comes, never compiled
    while serving."""
    monkeypatch.setattr(torch_cuda, "PADDED_RUNS_BEFORE_OWN_SHAPE", 2)
    model = stand_in()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager")
    prepared = _count_preparations(runner)
    runner.warmup([(4, 3, 32, 48), (1, 3, 32, 48)])
    _as_compiled(runner)
    x = net_input((3, 3, 32, 48))
    for _ in range(5):
        out = runner.run(x)
    assert prepared == [(4, 3, 32, 48), (1, 3, 32, 48)]
    np.testing.assert_allclose(out, _reference(model, x), rtol=1e-5, atol=2e-5)


def test_warmed_up_shapes_are_never_dropped(monkeypatch, caplog):
    monkeypatch.setattr(torch_cuda, "MAX_PREPARED_SHAPES", 1)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    prepared = _count_preparations(runner)
    a, b, c, d = (net_input((1, 3, h, 48)) for h in (32, 40, 48, 56))
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"):
        runner.warmup([a.shape, b.shape, a.shape])
    assert caplog.messages == ["2 input shapes warmed up and kept prepared, more than the 1 "
                               "(MAX_PREPARED_SHAPES) kept otherwise: each holds its own CUDA "
                               "graph memory"]
    for x in (c, d, a, b, c):  # d drops c (prepared on the way); a and b stay
        runner.run(x)
    assert prepared == [a.shape, b.shape, c.shape, d.shape, c.shape]


def _count_preparations(runner: TorchCudaRunner) -> list[tuple[int, ...]]:
    """The shapes ``runner`` prepares from now on, in order (it still prepares them)."""
    prepared: list[tuple[int, ...]] = []
    original = runner._prepare

    def prepare(shape):
        prepared.append(shape)
        return original(shape)

    runner._prepare = prepare
    return prepared


def test_a_new_shape_runs_eager_until_it_recurs():
    """A folder of photos of every size must not compile a pyramid per photo: with
    prepare_after=2 a shape runs eager twice and is prepared at its third run."""
    model = stand_in()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager",
                             prepare_after=2)
    prepared = _count_preparations(runner)
    a, b = net_input((1, 3, 32, 48)), net_input((1, 3, 40, 56))
    for _ in range(2):
        np.testing.assert_allclose(runner.run(a), _reference(model, a), **FOLDED_TOL)
    runner.run(b)
    assert prepared == [] and runner.records == {}
    np.testing.assert_allclose(runner.run(a), _reference(model, a), **FOLDED_TOL)
    assert prepared == [a.shape] and list(runner.records) == [a.shape]
    runner.warmup([b.shape])  # warmup prepares at once
    runner.run(a)
    assert prepared == [a.shape, b.shape]
    with pytest.raises(ValueError, match="prepare_after must be >= 0, got -1"):
        TorchCudaRunner(model, device="cpu", dtype=torch.float32, prepare_after=-1)


def test_before_compiling_a_shape_runs_the_folded_network_eagerly():
    """Mode compile: the eager runs of a new shape use the folded network the mode compiles,
    not a second, unfolded copy of the weights."""
    model = stand_in()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="compile",
                             prepare_after=1)
    x = net_input((1, 3, 32, 48))
    out = runner.run(x)  # eager: nothing compiled yet
    assert runner.records == {} and runner._eager is None and runner._folded is not None
    np.testing.assert_allclose(out, _reference(model, x), **FOLDED_TOL)


def test_the_least_recently_used_prepared_shape_is_dropped(monkeypatch):
    monkeypatch.setattr(torch_cuda, "MAX_PREPARED_SHAPES", 2)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    prepared = _count_preparations(runner)
    a, b, c = (net_input((1, 3, h, 48)) for h in (32, 40, 48))
    for x in (a, b, a, c):  # c drops b (a was used since)
        runner.run(x)
    assert prepared == [a.shape, b.shape, c.shape]
    for x in (c, b, c, a):  # b drops a; a then drops b
        runner.run(x)
    assert prepared == [a.shape, b.shape, c.shape, b.shape, a.shape]


def test_a_dropped_shape_that_comes_back_is_prepared_at_once(monkeypatch, caplog):
    monkeypatch.setattr(torch_cuda, "MAX_PREPARED_SHAPES", 1)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager",
                             prepare_after=2)
    prepared = _count_preparations(runner)
    a, b = net_input((1, 3, 32, 48)), net_input((1, 3, 40, 48))
    for x in (a, a, a, b, b, b):  # b's preparation drops a
        runner.run(x)
    assert prepared == [a.shape, b.shape]
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt.export.torch_cuda"):
        runner.run(a)  # no eager runs: it recurs
        runner.run(b)
    assert prepared == [a.shape, b.shape, a.shape, b.shape]
    again = [r for r in caplog.records if "prepared again after it was dropped" in r.getMessage()]
    assert [r.levelname for r in again] == ["WARNING", "INFO"]  # said loudly once
    assert again[0].getMessage() == (f"input shape {a.shape} prepared again after it was dropped: "
                                     "this runner uses more than 1 shapes (MAX_PREPARED_SHAPES) "
                                     "in turn")


def test_eager_runs_are_counted_for_a_bounded_number_of_shapes(monkeypatch):
    monkeypatch.setattr(torch_cuda, "MAX_COUNTED_SHAPES", 2)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager",
                             prepare_after=2)
    prepared = _count_preparations(runner)
    a, b, c = (net_input((1, 3, h, 48)) for h in (32, 40, 48))
    for x in (a, a, b, c):  # c's count forgets a's, the oldest
        runner.run(x)
    for x in (a, a):
        runner.run(x)
    assert prepared == []
    runner.run(a)
    assert prepared == [a.shape]


def test_a_warmup_that_fails_keeps_only_what_it_prepared(monkeypatch):
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    original = runner._prepare

    def prepare(shape):
        if shape[2] == 40:
            raise RuntimeError("CUDA out of memory")
        return original(shape)

    runner._prepare = prepare
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        runner.warmup([(1, 3, 32, 48), (1, 3, 40, 48), (1, 3, 48, 48)])
    assert runner._kept == {(1, 3, 32, 48)} and list(runner._callables) == [(1, 3, 32, 48)]


def test_a_captured_graph_takes_a_smaller_batch_in_its_static_input():
    """The CUDA-graph path of padding, with the graph stood in (its replay doubles the
    static input into the static output)."""
    captured = object.__new__(torch_cuda._Captured)
    captured.static_in = torch.full((4, 3, 2, 2), 7.0)
    captured.static_out = torch.zeros((4, 3, 2, 2))
    captured.graph = SimpleNamespace(
        replay=lambda: captured.static_out.copy_(captured.static_in * 2))
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)
    out = captured(x)
    assert out.shape == (2, 3, 2, 2) and out.is_contiguous()
    torch.testing.assert_close(out, x * 2)
    assert captured(torch.ones((4, 3, 2, 2))) is captured.static_out  # full batch: no slice


def test_a_captured_graph_reads_its_static_input_in_place_without_a_copy():
    """An input that is the static input itself (a preprocessor resized into it through
    TorchCudaRunner.input_buffer) is not copied onto itself: torch would copy (the alias is
    a new storage over the same memory), the version counter shows any in-place write."""
    captured = object.__new__(torch_cuda._Captured)
    captured.static_in = torch.arange(48, dtype=torch.float32).reshape(4, 3, 2, 2)
    captured.static_out = torch.zeros((4, 3, 2, 2))
    captured.graph = SimpleNamespace(
        replay=lambda: captured.static_out.copy_(captured.static_in * 2))
    written = captured.static_in._version
    alias = torch.from_numpy(captured.static_in.numpy())  # another tensor, the same memory
    torch.testing.assert_close(captured(alias), alias * 2)
    assert captured.static_in._version == written
    other = torch.ones((4, 3, 2, 2))
    torch.testing.assert_close(captured(other), other * 2)
    assert captured.static_in._version == written + 1  # an input elsewhere is copied in


def test_a_cpu_runner_gives_no_input_buffers():
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    assert runner.capabilities.input_buffers is False
    assert runner.input_buffer((1, 3, 16, 16)) is None
    runner.close()


def test_detector_over_the_runner_matches_the_torch_reference():
    model, config = stand_in(), DetectorConfig()
    image = synthetic_image(48, 64, seed=3)
    expected = Detector(TorchRunner(model), config).detect(image)
    with Detector(TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager"),
                  config) as detector:
        boxes = detector.detect(image)
    assert len(expected) > 0
    np.testing.assert_allclose(boxes, expected, atol=1e-3)


def test_detector_warmup_prepares_every_level_before_the_first_image():
    """A service's sizes are prepared when it starts, not at a size's third request: the
    detector's warmup prepares each pyramid level for single images and the batch size, and
    the images after it neither prepare nor run eager (a batch of 2 runs padded into the 3)."""
    model, config = stand_in(), DetectorConfig()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager",
                             prepare_after=torch_cuda.PREPARE_AFTER_RUNS)
    prepared = _count_preparations(runner)
    detector = Detector(runner, config)
    detector.warmup([(48, 64)], batch_sizes=(1, 3))
    levels = detector.plan(48, 64)
    expected = [(n, 3, lv.height, lv.width) for n in (1, 3) for lv in levels]
    assert prepared == expected and len(levels) > 1
    _as_compiled(runner)
    image = synthetic_image(48, 64, seed=3)
    boxes = detector.detect(image)
    pair = detector.detect_batch([image, synthetic_image(48, 64, seed=4)])
    assert prepared == expected and runner._eager_runs == {} and runner._padded_runs
    reference = Detector(TorchRunner(model), config)
    assert len(boxes) > 0
    np.testing.assert_allclose(boxes, reference.detect(image), atol=1e-3)
    np.testing.assert_allclose(pair[0], boxes, atol=1e-3)


def test_bad_inputs_and_closed_runner():
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    with pytest.raises(NetworkInputError, match=r"^network input must be a \(N, 3, h, w\) float32 "
                                                r"array, got \(1, 4, 16, 16\) float32$"):
        runner.run(np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(NetworkInputError, match=r"got \(1, 3, 16, 16\) float64$"):  # not cast
        runner.run(np.zeros((1, 3, 16, 16), np.float64))

    class DeviceArrayLike:  # refused before it is touched: a CPU runner takes numpy only
        __cuda_array_interface__ = {"shape": (1, 3, 8, 8), "typestr": "<f4", "data": (0, False),
                                    "version": 3}

    with pytest.raises(NetworkInputError, match="^a CUDA array was given to a CPU runner; give "
                                                "a numpy array$"):
        runner.run(DeviceArrayLike())
    with pytest.raises(NetworkInputError, match=r"^cannot read the RequiresGrad's "
                                                r"__cuda_array_interface__: .* use var.detach\(\)"):
        runner.run(RequiresGrad())
    runner.close()
    runner.close()  # idempotent
    with pytest.raises(TinyFacesError, match="closed"):
        runner.run(net_input())


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "fast"}, "unknown mode"),
    ({"dtype": torch.float16}, "needs a CUDA device"),
    ({"mode": "graphs", "dtype": torch.float32}, "needs a CUDA device"),
    ({"dtype": torch.int8}, "unsupported dtype"),
    ({"dtype": torch.float32, "stream": 0}, "CPU runner"),
])
def test_invalid_cpu_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TorchCudaRunner(stand_in(), device="cpu", **kwargs)


# ---------------------------------------------------------------------------------------------
# BatchNorm folding
# ---------------------------------------------------------------------------------------------

def test_fold_batchnorm_on_the_real_network(seeded):
    model = seeded[0]
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in folded.modules()) == \
        sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = net_input((1, 3, 32, 48))
    with torch.no_grad():
        out = folded(torch.from_numpy(x)).numpy()
    ref = _reference(model, x)
    # the fp32 map tolerance of the parity suite (atol 5e-4); measured max |d| ~1.3e-5
    assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_fold_batchnorm_leaves_a_convolution_called_twice():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.bn(self.conv(x)) + self.conv(x)  # the second call needs the raw weights
            return self.bn2(self.conv2(y))

    torch.manual_seed(0)
    model = Shared().eval()
    for bn in (model.bn, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    folded = fold_batchnorm(model)
    assert [name for name, _ in folded.named_children()] == ["conv", "bn", "conv2"]  # bn2 folded
    x = torch.randn(1, 3, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Compile fallback, compiled equivalence and the compile cache
# ---------------------------------------------------------------------------------------------

def test_compile_failure_falls_back_to_eager(monkeypatch, caplog, tmp_path):
    def failing_compile(module, **kwargs):
        def run(x):
            raise RuntimeError("C++ compiler not found")
        return run

    monkeypatch.setattr(torch_cuda.torch, "compile", failing_compile)
    model, x = stand_in(), net_input()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"):
        out = runner.run(x)
    assert "torch.compile failed" in caplog.text and "C++ compiler not found" in caplog.text
    assert runner.mode == "eager" and runner.records[INPUT_SHAPE].mode == "eager"
    np.testing.assert_allclose(out, _reference(model, x), **FOLDED_TOL)


def test_ctrl_c_while_compiling_is_not_a_compile_failure(monkeypatch, tmp_path):
    """Inductor wraps what it catches: a Ctrl-C inside it must stop the run, not fall back to
    eager and go on."""
    def interrupted(module, **kwargs):
        def run(x):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("compilation failed")
        return run

    monkeypatch.setattr(torch_cuda.torch, "compile", interrupted)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        runner.run(net_input())
    assert runner.mode == "compile" and INPUT_SHAPE not in runner.records


#: Inductor's CPU vector-ISA probes skipped (each ISA the CPU's flags name taken as working):
#: in a fresh Inductor cache they gcc-compile ATen's vector headers once per ISA (~12 s of the
#: first compile's ~17 s on 2 cores) and dlopen each result in a child Python. Where the probes
#: would pass (a gcc that builds for the CPU's ISAs), Inductor generates the same code byte for
#: byte (same kernel and wrapper files, same cache keys: checked with torch 2.13 on x86-64);
#: the runner's compile, cache and fallback paths are untouched.
NO_ISA_PROBES = {"TORCHINDUCTOR_VEC_ISA_OK": "1"}


def _compile_in_fresh_process(cache_dir: Path, inductor_dir: Path, prefix: Path) -> dict:
    code = ("import sys; sys.path.insert(0, 'tests'); "
            "from helpers_torch_cuda import compile_worker; "
            "compile_worker(sys.argv[1], sys.argv[2])")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir), **NO_ISA_PROBES}
    done = subprocess.run([sys.executable, "-c", code, str(cache_dir), str(prefix)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(prefix.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The stand-in compiled by a first process, then by a second one whose Inductor cache
    has lost its graphs (only the compile-cache file can bring them back)."""
    work = tmp_path_factory.mktemp("torch_compile")
    cache, inductor = work / "cache", work / "inductor"
    first = _compile_in_fresh_process(cache, inductor, work / "first")
    # Keep the built C++ kernels (gcc is the slow part on a CPU; on a GPU the Triton kernels
    # travel inside the cache file) but drop every compiled graph Inductor keeps locally.
    for sub in ("fxgraph", "aotautograd"):
        shutil.rmtree(inductor / sub, ignore_errors=True)
    second = _compile_in_fresh_process(cache, inductor, work / "second")
    return work, first, second


def test_compiled_matches_eager_on_the_cpu(two_processes):
    work, first, _ = two_processes
    assert first["mode"] == "compile" and first["misses"] >= 1 and not first["cache_loaded"]
    compiled, eager = np.load(work / "first.npy"), np.load(work / "first-eager.npy")
    assert compiled.shape == (2, 125, 4, 6) and compiled.dtype == np.float32
    np.testing.assert_allclose(compiled, eager, atol=COMPILED_ATOL, rtol=0)
    assert first["repeat_equal"]
    assert first["released"], "close() left the compiled model alive"
    # a compile takes seconds: said through progress (tf-detect prints it); eager is not
    (line,) = first["said"]
    assert re.fullmatch(r"torch-cuda: input shape 2x3x32x48 ready in \d+\.\d s \(compile\)", line)
    assert first["said_eager"] == []


def test_second_process_loads_the_compile_cache(two_processes):
    work, first, second = two_processes
    cache_file = Path(first["cache_file"])
    assert cache_file.is_file() and cache_file.name == "2x3x32x48.bin"
    assert (cache_file.parent / "key.json").is_file()
    assert second["cache_file"] == first["cache_file"]
    assert second["cache_loaded"] and second["hits"] >= 1 and second["misses"] == 0
    assert all(line.endswith("(compile, from the compile cache)") for line in second["said"])
    np.testing.assert_allclose(np.load(work / "second.npy"), np.load(work / "first.npy"),
                               atol=1e-6, rtol=0)


def _wait_for_log(caplog, text: str, worker: threading.Thread) -> None:
    """Returns once a log record contains ``text`` (the worker thread logs it)."""
    for _ in range(600):
        if any(text in r.getMessage() for r in caplog.records):
            return
        assert worker.is_alive(), caplog.text
        time.sleep(0.05)
    raise AssertionError(f"no log record says {text!r}: {caplog.text}")


def _run_while_another_holds(lock_path: Path, run, land, caplog, before_landing=lambda: None):
    """Runs ``run()`` in a thread while "another process" (a lock of the test's own) holds
    ``lock_path``; once the runner says it waits, ``before_landing()`` checks what it has done
    so far, ``land()`` writes the other process's file, and the lock is released. Returns
    ``run()``'s result and the compile cache's log messages."""
    from filelock import FileLock

    holder = FileLock(lock_path)
    holder.acquire()
    result: list = []
    worker = threading.Thread(target=lambda: result.append(run()))
    try:
        with caplog.at_level(logging.INFO, logger="tinyfaces_trt.export"):
            worker.start()
            _wait_for_log(caplog, "waiting for it to finish", worker)
            before_landing()
            land()
            holder.release()
            worker.join(timeout=60)
    finally:
        if holder.is_locked:
            holder.release()
    assert not worker.is_alive() and result, caplog.text
    return result[0], [r.getMessage() for r in caplog.records if r.name.endswith("compile_cache")]


def _compile_stand_ins(monkeypatch, lock_path: Path | None = None) -> tuple[list, list]:
    """torch.compile and the mega-cache stood in: returns the shapes compiled (a compiled
    module's first call; it checks that the shape's lock is held then, when ``lock_path`` is
    given) and the data loaded from cache files."""
    from filelock import FileLock, Timeout

    compiled, loaded = [], []

    def compile_stand_in(module, **kwargs):
        first = []

        def run(x):
            if not first:
                first.append(True)
                if lock_path is not None:  # a second holder, as another process would be
                    with pytest.raises(Timeout):
                        FileLock(lock_path).acquire(timeout=0)
                compiled.append(tuple(x.shape))
            return module(x)
        return run

    monkeypatch.setattr(torch_cuda.torch, "compile", compile_stand_in)
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: loaded.append(data) or {})
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"this process's", None))
    return compiled, loaded


def _cache_of(runner: TorchCudaRunner, cache_dir: Path) -> CompileCache:
    cache = CompileCache.for_module(runner._folded_net(), runner.device, runner.dtype,
                                    runner.channels_last, cache_dir)
    cache.folder.mkdir(parents=True, exist_ok=True)
    return cache


def _run_holding(lock_path: Path, runner: TorchCudaRunner, caplog) -> list[str]:
    """Runs the runner once while "another process" (a lock of the test's own, never released
    during the run) holds ``lock_path``; returns the compile cache's log messages."""
    from filelock import FileLock

    holder = FileLock(lock_path)
    holder.acquire()
    try:
        with caplog.at_level(logging.INFO, logger="tinyfaces_trt.export.compile_cache"):
            runner.run(net_input())
    finally:
        holder.release()
    return [r.getMessage() for r in caplog.records if r.name.endswith("compile_cache")]


def test_a_shape_another_process_compiles_is_waited_for_then_loaded(monkeypatch, tmp_path, caplog):
    """Replicas sharing a cache compile a shape once: this runner finds the shape's lock held
    (by "another process": a lock of the test's own), waits without compiling, then loads
    the file the holder wrote; it holds the lock itself while it compiles."""
    model, x = stand_in(), net_input()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    cache = _cache_of(runner, tmp_path)
    lock_path = cache.folder / "2x3x32x48.lock"
    compiled, loaded = _compile_stand_ins(monkeypatch, lock_path)

    def waits_without_compiling_or_loading() -> None:
        assert not compiled and not loaded

    out, messages = _run_while_another_holds(
        lock_path, lambda: runner.run(x),
        lambda: cache.path(INPUT_SHAPE).write_bytes(b"the other process's"), caplog,
        before_landing=waits_without_compiling_or_loading)
    assert messages == [
        f"another process is compiling input shape {INPUT_SHAPE} into {cache.path(INPUT_SHAPE)}; "
        f"waiting for it to finish (lock {lock_path}) ..."]
    record = runner.records[INPUT_SHAPE]
    assert record.mode == "compile" and record.cache_loaded and loaded == [b"the other process's"]
    assert 0 < record.wait_seconds <= record.seconds
    assert "of it waiting for another process's compile" in caplog.text
    assert compiled == [INPUT_SHAPE]  # compiled (from the loaded artefacts) under the lock
    assert cache.path(INPUT_SHAPE).read_bytes() == b"the other process's"  # nothing to save
    np.testing.assert_allclose(out, _reference(model, x), **FOLDED_TOL)


def test_a_shape_in_the_cache_is_loaded_without_the_lock(monkeypatch, tmp_path, caplog):
    """Processes loading a warm (or read-only) cache never wait for each other."""
    from tinyfaces_trt.export import compile_cache

    monkeypatch.setattr(compile_cache, "LOCK_WAIT_LIMIT_S", 5.0)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    cache = _cache_of(runner, tmp_path)
    compiled, loaded = _compile_stand_ins(monkeypatch)
    cache.path(INPUT_SHAPE).write_bytes(b"compiled before")
    # another process holds the lock (loading it): this one does not wait for it
    assert _run_holding(cache.folder / "2x3x32x48.lock", runner, caplog) == []
    record = runner.records[INPUT_SHAPE]
    assert record.cache_loaded and loaded == [b"compiled before"] and record.wait_seconds == 0


def test_precompile_fills_the_cache_and_prepares_nothing(monkeypatch, tmp_path):
    """What another process (gpu_check beside its tests) does before a run: each shape not in
    the cache is compiled into it (under its lock), one already there is left, nothing is
    captured or kept; a runner preparing the shapes later loads them."""
    small = (1, 3, 16, 24)
    said: list[str] = []
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, cache_dir=tmp_path,
                             progress=said.append)
    cache = _cache_of(runner, tmp_path)
    compiled, loaded = _compile_stand_ins(monkeypatch, cache.folder / "2x3x32x48.lock")
    cache.path(small).write_bytes(b"compiled before")
    records = runner.precompile([INPUT_SHAPE, list(small), INPUT_SHAPE])
    assert list(records) == [INPUT_SHAPE, small]
    assert compiled == [INPUT_SHAPE] and loaded == []  # the cached shape is not even loaded
    assert cache.path(INPUT_SHAPE).read_bytes() == b"this process's"
    assert cache.path(small).read_bytes() == b"compiled before"
    fresh, cached = records[INPUT_SHAPE], records[small]
    assert (fresh.mode, fresh.cache_loaded, fresh.cache_file) == (
        "compile", False, cache.path(INPUT_SHAPE))
    assert (cached.cache_loaded, cached.cache_file) == (True, cache.path(small))
    (line,) = said  # only what took a compile is said
    assert re.fullmatch(r"torch-cuda: input shape 2x3x32x48 compiled into the cache in "
                        r"\d+\.\d s", line)
    assert runner.records == {} and runner.batch_shape_for(INPUT_SHAPE) == INPUT_SHAPE
    again = runner.precompile([INPUT_SHAPE, small])
    assert all(r.cache_loaded for r in again.values()) and compiled == [INPUT_SHAPE]
    compiled, loaded = _compile_stand_ins(monkeypatch)  # no lock: the file is there
    later = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    later.warmup([INPUT_SHAPE])
    assert later.records[INPUT_SHAPE].cache_loaded and loaded == [b"this process's"]


def test_precompile_in_modes_that_compile_nothing_and_after_close(tmp_path):
    eager = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager",
                            cache_dir=tmp_path)
    assert eager.precompile([INPUT_SHAPE]) == {} and not any(tmp_path.iterdir())
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    runner.close()
    with pytest.raises(TinyFacesError, match="this TorchCudaRunner is closed"):
        runner.precompile([INPUT_SHAPE])


def test_a_shape_waits_at_most_the_limit_then_compiles(monkeypatch, tmp_path, caplog):
    from tinyfaces_trt.export import compile_cache

    monkeypatch.setattr(compile_cache, "LOCK_WAIT_STEP_S", 0.3)
    monkeypatch.setattr(compile_cache, "LOCK_WAIT_LIMIT_S", 1.0)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    cache = _cache_of(runner, tmp_path)
    compiled, _ = _compile_stand_ins(monkeypatch)
    hung = cache.folder / "2x3x32x48.lock"  # its holder never finishes
    lines = _run_holding(hung, runner, caplog)
    assert lines[0].startswith("another process is compiling input shape (2, 3, 32, 48)")
    assert all(line.startswith("still waiting for the other compile (")  # (a loaded machine
               and line.endswith("at 1 s this process compiles itself)")  # may say none)
               for line in lines[1:-1])
    assert re.fullmatch(rf"gave up waiting for the lock {re.escape(str(hung))} after "
                        r"\d+ s \(its holder may hang\); going on without it", lines[-1])
    assert runner.records[INPUT_SHAPE].mode == "compile" and compiled == [INPUT_SHAPE]
    assert cache.path(INPUT_SHAPE).read_bytes() == b"this process's"


@pytest.mark.skipif(not os.environ.get("TINYFACES_SLOW_TESTS"),
                    reason="compiles ResNet-50 on the CPU (~60 s); set TINYFACES_SLOW_TESTS=1")
def test_compiled_resnet50_matches_eager(seeded, tmp_path):
    model = seeded[0]
    x = net_input((1, 3, 32, 48))
    compiled = TorchCudaRunner(model, device="cpu", dtype=torch.float32, cache_dir=tmp_path)
    out = compiled.run(x)
    assert compiled.records[(1, 3, 32, 48)].mode == "compile"
    eager = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager").run(x)
    np.testing.assert_allclose(out, eager, atol=5e-4, rtol=1e-4)  # the fp32 parity tolerance


# ---------------------------------------------------------------------------------------------
# AOTInductor packages (mode "aoti")
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def aoti_package(tmp_path_factory):
    """The stand-in compiled into one AOTInductor package (gcc: ~5 s on 2 cores, plus ~5 s for
    Inductor's precompiled header in a fresh Inductor cache), with the runner's output and
    record."""
    import torch._inductor.config as inductor_config

    cache = tmp_path_factory.mktemp("aoti")
    # as NO_ISA_PROBES, in-process; for the rest of this worker's life, not this block only:
    # Inductor caches the list of usable ISAs at its first compile (valid_vec_isa_list)
    with inductor_config.patch({"cpp.vec_isa_ok": True}):
        with TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="aoti",
                             cache_dir=cache) as runner:
            out = runner.run(net_input())
    return cache, out, runner.records[INPUT_SHAPE]


def _aoti_runner(cache: Path) -> TorchCudaRunner:
    return TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="aoti",
                           cache_dir=cache)


def _reuse_package(good: bytes, built: list):
    def compile_and_package(program, *, package_path):  # the real export ran; reuse a package
        built.append(Path(package_path))
        Path(package_path).write_bytes(good)
        return package_path
    return compile_and_package


def test_aoti_package_matches_eager_and_embeds_the_weights(aoti_package):
    cache, out, record = aoti_package
    assert record.mode == "aoti" and not record.cache_loaded
    eager = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    np.testing.assert_allclose(out, eager.run(net_input()), atol=COMPILED_ATOL, rtol=0)
    package = record.cache_file
    assert package.parent.parent == cache / aoti.PACKAGE_SUBDIR
    assert sorted(p.name for p in package.parent.iterdir()) == [
        "2x3x32x48.lock", "2x3x32x48.pt2", "2x3x32x48.pt2.loads", "key.json"]
    key = json.loads((package.parent / "key.json").read_text())
    assert key["form"] == "aotinductor" and key["dtype"] == "torch.float32"
    assert key["weights"] == aoti.weights_digest(
        TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32)._folded_net())
    with zipfile.ZipFile(package) as archive:  # built under its own name, not a temporary's
        assert {name.split("/")[0] for name in archive.namelist()} == {"2x3x32x48"}


def test_a_second_runner_loads_the_package_without_compiling(aoti_package, monkeypatch):
    cache, out, _ = aoti_package

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(aoti.torch.export, "export", no_export)
    with _aoti_runner(cache) as runner:
        again = runner.run(net_input())
        record = runner.records[INPUT_SHAPE]
        loaded = weakref.ref(runner._callables[INPUT_SHAPE])
    assert record.mode == "aoti" and record.cache_loaded and record.seconds < 5
    np.testing.assert_array_equal(again, out)
    gc.collect()
    assert loaded() is None, "close() left the loaded package alive"


def test_a_package_loads_in_a_child_process_once_before_this_one(aoti_package, tmp_path,
                                                                 monkeypatch):
    """torch's loader can crash the process that calls it (torch 2.11 on the lent H200): a
    package is loaded in a child process first, and its marker spares that check until the
    package file or torch changes."""
    cache, out, record = aoti_package
    st = record.cache_file.stat()
    assert aoti.check_marker(record.cache_file).read_text() == (
        f"torch {torch.__version__}; {st.st_size} bytes; mtime_ns {st.st_mtime_ns}\n")
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    package = copy / record.cache_file.relative_to(cache)
    children = []
    real_run = aoti.subprocess.run

    def counted(cmd, **kwargs):
        children.append(cmd)
        return real_run(cmd, **kwargs)

    monkeypatch.setattr(aoti.subprocess, "run", counted)
    with _aoti_runner(copy) as runner:
        np.testing.assert_array_equal(runner.run(net_input()), out)
    assert children == [] and runner.records[INPUT_SHAPE].cache_loaded
    aoti.check_marker(package).write_text("torch 0.0; 1 bytes; mtime_ns 0\n")  # another's
    with _aoti_runner(copy) as runner:
        np.testing.assert_array_equal(runner.run(net_input()), out)
    assert len(children) == 1 and children[0][:3] == [sys.executable, "-P", "-c"]
    assert children[0][4:] == [str(package), "cpu", "-1"]
    st = package.stat()
    assert aoti.check_marker(package).read_text() == (
        f"torch {torch.__version__}; {st.st_size} bytes; mtime_ns {st.st_mtime_ns}\n")


@pytest.mark.parametrize("child, words", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
     "crashed a child process (SIGSEGV) on 2x3x32x48.pt2: not loaded into this process"),
    ("import time; time.sleep(60)",
     "took over 0.5 s on 2x3x32x48.pt2 in a child process: not loaded into this process"),
], ids=["crash", "hang"])
def test_a_loader_that_kills_its_process_means_a_fallback_not_a_crash(
        aoti_package, tmp_path, monkeypatch, caplog, child, words):
    cache, _, record = aoti_package
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    package = copy / record.cache_file.relative_to(cache)
    aoti.check_marker(package).unlink()
    monkeypatch.setattr(aoti, "_CHECK_CODE", child)  # what torch's loader did on the H200
    monkeypatch.setattr(aoti, "CHECK_TIMEOUT_S", 0.5)

    def never(*args, **kwargs):
        raise AssertionError("compiled again or loaded into this process")

    monkeypatch.setattr(aoti.torch._inductor, "aoti_compile_and_package", never)
    monkeypatch.setattr(aoti.torch._inductor, "aoti_load_package", never)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"):
        with _aoti_runner(copy) as runner:
            got = runner.run(net_input())
    said = (f"AOTInductor failed for input shape (2, 3, 32, 48) (PackageLoadError: torch "
            f"{torch.__version__}'s AOTInductor loader {words} (recorded in "
            "2x3x32x48.pt2.crashed; delete it to check again)); falling back to mode 'eager'")
    assert said in caplog.text
    assert runner.mode == "eager" and runner.records[INPUT_SHAPE].mode == "eager"
    assert not aoti.check_marker(package).exists()
    np.testing.assert_allclose(got, _reference(stand_in(), net_input()), **FOLDED_TOL)
    assert aoti.crash_marker(package).read_text().endswith(words + "\n")
    # the next process falls back at once: no child crashes (or hangs 300 s) again
    caplog.clear()
    monkeypatch.setattr(aoti.subprocess, "run", never)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"):
        with _aoti_runner(copy) as runner:
            runner.run(net_input())
    assert said in caplog.text and runner.mode == "eager"


def test_a_child_killed_from_outside_is_no_record_of_a_crash(aoti_package, tmp_path,
                                                             monkeypatch, caplog):
    """SIGTERM to the process group (or the OOM killer) ends the child too: this process falls
    back, and nothing is recorded against the package (the next process checks it again)."""
    cache, _, record = aoti_package
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    package = copy / record.cache_file.relative_to(cache)
    aoti.check_marker(package).unlink()
    monkeypatch.setattr(aoti, "_CHECK_CODE",
                        "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"):
        with _aoti_runner(copy) as runner:
            runner.run(net_input())
    assert ("(PackageLoadError: a child process loading 2x3x32x48.pt2 was killed (SIGTERM): not "
            "loaded into this process); falling back to mode 'eager'") in caplog.text
    assert not aoti.crash_marker(package).exists() and not aoti.check_marker(package).exists()


def test_a_package_no_child_can_check_is_loaded_here_with_a_warning(aoti_package, tmp_path,
                                                                    monkeypatch, caplog):
    """A child that cannot start, or fails with an exception (a GPU in exclusive-process mode
    gives it no context), checks nothing: said, and the caller loads the package itself
    (nothing recorded, nothing compiled again)."""
    cache, out, record = aoti_package
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    package = copy / record.cache_file.relative_to(cache)
    aoti.check_marker(package).unlink()

    def never(*args, **kwargs):
        raise AssertionError("compiled again")

    def loaded_here_saying(warning: str) -> None:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.aoti"):
            with _aoti_runner(copy) as runner:
                np.testing.assert_array_equal(runner.run(net_input()), out)
        assert warning in caplog.text and runner.records[INPUT_SHAPE].mode == "aoti"
        assert not aoti.check_marker(package).exists() and not aoti.crash_marker(package).exists()

    def no_python(cmd, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(aoti.torch._inductor, "aoti_compile_and_package", never)
    monkeypatch.setattr(aoti, "_CHECK_CODE",
                        "raise SystemExit('all CUDA-capable devices are busy')")
    loaded_here_saying(f"checking AOTInductor package {package} in a child process failed (exit "
                       "1: all CUDA-capable devices are busy); loading it here")
    monkeypatch.setattr(aoti.subprocess, "run", no_python)
    loaded_here_saying(f"cannot check AOTInductor package {package} in a child process (No such "
                       "file or directory); loading it here")


def test_a_package_another_process_compiles_is_waited_for_then_loaded(aoti_package, tmp_path,
                                                                      monkeypatch, caplog):
    cache, out, record = aoti_package

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(aoti.torch.export, "export", no_export)
    copy = tmp_path / "cache"
    package = copy / record.cache_file.relative_to(cache)
    lock_path = package.with_suffix(".lock")
    lock_path.parent.mkdir(parents=True)
    runner = _aoti_runner(copy)  # "another process" is compiling the package
    again, messages = _run_while_another_holds(
        lock_path, lambda: runner.run(net_input()),
        lambda: shutil.copyfile(record.cache_file, package), caplog)
    runner.close()
    assert messages == [
        f"another process is compiling input shape {INPUT_SHAPE} into {package}; waiting for it "
        f"to finish (lock {lock_path}) ..."]
    assert runner.records[INPUT_SHAPE].mode == "aoti" and runner.records[INPUT_SHAPE].cache_loaded
    np.testing.assert_array_equal(again, out)


def test_a_device_input_naming_its_stream_and_the_runner_wait_for_each_other(monkeypatch):
    """torch reads only the pointer of a CUDA Array Interface: the runner itself makes its
    stream wait for the stream a CuPy or Numba array names before reading it, and that stream
    wait for its reads after, with one reusable event; the legacy default stream (1) is
    torch's default stream (an ExternalStream cannot hold an odd handle); the input is kept
    until the next run. CUDA stand-ins record the calls; the network runs on the CPU."""
    import weakref

    calls = []

    class TorchStream:
        def __init__(self, handle):
            self.cuda_stream = handle

        def wait_event(self, event):
            calls.append(("wait", self.cuda_stream))

    class Event:
        def record(self, stream):
            calls.append(("record", stream.cuda_stream))

    def external_stream(ptr, device=None):
        if ptr & 1:  # torch's stream ids: odd ones are its own pools' ("invalid StreamId")
            raise RuntimeError(f"invalid StreamId{ptr}")
        return TorchStream(ptr)

    class Foreign:  # a CuPy array: version 3, naming its stream; its data on the CPU here
        def __init__(self, x, stream=...):
            self.x = x
            self.__cuda_array_interface__ = {"shape": x.shape, "typestr": "<f4",
                                             "data": (0x5000, False), "version": 3}
            if stream is not ...:
                self.__cuda_array_interface__["stream"] = stream

    events = []
    monkeypatch.setattr(torch_cuda.torch.cuda, "Event", lambda: events.append(Event()) or events[-1])
    monkeypatch.setattr(torch_cuda.torch.cuda, "ExternalStream", external_stream)
    monkeypatch.setattr(torch_cuda.torch.cuda, "default_stream", lambda device=None: TorchStream(0))
    monkeypatch.setattr(torch_cuda.torch, "as_tensor",
                        lambda obj, device=None: torch.from_numpy(obj.x))
    model, x = stand_in(), net_input()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager")
    runner._stream = TorchStream(0x900)
    monkeypatch.setattr(runner, "_on_stream", contextlib.nullcontext)
    run_shape = runner._run_shape
    monkeypatch.setattr(runner, "_run_shape",
                        lambda t: calls.append(("run", 0x900)) or run_shape(t))
    given = Foreign(x, 0x7700)  # a cudaStream_t: an aligned pointer
    alive = weakref.ref(given)
    out = runner.run(given)
    np.testing.assert_allclose(out.numpy(), _reference(model, x), **FOLDED_TOL)
    assert calls == [("record", 0x7700), ("wait", 0x900), ("run", 0x900), ("record", 0x900), ("wait", 0x7700)]
    del given, calls[:]
    assert alive() is not None  # kept: the runner's queued work may still read it
    for stream in (1, 2):  # the legacy and the per-thread default streams
        runner.run(Foreign(x, stream))
    assert alive() is None
    assert calls == [("record", 0), ("wait", 0x900), ("run", 0x900), ("record", 0x900), ("wait", 0),
                     ("record", 2), ("wait", 0x900), ("run", 0x900), ("record", 0x900), ("wait", 2)]
    del calls[:]
    for stream in (None, 0x900, ...):  # none named (the caller's to order), or the runner's own
        runner.run(Foreign(x, stream))
    assert calls == [("run", 0x900)] * 3 and len(events) == 1  # one event, reused
    with pytest.raises(NetworkInputError, match="names stream 0"):
        runner.run(Foreign(x, 0))
    # a run that fails once work is queued still orders the producer and keeps the input
    del calls[:]
    monkeypatch.setattr(runner, "_run_shape", lambda t: calls.append(("run", 0x900)) or 1 / 0)
    failing = Foreign(x, 0x7700)
    with pytest.raises(ZeroDivisionError):
        runner.run(failing)
    assert calls == [("record", 0x7700), ("wait", 0x900), ("run", 0x900), ("record", 0x900),
                     ("wait", 0x7700)]
    assert runner._last_input == [failing]
    monkeypatch.setattr(runner, "_run_shape", run_shape)
    runner.run(x)  # a host run waits for the stream: nothing reads the last input any more
    assert runner._last_input is None


def _run_levels_stand_ins(monkeypatch):
    """A CPU TorchCudaRunner with CUDA stand-ins recording every call into ``calls``: its
    stream 0x900, the streams it leases 0xa00, 0xa10, ..., graphs writing each image's first
    value into one output buffer of theirs, and inputs naming stream 0x7700."""
    calls = []
    on_stream = CurrentStream(0x900, lambda stream: stream.cuda_stream)

    class TorchStream:
        def __init__(self, handle):
            self.cuda_stream = handle

        def wait_event(self, event):
            calls.append(("wait", self.cuda_stream))

        def wait_stream(self, other):
            calls.append(("fork" if other.cuda_stream == 0x900 else "join",
                          self.cuda_stream if other.cuda_stream == 0x900 else other.cuda_stream))

    class Event:
        def record(self, stream):
            calls.append(("record", stream.cuda_stream))

    class Graph(torch_cuda._Captured):
        def __init__(self, batch=1, fail=False, cudnn=True):  # no capture: one output buffer
            self.static_out = torch.zeros(batch, 1)
            self.fail = fail
            self.cudnn = cudnn

        def __call__(self, x):
            calls.append(("replay", x.shape[-1], on_stream.name))
            if self.fail:
                raise RuntimeError("replay failed")
            n = x.shape[0]
            self.static_out[:n] = x.reshape(n, -1)[:, :1]
            return self.static_out[:n]

    class Foreign:
        def __init__(self, shape, value=0.0):
            self.x = np.full(shape, value, np.float32)
            self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4",
                                             "data": (0x5000, False), "version": 3,
                                             "stream": 0x7700}

    monkeypatch.setattr(torch_cuda.torch.cuda, "Event", Event)
    monkeypatch.setattr(torch_cuda.torch.cuda, "ExternalStream", lambda ptr, device=None: TorchStream(ptr))
    monkeypatch.setattr(torch_cuda.torch.cuda, "stream", on_stream)
    monkeypatch.setattr(torch_cuda.torch, "as_tensor", lambda obj, device=None: torch.from_numpy(obj.x))
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    copy_output = runner._copy_output
    monkeypatch.setattr(runner, "_copy_output",
                        lambda out: calls.append(("copy", on_stream.name)) or copy_output(out))
    runner._stream = TorchStream(0x900)
    runner.capabilities = dataclasses.replace(runner.capabilities,
                                              concurrent_levels=True)
    monkeypatch.setattr(runner, "_on_stream", contextlib.nullcontext)
    leased = iter(range(0xa00, 0xb00, 0x10))
    monkeypatch.setattr(runner, "_lease", lambda own_only=False: TorchStream(next(leased)))
    return SimpleNamespace(runner=runner, calls=calls, on_stream=on_stream, Graph=Graph,
                           Foreign=Foreign)


def test_run_levels_replays_small_levels_on_forked_streams_and_orders_producers_once(monkeypatch):
    """run_levels (concurrent_levels): once every shape has its CUDA graph, the small levels
    replay on streams the runner leases, each forked from its stream after the producers'
    waits, the large one on its stream, and its stream joins them before the producers are
    told once each; a repeated shape's output is copied on its branch before the next replay
    (one graph, one buffer); the graphs count as used (LRU). CUDA stand-ins record the calls."""
    t = _run_levels_stand_ins(monkeypatch)
    runner, calls, Foreign = t.runner, t.calls, t.Foreign
    small, large = [(1, 3, 8, w) for w in (16, 24)], (1, 3, 1024, 1024)
    for shape in (large, *small):
        runner._callables[shape] = t.Graph()
    runner._callables[(1, 3, 8, 99)] = t.Graph()  # another size's, used last before
    inputs = [Foreign(small[0], 1.0), Foreign(large, 2.0), Foreign(small[1], 3.0)]
    outputs = runner.run_levels(inputs)
    assert [float(o) for o in outputs] == [1.0, 2.0, 3.0]
    assert calls == [("record", 0x7700), ("wait", 0x900),  # once for the three inputs
                     ("fork", 0xa00), ("replay", 16, 0xa00), ("fork", 0xa10), ("replay", 24, 0xa10),
                     ("replay", 1024, 0x900), ("join", 0xa00), ("join", 0xa10),
                     ("record", 0x900), ("wait", 0x7700)]
    assert runner._last_input == inputs
    assert list(runner._callables)[0] == (1, 3, 8, 99)  # the others were used after it
    # again: the same two leased streams; a repeated shape is copied before its next replay
    del calls[:]
    outputs = runner.run_levels([Foreign(small[0], 4.0), Foreign(small[0], 5.0), Foreign(large, 6.0)])
    assert [float(o) for o in outputs] == [4.0, 5.0, 6.0]
    assert [c for c in calls if c[0] in ("fork", "replay", "copy")] == [
        ("fork", 0xa00), ("replay", 16, 0xa00), ("copy", 0xa00), ("replay", 16, 0xa00),
        ("replay", 1024, 0x900)]
    # a replay that fails: the forked stream is joined, then the producer told
    del calls[:]
    runner._callables[large] = t.Graph(fail=True)
    with pytest.raises(RuntimeError, match="replay failed"):
        runner.run_levels([Foreign(small[0]), Foreign(large)])
    assert calls == [("record", 0x7700), ("wait", 0x900), ("fork", 0xa00), ("replay", 16, 0xa00),
                     ("replay", 1024, 0x900), ("join", 0xa00), ("record", 0x900), ("wait", 0x7700)]


def test_run_levels_runs_in_turn_until_every_shape_has_its_graph(monkeypatch):
    """A shape without its graph yet, a runner without concurrent_levels, or no stream of its
    own (torch's pool streams only): everything in turn on the runner's stream. Batches padded
    into one graph share its buffer: the earlier output is copied."""
    t = _run_levels_stand_ins(monkeypatch)
    runner, calls, Foreign, on_stream = t.runner, t.calls, t.Foreign, t.on_stream
    large = (1, 3, 1024, 1024)
    runner._callables[large] = t.Graph()
    run_shape = runner._run_shape
    monkeypatch.setattr(runner, "_run_shape",
                        lambda x: calls.append(("run", x.shape[-1], on_stream.name)) or run_shape(x))
    runner.run_levels([Foreign((1, 3, 8, 40)), Foreign(large)])
    assert [c for c in calls if c[0] != "replay"] == [
        ("record", 0x7700), ("wait", 0x900), ("run", 40, 0x900), ("run", 1024, 0x900),
        ("record", 0x900), ("wait", 0x7700)]
    runner._callables[(1, 3, 8, 40)] = t.Graph(cudnn=False)
    for change in ("captured without cuDNN", "not concurrent", "pool streams only"):
        if change == "not concurrent":  # (without cuDNN, convolutions call cuBLAS)
            runner._callables[(1, 3, 8, 40)] = t.Graph()
            runner.capabilities = dataclasses.replace(runner.capabilities,
                                                      concurrent_levels=False)
        elif change == "pool streams only":
            runner.capabilities = dataclasses.replace(runner.capabilities,
                                                      concurrent_levels=True)
            monkeypatch.setattr(runner, "_lease", lambda own_only=False: None)
        del calls[:]
        runner.run_levels([Foreign((1, 3, 8, 40)), Foreign(large)])
        assert [c for c in calls if c[0] in ("run", "fork")] == [
            ("run", 40, 0x900), ("run", 1024, 0x900)], change
    # batches of 1 and 2 padded into the graph of 4: one buffer, the first output copied
    padded = (4, 3, 8, 8)
    runner._callables[padded] = t.Graph(batch=4)
    runner.records[padded] = torch_cuda.ShapeRecord("graphs", 0.0)
    del calls[:]
    outputs = runner.run_levels([Foreign((1, 3, 8, 8), 1.0), Foreign((2, 3, 8, 8), 2.0)])
    assert [o.flatten().tolist() for o in outputs] == [[1.0], [2.0, 2.0]]
    assert [c for c in calls if c[0] == "copy"] == [("copy", 0x900)]
    assert runner._padded_runs == {(1, 3, 8, 8): 1, (2, 3, 8, 8): 1}  # counted: in turn
    # a graph warmup() kept pads them for good: side by side (with the streams of the runner's
    # own back), both on the padded graph's branch, one buffer, the first output copied there
    runner._kept.add(padded)
    runner._pool_streams_only = False
    monkeypatch.setattr(runner, "_lease", lambda own_only=False: type(runner._stream)(0xa00))
    del calls[:]
    outputs = runner.run_levels([Foreign((1, 3, 8, 8), 3.0), Foreign((2, 3, 8, 8), 4.0),
                                 Foreign(large, 5.0)])
    assert [o.flatten().tolist() for o in outputs] == [[3.0], [4.0, 4.0], [5.0]]
    assert [c for c in calls if c[0] in ("fork", "replay", "copy")] == [
        ("fork", 0xa00), ("replay", 8, 0xa00), ("copy", 0xa00), ("replay", 8, 0xa00),
        ("replay", 1024, 0x900)]
    with pytest.raises(NetworkInputError, match="numpy arrays or device arrays, not both"):
        runner.run_levels([Foreign(large), np.zeros(large, np.float32)])


def test_run_levels_of_host_arrays_is_one_run_each_and_concurrency_needs_cuda():
    model = stand_in()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager")
    xs = [net_input((1, 3, 16, 24), seed=2), net_input((1, 3, 32, 48), seed=3),
          net_input((1, 3, 16, 24), seed=4)]
    outputs = runner.run_levels(xs)
    assert not runner.capabilities.concurrent_levels
    for x, out in zip(xs, outputs):
        np.testing.assert_array_equal(out, runner.run(x))
    assert runner.run_levels([]) == []
    with pytest.raises(ValueError, match=r"mode 'graphs' \(CUDA graphs\) needs a CUDA device"):
        TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="graphs",
                        concurrent_levels=True)
    for mode in ("compile", "aoti", "eager"):  # compiled graphs may share cuBLAS's workspace
        with pytest.raises(ValueError, match=f"of mode 'graphs' side by side, not mode '{mode}'"):
            TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode=mode,
                            concurrent_levels=True)
    runner.close()
    with pytest.raises(TinyFacesError, match="closed"):
        runner.run_levels(xs)


def test_a_cuda_graph_keeps_the_callable_it_was_captured_from(monkeypatch):
    """An AOTInductor model frees its weights when collected: the graph replaying its kernels
    must keep it (CUDA stand-ins record the capture; nothing runs on a GPU)."""
    class Stream:
        def wait_stream(self, other):
            pass

    calls = []
    monkeypatch.setattr(torch_cuda.torch.cuda, "Stream", lambda device=None: Stream())
    monkeypatch.setattr(torch_cuda.torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch_cuda.torch.cuda, "CUDAGraph",
                        lambda: SimpleNamespace(replay=lambda: calls.append("replay")))
    monkeypatch.setattr(torch_cuda.torch.cuda, "graph", lambda g, **kw: contextlib.nullcontext())

    class Model:  # stands for the loaded package
        def __call__(self, x):
            calls.append("run")
            return x * 2

    model = Model()
    alive = weakref.ref(model)
    captured = torch_cuda._Captured(model, (1, 3, 4, 4), torch.device("cpu"), Stream(), Stream())
    del model
    gc.collect()
    assert alive() is not None, "the captured model was collected while its graph lives"
    assert calls == ["run", "run", "run"]  # two warm-up runs, the capture
    captured(torch.ones(1, 3, 4, 4))
    assert calls[-1] == "replay"
    del captured
    gc.collect()
    assert alive() is None


class _CaptureStandIns:
    """torch.cuda's stream and graph calls as stand-ins that track the current stream
    (nothing runs on a GPU). A failing capture behaves as torch's (2.11 to 2.13): the body's
    error reaches ``__exit__``, whose ``capture_end`` raises before the capture stream is
    swapped back."""

    def __init__(self, monkeypatch, fail_capture: bool = False) -> None:
        self.captures: list[dict] = []
        self.fail_capture = fail_capture
        self.current: object = "the caller's stream"
        cuda = torch_cuda.torch.cuda
        monkeypatch.setattr(cuda, "Stream", self.stream)
        monkeypatch.setattr(cuda, "stream", self.stream_block)
        monkeypatch.setattr(cuda, "CUDAGraph", lambda: SimpleNamespace(replay=lambda: None))
        monkeypatch.setattr(cuda, "graph", self.graph)

    @staticmethod
    def stream(device=None) -> SimpleNamespace:
        return SimpleNamespace(wait_stream=lambda other: None, device=device)

    @contextlib.contextmanager
    def stream_block(self, s):
        previous, self.current = self.current, s
        try:
            yield
        finally:
            self.current = previous

    def graph(self, g, **kwargs):
        stand_ins = self

        class Capture:
            def __enter__(self):
                stand_ins.captures.append({"gc_enabled": gc.isenabled(), **kwargs})
                self.previous, stand_ins.current = stand_ins.current, "torch's capture stream"

            def __exit__(self, *exc):
                if stand_ins.fail_capture:  # capture_end raises; the stream is not swapped back
                    try:
                        raise ValueError("operation not permitted when stream is capturing")
                    except ValueError:  # chained: the real cause is the context
                        raise RuntimeError("CUDA error: operation failed due to a previous "
                                           "error during capture\nmore")
                stand_ins.current = self.previous
                return False

        return Capture()


def test_capture_runs_without_cycle_collection_and_checks_only_its_own_thread(monkeypatch):
    """A cycle collected inside the capture could free device memory (illegal while
    capturing); other threads' CUDA calls must not break it."""
    stand_ins = _CaptureStandIns(monkeypatch)
    assert gc.isenabled()
    runner_stream, side = stand_ins.stream(), stand_ins.stream()
    torch_cuda._Captured(lambda x: x * 2, (1, 3, 4, 4), torch.device("cpu"), runner_stream, side)
    (capture,) = stand_ins.captures
    assert capture.pop("stream") is side  # the runner's side stream, not torch's shared one
    assert capture == {"gc_enabled": False, "capture_error_mode": "thread_local"}
    assert gc.isenabled()
    assert stand_ins.current == "the caller's stream"
    stand_ins.fail_capture = True
    runner_stream = stand_ins.stream()
    with pytest.raises(RuntimeError, match="during capture"):
        torch_cuda._Captured(lambda x: x, (1, 3, 4, 4), torch.device("cpu"), runner_stream, side)
    assert gc.isenabled(), "a failed capture left cycle collection off"
    assert stand_ins.current == "the caller's stream", \
        "a failed capture left torch's capture stream current"


def test_compiled_graphs_are_captured_on_streams_of_their_own(monkeypatch):
    """torch keeps one cuBLAS workspace per stream and a graph replays its capture stream's:
    graphs that may call cuBLAS (modes compile and aoti) each get a capture stream of the
    runner's own, so that dropping one cannot free another's workspace; mode graphs (cuDNN)
    captures on the side stream. Each graph says whether cuDNN was on for its capture."""
    stand_ins = _CaptureStandIns(monkeypatch)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    runner._stream, runner._side = stand_ins.stream(), stand_ins.stream()
    leased = []
    monkeypatch.setattr(runner, "_lease",
                        lambda own_only=False: leased.append(stand_ins.stream()) or leased[-1])
    for mode in ("compile", "aoti", "compile", "graphs"):
        runner.mode = mode
        captured = runner._capture(lambda x: x * 2, (1, 3, 4, 4))
        assert captured.cudnn is torch.backends.cudnn.enabled
    assert [c["stream"] for c in stand_ins.captures] == [*leased, runner._side]
    assert len({id(s) for s in leased}) == 3
    monkeypatch.setattr(torch.backends.cudnn, "enabled", False)
    assert runner._capture(lambda x: x, (1, 3, 4, 4)).cudnn is False
    runner.mode = "compile"  # no stream of the runner's own (torch's pool only): the side one
    monkeypatch.setattr(runner, "_lease", lambda own_only=False: None)
    runner._capture(lambda x: x, (1, 3, 4, 4))
    assert stand_ins.captures[-1]["stream"] is runner._side


def test_a_failed_capture_falls_back_to_eager(monkeypatch, caplog):
    stand_ins = _CaptureStandIns(monkeypatch, fail_capture=True)
    model, x = stand_in(), net_input()
    runner = TorchCudaRunner(model, device="cpu", dtype=torch.float32, mode="eager")
    runner.mode = "graphs"  # as on a GPU (a CPU runner refuses it) ...
    runner._stream = stand_ins.stream()  # ... where the runner has streams to capture on
    runner._side = stand_ins.stream()
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"):
        fn = runner._callable(INPUT_SHAPE)
    assert "capturing a CUDA graph failed for input shape (2, 3, 32, 48) (RuntimeError: CUDA " \
           "error: operation failed due to a previous error during capture; after ValueError: " \
           "operation not permitted when stream is capturing); falling back to mode 'eager'" \
           in caplog.text
    assert runner.mode == "eager" and runner.records[INPUT_SHAPE].mode == "eager"
    with torch.no_grad():
        out = fn(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, _reference(model, x), **FOLDED_TOL)


class _ExternalStream(SimpleNamespace):
    """torch.cuda.ExternalStream's stand-in: the handle it wraps, nothing run."""

    def __init__(self, handle, device=None):
        super().__init__(cuda_stream=handle, device=device)

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass


@pytest.fixture
def own_streams(monkeypatch):
    """torch_cuda's stream leases over the host CUDA runtime (tests/host_cudart.py: the
    streams are made for real, on the host) with torch's CUDA calls stood in; a fresh set of
    leases per test."""
    import host_cudart

    if host_cudart.missing():
        pytest.skip(host_cudart.missing())
    cudart = host_cudart.install(monkeypatch)
    monkeypatch.setattr(torch_cuda, "_cuda_runtime", lambda: cudart)
    monkeypatch.setattr(torch_cuda.torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch_cuda.torch.cuda, "ExternalStream", _ExternalStream)
    monkeypatch.setattr(torch_cuda, "_LEASES", torch_cuda._StreamLeases())
    return cudart


def test_streams_of_its_own_are_lent_to_one_runner_at_a_time(own_streams):
    """torch's pool hands its 32 streams per device out in turn (another runner or the
    caller's torch code would get the one a graph is being captured on): a runner takes
    non-blocking streams of its own, which no other runner gets until it is closed or
    collected; they are then lent again, never destroyed."""
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    a, b, c = (TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
               for _ in range(3))
    for r in (a, b, c):
        r.device = cuda0  # as on a GPU, where __init__ leases the runner's stream
    first = a._lease(), a._lease()  # its stream and its captures' side stream
    second = b._lease()
    handles = {s.cuda_stream for s in (*first, second)}
    assert len(handles) == 3 and handles <= own_streams.non_blocking
    a.close()
    again = c._lease(), c._lease(), c._lease()
    assert {s.cuda_stream for s in again[:2]} == {s.cuda_stream for s in first}  # lent again
    assert again[2].cuda_stream not in handles
    del b
    gc.collect()  # collected without close(): its stream comes back too
    c.device = cuda1
    assert c._lease().cuda_stream not in handles  # per device
    c.device = cuda0
    assert c._lease().cuda_stream == second.cuda_stream
    assert len(own_streams.non_blocking) == len(own_streams.streams) == 5  # none destroyed


def test_a_runner_collected_while_the_leases_are_busy_gives_its_streams_back(own_streams):
    """weakref.finalize runs in whatever thread collects the runner, also one holding the
    leases' lock (inside take or give_back): the lock is reentrant, so that thread does not
    wait for itself (Python 3.12 and later collect there)."""
    import threading

    def collect_under_the_lock():
        runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
        runner.device = torch.device("cuda", 0)
        handle = runner._lease().cuda_stream
        with torch_cuda._LEASES._lock:
            del runner
            gc.collect()
        assert torch_cuda._LEASES.take(torch.device("cuda", 0))[1].cuda_stream == handle

    worker = threading.Thread(target=collect_under_the_lock, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "a runner collected under the leases' lock deadlocked"


def test_a_stream_cuda_python_cannot_make_is_taken_from_torchs_pool(own_streams, monkeypatch,
                                                                   caplog):
    """cuda-python 13 on a CUDA 12 driver (which torch cu12x uses) cannot make a stream:
    torch-cuda takes a pool stream, as before, instead of failing."""
    monkeypatch.setattr(own_streams, "cudaStreamCreateWithFlags",
                        lambda flags: (own_streams.cudaError_t.cudaErrorInsufficientDriver, None))
    monkeypatch.setattr(torch_cuda.torch.cuda, "Stream", lambda device=None: ("pool", device))
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    runner.device = torch.device("cuda", 0)
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt.export.torch_cuda"):
        assert runner._lease() == ("pool", torch.device("cuda", 0))
    assert "no stream of the runner's own on cuda:0 (cudaStreamCreateWithFlags: " in caplog.text


def test_without_cuda_python_a_runner_takes_torchs_pool_stream(own_streams, monkeypatch):
    monkeypatch.setattr(torch_cuda, "_cuda_runtime", lambda: None)  # no cuda-python
    monkeypatch.setattr(torch_cuda.torch.cuda, "Stream", lambda device=None: ("pool", device))
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    runner.device = torch.device("cuda", 0)
    assert runner._lease() == ("pool", torch.device("cuda", 0))
    runner.close()
    assert torch_cuda._LEASES._free == {}  # torch's own: nothing to lend again


def test_captures_run_on_the_runners_one_side_stream(own_streams, monkeypatch):
    stand_ins = _CaptureStandIns(monkeypatch)
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    runner.mode, runner.device = "graphs", torch.device("cuda", 0)
    runner._stream = runner._lease()
    runner.device = torch.device("cpu")  # the stand-in tensors stay on the CPU
    runner._callable((1, 3, 32, 48))
    runner._callable((1, 3, 16, 24))
    sides = [capture["stream"] for capture in stand_ins.captures]
    assert len(sides) == 2 and sides[0] is sides[1] is runner._side
    assert runner._side.cuda_stream in own_streams.non_blocking
    assert runner._side.cuda_stream != runner._stream.cuda_stream


@pytest.fixture
def conv_precision():
    """cuDNN's per-op float32 switch for convolutions, put back as found after the test
    (which also makes the legacy allow_tf32 flag readable again)."""
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    yield conv
    conv.fp32_precision = saved
    assert torch.backends.cudnn.allow_tf32  # readable, torch's default


def _ieee(conv) -> bool:
    """Whether cuDNN convolutions run float32 in IEEE fp32 now, by either switch."""
    try:
        return not torch.backends.cudnn.allow_tf32
    except RuntimeError:  # the per-op switches are apart
        return conv.fp32_precision == "ieee"


@pytest.mark.parametrize("device, dtype, ieee_inside", [
    ("cuda", torch.float32, True), ("cuda:1", torch.float32, True),
    ("cuda", torch.float16, False), ("cpu", torch.float32, False)])
def test_float32_convolutions_on_a_gpu_are_ieee_not_tf32(conv_precision, device, dtype,
                                                         ieee_inside):
    assert not _ieee(conv_precision)  # torch's default: TF32 allowed
    with ieee_fp32_convolutions(torch.device(device), dtype):
        assert _ieee(conv_precision) is ieee_inside
        torch.backends.cudnn.set_flags(False)  # what torch.export (AOTInductor) does: no raise
    assert not _ieee(conv_precision)
    with pytest.raises(KeyError), ieee_fp32_convolutions(torch.device(device), dtype):
        raise KeyError
    assert not _ieee(conv_precision)


def test_a_process_that_set_the_per_op_switches_still_runs_the_reference(conv_precision):
    """Once the per-op switches differ, torch raises on a read of the legacy allow_tf32 flag:
    the switch then sets the convolutions' own (on the CPU it touches nothing at all)."""
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # set apart from the convolutions
    try:
        with pytest.raises(RuntimeError):
            torch.backends.cudnn.allow_tf32
        model, x = stand_in(), net_input()
        np.testing.assert_array_equal(TorchRunner(model).run(x), _reference(model, x))
        before = conv_precision.fp32_precision
        with ieee_fp32_convolutions(torch.device("cuda"), torch.float32):
            assert conv_precision.fp32_precision == "ieee"
        assert conv_precision.fp32_precision == before
    finally:
        torch.backends.cudnn.rnn.fp32_precision = conv_precision.fp32_precision


@pytest.mark.parametrize("wider", ["generic", "cudnn"])
def test_a_process_wide_tf32_precision_is_overridden_for_the_convolutions(conv_precision, wider):
    """``torch.backends.fp32_precision = "tf32"`` (or cuDNN's): clearing the legacy flag leaves
    the convolutions' switch inheriting TF32, so the override sets that switch too."""
    where = torch.backends if wider == "generic" else torch.backends.cudnn
    saved = where.fp32_precision
    where.fp32_precision = "tf32"
    try:
        assert conv_precision.fp32_precision == "tf32"
        with ieee_fp32_convolutions(torch.device("cuda"), torch.float32):
            assert conv_precision.fp32_precision == "ieee"  # what cuDNN's convolutions read
            assert torch.backends.cudnn.allow_tf32 is False  # readable (torch.export reads it)
            torch.backends.cudnn.set_flags(False)  # what torch.export does: no raise
        assert conv_precision.fp32_precision == "tf32" and torch.backends.cudnn.allow_tf32
    finally:
        where.fp32_precision = saved


@pytest.mark.parametrize("dtype, ieee_inside", [(torch.float32, True), (torch.float16, False)])
def test_on_its_stream_cudnn_times_its_algorithms_and_float32_is_ieee(monkeypatch, conv_precision,
                                                                      dtype, ieee_inside):
    """As on a GPU (the stream stands in): the settings hold inside and are restored after."""
    monkeypatch.setattr(torch_cuda.torch.cuda, "stream", lambda s: contextlib.nullcontext())
    runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
    runner.device, runner.dtype, runner._stream = torch.device("cuda"), dtype, object()
    cudnn = torch.backends.cudnn
    assert not cudnn.benchmark and not _ieee(conv_precision)  # torch's defaults
    with runner._on_stream():
        assert cudnn.benchmark and _ieee(conv_precision) is ieee_inside
    assert not cudnn.benchmark and not _ieee(conv_precision)
    with pytest.raises(KeyError), runner._on_stream():
        raise KeyError
    assert not cudnn.benchmark and not _ieee(conv_precision)


def test_runners_in_two_threads_never_restore_the_settings_under_each_other(monkeypatch,
                                                                           conv_precision):
    """Two float32 runners on their streams, entered and left out of order (as two threads
    do): the settings hold until the last one leaves, then the process's own come back."""
    monkeypatch.setattr(torch_cuda.torch.cuda, "stream", lambda s: contextlib.nullcontext())
    runners = []
    for _ in range(2):
        runner = TorchCudaRunner(stand_in(), device="cpu", dtype=torch.float32, mode="eager")
        runner.device, runner._stream = torch.device("cuda"), object()
        runners.append(runner)
    cudnn = torch.backends.cudnn
    first, second = (r._on_stream() for r in runners)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first thread is done, the second still works
    assert cudnn.benchmark and _ieee(conv_precision)
    second.__exit__(None, None, None)
    assert not cudnn.benchmark and not _ieee(conv_precision)  # torch's defaults again
    assert torch_settings.IEEE_FP32.holders == torch_settings.CUDNN_AUTOTUNING.holders == 0


def test_a_shared_override_is_applied_once_and_restored_by_the_last_thread():
    calls = []
    override = torch_settings.SharedOverride(
        lambda: calls.append("apply") or (lambda: calls.append("restore")))
    inside, leave = threading.Barrier(3), threading.Event()
    first_left = threading.Event()

    def hold(wait_for: threading.Event | None) -> None:
        with override.held():
            inside.wait(timeout=30)
            if wait_for is not None:
                wait_for.wait(timeout=30)
        if wait_for is None:
            first_left.set()

    threads = [threading.Thread(target=hold, args=(None,)),
               threading.Thread(target=hold, args=(leave,))]
    for t in threads:
        t.start()
    inside.wait(timeout=30)  # both hold it
    assert first_left.wait(timeout=30) and override.holders == 1 and calls == ["apply"]
    leave.set()
    for t in threads:
        t.join(timeout=30)
    assert calls == ["apply", "restore"] and override.holders == 0
    with pytest.raises(KeyError), override.held():  # an error inside still restores
        raise KeyError
    assert calls == ["apply", "restore", "apply", "restore"]


def test_the_reference_runner_runs_inside_the_ieee_fp32_switch(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def recording(device, dtype):
        entered.append((device, dtype))
        yield

    monkeypatch.setattr(torch_runner_module, "ieee_fp32_convolutions", recording)
    TorchRunner(stand_in()).run(net_input())
    assert entered == [(torch.device("cpu"), torch.float32)]


def test_other_weights_get_their_own_packages(tmp_path):
    def folder(model):
        return aoti.PackageCache.for_module(model, torch.device("cpu"), torch.float32, True,
                                            tmp_path).folder

    assert folder(stand_in(seed=0)) == folder(stand_in(seed=0))
    assert folder(stand_in(seed=0)) != folder(stand_in(seed=1))
    # the compile cache's key names code only: one folder for both
    key0 = CompileCache.for_module(stand_in(seed=0), torch.device("cpu"), torch.float32, True,
                                   tmp_path).folder
    assert key0 == CompileCache.for_module(stand_in(seed=1), torch.device("cpu"),
                                           torch.float32, True, tmp_path).folder


def test_an_unloadable_package_is_compiled_again(aoti_package, tmp_path, monkeypatch, caplog):
    cache, out, record = aoti_package
    good = record.cache_file.read_bytes()
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    broken = copy / record.cache_file.relative_to(cache)
    broken.write_bytes(good[: len(good) // 3])  # as a copy cut short leaves it
    compiled = []
    monkeypatch.setattr(aoti.torch._inductor, "aoti_compile_and_package",
                        _reuse_package(good, compiled))
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.aoti"):
        with _aoti_runner(copy) as runner:
            again = runner.run(net_input())
    assert f"cannot load AOTInductor package {broken}" in caplog.text
    assert "compiling it again" in caplog.text and len(compiled) == 1
    assert runner.records[INPUT_SHAPE].mode == "aoti"
    np.testing.assert_array_equal(again, out)
    assert broken.read_bytes() == good


def test_an_unwritable_cache_compiles_for_this_process_only(aoti_package, tmp_path,
                                                            monkeypatch, caplog):
    _, out, record = aoti_package
    built = []
    monkeypatch.setattr(aoti.torch._inductor, "aoti_compile_and_package",
                        _reuse_package(record.cache_file.read_bytes(), built))
    (tmp_path / "file").write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.aoti"):
        with _aoti_runner(tmp_path / "file" / "cache") as runner:
            first = runner.run(net_input())
            assert not built[0].exists()  # loaded, then its temporary folder removed
            again = runner.run(net_input())
    assert "cannot write AOTInductor package" in caplog.text
    assert "compiling it for this process only" in caplog.text
    assert runner.records[INPUT_SHAPE].mode == "aoti"
    np.testing.assert_array_equal(first, out)
    np.testing.assert_array_equal(again, out)


def test_a_killed_builds_staging_folder_is_removed(aoti_package, tmp_path, monkeypatch):
    cache, _, record = aoti_package
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    folder = copy / record.cache_file.parent.relative_to(cache)
    (folder / record.cache_file.name).unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = folder / f".tf-tmp-{dead}-aoti-abcd1234"
    stale.mkdir()
    (stale / record.cache_file.name).write_bytes(b"half a package")
    monkeypatch.setattr(aoti.torch._inductor, "aoti_compile_and_package",
                        _reuse_package(record.cache_file.read_bytes(), []))
    with _aoti_runner(copy) as runner:
        runner.run(net_input())
    assert sorted(p.name for p in folder.iterdir()) == ["2x3x32x48.lock", "2x3x32x48.pt2",
                                                        "2x3x32x48.pt2.loads", "key.json"]


def test_aoti_failure_falls_back_to_eager_leaving_no_partial_package(tmp_path, monkeypatch,
                                                                     caplog):
    def failing(program, *, package_path):
        Path(package_path).write_bytes(b"half a package")
        raise RuntimeError("C++ compiler not found")

    monkeypatch.setattr(aoti.torch._inductor, "aoti_compile_and_package", failing)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"):
        with _aoti_runner(tmp_path) as runner:
            out = runner.run(net_input())
    assert "AOTInductor failed for input shape (2, 3, 32, 48) (RuntimeError: C++ compiler not " \
           "found); falling back to mode 'eager'" in caplog.text
    assert runner.mode == "eager"
    np.testing.assert_allclose(out, _reference(stand_in(), net_input()), **FOLDED_TOL)
    (folder,) = (tmp_path / aoti.PACKAGE_SUBDIR).iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["2x3x32x48.lock", "key.json"]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the C++ example")
def test_the_cpp_example_runs_a_package_without_python(aoti_package, tmp_path):
    """examples/aoti_run.cpp, built as its comment says against this torch's libtorch, gives
    the runner's score map from the package."""
    _, out, record = aoti_package
    lib = Path(torch.__file__).parent
    binary = tmp_path / "aoti_run"
    build = subprocess.run(
        ["g++", "-std=c++20", "-O1", str(ROOT / "examples" / "aoti_run.cpp"), "-o", str(binary),
         f"-I{lib / 'include'}", f"-I{lib / 'include/torch/csrc/api/include'}",
         f"-L{lib / 'lib'}", f"-Wl,-rpath,{lib / 'lib'}", "-ltorch", "-ltorch_cpu", "-lc10"],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    x = net_input()
    x.tofile(tmp_path / "in.f32")
    shape = [str(d) for d in x.shape]
    done = subprocess.run([binary, record.cache_file, *shape, tmp_path / "in.f32",
                           tmp_path / "out.f32"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cpu: score map 2 125 4 6\n"
    np.testing.assert_array_equal(np.fromfile(tmp_path / "out.f32", np.float32).reshape(out.shape),
                                  out)
    (tmp_path / "short.f32").write_bytes(x.tobytes()[:100])
    bad = subprocess.run([binary, record.cache_file, *shape, tmp_path / "short.f32",
                          tmp_path / "out2.f32"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr == (f"aoti_run: error: {tmp_path / 'short.f32'} holds 100 bytes, the shape "
                          f"needs {x.nbytes}\n")
    assert subprocess.run([binary], capture_output=True, timeout=60).returncode == 2
    wrong = subprocess.run([binary, record.cache_file, "1", *shape[1:], tmp_path / "in.f32",
                            tmp_path / "out3.f32"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr == (
        f"aoti_run: error: {record.cache_file} is the package of input shape 2x3x32x48, not "
        "1x3x32x48\n")
    typo = subprocess.run([binary, record.cache_file, "2", "3", "3O", "48", tmp_path / "in.f32",
                           tmp_path / "out4.f32"], capture_output=True, text=True, timeout=60)
    assert typo.returncode == 2
    assert typo.stderr == "aoti_run: error: 3O is not a positive integer (N C H W)\n"
    missing = subprocess.run([binary, tmp_path / "gone" / "2x3x32x48.pt2", *shape,
                              tmp_path / "in.f32", tmp_path / "out5.f32"], capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr == (
        f"aoti_run: error: cannot open package {tmp_path / 'gone' / '2x3x32x48.pt2'}: No such "
        "file or directory\n")  # torch's own: "file open failed", no path
    (tmp_path / "2x3x32x48.pt2").write_bytes(b"not a zip archive")
    broken = subprocess.run([binary, tmp_path / "2x3x32x48.pt2", *shape, tmp_path / "in.f32",
                             tmp_path / "out6.f32"], capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1
    assert broken.stderr.startswith(f"aoti_run: error: cannot load package "
                                    f"{tmp_path / '2x3x32x48.pt2'}: "), broken.stderr
    assert "Exception raised from" not in broken.stderr, broken.stderr  # no C++ backtrace



def test_create_detector_passes_torch_mode_to_the_runner(checkpoint, monkeypatch, tmp_path):
    """create_detector("torch-cuda", torch_mode=...) as on a GPU, with the runner on the CPU."""
    from tinyfaces_trt import detectors

    made = []

    class CpuRunner(TorchCudaRunner):
        def __init__(self, model, **kwargs):
            made.append(kwargs)
            mode = "eager" if kwargs["mode"] == "graphs" else kwargs["mode"]  # no CUDA graphs
            super().__init__(model, **{**kwargs, "device": "cpu", "dtype": torch.float32,
                                       "mode": mode, "concurrent_levels": False})

    monkeypatch.setattr(torch_cuda, "require_cuda", lambda device="cuda": torch.device("cpu"))
    monkeypatch.setattr(torch_cuda, "TorchCudaRunner", CpuRunner)
    assert set(detectors.TORCH_CUDA_MODES) == {"fused", *torch_cuda.MODES}
    assert [detectors.torch_cuda_settings(m) for m in detectors.TORCH_CUDA_MODES] == [
        ("graphs", True), *((m, False) for m in torch_cuda.MODES)]
    with create_detector("torch-cuda", weights=checkpoint, torch_mode="eager",
                         cache_dir=tmp_path) as detector:
        assert detector.runner.mode == "eager"
        assert detector.detect(synthetic_image(40, 56)).shape[1:] == (5,)
    assert made[-1]["mode"] == "eager" and made[-1]["cache_dir"] == tmp_path
    assert made[-1]["fuse_epilogues"] is False and made[-1]["concurrent_levels"] is False
    with create_detector("torch-cuda", weights=checkpoint, cache_dir=tmp_path) as detector:
        # the default: CUDA graphs of the fused network, not prepared until a shape runs
        assert (made[-1]["mode"], made[-1]["fuse_epilogues"]) == ("graphs", True)
        assert detector.runner.fuse_epilogues
        # levels side by side: the factory's setting, on since run 5 measured it on an H200
        assert made[-1]["concurrent_levels"] is detectors.TORCH_CUDA_CONCURRENT_LEVELS is True
        # a new image size runs eager; one that recurs is prepared at its third run
        assert made[-1]["prepare_after"] == torch_cuda.PREPARE_AFTER_RUNS == 2
        assert detector.runner.prepare_after == 2 and detector.runner.records == {}
    for torch_mode, concurrent in (("fused", True), ("graphs", True), ("eager", False),  # only
                                   ("compile", False)):  # the modes replaying eager graphs
        create_detector("torch-cuda", weights=checkpoint, torch_mode=torch_mode,
                        cache_dir=tmp_path).close()
        assert made[-1]["concurrent_levels"] is concurrent, torch_mode
    monkeypatch.setattr(detectors, "TORCH_CUDA_CONCURRENT_LEVELS", False)  # switched off
    create_detector("torch-cuda", weights=checkpoint, cache_dir=tmp_path).close()
    assert made[-1]["concurrent_levels"] is False
    with pytest.raises(TinyFacesError, match="unknown torch_mode 'fast'; expected one of "
                                             "fused, compile, aoti, graphs, eager"):
        create_detector("torch-cuda", weights=checkpoint, torch_mode="fast")
    with pytest.raises(TinyFacesError, match="torch_mode applies to the torch-cuda backend, "
                                             "not onnxruntime"):
        create_detector("onnxruntime", weights=checkpoint, torch_mode="aoti")

# ---------------------------------------------------------------------------------------------
# No GPU
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is visible")
def test_cuda_runner_without_a_gpu_is_a_clear_error():
    with pytest.raises(BackendUnavailableError, match=r"torch.cuda.is_available\(\) is False"):
        TorchCudaRunner(stand_in())


@pytest.mark.skipif(not NO_CUDA, reason="a CUDA GPU is visible")
def test_torch_cuda_backend_without_a_gpu(checkpoint):
    assert "torch-cuda" in BACKENDS
    assert "torch-cuda" not in available_backends()
    with pytest.raises(BackendUnavailableError, match="torch-cuda needs a CUDA GPU"):
        create_detector("torch-cuda", weights=checkpoint)
    with pytest.raises(TinyFacesError, match="checkpoint"):
        create_detector("torch-cuda", model_dir=checkpoint.parent)
