"""The device path end to end without a GPU: a device-I/O runner between the CUDA stages.

``OnnxRuntimeCudaRunner``'s device path (IOBinding of the input in place, ORT-owned output
kept until the next run, shape checks, batches) runs here on ONNX Runtime's CPU provider over
host memory (``device_type = "cpu"``, tests/helpers_ort_gpu.py), between the CUDA stages of
the CPU build of the kernels (tests/helpers_kernels.py), with ``cuda_device``'s own buffers,
streams and events over host memory (tests/host_cudart.py): resize -> network -> decode ->
NMS with nothing but boxes coming back, as on a GPU. Their finalizers are off, so whatever
``close()`` does not release stays visible. What stays unverified: the CUDA provider itself,
its stream (``user_compute_stream``) and the TensorRT provider (no onnxruntime-gpu here).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest

import host_cudart
from helpers_cai import ForeignArray
from helpers_kernels import cpu_build_missing, cpu_library_path, use_cpu_build_for_cuda_stages
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import NetworkInputError, TinyFacesError
from tinyfaces_trt.runtime.backends import (available_backends, create_detector, cuda_device,
                                            detector_for)
from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import OnnxRuntimeCudaRunner
from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
from tinyfaces_trt.runtime.pipeline import Detector

pytest.importorskip("onnxruntime")
import helpers_ort_gpu  # noqa: E402

_MISSING = cpu_build_missing() or host_cudart.missing()  # every test here runs on both
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=_MISSING)


@pytest.fixture
def host_cuda(monkeypatch, tmp_path_factory):
    """cuda_device over host memory (tests/host_cudart.py), the kernels' CPU build; only an
    explicit close() / free() releases anything."""
    host = use_cpu_build_for_cuda_stages(monkeypatch, cpu_library_path(tmp_path_factory),
                                         finalizers=False)
    yield host
    host.release_all()


@pytest.fixture
def ort_gpu(host_cuda, monkeypatch):
    """The onnxruntime-cuda backend over ONNX Runtime's CPU provider (tests/helpers_ort_gpu.py)."""
    return helpers_ort_gpu.install(monkeypatch)


@pytest.fixture
def device(ort_gpu):
    stream = cuda_device.Stream()
    yield stream
    stream.close()


def _runner(onnx, stream):
    """The IOBinding runner on ``stream``: the runtime's class, its session on the CPU."""
    return OnnxRuntimeCudaRunner(onnx, stream=stream)


def _onnx(export_dir):
    return export_dir / "model.onnx"


def _device_input(x):
    buf = cuda_device.DeviceBuffer(x.nbytes)
    buf.upload(x)
    return cuda_device.DeviceArray(buf.ptr, x.shape, np.float32, owner=buf)


def test_bound_input_gives_the_host_paths_scores(device, export_dir):
    runner = _runner(_onnx(export_dir), device)
    host = OnnxRuntimeRunner(_onnx(export_dir))
    assert runner.capabilities.device_io and runner.capabilities.batch
    x = np.random.default_rng(0).normal(size=(2, 3, 40, 56)).astype(np.float32)
    first = runner.run(_device_input(x))
    assert isinstance(first, cuda_device.DeviceArray) and first.shape == (2, 125, 5, 7)
    want = host.run(x)
    np.testing.assert_array_equal(first.download(), want)  # same provider, same bits
    kept = first.download()
    second = runner.run(_device_input(x[:1] * 0.5))  # the next run may reuse ORT's output
    np.testing.assert_array_equal(second.download(), host.run(x[:1] * 0.5))
    assert not np.array_equal(kept[:1], second.download())


def test_the_input_stays_alive_while_orts_queued_work_may_read_it(device, export_dir, host_cuda):
    """With the run's synchronisation off, ORT's kernels may still read the bound input when
    run() returns: the runner holds it until its next run, and close() waits for the stream."""
    import gc
    import weakref

    runner = _runner(_onnx(export_dir), device)
    x = np.random.default_rng(1).normal(size=(1, 3, 40, 56)).astype(np.float32)
    given = _device_input(x)
    alive = weakref.ref(given)
    runner.run(given)
    del given
    gc.collect()
    assert alive() is not None
    runner.run(_device_input(x))
    gc.collect()
    assert alive() is None
    syncs = host_cuda.calls.get("cudaStreamSynchronize", 0)
    runner.close()
    assert host_cuda.calls.get("cudaStreamSynchronize", 0) == syncs + 1


def _naming(array: cuda_device.DeviceArray, stream) -> ForeignArray:
    return ForeignArray(array.ptr, array.shape, stream)


def test_the_runner_and_the_stream_an_input_names_wait_for_each_other(device, export_dir, host_cuda):
    runner = _runner(_onnx(export_dir), device)
    host = OnnxRuntimeRunner(_onnx(export_dir))
    producer = cuda_device.Stream()
    x = np.random.default_rng(2).normal(size=(1, 3, 40, 56)).astype(np.float32)
    given = _device_input(x)
    del host_cuda.log[:]
    out = runner.run(_naming(given, producer.handle))
    # ours waits for the producer's stream, then it for our reads (it may reuse the input)
    assert host_cuda.log == [("cudaEventRecord", producer.handle), ("cudaStreamWaitEvent", device.handle),
                             ("cudaEventRecord", device.handle), ("cudaStreamWaitEvent", producer.handle)]
    np.testing.assert_array_equal(out.download(), host.run(x))
    del host_cuda.log[:]
    for stream in (None, device.handle):  # names none (the caller's to order), or ours
        runner.run(_naming(given, stream))
    assert not [c for c in host_cuda.log if c[0] in ("cudaEventRecord", "cudaStreamWaitEvent")]
    with pytest.raises(NetworkInputError, match="names stream 0"):
        runner.run(_naming(given, 0))
    runner.close()
    producer.close()
    given.owner.free()
    assert host_cuda.live()["events"] == 0


def test_bound_input_of_the_wrong_layout_is_refused(device, export_dir):
    runner = _runner(_onnx(export_dir), device)
    bad = np.zeros((1, 4, 16, 16), np.float32)
    with pytest.raises(NetworkInputError, match=r"^network input must be a \(N, 3, h, w\) "
                                                r"float32 array, got \(1, 4, 16, 16\) float32$"):
        runner.run(_device_input(bad))
    with pytest.raises(NetworkInputError, match=r"got \(1, 3, 0, 16\) float32$"):  # no rows
        runner.run(ForeignArray(0x5000, (1, 3, 0, 16)))  # refused before it is read


@pytest.mark.parametrize("fp16", [False, True])
def test_detector_on_the_device_path_finds_the_host_detectors_boxes(device, export_dir, fp16):
    """tinyfaces' own flow with every stage "on the device": CudaPreprocessor (resize kernel),
    the IOBinding runner, CudaPostprocessor (decode + NMS kernels), boxes only coming back."""
    onnx = export_dir / ("model_fp16.onnx" if fp16 else "model.onnx")
    if not onnx.is_file():
        pytest.skip(f"{onnx.name} not exported")
    config = DetectorConfig(prob_thresh=0.05)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(2)]
    for i, image in enumerate(images):
        image[10 + 8 * i:50, 20:70] = (220, 180, 150)
    want = [Detector(OnnxRuntimeRunner(onnx), config).detect(image) for image in images]
    assert all(len(w) > 0 for w in want)
    with detector_for(_runner(onnx, device), config, gpu_stages=True) as detector:
        assert type(detector.preprocessor).__name__ == "CudaPreprocessor"
        assert type(detector.postprocessor).__name__ == "CudaPostprocessor"
        got = detector.detect(images[0])
        batch = detector.detect_batch(images)
    # the resize kernel's network input is within 1e-4 of numpy's (DESIGN.md); through the
    # network that moves probabilities by about 1e-6 and boxes by about 1e-4 px
    assert len(batch) == len(images)
    for g, w in zip([got] + batch, want[:1] + want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g[:, :4], w[:, :4], rtol=0, atol=1e-2)
        np.testing.assert_allclose(g[:, 4], w[:, 4], rtol=0, atol=1e-5)


def test_the_device_path_writes_the_host_paths_logits_with_score_logit(device, export_dir):
    """``score="logit"``: tf_nms (score_logit) writes the network's logits, as the host path
    does; the same boxes as with the probability, whose sigmoid they give back."""
    onnx = _onnx(export_dir)
    config = DetectorConfig(prob_thresh=0.05, score="logit")
    image = np.random.default_rng(4).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    image[14:50, 20:70] = (220, 180, 150)
    want = Detector(OnnxRuntimeRunner(onnx), config).detect(image)
    with detector_for(_runner(onnx, device), config, gpu_stages=True) as detector:
        got = detector.detect(image)
    with detector_for(_runner(onnx, device), config.with_(score="prob"), gpu_stages=True) as detector:
        prob = detector.detect(image)
    assert len(want) > 0 and got.shape == want.shape == prob.shape
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=0, atol=1e-2)
    # the resize kernel's input is within 1e-4 of numpy's: logits within about 1e-4
    np.testing.assert_allclose(got[:, 4], want[:, 4], rtol=0, atol=1e-4)
    assert np.any((got[:, 4] < 0) | (got[:, 4] > 1))  # logits, not probabilities
    np.testing.assert_array_equal(got[:, :4], prob[:, :4])
    np.testing.assert_allclose(prob[:, 4], 1 / (1 + np.exp(-got[:, 4].astype(np.float64))),
                               rtol=0, atol=1e-6)


def test_a_closed_iobinding_runner_runs_no_more_on_either_path(device, export_dir):
    runner = _runner(_onnx(export_dir), device)
    x = np.zeros((1, 3, 32, 32), np.float32)
    runner.close()
    for net_input in (x, _device_input(x)):  # the device path called io_binding() on None
        with pytest.raises(TinyFacesError, match="this OnnxRuntimeCudaRunner is closed: a "
                                                 "closed runner may not run again"):
            runner.run(net_input)


def test_closing_the_detector_releases_its_device_memory_and_events(host_cuda, device, export_dir):
    """Detector.close() (the ``with`` block's end) frees every buffer and event the stages
    made, while the detector object is still referenced: nothing waits for the garbage
    collector. The stream is the caller's and stays."""
    image = np.random.default_rng(2).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    before = host_cuda.live()
    assert before == {"device": 0, "pinned": 0, "streams": 1, "events": 0}
    detector = detector_for(_runner(_onnx(export_dir), device),
                            DetectorConfig(prob_thresh=0.05), gpu_stages=True)
    with detector:
        detector.detect(image)
        detector.detect_batch([image, image])
        during = host_cuda.live()
        # pinned: the image staging and NMS's counters + first rows
        assert during["device"] >= 5 and during["pinned"] == 2, during
    assert host_cuda.live() == before
    assert host_cuda.calls["cudaFree"] == host_cuda.calls["cudaMalloc"]
    assert host_cuda.calls["cudaFreeHost"] == host_cuda.calls["cudaMallocHost"] >= 1
    assert host_cuda.calls["cudaEventDestroy"] == host_cuda.calls["cudaEventCreateWithFlags"] >= 1


def test_the_benchmarks_copy_timed_wrapper_feeds_a_device_runner_from_the_host(
        device, export_dir, monkeypatch):
    """benchmarks' CopyTimedDeviceRunner (the TensorRT rows with numpy stages) around a
    device-I/O runner: the host runner's scores, the copies timed apart."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench_backends = importlib.import_module("bench_backends")
    runner = bench_backends.CopyTimedDeviceRunner(_runner(_onnx(export_dir), device))
    runner.timings = {}
    x = np.random.default_rng(3).normal(size=(1, 3, 40, 56)).astype(np.float32)
    got = runner.run(x)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, OnnxRuntimeRunner(_onnx(export_dir)).run(x))
    assert set(runner.timings) == {"h2d", "d2h"} and min(runner.timings.values()) >= 0
    runner.close()


def _image(seed=1):
    image = np.random.default_rng(seed).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    image[10:50, 20:70] = (220, 180, 150)
    return image


def test_a_page_locked_image_is_uploaded_from_its_own_memory_without_the_staging_copy(
        device, export_dir, monkeypatch):
    """Detector.image_buffer on the GPU path gives page-locked memory; an image filled into it
    is uploaded straight from its address (one copy per image, no staging), refilled in place
    image after image, with the boxes the same image gives from pageable memory. Each image
    follows another one, so an upload skipped would find that one's boxes. A batch mixing
    page-locked and pageable images is staged whole."""
    from tinyfaces_trt.runtime.backends import staging

    staged, uploads = [], []
    stage_and_upload, upload_from = staging.stage_and_upload, cuda_device.DeviceBuffer.upload_from

    def staging_spy(images, *args, **kwargs):
        staged.append(len(images))
        return stage_and_upload(images, *args, **kwargs)

    def upload_spy(buffer, host_ptr, nbytes, stream=None, offset=0):
        uploads.append((int(host_ptr), int(nbytes), int(offset)))
        return upload_from(buffer, host_ptr, nbytes, stream, offset)

    monkeypatch.setattr(staging, "stage_and_upload", staging_spy)
    monkeypatch.setattr(cuda_device.DeviceBuffer, "upload_from", upload_spy)
    a, b = _image(1), _image(5)
    b[40:70, 50:90] = (200, 170, 140)
    with detector_for(_runner(_onnx(export_dir), device), DetectorConfig(prob_thresh=0.05),
                      gpu_stages=True) as detector:
        want = {"a": detector.detect(a), "b": detector.detect(b),
                "ba": detector.detect_batch([b, a])}
        assert staged == [1, 1, 2] and len(want["a"]) > 0
        assert want["a"].shape != want["b"].shape or not np.array_equal(want["a"], want["b"])
        frame = detector.image_buffer(72, 96)
        assert cuda_device.is_page_locked(frame.ctypes.data, frame.nbytes)
        got = {}
        for name, image in [("a", a), ("b", b)]:  # each after the other image
            np.copyto(frame, image)
            staged.clear()
            uploads.clear()
            got[name] = detector.detect(frame)
            assert staged == [] and uploads == [(frame.ctypes.data, frame.nbytes, 0)], name
        frames = detector.image_buffer(72, 96, count=2)
        frames[0], frames[1] = b, a
        uploads.clear()
        got["ba"] = detector.detect_batch(frames)
        assert staged == [] and uploads == [(frames[0].ctypes.data, a.nbytes, 0),
                                            (frames[1].ctypes.data, a.nbytes, a.nbytes)]
        mixed = detector.detect_batch([frames[0], a.copy()])
        assert staged == [2]
        assert detector.preprocessor.page_locked_uploads == 3
    for g, w in zip([got["a"], got["b"], *got["ba"], *mixed],
                    [want["a"], want["b"], *want["ba"], *want["ba"]], strict=True):
        np.testing.assert_array_equal(g, w)
    frame[:] = 3  # still the caller's memory after close()
    assert cuda_device.is_page_locked(frame.ctypes.data, frame.nbytes) and int(frame.max()) == 3


def test_a_page_locked_image_a_failed_detect_left_is_let_go_only_after_its_upload(
        host_cuda, device, export_dir, monkeypatch):
    """A detect that raises once the image's upload is queued (here the network) waits for
    the preprocessor's stream before raising, so the caller may refill the page-locked
    array then; and the preprocessor keeps the array, letting it go at its next upload only
    after waiting for that copy, so the memory is never freed under it. The stand-in runs
    copies at once, so the waits and their order are what is checked."""
    import threading
    import weakref

    events = []
    synchronize = cuda_device.Event.synchronize
    monkeypatch.setattr(cuda_device.Event, "synchronize",
                        lambda event: (events.append("wait"), synchronize(event))[1])
    runner = _runner(_onnx(export_dir), device)
    with detector_for(runner, DetectorConfig(prob_thresh=0.05), gpu_stages=True) as detector:
        frame = detector.image_buffer(72, 96)
        np.copyto(frame, _image(1))
        run = runner.run
        monkeypatch.setattr(runner, "run", lambda x: (_ for _ in ()).throw(
            RuntimeError("the network failed")))
        waits = []
        monkeypatch.setattr(detector.preprocessor, "synchronize",
                            lambda sync=detector.preprocessor.synchronize: (waits.append(1),
                                                                            sync())[1])
        with pytest.raises(RuntimeError, match="the network failed"):
            detector.detect(frame)
        assert detector.preprocessor.page_locked_uploads == 1
        assert waits == [1]  # the failed call waited for the upload before raising
        weakref.finalize(frame, events.append, "released")
        del frame
        assert events == []  # the preprocessor holds it
        monkeypatch.setattr(runner, "run", run)
        detector.detect(_image(2))
        assert events[:2] == ["wait", "released"]
        # asked for, as a detect is, where the detector's device is current (device 0 here)
        host_cuda.device_count = 2
        refused = []

        def on_device_1():
            cuda_device.check(cuda_device.runtime().cudaSetDevice(1))
            pinned = len(host_cuda.pinned)
            try:
                detector.image_buffer(8, 8)
            except TinyFacesError as exc:
                refused.append((str(exc), len(host_cuda.pinned) - pinned))

        thread = threading.Thread(target=on_device_1)
        thread.start()
        thread.join()
        assert refused == [("this detector (its page-locked images) is on CUDA device 0, but this "
                            "thread's current CUDA device is 1: make device 0 current in this "
                            "thread first (torch.cuda.set_device(0), cudaSetDevice), or run the "
                            "process with CUDA_VISIBLE_DEVICES=0 (it is then device 0)", 0)]


def test_create_detector_builds_onnxruntime_cuda_on_the_device_path(ort_gpu, host_cuda, export_dir):
    """create_detector("onnxruntime-cuda") as on a GPU: the IOBinding runner on a stream of
    its own, the CUDA stages picked by its capability on that stream; the CPU backend's boxes;
    closing it returns every buffer, event and the stream."""
    overrides = {"prob_thresh": 0.05}
    assert "onnxruntime-cuda" in available_backends()
    with create_detector("onnxruntime", model_dir=export_dir, config_overrides=overrides) as cpu:
        want = cpu.detect(_image())
    assert len(want) > 0
    assert host_cuda.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    with create_detector("onnxruntime-cuda", model_dir=export_dir,
                         config_overrides=overrides) as detector:
        runner = detector.runner
        assert isinstance(runner, OnnxRuntimeCudaRunner) and runner.capabilities.device_io
        assert runner.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        handle = runner.stream
        assert ort_gpu.sessions[-1]["options"]["CUDAExecutionProvider"]["user_compute_stream"] \
            == str(handle)
        assert type(detector.preprocessor).__name__ == "CudaPreprocessor"
        assert type(detector.postprocessor).__name__ == "CudaPostprocessor"
        assert host_cuda.live()["streams"] == 1  # the stages run on the runner's stream
        got = detector.detect(_image())
    assert host_cuda.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    assert handle not in host_cuda.streams
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=0, atol=1e-2)
    np.testing.assert_allclose(got[:, 4], want[:, 4], rtol=0, atol=1e-5)


def test_tf_detect_auto_takes_onnxruntime_cuda_and_says_so(ort_gpu, host_cuda, export_dir,
                                                          tmp_path, capsys):
    """tf-detect --backend auto where onnxruntime-gpu and a GPU are present (no TensorRT, no
    torch GPU): the ONNX Runtime CUDA backend, named on stderr and in the JSON, with the CPU
    backend's detections; it closes the detector before it returns."""
    from PIL import Image

    from tinyfaces_trt.cli.detect import main

    path = tmp_path / "photo.png"
    Image.fromarray(_image()).save(path)

    def detect(*extra):
        code = main([str(path), "--model", str(export_dir), "--json", "--prob-thresh", "0.05",
                     *extra])
        out, err = capsys.readouterr()
        assert code == 0 and "Traceback" not in err, err
        return json.loads(out), err

    doc, err = detect("--backend", "auto")
    assert doc["backend"] == "onnxruntime-cuda"
    assert "backend auto: onnxruntime-cuda" in err
    assert host_cuda.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    assert host_cuda.calls["cudaStreamCreate"] == 1
    cpu, _ = detect()
    assert cpu["backend"] == "onnxruntime"
    (got,), (want,) = doc["images"], cpu["images"]
    assert len(got["detections"]) == len(want["detections"]) > 0
    for key, atol in (("score", 2e-5), ("box", 2e-2)):  # the JSON rounds to 1e-5 and 0.01
        np.testing.assert_allclose([d[key] for d in got["detections"]],
                                   [d[key] for d in want["detections"]], rtol=0, atol=atol)


def test_stages_made_without_a_stream_destroy_theirs_on_close(host_cuda):
    """cuda_stages() with no stream makes one for both stages; closing them (as Detector.close
    does: preprocessor, then postprocessor) destroys it. A stage built alone likewise."""
    from tinyfaces_trt.runtime.backends.cuda_stages import (CudaPostprocessor, CudaPreprocessor,
                                                            cuda_stages)

    pre, post = cuda_stages(DetectorConfig())
    assert pre.stream is post.stream and host_cuda.live()["streams"] == 1
    pre.close()
    assert host_cuda.live()["streams"] == 1  # the postprocessor still works on it
    post.close()
    post.close()
    for stage in (CudaPreprocessor(DetectorConfig()), CudaPostprocessor(DetectorConfig())):
        stage.close()
    assert host_cuda.live() == {"device": 0, "pinned": 0, "streams": 0, "events": 0}
    given = cuda_device.Stream()
    for stage in cuda_stages(DetectorConfig(), given):
        stage.close()
    assert host_cuda.live()["streams"] == 1 and given.handle in host_cuda.streams
    given.close()
    with pytest.raises(TinyFacesError, match="this CUDA stream is closed"):
        given.handle
