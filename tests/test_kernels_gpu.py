"""GPU parity of the CUDA kernels against the numpy runtime (the oracle).

Skipped unless cuda-python sees a GPU and the kernel library loads (``tf-build-kernels``,
``make -C kernels`` or ``$TINYFACES_KERNELS_LIB``). ``tools/gpu_check.py`` builds
the library and runs this file on a GPU machine.

The C ABI's parity cases (tests/kernel_abi_cases.py, also run through the CPU build by
tests/test_kernels_cpu.py) are collected here with the GPU harness; this file adds what
needs a GPU: the CUDA stages in the Detector, streams and events, graph capture, 650k
candidates, the C example.

Tolerances (docs/DESIGN.md): same count and order, boxes within 1e-3 px (numpy decodes in
float64, CUDA in float32), probabilities within 1e-6, resize within 1e-4. At large counts the
float32 decode meets pairs whose IoU lies within ~1e-6 of nms_thresh, which may be decided
otherwise than in float64: there the kernel is held exactly to the float32 greedy result on
the boxes it decoded (helpers_kernels.greedy_nms_f32) and to numpy only up to such pairs
(helpers_kernels.assert_near_float64_nms).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_kernels import (KernelHarness, assert_kernel_keeps_float32_greedy,
                             assert_same_detections, candidate_count, collect_cases,
                             kernel_constants, levels_at, nms_rows_reference, random_maps,
                             runtime_nms_params, square_boxes)
from helpers_run import REPO, load_script
from kernel_abi_cases import IMAGE_HW
import kernel_abi_cases
import kernel_stage_cases
from tinyfaces_trt.runtime.backends import cuda_device, cuda_stages
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.runtime.decode import active_templates
from tinyfaces_trt.core.errors import BackendUnavailableError
from tinyfaces_trt.runtime.postprocess import postprocess_levels


def _library_or_reason():
    if not cuda_device.gpu_available():
        return None, "no CUDA GPU visible (needs cuda-python, a driver and a device)"
    from tinyfaces_trt.kernels import load_library

    try:
        return load_library(), ""
    except BackendUnavailableError as exc:
        return None, f"kernel library not available: {exc}"


LIB, _REASON = _library_or_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(LIB is None, reason=_REASON)]
collect_cases(globals(), kernel_abi_cases, kernel_stage_cases)  # with `kh`, `stream` below

if LIB is not None:
    from tinyfaces_trt.kernels import binding
    from tinyfaces_trt.runtime.backends.cuda_device import DeviceArray, DeviceBuffer, Stream
    from tinyfaces_trt.runtime.backends.cuda_stages import CudaPostprocessor


@pytest.fixture(scope="module")
def stream():
    s = Stream()
    yield s
    s.close()


@pytest.fixture
def kh(stream):
    """The raw C ABI on the GPU (tests/helpers_kernels.py)."""
    return KernelHarness(LIB, DeviceBuffer, stream)


@pytest.fixture
def nms_graphs():
    """Makes a CudaPostprocessor capture and replay its NMS (kernel_stage_cases): on a GPU,
    as it is (real CUDA graphs)."""
    return lambda post: post


def test_decode_nms_capture_in_a_cuda_graph(stream):
    """No hidden synchronisation or allocation: the whole sequence captures and replays."""
    rt = cuda_device.runtime()
    check = cuda_device.check
    config = DetectorConfig()
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    rng = np.random.default_rng(11)
    maps_a, maps_b = random_maps(rng, levels), random_maps(rng, levels)
    capacity = sum(25 * m.shape[2] * m.shape[3] for m in maps_a)
    m_nms = 4096
    dev_maps = [DeviceBuffer(m.nbytes) for m in maps_a]
    cand = DeviceBuffer(LIB.candidates_size(capacity))
    ws_bytes = LIB.nms_workspace_size(m_nms)
    ws, out, stats_buf = DeviceBuffer(ws_bytes), DeviceBuffer(m_nms * 20), DeviceBuffer(16)
    capture_stream = Stream()
    params = runtime_nms_params(config, IMAGE_HW)

    def enqueue():
        LIB.candidates_reset(cand, capture_stream)
        key_base = 0
        for d, m, level in zip(dev_maps, maps_a, levels):
            h, w = m.shape[2:]
            p = binding.decode_params(config.templates, active_templates(level.scale, config),
                                      config.logit_thresh, config.stride, config.offset, level.scale)
            LIB.decode_level(d, h, w, p, key_base, cand, capacity, capture_stream)
            key_base += 25 * h * w
        LIB.nms(cand, capacity, params, m_nms, ws, ws_bytes, out, stats_buf, capture_stream)

    def results(maps):
        for d, m in zip(dev_maps, maps):
            d.upload(m, capture_stream)
        check(rt.cudaGraphLaunch(graph_exec, capture_stream.handle), "cudaGraphLaunch")
        stats = np.zeros(1, binding.NMS_STATS_DTYPE)
        stats_buf.download(stats, capture_stream)
        capture_stream.synchronize()
        boxes = np.empty((int(stats[0]["num_kept"]), 5), np.float32)
        out.download(boxes, capture_stream)
        capture_stream.synchronize()
        return boxes, int(stats[0]["nonfinite"])

    for d, m in zip(dev_maps, maps_a):
        d.upload(m, capture_stream)
    enqueue()  # warm-up outside the capture
    capture_stream.synchronize()
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    check(rt.cudaStreamBeginCapture(capture_stream.handle, mode), "cudaStreamBeginCapture")
    try:
        enqueue()
    finally:
        graph = check(rt.cudaStreamEndCapture(capture_stream.handle), "cudaStreamEndCapture")
    graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    for maps in (maps_a, maps_b, maps_a):
        boxes, nonfinite = results(maps)
        assert nonfinite == 0
        assert_same_detections(boxes, nms_rows_reference(maps, levels, IMAGE_HW, config))
    broken = [m.copy() for m in maps_a]
    broken[1][0, 3, 0, :] = np.nan
    assert results(broken)[1] == broken[1].shape[3]
    assert results(maps_a)[1] == 0  # the replayed reset zeroes the non-finite counter too
    check(rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
    check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
    for buf in dev_maps + [cand, ws, out, stats_buf]:
        buf.free()
    capture_stream.close()


# --- the CUDA stages: the cases of tests/kernel_stage_cases.py, and what needs a GPU ------------

#: Device-to-device copies that hold a stream back: HOLD_COPIES of HOLD_BYTES take
#: milliseconds on an H100/H200 (a few TB/s), the host queues a level in tens of microseconds.
HOLD_BYTES, HOLD_COPIES = 256 << 20, 16


@pytest.mark.parametrize("held", ["producer", "stages"])
def test_score_map_from_another_stream_is_ordered_by_events(stream, held):
    """A producer on its own stream (a TensorRT runner) writes its one output buffer for a
    level and rewrites it for the next right after add_level. The stages order both with CUDA
    events (no host wait): the decode waits for the producer's map, and the producer's next
    write waits for the decode. Each level's queued work is held back on one stream by
    milliseconds of copies: "producer": a decode that did not wait would read the buffer
    before the map lands (it holds a junk map); "stages": a next write that did not wait would
    land before the decode reads. Only device-to-device copies: a copy from pageable memory
    would wait for its stream on the host and order everything by itself."""
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 0.5, 1.0))
    maps = random_maps(np.random.default_rng(16), levels, cls_mean=0.0)
    size = max(m.nbytes for m in maps)
    producer = Stream()
    shared, junk = DeviceBuffer(size), DeviceBuffer(size)
    hold_from, hold_to = DeviceBuffer(HOLD_BYTES), DeviceBuffer(HOLD_BYTES)
    sources = [DeviceBuffer(m.nbytes) for m in maps]
    for buf, m in zip(sources, maps):
        buf.upload(m, stream)
    junk.upload(np.full(size // 4, 50.0, np.float32), stream)
    shared.copy_from_device(junk.ptr, size, stream)
    stream.synchronize()
    held_back = producer if held == "producer" else stream
    post = CudaPostprocessor(config, stream=stream, runner_stream=producer)
    post.reset(*IMAGE_HW)
    for m, source, level in zip(maps, sources, levels):
        for _ in range(HOLD_COPIES):
            hold_to.copy_from_device(hold_from.ptr, HOLD_BYTES, held_back)
        shared.copy_from_device(source.ptr, m.nbytes, producer)
        post.add_level(DeviceArray(shared.ptr, m.shape, np.float32, owner=shared), level)
        shared.copy_from_device(junk.ptr, m.nbytes, producer)  # the next output, queued at once
    got = post.finish()
    assert_same_detections(got, postprocess_levels(maps, levels, IMAGE_HW, config))
    post.close()
    for buf in [shared, junk, hold_from, hold_to, *sources]:
        buf.free()
    producer.close()


def test_nms_sorts_in_one_block_up_to_its_bound_where_the_gpu_has_the_shared_memory(kh,
                                                                                   monkeypatch):
    """Which sort ran, named by the torch profiler (the rows cannot tell: both sorts give the
    same, kernel_abi_cases checks them): at an NMS size of kBlockSortMax the one-block kernel
    where the GPU gives a block block_sort_shared_bytes (an H100/H200: 227 KiB, not an A100:
    163 KiB), CUB's device-wide sort past it. (Its name leaves out "block_sort": the
    sanitizer subsets select by that, and the profiler does not run under compute-sanitizer.)"""
    torch = pytest.importorskip("torch")
    assert torch.cuda.is_available(), "the torch profiler needs a torch that sees the GPU"
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    bench = load_script("benchmarks/bench_common.py", "tinyfaces_bench_common_sorts")
    k = kernel_constants("block_sort.cuh")
    need = k["kBlockSortMax"] * (8 + 4) + (k["kBlockSortWarps"] * k["kBlockSortRadix"] + 32) * 4
    rt = cuda_device.runtime()
    optin = int(cuda_device.check(rt.cudaDeviceGetAttribute(
        rt.cudaDeviceAttr.cudaDevAttrMaxSharedMemoryPerBlockOptin, cuda_device.current_device()),
        "cudaDeviceGetAttribute"))
    maps, levels, image_hw = kernel_abi_cases.block_sort_case()
    run = kh.raw_run(maps, levels, DetectorConfig(prob_thresh=0.5))

    def kernels(nms_size: int) -> list[str]:
        run.nms(image_hw, nms_size)  # lazy loading and CUB's set-up outside the profile
        names = [row["name"] for row in bench.profiled_kernels(
            lambda: run.nms(image_hw, nms_size))[1]]
        assert any("nms_write_kernel" in name for name in names), names  # it saw NMS run
        return names

    one_block = kernels(k["kBlockSortMax"])
    device_wide = kernels(k["kBlockSortMax"] + 1)
    in_one_block = optin >= need
    assert any("block_sort_kernel" in name for name in one_block) == in_one_block, (optin, need)
    assert any("DeviceRadixSort" in name for name in one_block) != in_one_block, one_block
    assert not any("block_sort_kernel" in name for name in device_wide), device_wide
    assert any("DeviceRadixSort" in name for name in device_wide), device_wide


def test_uncapped_650k_candidates_detector_like(kh):
    """650k candidates (a 1080p pyramid at prob 0.03 has about this many) vs numpy."""
    rng = np.random.default_rng(23)
    n_faces, n = 6000, 650_000
    faces = rng.uniform(0, [1920, 1080], (n_faces, 2))
    fsize = np.exp(rng.uniform(np.log(8), np.log(300), n_faces))
    pick = rng.integers(0, n_faces, n)
    boxes = square_boxes(faces[pick] + rng.normal(0, 0.08, (n, 2)) * fsize[pick, None],
                          fsize[pick] * np.exp(rng.normal(0, 0.1, n)))
    kh.assert_kept(boxes, rng.normal(-2, 1, n), rng.permutation(n), 0.3, 1.0)


def test_uncapped_650k_from_a_1080p_pyramid(kh):
    """Decode + NMS of a 1080p pyramid of random maps with ~650k candidates at prob 0.03.

    The contract (docs/DESIGN.md): tf_nms keeps exactly the float32 serial greedy result
    (helpers_kernels.greedy_nms_f32, equal to kernels/nms_emulation.py's) on the boxes the
    kernel decoded, fetched from its candidate buffer (all of them written where none is
    dropped; the runtime's rows those finished as the host would). Against numpy, which decodes in
    float64, the kept sets may differ only at pairs whose IoU lies within IOU_MARGIN of
    nms_thresh: numpy keeps 21019 boxes here, the float32 decode of the host 21018 (two pairs
    at IoU 0.3 - 2.5e-7 (float64) and one box of their cascade; tests/test_nms_uncapped.py checks that
    without a GPU). The GPU's decode may fuse multiply-adds: its boxes are compared with the
    host's float32 decode within 1e-3 px, not bit for bit."""
    from tinyfaces_trt.core.pyramid import plan_pyramid

    config = DetectorConfig(prob_thresh=0.03)
    image_hw = (1080, 1920)
    levels = plan_pyramid(*image_hw, config)
    maps = random_maps(np.random.default_rng(24), levels, cls_mean=-3.9, cls_sigma=1.0)
    count = candidate_count(maps, levels, config)
    assert count > 500_000
    run = kh.raw_run(maps, levels, config)
    got, stats = run.nms(image_hw, count)
    assert stats == {"num_kept": len(got), "num_candidates": count, "overflow": 0, "nonfinite": 0}

    d = assert_kernel_keeps_float32_greedy(kh, run, got, maps, levels, config, image_hw)
    print(f"kernel kept {d['float32_kept']} ({len(got)} in the image), numpy (float64 decode) "
          f"{d['numpy_kept']}: {d['reasons']}")


def test_uncapped_nms_benchmark_hook(kh, stream):
    """Times tf_nms at 10k / 50k / 650k detector-like candidates (printed; targets in the
    README: decode + NMS <= 0.3 ms at 10k, <= 3 ms at 50k on H100/H200)."""
    rt = cuda_device.runtime()  # noqa: F841  (cuda-python is there: the module is not skipped)
    rng = np.random.default_rng(25)
    for n in (10_000, 50_000, 650_000):
        faces = rng.uniform(0, [1920, 1080], (max(1, n // 100), 2))
        pick = rng.integers(0, len(faces), n)
        fsize = np.exp(rng.uniform(np.log(8), np.log(300), len(faces)))
        boxes = square_boxes(faces[pick] + rng.normal(0, 0.08, (n, 2)) * fsize[pick, None],
                              fsize[pick] * np.exp(rng.normal(0, 0.1, n)))
        host = kh.candidate_buffer(boxes, rng.normal(-2, 1, n).astype(np.float32), np.arange(n), n)
        ws_bytes = LIB.nms_workspace_size(n)
        with DeviceBuffer(host.nbytes) as cand, DeviceBuffer(ws_bytes) as ws, \
                DeviceBuffer(n * 20) as out, DeviceBuffer(16) as stats_buf:
            cand.upload(host, stream)
            params = runtime_nms_params(  # the runtime's, its NMS rule too
                DetectorConfig(), (1080, 1920),
                lookahead=binding.NMS_RULES[cuda_stages.DEFAULT_NMS_RULE])
            times = []
            for _ in range(6):
                stream.synchronize()
                start = time.perf_counter()
                LIB.nms(cand, n, params, n, ws, ws_bytes, out, stats_buf, stream)
                stream.synchronize()
                times.append(time.perf_counter() - start)
        print(f"tf_nms n={n} ({cuda_stages.DEFAULT_NMS_RULE} rule): median "
              f"{1e3 * sorted(times[1:])[2]:.3f} ms (host-timed, incl. launch)")


def test_a_failed_cuda_call_leaves_no_stale_error_for_later_calls(kh):
    """A library call whose CUDA call fails without a sticky error leaves that error as the
    thread's last error in the library's own (static, private) CUDA runtime; CUB's launches
    return cudaPeekAtLastError(), so every later tf_nms on the thread failed with it. The
    entry points clear it after their argument checks. The failure here: tf_candidates_reset
    on the legacy default stream while a blocking stream is being captured (an implicit
    dependency on a capture: refused, the capture invalidated, nothing sticky).
    tests/test_kernels_cpu.py has the same case on the CPU build."""
    rt = cuda_device.runtime()
    check = cuda_device.check
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(41), levels, cls_mean=0.0)
    capturing = Stream()  # cudaStreamCreate: a blocking stream, which the legacy stream waits on
    cand = DeviceBuffer(LIB.candidates_size(16))
    LIB.candidates_reset(cand, capturing)  # the library's runtime set up before the capture
    capturing.synchronize()
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    check(rt.cudaStreamBeginCapture(capturing.handle, mode), "cudaStreamBeginCapture")
    try:
        with pytest.raises(binding.KernelError, match="cudaMemsetAsync") as info:
            LIB.candidates_reset(cand, None)  # None: the legacy default stream
    finally:
        err, graph = rt.cudaStreamEndCapture(capturing.handle)
        if int(err) == 0 and graph is not None:  # not invalidated after all
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
    cand.free()
    capturing.close()
    assert info.value.status == binding.Status.CUDA_ERROR and info.value.cuda_error != 0, info.value
    for _ in range(2):
        got, stats = kh.detections(maps, levels, config, IMAGE_HW)
        assert stats["num_candidates"] == candidate_count(maps, levels, config) > 0
        assert_same_detections(got, nms_rows_reference(maps, levels, IMAGE_HW, config))


# --- the C example ---------------------------------------------------------------------------------

def test_c_example_runs():
    demo = Path(LIB.path).parent / "decode_nms_demo"
    if not demo.is_file():
        pytest.skip(f"{demo} not built (make -C kernels example)")
    proc = subprocess.run([str(demo)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = re.search(r"^(\d+) candidates, (\d+) kept$", proc.stdout, flags=re.M)
    assert found, proc.stdout
    candidates, kept = int(found[1]), int(found[2])
    assert 0 < kept < candidates  # the weaker neighbours are suppressed
    rows = re.findall(r"^\s*\d+: \[.*\] p=(\d\.\d+)$", proc.stdout, flags=re.M)
    assert len(rows) == kept
    probs = [float(p) for p in rows]
    assert probs == sorted(probs, reverse=True) and min(probs) > 0.5
