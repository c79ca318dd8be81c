"""The torch-cuda runner on a CUDA GPU (skipped cleanly without one).

fp16 parity is judged against the fp32 reference with the parity suite's fp16 tolerances
(compiled fp16 differs from eager fp16 by up to ~0.16 on random weights, so eager fp16 is
not the yardstick); fp32 must keep the fp32 tolerances (TF32 is off for float32).
"""

from __future__ import annotations

import gc
import logging
import os
import re

import numpy as np
import pytest
import torch

from helpers_torch_cuda import net_input, stand_in
from tinyfaces_trt.core.pyramid import plan_pyramid
from tinyfaces_trt.parity.compare import compare_detections
from tinyfaces_trt.parity.harness import TOLERANCES, compare_maps, compare_runner, synthetic_image
from tinyfaces_trt.runtime.preprocess import HostPreprocessor

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")]

if torch.cuda.is_available():
    from tinyfaces_trt.export.torch_cuda import TorchCudaRunner
    from tinyfaces_trt.export.torch_runner import TorchRunner

# fp16 results of one network through different kernels (graph vs eager, batch vs single):
# a few fp16 ulps of values up to ~10
FP16_CLOSE = {"atol": 0.02, "rtol": 0.005}


def _assert_captured(runner) -> None:
    """Every shape ran from a CUDA graph (a failed capture falls back to eager, quietly but
    for a warning)."""
    assert runner.records and {r.mode for r in runner.records.values()} == {"graphs"}, \
        runner.records


def _level_inputs(config, height=96, width=128, count=2):
    image = synthetic_image(height, width, seed=0)
    levels = plan_pyramid(height, width, config)[:count]
    pre = HostPreprocessor(config)
    return [pre.prepare(image, level) for level in levels]


def test_compiled_fp16_matches_the_fp32_reference(seeded, tmp_path):
    model, config = seeded
    reference = TorchRunner(model)
    with TorchCudaRunner(model, cache_dir=tmp_path) as runner:
        assert runner.capabilities.device_io and runner.capabilities.batch
        for x in _level_inputs(config):
            out = runner.run(x)
            record = runner.records[x.shape]
            assert record.mode == "compile", "compile fell back"
            assert record.cache_file.is_file(), record  # this shape's, not any compile file
            result = compare_maps(reference.run(x), out, TOLERANCES["fp16"].maps)
            assert result.passed, result


@pytest.mark.parametrize("dtype, precision", [(torch.float16, "fp16"), (torch.float32, "fp32")])
def test_graphs_mode_passes_parity_on_the_whole_pyramid(seeded, dtype, precision):
    model, config = seeded
    with TorchCudaRunner(model, dtype=dtype, mode="graphs") as runner:
        result = compare_runner(TorchRunner(model), runner, config, 96, 128, precision)
        _assert_captured(runner)
    assert result.passed, result


@pytest.mark.parametrize("mode", ["graphs", "compile"])
def test_fused_epilogues_pass_parity_on_the_whole_pyramid(seeded, mode, tmp_path, caplog):
    """cuDNN's fused convolutions (bias, residual add and ReLU inside; export/conv_fusion.py)
    in fp16 against the fp32 reference, replayed from CUDA graphs, eager or compiled around
    them; cuDNN fused every one (a refusal runs unfused, with a warning), but perhaps the
    stem's, whose 3 input channels tensor-core kernels may not take."""
    model, config = seeded
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.conv_fusion"), \
            TorchCudaRunner(model, mode=mode, fuse_epilogues=True, cache_dir=tmp_path) as runner:
        result = compare_runner(TorchRunner(model), runner, config, 96, 128, "fp16")
        assert {r.mode for r in runner.records.values()} == {mode}, runner.records
    assert result.passed, result
    assert all("weight (64, 3, 7, 7)" in r.getMessage() for r in caplog.records), caplog.text


def test_graphs_equal_eager(seeded):
    model, config = seeded
    x = _level_inputs(config, count=1)[0]
    with TorchCudaRunner(model, mode="graphs") as graphs, \
            TorchCudaRunner(model, mode="eager") as eager:
        np.testing.assert_allclose(graphs.run(x), eager.run(x), **FP16_CLOSE)
        _assert_captured(graphs)


def test_batch_rows_match_single_images():
    x = net_input((2, 3, 64, 96))
    with TorchCudaRunner(stand_in(), mode="graphs") as runner:
        singles = [runner.run(x[i:i + 1]) for i in range(2)]  # first: not padded into 2
        batch = runner.run(x)
        for i in range(2):
            np.testing.assert_allclose(batch[i:i + 1], singles[i], **FP16_CLOSE)
        _assert_captured(runner)


def test_a_smaller_batch_replays_the_prepared_graph():
    """A video's last, shorter batch: 3 images through the graph captured for 4, on the
    device, only their rows back; nothing new captured."""
    x = net_input((3, 3, 64, 96))
    with TorchCudaRunner(stand_in(), mode="graphs") as runner, \
            TorchCudaRunner(stand_in(), mode="eager") as eager:
        runner.warmup([(4, 3, 64, 96)])
        out = runner.run(torch.from_numpy(x).cuda())
        assert tuple(out.shape) == (3, 125, 8, 12) and out.is_contiguous()
        runner.synchronize()
        np.testing.assert_allclose(out.cpu().numpy(), eager.run(x), **FP16_CLOSE)
        assert list(runner.records) == [(4, 3, 64, 96)]
        _assert_captured(runner)


class CudaArray:
    """A bare ``__cuda_array_interface__`` holder (as the detector's device buffers are)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.__cuda_array_interface__ = tensor.__cuda_array_interface__


def _run_another_input(runner: TorchCudaRunner, x: np.ndarray, expected: np.ndarray) -> None:
    """Runs another input of ``x``'s shape, whose output differs from ``expected``: a graph's
    static input and output then hold that one's (a replay that skipped the copy, ran on the
    wrong stream or did not run at all would give its output, not ``expected``)."""
    other = runner.run(net_input(x.shape, seed=2))
    assert not np.allclose(other, expected, atol=1e-3)


@pytest.mark.parametrize("mode", ["eager", "graphs"])
def test_device_input_and_output(mode):
    x = net_input((1, 3, 64, 96))
    with TorchCudaRunner(stand_in(), mode=mode) as runner:
        expected = runner.run(x)
        device_x = torch.from_numpy(x).cuda()
        torch.cuda.synchronize()
        for given in (device_x, CudaArray(device_x)):
            _run_another_input(runner, x, expected)
            out = runner.run(given)
            assert isinstance(out, torch.Tensor) and out.is_cuda
            assert out.dtype == torch.float32 and out.is_contiguous()
            assert tuple(out.shape) == (1, 125, 8, 12)
            assert "data" in out.__cuda_array_interface__
            runner.synchronize()
            np.testing.assert_allclose(out.cpu().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("named", ["another stream", "the legacy default stream"])
def test_a_device_input_naming_its_stream_is_read_after_its_producer(named):
    """A CuPy-like array written on another stream that its CUDA Array Interface (v3) names:
    the runner's stream waits for that one (the legacy default stream is named 1), so it
    reads the written input, not the zeros before it."""
    x = net_input((1, 3, 64, 96))
    with TorchCudaRunner(stand_in(), mode="eager") as runner:
        expected = runner.run(x)
        source = torch.from_numpy(x).cuda()
        device_x = torch.zeros_like(source)
        torch.cuda.synchronize()
        producer = torch.cuda.Stream() if named == "another stream" else torch.cuda.default_stream()
        with torch.cuda.stream(producer):
            torch.cuda._sleep(200_000_000)  # the input is written a while from now
            device_x.copy_(source)
        given = CudaArray(device_x)
        given.__cuda_array_interface__ = {**given.__cuda_array_interface__, "version": 3,
                                          "stream": producer.cuda_stream or 1}
        out = runner.run(given)
        runner.synchronize()
        np.testing.assert_allclose(out.cpu().numpy(), expected, atol=1e-6)
        torch.cuda.synchronize()


@pytest.mark.parametrize("mode", ["eager", "graphs"])
def test_runs_on_the_given_stream(mode):
    x = net_input((1, 3, 64, 96))
    stream = torch.cuda.Stream()
    with TorchCudaRunner(stand_in(), mode=mode, stream=stream.cuda_stream) as runner:
        assert runner.stream == stream.cuda_stream
        expected = runner.run(x)  # also prepares the shape
        _run_another_input(runner, x, expected)
        source = torch.from_numpy(x).cuda()
        device_x = torch.zeros_like(source)
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            torch.cuda._sleep(100_000_000)  # keeps the stream busy for tens of ms
            device_x.copy_(source)           # the input is only written after that
        out = runner.run(device_x)           # reads zeros unless it runs on `stream`
        stream.synchronize()
        np.testing.assert_allclose(out.cpu().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "graphs"])
def test_a_model_still_loading_on_the_gpu_is_copied_once_loaded(mode):
    """The caller loads the weights into a model on the GPU on its own stream, still busy when
    the runner copies the network: the copy waits for them (the runner's stream does not
    follow the caller's), so the runner computes with the loaded weights, not the old ones."""
    x = net_input((1, 3, 64, 96))
    with TorchCudaRunner(stand_in(), mode=mode, dtype=torch.float32) as runner:
        expected = runner.run(x)
    model = stand_in(seed=5).cuda()
    weights = {name: t.cuda() for name, t in stand_in().state_dict().items()}
    torch.cuda.synchronize()
    torch.cuda._sleep(200_000_000)  # the caller's stream busy for a while
    model.load_state_dict(weights)  # device-to-device copies, queued behind the sleep
    with TorchCudaRunner(model, mode=mode, dtype=torch.float32) as runner:
        out = runner.run(x)
    torch.cuda.synchronize()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["eager", "graphs"])
def test_close_frees_device_memory(mode):
    torch.cuda.synchronize()
    gc.collect()
    before = torch.cuda.memory_allocated()
    reserved = torch.cuda.memory_reserved()
    runner = TorchCudaRunner(stand_in(), mode=mode)
    runner.run(net_input((2, 3, 512, 512)))
    during = torch.cuda.memory_allocated()
    runner.close()
    del runner
    gc.collect()
    torch.cuda.synchronize()
    after = torch.cuda.memory_allocated()
    # graphs keep their static input and output (~10 MB here); eager keeps only the fp16
    # weights of the stand-in (~40 KB): run() frees its upload and output when it returns
    assert during - before > ((1 << 20) if mode == "graphs" else 0), (before, during)
    assert after - before <= (1 << 20), (before, during, after)
    assert after < during, (before, during, after)
    # torch's cache keeps no block for it: other libraries and processes get the memory
    assert torch.cuda.memory_reserved() <= reserved, (reserved, torch.cuda.memory_reserved())


#: torch builds whose AOTInductor loader crashed a child process (SIGSEGV) for any package, a
#: plain two-convolution one too, on the lent H200 (benchmarks/results/h200-2026-12-04, runs 1-6;
#: the runner survived it and fell back each time): the AOTInductor test names that crash at once
#: instead of compiling two packages again (203 s of run 6's 234 s of GPU tests).
#: TINYFACES_RECHECK_AOTI=1 compiles and checks again. Any 2.11 patch release of a CUDA 13
#: build counts (a refreshed image's 2.11.1+cu130 would otherwise spend the GPU tests' time
#: compiling to crash again).
AOTI_LOADER_CRASHES = re.compile(r"2\.11\.\d+\+cu13\d*")


def _assert_torch_loader_crashes(tmp_path) -> None:
    """A two-convolution package, nothing of this project in it, crashes torch's loader in a
    child process too (as on the lent H200): the crash is the environment's."""
    from pathlib import Path

    from tinyfaces_trt.export import aoti

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1)).cuda().eval()
    example = torch.zeros(1, 3, 16, 16, device="cuda")
    package = Path(torch._inductor.aoti_compile_and_package(
        torch.export.export(net, (example,), strict=False),
        package_path=str(tmp_path / "plain.pt2")))
    with pytest.raises(aoti.PackageLoadError, match=r"crashed a child process \(SIGSEGV\)"):
        aoti.check_loads(package, torch.device("cuda"))


def test_aoti_package_on_the_given_stream_and_loaded_by_a_second_runner(tmp_path, caplog):
    """Mode "aoti" on the GPU: the fp16 package (captured in a CUDA graph) passes the fp16
    parity tolerances against the fp32 reference, runs on the stream it is given, and a
    second runner loads the package instead of compiling. Where torch's own loader crashes
    (torch 2.11.0+cu130 on the lent H200, 2026-12-04: SIGSEGV for any package), the runner
    must survive it and fall back; when a plain two-convolution package crashes it too, the
    test is an expected failure naming the cause (any other crash fails it)."""
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:  # gpu_check reports this skip as a failure
        pytest.skip("AOTInductor on CUDA compiles C++ against the CUDA toolkit's headers: "
                    "no CUDA_HOME, nvcc or /usr/local/cuda found")
    if AOTI_LOADER_CRASHES.fullmatch(torch.__version__) and not os.environ.get("TINYFACES_RECHECK_AOTI"):
        pytest.xfail(f"torch {torch.__version__}'s AOTInductor loader crashed a child process "
                     f"(SIGSEGV) for any package on the lent H200 in runs 1-6: not compiled "
                     f"again (TINYFACES_RECHECK_AOTI=1 checks it)")
    model, x = stand_in(), net_input((1, 3, 64, 96))
    stream = torch.cuda.Stream()
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt.export.torch_cuda"), \
            TorchCudaRunner(model, mode="aoti", cache_dir=tmp_path,
                            stream=stream.cuda_stream) as runner:
        out = runner.run(x)
        record = runner.records[x.shape]
        crashed = [r.getMessage() for r in caplog.records
                   if "loader crashed a child process (SIGSEGV)" in r.getMessage()]
        if record.mode != "aoti" and crashed:
            result = compare_maps(TorchRunner(model).run(x), out, TOLERANCES["fp16"].maps)
            assert record.mode == "graphs" and result.passed, (record.mode, result)
            _assert_torch_loader_crashes(tmp_path)  # torch's loader, not this package
            pytest.xfail(crashed[0].split("(PackageLoadError: ", 1)[-1].split(");")[0])
        assert record.mode == "aoti", "AOTInductor fell back"
        assert not record.cache_loaded and record.cache_file.is_file()
        result = compare_maps(TorchRunner(model).run(x), out, TOLERANCES["fp16"].maps)
        assert result.passed, result
        source = torch.from_numpy(x).cuda()
        device_x = torch.zeros_like(source)
        torch.cuda.synchronize()
        with torch.cuda.stream(stream):
            torch.cuda._sleep(100_000_000)
            device_x.copy_(source)
        on_stream = runner.run(device_x)  # reads zeros unless it runs on `stream`
        stream.synchronize()
        np.testing.assert_allclose(on_stream.cpu().numpy(), out, atol=1e-6)
    with TorchCudaRunner(model, mode="aoti", cache_dir=tmp_path) as second:
        again = second.run(x)
        assert second.records[x.shape].cache_loaded and second.records[x.shape].mode == "aoti"
    np.testing.assert_allclose(again, out, **FP16_CLOSE)


def test_run_levels_side_by_side_gives_each_levels_own_graph_output(seeded):
    """concurrent_levels on the GPU: a 360x640 pyramid's small levels replay on forked
    streams beside the large ones, plus a second image at the smallest level's shape (one
    graph twice: the first output copied before the second replay): the very numbers of the
    same graphs replayed one by one. The inputs are written on the runner's stream behind a
    long kernel (a branch not waiting for that stream would read them unwritten) and the
    outputs read on another stream ordered after the runner's only (a branch not joined would
    be unfinished)."""
    model, config = seeded
    pre = HostPreprocessor(config)
    levels = plan_pyramid(360, 640, config)
    first, second = (synthetic_image(360, 640, seed=seed) for seed in (0, 1))
    host = [pre.prepare(first, lv) for lv in levels] + [pre.prepare(second, levels[0])]
    with TorchCudaRunner(model, mode="graphs", fuse_epilogues=True,
                         concurrent_levels=True) as runner:
        assert runner.capabilities.concurrent_levels
        runner.warmup([x.shape for x in host])
        xs = [torch.from_numpy(x).cuda() for x in host]
        torch.cuda.synchronize()
        one_by_one = []
        for x in xs:
            out = runner.run(x)
            runner.synchronize()  # the clone below is queued on another stream
            one_by_one.append(out.clone())
        torch.cuda.synchronize()
        stream = torch.cuda.ExternalStream(runner.stream)
        fresh = [torch.empty_like(x) for x in xs]
        with torch.cuda.stream(stream):
            torch.cuda._sleep(50_000_000)  # tens of milliseconds of one spinning thread
            for f, x in zip(fresh, xs):
                f.copy_(x)
            together = runner.run_levels(fresh)
        reader = torch.cuda.Stream()
        reader.wait_stream(stream)
        with torch.cuda.stream(reader):
            got = [out.clone() for out in together]
        reader.synchronize()
        assert runner._branches, "no level ran on a stream of its own"
        for k, (want, out) in enumerate(zip(one_by_one, got)):
            assert torch.equal(want, out), f"input {k}"
        assert not torch.equal(got[0], got[-1])  # two images: the copy kept the first
        _assert_captured(runner)


def _fused_side_by_side(seeded):
    """(runner, detector, images): the factory's default runner (fused graphs, levels side by
    side) in a detector with the CUDA stages, and two 360x640 images; skips without the
    kernel library."""
    from tinyfaces_trt.core.errors import BackendUnavailableError
    from tinyfaces_trt.kernels import load_library
    from tinyfaces_trt.runtime.backends import detector_owning

    try:
        load_library()
    except BackendUnavailableError as exc:
        pytest.skip(f"kernel library not available: {exc}")
    model, config = seeded
    runner = TorchCudaRunner(model, mode="graphs", fuse_epilogues=True, concurrent_levels=True)
    images = [synthetic_image(360, 640, seed=seed) for seed in (0, 1)]
    return runner, detector_owning(runner, config, gpu_stages=True), images


def test_a_detector_running_levels_side_by_side_finds_the_same_boxes(checkpoint, seeded):
    """The detector with the CUDA stages, one runner and its graphs: with concurrent_levels
    the same boxes as level by level, for single images and a batch."""
    import dataclasses

    runner, detector, images = _fused_side_by_side(seeded)
    results = {}
    with detector:
        detector.warmup([(360, 640)], batch_sizes=(1, 2))
        for concurrent in (True, False):
            runner.capabilities = dataclasses.replace(runner.capabilities,
                                                      concurrent_levels=concurrent)
            results[concurrent] = ([detector.detect(image) for image in images]
                                   + detector.detect_batch(images))
        _assert_captured(runner)
        assert runner._branches
    for want, got in zip(results[False], results[True]):
        assert len(want) > 0
        np.testing.assert_array_equal(want, got)


def test_the_cuda_resize_writes_straight_into_the_graphs_static_inputs(checkpoint, seeded):
    """capabilities.input_buffers: once the shapes are captured, each level is resized into
    its graph's static input (no copy into the graph), with exactly the boxes of the same
    detector resizing into buffers of its own."""
    runner, detector, images = _fused_side_by_side(seeded)
    with detector:
        detector.warmup([(360, 640)])
        pre = detector.preprocessor
        direct = [detector.detect(image) for image in images]
        shapes = [(1, 3, lv.height, lv.width) for lv in detector.plan(360, 640)]
        assert pre._taken == {runner.input_buffer(shape).data_ptr() for shape in shapes}
        pre._input_buffers = None  # the preprocessor's own level buffers, copied into the graphs
        copied = [detector.detect(image) for image in images]
        _assert_captured(runner)
    for want, got in zip(copied, direct):
        assert len(want) > 0
        np.testing.assert_array_equal(want, got)


def test_a_page_locked_image_is_uploaded_without_the_staging_copy(checkpoint, seeded):
    """Detector.image_buffer on a GPU: page-locked memory (cudaPointerGetAttributes says so,
    as for a pinned torch tensor, and not for numpy's), uploaded straight from it, refilled
    image after image, with exactly the boxes of the same images staged from pageable
    memory, single and as a batch."""
    from tinyfaces_trt.runtime.backends import cuda_device

    runner, detector, images = _fused_side_by_side(seeded)
    pinned = torch.empty(4096, dtype=torch.uint8, pin_memory=True)
    assert cuda_device.is_page_locked(pinned.data_ptr(), 4096)
    assert not cuda_device.is_page_locked(images[0].ctypes.data, images[0].nbytes)
    with detector:
        detector.warmup([(360, 640)], batch_sizes=(1, 2))
        staged = [detector.detect(image) for image in images] + detector.detect_batch(images)
        assert detector.preprocessor.page_locked_uploads == 0
        frame, frames = detector.image_buffer(360, 640), detector.image_buffer(360, 640, count=2)
        assert cuda_device.is_page_locked(frame.ctypes.data, frame.nbytes)
        direct = []
        for image in images:
            np.copyto(frame, image)
            direct.append(detector.detect(frame))
        np.copyto(frames, np.stack(images))
        direct += detector.detect_batch(frames)
        assert detector.preprocessor.page_locked_uploads == len(images) + 1
        _assert_captured(runner)
    for want, got in zip(staged, direct, strict=True):
        assert len(want) > 0
        np.testing.assert_array_equal(want, got)


def test_factory_builds_fp16_fused_graphs_by_default(checkpoint, tmp_path):
    from tinyfaces_trt.detectors import available_backends, create_detector

    assert "torch-cuda" in available_backends()
    with create_detector("torch-cuda", weights=checkpoint, cache_dir=tmp_path) as detector:
        assert isinstance(detector.runner, TorchCudaRunner)
        assert detector.runner.dtype == torch.float16 and detector.runner.mode == "graphs"
        assert detector.runner.fuse_epilogues
    with create_detector("torch-cuda", weights=checkpoint, fp16=False) as detector:
        assert detector.runner.dtype == torch.float32


def test_the_factory_keeps_every_stage_on_the_device_and_finds_what_the_host_stages_find(
        checkpoint, tmp_path):
    """create_detector("torch-cuda") with the kernel library at hand: the CUDA resize and
    decode+NMS on the runner's own stream (the default falls back to the host stages with only
    a warning, so the other tests here would pass on those), with the detections of the same
    runner over the host stages."""
    from tinyfaces_trt.core.errors import BackendUnavailableError
    from tinyfaces_trt.detectors import create_detector
    from tinyfaces_trt.kernels import load_library
    from tinyfaces_trt.runtime.backends.cuda_stages import CudaPostprocessor, CudaPreprocessor

    try:
        load_library()
    except BackendUnavailableError as exc:
        pytest.skip(f"kernel library not available: {exc}")
    images = [synthetic_image(96, 128, seed=seed) for seed in (0, 1)]
    options = {"weights": checkpoint, "torch_mode": "graphs", "cache_dir": tmp_path}
    with create_detector("torch-cuda", **options) as device:
        assert isinstance(device.preprocessor, CudaPreprocessor)
        assert isinstance(device.postprocessor, CudaPostprocessor)
        assert device.preprocessor.stream.handle == device.postprocessor.stream.handle \
            == device.runner.stream
        on_device = [device.detect(image) for image in images]
        config = device.config
    with create_detector("torch-cuda", gpu_stages=False, **options) as host:
        assert isinstance(host.preprocessor, HostPreprocessor)
        on_host = [host.detect(image) for image in images]
    for want, got in zip(on_host, on_device):
        assert len(want) > 0  # 37 and 36 faces on the CPU reference
        same = compare_detections(want, got, config.prob_thresh, config.nms_thresh,
                                  TOLERANCES["fp16"].detections, config.box_pixel_offset)
        assert same.passed, same


def test_detector_warmup_captures_the_pyramid_before_the_first_image(checkpoint, tmp_path):
    """tf-serve --warmup on a GPU: every level of the size is captured for single images and
    the batch size before the first image, which then runs from the graphs (no eager run,
    nothing more prepared; a batch of 2 replays the 3's graph)."""
    from tinyfaces_trt.detectors import create_detector

    with create_detector("torch-cuda", weights=checkpoint, torch_mode="graphs",
                         cache_dir=tmp_path) as detector:
        detector.warmup([(96, 128)], batch_sizes=(1, 3))
        runner = detector.runner
        expected = {(n, 3, lv.height, lv.width) for n in (1, 3) for lv in detector.plan(96, 128)}
        assert set(runner.records) == expected
        _assert_captured(runner)
        image = synthetic_image(96, 128, seed=0)
        single = detector.detect(image)
        pair = detector.detect_batch([image, synthetic_image(96, 128, seed=1)])
        assert set(runner.records) == expected and runner._eager_runs == {}
        assert len(pair) == 2
        config = detector.config
        same = compare_detections(single, pair[0], config.prob_thresh, config.nms_thresh,
                                  TOLERANCES["fp16"].detections, config.box_pixel_offset)
        assert same.passed, same
