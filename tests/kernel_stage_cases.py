"""The CUDA stages (CudaPreprocessor, CudaPostprocessor) in the Detector, against the host path.

Not collected by itself: tests/test_kernels_gpu.py runs these on a GPU and
tests/test_kernels_cpu.py over host memory and the CPU build of the kernels (its ``stream``
fixture installs helpers_kernels.use_cpu_build_for_cuda_stages, which points
``cuda_device`` at tests/host_cudart.py).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from helpers_kernels import assert_same_detections, candidate_count, levels_at, random_maps
from kernel_abi_cases import IMAGE_HW
from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.errors import NonFiniteScoresError, TinyFacesError
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities
from tinyfaces_trt.kernels import binding
from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.runtime.backends import cuda_stages as stages
from tinyfaces_trt.runtime.pipeline import Detector
from tinyfaces_trt.runtime.postprocess import postprocess_levels
from tinyfaces_trt.runtime.preprocess import normalize
from tinyfaces_trt.runtime.resize import resize_bilinear_aa


class RecordingRunner(RunnerBase):
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


class ReplayRunner(RunnerBase):
    """Returns the recorded score maps in order, after checking the device input against the
    recorded host input; hands them back as numpy or as a DeviceArray (a device-I/O runner on
    the stages' stream)."""

    capabilities = RunnerCapabilities(device_io=True)

    def __init__(self, recorded, kind, stream):
        self.recorded, self.kind, self.cuda_stream = recorded, kind, stream
        self.index, self.buffers = 0, []

    @property
    def stream(self):
        return self.cuda_stream.handle

    def run(self, net_input):
        assert isinstance(net_input, cuda_device.DeviceArray)
        np.testing.assert_allclose(net_input.download(), self.recorded.inputs[self.index], rtol=0, atol=1e-4)
        scores = self.recorded.outputs[self.index]
        self.index += 1
        if self.kind == "numpy":
            return scores
        buf = stages.DeviceBuffer(scores.nbytes)
        buf.upload(scores, self.cuda_stream)
        self.buffers.append(buf)
        return cuda_device.DeviceArray(buf.ptr, scores.shape, np.float32, owner=buf)


@pytest.mark.parametrize("kind", ["numpy", "device"])
@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
def test_detector_with_cuda_stages_matches_host(stream, kind, variant):
    config = DetectorConfig.for_variant(variant, prob_thresh=0.4)
    image = np.random.default_rng(13).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image[30:70, 40:100] = (230, 40, 40)  # some structure for the pooled "network"
    recorder = RecordingRunner()
    want = Detector(recorder, config).detect(image)
    assert len(recorder.outputs) >= 3 and len(want) > 0

    pre, post = stages.cuda_stages(config)
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


class NonFiniteRunner(RunnerBase):
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


def test_detector_with_cuda_stages_refuses_non_finite_scores_as_the_host_path(stream):
    config = DetectorConfig(prob_thresh=0.4)
    image = np.random.default_rng(18).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    host = NonFiniteRunner()
    with pytest.raises(NonFiniteScoresError, match=r"pyramid level 1 .* holds 4 NaN or infinite "
                                                   r"value\(s\) .* no detections were produced"):
        Detector(host, config).detect(image)
    pre, post = stages.cuda_stages(config)
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


class BatchDeviceRunner(RunnerBase):
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
        buf = stages.DeviceBuffer(scores.nbytes)
        buf.upload(scores, self.cuda_stream)
        self.buffers.append(buf)
        return cuda_device.DeviceArray(buf.ptr, scores.shape, np.float32, owner=buf)


def test_detect_batch_on_the_gpu_equals_host_detection_per_image(stream):
    from tinyfaces_trt.runtime.backends import detector_for

    config = DetectorConfig(prob_thresh=0.4)
    rng = np.random.default_rng(21)
    images = [rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for _ in range(3)]
    for i, image in enumerate(images):
        image[20 + 10 * i:60, 30:90] = (230, 40, 40)
    want = [Detector(RecordingRunner(), config).detect(image) for image in images]
    assert all(len(w) > 0 for w in want)
    with detector_for(BatchDeviceRunner(stream), config, gpu_stages=True) as detector:
        got = detector.detect_batch(images)
        again = detector.detect_batch(images[::-1])  # buffers reused, order follows the input
    assert len(got) == len(again) == len(images)
    for g, w in zip(got, want, strict=True):
        assert_same_detections(g, w)
    for g, w in zip(again, want[::-1], strict=True):
        assert_same_detections(g, w)


def test_postprocessor_grows_its_nms_size(stream):
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(14), levels, cls_mean=0.0)
    post = stages.CudaPostprocessor(config, stream=stream, max_candidates=16)
    post.reset(*IMAGE_HW)
    for m, level in zip(maps, levels):
        post.add_level(m, level)
    got = post.finish()
    count = candidate_count(maps, levels, config)
    assert post.last_stats["num_candidates"] == count > 16
    assert post.max_candidates >= count
    assert_same_detections(got, postprocess_levels(maps, levels, IMAGE_HW, config))
    post.close()


def test_preprocessor_reuploads_a_mutated_image(stream):
    config = DetectorConfig()
    pre = stages.CudaPreprocessor(config, stream=stream)
    image = np.random.default_rng(15).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    level = PyramidLevel(0, 0.0, 1.0, 40, 50)
    first = pre.prepare(image, level).download()
    image[:] = 255 - image  # same array object, new content, level 0 again
    second = pre.prepare(image, level).download()
    want = normalize(resize_bilinear_aa(image, 40, 50), config)
    np.testing.assert_allclose(second, want, rtol=0, atol=1e-4)
    assert not np.allclose(first, second)
    pre.close()


@pytest.mark.parametrize("threads", [1, 3])
def test_preprocessor_uploads_a_batch_chunk_by_chunk(stream, monkeypatch, threads):
    """The staging copy goes in chunks (here of about 1000 bytes, across image borders), each
    uploaded to its place as it is copied; the levels are the host path's."""
    from tinyfaces_trt.runtime.backends import staging

    import threading

    monkeypatch.setattr(staging, "CHUNK_BYTES", 1000)
    uploads, copiers = [], set()
    real_upload, real_copy = cuda_device.DeviceBuffer.upload_from, staging._copy_range

    def copy_range(*args):
        copiers.add(threading.current_thread().name.startswith("tinyfaces-staging"))
        real_copy(*args)

    monkeypatch.setattr(staging, "_copy_range", copy_range)

    def upload_from(self, host_ptr, nbytes, stream=None, offset=0):
        uploads.append((offset, nbytes))
        real_upload(self, host_ptr, nbytes, stream, offset)

    monkeypatch.setattr(cuda_device.DeviceBuffer, "upload_from", upload_from)
    config = DetectorConfig()
    pre = stages.CudaPreprocessor(config, stream=stream, staging_threads=threads)
    assert pre.staging_threads == threads
    images = [np.random.default_rng(40 + i).integers(0, 256, (37, 53, 3), dtype=np.uint8)
              for i in range(3)]
    for level in (PyramidLevel(0, 0.0, 1.0, 37, 53), PyramidLevel(1, -1.0, 0.5, 19, 27)):
        got = pre.prepare_batch(images, level).download()
        want = np.concatenate([normalize(resize_bilinear_aa(im, level.height, level.width),
                                         config) for im in images])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    nbytes = 3 * 37 * 53 * 3
    assert uploads == [(s, e - s) for s, e in staging.chunk_ranges(nbytes)]  # once per image
    assert len(uploads) == 16
    assert copiers == ({False, True} if threads > 1 else {False})  # helpers copied too
    pre.close()


def test_preprocessor_makes_each_resize_plan_once(stream, monkeypatch):
    """The filter coefficients of a source and level size get a plan at the pair's second
    use (sizes that never repeat make none), and are not computed again after it (a kernel
    less per level and image); past RESIZE_PLANS plans all are dropped and made again as
    needed, and every level stays the host path's."""
    config = DetectorConfig()
    pre = stages.CudaPreprocessor(config, stream=stream)
    made = []
    real_plan = pre.lib.resize_plan

    def resize_plan(*args, **kwargs):
        made.append(tuple(args[:4]))
        real_plan(*args, **kwargs)

    monkeypatch.setattr(pre.lib, "resize_plan", resize_plan)
    monkeypatch.setattr(stages, "RESIZE_PLANS", 3)
    rng = np.random.default_rng(18)

    def run(h, w):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for level in (PyramidLevel(0, 0.0, 1.0, h, w), PyramidLevel(1, -1.0, 0.5, h // 2, w // 2)):
            got = pre.prepare(image, level).download()
            want = normalize(resize_bilinear_aa(image, level.height, level.width), config)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    run(30, 40)
    assert made == []  # a first use: the coefficients made in the resize call
    run(30, 40)
    run(30, 40)
    assert made == [(30, 40, 30, 40), (30, 40, 15, 20)]
    run(36, 44)
    run(36, 44)  # a third plan, then the fourth drops all three first
    run(30, 40)
    assert made == [(30, 40, 30, 40), (30, 40, 15, 20), (36, 44, 36, 44), (36, 44, 18, 22),
                    (30, 40, 30, 40), (30, 40, 15, 20)]
    assert len(pre._plans) == 3
    pre.close()
    assert pre._plans == {}


def test_preprocessor_resizes_into_the_runners_own_input_buffers(stream):
    """input_buffers (a runner's input_buffer): a level whose shape the runner has a buffer
    for goes straight into it (no level buffer here, no copy in the runner); a second level of
    the same shape in one pyramid, and shapes the runner has none for, get buffers here."""
    config = DetectorConfig()
    runner_buffers = {}

    def input_buffer(shape):
        if shape != (1, 3, 20, 26):
            return None
        if shape not in runner_buffers:
            buf = cuda_device.DeviceBuffer(4 * math.prod(shape))
            runner_buffers[shape] = cuda_device.DeviceArray(buf.ptr, shape, np.float32, owner=buf)
        return runner_buffers[shape]

    pre = stages.CudaPreprocessor(config, stream=stream, input_buffers=input_buffer)
    rng = np.random.default_rng(19)
    levels = [PyramidLevel(0, 0.0, 1.0, 40, 52), PyramidLevel(1, -1.0, 0.5, 20, 26),
              PyramidLevel(2, -1.0, 0.5, 20, 26)]  # two levels of one shape (a stand-in)
    for image in (rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(2)):
        inputs = [pre.prepare(image, level) for level in levels]
        want = [normalize(resize_bilinear_aa(image, lv.height, lv.width), config) for lv in levels]
        theirs = runner_buffers[(1, 3, 20, 26)]
        assert inputs[1].ptr == theirs.ptr and inputs[1].owner is theirs
        assert inputs[0].ptr == pre._levels[0].ptr and inputs[2].ptr == pre._levels[2].ptr
        assert sorted(pre._levels) == [0, 2]  # none made for level 1
        for got, expected in zip(inputs, want):
            np.testing.assert_allclose(got.download(), expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(theirs.download(), want[1], rtol=0, atol=1e-4)
    pre.close()
    runner_buffers[(1, 3, 20, 26)].owner.free()


def test_preprocessor_refuses_no_staging_threads(stream):
    with pytest.raises(ValueError, match="staging_threads = 0: expected 1 or more"):
        stages.CudaPreprocessor(DetectorConfig(), stream=stream, staging_threads=0)


def test_preprocessor_keeps_its_level_buffers_across_image_sizes(stream, monkeypatch):
    """A service alternating image sizes (or single images and batches) allocates level
    buffers only when a level grows past the largest seen; the inputs stay exact."""
    made = []

    class Counted(stages.DeviceBuffer):
        def __init__(self, nbytes):
            super().__init__(nbytes)
            if sys._getframe(1).f_code.co_name == "_destination":  # a level's, not a plan's
                made.append(nbytes)

    monkeypatch.setattr(stages, "DeviceBuffer", Counted)
    config = DetectorConfig()
    pre = stages.CudaPreprocessor(config, stream=stream)
    rng = np.random.default_rng(16)
    small, large = (rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 50), (60, 80)))

    def run(images):
        h, w = images[0].shape[:2]
        for level in (PyramidLevel(0, 0.0, 1.0, h, w), PyramidLevel(1, 1.0, 2.0, 2 * h, 2 * w)):
            got = pre.prepare_batch(images, level).download()
            want = np.concatenate([normalize(resize_bilinear_aa(im, level.height, level.width),
                                             config) for im in images])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    bytes_of = [4 * 3 * h * w for h, w in ((40, 50), (80, 100), (60, 80), (120, 160))]
    run([small])
    run([large])  # grows both levels
    assert made == bytes_of
    for images in ([small], [large], [small, small], [small], [large]):
        run(images)  # two small images (2 x 2000 px) fit the large one's (4800 px) buffers
    assert made == bytes_of
    run([large, large])
    assert made == bytes_of + [2 * b for b in bytes_of[2:]]
    pre.close()


def test_a_level_buffer_that_cannot_grow_is_not_used_again(stream, monkeypatch):
    """A request too large for the device's memory fails alone: the next image gets a buffer
    of its own, not the freed one (which would pass on a NULL or dangling pointer)."""
    config = DetectorConfig()
    pre = stages.CudaPreprocessor(config, stream=stream)
    rng = np.random.default_rng(17)
    small, large = (rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((40, 50), (60, 80)))
    level = lambda image: PyramidLevel(0, 0.0, 1.0, *image.shape[:2])  # noqa: E731
    pre.prepare(small, level(small))
    real = stages.DeviceBuffer

    def out_of_memory(nbytes):
        raise TinyFacesError(f"cudaMalloc({nbytes} bytes) failed: cudaErrorMemoryAllocation")

    monkeypatch.setattr(stages, "DeviceBuffer", out_of_memory)
    with pytest.raises(TinyFacesError, match="cudaErrorMemoryAllocation"):
        pre.prepare(large, level(large))
    monkeypatch.setattr(stages, "DeviceBuffer", real)
    got = pre.prepare(small, level(small)).download()
    np.testing.assert_allclose(got, normalize(resize_bilinear_aa(small, 40, 50), config),
                               rtol=0, atol=1e-4)
    pre.close()


def test_postprocessor_takes_more_than_the_old_nms_cap(stream):
    """135200 candidates: past ABI 1's 131072 cap, the NMS runs (no 'raise prob_thresh')."""
    config = DetectorConfig()
    level = PyramidLevel(0, 0.0, 1.0, 1040, 1040)  # 130 x 130 cells x 8 active templates
    scores = np.zeros((1, 125, 130, 130), np.float32)
    scores[0, :NUM_TEMPLATES] = 3.0
    post = stages.CudaPostprocessor(config, stream=stream)
    post.reset(1040, 1040)
    post.add_level(scores, level)
    got = post.finish()
    assert post.last_stats["num_candidates"] == 135200
    assert_same_detections(got, postprocess_levels([scores], [level], (1040, 1040), config))
    post.close()


@pytest.mark.parametrize("rule", list(binding.NMS_RULES))
def test_postprocessor_keeps_the_host_paths_boxes_with_every_nms_rule(stream, rule):
    """CudaPostprocessor(nms_rule=...): DEFAULT_NMS_RULE by default, each rule the same
    detections as the host path (two levels of random maps, about 1,100 candidates)."""
    config = DetectorConfig(prob_thresh=0.2, nms_thresh=0.4)
    levels = levels_at((90, 120), (-1.0, 0.0))
    maps = random_maps(np.random.default_rng(31), levels, cls_mean=-1.0)
    post = stages.CudaPostprocessor(config, stream=stream, nms_rule=binding.NMS_RULES[rule])
    default = stages.CudaPostprocessor(config, stream=stream)
    assert default.nms_rule == binding.NMS_RULES[stages.DEFAULT_NMS_RULE]
    default.close()
    post.reset(90, 120)
    for scores, level in zip(maps, levels):
        post.add_level(scores, level)
    got = post.finish()
    assert post.last_stats["num_candidates"] == candidate_count(maps, levels, config) > 500
    assert_same_detections(got, postprocess_levels(maps, levels, (90, 120), config))
    post.close()
    with pytest.raises(ValueError, match=r"nms_rule = 3: expected one of \{'walk-order': 0, "):
        stages.CudaPostprocessor(config, stream=stream, nms_rule=3)


def test_postprocessor_replays_its_nms_as_a_cuda_graph(stream, nms_graphs):
    """CudaPostprocessor's NMS captured at its buffers' second use and replayed (graphs stay
    on), with the host path's boxes and those of the launches one by one, at two image sizes
    and with the NMS size growing (4096 -> 8192). ``nms_graphs``: real CUDA graphs on a GPU,
    tests/test_kernels_cpu.py's ReplayingCapture on the CPU build (which replays the very
    calls captured, as a graph replays the values baked in)."""
    config = DetectorConfig(prob_thresh=0.3)
    rng = np.random.default_rng(31)
    sizes = (IMAGE_HW, (IMAGE_HW[0] + 16, IMAGE_HW[1] + 24))
    graphs = nms_graphs(stages.CudaPostprocessor(config, stream=stream, max_candidates=4096))
    launches = stages.CudaPostprocessor(config, stream=stream, max_candidates=4096,
                                        nms_graphs=False)
    for cls_mean in (-1.5, -1.5, -1.0, 0.0, 0.0):
        for hw in sizes:
            levels = levels_at(hw, (0.0, 1.0))
            maps = random_maps(rng, levels, cls_mean=cls_mean)
            want = postprocess_levels(maps, levels, hw, config)
            for post in (graphs, launches):
                post.reset(*hw)
                for m, level in zip(maps, levels):
                    post.add_level(m, level)
                assert_same_detections(post.finish(), want)
                assert post.last_stats["num_candidates"] == candidate_count(maps, levels, config)
    assert graphs.max_candidates == launches.max_candidates == 8192
    assert graphs.nms_graphs and graphs.nms_graphs_off is None
    # a graph per image size and NMS size (the key holds the size since C ABI 5: its
    # parameters clip to the image): 2 sizes x NMS sizes 4096, 8192
    assert sum(g is not None for g in graphs._nms_graphs.values()) == 4
    assert launches.nms_graphs_off == "nms_graphs=False" and not launches._nms_graphs
    graphs.close()
    launches.close()


#: The cases, collected by tests/test_kernels_gpu.py and tests/test_kernels_cpu.py
#: (helpers_kernels.collect_cases): a case added here runs in both.
__all__ = [name for name in dict(globals()) if name.startswith("test_")]
