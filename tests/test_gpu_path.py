"""The device-resident path's logic, on the CPU: stage choice by capability, stream ordering
with events, batching, the TensorRT runner over an injected engine, clear errors.

Nothing here runs a GPU or TensorRT: the CUDA layer and the engine are stand-ins that
record what the code asks of them. What they show is the order and the arguments of the
calls (which stream waits for which, where memory is read); the kernels themselves and
TensorRT are checked on a GPU by tools/gpu_check.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import host_cudart
from helpers_cai import ForeignArray
from helpers_runners import PooledRunner
from helpers_tensorrt import FakeContext, FakeEngine
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import (BackendUnavailableError, ImageError, ManifestError,
                                       NetworkInputError, NonFiniteScoresError, StageOrderError,
                                       TinyFacesError)
from tinyfaces_trt.core.manifest import load_export_folder
from tinyfaces_trt.core.pyramid import plan_pyramid
from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities
from tinyfaces_trt.detectors import create_detector, resolve_backend
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.runtime.backends import create_runner, cuda_device, cuda_stages, detector_for
from tinyfaces_trt.runtime.backends.tensorrt_runner import TensorRTRunner
from tinyfaces_trt.runtime.pipeline import Detector
from tinyfaces_trt.runtime.postprocess import HostPostprocessor
from tinyfaces_trt.runtime.preprocess import HostPreprocessor

# ---------------------------------------------------------------------------------------------
# A recording stand-in for the CUDA layer (cuda_device) and the kernel library
# ---------------------------------------------------------------------------------------------


@dataclass
class CudaLog:
    calls: list[tuple] = field(default_factory=list)
    next_ptr: int = 0x1000
    device: int = 0  # the calling thread's current CUDA device
    memory: dict[int, bytes] = field(default_factory=dict)  # what a download of a pointer gets

    def alloc(self, nbytes: int) -> int:
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + ((int(nbytes) + 255) // 256) * 256
        return ptr

    def read(self, address: int, nbytes: int) -> bytes:
        """``nbytes`` from ``address``: what was written there (``memory``), else zeros."""
        out = bytearray(nbytes)
        for start, data in self.memory.items():
            lo, hi = max(start, address), min(start + len(data), address + nbytes)
            if lo < hi:
                out[lo - address:hi - address] = data[lo - start:hi - start]
        return bytes(out)


def _address(pointer: Any) -> int:
    """A pointer argument as the library takes it: an int, or an object with ``.ptr``."""
    return pointer if isinstance(pointer, int) else pointer.ptr


def fake_cuda(monkeypatch: pytest.MonkeyPatch, log: CudaLog) -> None:
    class Stream:
        created = 100
        live = True

        def __init__(self, handle: int | None = None) -> None:
            if handle is None:
                Stream.created += 1
                handle = Stream.created
            self.handle = int(handle)

        def synchronize(self) -> None:
            log.calls.append(("sync", self.handle))

    class Event:
        def record(self, stream: Any) -> None:
            log.calls.append(("record", cuda_device._stream_handle(stream)))

        def make_wait(self, stream: Any) -> None:
            log.calls.append(("wait", cuda_device._stream_handle(stream)))

        def synchronize(self) -> None:
            pass

        def close(self) -> None:
            pass

    class DeviceBuffer:
        def __init__(self, nbytes: int) -> None:
            self.nbytes, self.ptr = int(nbytes), log.alloc(nbytes)

        def upload(self, array: np.ndarray, stream: Any = None, offset: int = 0) -> None:
            log.calls.append(("upload", self.ptr + offset, array.nbytes,
                              cuda_device._stream_handle(stream)))

        def upload_from(self, host_ptr: int, nbytes: int, stream: Any = None,
                        offset: int = 0) -> None:
            log.calls.append(("upload", self.ptr + offset, nbytes,
                              cuda_device._stream_handle(stream)))

        def copy_from_device(self, ptr: int, nbytes: int, stream: Any = None) -> None:
            log.calls.append(("d2d", self.ptr, ptr, nbytes, cuda_device._stream_handle(stream)))

        def download(self, array: np.ndarray, stream: Any = None, offset: int = 0) -> np.ndarray:
            data = log.read(self.ptr + offset, array.nbytes)
            array.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, np.uint8)
            log.calls.append(("download", self.ptr + offset, cuda_device._stream_handle(stream)))
            return array

        def free(self) -> None:
            log.calls.append(("free", self.ptr))

    class PinnedBuffer:
        def __init__(self, nbytes: int) -> None:
            self.nbytes, self._data = int(nbytes), np.zeros(int(nbytes), np.uint8)
            self.ptr = self._data.ctypes.data

        def array(self, nbytes: int) -> np.ndarray:
            return self._data[:nbytes]

        def free(self) -> None:
            pass

    monkeypatch.setattr(cuda_device, "Stream", Stream)
    monkeypatch.setattr(cuda_device, "Event", Event)
    monkeypatch.setattr(cuda_stages, "Stream", Stream)
    monkeypatch.setattr(cuda_stages, "DeviceBuffer", DeviceBuffer)
    monkeypatch.setattr(cuda_stages, "PinnedBuffer", PinnedBuffer)
    monkeypatch.setattr(cuda_stages, "_require_gpu", lambda: None)
    monkeypatch.setattr(cuda_device, "current_device", lambda: log.device)
    monkeypatch.setattr(cuda_stages._Scratch.__init__, "__defaults__", (DeviceBuffer, None))


class FakeKernels:
    """The kernel library's Python surface, recording each launch and its stream."""

    def __init__(self, log: CudaLog) -> None:
        self.log = log
        self.nms_stats: list[tuple[int, int, int, int]] = []  # per nms call; default all zero
        self.nms_rows: list[np.ndarray] = []  # per nms call: the kept rows it writes

    def resize_workspace_size(self, *args: int) -> int:
        return 128

    def resize_normalize(self, src: int, h: int, w: int, dst: int, oh: int, ow: int,
                         *rest: Any) -> None:
        self.log.calls.append(("resize", src, dst, oh, ow, _address(rest[2]),
                               cuda_device._stream_handle(rest[-1])))

    def resize_plan_size(self, *args: int) -> tuple[int, int]:
        return 64, 64

    def resize_plan(self, h: int, w: int, oh: int, ow: int, plan: Any, plan_bytes: int,
                    stream: Any) -> None:
        self.log.calls.append(("resize_plan", h, w, oh, ow, _address(plan),
                               cuda_device._stream_handle(stream)))

    def resize_normalize_planned(self, src: int, h: int, w: int, dst: int, oh: int, ow: int,
                                 *rest: Any) -> None:
        workspace = _address(rest[4])
        self.log.calls.append(("resize", src, dst, oh, ow, workspace,
                               cuda_device._stream_handle(rest[-1])))

    def candidates_size(self, capacity: int) -> int:
        return 16 * capacity + 64

    def candidates_reset(self, candidates: Any, stream: Any) -> None:
        self.log.calls.append(("candidates_reset", _address(candidates),
                               cuda_device._stream_handle(stream)))

    def decode_level(self, score_map: int, h: int, w: int, params: Any, key_base: int,
                     candidates: Any, capacity: int, stream: Any) -> None:
        self.log.calls.append(("decode", score_map, key_base, _address(candidates),
                               cuda_device._stream_handle(stream)))

    def nms_workspace_size(self, n: int) -> int:
        return 64

    def nms(self, candidates: Any, capacity: int, params: Any, n: int, ws: Any, ws_bytes: int,
            out: Any, stats: Any, stream: Any) -> None:
        self.log.calls.append(("nms", _address(candidates), cuda_device._stream_handle(stream)))
        if self.nms_stats:
            from tinyfaces_trt.kernels.binding import NMS_STATS_DTYPE

            self.log.memory[_address(stats)] = np.array([self.nms_stats.pop(0)],
                                                         NMS_STATS_DTYPE).tobytes()
        if self.nms_rows:
            self.log.memory[_address(out)] = np.asarray(self.nms_rows.pop(0),
                                                        np.float32).tobytes()


class DeviceMap:
    """A device array as a runner returns it (only the interface: no memory behind it)."""

    def __init__(self, ptr: int, shape: tuple[int, ...]) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (ptr, False),
                                         "strides": None, "version": 3}


class FakeDeviceRunner(RunnerBase):
    capabilities = RunnerCapabilities(device_io=True, batch=True)

    def __init__(self, log: CudaLog, handle: int = 7) -> None:
        self.log, self.handle = log, handle

    @property
    def stream(self) -> int:
        return self.handle

    def run(self, x: Any) -> DeviceMap:
        n, _, h, w = x.__cuda_array_interface__["shape"]
        self.log.calls.append(("run", x.__cuda_array_interface__["data"][0], n, self.handle))
        return DeviceMap(0xBEEF00, (n, 125, -(-h // 8), -(-w // 8)))


def _events(calls: list[tuple]) -> list[tuple]:
    """The launches, host waits and inter-stream events (the record that marks the end of an
    image upload, for reusing the pinned staging buffer, is left out)."""
    kept = []
    for previous, call in zip([("",)] + calls, calls):
        if call[0] == "record" and previous[0] == "upload":
            continue
        if call[0] in ("resize", "record", "wait", "run", "decode", "sync"):
            kept.append(call)
    return kept


# ---------------------------------------------------------------------------------------------
# Stage choice by capability
# ---------------------------------------------------------------------------------------------

class HostRunner(RunnerBase):
    def run(self, x: np.ndarray) -> np.ndarray:
        return np.zeros((x.shape[0], 125, -(-x.shape[2] // 8), -(-x.shape[3] // 8)), np.float32)


def test_host_runner_gets_host_stages_and_cannot_demand_gpu_ones():
    detector = detector_for(HostRunner(), DetectorConfig())
    assert isinstance(detector.preprocessor, HostPreprocessor)
    assert isinstance(detector.postprocessor, HostPostprocessor)
    with pytest.raises(BackendUnavailableError, match="not a device-I/O runner"):
        detector_for(HostRunner(), DetectorConfig(), gpu_stages=True)


def test_device_runner_gets_cuda_stages_on_its_own_stream(monkeypatch):
    log = CudaLog()
    fake_cuda(monkeypatch, log)
    monkeypatch.setattr(cuda_stages, "_load", lambda library: FakeKernels(log))
    detector = detector_for(FakeDeviceRunner(log, handle=7), DetectorConfig())
    assert isinstance(detector.preprocessor, cuda_stages.CudaPreprocessor)
    assert isinstance(detector.postprocessor, cuda_stages.CudaPostprocessor)
    assert detector.preprocessor.stream.handle == detector.postprocessor.stream.handle == 7


def test_stages_are_made_and_run_only_on_the_runners_device(monkeypatch):
    """The CUDA stages allocate and launch on the thread's current device: a runner on another
    device (torch-cuda on cuda:1) is refused at build, and a detector called from a thread
    whose current device is another (a new thread starts on device 0) fails before any work,
    each naming the fix (not a kernel launch error per image)."""
    log = CudaLog()
    fake_cuda(monkeypatch, log)
    monkeypatch.setattr(cuda_stages, "_load", lambda library: FakeKernels(log))
    runner = FakeDeviceRunner(log, handle=7)
    runner.capabilities = RunnerCapabilities(device_io=True, batch=True, device=1)
    with pytest.raises(TinyFacesError) as refused:
        detector_for(runner, DetectorConfig())
    assert str(refused.value) == (
        "the runner (FakeDeviceRunner) is on CUDA device 1, but this thread's current CUDA device "
        "is 0: make device 1 current in this thread first (torch.cuda.set_device(1), "
        "cudaSetDevice), or run the process with CUDA_VISIBLE_DEVICES=1 (it is then device 0)")
    assert not [c for c in log.calls if c[0] in ("resize", "run")]
    log.device = 1
    detector = detector_for(runner, DetectorConfig())
    image = synthetic_image(40, 56)
    detector.detect(image)
    launches = len(log.calls)
    log.device = 0  # another thread
    with pytest.raises(TinyFacesError, match=r"^this detector \(its CUDA decode and NMS\) is on "
                                             r"CUDA device 1, but this thread's current CUDA "
                                             r"device is 0: make device 1 current"):
        detector.detect(image)
    level = detector.plan(40, 56)[0]
    with pytest.raises(TinyFacesError, match=r"^this detector \(its CUDA resize\) is on CUDA device 1"):
        detector.preprocessor.prepare(image, level)
    # nothing was queued (the failed detect waited for the stream, as a failed call does)
    assert [c for c in log.calls[launches:] if c[0] != "sync"] == []
    log.device = 1
    assert len(detector.detect(image)) == 0


def test_device_runner_without_cuda_stages_falls_back_loudly_or_fails_when_required(monkeypatch, caplog):
    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise BackendUnavailableError("kernel library not built")

    monkeypatch.setattr(cuda_stages, "cuda_stages", unavailable)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        detector = detector_for(FakeDeviceRunner(CudaLog()), DetectorConfig())
    assert isinstance(detector.preprocessor, HostPreprocessor)
    assert "kernel library not built" in caplog.text and "host stages" in caplog.text
    with pytest.raises(BackendUnavailableError, match="kernel library not built"):
        detector_for(FakeDeviceRunner(CudaLog()), DetectorConfig(), gpu_stages=True)


# ---------------------------------------------------------------------------------------------
# The protocol, checked once: no probing afterwards
# ---------------------------------------------------------------------------------------------

class _RunOnly:
    def run(self, x: np.ndarray) -> np.ndarray:
        return HostRunner().run(x)


class _OldPostprocessor:
    """The postprocessor protocol before synchronize() and close() were members."""

    def __init__(self) -> None:
        self.inner = HostPostprocessor(DetectorConfig())
        self.reset, self.add_level = self.inner.reset, self.inner.add_level
        self.finish_all, self.finish = self.inner.finish_all, self.inner.finish


def test_what_is_not_a_runner_or_a_stage_is_refused_naming_what_it_lacks():
    config = DetectorConfig()
    with pytest.raises(TypeError) as info:
        Detector(_RunOnly(), config)
    assert str(info.value) == (
        "_RunOnly is not a NetworkRunner: it has no capabilities, stream, check_levels, "
        "warmup, synchronize, close; subclass tinyfaces_trt.core.runner.RunnerBase for the host defaults")
    with pytest.raises(TypeError, match="^_RunOnly is not a NetworkRunner: it has no "
                                        "capabilities, stream, check_levels"):
        detector_for(_RunOnly(), config)

    class DictCapabilities(HostRunner):
        capabilities = {"device_io": True}  # type: ignore[assignment]

    with pytest.raises(TypeError, match="DictCapabilities.capabilities must be a "
                                        "RunnerCapabilities, got dict"):
        Detector(DictCapabilities(), config)
    with pytest.raises(TypeError, match="^_OldPostprocessor is not a Postprocessor: it has no "
                                        "synchronize, close$"):
        Detector(HostRunner(), config, postprocessor=_OldPostprocessor())
    with pytest.raises(TypeError, match="^HostPostprocessor is not a Preprocessor: it has no "
                                        "prepare, prepare_batch, empty_images$"):
        Detector(HostRunner(), config, preprocessor=HostPostprocessor(config))


def test_a_runner_with_input_buffers_gets_its_levels_resized_into_them(monkeypatch):
    """capabilities.input_buffers: detector_for hands the runner's input_buffer to the CUDA
    preprocessor, which asks it for each level's shape and resizes into what it gives; a
    runner declaring it without the member is refused."""
    log = CudaLog()
    fake_cuda(monkeypatch, log)
    monkeypatch.setattr(cuda_stages, "_load", lambda library: FakeKernels(log))
    asked = []

    class WithInputs(FakeDeviceRunner):
        capabilities = RunnerCapabilities(device_io=True, batch=True, input_buffers=True)

        def input_buffer(self, shape):
            asked.append(shape)
            if shape[2:] != (levels[-1].height, levels[-1].width):
                return None
            return DeviceMap(0xCAFE00, shape)

    levels: list = []
    detector = detector_for(WithInputs(log, handle=7), DetectorConfig())
    levels[:] = detector.plan(40, 56)
    detector.detect(synthetic_image(40, 56))
    assert asked == [(1, 3, lv.height, lv.width) for lv in levels]
    resizes = [c for c in log.calls if c[0] == "resize"]
    assert [c[2] == 0xCAFE00 for c in resizes] == [False] * (len(levels) - 1) + [True]
    runs = [c for c in log.calls if c[0] == "run"]
    assert runs[-1][1] == 0xCAFE00  # the network read it where it was written
    detector.close()

    class Declares(RunnerBase):
        capabilities = RunnerCapabilities(device_io=True, input_buffers=True)

    with pytest.raises(TypeError, match="^Declares is not a NetworkRunner: it has no "
                                        "input_buffer although its capabilities declare "
                                        "input_buffers$"):
        Detector(Declares(), DetectorConfig())


class _Counting:
    """Counts synchronize() and close() calls of the part it is mixed into."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.syncs = self.closes = 0

    def synchronize(self) -> None:
        self.syncs += 1

    def close(self) -> None:
        self.closes += 1


class _CountingRunner(_Counting, HostRunner):
    pass


class _CountingPre(_Counting, HostPreprocessor):
    pass


class _CountingPost(_Counting, HostPostprocessor):
    pass


def test_timed_detection_waits_for_every_part_and_close_closes_each_once():
    config = DetectorConfig()
    parts = _CountingPre(config), _CountingRunner(), _CountingPost(config)
    detector = Detector(parts[1], config, preprocessor=parts[0], postprocessor=parts[2])
    image = synthetic_image(48, 64, seed=2)
    detector.detect(image)
    assert [p.syncs for p in parts] == [0, 0, 0]  # untimed: no host waits
    timings: dict[str, float] = {}
    detector.detect(image, timings)
    laps = 3 * len(detector.plan(48, 64)) + 1  # preprocess, network, decode per level; nms
    assert [p.syncs for p in parts] == [laps] * 3
    assert set(timings) == {"preprocess", "network", "decode", "nms"}
    with detector:
        pass
    assert [p.closes for p in parts] == [1, 1, 1]


def test_threads_sharing_a_detector_take_turns_and_get_their_own_boxes():
    """The stages keep one image's state between reset and finish: detect from several threads
    (a web service's thread pool) runs one image at a time, each thread gets its image's boxes,
    close() waits for the image in flight, and the images after it are refused."""
    import threading
    import time

    class SlowRunner(HostRunner):
        inside = most = 0
        closed_while_running = False

        def run(self, x: np.ndarray) -> np.ndarray:
            SlowRunner.inside += 1
            SlowRunner.most = max(SlowRunner.most, SlowRunner.inside)
            time.sleep(0.002)
            SlowRunner.inside -= 1
            # a score map that depends on the input: each image gets its own boxes
            scores = np.zeros((x.shape[0], 125, -(-x.shape[2] // 8), -(-x.shape[3] // 8)),
                              np.float32)
            scores[:, :25] = -9.0  # the templates' scores; no box regression
            scores[:, 4, 1, 1] = 3.0 + x[:, 0, 0, 0]
            return scores

        def close(self) -> None:
            SlowRunner.closed_while_running |= SlowRunner.inside > 0

    config = DetectorConfig()
    detector = Detector(SlowRunner(), config)
    images = [synthetic_image(40, 56, seed=seed) for seed in range(6)]
    expected = [detector.detect(image) for image in images]
    assert len({e.tobytes() for e in expected}) > 1  # the images' boxes differ
    got: dict[int, Any] = {}

    def detect(i: int) -> None:
        try:
            got[i] = detector.detect(images[i])
        except TinyFacesError as exc:
            got[i] = exc

    threads = [threading.Thread(target=detect, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    time.sleep(0.005)
    detector.close()  # while they run: waits for the image in flight
    for thread in threads:
        thread.join()
    assert SlowRunner.most == 1 and not SlowRunner.closed_while_running
    done = [i for i, boxes in got.items() if isinstance(boxes, np.ndarray)]
    assert done and len(got) == len(images)
    for i in done:
        np.testing.assert_array_equal(got[i], expected[i])
    assert all(str(got[i]) == "this detector is closed" for i in got if i not in done)
    with pytest.raises(TinyFacesError, match="this detector is closed"):
        detector.detect(images[0])
    with pytest.raises(TinyFacesError, match="this detector is closed"):
        detector.warmup([(40, 56)])


def test_detector_for_closes_the_stages_it_made_when_the_detector_fails(monkeypatch):
    import tinyfaces_trt.runtime.backends as backends

    config = DetectorConfig()
    made = _CountingPre(config), _CountingPost(config)
    monkeypatch.setattr(cuda_stages, "cuda_stages", lambda *args, **kwargs: made)

    def failing(*args: Any, **kwargs: Any) -> Detector:
        raise MemoryError("out of host memory")

    monkeypatch.setattr(backends, "Detector", failing)
    with pytest.raises(MemoryError):
        detector_for(FakeDeviceRunner(CudaLog()), config)
    assert [stage.closes for stage in made] == [1, 1]


def test_close_closes_every_part_when_one_fails():
    config = DetectorConfig()

    class FailingPost(_CountingPost):
        def close(self) -> None:
            super().close()
            raise RuntimeError("cudaErrorIllegalAddress")

    pre, runner, post = _CountingPre(config), _CountingRunner(), FailingPost(config)
    detector = Detector(runner, config, preprocessor=pre, postprocessor=post)
    with pytest.raises(RuntimeError, match="cudaErrorIllegalAddress"):
        detector.close()
    assert (pre.closes, post.closes, runner.closes) == (1, 1, 1)


# ---------------------------------------------------------------------------------------------
# Stream ordering with events
# ---------------------------------------------------------------------------------------------

def test_stream_order_records_on_the_producer_and_waits_on_the_consumer():
    calls: list[tuple] = []
    event = SimpleNamespace(record=lambda s: calls.append(("record", s)),
                            make_wait=lambda s: calls.append(("wait", s)))
    cuda_device.StreamOrder(3, 5, event=event).after()
    assert calls == [("record", 3), ("wait", 5)]
    calls.clear()
    same = cuda_device.StreamOrder(4, 4, event=event)
    same.after()
    assert same.same and calls == []


def _device_detector(monkeypatch, stage_stream: int | None):
    log = CudaLog()
    fake_cuda(monkeypatch, log)
    runner = FakeDeviceRunner(log, handle=7)
    kernels = FakeKernels(log)
    config = DetectorConfig()
    pre = cuda_stages.CudaPreprocessor(config, stage_stream, kernels, runner_stream=runner.stream)
    post = cuda_stages.CudaPostprocessor(config, pre.stream, kernels, runner_stream=runner.stream)
    return Detector(runner, config, preprocessor=pre, postprocessor=post), log


def test_other_streams_are_ordered_by_events_not_by_the_host(monkeypatch):
    detector, log = _device_detector(monkeypatch, stage_stream=3)
    for _ in range(2):
        detector.detect(synthetic_image(40, 56))
    levels = detector.plan(40, 56)
    per_level = [("resize", "S"), ("record", 3), ("wait", 7), ("run", 7), ("record", 7),
                 ("wait", 3), ("decode", 3), ("record", 3), ("wait", 7)]
    # each image's resizes start after the network has read the previous image's levels
    per_image = [("record", 7), ("wait", 3)] + per_level * len(levels) + [("sync", 3)]
    got = [(c[0], "S" if c[0] == "resize" and c[-1] == 3 else c[-1]) for c in _events(log.calls)]
    assert got == per_image * 2  # the only host wait is for the boxes, after the last level


def test_levels_of_one_shape_get_their_own_input_buffers(monkeypatch):
    """A 1x1 image plans two 2x2 levels: on another stream than the runner's, the second
    resize must not overwrite the input the network may still be reading."""
    detector, log = _device_detector(monkeypatch, stage_stream=3)
    image = synthetic_image(1, 1)
    levels = detector.plan(1, 1)
    assert [(lv.height, lv.width) for lv in levels] == [(2, 2), (2, 2)]
    inputs = [detector.preprocessor.prepare(image, lv).ptr for lv in levels]
    assert inputs[0] != inputs[1]
    assert [c[2] for c in log.calls if c[0] == "resize"] == inputs


def test_a_later_level_waits_for_the_runner_before_it_is_resized_into_the_runners_buffer(
        monkeypatch):
    """On another stream than the runner's, a level after the first resized into the
    runner's own input buffer waits (an event) for the runner's work queued so far: the graph
    owning that buffer may have been made during this pyramid and still be reading an
    earlier level from it. Levels going into the preprocessor's buffers need no such wait."""
    log = CudaLog()
    fake_cuda(monkeypatch, log)
    kernels = FakeKernels(log)
    config = DetectorConfig()
    levels = plan_pyramid(40, 56, config)
    theirs = (1, 3, levels[2].height, levels[2].width)
    pre = cuda_stages.CudaPreprocessor(
        config, 3, kernels, runner_stream=7,
        input_buffers=lambda shape: DeviceMap(0xCAFE00, shape) if shape == theirs else None)
    image = synthetic_image(40, 56)
    for level in levels:
        pre.prepare(image, level)
    got = [(c[0], c[2] == 0xCAFE00 if c[0] == "resize" else c[-1]) for c in _events(log.calls)]
    # level 0 waits for the runner's earlier work; level 2 (into its buffer) again
    to_runner = [("record", 3), ("wait", 7)]
    want = [("record", 7), ("wait", 3)] + ([("resize", False)] + to_runner) * 2 \
        + [("record", 7), ("wait", 3), ("resize", True)] + to_runner \
        + ([("resize", False)] + to_runner) * (len(levels) - 3)
    assert got == want
    pre.close()


def _frees_of_busy_memory(calls: list[tuple]) -> list[int]:
    """The pointers freed while a resize or a network run that used them may still be queued:
    a launch is known done once a host wait (sync) covers its stream, or a stream that waited
    (an event recorded right before the wait) for it."""
    covered: dict[int, set[int]] = {}  # per stream: the launches its queue comes after
    done: set[int] = set()
    uses: dict[int, set[int]] = {}  # per pointer: the launches that used it
    recorded: set[int] = set()
    busy = []
    for i, call in enumerate(calls):
        kind, stream = call[0], call[-1]
        if kind in ("resize", "run"):
            covered.setdefault(stream, set()).add(i)
            pointers = (call[1], call[2], call[5]) if kind == "resize" else (call[1],)
            for ptr in pointers:
                uses.setdefault(ptr, set()).add(i)
        elif kind == "record":
            recorded = set(covered.get(stream, ()))
        elif kind == "wait":
            covered.setdefault(stream, set()).update(recorded)
        elif kind == "sync":
            done |= covered.get(stream, set())
        elif kind == "free" and not uses.get(call[1], set()) <= done:
            busy.append(call[1])
    return busy


def test_memory_is_freed_only_once_the_work_queued_on_it_is_done(monkeypatch):
    """The resize workspace grows level by level (levels are resized small to large) while the
    earlier levels' resizes may still be queued; closing a detector whose detect was cut short
    frees what queued resizes and the network may still read. Neither may count on cudaFree
    waiting for the device (it only "may"): the stream is waited for first, after the
    runner's work."""
    detector, log = _device_detector(monkeypatch, stage_stream=3)
    detector.preprocessor.lib.resize_plan_size = lambda h, w, oh, ow: (64, 4 * oh * ow)
    detector.preprocessor.lib.resize_workspace_size = lambda h, w, oh, ow: 64 + 4 * oh * ow
    detector.detect(synthetic_image(40, 56))
    assert sum(c[0] == "free" for c in log.calls) >= 2  # the workspace grew, level by level
    assert _frees_of_busy_memory(log.calls) == []
    image = synthetic_image(60, 84)  # larger: the input buffers grow too
    levels = detector.plan(60, 84)
    detector.postprocessor.reset(60, 84)
    for level in levels[:2]:
        detector.postprocessor.add_level(detector.runner.run(detector.preprocessor.prepare(image, level)),
                                         level)
    detector.runner.run(detector.preprocessor.prepare(image, levels[2]))  # then Ctrl-C
    detector.detect(synthetic_image(80, 112))  # a larger one: the level buffers grow
    assert _frees_of_busy_memory(log.calls) == []
    detector.postprocessor.reset(60, 84)
    detector.runner.run(detector.preprocessor.prepare(image, levels[0]))  # Ctrl-C again
    detector.close()
    assert _frees_of_busy_memory(log.calls) == []
    assert [c for c in log.calls if c[0] == "free"], "close() freed nothing"
    detector.close()  # idempotent: nothing queued or freed twice
    assert _frees_of_busy_memory(log.calls) == []


def test_per_image_host_work_is_done_once_per_size_and_scale(monkeypatch):
    """The decode parameters (a 100-value loop) and the pyramid's candidate bound (a pyramid
    plan) took about 0.2 ms of host time each, per level and per image."""
    from tinyfaces_trt.kernels import binding

    made, bounds = [], []
    real_params = binding.decode_params
    monkeypatch.setattr(binding, "decode_params",
                        lambda *a: made.append(a[-1]) or real_params(*a))
    real_bound = cuda_stages.CudaPostprocessor._capacity_bound
    monkeypatch.setattr(cuda_stages.CudaPostprocessor, "_capacity_bound",
                        lambda self, h, w: bounds.append((h, w)) or real_bound(self, h, w))
    detector, log = _device_detector(monkeypatch, stage_stream=7)
    for _ in range(3):
        detector.detect(synthetic_image(40, 56))
    scales = [lv.scale for lv in detector.plan(40, 56)]
    assert made == scales and bounds == [(40, 56)]
    decodes = [c for c in log.calls if c[0] == "decode"]
    assert len(decodes) == 3 * len(scales)
    detector.detect(synthetic_image(30, 20))
    assert bounds == [(40, 56), (30, 20)]


def test_one_shared_stream_needs_no_event(monkeypatch):
    detector, log = _device_detector(monkeypatch, stage_stream=7)
    detector.detect(synthetic_image(40, 56))
    kinds = [c[0] for c in _events(log.calls)]
    assert "record" not in kinds and "wait" not in kinds
    assert kinds.count("sync") == 1 and all(c[-1] == 7 for c in _events(log.calls))


def test_device_batch_decodes_each_image_slice_into_its_own_candidates(monkeypatch):
    detector, log = _device_detector(monkeypatch, stage_stream=7)
    images = [synthetic_image(40, 56, seed) for seed in range(3)]
    results = detector.detect_batch(images)
    assert len(results) == 3
    levels = detector.plan(40, 56)
    uploads = [c for c in log.calls if c[0] == "upload" and c[2] == 3 * 40 * 56 * 3]
    assert len(uploads) == 1  # the three images go up once, together
    runs = [c for c in log.calls if c[0] == "run"]
    assert [c[2] for c in runs] == [3] * len(levels)  # one network call per level, batch 3
    decodes = [c for c in log.calls if c[0] == "decode"]
    assert len(decodes) == 3 * len(levels)
    first = decodes[:3]
    h, w = -(-levels[0].height // 8), -(-levels[0].width // 8)
    assert [d[1] - 0xBEEF00 for d in first] == [i * 125 * h * w * 4 for i in range(3)]
    assert len({d[3] for d in first}) == 3  # three candidate buffers
    assert len([c for c in log.calls if c[0] == "nms"]) == 3


NONFINITE_MESSAGE = (
    "the network's score maps of this image{} held 7 NaN or infinite value(s) (counted on the GPU "
    "over all pyramid levels): the weights, the export or the backend is broken; no detections "
    "were produced for this image")


def test_non_finite_count_in_the_nms_stats_fails_the_image(monkeypatch):
    """What CudaPostprocessor does with a nonzero tf_nms_stats.nonfinite (the stand-in returns
    it; the kernels' count itself is checked on a GPU in tests/test_kernels_gpu.py)."""
    detector, log = _device_detector(monkeypatch, stage_stream=7)
    post = detector.postprocessor
    post.lib.nms_stats = [(2, 3, 0, 7)]  # 3 finite candidates, 2 kept, 7 NaN/inf values
    with pytest.raises(NonFiniteScoresError) as info:
        detector.detect(synthetic_image(40, 56))
    assert str(info.value) == NONFINITE_MESSAGE.format("")
    assert post.last_stats == {"num_candidates": 3, "num_kept": 0, "nonfinite": 7}
    # the counters and the first rows in one copy and one wait; no box download after it
    assert [c[1] for c in log.calls if c[0] == "download"] == [post._results.buffer.ptr]

    post.lib.nms_stats = [(0, 4, 0, 0), (0, 2, 0, 7), (0, 0, 0, 0)]
    with pytest.raises(NonFiniteScoresError) as info:
        detector.detect_batch([synthetic_image(40, 56, seed) for seed in range(3)])
    assert str(info.value) == NONFINITE_MESSAGE.format(" (image 2 of a batch of 3)")

    post.lib.nms_stats = [(0, 4, 0, 0)]
    assert detector.detect(synthetic_image(40, 56)).shape == (0, 5)
    assert post.last_stats == {"num_candidates": 4, "num_kept": 0, "nonfinite": 0}


def test_kept_boxes_come_with_the_counters_in_one_wait_and_the_rest_after_it(monkeypatch):
    """NMS's counters and its first PREFETCH_ROWS kept rows are downloaded together, in one
    copy before the one wait; an image keeping more fetches the rest after it."""
    monkeypatch.setattr(cuda_stages, "PREFETCH_ROWS", 2)
    detector, log = _device_detector(monkeypatch, stage_stream=7)
    post = detector.postprocessor
    rows = np.array([[1, 2, 10, 12, 0.9], [3, 4, 20, 22, 0.8], [5, 6, 30, 32, 0.7]], np.float32)
    for kept in (2, 3):
        post.lib.nms_stats = [(kept, 5, 0, 0)]
        post.lib.nms_rows = [rows[:kept]]
        before = len(log.calls)
        boxes = detector.detect(synthetic_image(40, 56))
        np.testing.assert_array_equal(boxes, rows[:kept])
        waits = [c[:2] for c in log.calls[before:] if c[0] in ("nms", "download", "sync")]
        stats_ptr = post._results.buffer.ptr  # the counters, then the rows (16 bytes on)
        rows_ptr = stats_ptr + 16
        one_wait = [("download", stats_ptr), ("sync", 7)]
        assert waits[1:] == one_wait + ([("download", rows_ptr), ("sync", 7)] if kept == 3 else []), kept
    # a batch: each image's rows through the one page-locked buffer, in turn
    post.lib.nms_stats = [(3, 5, 0, 0), (1, 5, 0, 0)]
    post.lib.nms_rows = [rows, rows[2:]]
    first, second = detector.detect_batch([synthetic_image(40, 56, seed) for seed in (0, 1)])
    np.testing.assert_array_equal(first, rows)
    np.testing.assert_array_equal(second, rows[2:])


def test_the_host_path_names_the_image_of_a_batch_with_non_finite_scores():
    """As the device path does: the message said "this image" without saying which."""
    class NanInSecondImage(HostRunner):
        capabilities = RunnerCapabilities(batch=True)

        def run(self, x: np.ndarray) -> np.ndarray:
            maps = super().run(x)
            maps[min(1, len(maps) - 1), 3, 0, 0] = np.nan
            return maps

    detector = Detector(NanInSecondImage(), DetectorConfig())
    images = [synthetic_image(40, 56, seed) for seed in range(3)]
    with pytest.raises(NonFiniteScoresError) as info:
        detector.detect_batch(images)
    message = str(info.value)
    assert message.startswith("image 2 of a batch of 3: the network's score map of pyramid level 0 ")
    assert message.endswith("no detections were produced for this image")
    with pytest.raises(NonFiniteScoresError) as info:
        detector.detect(images[0])
    assert str(info.value).startswith("the network's score map of pyramid level 0 ")


def test_detect_batch_of_one_image_array_says_to_use_detect():
    detector = Detector(HostRunner(), DetectorConfig())
    image = synthetic_image(40, 56)
    with pytest.raises(ImageError) as info:
        detector.detect_batch(image)
    assert str(info.value) == ("detect_batch takes a sequence of images (a list, or an (N, H, W, "
                               "3) array), got an array of shape (40, 56, 3); for one image use "
                               "detect(image)")
    stacked = detector.detect_batch(np.stack([image, image]))
    assert len(stacked) == 2 and all(b.shape == (0, 5) for b in stacked)


def test_stages_refuse_work_before_reset(monkeypatch):
    log = CudaLog()
    fake_cuda(monkeypatch, log)
    post = cuda_stages.CudaPostprocessor(DetectorConfig(), 7, FakeKernels(log))
    with pytest.raises(StageOrderError, match="reset"):
        post.finish()
    with pytest.raises(StageOrderError, match="reset"):
        HostPostprocessor(DetectorConfig()).finish()


def test_the_postprocessor_resolves_nms_with_the_warp_rule_by_default(monkeypatch):
    """The fastest rule on the H200 (run 3: 417 / 437 us at 10k / 50k candidates against
    659 us / 1.26 ms for the lookahead rule), the same boxes as every rule."""
    from tinyfaces_trt.kernels import binding

    fake_cuda(monkeypatch, CudaLog())
    post = cuda_stages.CudaPostprocessor(DetectorConfig(), 7, FakeKernels(CudaLog()))
    assert cuda_stages.DEFAULT_NMS_RULE == "warp" and post.nms_rule == binding.NMS_WARP


def test_device_arrays_never_download_implicitly():
    array = cuda_device.DeviceArray(0x1000, (1, 125, 2, 2))
    with pytest.raises(TypeError, match="download"):
        np.asarray(array)


# ---------------------------------------------------------------------------------------------
# Batches on a real backend (ONNX Runtime, CPU)
# ---------------------------------------------------------------------------------------------

def test_detect_batch_equals_detect_image_by_image(export_dir):
    detector = create_detector("onnxruntime", model_dir=export_dir,
                               config_overrides={"prob_thresh": 0.05})
    assert detector.runner.capabilities.batch  # the export has a dynamic batch axis
    images = [synthetic_image(37, 53, seed) for seed in range(3)]
    batched = detector.detect_batch(images)
    single = [detector.detect(image) for image in images]
    assert all(len(s) > 0 for s in single)
    assert len(batched) == len(images)
    for b, s in zip(batched, single, strict=True):
        assert b.shape == s.shape
        np.testing.assert_allclose(b, s, atol=1e-4)
    with pytest.raises(ImageError, match="a batch takes images of one size"):
        detector.detect_batch([synthetic_image(37, 53), synthetic_image(38, 53)])
    assert detector.detect_batch([]) == []


def test_closed_detector_releases_its_runner(export_dir):
    with create_detector("onnxruntime", model_dir=export_dir) as detector:
        closed = []
        detector.runner.close = lambda: closed.append(True)
    assert closed == [True]


# ---------------------------------------------------------------------------------------------
# Backends asked for and absent; auto
# ---------------------------------------------------------------------------------------------

def test_gpu_backends_absent_are_clear_errors(export_dir):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        create_runner("onnxruntime-cuda", load_export_folder(export_dir))


def test_an_absent_gpu_backend_is_refused_before_exporting_a_checkpoint(checkpoint, tmp_path):
    """create_detector("onnxruntime-cuda", weights=...) exported the checkpoint into the cache
    (40 s for ResNet-101 on a CPU) before saying the backend cannot run here."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        create_detector("onnxruntime-cuda", weights=checkpoint, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_auto_takes_the_fastest_backend_present_and_says_so(export_dir, caplog):
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        chosen = resolve_backend("auto", export_dir)
    assert chosen == "onnxruntime"  # this machine: no GPU, no TensorRT
    assert "backend auto: onnxruntime" in caplog.text
    assert resolve_backend("tensorrt") == "tensorrt"


# ---------------------------------------------------------------------------------------------
# The TensorRT runner's logic over an injected engine (TensorRT itself stays unverified here)
# ---------------------------------------------------------------------------------------------

def runner_cuda() -> SimpleNamespace:
    """The CUDA layer as the runner sees it, over whatever fake_cuda installed."""
    return SimpleNamespace(Stream=cuda_device.Stream, DeviceBuffer=cuda_stages.DeviceBuffer,
                           DeviceArray=cuda_device.DeviceArray,
                           as_device_array=cuda_device.as_device_array,
                           ProducerOrder=cuda_device.ProducerOrder, gpu_available=lambda: True)


def runner_trt() -> SimpleNamespace:
    return SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in"), __version__="10.9.0")


def _trt_runner(monkeypatch) -> tuple[TensorRTRunner, CudaLog]:
    log = CudaLog()
    fake_cuda(monkeypatch, log)
    engine = FakeEngine((1, 3, 8, 8), (1, 3, 64, 64), (1, 3, 128, 128))
    return TensorRTRunner(engine=engine, trt=runner_trt(), cuda=runner_cuda(), stream=9), log


def test_tensorrt_runner_logic_over_an_injected_engine(monkeypatch):
    runner, log = _trt_runner(monkeypatch)
    assert runner.capabilities.device_io and runner.stream == 9
    (context,) = runner._contexts
    out = runner.run(DeviceMap(0x5000, (1, 3, 40, 56)))
    assert isinstance(out, cuda_device.DeviceArray) and out.shape == (1, 125, 5, 7)
    assert ("address", "image", 0x5000) in context.calls  # the device input is used in place
    assert context.calls[-1] == ("execute", 9)
    assert out.ptr == runner._output.ptr and out.stream.handle == 9
    host = runner.run(np.zeros((1, 3, 16, 24), np.float32))
    assert isinstance(host, np.ndarray) and host.shape == (1, 125, 2, 3)
    assert ("upload", runner._input.ptr, 16 * 24 * 3 * 4, 9) in log.calls
    with pytest.raises(ManifestError, match="outside"):
        runner.run(np.zeros((1, 3, 200, 24), np.float32))
    levels = [SimpleNamespace(height=100, width=100), SimpleNamespace(height=300, width=10)]
    with pytest.raises(ManifestError, match="1x3x300x10"):
        runner.check_levels(levels)
    # TensorRT takes tensor addresses aligned to 256 bytes: another is copied in first
    before = len(log.calls)
    runner.run(DeviceMap(0x5000 + 4 * 17, (1, 3, 40, 56)))  # e.g. an image's view in a batch
    assert log.calls[before:] == [("d2d", runner._input.ptr, 0x5000 + 4 * 17, 4 * 3 * 40 * 56, 9)]
    assert context.calls[-3:] == [("address", "image", runner._input.ptr),
                                  ("address", "scores", runner._output.ptr), ("execute", 9)]
    context.refuse = (("address", "scores"),)
    with pytest.raises(TinyFacesError, match=f"^TensorRT refused the address 0x{runner._output.ptr:x} "
                                             "of tensor 'scores'$"):
        runner.run(DeviceMap(0x5000, (1, 3, 40, 56)))
    assert context.calls[-1] != ("execute", 9)
    before = len(log.calls)
    runner.close()  # TensorRT may still read its buffers: the stream finishes first
    assert runner._contexts == []
    assert [c[0] for c in log.calls[before:] if c[0] in ("sync", "free")] == ["sync", "free", "free"]
    engine = FakeEngine((1, 3, 8, 8), (1, 3, 64, 64), (1, 3, 128, 128))
    engine.create_execution_context = lambda: FakeContext(refuse=("shape",))
    with pytest.raises(ManifestError, match="^TensorRT refused the input shape 1x3x128x128 of "
                                            "profile 0 of <injected engine>$"):
        TensorRTRunner(engine=engine, trt=runner_trt(), cuda=runner_cuda(), stream=9)
    engine.create_execution_context = lambda: FakeContext(refuse=("profile",))
    with pytest.raises(ManifestError, match="^TensorRT refused optimization profile 0 of "
                                            "<injected engine>: Error in set optimization "
                                            "profile async.$"):
        TensorRTRunner(engine=engine, trt=runner_trt(), cuda=runner_cuda(), stream=9)


def test_tensorrt_runner_and_the_stream_an_input_names_wait_for_each_other(monkeypatch):
    """A CuPy or Numba array names its stream (CUDA Array Interface v3): the runner's stream
    waits for it on the GPU before the engine reads the input, and that stream for the
    engine's reads after (its producer may reuse it once run() returns); the runner keeps the
    input alive until its next run (TensorRT reads it after run() returns)."""
    import gc
    import weakref

    runner, log = _trt_runner(monkeypatch)
    (context,) = runner._contexts
    execute = context.execute_async_v3
    context.execute_async_v3 = lambda stream: log.calls.append(("execute", stream)) or execute(stream)

    def naming(ptr: int, stream: int) -> ForeignArray:
        return ForeignArray(ptr, (1, 3, 40, 56), stream)

    given = naming(0x5000, 77)
    alive = weakref.ref(given)
    before = len(log.calls)
    runner.run(given)  # waits for stream 77, then 77 waits for the engine's reads
    assert log.calls[before:] == [("record", 77), ("wait", 9), ("execute", 9), ("record", 9),
                                  ("wait", 77)]
    before = len(log.calls)
    runner.run(naming(0x5000 + 4 * 17, 77))  # unaligned: copied in after the wait
    assert [c[0] for c in log.calls[before:]] == ["record", "wait", "d2d", "execute", "record", "wait"]
    runner.run(given)  # the last input again: kept until the next run
    del given
    gc.collect()
    assert alive() is not None
    before = len(log.calls)
    runner.run(DeviceMap(0x5000, (1, 3, 40, 56)))  # names no stream: nothing to wait for
    assert not [c for c in log.calls[before:] if c[0] in ("record", "wait")]
    gc.collect()
    assert alive() is None
    with pytest.raises(NetworkInputError, match="names stream 0"):
        runner.run(naming(0x5000, 0))
    # a run that fails once work is queued still tells the producer and keeps the input
    context.execute_async_v3 = lambda stream: log.calls.append(("execute", stream)) and False
    failing = naming(0x5000, 77)
    before = len(log.calls)
    with pytest.raises(TinyFacesError, match="TensorRT execution failed"):
        runner.run(failing)
    assert log.calls[before:] == [("record", 77), ("wait", 9), ("execute", 9), ("record", 9),
                                  ("wait", 77)]
    assert runner._last_input is failing
    context.execute_async_v3 = execute
    runner.run(np.zeros((1, 3, 16, 24), np.float32))  # synchronised: nothing reads it any more
    assert runner._last_input is None


def test_tensorrt_runner_takes_the_batches_of_its_engines_profile(monkeypatch):
    """An engine built with tf-export --max-batch 4: the runner takes 1 to 4 images a run
    (the detector splits larger batches), on the device and from the host."""
    runner, log = _trt_runner(monkeypatch)
    assert not runner.capabilities.batch and runner.capabilities.max_batch == 1
    runner.close()
    engine = FakeEngine((1, 3, 8, 8), (4, 3, 64, 64), (4, 3, 128, 128))
    runner = TensorRTRunner(engine=engine, trt=runner_trt(), cuda=runner_cuda(), stream=9)
    assert runner.capabilities.batch and runner.capabilities.max_batch == 4
    assert runner._output.nbytes == 4 * 125 * 16 * 16 * 4  # the largest batch's score map
    out = runner.run(DeviceMap(0x5000, (3, 3, 40, 56)))
    assert out.shape == (3, 125, 5, 7)
    assert runner.run(np.zeros((2, 3, 16, 24), np.float32)).shape == (2, 125, 2, 3)
    with pytest.raises(ManifestError, match="input shape 5x3x40x56 is outside the engine's "
                                            "optimization profile"):
        runner.run(DeviceMap(0x5000, (5, 3, 40, 56)))
    runner.close()


def test_detect_batch_runs_at_most_the_runners_max_batch_at_once():
    def two_at_once() -> PooledRunner:
        return PooledRunner(RunnerCapabilities(batch=True, max_batch=2))

    config = DetectorConfig()
    images = [synthetic_image(48, 64, seed=s) for s in range(5)]
    runner = two_at_once()
    detector = Detector(runner, config)
    levels = len(detector.plan(48, 64))
    got = detector.detect_batch(images)
    assert runner.batches == [2] * levels + [2] * levels + [1] * levels
    singles = [Detector(two_at_once(), config).detect(image) for image in images]
    assert len(got) == 5 and all(len(s) > 0 for s in singles)
    for g, s in zip(got, singles, strict=True):
        np.testing.assert_array_equal(g, s)
    with pytest.raises(ValueError, match="max_batch must be None or an integer >= 1, got 0"):
        RunnerCapabilities(batch=True, max_batch=0)


def test_tensorrt_runner_close_frees_its_buffers_and_the_stream_it_made(monkeypatch):
    """Over cuda_device itself (host memory, tests/host_cudart.py): close() returns the
    runner's device buffers and the stream it created; a stream it was given stays."""
    if host_cudart.missing():
        pytest.skip(host_cudart.missing())
    host = host_cudart.install(monkeypatch, finalizers=False)
    trt = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in"), __version__="10.9.0")

    def engine():
        return FakeEngine((1, 3, 8, 8), (1, 3, 64, 64), (1, 3, 128, 128))

    runner = TensorRTRunner(engine=engine(), trt=trt)
    assert host.live() == {"device": 2, "pinned": 0, "streams": 1, "events": 0}
    runner.close()
    runner.close()
    with pytest.raises(TinyFacesError, match="this TensorRTRunner is closed: a closed runner"):
        runner.run(np.zeros((1, 3, 64, 64), np.float32))
    assert host.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    mine = cuda_device.Stream()
    TensorRTRunner(engine=engine(), trt=trt, stream=mine).close()
    TensorRTRunner(engine=engine(), trt=trt, stream=mine.handle).close()
    assert host.live() == {"device": 0, "pinned": 0, "streams": 1, "events": 0}
    mine.close()
    assert host.calls["cudaStreamDestroy"] == host.calls["cudaStreamCreate"] == 2
    broken = engine()
    broken.create_execution_context = lambda: None
    with pytest.raises(TinyFacesError, match="could not create an execution context"):
        TensorRTRunner(engine=broken, trt=trt)
    assert host.calls["cudaStreamCreate"] == 3
    assert host.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
