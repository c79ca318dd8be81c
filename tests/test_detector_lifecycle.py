"""A detector's life: what stops a run (any exception, not only Ctrl-C), what close() frees,
calls made from inside a running detect, its read-only config, and the host runner's batch cap.
"""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.threads import Worker
from tinyfaces_trt.export.torch_runner import TorchRunner
from tinyfaces_trt.runtime.backends.onnxruntime_runner import HOST_MAX_BATCH, OnnxRuntimeRunner
from tinyfaces_trt.runtime.pipeline import Detector

RUN_THREAD = "tf-onnxruntime-run"


def write_model(path, *, batch: bool = False, chain: int = 0) -> None:
    """A network of the detector's shape: a stride-8 1x1 convolution 3 -> 125, then ``chain``
    3x3 convolutions 125 -> 125 (one shared weight: seconds of work in a small file), with a
    dynamic batch axis when ``batch``."""
    rng = np.random.default_rng(0)
    n = "n" if batch else 1
    tensors = [numpy_helper.from_array(rng.normal(size=(125, 3, 1, 1)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(size=(125,)).astype(np.float32), "b"),
               numpy_helper.from_array(
                   rng.normal(scale=0.01, size=(125, 125, 3, 3)).astype(np.float32), "k")]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["s0"], strides=[8, 8])]
    nodes += [helper.make_node("Conv", [f"s{i}", "k"], [f"s{i + 1}"], pads=[1, 1, 1, 1])
              for i in range(chain)]
    nodes.append(helper.make_node("Identity", [f"s{chain}"], ["scores"]))
    graph = helper.make_graph(
        nodes, "lifecycle",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, 3, "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n, 125, "h8", "w8"])],
        tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("lifecycle") / "single.onnx"
    write_model(path)
    return path


@pytest.fixture(scope="module")
def batch_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("lifecycle") / "batch.onnx"
    write_model(path, batch=True)
    return path


def image(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# 1. Any exception while ONNX Runtime runs stops the run before it is raised
# ---------------------------------------------------------------------------------------------

class UntilTerminated:
    """A session whose run lasts until told to terminate (and 0.2 s more), as ONNX Runtime's
    does."""

    def __init__(self) -> None:
        self.began, self.ended = threading.Event(), threading.Event()
        self.terminated = False

    def run(self, names, feeds, options=None):
        self.began.set()
        try:
            deadline = time.monotonic() + 10
            while not options.terminate and time.monotonic() < deadline:
                time.sleep(0.005)
            self.terminated = options.terminate
            time.sleep(0.2)
            raise RuntimeError("Exiting due to terminate flag being set to true.")
        finally:
            self.ended.set()


@pytest.fixture
def raising_on_alarm():
    """SIGALRM's handler raises the exception the test puts in the list it yields (as a
    request timeout helper or a SIGTERM handler calling sys.exit does)."""
    raised: list[BaseException] = []

    def handler(signum, frame):
        raise raised.pop()

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        yield raised
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("exception", [SystemExit(0), TimeoutError("request took too long")])
def test_an_exception_from_a_signal_handler_stops_the_run_before_it_is_raised(
        model, raising_on_alarm, exception):
    """A SIGTERM handler's sys.exit(0) or a request timeout during a run left ONNX Runtime
    running on its thread after detect() raised (its lock released: another run could start
    alongside; an exit under it aborted with 134)."""
    runner = OnnxRuntimeRunner(model, threads=1)
    session = runner.session = UntilTerminated()
    raising_on_alarm.append(exception)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    with pytest.raises(type(exception)) as info:
        runner.run(np.zeros((1, 3, 16, 16), np.float32))
    assert info.value is exception
    assert session.terminated and session.ended.is_set()  # told to stop, and waited for
    assert RUN_THREAD not in [t.name for t in threading.enumerate()]


def test_stop_waits_through_a_further_exception_and_raises_it_once_the_work_ended(
        raising_on_alarm):
    """A second signal (SIGTERM again) while the stop waits for the run: raising it at once
    left the run going."""
    asked, ended, stopped = [], threading.Event(), threading.Event()

    def work() -> None:
        stopped.wait(10)
        time.sleep(0.3)  # the further exception lands in this
        ended.set()

    def ask() -> None:
        asked.append(1)
        stopped.set()

    worker = Worker(work, "t")
    worker.start()
    raising_on_alarm.append(SystemExit(3))
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    closed = []
    with pytest.raises(SystemExit) as info:
        worker.stop(ask=ask, then=lambda: closed.append(ended.is_set()))
    assert info.value.code == 3 and closed == [True] and len(asked) == 2


def test_an_ask_that_keeps_failing_is_dropped_and_the_wait_goes_on():
    ended = threading.Event()

    def work() -> None:
        time.sleep(0.2)
        ended.set()

    def ask() -> None:
        asks.append(1)
        raise ValueError("cannot ask")

    asks: list[int] = []
    worker = Worker(work, "t")
    worker.start()
    with pytest.raises(ValueError, match="cannot ask"):
        worker.stop(timeout=10, ask=ask)
    assert ended.is_set() and asks == [1, 1]


SIGTERM_CHILD = """
import os, signal, sys, threading
import numpy as np
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from tinyfaces_trt.runtime.pipeline import Detector

detector = Detector(OnnxRuntimeRunner(sys.argv[1], threads=1),
                    DetectorConfig(pyramid="fixed", fixed_scales=(0.0,)))
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
detector.detect(np.zeros((256, 256, 3), np.uint8))
print("the run ended before SIGTERM: make the model slower")
"""


def test_a_sigterm_handler_exiting_during_detect_exits_with_its_code(tmp_path):
    """The usual graceful shutdown (SIGTERM -> sys.exit(0)) during a run: the process aborted
    in ONNX Runtime's teardown ("terminate called without an active exception", exit 134)."""
    path = tmp_path / "slow.onnx"
    write_model(path, chain=300)  # seconds on one thread; told to stop, it ends within a node
    started = time.monotonic()
    child = subprocess.run([sys.executable, "-c", SIGTERM_CHILD, str(path)],
                           capture_output=True, text=True, timeout=120)
    assert (child.returncode, child.stdout) == (0, ""), child.stderr
    assert "terminate called" not in child.stderr
    assert time.monotonic() - started < 60


# ---------------------------------------------------------------------------------------------
# 2. close() frees the session / model; a closed runner does not run
# ---------------------------------------------------------------------------------------------

def test_closing_the_onnxruntime_runner_frees_its_session_and_it_runs_no_more(model):
    runner = OnnxRuntimeRunner(model, threads=1)
    x = np.zeros((1, 3, 16, 16), np.float32)
    assert runner.run(x).shape == (1, 125, 2, 2)
    session = weakref.ref(runner.session)
    runner.close()
    runner.close()  # idempotent
    gc.collect()
    assert session() is None
    with pytest.raises(TinyFacesError) as info:
        runner.run(x)
    assert str(info.value) == ("this OnnxRuntimeRunner is closed: a closed runner may not run "
                               "again (create a new one)")


def test_closing_the_torch_runner_drops_its_model_and_it_runs_no_more():
    runner = TorchRunner(torch.nn.Conv2d(3, 125, 1, stride=8))
    x = np.zeros((2, 3, 16, 16), np.float32)
    assert runner.run(x).shape == (2, 125, 2, 2)
    model = weakref.ref(runner.model)
    runner.close()
    runner.close()
    gc.collect()
    assert model() is None
    with pytest.raises(TinyFacesError, match="^this TorchRunner is closed: a closed runner"):
        runner.run(x)


def test_a_detector_closed_by_its_with_block_frees_the_session(model):
    with Detector(OnnxRuntimeRunner(model, threads=1)) as detector:
        detector.detect(image(0))
        session = weakref.ref(detector.runner.session)
    gc.collect()
    assert session() is None
    with pytest.raises(TinyFacesError, match="^this detector is closed$"):
        detector.detect(image(0))


# ---------------------------------------------------------------------------------------------
# 3. Calls from inside a running detect on its own thread
# ---------------------------------------------------------------------------------------------

NESTED = ("{} was called inside a running detect of the same detector (from on_level, a signal "
          "handler or a finalizer): a detector runs one image at a time; use another detector, "
          "or call it once the running one returns")


@pytest.mark.parametrize("call, name", [
    (lambda d: d.detect(image(2)), "detect()"),
    (lambda d: d.detect_batch([image(2), image(3)]), "detect_batch()"),
    (lambda d: d.warmup([(48, 64)]), "warmup()"),
])
def test_a_detect_nested_in_a_running_one_is_refused_and_the_outer_one_is_intact(
        model, call, name):
    """An on_level hook that ran a preview detect wiped the outer call's candidates (4 boxes
    instead of 5), silently."""
    detector = Detector(OnnxRuntimeRunner(model, threads=1))
    expected = detector.detect(image(1))
    assert len(expected) > 0
    refused = []

    def on_level(level) -> None:
        try:
            call(detector)
        except TinyFacesError as exc:
            refused.append(str(exc))

    outer = detector.detect(image(1), on_level=on_level)
    np.testing.assert_array_equal(outer, expected)
    assert refused and set(refused) == {NESTED.format(name)}
    np.testing.assert_array_equal(detector.detect(image(1)), expected)  # nothing left held


def test_an_uncaught_nested_detect_fails_the_outer_call_and_the_detector_goes_on(model):
    detector = Detector(OnnxRuntimeRunner(model, threads=1))
    expected = detector.detect(image(1))
    with pytest.raises(TinyFacesError, match=r"^detect\(\) was called inside a running detect"):
        detector.detect(image(1), on_level=lambda level: detector.detect(image(2)))
    np.testing.assert_array_equal(detector.detect(image(1)), expected)


def test_close_from_inside_a_running_detect_is_done_when_it_returns(model):
    """close() from on_level (or a SIGTERM handler mid-detect) returned at once and the detect
    carried on against a closed detector."""
    detector = Detector(OnnxRuntimeRunner(model, threads=1))
    expected = detector.detect(image(1))
    seen = []

    def on_level(level) -> None:
        detector.close()
        seen.append(detector.runner.session is not None)  # still open for the running call

    np.testing.assert_array_equal(detector.detect(image(1), on_level=on_level), expected)
    assert seen and all(seen)
    assert detector.runner.session is None  # closed once it returned
    with pytest.raises(TinyFacesError, match="^this detector is closed$"):
        detector.detect(image(1))


def test_close_asked_during_a_run_that_fails_is_still_done(model):
    detector = Detector(OnnxRuntimeRunner(model, threads=1))

    def on_level(level) -> None:
        detector.close()
        raise TimeoutError("request took too long")

    with pytest.raises(TimeoutError):
        detector.detect(image(1), on_level=on_level)
    assert detector.runner.session is None


# ---------------------------------------------------------------------------------------------
# 5. config is read-only
# ---------------------------------------------------------------------------------------------

def test_assigning_the_config_is_refused(model):
    """The assignment reached plan() but not the postprocessor (19 boxes at prob_thresh 0.999)."""
    detector = Detector(OnnxRuntimeRunner(model, threads=1))
    config = detector.config
    with pytest.raises(AttributeError) as info:
        detector.config = config.with_(prob_thresh=0.999)
    assert str(info.value) == (
        "Detector.config is read-only (its stages were built from it); create a new detector "
        "with other settings: create_detector(..., config_overrides={...})")
    assert detector.config is config and detector.config.prob_thresh == 0.5


# ---------------------------------------------------------------------------------------------
# 8. The CPU runner runs a bounded batch; the detector splits larger ones
# ---------------------------------------------------------------------------------------------

def test_the_cpu_runner_caps_its_batch(batch_model, model):
    assert OnnxRuntimeRunner(batch_model, threads=1).capabilities.max_batch == HOST_MAX_BATCH
    assert OnnxRuntimeRunner(model, threads=1).capabilities.batch is False


def test_a_batch_over_the_cap_runs_in_parts_with_the_boxes_of_single_images(batch_model):
    """Every frame of a level ran at once: peak memory grew by ~18 MiB per 120x160 frame."""
    runner = OnnxRuntimeRunner(batch_model, threads=1)
    seen, run = [], runner.run

    def recording(net_input):
        seen.append(net_input.shape[0])
        return run(net_input)

    runner.run = recording
    detector = Detector(runner, DetectorConfig(pyramid="fixed", fixed_scales=(0.0, 1.0)))
    frames = [image(seed) for seed in range(HOST_MAX_BATCH + 2)]
    batched = detector.detect_batch(frames)
    assert max(seen) == HOST_MAX_BATCH and sum(seen) == 2 * len(frames)  # two levels each
    for frame, boxes in zip(frames, batched):
        single = detector.detect(frame)
        assert len(single) > 0
        np.testing.assert_allclose(boxes, single, rtol=1e-5, atol=1e-4)


def test_close_from_another_thread_waits_for_the_whole_detect_batch():
    """detect_batch runs a runner's max_batch at a time: close() from a shutdown hook got in
    between two parts, and the call failed ('this detector is closed') with work done."""
    from helpers_runners import PooledRunner
    from tinyfaces_trt.core.runner import RunnerCapabilities

    class FairLock:  # lets a waiting thread in whenever the detector lets go of its lock
        def __init__(self) -> None:
            self.lock = threading.RLock()

        def __enter__(self) -> None:
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()
            time.sleep(0.05)

    runner = PooledRunner(RunnerCapabilities(batch=True, max_batch=2))
    detector = Detector(runner, DetectorConfig(prob_thresh=0.3))
    detector._lock = FairLock()
    frames = [np.full((40, 48, 3), 20 * i, np.uint8) for i in range(6)]
    expected = [detector.detect(f) for f in frames]
    real_run, closer = runner.run, []

    def run(x):
        if not closer:  # the first part: another thread closes the detector meanwhile
            closer.append(threading.Thread(target=detector.close))
            closer[0].start()
            time.sleep(0.2)
        return real_run(x)

    runner.run = run
    got = detector.detect_batch(frames)
    closer[0].join(10)
    assert not closer[0].is_alive()
    assert len(got) == 6 and set(runner.batches[-3:]) == {2}
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    with pytest.raises(TinyFacesError, match="this detector is closed"):
        detector.detect(frames[0])


def test_an_image_larger_than_max_pixels_is_refused_before_any_work():
    """A 20000x20000 array ran for a minute, then failed with numpy's MemoryError."""
    from helpers_runners import PooledRunner
    from tinyfaces_trt.core.errors import ImageTooLargeError
    from tinyfaces_trt.runtime.imageio import DEFAULT_MAX_PIXELS

    runner = PooledRunner()
    detector = Detector(runner)
    assert detector.max_pixels == DEFAULT_MAX_PIXELS
    huge = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (20000, 20000, 3))  # no memory
    with pytest.raises(ImageTooLargeError) as refused:
        detector.detect(huge)
    assert str(refused.value) == (
        "image of 20000x20000 (400000000 pixels) is larger than the detector takes (178956970 "
        "pixels, Detector.max_pixels); detect a downscaled copy or tiles of it")
    detector.max_pixels = 40 * 30
    with pytest.raises(ImageTooLargeError, match=r"image of 48x40 \(1920 pixels\)"):
        detector.detect_batch([np.zeros((40, 48, 3), np.uint8)] * 2)
    with pytest.raises(ImageTooLargeError, match="image of 48x40"):
        detector.warmup([(30, 40), (40, 48)])  # a size detect() would refuse is not prepared
    assert runner.batches == []  # nothing ran
    detector.max_pixels = None
    assert detector.detect(np.zeros((40, 48, 3), np.uint8)).shape[1] == 5


def test_a_call_made_after_close_is_refused_at_once_not_run_before_it():
    """close() and new calls waited on one lock, which serves waiters in no order: calls
    looping on other threads kept getting it first (a shutdown hook waited 18 s for six more
    images on a CPU, minutes with photos). A call that starts once close() was called is
    refused at once; the call already running finishes."""
    from helpers_runners import PooledRunner

    runner = PooledRunner()
    detector = Detector(runner, DetectorConfig(prob_thresh=0.3))
    image = np.full((40, 48, 3), 50, np.uint8)
    expected = detector.detect(image)
    inside, release = threading.Event(), threading.Event()
    real_run = runner.run

    def run(x):
        inside.set()
        release.wait(10)
        return real_run(x)

    runner.run = run
    got = []
    running = threading.Thread(target=lambda: got.append(detector.detect(image)))
    running.start()
    assert inside.wait(10)
    closer = threading.Thread(target=detector.close)
    closer.start()
    deadline = time.monotonic() + 10
    while not detector._closing and time.monotonic() < deadline:
        time.sleep(0.01)
    for call in (lambda: detector.detect(image), lambda: detector.detect_batch([image]),
                 lambda: detector.detect_batch([]), lambda: detector.warmup([(40, 48)])):
        with pytest.raises(TinyFacesError, match="^this detector is closed$"):
            call()  # at once: the running call still holds the detector
    assert running.is_alive() and closer.is_alive()
    release.set()
    running.join(10)
    closer.join(10)
    assert not closer.is_alive()
    np.testing.assert_array_equal(got[0], expected)
    with pytest.raises(TinyFacesError, match="^this detector is closed$"):
        detector.detect_batch([])


def test_wrong_argument_types_are_refused_before_any_level_runs():
    from helpers_runners import PooledRunner
    from tinyfaces_trt.core.errors import ImageError

    runner = PooledRunner()
    detector = Detector(runner)
    image = np.zeros((40, 48, 3), np.uint8)
    with pytest.raises(ImageError, match="^detect_batch takes a sequence of images, got NoneType$"):
        detector.detect_batch(None)
    with pytest.raises(TypeError, match=r"^timings must be a dict \(stage name -> seconds, added "
                                        r"to\) or None, got list$"):
        detector.detect(image, timings=[])
    assert runner.batches == []
    timings = {}
    detector.detect_batch(iter([image, image]), timings)  # any iterable of images
    assert set(timings) == {"preprocess", "network", "decode", "nms"}


def test_a_size_is_planned_once_and_each_caller_gets_its_own_list(monkeypatch):
    """Detector.plan keeps each image size's pyramid (the config is read-only): planning took
    about 0.1 ms of host time per image, before any GPU work could start."""
    from tinyfaces_trt.core.pyramid import plan_pyramid
    from tinyfaces_trt.runtime import pipeline

    planned = []
    monkeypatch.setattr(pipeline, "plan_pyramid",
                        lambda h, w, config: planned.append((h, w)) or plan_pyramid(h, w, config))
    monkeypatch.setattr(pipeline, "PLANS_KEPT", 2)
    detector = Detector(TorchRunner(torch.nn.Identity()), DetectorConfig())
    first = detector.plan(480, 640)
    first.clear()  # the caller's list: the detector's is untouched
    assert detector.plan(480, 640) == plan_pyramid(480, 640, DetectorConfig()) != []
    detector.plan(720, 1280)
    assert planned == [(480, 640), (720, 1280)]
    detector.plan(360, 640)  # a third size: the two kept are dropped first
    detector.plan(480, 640)
    assert planned == [(480, 640), (720, 1280), (360, 640), (480, 640)]
