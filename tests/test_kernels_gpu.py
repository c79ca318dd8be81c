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
import time
from pathlib import Path

import numpy as np
import pytest

from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.core.runner import RunnerCapabilities
from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.runtime.decode import active_templates
from tinyfaces_trt.core.errors import BackendUnavailableError, NonFiniteScoresError
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
        return boxes, {k: int(stats[0][k]) for k in binding.NMS_STATS_DTYPE.names}


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
    assert got.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": 0, "overflow": 0, "nonfinite": 0}
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


def _finite_cells_reference(monkeypatch, maps, levels, image_hw, config):
    """numpy's detections over the finite cells only (its NaN/inf refusal switched off): what
    the kernels still write next to a nonzero ``nonfinite``."""
    from tinyfaces_trt.runtime import decode

    with monkeypatch.context() as m:
        m.setattr(decode, "check_finite_scores", lambda score_map, level: None)
        return postprocess_levels(maps, levels, image_hw, config)


def _nonfinite(maps):
    return int(sum((~np.isfinite(m)).sum() for m in maps))


def test_non_finite_values(stream, monkeypatch):
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(7), levels, cls_mean=0.0)
    m = maps[0]
    m[0, 4:12, 0, :] = np.nan          # NaN logits never pass
    m[0, 4:12, 1, :] = np.inf          # +inf logits pass, best first
    m[0, 75 + 5, 2, :] = np.inf        # infinite width: dropped
    m[0, 25 + 6, 3, :] = np.nan        # NaN offset: dropped
    m[0, 100 + 7, 4, :] = 800.0        # exp overflows in float32 and float64 alike: dropped
    with pytest.raises(NonFiniteScoresError):
        postprocess_levels(maps, levels, IMAGE_HW, config)  # the host path refuses the image
    want = _finite_cells_reference(monkeypatch, maps, levels, IMAGE_HW, config)
    got, stats = _gpu_detections(stream, maps, levels, config, IMAGE_HW)
    assert stats["nonfinite"] == _nonfinite(maps) == 8 * 15 * 2 + 15 + 15
    assert_same_detections(got, want)
    assert np.isfinite(got).all() and got[0, 4] == 1.0


def test_non_finite_count_covers_every_channel_and_inactive_templates(stream, monkeypatch):
    """stats.nonfinite == numpy's count of non-finite values, wherever they are: cls and
    regression channels, active or inactive templates, partial warps; summed over levels."""
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (-1.0, 0.0, 1.0))  # maps 6x8, 12x15, 23x30 (partial warps)
    active = active_templates(levels[2].scale, config)
    assert not active[0] and active[5]
    maps = _random_maps(np.random.default_rng(17), levels, cls_mean=0.0)
    m = maps[2]
    m[0, 5, 3, 4] = np.nan              # cls of an active template
    m[0, 5, 3, 5] = -np.inf
    m[0, 50 + 5, 7, 7] = np.inf         # ty of an active template, on a cell that passes: its
    m[0, 5, 7, 7] = 5.0                 # box is dropped
    m[0, 100 + 9, 22, 29] = np.nan      # th, last cell of the map
    m[0, 0, 0, 0] = np.nan              # inactive template 0: cls and every regression
    m[0, 25:125:25, 10, 3] = np.inf
    m[0, 0:125, 11, 11] = np.nan        # all five values of several threads, one warp
    maps[0][0, 124, 5, 7] = -np.inf     # another level, last value of its map
    want_count = _nonfinite(maps)
    assert want_count == 4 + 1 + 4 + 125 + 1
    got, stats = _gpu_detections(stream, maps, levels, config, IMAGE_HW)
    assert stats["nonfinite"] == want_count
    assert_same_detections(got, _finite_cells_reference(monkeypatch, maps, levels, IMAGE_HW, config))

    nan_map = [np.full((1, 125, 12, 15), np.nan, np.float32)]  # every value of a level
    got, stats = _gpu_detections(stream, nan_map, levels[1:2], config, IMAGE_HW, max_candidates=64)
    assert got.shape == (0, 5) and stats["num_candidates"] == 0
    assert stats["nonfinite"] == 125 * 12 * 15


def test_overflow_is_reported_then_recovered(stream):
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (0.0, 1.0))
    maps = _random_maps(np.random.default_rng(8), levels, cls_mean=0.0)
    count = _candidate_count(maps, levels, config)
    want = postprocess_levels(maps, levels, IMAGE_HW, config)

    small = RawRun(stream, maps, levels, config, capacity=count - 1)
    boxes, stats = small.nms(IMAGE_HW, count)
    assert boxes.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": count, "overflow": binding.OVERFLOW_CAPACITY,
                     "nonfinite": 0}

    exact = RawRun(stream, maps, levels, config, capacity=count)
    boxes, stats = exact.nms(IMAGE_HW, count - 1)  # the NMS size is too small this time
    assert boxes.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": count, "overflow": binding.OVERFLOW_NMS,
                     "nonfinite": 0}
    boxes, stats = exact.nms(IMAGE_HW, count)      # same candidates, re-run NMS only
    assert stats["overflow"] == 0 and stats["num_candidates"] == count
    assert_same_detections(boxes, want)


@pytest.mark.parametrize("max_candidates", [700, 4097, 65536, 131073, 2_000_000])
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
        assert_same_detections(boxes, postprocess_levels(maps, levels, IMAGE_HW, config))
    broken = [m.copy() for m in maps_a]
    broken[1][0, 3, 0, :] = np.nan
    assert results(broken)[1] == broken[1].shape[3]
    assert results(maps_a)[1] == 0  # the replayed reset zeroes the non-finite counter too
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
    recorded host input; hands them back as numpy or as a DeviceArray (a device-I/O runner on
    the stages' stream)."""

    def __init__(self, recorded, kind, stream):
        self.recorded, self.kind, self.stream = recorded, kind, stream
        self.index, self.buffers = 0, []

    def run(self, net_input):
        assert isinstance(net_input, DeviceArray)
        np.testing.assert_allclose(net_input.download(), self.recorded.inputs[self.index], rtol=0, atol=1e-4)
        scores = self.recorded.outputs[self.index]
        self.index += 1
        if self.kind == "numpy":
            return scores
        buf = DeviceBuffer(scores.nbytes)
        buf.upload(scores, self.stream)
        self.buffers.append(buf)
        return DeviceArray(buf.ptr, scores.shape, np.float32, owner=buf)


@pytest.mark.parametrize("kind", ["numpy", "device"])
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


class NonFiniteRunner:
    """A stand-in network whose second level's map holds 4 NaN / inf values (an inactive
    template's cls, an active one's cls and ty, a th channel); it ignores its input, so it
    serves host and device inputs alike."""

    def __init__(self):
        self.calls = 0

    def run(self, net_input):
        _, _, h, w = net_input.shape
        hh, ww = math.ceil(h / 8), math.ceil(w / 8)
        scores = np.random.default_rng(hh * 1000 + ww).normal(-1.0, 1.5, (1, 125, hh, ww))
        scores = scores.astype(np.float32)
        if self.calls == 1:
            scores[0, [0, 5, 50 + 5, 100 + 6], 0, 0] = [np.nan, -np.inf, np.inf, np.nan]
        self.calls += 1
        return scores


def test_detector_with_cuda_stages_refuses_non_finite_scores_as_the_host_path():
    config = DetectorConfig(prob_thresh=0.4)
    image = np.random.default_rng(18).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    host = NonFiniteRunner()
    with pytest.raises(NonFiniteScoresError, match=r"pyramid level 1 .* holds 4 NaN or infinite "
                                                   r"value\(s\) .* no detections were produced"):
        Detector(host, config).detect(image)
    pre, post = cuda_stages(config)
    device = NonFiniteRunner()
    detector = Detector(device, config, preprocessor=pre, postprocessor=post)
    with pytest.raises(NonFiniteScoresError) as info:
        detector.detect(image)
    assert str(info.value) == (
        "the network's score maps of this image held 4 NaN or infinite value(s) (counted on the "
        "GPU over all pyramid levels): the weights, the export or the backend is broken; no "
        "detections were produced for this image")
    assert device.calls == len(detector.plan(120, 160)) >= 3 and post.last_stats["nonfinite"] == 4
    device.calls = 2  # the next image is finite: the counter was reset
    assert detector.detect(image).shape[1] == 5 and post.last_stats["nonfinite"] == 0
    pre.close()
    post.close()


class BatchDeviceRunner:
    """A device-I/O, batch-capable stand-in: runs RecordingRunner's network image by image on
    a downloaded copy of the batch and hands the (N, 125, h', w') maps back on the device."""

    capabilities = RunnerCapabilities(device_io=True, batch=True)

    def __init__(self, stream):
        self.cuda_stream, self.net, self.buffers = stream, RecordingRunner(), []

    @property
    def stream(self):
        return self.cuda_stream.handle

    def run(self, net_input):
        x = net_input.download()
        scores = np.concatenate([self.net.run(x[i:i + 1]) for i in range(x.shape[0])])
        buf = DeviceBuffer(scores.nbytes)
        buf.upload(scores, self.cuda_stream)
        self.buffers.append(buf)
        return DeviceArray(buf.ptr, scores.shape, np.float32, owner=buf)


def test_detect_batch_on_the_gpu_equals_host_detection_per_image(stream):
    from tinyfaces_trt.runtime.backends import detector_for

    config = DetectorConfig(prob_thresh=0.4)
    rng = np.random.default_rng(21)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(images):
        image[20 + 10 * i:60, 30:90] = (230, 40, 40)
    want = [Detector(RecordingRunner(), config).detect(image) for image in images]
    assert sum(len(w) for w in want) > 0
    with detector_for(BatchDeviceRunner(stream), config, gpu_stages=True) as detector:
        got = detector.detect_batch(images)
        again = detector.detect_batch(images[::-1])  # buffers reused, order follows the input
    for g, w in zip(got, want):
        assert_same_detections(g, w)
    for g, w in zip(again, want[::-1]):
        assert_same_detections(g, w)


def test_score_map_from_another_stream_is_ordered_by_events(stream):
    """A producer on its own stream (a TensorRT runner) rewrites its one output buffer for the
    next level right after add_level. The stages order it with CUDA events (no host wait): the
    decode waits for the producer's map, and the producer's next write waits for the decode."""
    config = DetectorConfig(prob_thresh=0.3)
    levels = _levels(IMAGE_HW, (0.0, 0.5, 1.0))
    maps = _random_maps(np.random.default_rng(16), levels, cls_mean=0.0)
    producer = Stream()
    shared = DeviceBuffer(max(m.nbytes for m in maps))
    post = CudaPostprocessor(config, stream=stream, runner_stream=producer)
    post.reset(*IMAGE_HW)
    garbage = [np.full(m.shape, 50.0, np.float32) for m in maps]
    for m, junk, level in zip(maps, garbage, levels):
        shared.upload(m, producer)
        post.add_level(DeviceArray(shared.ptr, m.shape, np.float32, owner=shared), level)
        shared.upload(junk, producer)  # the producer's next output, queued at once
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


def test_postprocessor_takes_more_than_the_old_nms_cap(stream):
    """135200 candidates: past ABI 1's 131072 cap, the NMS runs (no 'raise prob_thresh')."""
    assert LIB.device_count() >= 1
    config = DetectorConfig()
    level = PyramidLevel(0, 0.0, 1.0, 1040, 1040)  # 130 x 130 cells x 8 active templates
    scores = np.zeros((1, 125, 130, 130), np.float32)
    scores[0, :NUM_TEMPLATES] = 3.0
    post = CudaPostprocessor(config, stream=stream)
    post.reset(1040, 1040)
    post.add_level(scores, level)
    got = post.finish()
    assert post.last_stats["num_candidates"] == 135200
    assert_same_detections(got, postprocess_levels([scores], [level], (1040, 1040), config))
    post.close()


# --- uncapped NMS on crafted candidate buffers (the adversarial cases of test_nms_uncapped.py) --

def _emulation():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "kernels" / "nms_emulation.py"
    spec = importlib.util.spec_from_file_location("tinyfaces_nms_emulation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _candidate_buffer(boxes, logits, keys, capacity):
    """Host image of a candidate buffer (layout of kernels/src/candidates.cuh)."""
    n = len(boxes)
    align = lambda v: (v + 255) // 256 * 256  # noqa: E731
    raw = np.zeros(LIB.candidates_size(capacity), np.uint8)
    raw[:4] = np.array([n], np.uint32).view(np.uint8)
    key_bytes = _emulation().sort_keys(logits, keys).astype("<u8").view(np.uint8)
    raw[256:256 + key_bytes.size] = key_bytes
    start = 256 + align(8 * capacity)
    box_bytes = np.ascontiguousarray(boxes, np.float32).view(np.uint8).ravel()
    raw[start:start + box_bytes.size] = box_bytes
    return raw


def _gpu_nms_on(stream, boxes, logits, keys, thresh, offset, max_candidates=None, lookahead=False):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    logits = np.asarray(logits, np.float32)
    keys = np.asarray(keys, np.uint32)
    n = len(boxes)
    m = max_candidates or max(1, n)
    capacity = max(1, n)
    host = _candidate_buffer(boxes, logits, keys, capacity)
    ws_bytes = LIB.nms_workspace_size(m)
    with DeviceBuffer(host.nbytes) as cand, DeviceBuffer(ws_bytes) as ws, \
            DeviceBuffer(m * 20) as out, DeviceBuffer(16) as stats_buf:
        cand.upload(host, stream)
        params = binding.nms_params(thresh, offset, False, 1 << 20, 1 << 20, lookahead)
        LIB.nms(cand, capacity, params, m, ws, ws_bytes, out, stats_buf, stream)
        stats = np.zeros(1, binding.NMS_STATS_DTYPE)
        stats_buf.download(stats, stream)
        stream.synchronize()
        rows = np.empty((int(stats[0]["num_kept"]), 5), np.float32)
        if len(rows):
            out.download(rows, stream)
            stream.synchronize()
    assert int(stats[0]["overflow"]) == 0 and int(stats[0]["num_candidates"]) == n
    return rows


def _assert_gpu_kept(stream, boxes, logits, keys, thresh, offset):
    """The kernel keeps runtime.nms's boxes with both resolve rules (tf_nms_params.lookahead)."""
    from tinyfaces_trt.runtime.nms import nms

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    logits = np.asarray(logits, np.float32)
    want = nms(boxes.astype(np.float64), logits, np.asarray(keys, np.int64), thresh, offset)
    for lookahead in (False, True):
        rows = _gpu_nms_on(stream, boxes, logits, keys, thresh, offset, lookahead=lookahead)
        assert rows.shape == (len(want), 5), lookahead
        np.testing.assert_array_equal(rows[:, :4], boxes[want])  # copies, unclipped: exact
        np.testing.assert_allclose(rows[:, 4], 1 / (1 + np.exp(-logits[want].astype(np.float64))),
                                   rtol=0, atol=1e-6)


def _square_boxes(centres, sizes):
    c = np.asarray(centres, np.float64)
    s = np.asarray(sizes, np.float64)[:, None]
    return np.concatenate([c - s / 2, c + s / 2], 1).astype(np.float32)


@pytest.mark.parametrize("thresh", [0.0, 0.3, 1.0])
def test_uncapped_identical_boxes(stream, thresh):
    n = 20000
    boxes = np.tile(np.float32([[10, 20, 50, 70]]), (n, 1))
    _assert_gpu_kept(stream, boxes, np.zeros(n), np.arange(n)[::-1], thresh, 1.0)


@pytest.mark.parametrize("n", [1, 2, 5000])
def test_uncapped_chain(stream, n):
    x = np.arange(n, dtype=np.float64) * 6.0
    boxes = _square_boxes(np.stack([x, np.zeros(n)], 1), np.full(n, 10.0))
    _assert_gpu_kept(stream, boxes, -np.arange(n, dtype=np.float32), np.arange(n), 0.2, 0.0)


@pytest.mark.parametrize("thresh, offset", [(0.0, 1.0), (0.3, 1.0), (0.5, 0.0)])
def test_uncapped_nested_sizes_and_ties(stream, thresh, offset):
    rng = np.random.default_rng(21)
    n = 3000
    sizes = np.exp(rng.uniform(np.log(2), np.log(2000), n))
    boxes = _square_boxes(1000 + rng.normal(0, 1, (n, 2)) * sizes[:, None] * 0.3, sizes)
    logits = np.round(rng.normal(size=n) * 2) / 2
    _assert_gpu_kept(stream, boxes, logits, rng.permutation(n), thresh, offset)


def test_uncapped_border_and_degenerate_boxes(stream):
    rng = np.random.default_rng(22)
    n = 4000
    centres = np.concatenate([rng.uniform(-60, 60, (n // 2, 2)), rng.uniform(-1e5, 1e5, (n // 2, 2))])
    boxes = _square_boxes(centres, np.exp(rng.uniform(np.log(2), np.log(120), n)))
    boxes[:50, 2] = boxes[:50, 0]        # zero width (isolated with o = 0)
    boxes[50:60] = np.nan                # never produced by decode; isolated
    _assert_gpu_kept(stream, boxes, rng.normal(size=n), rng.permutation(n), 0.3, 0.0)


@pytest.mark.parametrize("base", [0.0, 12345.5, 6.0e4])
@pytest.mark.parametrize("t, o", [(0.3, 1.0), (0.5, 0.0), (0.01, 1.0), (0.999, 0.0)])
def test_uncapped_pairs_at_the_window_bounds_as_the_emulation(stream, base, t, o):
    """Box pairs at the walks' window and class bounds (tests/test_nms_uncapped.py's
    _edge_pairs), IoU within 1e-6 of t: the kernel keeps exactly the emulation's boxes (both
    are float32 with every operation rounded; the float64 oracle may differ there)."""
    from test_nms_uncapped import _edge_pairs

    rng = np.random.default_rng(int(base) + int(1000 * t))
    boxes = _edge_pairs(base, t, o, rng, classes=range(1, 30) if t == 0.3 else range(1, 10))
    n = len(boxes)
    logits, keys = rng.normal(size=n).astype(np.float32), rng.permutation(n).astype(np.uint32)
    want = _emulation().emulate_nms(boxes, logits, keys, t, o).kept
    for lookahead in (False, True):
        rows = _gpu_nms_on(stream, boxes, logits, keys, t, o, lookahead=lookahead)
        np.testing.assert_array_equal(rows[:, :4], boxes[want])


def test_uncapped_650k_candidates_detector_like(stream):
    """650k candidates (a 1080p pyramid at prob 0.03 has about this many) vs numpy."""
    rng = np.random.default_rng(23)
    n_faces, n = 6000, 650_000
    faces = rng.uniform(0, [1920, 1080], (n_faces, 2))
    fsize = np.exp(rng.uniform(np.log(8), np.log(300), n_faces))
    pick = rng.integers(0, n_faces, n)
    boxes = _square_boxes(faces[pick] + rng.normal(0, 0.08, (n, 2)) * fsize[pick, None],
                          fsize[pick] * np.exp(rng.normal(0, 0.1, n)))
    _assert_gpu_kept(stream, boxes, rng.normal(-2, 1, n), rng.permutation(n), 0.3, 1.0)


def test_uncapped_650k_from_a_1080p_pyramid(stream):
    """Decode + NMS of a 1080p pyramid of random maps with ~650k candidates at prob 0.03."""
    from tinyfaces_trt.core.pyramid import plan_pyramid

    config = DetectorConfig(prob_thresh=0.03)
    levels = plan_pyramid(1080, 1920, config)
    maps = _random_maps(np.random.default_rng(24), levels, cls_mean=-3.9, cls_sigma=1.0)
    count = _candidate_count(maps, levels, config)
    assert count > 500_000
    got, stats = _gpu_detections(stream, maps, levels, config, (1080, 1920), max_candidates=count)
    assert stats["num_candidates"] == count
    assert_same_detections(got, postprocess_levels(maps, levels, (1080, 1920), config))


def test_uncapped_nms_benchmark_hook(stream):
    """Times tf_nms at 10k / 50k / 650k detector-like candidates (printed; targets in the
    README: decode + NMS <= 0.3 ms at 10k, <= 3 ms at 50k on H100/H200)."""
    rt = cuda_device.runtime()  # noqa: F841  (cuda-python is there: the module is not skipped)
    rng = np.random.default_rng(25)
    for n in (10_000, 50_000, 650_000):
        faces = rng.uniform(0, [1920, 1080], (max(1, n // 100), 2))
        pick = rng.integers(0, len(faces), n)
        fsize = np.exp(rng.uniform(np.log(8), np.log(300), len(faces)))
        boxes = _square_boxes(faces[pick] + rng.normal(0, 0.08, (n, 2)) * fsize[pick, None],
                              fsize[pick] * np.exp(rng.normal(0, 0.1, n)))
        host = _candidate_buffer(boxes, rng.normal(-2, 1, n).astype(np.float32), np.arange(n), n)
        ws_bytes = LIB.nms_workspace_size(n)
        with DeviceBuffer(host.nbytes) as cand, DeviceBuffer(ws_bytes) as ws, \
                DeviceBuffer(n * 20) as out, DeviceBuffer(16) as stats_buf:
            cand.upload(host, stream)
            params = binding.nms_params(0.3, 1.0, True, 1080, 1920)
            times = []
            for _ in range(6):
                stream.synchronize()
                start = time.perf_counter()
                LIB.nms(cand, n, params, n, ws, ws_bytes, out, stats_buf, stream)
                stream.synchronize()
                times.append(time.perf_counter() - start)
        print(f"tf_nms n={n}: median {1e3 * sorted(times[1:])[2]:.3f} ms (host-timed, incl. launch)")


def test_preprocessor_reuploads_a_mutated_image(stream):
    config = DetectorConfig()
    pre = CudaPreprocessor(config, stream=stream)
    image = np.random.default_rng(15).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    level = PyramidLevel(0, 0.0, 1.0, 40, 50)
    first = pre.prepare(image, level).download()
    image[:] = 255 - image  # same array object, new content, level 0 again
    second = pre.prepare(image, level).download()
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
