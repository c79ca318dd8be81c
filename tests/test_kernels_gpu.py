"""GPU parity of the CUDA kernels against the numpy runtime (the oracle).

Skipped unless cuda-python sees a GPU and the kernel library loads (``tf-build-kernels``,
``make -C kernels`` or ``$TINYFACES_KERNELS_LIB``). ``tools/gpu_check.py`` builds
the library and runs this file on a GPU machine.

Tolerances (docs/DESIGN.md): same count and order, boxes within 1e-3 px (numpy decodes in
float64, CUDA in float32), probabilities within 1e-6, resize within 1e-4.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.runtime.decode import active_templates
from tinyfaces_trt.core.errors import BackendUnavailableError, TinyFacesError
from tinyfaces_trt.runtime.pipeline import Detector
from tinyfaces_trt.runtime.postprocess import postprocess_levels
from tinyfaces_trt.runtime.preprocess import normalize
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.runtime.resize import resize_bilinear_aa


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

if LIB is not None:
    from tinyfaces_trt.kernels import binding
    from tinyfaces_trt.runtime.backends.cuda_device import DeviceArray, DeviceBuffer, Stream
    from tinyfaces_trt.runtime.backends.cuda_stages import (CudaPostprocessor, CudaPreprocessor,
                                                             cuda_stages)

IMAGE_HW = (90, 120)


@pytest.fixture(scope="module")
def stream():
    s = Stream()
    yield s
    s.close()


# --- helpers ----------------------------------------------------------------------------------

def _levels(image_hw, exponents):
    out = []
    for i, e in enumerate(exponents):
        s = 2.0 ** e
        out.append(PyramidLevel(i, e, s, math.ceil(s * image_hw[0]), math.ceil(s * image_hw[1])))
    return out


def _map_size(level):
    return math.ceil(level.height / 8), math.ceil(level.width / 8)


def _random_maps(rng, levels, cls_mean=-1.0, cls_sigma=1.5, reg_sigma=0.3):
    maps = []
    for level in levels:
        h, w = _map_size(level)
        cls = rng.normal(cls_mean, cls_sigma, (NUM_TEMPLATES, h, w))
        reg = rng.normal(0.0, reg_sigma, (4 * NUM_TEMPLATES, h, w))
        maps.append(np.concatenate([cls, reg]).astype(np.float32)[None])
    return maps


def _candidate_count(maps, levels, config):
    total = 0
    for m, level in zip(maps, levels):
        active = active_templates(level.scale, config)
        total += int(((m[0, :NUM_TEMPLATES] > config.logit_thresh) & active[:, None, None]).sum())
    return total  # boxes are finite in these maps


class RawRun:
    """decode + NMS through the raw C API on one candidate buffer (kept for re-runs)."""

    def __init__(self, stream, maps, levels, config, capacity=None):
        self.stream, self.config = stream, config
        self.capacity = capacity or max(1, sum(25 * m.shape[2] * m.shape[3] for m in maps))
        self.cand = DeviceBuffer(LIB.candidates_size(self.capacity))
        self._inputs = []
        LIB.candidates_reset(self.cand, stream)
        key_base = 0
        templates = config.templates[:, :4]
        for m, level in zip(maps, levels):
            d = DeviceBuffer(m.nbytes)
            d.upload(np.ascontiguousarray(m), stream)
            self._inputs.append(d)
            h, w = m.shape[2:]
            params = binding.decode_params(templates, active_templates(level.scale, config),
                                           config.logit_thresh, config.stride, config.offset, level.scale)
            LIB.decode_level(d, h, w, params, key_base, self.cand, self.capacity, stream)
            key_base += 25 * h * w

    def nms(self, image_hw, max_candidates):
        ws_bytes = LIB.nms_workspace_size(max_candidates)
        with DeviceBuffer(ws_bytes) as ws, DeviceBuffer(max_candidates * 20) as out, \
                DeviceBuffer(16) as stats_buf:
            params = binding.nms_params(self.config.nms_thresh, self.config.box_pixel_offset,
                                        self.config.clip_boxes, *image_hw)
            LIB.nms(self.cand, self.capacity, params, max_candidates, ws, ws_bytes, out, stats_buf,
                    self.stream)
            stats = np.zeros(1, binding.NMS_STATS_DTYPE)
            stats_buf.download(stats, self.stream)
            self.stream.synchronize()
            boxes = np.empty((int(stats[0]["num_kept"]), 5), np.float32)
            if len(boxes):
                out.download(boxes, self.stream)
                self.stream.synchronize()
        return boxes, {k: int(stats[0][k]) for k in ("num_kept", "num_candidates", "overflow")}


def _gpu_detections(stream, maps, levels, config, image_hw, max_candidates=None):
    run = RawRun(stream, maps, levels, config)
    m = max_candidates or max(1, min(_candidate_count(maps, levels, config), binding.MAX_NMS_CANDIDATES))
    boxes, stats = run.nms(image_hw, m)
    assert stats["overflow"] == 0, stats
    return boxes, stats


def assert_same_detections(got, want):
    assert got.dtype == np.float32 and got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=0, atol=1e-3)
    np.testing.assert_allclose(got[:, 4], want[:, 4], rtol=0, atol=1e-6)


# --- decode + NMS vs numpy ----------------------------------------------------------------------

CONFIGS = {
    "pytorch": DetectorConfig(),
    "matconvnet": DetectorConfig.for_variant("matconvnet", prob_thresh=0.3, nms_thresh=0.1),
    "no-clip-no-offset": DetectorConfig(clip_boxes=False, box_pixel_offset=0.0, nms_thresh=0.5),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_score_maps_match_numpy(stream, name, seed):
    config = CONFIGS[name]
    levels = _levels(IMAGE_HW, (-1.0, 0.0, 0.5, 1.0))
    maps = _random_maps(np.random.default_rng(seed), levels)
    want = postprocess_levels(maps, levels, IMAGE_HW, config)
    got, stats = _gpu_detections(stream, maps, levels, config, IMAGE_HW)
    assert stats["num_candidates"] == _candidate_count(maps, levels, config) > 50
    assert 0 < len(want) < stats["num_candidates"]
    assert_same_detections(got, want)


def test_all_below_threshold_gives_nothing(stream):
    config = DetectorConfig()
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(3), levels, cls_mean=-10.0, cls_sigma=0.5)
    got, stats = _gpu_detections(stream, maps, levels, config, IMAGE_HW, max_candidates=64)
    assert got.shape == (0, 5) and stats == {"num_kept": 0, "num_candidates": 0, "overflow": 0}
    assert postprocess_levels(maps, levels, IMAGE_HW, config).shape == (0, 5)


def test_all_above_threshold_ties_are_broken_by_key(stream):
    """Every active cell passes with the same logit: the order is the canonical key order."""
    config = DetectorConfig(nms_thresh=0.4)
    levels = _levels(IMAGE_HW, (0.0, 0.5, 1.0))
    maps = _random_maps(np.random.default_rng(4), levels)
    for m in maps:
        m[0, :NUM_TEMPLATES] = 2.0
    want = postprocess_levels(maps, levels, IMAGE_HW, config)
    got, stats = _gpu_detections(stream, maps, levels, config, IMAGE_HW)
    assert stats["num_candidates"] == sum(8 * m.shape[2] * m.shape[3] for m in maps)
    assert len(want) > 20
    assert_same_detections(got, want)


def test_quantised_logits_tie_across_levels(stream):
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (-1.0, 0.0, 1.0))
    maps = _random_maps(np.random.default_rng(5), levels, cls_mean=0.0, cls_sigma=1.0)
    for m in maps:
        m[0, :NUM_TEMPLATES] = np.round(m[0, :NUM_TEMPLATES] * 2) / 2
        m[0, 0, 0, 0] = -0.0  # -0 and +0 compare equal: the key decides
        m[0, 4, 0, 1] = 0.0
        m[0, 5, 0, 0] = -0.0
    want = postprocess_levels(maps, levels, IMAGE_HW, config)
    got, _ = _gpu_detections(stream, maps, levels, config, IMAGE_HW)
    assert_same_detections(got, want)


@pytest.mark.parametrize("clip", [True, False])
def test_boxes_on_the_image_border(stream, clip):
    config = DetectorConfig(clip_boxes=clip, prob_thresh=0.2)
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(6), levels, cls_mean=0.0, reg_sigma=1.0)
    for m in maps:  # push boxes out over every edge
        h, w = m.shape[2:]
        m[0, 25:50, :, : w // 3] -= 2.0
        m[0, 25:50, :, -(w // 3):] += 2.0
        m[0, 50:75, : h // 3] -= 2.0
        m[0, 50:75, -(h // 3):] += 2.0
    want = postprocess_levels(maps, levels, IMAGE_HW, config)
    got, _ = _gpu_detections(stream, maps, levels, config, IMAGE_HW)
    assert_same_detections(got, want)
    outside = (want[:, 0] < 0) | (want[:, 2] > IMAGE_HW[1] - 1)
    if clip:
        assert got[:, [0, 2]].min() == 0.0 and got[:, [0, 2]].max() == IMAGE_HW[1] - 1
        assert got[:, [1, 3]].min() == 0.0 and got[:, [1, 3]].max() == IMAGE_HW[0] - 1
    else:
        assert outside.any()


def test_non_finite_values(stream):
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(7), levels, cls_mean=0.0)
    m = maps[0]
    m[0, 4:12, 0, :] = np.nan          # NaN logits never pass
    m[0, 4:12, 1, :] = np.inf          # +inf logits pass, best first
    m[0, 75 + 5, 2, :] = np.inf        # infinite width: dropped
    m[0, 25 + 6, 3, :] = np.nan        # NaN offset: dropped
    m[0, 100 + 7, 4, :] = 800.0        # exp overflows in float32 and float64 alike: dropped
    want = postprocess_levels(maps, levels, IMAGE_HW, config)
    got, stats = _gpu_detections(stream, maps, levels, config, IMAGE_HW)
    assert_same_detections(got, want)
    assert np.isfinite(got).all() and got[0, 4] == 1.0


def test_overflow_is_reported_then_recovered(stream):
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(8), levels, cls_mean=0.0)
    count = _candidate_count(maps, levels, config)
    want = postprocess_levels(maps, levels, IMAGE_HW, config)

    small = RawRun(stream, maps, levels, config, capacity=count - 1)
    boxes, stats = small.nms(IMAGE_HW, count)
    assert boxes.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": count, "overflow": binding.OVERFLOW_CAPACITY}

    exact = RawRun(stream, maps, levels, config, capacity=count)
    boxes, stats = exact.nms(IMAGE_HW, count - 1)  # the NMS size is too small this time
    assert boxes.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": count, "overflow": binding.OVERFLOW_NMS}
    boxes, stats = exact.nms(IMAGE_HW, count)      # same candidates, re-run NMS only
    assert stats["overflow"] == 0 and stats["num_candidates"] == count
    assert_same_detections(boxes, want)


@pytest.mark.parametrize("max_candidates", [700, 4097, 65536, binding.MAX_NMS_CANDIDATES if LIB else 1])
def test_any_nms_size_works(stream, max_candidates):
    """The workspace query covers CUB's sort storage at every size (checked at launch)."""
    config = DetectorConfig()
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(9), levels, cls_mean=-2.5)
    assert 0 < _candidate_count(maps, levels, config) <= 700
    want = postprocess_levels(maps, levels, IMAGE_HW, config)
    got, _ = _gpu_detections(stream, maps, levels, config, IMAGE_HW, max_candidates=max_candidates)
    assert_same_detections(got, want)


def test_results_are_deterministic(stream):
    config = DetectorConfig(prob_thresh=0.2, nms_thresh=0.5)
    levels = _levels((200, 260), (-1.0, 0.0, 0.5, 1.0))
    maps = _random_maps(np.random.default_rng(10), levels, cls_mean=0.0)
    for m in maps:
        m[0, :NUM_TEMPLATES] = np.round(m[0, :NUM_TEMPLATES])
    runs = [_gpu_detections(stream, maps, levels, config, (200, 260))[0] for _ in range(3)]
    assert runs[0].tobytes() == runs[1].tobytes() == runs[2].tobytes()
    assert_same_detections(runs[0], postprocess_levels(maps, levels, (200, 260), config))


def test_decode_nms_capture_in_a_cuda_graph(stream):
    """No hidden synchronisation or allocation: the whole sequence captures and replays."""
    rt = cuda_device.runtime()
    check = cuda_device.check
    config = DetectorConfig()
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    rng = np.random.default_rng(11)
    maps_a, maps_b = _random_maps(rng, levels), _random_maps(rng, levels)
    capacity = sum(25 * m.shape[2] * m.shape[3] for m in maps_a)
    m_nms = 4096
    dev_maps = [DeviceBuffer(m.nbytes) for m in maps_a]
    cand = DeviceBuffer(LIB.candidates_size(capacity))
    ws_bytes = LIB.nms_workspace_size(m_nms)
    ws, out, stats_buf = DeviceBuffer(ws_bytes), DeviceBuffer(m_nms * 20), DeviceBuffer(16)
    capture_stream = Stream()
    params = binding.nms_params(config.nms_thresh, config.box_pixel_offset, config.clip_boxes, *IMAGE_HW)

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
        return boxes

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
        assert_same_detections(results(maps), postprocess_levels(maps, levels, IMAGE_HW, config))
    check(rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
    check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
    for buf in dev_maps + [cand, ws, out, stats_buf]:
        buf.free()
    capture_stream.close()


# --- resize -------------------------------------------------------------------------------------

RESIZES = [((61, 83), (31, 42)), ((61, 83), (17, 22)), ((61, 83), (87, 118)), ((61, 83), (122, 166)),
           ((61, 83), (61, 83)), ((61, 83), (1, 1)), ((61, 83), (1, 83)), ((33, 47), (9, 300)),
           ((160, 120), (40, 30)), ((1, 1), (5, 3))]


@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
@pytest.mark.parametrize("src_hw, dst_hw", RESIZES)
def test_resize_matches_numpy(stream, variant, src_hw, dst_hw):
    config = DetectorConfig.for_variant(variant)
    rng = np.random.default_rng(src_hw[0] * 1000 + dst_hw[1])
    image = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    want = normalize(resize_bilinear_aa(image, *dst_hw), config)
    got = _gpu_resize(stream, image, dst_hw, config)
    assert got.shape == want.shape == (1, 3, *dst_hw)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def _gpu_resize(stream, image, dst_hw, config, row_bytes=0):
    h, w = image.shape[:2]
    a, b = config.normalization.scale_and_bias()
    host = image if not row_bytes else np.zeros((h, row_bytes), np.uint8)
    if row_bytes:
        host[:, : 3 * w] = image.reshape(h, 3 * w)
    ws_bytes = LIB.resize_workspace_size(h, w, *dst_hw)
    with DeviceBuffer(host.nbytes) as src, DeviceBuffer(3 * dst_hw[0] * dst_hw[1] * 4) as dst, \
            DeviceBuffer(ws_bytes) as ws:
        src.upload(np.ascontiguousarray(host), stream)
        LIB.resize_normalize(src, h, w, dst, *dst_hw, a, b, ws, ws_bytes, stream, src_row_bytes=row_bytes)
        out = np.empty((1, 3, *dst_hw), np.float32)
        dst.download(out, stream)
        stream.synchronize()
    return out


def test_resize_pitched_source(stream):
    config = DetectorConfig()
    image = np.random.default_rng(12).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    want = normalize(resize_bilinear_aa(image, 23, 35), config)
    np.testing.assert_allclose(_gpu_resize(stream, image, (23, 35), config, row_bytes=256), want,
                               rtol=0, atol=1e-4)


# --- the CUDA stages inside the Detector -------------------------------------------------------

class RecordingRunner:
    """A deterministic stand-in network: 8x8-pooled input -> score map; records its outputs."""

    def __init__(self):
        self.inputs, self.outputs = [], []

    def run(self, net_input):
        x = np.asarray(net_input, dtype=np.float32)
        _, _, h, w = x.shape
        hh, ww = math.ceil(h / 8), math.ceil(w / 8)
        padded = np.zeros((3, hh * 8, ww * 8), np.float32)
        padded[:, :h, :w] = x[0]
        pooled = padded.reshape(3, hh, 8, ww, 8).mean(axis=(2, 4)) / max(1.0, float(np.abs(x).max()))
        c = np.arange(NUM_TEMPLATES)[:, None, None]
        cls = (1.5 * pooled[np.arange(NUM_TEMPLATES) % 3] - 0.3 * (c % 5)
               + 0.4 * np.sin(0.9 * c + np.arange(ww)[None, None, :]))
        reg = 0.2 * np.tanh(np.concatenate([pooled] * 33 + [pooled[:1]]))[: 4 * NUM_TEMPLATES]
        scores = np.concatenate([cls, reg]).astype(np.float32)[None]
        self.inputs.append(x.copy())
        self.outputs.append(scores)
        return scores


class ReplayRunner:
    """Returns the recorded score maps in order, after checking the device input against the
    recorded host input; hands them back as numpy, DeviceArray or a raw device pointer."""

    def __init__(self, recorded, kind, stream):
        self.recorded, self.kind, self.stream = recorded, kind, stream
        self.index, self.buffers = 0, []

    def run(self, net_input):
        assert isinstance(net_input, DeviceArray)
        np.testing.assert_allclose(np.asarray(net_input), self.recorded.inputs[self.index], rtol=0, atol=1e-4)
        scores = self.recorded.outputs[self.index]
        self.index += 1
        if self.kind == "numpy":
            return scores
        buf = DeviceBuffer(scores.nbytes)
        buf.upload(scores, self.stream)
        self.buffers.append(buf)
        return DeviceArray(buf.ptr, scores.shape, np.float32, owner=buf) if self.kind == "device" else buf.ptr


@pytest.mark.parametrize("kind", ["numpy", "device", "pointer"])
@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
def test_detector_with_cuda_stages_matches_host(kind, variant):
    config = DetectorConfig.for_variant(variant, prob_thresh=0.4)
    image = np.random.default_rng(13).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image[30:70, 40:100] = (230, 40, 40)  # some structure for the pooled "network"
    recorder = RecordingRunner()
    want = Detector(recorder, config).detect(image)
    assert len(recorder.outputs) >= 3 and len(want) > 0

    pre, post = cuda_stages(config)
    replay = ReplayRunner(recorder, kind, pre.stream)
    if kind == "pointer" and variant != "pytorch":
        # A raw pointer has no shape, and this variant's maps are not ceil(h/8) x ceil(w/8).
        with pytest.raises(TinyFacesError, match="raw device pointer has no shape"):
            Detector(replay, config, preprocessor=pre, postprocessor=post).detect(image)
        pre.close()
        post.close()
        return
    got = Detector(replay, config, preprocessor=pre, postprocessor=post).detect(image)
    assert replay.index == len(recorder.outputs)
    assert_same_detections(got, want)
    # A second image of the same size reuses the buffers.
    recorder2 = RecordingRunner()
    image2 = image[::-1].copy()
    want2 = Detector(recorder2, config).detect(image2)
    replay2 = ReplayRunner(recorder2, kind, pre.stream)
    got2 = Detector(replay2, config, preprocessor=pre, postprocessor=post).detect(image2)
    assert_same_detections(got2, want2)
    pre.close()
    post.close()


def test_score_map_from_another_stream_is_read_before_add_level_returns(stream):
    """A producer on its own stream (a TensorRT runner) rewrites its one output buffer for the
    next level right after add_level: the decode must have read the buffer by then."""
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (0.0, 0.5, 1.0))
    maps = _random_maps(np.random.default_rng(16), levels, cls_mean=0.0)
    rt = cuda_device.runtime()
    producer = Stream()
    shared = DeviceBuffer(max(m.nbytes for m in maps))
    post = CudaPostprocessor(config, stream=stream)
    post.reset(*IMAGE_HW)
    for m, level in zip(maps, levels):
        shared.upload(m, producer)
        post.add_level(DeviceArray(shared.ptr, m.shape, np.float32, owner=shared, stream=producer), level)
        assert int(rt.cudaStreamQuery(stream.handle)[0]) == 0  # the decode has finished
        shared.upload(np.full(m.shape, 50.0, np.float32), producer)  # the producer's next output
    got = post.finish()
    assert_same_detections(got, postprocess_levels(maps, levels, IMAGE_HW, config))
    post.close()
    shared.free()
    producer.close()


def test_postprocessor_grows_its_nms_size(stream):
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(14), levels, cls_mean=0.0)
    post = CudaPostprocessor(config, stream=stream, max_candidates=16)
    post.reset(*IMAGE_HW)
    for m, level in zip(maps, levels):
        post.add_level(m, level)
    got = post.finish()
    count = _candidate_count(maps, levels, config)
    assert post.last_stats["num_candidates"] == count > 16
    assert post.max_candidates >= count
    assert_same_detections(got, postprocess_levels(maps, levels, IMAGE_HW, config))
    post.close()


def test_postprocessor_refuses_more_than_the_nms_limit(stream):
    assert LIB.device_count() >= 1
    config = DetectorConfig()
    level = PyramidLevel(0, 0.0, 1.0, 1040, 1040)  # 130 x 130 cells x 8 active templates
    scores = np.zeros((1, 125, 130, 130), np.float32)
    scores[0, :NUM_TEMPLATES] = 3.0
    post = CudaPostprocessor(config, stream=stream)
    post.reset(1040, 1040)
    post.add_level(scores, level)
    with pytest.raises(TinyFacesError, match=r"135200 candidates exceed the GPU NMS limit of 131072"):
        post.finish()
    post.close()


def test_preprocessor_reuploads_a_mutated_image(stream):
    config = DetectorConfig()
    pre = CudaPreprocessor(config, stream=stream)
    image = np.random.default_rng(15).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    level = PyramidLevel(0, 0.0, 1.0, 40, 50)
    first = np.asarray(pre.prepare(image, level))
    image[:] = 255 - image  # same array object, new content, level 0 again
    second = np.asarray(pre.prepare(image, level))
    np.testing.assert_allclose(second, normalize(resize_bilinear_aa(image, 40, 50), config), rtol=0, atol=1e-4)
    assert not np.allclose(first, second)
    pre.close()


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
