"""Decode + NMS + clipping vs direct transcriptions of the references, and hand-made cases."""

import math

import numpy as np
import pytest
import reference_transcription as ref

from tinyfaces_trt.core.config import NUM_CHANNELS, DetectorConfig
from tinyfaces_trt.runtime.decode import Candidates, active_templates, decode_level
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.runtime.nms import nms
from tinyfaces_trt.runtime.postprocess import (HostPostprocessor, finish_boxes,
                                                postprocess_levels, select_detections)
from tinyfaces_trt.core.pyramid import PyramidLevel

IMAGE_HW = (70, 90)
EXPONENTS = (-2.0, -1.0, 0.0, 0.5, 1.0)  # s < 1, s == 1, s > 1 (incl. a non-power-of-two)


def _levels(image_hw, exponents):
    out = []
    for i, e in enumerate(exponents):
        s = 2.0 ** e
        out.append(PyramidLevel(i, e, s, math.ceil(s * image_hw[0]), math.ceil(s * image_hw[1])))
    return out


def _random_case(seed, config, image_hw=IMAGE_HW, exponents=EXPONENTS):
    """Levels and (1, 125, h, w) float32 maps. Passing logits are distinct across all levels
    (so the references' unspecified tie order cannot matter) and none lies within 1e-5 of the
    threshold (the transcriptions threshold sigmoid(logit) in float64, the references in
    float32, the runtime the float32 logit; all agree away from the threshold, which has its
    own hand-made test: at prob_thresh 0.5 a logit below about 1.2e-7 rounds to exactly 0.5 in
    the references' float32 sigmoid and fails there, while the runtime keeps it)."""
    rng = np.random.default_rng(seed)
    levels = _levels(image_hw, exponents)
    sizes = [(math.ceil(lv.height / 8), math.ceil(lv.width / 8)) for lv in levels]
    total = sum(25 * h * w for h, w in sizes)
    cls = ((rng.permutation(total) + 0.5) / total * 8.0 - 4.0).astype(np.float32)
    t = float(config.logit_thresh)
    cls[np.abs(cls - t) < 1e-5] = t - 1.0
    maps, start = [], 0
    for h, w in sizes:
        reg = np.concatenate([rng.normal(0, 0.25, 50 * h * w), rng.normal(0, 0.4, 50 * h * w)])
        part = cls[start:start + 25 * h * w]
        start += 25 * h * w
        maps.append(np.concatenate([part, reg.astype(np.float32)]).reshape(1, NUM_CHANNELS, h, w))
    return levels, maps


def _reference(maps, levels, config, image_hw, use_nms_mex=False):
    return ref.reference_detections(maps, [lv.scale for lv in levels], config.templates,
                                    config.prob_thresh, config.nms_thresh, config.template_policy,
                                    image_hw, use_nms_mex=use_nms_mex)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
@pytest.mark.parametrize("prob_thresh,nms_thresh", [(0.5, 0.3), (0.85, 0.1)])
def test_postprocess_equals_transcription(seed, variant, prob_thresh, nms_thresh):
    config = DetectorConfig.for_variant(variant, prob_thresh=prob_thresh, nms_thresh=nms_thresh)
    levels, maps = _random_case(seed, config)
    ours = postprocess_levels(maps, levels, IMAGE_HW, config)
    expected, stacked = _reference(maps, levels, config, IMAGE_HW)
    assert 0 < len(expected) < len(stacked)  # NMS did suppress something
    assert ours.shape == (len(expected), 5) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[:, :4], expected[:, :4], rtol=0, atol=1e-4)
    np.testing.assert_allclose(ours[:, 4], 1 / (1 + np.exp(-expected[:, 4])), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
def test_postprocess_equals_transcription_with_nms_mex(variant):
    config = DetectorConfig.for_variant(variant, prob_thresh=0.8, nms_thresh=0.3)
    levels, maps = _random_case(11, config, image_hw=(33, 47), exponents=(-1.0, 0.0, 1.0))
    expected, _ = _reference(maps, levels, config, (33, 47), use_nms_mex=True)
    ours = postprocess_levels(maps, levels, (33, 47), config)
    assert len(expected) > 0
    np.testing.assert_allclose(ours[:, :4], expected[:, :4], rtol=0, atol=1e-4)


@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
@pytest.mark.parametrize("exponent", [-2.0, 0.0, 0.5, 1.0])
def test_decode_candidates_equal_get_bboxes(variant, exponent):
    config = DetectorConfig.for_variant(variant)
    (level,), (sm,) = _random_case(int(exponent * 10) + 50, config, exponents=(exponent,))
    cand = decode_level(sm, level, config, level_base=1000)
    s64 = sm.astype(np.float64)
    invalid = (ref.port_invalid_templates if variant == "pytorch" else ref.authors_invalid_templates)(
        level.scale, config.templates)
    boxes, scores, (fy, fx, fc) = ref.get_bboxes(
        s64[:, :25].transpose(0, 2, 3, 1), s64[:, 25:].transpose(0, 2, 3, 1),
        1 / (1 + np.exp(-s64[:, :25].transpose(0, 2, 3, 1))), config.templates,
        config.prob_thresh, {"stride": [8, 8], "offset": [-1, -1]}, level.scale, invalid)
    h, w = sm.shape[2:]
    ref_keys = 1000 + (fc * h + fy) * w + fx
    order = np.argsort(ref_keys)
    # Same set; ours is in canonical (c, y, x) order, i.e. sorted by key.
    np.testing.assert_array_equal(cand.keys, ref_keys[order])
    np.testing.assert_allclose(cand.boxes, boxes[order], rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(cand.logits.astype(np.float64), scores[order, 0])
    assert cand.boxes.dtype == np.float64 and cand.logits.dtype == np.float32
    assert cand.keys.dtype == np.int64


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.0, 2.0 ** 0.5, 2.0])
def test_active_templates_match_reference_policies(scale):
    t = DetectorConfig().templates
    for variant, invalid in (("pytorch", ref.port_invalid_templates(scale, t)),
                             ("matconvnet", ref.authors_invalid_templates(scale, t))):
        expected = np.ones(25, bool)
        expected[invalid] = False
        np.testing.assert_array_equal(active_templates(scale, DetectorConfig.for_variant(variant)),
                                      expected)
    # Shipped templates: Type A (4..11) always; Type B (18..24, scale 2) only for the
    # authors' policy at s > 1.
    b_used = active_templates(scale, DetectorConfig.for_variant("matconvnet"))[18:25]
    assert b_used.all() == (scale > 1) and b_used.any() == (scale > 1)
    assert not active_templates(scale, DetectorConfig())[18:25].any()


# ------------------------------------------------------------------ NMS
@pytest.mark.parametrize("seed,n", [(0, 1), (1, 300), (2, 1000)])
def test_nms_equals_py_cpu_nms_on_random_boxes(seed, n):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0, 300, (n, 2))
    size = rng.uniform(5, 60, (n, 2))
    boxes = np.hstack([centre - size / 2, centre + size / 2])
    logits = rng.permutation(n).astype(np.float32) / n  # distinct
    keep = nms(boxes, logits, np.arange(n), 0.3)
    expected = ref.py_cpu_nms(np.hstack([boxes, logits[:, None]]), 0.3)
    np.testing.assert_array_equal(keep, expected)
    assert keep.dtype == np.int64


def test_nms_tie_rule_mirrors_nms_mex():
    """nms_mex picks the last-inserted of tied scores; ours the lowest key. Feeding nms_mex
    the boxes in descending key order must therefore give exactly our picks, in our order."""
    rng = np.random.default_rng(4)
    n = 400
    centre = rng.uniform(0, 150, (n, 2))
    size = rng.uniform(10, 40, (n, 2))
    boxes = np.hstack([centre - size / 2, centre + size / 2])
    logits = rng.choice(np.array([0.5, 1.0, 1.5], np.float32), n)  # many ties
    keys = rng.permutation(10 * n)[:n]
    keep = nms(boxes, logits, keys, 0.3)
    by_key_desc = np.argsort(-keys)
    picks = ref.nms_mex(np.hstack([boxes[by_key_desc], logits[by_key_desc, None]]), 0.3)
    np.testing.assert_array_equal(keep, by_key_desc[picks])


def test_nms_ties_lower_key_first():
    box = [10.0, 10.0, 30.0, 30.0]
    two, equal2 = np.array([box, box]), np.array([1.0, 1.0], np.float32)
    assert nms(two, equal2, np.array([7, 3]), 0.3).tolist() == [1]
    assert nms(two, equal2, np.array([3, 7]), 0.3).tolist() == [0]
    # Chain A-B-C with equal logits: B overlaps A and C, A and C are disjoint.
    chain = np.array([[0, 0, 20, 20], [8, 0, 28, 20], [16, 0, 36, 20]], np.float64)
    equal = np.zeros(3, np.float32)
    assert nms(chain, equal, np.array([0, 1, 2]), 0.3).tolist() == [0, 2]
    assert nms(chain, equal, np.array([5, 1, 9]), 0.3).tolist() == [1]
    # A higher logit always wins regardless of key.
    assert nms(chain, np.array([0, 1, 0], np.float32), np.array([0, 9, 2]), 0.3).tolist() == [1]


def test_ties_between_disjoint_boxes_compare_as_sets_with_py_cpu_nms():
    # py_cpu_nms's order among equal scores is numpy's argsort (unspecified): compare sets.
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [2, 1, 12, 11], [101, 99, 111, 109]], float)
    logits = np.array([2.0, 2.0, 1.0, 1.0], np.float32)
    keep = nms(boxes, logits, np.arange(4), 0.3)
    expected = ref.py_cpu_nms(np.hstack([boxes, logits[:, None]]), 0.3)
    assert keep.tolist() == [0, 1]
    assert set(keep.tolist()) == set(expected.tolist())


def test_plus_one_convention_decides_suppression():
    # o=1: inter 5*10=50, areas 100 -> IoU 1/3 > 0.3; o=0: 36 / (81+81-36) = 0.2857 <= 0.3.
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float64)
    logits = np.array([2.0, 1.0], np.float32)
    keys = np.array([0, 1])
    assert nms(boxes, logits, keys, 0.3, pixel_offset=1.0).tolist() == [0]
    assert nms(boxes, logits, keys, 0.3, pixel_offset=0.0).tolist() == [0, 1]
    assert ref.py_cpu_nms(np.hstack([boxes, logits[:, None]]), 0.3).tolist() == [0]
    # Through the config: box_pixel_offset selects the convention.
    cand = Candidates(boxes, logits, keys)
    assert len(select_detections(cand, (50, 50), DetectorConfig())) == 1
    assert len(select_detections(cand, (50, 50), DetectorConfig(box_pixel_offset=0.0))) == 2


def test_nms_iou_equal_to_threshold_is_kept():
    # o=1: inter 10*5=50, union 150 -> IoU exactly 1/3 in both; strict > keeps both at 1/3.
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9]], np.float64)
    iou = 50 / (100 + 100 - 50)
    assert nms(boxes, np.array([2.0, 1.0], np.float32), np.array([0, 1]), iou).tolist() == [0, 1]


def test_nms_empty_single_and_nan_logits():
    empty = nms(np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.3)
    assert empty.shape == (0,) and empty.dtype == np.int64
    one = nms(np.array([[1.0, 2, 3, 4]]), np.array([0.1], np.float32), np.array([0]), 0.3)
    assert one.tolist() == [0]
    far = np.array([[0, 0, 5, 5], [50, 50, 55, 55], [100, 100, 105, 105]], float)
    logits = np.array([np.nan, 1.0, 3.0], np.float32)
    assert nms(far, logits, np.arange(3), 0.3).tolist() == [2, 1, 0]
    with pytest.raises(TinyFacesError, match="nms expects"):
        nms(np.zeros((3, 5)), np.zeros(3), np.zeros(3), 0.3)


# ------------------------------------------------------------------ decode hand-made cases
def _blank_map(h, w, fill=-10.0):
    sm = np.zeros((1, NUM_CHANNELS, h, w), np.float32)
    sm[0, :25] = fill
    return sm


def test_border_box_is_clipped():
    sm = _blank_map(4, 5)
    sm[0, 4, 0, 0] = 3.0  # template 4 (81 x 109 + 1), cell (0, 0): centre (-1, -1)
    level = PyramidLevel(0, 0.0, 1.0, 30, 40)
    raw = decode_level(sm, level, DetectorConfig())
    np.testing.assert_array_equal(raw.boxes, [[-1 - 41, -1 - 55, -1 + 41, -1 + 55]])
    out = postprocess_levels([sm], [level], (30, 40), DetectorConfig())
    np.testing.assert_array_equal(out, np.array([[0, 0, 39, 29, 1 / (1 + math.exp(-3.0))]], np.float32))
    unclipped = postprocess_levels([sm], [level], (30, 40), DetectorConfig(clip_boxes=False))
    np.testing.assert_array_equal(unclipped[:, :4], [[-42, -56, 40, 54]])


def test_probabilities_are_the_float64_sigmoid_rounded_once_to_float32():
    """select_detections evaluates sigmoid(logit) in float64 and rounds it to float32 once.
    A float32 sigmoid would be one ulp off for about 40 % of these logits, too little for
    the 1e-6 tolerance of the transcription tests to see."""
    rng = np.random.default_rng(0)
    sm = rng.normal(0, 0.3, (1, NUM_CHANNELS, 6, 6)).astype(np.float32)
    sm[0, 4:12] = rng.uniform(0.5, 6, (8, 6, 6)).astype(np.float32)  # 288 cells pass
    level = PyramidLevel(0, 0.0, 1.0, 48, 48)
    config = DetectorConfig(nms_thresh=1.0, score="logit")         # nothing suppressed
    logits = postprocess_levels([sm], [level], (48, 48), config)[:, 4]
    probs = postprocess_levels([sm], [level], (48, 48), config.with_(score="prob"))[:, 4]
    assert len(logits) > 250  # those whose boxes reach the image
    expected = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    np.testing.assert_array_equal(probs, expected)
    assert (expected != 1 / (1 + np.exp(-logits))).sum() > 50  # float32 math: the case bites



def test_matconvnet_box_is_clipped_to_the_release_pixels():
    """tiny_face_detector.m clips to [1, W] x [1, H] (1-based): the same cell on a 64x64
    image is [1, 1, 40, 54] there, [0, 0, 40, 54] in the port's 0-based pixels."""
    sm = _blank_map(8, 8)
    sm[0, 4, 0, 0] = 3.0  # template 4, cell (0, 0): [-42, -56, 40, 54] unclipped
    level = PyramidLevel(0, 0.0, 1.0, 64, 64)
    boxes = {v: postprocess_levels([sm], [level], (64, 64), DetectorConfig.for_variant(v))[:, :4]
             for v in ("pytorch", "matconvnet")}
    np.testing.assert_array_equal(boxes["matconvnet"], [[1, 1, 40, 54]])
    np.testing.assert_array_equal(boxes["pytorch"], [[0, 0, 40, 54]])


@pytest.mark.parametrize("variant, expected", [
    ("pytorch", [[0, 0, 40, 54, 0.9], [14, 0, 63, 63, 0.8], [0, 10, 0.5, 20, 0.7]]),
    ("matconvnet", [[1, 1, 40, 54, 0.9], [14, 1, 64, 64, 0.8], [63.5, 10, 64, 20, 0.6]]),
])
def test_finish_boxes_clips_to_the_variants_pixels(variant, expected):
    """The reviewer's 64x64 case (MATLAB gives [1, 1, 40, 54] and [14, 1, 64, 64]); a box
    ending at x 0.5 overlaps the port's first pixel column (0) but lies left of the
    release's (1); one starting at x 63.5 lies right of the port's last column (63) but
    overlaps the release's (64)."""
    rows = np.array([[-42, -56, 40, 54, 0.9], [14, -3, 70.5, 66, 0.8],
                     [-3, 10, 0.5, 20, 0.7], [63.5, 10, 70, 20, 0.6]])
    got = finish_boxes(rows, (64, 64), DetectorConfig.for_variant(variant))
    np.testing.assert_array_equal(got, expected)


def test_scale_divides_boxes_and_offset_stride():
    sm = _blank_map(3, 3)
    sm[0, 9, 2, 1] = 1.0               # template 9: 41 x 46 (20, 22.5 half sizes)
    sm[0, 25 + 9, 2, 1] = 0.5          # tx
    sm[0, 100 + 9, 2, 1] = math.log(2)  # th -> height doubled
    level = PyramidLevel(0, -1.0, 0.5, 20, 20)
    cand = decode_level(sm, level, DetectorConfig())
    cx, cy = 1 * 8 - 1 + 41 * 0.5, 2 * 8 - 1
    expected = np.array([[cx - 20.5, cy - 46, cx + 20.5, cy + 46]]) / 0.5
    np.testing.assert_allclose(cand.boxes, expected, rtol=0, atol=1e-5)  # float32 log(2)
    assert cand.keys.tolist() == [(9 * 3 + 2) * 3 + 1]


def test_empty_when_all_below_threshold():
    sm = _blank_map(6, 7)
    level = PyramidLevel(0, 0.0, 1.0, 48, 56)
    cand = decode_level(sm, level, DetectorConfig())
    assert len(cand) == 0 and cand.boxes.shape == (0, 4)
    out = postprocess_levels([sm, sm], [level, level], (48, 56), DetectorConfig())
    assert out.shape == (0, 5) and out.dtype == np.float32
    assert postprocess_levels([], [], (48, 56), DetectorConfig()).shape == (0, 5)


@pytest.mark.parametrize("prob", [0.5, 0.9, 0.03])
def test_exactly_at_threshold_is_not_a_candidate(prob):
    config = DetectorConfig(prob_thresh=prob)
    t = config.logit_thresh
    sm = _blank_map(3, 4)
    sm[0, 4, 1, 1] = t
    sm[0, 5, 1, 2] = np.nextafter(t, np.float32(np.inf))
    sm[0, 6, 2, 3] = np.nextafter(t, np.float32(-np.inf))
    cand = decode_level(sm, PyramidLevel(0, 0.0, 1.0, 24, 32), config)
    assert cand.keys.tolist() == [(5 * 3 + 1) * 4 + 2]


def test_overflow_never_becomes_a_box():
    sm = _blank_map(3, 3)
    sm[0, 6, 1, 1] = 2.0
    sm[0, 75 + 6, 1, 1] = 1000.0          # exp overflow: dropped
    sm[0, 7, 2, 2] = 2.0
    sm[0, 75 + 7, 2, 2] = 50.0            # huge but finite: kept
    sm[0, 8, 2, 0] = 2.0                  # a normal one
    cand = decode_level(sm, PyramidLevel(0, 0.0, 1.0, 24, 24), DetectorConfig())
    assert cand.keys.tolist() == [(7 * 3 + 2) * 3 + 2, (8 * 3 + 2) * 3 + 0]
    assert np.isfinite(cand.boxes).all()


def test_inactive_templates_are_ignored():
    sm = _blank_map(2, 2)
    sm[0, [0, 3, 12, 17, 20], 0, 0] = 5.0  # never active (0..3, 12..17) or Type B (20)
    sm[0, 11, 1, 1] = 5.0
    level = PyramidLevel(0, 1.0, 2.0, 16, 16)
    assert decode_level(sm, level, DetectorConfig()).keys.tolist() == [(11 * 2 + 1) * 2 + 1]
    keys = decode_level(sm, level, DetectorConfig.for_variant("matconvnet")).keys.tolist()
    assert keys == [(11 * 2 + 1) * 2 + 1, (20 * 2 + 0) * 2 + 0]


@pytest.mark.parametrize("shape", [(1, 124, 4, 4), (2, 125, 4, 4), (125, 4), (1, 1, 125, 4, 4)])
def test_score_map_shape_is_validated(shape):
    with pytest.raises(TinyFacesError, match="score map must have shape"):
        decode_level(np.zeros(shape, np.float32), PyramidLevel(0, 0.0, 1.0, 32, 32), DetectorConfig())


def test_integer_score_map_rejected_and_3d_accepted():
    level = PyramidLevel(0, 0.0, 1.0, 16, 16)
    with pytest.raises(TinyFacesError, match="floating point"):
        decode_level(np.zeros((1, 125, 2, 2), np.int32), level, DetectorConfig())
    sm = _blank_map(2, 2)
    sm[0, 4, 1, 0] = 1.0
    a = decode_level(sm, level, DetectorConfig())
    b = decode_level(sm[0].astype(np.float16), level, DetectorConfig())
    assert a.keys.tolist() == b.keys.tolist() == [(4 * 2 + 1) * 2 + 0]


# ------------------------------------------------------------------ HostPostprocessor
def test_host_postprocessor_keys_and_reuse():
    config = DetectorConfig()
    levels, maps = _random_case(21, config, exponents=(-1.0, 0.0))
    post = HostPostprocessor(config)
    post.reset(*IMAGE_HW)
    post.add_level(maps[0], levels[0])
    post.add_level(maps[1], levels[1])
    first = post.finish()
    # Level 1's keys are its cells' own, offset by level 0's 25*h*w (the kernels' layout: keys
    # break probability ties across levels, so the offset must be exact).
    h0, w0 = maps[0].shape[2:]
    (level0, level1), = post._parts
    assert len(level0.keys) > 0 and len(level1.keys) > 0
    assert level0.keys.tolist() == decode_level(maps[0], levels[0], config).keys.tolist()
    assert level1.keys.tolist() == (decode_level(maps[1], levels[1], config).keys
                                    + 25 * h0 * w0).tolist()
    expected, _ = _reference(maps, levels, config, IMAGE_HW)
    assert len(first) == len(expected) > 0
    np.testing.assert_allclose(first[:, :4], expected[:, :4], rtol=0, atol=1e-4)
    post.reset(*IMAGE_HW)  # a new image starts empty
    assert post.finish().shape == (0, 5)
    post.reset(*IMAGE_HW)
    post.add_level(maps[0], levels[0])
    post.add_level(maps[1], levels[1])
    np.testing.assert_array_equal(post.finish(), first)


def test_host_postprocessor_requires_reset():
    post = HostPostprocessor(DetectorConfig())
    with pytest.raises(RuntimeError, match="reset"):
        post.finish()


# ------------------------------------------------------------------ NMS's overlap index
def _greedy_brute_force(boxes, logits, keys, t, o):
    """Greedy NMS by the definition: each kept box against every later box (O(N^2))."""
    from tinyfaces_trt.runtime.nms import nms_order
    order = nms_order(logits, keys)
    b = np.asarray(boxes, np.float64)[order]
    with np.errstate(all="ignore"):
        area = (b[:, 2] - b[:, 0] + o) * (b[:, 3] - b[:, 1] + o)
        alive, kept = np.ones(len(b), bool), []
        for i in range(len(b)):
            if not alive[i]:
                continue
            kept.append(i)
            iw = np.minimum(b[i, 2], b[i + 1:, 2]) - np.maximum(b[i, 0], b[i + 1:, 0]) + o
            ih = np.maximum(0.0, np.minimum(b[i, 3], b[i + 1:, 3]) - np.maximum(b[i, 1], b[i + 1:, 1]) + o)
            inter = iw * ih
            alive[i + 1:] &= ~((iw > 0) & (inter / (area[i] + area[i + 1:] - inter) > t))
    return order[np.array(kept, np.int64)]


def _index_edge_scene(rng, t, o, base):
    """Pairs at the bounds runtime.nms's overlap index prunes by: a box nested in another at
    an area ratio of t (1 +- eps) (IoU = the ratio), boxes meeting edge to edge in x or y
    within eps (t = 0 suppresses any overlap), widths at the powers of two that cut the groups,
    all far from 0 at ``base``; the slots sit 5000 px apart."""
    boxes = []
    for k, eps in enumerate([-1e-3, -1e-9, 0.0, 1e-9, 1e-6, 1e-3] * 6):
        corner = base + np.array([k % 6, k // 6, k % 6, k // 6]) * 5000.0
        side = 2.0 ** rng.integers(2, 11) * (1 + rng.choice([-1e-12, 0.0, 1e-12]))
        inner = side * np.sqrt(max(t, 1e-3) * (1 + eps))
        a = np.array([0, 0, side - o, side - o])
        c = (side - inner) / 2
        moved = a + 2 * side
        axis = k % 2
        moved[[axis, axis + 2]] += side * (1 + eps)  # edge to edge, apart by eps * side
        boxes += [corner + a, corner + [c, c, c + inner - o, c + inner - o],
                  corner + a + 2 * side, corner + moved]
    return np.array(boxes, np.float64)


@pytest.mark.parametrize("t", [0.3, 0.05, 0.0, -0.1, 0.999])
@pytest.mark.parametrize("o", [1.0, 0.0])
@pytest.mark.parametrize("base", [0.0, -2.5e5, 1e9])
def test_the_overlap_index_keeps_the_brute_force_result_at_its_bounds(t, o, base):
    """runtime.nms tests a kept box only against the boxes its overlap index names (by width
    group, y band, x order, area ratio): on pairs placed at those bounds, with a dense random
    scene around them, it keeps exactly what the O(N^2) greedy keeps."""
    rng = np.random.default_rng(int(abs(base)) % 101 + int(10 * abs(t)) + int(o))
    edge = _index_edge_scene(rng, t, o, base)
    centre = base + rng.uniform(0, 4000, (1500, 2))
    size = np.exp(rng.uniform(np.log(2), np.log(600), (1500, 1))) * rng.uniform(0.7, 1.4, (1500, 2))
    boxes = np.concatenate([edge, np.hstack([centre - size / 2, centre + size / 2])])
    n = len(boxes)
    logits = np.round(rng.normal(size=n), 2).astype(np.float32)
    keys = rng.permutation(n)
    want = _greedy_brute_force(boxes, logits, keys, t, o)
    np.testing.assert_array_equal(nms(boxes, logits, keys, t, o), want)
    assert 0 < len(want) < n or t < 0  # something suppressed and something kept


def test_the_overlap_index_keeps_the_brute_force_result_on_broken_boxes():
    """NaN, infinite, inverted and astronomically large boxes among ordinary ones."""
    rng = np.random.default_rng(3)
    boxes = rng.uniform(-50, 200, (3000, 4))
    boxes[:, 2:] = boxes[:, :2] + rng.uniform(-5, 60, (3000, 2))
    odd = rng.random(boxes.shape) < 0.03
    boxes[odd] = rng.choice([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0], odd.sum())
    logits = np.round(rng.normal(size=3000), 1).astype(np.float32)
    logits[rng.random(3000) < 0.02] = np.nan
    for t, o in [(0.3, 1.0), (0.0, 0.0), (-0.5, 1.0)]:
        want = _greedy_brute_force(boxes, logits, np.arange(3000), t, o)
        np.testing.assert_array_equal(nms(boxes, logits, np.arange(3000), t, o), want)
