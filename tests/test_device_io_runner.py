"""What every device-I/O runner shares (``cuda_device.DeviceIoRunner``): its stream, given or
made; a device input checked, ordered with the stream it names and kept until the next run; and
``close()``. Each case runs on both runners that have it, TensorRT (an injected engine,
tests/helpers_tensorrt.py) and onnxruntime-cuda (ONNX Runtime's CPU provider over host memory,
tests/helpers_ort_gpu.py), over ``cuda_device`` on host memory (tests/host_cudart.py) with the
finalizers off: only what ``close()`` does is released.
"""

from __future__ import annotations

import gc
import weakref
from collections import Counter
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import host_cudart
from helpers_cai import ForeignArray, RequiresGrad
from helpers_tensorrt import FakeEngine
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import OnnxRuntimeCudaRunner
from tinyfaces_trt.runtime.backends.tensorrt_runner import TensorRTRunner

pytestmark = pytest.mark.skipif(bool(host_cudart.missing()), reason=host_cudart.missing())

RUNNERS = ("tensorrt", "onnxruntime-cuda")
SHAPE = (1, 3, 40, 56)
EVENT_CALLS = ("cudaEventCreateWithFlags", "cudaEventRecord", "cudaStreamWaitEvent")


@pytest.fixture
def host(monkeypatch):
    h = host_cudart.install(monkeypatch, finalizers=False)
    yield h
    h.release_all()


@pytest.fixture
def make(host, monkeypatch, request):
    """``make(name, stream=None)``: the runner ``name`` on ``stream`` (None: it makes one)."""
    installed = []

    def make(name: str, stream: Any = None) -> Any:
        if name == "tensorrt":
            trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in"), __version__="10.9.0")
            # batches of up to 4, as the export's dynamic batch axis takes batches
            return TensorRTRunner(engine=FakeEngine((1, 3, 8, 8), (1, 3, 64, 64), (4, 3, 128, 128)),
                                  trt=trt, stream=stream)
        pytest.importorskip("onnxruntime")
        if not installed:
            import helpers_ort_gpu

            installed.append(helpers_ort_gpu.install(monkeypatch))
        return OnnxRuntimeCudaRunner(request.getfixturevalue("export_dir") / "model.onnx",
                                     stream=stream)

    return make


@pytest.fixture
def memory(host):
    """An (1, 3, 40, 56) float32 input in "device" memory."""
    x = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    buf = cuda_device.DeviceBuffer(x.nbytes)
    buf.upload(x)
    yield buf
    buf.free()


class Interface:
    """Device memory of another library: its CUDA Array Interface with ``fields`` changed."""

    def __init__(self, ptr: int, **fields: Any) -> None:
        self.__cuda_array_interface__ = {"shape": SHAPE, "typestr": "<f4", "data": (ptr, False),
                                         "strides": None, "version": 3, **fields}


def _calls(host: host_cudart.HostCudart) -> Counter:
    return Counter(host.calls)


@pytest.mark.parametrize("name", RUNNERS)
def test_a_closed_runner_refuses_a_device_input_and_leaves_its_stream_and_event_alone(
        name, make, host, memory):
    """Closed first: not the closed stream's or event's error, no new event, nothing queued."""
    runner = make(name)
    producer = cuda_device.Stream()
    runner.run(ForeignArray(memory.ptr, SHAPE, producer.handle))  # the ordering event is made
    runner.close()
    before = _calls(host)
    del host.log[:]
    closed = (f"this {type(runner).__name__} is closed: a closed runner may not run again "
              f"(create a new one)")
    for given in (ForeignArray(memory.ptr, SHAPE, producer.handle),
                  ForeignArray(memory.ptr, (1, 4, 40, 56), producer.handle),  # a wrong shape too
                  ForeignArray(memory.ptr, SHAPE, 0)):  # a stream the interface disallows
        with pytest.raises(TinyFacesError) as refused:
            runner.run(given)
        assert str(refused.value) == closed
    assert host.log == [] and _calls(host) == before
    producer.close()


@pytest.mark.parametrize("name", RUNNERS)
@pytest.mark.parametrize("given", ["none", "stream", "handle"])
def test_close_waits_once_and_destroys_only_the_stream_the_runner_made(name, given, make, host,
                                                                         memory):
    mine, producer = cuda_device.Stream(), cuda_device.Stream()
    runner = make(name, {"none": None, "stream": mine, "handle": mine.handle}[given])
    handle = runner.stream
    assert (handle == mine.handle) == (given != "none") and handle in host.streams
    if given == "stream":
        assert runner.cuda_stream is mine
    runner.run(ForeignArray(memory.ptr, SHAPE, producer.handle))
    assert host.live()["events"] == 1
    del host.log[:]
    runner.synchronize()
    assert host.log == [("cudaStreamSynchronize", handle)]
    before = _calls(host)
    del host.log[:]
    runner.close()
    made = given == "none"
    assert host.log == [("cudaStreamSynchronize", handle)]  # the queued work, once
    done = _calls(host) - before
    assert (done["cudaStreamSynchronize"], done["cudaEventDestroy"],
            done["cudaStreamDestroy"]) == (1, 1, int(made))
    assert host.live()["events"] == 0
    assert (handle in host.streams) == (not made)  # a given stream stays the giver's
    before = _calls(host)
    runner.close()  # idempotent: nothing more to wait for or release
    assert _calls(host) == before
    mine.synchronize()
    mine.close()
    producer.close()
    assert host.live()["streams"] == 0


@pytest.mark.parametrize("name", RUNNERS)
def test_the_last_device_input_lives_until_the_next_run_a_host_run_or_close(name, make, memory):
    runner = make(name)
    for end in ("device run", "host run", "close"):
        given = ForeignArray(memory.ptr, SHAPE, None)
        alive = weakref.ref(given)
        runner.run(given)
        del given
        gc.collect()
        assert alive() is not None, end  # the queued work may still read it
        if end == "device run":
            runner.run(ForeignArray(memory.ptr, SHAPE, None))
        elif end == "host run":
            runner.run(np.zeros(SHAPE, np.float32))
        else:
            runner.close()
        gc.collect()
        assert alive() is None, end


def _refusals(runner: Any, memory: Any, producer: int) -> list[str]:
    """What ``runner`` says to device inputs it must refuse before reading or ordering them."""
    said = []
    for given in (Interface(memory.ptr, typestr="<f8", stream=producer),
                  Interface(memory.ptr, shape=(1, 3, 0, 56), stream=producer),
                  Interface(memory.ptr, strides=(4, 40 * 56 * 4, 56 * 4, 4 * 2), stream=producer),
                  Interface(memory.ptr, stream=0), Interface(memory.ptr, stream=True),
                  RequiresGrad()):
        with pytest.raises(TinyFacesError) as refused:
            runner.run(given)
        said.append(str(refused.value))
    return said


def test_both_runners_refuse_the_same_device_inputs_in_the_same_words_before_ordering_them(
        make, host, memory):
    producer = cuda_device.Stream()
    said = {}
    for name in RUNNERS:
        runner = make(name)
        before = _calls(host)
        said[name] = _refusals(runner, memory, producer.handle)
        assert not any((_calls(host) - before)[c] for c in EVENT_CALLS), name
        runner.close()
    assert said["tensorrt"] == said["onnxruntime-cuda"] == [
        "network input must be a (N, 3, h, w) float32 array, got (1, 3, 40, 56) float64",
        "network input must be a (N, 3, h, w) float32 array, got (1, 3, 0, 56) float32",
        "device array must be C-contiguous, got strides (4, 8960, 224, 8)",
        "__cuda_array_interface__ names stream 0, which the interface disallows: 1 is the legacy "
        "default stream, 2 the per-thread one",
        "__cuda_array_interface__ names stream True; the interface takes None or an integer",
        "cannot read the RequiresGrad's __cuda_array_interface__: Can't get "
        "__cuda_array_interface__ on Variable that requires grad. If gradients aren't required, "
        "use var.detach() to get Variable that doesn't require grad."]
    producer.close()


def test_as_stream_uses_a_stream_wraps_a_handle_and_makes_one_for_none(host):
    mine = cuda_device.Stream()
    assert cuda_device.as_stream(mine) is mine
    wrapped = cuda_device.as_stream(mine.handle)
    assert wrapped is not mine and wrapped.handle == mine.handle
    wrapped.close()  # owned elsewhere: left alive
    assert mine.handle in host.streams
    made = cuda_device.as_stream(None)
    assert made.handle not in (mine.handle, 0) and made.handle in host.streams
    made.close()  # made here: destroyed
    assert host.streams == {mine.handle}
    mine.close()
