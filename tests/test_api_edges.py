"""Edges of the public API: a failing network run, threads beyond the cores, unknown config
overrides, multi-frame image files, NMS at a threshold that suppresses nothing."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from test_decode_nms import _greedy_brute_force
from tinyfaces_trt.core.config import NUM_CHANNELS, DetectorConfig
from tinyfaces_trt.core.errors import ConfigError, NetworkRunError, TinyFacesError
from tinyfaces_trt.core.manifest import write_manifest
from tinyfaces_trt.runtime import nms as nms_module
from tinyfaces_trt.runtime.backends import create_detector as runtime_create_detector
from tinyfaces_trt.runtime.backends import cuda_device, onnxruntime_runner
from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from tinyfaces_trt.runtime.imageio import load_image

Fail = pytest.importorskip("onnxruntime.capi.onnxruntime_pybind11_state").Fail

OOM = ("[ONNXRuntimeError] : 1 : FAIL : Failed to allocate memory for requested buffer of "
       "size 8493465600")


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """An export folder of a 1x1 stride-8 convolution 3 -> 125 (the detector network's
    signature, no ResNet): loads and runs in milliseconds."""
    folder = tmp_path_factory.mktemp("small_export")
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(NUM_CHANNELS, 3, 1, 1)).astype(np.float32)
    bias = rng.normal(size=(NUM_CHANNELS,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["scores"], strides=[8, 8])], "small",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, NUM_CHANNELS, "a", "b"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    write_manifest(folder, config=DetectorConfig(), files={"onnx_fp32": "model.onnx"}, opset=17)
    return folder


# ------------------------------------------------------------------ a failing network run
class _FailingSession:
    """A session whose run raises what ONNX Runtime raised on a too large input."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def run(self, names, feeds, options=None):
        raise self.error


def test_an_onnxruntime_failure_in_a_run_is_a_network_run_error(small_export):
    detector = runtime_create_detector("onnxruntime", model_dir=small_export)
    image = np.full((64, 48, 3), 100, np.uint8)
    expected = detector.detect(image)
    runner = detector.runner
    real = runner.session
    error = Fail(OOM)
    runner.session = _FailingSession(error)
    with pytest.raises(NetworkRunError) as caught:
        runner.run(np.zeros((1, 3, 40, 56), np.float32))
    assert caught.value.__cause__ is error
    assert isinstance(caught.value, RuntimeError)
    assert str(caught.value) == (
        f"ONNX Runtime failed to run the network on an input of (N, 3, H, W) = (1, 3, 40, 56): "
        f"{OOM}; not enough memory for an input this large: detect a smaller (downscaled) "
        f"image, or lower Detector.max_pixels to refuse such images; run fewer threads or "
        f"detectors at once; or give the process more memory (a larger memory limit; on a "
        f"GPU, more free GPU memory)")
    with pytest.raises(NetworkRunError):  # through the detector too
        detector.detect(image)
    runner.session = real
    np.testing.assert_array_equal(detector.detect(image), expected)  # and it goes on
    detector.close()


def test_a_real_onnxruntime_allocation_failure_is_a_network_run_error(small_export, monkeypatch):
    """ONNX Runtime's own failure at its arena's limit (a shared CPU arena capped at 1 MiB)."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0,
                               ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(1 << 20, -1, -1, -1))
    except Fail as exc:  # registered by an earlier run in this process
        assert "already" in str(exc)

    class CappedOptions(ort.SessionOptions):
        def __init__(self) -> None:
            super().__init__()
            self.add_session_config_entry("session.use_env_allocators", "1")

    monkeypatch.setattr(ort, "SessionOptions", CappedOptions)
    runner = OnnxRuntimeRunner(small_export / "model.onnx", threads=1)
    small = np.ones((1, 3, 16, 16), np.float32)
    want = runner.run(small)
    with pytest.raises(NetworkRunError) as caught:
        runner.run(np.zeros((1, 3, 800, 1200), np.float32))
    assert type(caught.value.__cause__) is Fail
    message = str(caught.value)
    assert message.startswith("ONNX Runtime failed to run the network on an input of "
                              "(N, 3, H, W) = (1, 3, 800, 1200): [ONNXRuntimeError] : 1 : FAIL")
    assert message.endswith("; not enough memory for an input this large: detect a smaller "
                            "(downscaled) image, or lower Detector.max_pixels to refuse such "
                            "images; run fewer threads or detectors at once; or give the process "
                            "more memory (a larger memory limit; on a GPU, more free GPU memory)")
    np.testing.assert_array_equal(runner.run(small), want)  # and it goes on


def test_other_run_failures_have_no_memory_hint_and_ours_pass_unchanged(small_export):
    runner = OnnxRuntimeRunner(small_export / "model.onnx", threads=1)
    x = np.zeros((1, 3, 16, 24), np.float32)
    runner.session = _FailingSession(RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION "
                                                  ": Non-zero status code\nmore detail"))
    with pytest.raises(NetworkRunError) as caught:
        runner.run(x)
    assert str(caught.value) == ("ONNX Runtime failed to run the network on an input of "
                                 "(N, 3, H, W) = (1, 3, 16, 24): [ONNXRuntimeError] : 6 : "
                                 "RUNTIME_EXCEPTION : Non-zero status code")
    ours = TinyFacesError("already explained")
    runner.session = _FailingSession(ours)
    with pytest.raises(TinyFacesError) as caught:
        runner.run(x)
    assert caught.value is ours
    runner.session = _FailingSession(MemoryError())
    with pytest.raises(NetworkRunError, match=r"\(1, 3, 16, 24\): MemoryError; not enough memory"):
        runner.run(x)


class _FailingBinding:
    """A session whose IOBinding runs raise ``error``; the rest is the real session's."""

    def __init__(self, session, error: BaseException) -> None:
        self._session, self.error = session, error

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run_with_iobinding(self, binding, options=None):
        raise self.error


def test_an_onnxruntime_failure_on_the_device_path_is_a_network_run_error(small_export,
                                                                         monkeypatch):
    """The onnxruntime-cuda runner's IOBinding run, over host memory (tests/host_cudart.py,
    tests/helpers_ort_gpu.py): a CUDA allocation failure is a NetworkRunError, and the runner
    runs the next input."""
    import host_cudart

    if host_cudart.missing():
        pytest.skip(host_cudart.missing())
    import helpers_ort_gpu

    host = host_cudart.install(monkeypatch, finalizers=False)
    helpers_ort_gpu.install(monkeypatch)
    runner = helpers_ort_gpu.OnnxRuntimeCudaRunner(small_export / "model.onnx")
    x = np.random.default_rng(0).normal(size=(1, 3, 40, 56)).astype(np.float32)
    buffer = cuda_device.DeviceBuffer(x.nbytes)
    buffer.upload(x)
    given = cuda_device.DeviceArray(buffer.ptr, x.shape, np.float32, owner=buffer)
    try:
        want = runner.run(given).download()
        real = runner.session
        error = Fail("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                     "while running Conv node. Status Message: CUDA error "
                     "cudaErrorMemoryAllocation:out of memory")
        runner.session = _FailingBinding(real, error)
        with pytest.raises(NetworkRunError) as caught:
            runner.run(given)
        assert caught.value.__cause__ is error
        assert str(caught.value).startswith(
            "ONNX Runtime failed to run the network on an input of (N, 3, H, W) = "
            "(1, 3, 40, 56): [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code "
            "returned while running Conv node. Status Message: CUDA error "
            "cudaErrorMemoryAllocation:out of memory; not enough memory for an input this large")
        runner.session = real
        np.testing.assert_array_equal(runner.run(given).download(), want)
    finally:
        runner.close()
        buffer.free()
        host.release_all()


# ------------------------------------------------------------------ threads beyond the cores
def test_the_runtime_factory_warns_of_more_threads_than_cores(small_export, monkeypatch):
    monkeypatch.setattr(onnxruntime_runner.os, "sched_getaffinity", lambda pid: {0, 1},
                        raising=False)
    with pytest.warns(RuntimeWarning) as caught:
        runtime_create_detector("onnxruntime", model_dir=small_export, threads=64).close()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and messages[0].startswith(
        "threads=64 is more than the 2 core(s) this process may use (os.cpu_count(): ")
    assert messages[0].endswith("threads=2 or None (all cores) is faster")
    assert caught[0].filename == __file__  # the caller's line, not the package's
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        runtime_create_detector("onnxruntime", model_dir=small_export, threads=2).close()
        runtime_create_detector("onnxruntime", model_dir=small_export).close()


def test_the_top_level_factory_warns_once(small_export, monkeypatch):
    import tinyfaces_trt

    monkeypatch.setattr(onnxruntime_runner.os, "sched_getaffinity", lambda pid: {0, 1},
                        raising=False)
    with pytest.warns(RuntimeWarning) as caught:
        tinyfaces_trt.create_detector("onnxruntime", model_dir=small_export, threads=64).close()
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and messages[0].startswith("threads=64 is more than the 2 core(s)")
    assert caught[0].filename == __file__


# ------------------------------------------------------------------ config overrides
def test_an_unknown_config_override_is_a_config_error(small_export):
    with pytest.raises(ConfigError, match=r"unknown detector config field\(s\) \['bogus'\]; "
                                          r"known: \["):
        runtime_create_detector("onnxruntime", model_dir=small_export,
                                config_overrides={"bogus": 1})


# ------------------------------------------------------------------ multi-frame files
def _frames(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (24, 16), (40 * k, 200 - 40 * k, 90)) for k in range(count)]


def test_a_camera_mpo_is_read_without_a_warning_an_animated_gif_with_one(tmp_path, caplog):
    """A camera's JPEG is often an MPO (the photo, then a preview or depth frame): only said
    at DEBUG; an animated GIF's other frames are a loss worth a warning."""
    first, preview = _frames(2)
    mpo = tmp_path / "camera.jpg"
    first.save(mpo, format="MPO", save_all=True, append_images=[preview])
    with Image.open(mpo) as check:
        assert (check.format, check.n_frames) == ("MPO", 2)
    gif = tmp_path / "anim.gif"
    first.save(gif, save_all=True, append_images=[preview])
    caplog.set_level(logging.DEBUG, logger="tinyfaces_trt.runtime.imageio")
    pixels = load_image(mpo)
    assert pixels.shape == (16, 24, 3)
    assert np.abs(pixels.astype(int) - np.asarray(first)).max() <= 8  # the first frame (JPEG)
    load_image(gif)
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "frames" in r.getMessage()]
    assert said == [
        (logging.DEBUG, f"{mpo}: has 2 frames (animated or multi-page MPO); using the first "
                        f"frame only"),
        (logging.WARNING, f"{gif}: has 2 frames (animated or multi-page GIF); using the first "
                          f"frame only")]


# ------------------------------------------------------------------ NMS that suppresses nothing
def _scene(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping boxes (duplicates included) with degenerate, inverted, NaN, infinite and
    huge ones among them; tied and NaN logits."""
    centre = rng.uniform(0, 300, (n, 2))
    size = rng.uniform(0.5, 80, (n, 2))
    boxes = np.hstack([centre - size / 2, centre + size / 2])
    boxes[: n // 10] = boxes[n // 10: 2 * (n // 10)]  # exact duplicates: IoU exactly 1
    boxes[2 * (n // 10): 3 * (n // 10), 2:] = boxes[2 * (n // 10): 3 * (n // 10), :2]  # w = h = 0
    odd = rng.random(boxes.shape) < 0.02
    boxes[odd] = rng.choice([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0], odd.sum())
    logits = np.round(rng.normal(size=n), 1).astype(np.float32)
    logits[rng.random(n) < 0.02] = np.nan
    return boxes, logits, rng.permutation(n)


def _walk(boxes, logits, keys, t, o):
    """runtime.nms's greedy walk itself, whatever the threshold."""
    order = nms_module.nms_order(logits, keys)
    b = np.asarray(boxes, np.float64)[order]
    with np.errstate(all="ignore"):
        area = (b[:, 2] - b[:, 0] + o) * (b[:, 3] - b[:, 1] + o)
        index = nms_module.OverlapIndex(b, o, t)
        kept = nms_module.greedy_in_blocks(
            index, lambda i, j: nms_module._suppresses(b, area, i, j, o, t))
    return order[kept]


@pytest.mark.parametrize("o", [1.0, 0.0, -1.0])
def test_nms_that_cannot_suppress_returns_every_box_in_order_without_the_walk(o, monkeypatch):
    """At a threshold of 1 or more (or NaN) no IoU, as computed, passes ``> t``: every box
    comes back in NMS order without the greedy walk (170 s at 277k candidates), exactly as
    the walk gives them; just below 1 the walk runs (exact duplicates have IoU 1)."""
    boxes, logits, keys = _scene(np.random.default_rng(7), 1500)
    below = np.nextafter(1.0, 0.0)
    want = _greedy_brute_force(boxes, logits, keys, below, o)
    assert len(want) < len(boxes)
    np.testing.assert_array_equal(nms_module.nms(boxes, logits, keys, below, o), want)
    thresholds = (1.0, np.float32(1.0), 1.5, float("nan"))
    walked = [_walk(boxes, logits, keys, t, o) for t in thresholds]

    def no_walk(*args, **kwargs):
        raise AssertionError("the greedy walk ran")

    monkeypatch.setattr(nms_module, "greedy_in_blocks", no_walk)
    monkeypatch.setattr(nms_module, "OverlapIndex", no_walk)
    for t, walk in zip(thresholds, walked):
        want = _greedy_brute_force(boxes, logits, keys, t, o)
        assert len(want) == len(boxes)  # nothing suppressed, by the definition
        got = nms_module.nms(boxes, logits, keys, t, o)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, walk)
        empty = nms_module.nms(np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64), t)
        assert empty.shape == (0,) and empty.dtype == np.int64
