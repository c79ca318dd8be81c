"""Parity cases of the kernels' C ABI (resize, decode, NMS) against the numpy runtime.

Not collected by itself: tests/test_kernels_gpu.py runs these on a GPU and
tests/test_kernels_cpu.py through the CPU build of the same sources; each provides the
``kh`` fixture (a :class:`helpers_kernels.KernelHarness`).

Tolerances (docs/DESIGN.md): same count and order, boxes within 1e-3 px (numpy decodes in
float64, the kernels in float32), probabilities within 1e-6, resize within 1e-4. ``tf_nms``
runs with the CUDA postprocessor's parameters (:func:`helpers_kernels.runtime_nms_params`: the
kept boxes entirely outside the image dropped, the rest clipped per the config, in the
variant's pixels) unless a case says otherwise: :func:`helpers_kernels.nms_rows_reference` is
its oracle.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace

import numpy as np
import pytest

from helpers_kernels import (assert_kernel_keeps_float32_greedy, assert_same_detections,
                             candidate_count, emulation, levels_at, nms_rows_reference,
                             random_maps, resize_reference, square_boxes)
from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.errors import NonFiniteScoresError
from tinyfaces_trt.kernels import binding
from tinyfaces_trt.runtime.postprocess import finish_boxes, postprocess_levels

IMAGE_HW = (90, 120)

CONFIGS = {
    "pytorch": DetectorConfig(),
    "matconvnet": DetectorConfig.for_variant("matconvnet", prob_thresh=0.3, nms_thresh=0.1),
    "no-clip-no-offset": DetectorConfig(clip_boxes=False, box_pixel_offset=0.0, nms_thresh=0.5),
}


# --- decode + NMS vs numpy ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_score_maps_match_numpy(kh, name, seed):
    config = CONFIGS[name]
    levels = levels_at(IMAGE_HW, (-1.0, 0.0, 0.5, 1.0))
    maps = random_maps(np.random.default_rng(seed), levels)
    want = nms_rows_reference(maps, levels, IMAGE_HW, config)
    got, stats = kh.detections(maps, levels, config, IMAGE_HW)
    assert stats["num_candidates"] == candidate_count(maps, levels, config) > 50
    assert 0 < len(want) < stats["num_candidates"]
    assert_same_detections(got, want)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_nms_keeps_the_float32_greedy_result_on_the_decoded_boxes(kh, name):
    """The exact contract: the candidate buffer holds the float32 decode (the host's within
    1e-3 px: a GPU may fuse multiply-adds), and tf_nms keeps exactly the float32 greedy
    result on those boxes (helpers_kernels.greedy_nms_f32), bit for bit; against numpy's
    float64 decode + NMS only pairs within IOU_MARGIN of the threshold may differ."""
    config = CONFIGS[name]
    levels = levels_at((200, 260), (-1.0, 0.0, 0.5, 1.0))
    maps = random_maps(np.random.default_rng(12), levels, cls_mean=0.0)
    run = kh.raw_run(maps, levels, config)
    count = candidate_count(maps, levels, config)
    got, stats = run.nms((200, 260), count)
    assert stats["num_candidates"] == count > 1000 and stats["overflow"] == 0
    assert 0 < len(got) < count
    assert_kernel_keeps_float32_greedy(kh, run, got, maps, levels, config, (200, 260))


@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
@pytest.mark.parametrize("clip", [True, False])
def test_rows_dropped_and_clipped_on_the_device_are_finish_boxes_of_every_kept_row(kh, variant, clip):
    """tf_nms_params.drop_outside and pixel_base (ABI 5), as the CUDA postprocessor passes
    them: the rows are finish_boxes (the host path's last step) of every kept row, exactly,
    in either variant's pixels; and postprocess_levels' detections."""
    config = DetectorConfig.for_variant(variant, prob_thresh=0.2, nms_thresh=0.3, clip_boxes=clip)
    levels = levels_at(IMAGE_HW, (-1.0, 0.0, 1.0))
    maps = random_maps(np.random.default_rng(11), levels, cls_mean=0.0, reg_sigma=1.0)
    every = replace(config, clip_boxes=False)
    raw, raw_stats = kh.detections(maps, levels, every, IMAGE_HW, drop_outside=False)
    got, stats = kh.detections(maps, levels, config, IMAGE_HW)
    finished = finish_boxes(raw, IMAGE_HW, config)
    assert len(got) < len(raw)  # some kept boxes lie outside the image: the test bites
    np.testing.assert_array_equal(got, finished)  # exactly (-0.0 == 0.0)
    assert stats["num_candidates"] == raw_stats["num_candidates"]
    assert_same_detections(got, postprocess_levels(maps, levels, IMAGE_HW, config))


@pytest.mark.parametrize("base", [0.0, 1.0])
def test_boxes_touching_the_image_are_kept_and_those_just_outside_dropped(kh, base):
    """Crafted boxes on each edge of a 40x60 image in either pixel convention: touching the
    border is inside, a float32 step past it outside; a zero-width box inside (kept without a
    walk: the resolve kernels' early path) is written, a NaN box (the same path) dropped, and
    where clipped it stays NaN, as numpy's clip leaves it. Every (clip, drop_outside) pair
    against finish_boxes' rules, with each resolve rule, exactly (a zero's sign aside:
    numpy's clip keeps or drops that of -0.0 depending on its bounds' shapes); boxes all
    outside leave no row."""
    h, w = 40, 60
    lo, right, bottom = np.float32(base), np.float32(base + w - 1), np.float32(base + h - 1)
    below = np.nextafter(lo, np.float32(-1))
    beyond_x, beyond_y = np.nextafter(right, np.float32(1e9)), np.nextafter(bottom, np.float32(1e9))
    boxes = np.float32([
        [-20, 5, lo, 15],             # right edge on the left border: inside
        [-20, 5, below, 15],          # just left of it: outside
        [5, -20, 15, lo],             # bottom edge on the top border: inside
        [5, -20, 15, below],          # outside
        [right, 5, right + 20, 15],   # left edge on the right border: inside
        [beyond_x, 5, beyond_x + 20, 15],
        [5, bottom, 15, bottom + 20],
        [5, beyond_y, 15, beyond_y + 20],
        [-0.0, -0.0, 10, 10],         # on the border
        [-5, -5, w + 5, h + 5],       # covers the image
        [20, 20, 20, 30],             # zero width (pixel offset 0): isolated, inside
        [np.nan, 0, 10, 10],          # isolated, never inside
    ])
    logits = np.linspace(3, -3, len(boxes)).astype(np.float32)
    keys = np.arange(len(boxes), dtype=np.uint32)
    config = DetectorConfig.for_variant("matconvnet" if base else "pytorch")
    every = kh.nms_on(boxes, logits, keys, 1.0, 0.0)  # threshold 1: every box kept
    assert len(every) == len(boxes)
    outside = boxes[[1, 3, 5, 7]]
    for rule in binding.NMS_RULES.values():
        for clip in (False, True):
            for drop in (False, True):
                given = dict(lookahead=rule, image_hw=(h, w), clip=clip, pixel_base=base,
                             drop_outside=drop)
                rows = kh.nms_on(boxes, logits, keys, 1.0, 0.0, **given)
                if drop:
                    want = finish_boxes(every, (h, w), replace(config, clip_boxes=clip))
                    assert len(want) == 7  # 4 touching, -0.0, covering, zero width
                else:
                    want = every.copy()
                    if clip:
                        np.clip(want[:, 0:4:2], lo, right, out=want[:, 0:4:2])
                        np.clip(want[:, 1:4:2], lo, bottom, out=want[:, 1:4:2])
                message = f"rule={rule}, clip={clip}, drop={drop}"
                np.testing.assert_array_equal(rows, want, err_msg=message)
                none = kh.nms_on(outside, logits[:4], keys[:4], 1.0, 0.0, **given)
                assert len(none) == (0 if drop else 4), message


def test_nms_writes_the_logit_itself_or_its_sigmoid(kh):
    """tf_nms_params.score_logit (ABI 4): 1 writes row[4] as the float32 logit, bit for bit,
    as the references print score_cls; 0 its sigmoid, in which 20.0 and 30.5 are both 1 and
    9.123456 keeps four decimals."""
    boxes = square_boxes([[20, 20], [120, 20], [20, 120], [120, 120]], [30, 30, 30, 30])
    logits = np.float32([20.0, 9.123456, 30.5, -1.25])
    order = [2, 0, 1, 3]
    prob, logit = (kh.nms_on(boxes, logits, np.arange(4), 0.3, 1.0, score_logit=score_logit)
                   for score_logit in (False, True))
    np.testing.assert_array_equal(prob[:, :4], boxes[order])
    np.testing.assert_array_equal(logit[:, :4], boxes[order])
    assert logit[:, 4].tobytes() == logits[order].tobytes()
    want = 1.0 / (1.0 + np.exp(-logits[order].astype(np.float64)))
    np.testing.assert_allclose(prob[:, 4], want, rtol=0, atol=1e-6)
    assert prob[0, 4] == prob[1, 4] == 1.0


def test_score_logit_rows_carry_the_decoded_logits(kh):
    """Through decode: the rows of a ``score="logit"`` config are numpy's, their row[4] the
    score map's float32 logits exactly (20.0, not a probability of 1)."""
    config = DetectorConfig(prob_thresh=0.2, score="logit")
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(17), levels, cls_mean=0.0)
    maps[0][0, 4, 2, 3] = 20.0
    maps[1][0, 6, 15, 20] = 9.123456
    maps[1][0, 6, 2:20:4, 2:30:6] = -0.0  # one is kept: as +0.0, by the kernels and numpy
    want = nms_rows_reference(maps, levels, IMAGE_HW, config)
    got, _ = kh.detections(maps, levels, config, IMAGE_HW)
    assert got.shape == want.shape and len(got) > 10
    np.testing.assert_allclose(got[:, :4], want[:, :4], rtol=0, atol=1e-3)
    assert got[:, 4].tobytes() == want[:, 4].tobytes()
    zeros = got[:, 4] == 0
    assert zeros.any() and not np.signbit(got[zeros, 4]).any()
    assert got[0, 4] == 20.0 and np.float32(9.123456) in got[:, 4]
    prob, _ = kh.detections(maps, levels, config.with_(score="prob"), IMAGE_HW)
    np.testing.assert_array_equal(prob[:, :4], got[:, :4])  # the same boxes, in the same order
    np.testing.assert_allclose(prob[:, 4], 1.0 / (1.0 + np.exp(-got[:, 4].astype(np.float64))),
                               rtol=0, atol=1e-6)


def test_all_below_threshold_gives_nothing(kh):
    config = DetectorConfig()
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(3), levels, cls_mean=-10.0, cls_sigma=0.5)
    got, stats = kh.detections(maps, levels, config, IMAGE_HW, max_candidates=64)
    assert got.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": 0, "overflow": 0, "nonfinite": 0}
    assert postprocess_levels(maps, levels, IMAGE_HW, config).shape == (0, 5)


@pytest.mark.parametrize("prob", [0.5, 0.3])
def test_a_logit_exactly_at_the_threshold_is_no_candidate(kh, prob):
    """As numpy's decode (test_decode_nms.py::test_exactly_at_threshold_is_not_a_candidate):
    a cell passes when its logit is ABOVE logit_thresh. At the default prob 0.5 the
    threshold is 0.0, which quantised engine outputs hit; a kernel keeping such a cell would
    return a box the host path does not."""
    config = DetectorConfig(prob_thresh=prob)
    t = config.logit_thresh
    levels = levels_at(IMAGE_HW, (0.0,))
    maps = random_maps(np.random.default_rng(7), levels, cls_mean=-10.0, cls_sigma=0.5)
    maps[0][0, 5, 2, 3] = t                                      # at: not a candidate
    maps[0][0, 6, 1, 1] = np.nextafter(t, np.float32(np.inf))    # just above: the one
    maps[0][0, 7, 3, 4] = np.nextafter(t, np.float32(-np.inf))   # just below: not one
    got, stats = kh.detections(maps, levels, config, IMAGE_HW, max_candidates=64)
    assert candidate_count(maps, levels, config) == 1
    assert stats["num_candidates"] == 1, stats
    assert_same_detections(got, nms_rows_reference(maps, levels, IMAGE_HW, config))


def test_all_above_threshold_ties_are_broken_by_key(kh):
    """Every active cell passes with the same logit: the order is the canonical key order."""
    config = DetectorConfig(nms_thresh=0.4)
    levels = levels_at(IMAGE_HW, (0.0, 0.5, 1.0))
    maps = random_maps(np.random.default_rng(4), levels)
    for m in maps:
        m[0, :NUM_TEMPLATES] = 2.0
    want = nms_rows_reference(maps, levels, IMAGE_HW, config)
    got, stats = kh.detections(maps, levels, config, IMAGE_HW)
    assert stats["num_candidates"] == sum(8 * m.shape[2] * m.shape[3] for m in maps)
    assert len(want) > 20
    assert_same_detections(got, want)


def test_quantised_logits_tie_across_levels(kh):
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (-1.0, 0.0, 1.0))
    maps = random_maps(np.random.default_rng(5), levels, cls_mean=0.0, cls_sigma=1.0)
    for m in maps:
        m[0, :NUM_TEMPLATES] = np.round(m[0, :NUM_TEMPLATES] * 2) / 2
        m[0, 0, 0, 0] = -0.0  # -0 and +0 compare equal: the key decides
        m[0, 4, 0, 1] = 0.0
        m[0, 5, 0, 0] = -0.0
    got, _ = kh.detections(maps, levels, config, IMAGE_HW)
    assert_same_detections(got, nms_rows_reference(maps, levels, IMAGE_HW, config))


@pytest.mark.parametrize("drop_outside", [True, False])
@pytest.mark.parametrize("clip", [True, False])
def test_boxes_on_the_image_border(kh, clip, drop_outside):
    config = DetectorConfig(clip_boxes=clip, prob_thresh=0.2)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(6), levels, cls_mean=0.0, reg_sigma=1.0)
    for m in maps:  # push boxes out over every edge
        h, w = m.shape[2:]
        m[0, 25:50, :, : w // 3] -= 2.0
        m[0, 25:50, :, -(w // 3):] += 2.0
        m[0, 50:75, : h // 3] -= 2.0
        m[0, 50:75, -(h // 3):] += 2.0
    want = nms_rows_reference(maps, levels, IMAGE_HW, config, drop_outside)
    got, _ = kh.detections(maps, levels, config, IMAGE_HW, drop_outside=drop_outside)
    assert_same_detections(got, want)
    if clip:
        assert got[:, [0, 2]].min() == 0.0 and got[:, [0, 2]].max() == IMAGE_HW[1] - 1
        assert got[:, [1, 3]].min() == 0.0 and got[:, [1, 3]].max() == IMAGE_HW[0] - 1
    else:
        assert ((got[:, 0] < 0) | (got[:, 2] > IMAGE_HW[1] - 1)).any()
    every = nms_rows_reference(maps, levels, IMAGE_HW, config, drop_outside=False)
    assert (len(got) < len(every)) == drop_outside  # some kept boxes lie outside: dropped


def _finite_cells_reference(monkeypatch, maps, levels, image_hw, config):
    """numpy's rows over the finite cells only (its NaN/inf refusal switched off): what the
    kernels still write next to a nonzero ``nonfinite``."""
    from tinyfaces_trt.runtime import decode

    with monkeypatch.context() as m:
        m.setattr(decode, "check_finite_scores", lambda score_map, level: None)
        return nms_rows_reference(maps, levels, image_hw, config)


def _nonfinite(maps):
    return int(sum((~np.isfinite(m)).sum() for m in maps))


def test_non_finite_values(kh, monkeypatch):
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(7), levels, cls_mean=0.0)
    m = maps[0]
    m[0, 4:12, 0, :] = np.nan          # NaN logits never pass
    m[0, 4:12, 1, :] = np.inf          # +inf logits pass, best first
    m[0, 75 + 5, 2, :] = np.inf        # infinite width: dropped
    m[0, 25 + 6, 3, :] = np.nan        # NaN offset: dropped
    m[0, 100 + 7, 4, :] = 800.0        # exp overflows in float32 and float64 alike: dropped
    with pytest.raises(NonFiniteScoresError):
        postprocess_levels(maps, levels, IMAGE_HW, config)  # the host path refuses the image
    want = _finite_cells_reference(monkeypatch, maps, levels, IMAGE_HW, config)
    got, stats = kh.detections(maps, levels, config, IMAGE_HW)
    assert stats["nonfinite"] == _nonfinite(maps) == 8 * 15 * 2 + 15 + 15
    assert_same_detections(got, want)
    assert np.isfinite(got).all() and got[0, 4] == 1.0


def test_non_finite_count_covers_every_channel_and_inactive_templates(kh, monkeypatch):
    """stats.nonfinite == numpy's count of non-finite values, wherever they are: cls and
    regression channels, active or inactive templates, partial warps; summed over levels."""
    from tinyfaces_trt.runtime.decode import active_templates

    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (-1.0, 0.0, 1.0))  # maps 6x8, 12x15, 23x30 (partial warps)
    active = active_templates(levels[2].scale, config)
    assert not active[0] and active[5]
    maps = random_maps(np.random.default_rng(17), levels, cls_mean=0.0)
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
    got, stats = kh.detections(maps, levels, config, IMAGE_HW)
    assert stats["nonfinite"] == want_count
    assert_same_detections(got, _finite_cells_reference(monkeypatch, maps, levels, IMAGE_HW, config))

    nan_map = [np.full((1, 125, 12, 15), np.nan, np.float32)]  # every value of a level
    got, stats = kh.detections(nan_map, levels[1:2], config, IMAGE_HW, max_candidates=64)
    assert got.shape == (0, 5) and stats["num_candidates"] == 0
    assert stats["nonfinite"] == 125 * 12 * 15


def test_overflow_is_reported_then_recovered(kh):
    config = DetectorConfig(prob_thresh=0.3)
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(8), levels, cls_mean=0.0)
    count = candidate_count(maps, levels, config)
    want = nms_rows_reference(maps, levels, IMAGE_HW, config)

    small = kh.raw_run(maps, levels, config, capacity=count - 1)
    boxes, stats = small.nms(IMAGE_HW, count)
    assert boxes.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": count, "overflow": binding.OVERFLOW_CAPACITY,
                     "nonfinite": 0}

    exact = kh.raw_run(maps, levels, config, capacity=count)
    boxes, stats = exact.nms(IMAGE_HW, count - 1)  # the NMS size is too small this time
    assert boxes.shape == (0, 5)
    assert stats == {"num_kept": 0, "num_candidates": count, "overflow": binding.OVERFLOW_NMS,
                     "nonfinite": 0}
    boxes, stats = exact.nms(IMAGE_HW, count)      # same candidates, re-run NMS only
    assert stats["overflow"] == 0 and stats["num_candidates"] == count
    assert_same_detections(boxes, want)


@pytest.mark.parametrize("max_candidates", [700, 4097, 65536, 131073, 2_000_000])
def test_any_nms_size_works(kh, max_candidates):
    """The workspace query covers CUB's sort storage at every size (checked at launch)."""
    if kh.quick and max_candidates > 200_000:
        pytest.skip("CPU build: a 2M-slot NMS takes seconds there; 131073 covers the old cap")
    config = DetectorConfig()
    levels = levels_at(IMAGE_HW, (0.0, 1.0))
    maps = random_maps(np.random.default_rng(9), levels, cls_mean=-2.5)
    assert 0 < candidate_count(maps, levels, config) <= 700
    want = nms_rows_reference(maps, levels, IMAGE_HW, config)
    got, _ = kh.detections(maps, levels, config, IMAGE_HW, max_candidates=max_candidates)
    assert_same_detections(got, want)


def block_sort_case(full: bool = False) -> tuple[list[np.ndarray], list, tuple[int, int]]:
    """12,672 candidates (a 40x40 grid of cells x 8 templates, half of their logits
    tied at 2.0, the rest spread): several warps of the one-block sort, many equal digits,
    equal logits, and cells shared by many boxes (stability decides their order). ``full``:
    exactly 16,384 (32x64 cells x 8 templates, every one a candidate): all the sort holds."""
    rng = np.random.default_rng(3)
    h, w = (32, 64) if full else (40, 40)
    levels = levels_at((8 * h, 8 * w), (0.0,))
    cls = np.where(rng.random((NUM_TEMPLATES, h, w)) < 0.5, 2.0,
                   rng.normal(2.0, 0.5 if full else 1.0, (NUM_TEMPLATES, h, w)))
    reg = rng.normal(0.0, 0.3, (4 * NUM_TEMPLATES, h, w))
    return [np.concatenate([cls, reg]).astype(np.float32)[None]], levels, (8 * h, 8 * w)


#: What the CPU build's device offers a block in shared memory with this setting: an H100's
#: (by default an A100's; the GPU tests ignore it).
H100_SHARED = {"TF_CPU_SHARED_OPTIN_BYTES": "232448"}


@pytest.mark.parametrize("full", [False, True], ids=["12672", "16384"])
def test_nms_sizes_up_to_the_block_sort_and_past_it_give_the_same_rows(kh, full, monkeypatch):
    """Up to 16384 candidates (kBlockSortMax) NMS sorts in one block each where the GPU gives
    a block the shared memory (compute capability 9.0; the CPU build playing an H100), past it
    with CUB's device-wide sort: the same rows and counters, byte for byte, as numpy's."""
    for name, value in H100_SHARED.items():
        monkeypatch.setenv(name, value)
    config = DetectorConfig(prob_thresh=0.01 if full else 0.5)
    maps, levels, image_hw = block_sort_case(full)
    count = candidate_count(maps, levels, config)
    assert count == (16_384 if full else 12_672)
    run = kh.raw_run(maps, levels, config)
    small, small_stats = run.nms(image_hw, count)  # sorted in one block
    block, block_stats = run.nms(image_hw, 16_384)
    device_wide, device_stats = run.nms(image_hw, 16_385)  # CUB's
    assert small_stats == block_stats == device_stats and block_stats["num_candidates"] == count
    assert small.tobytes() == block.tobytes() == device_wide.tobytes()
    assert_same_detections(block, nms_rows_reference(maps, levels, image_hw, config))


@pytest.mark.parametrize("lookahead", list(binding.NMS_RULES.values()),
                         ids=list(binding.NMS_RULES))
def test_results_are_deterministic(kh, lookahead):
    config = DetectorConfig(prob_thresh=0.2, nms_thresh=0.5)
    # 40k candidates; the CPU build runs the warp rule (32 fibers a box) on the first level's 1.5k
    quick_warp = kh.quick and lookahead == binding.NMS_WARP
    levels = levels_at((200, 260), (-1.0,) if quick_warp else (-1.0, 0.0, 0.5, 1.0))
    maps = random_maps(np.random.default_rng(10), levels, cls_mean=0.0)
    for m in maps:
        m[0, :NUM_TEMPLATES] = np.round(m[0, :NUM_TEMPLATES])
    runs = [kh.detections(maps, levels, config, (200, 260), lookahead=lookahead)[0] for _ in range(3)]
    assert runs[0].tobytes() == runs[1].tobytes() == runs[2].tobytes()
    assert_same_detections(runs[0], nms_rows_reference(maps, levels, (200, 260), config))


# --- sizes out of range: refused before any work -------------------------------------------------

def _sentinel(kh, nbytes):
    """A buffer of ``nbytes`` 0xAB bytes and its host image (to see that nothing wrote it)."""
    host = np.full(nbytes, 0xAB, np.uint8)
    buf = kh.buffer(nbytes)
    buf.upload(host, kh.stream)
    return buf, host


def _untouched(kh, buf, host):
    got = np.zeros_like(host)
    buf.download(got, kh.stream)
    kh.stream.synchronize()
    return got.tobytes() == host.tobytes()


@pytest.mark.parametrize("key_base", [2**63 - 1, 2**63 - 100, 2**32 - 25 * 2 * 3])
def test_decode_refuses_a_key_base_past_the_key_space(kh, key_base):
    """key_base + 25*h*w > 2^32 - 1 is refused, also where key_base + 25*h*w overflows int64
    (it passed the check, and the keys wrapped around to 0)."""
    config = DetectorConfig()
    score_map = np.ones((1, 125, 2, 3), np.float32)  # every active cell a candidate
    params = binding.decode_params(config.templates[:, :4], np.ones(NUM_TEMPLATES, bool),
                                   config.logit_thresh, config.stride, config.offset, 1.0)
    cand, host = _sentinel(kh, kh.lib.candidates_size(16))
    with kh.buffer(score_map.nbytes) as scores, cand:
        scores.upload(score_map, kh.stream)
        with pytest.raises(binding.KernelError, match="32-bit key space") as info:
            kh.lib.decode_level(scores, 2, 3, params, key_base, cand, 16, kh.stream)
        assert info.value.status == binding.Status.INVALID_SIZE
        assert _untouched(kh, cand, host)
        kh.lib.candidates_reset(cand, kh.stream)  # the last key 2^32 - 1 is accepted
        kh.lib.decode_level(scores, 2, 3, params, 2**32 - 1 - 25 * 2 * 3, cand, 16, kh.stream)
        counters = np.zeros(2, np.uint32)
        cand.download(counters, kh.stream)
        kh.stream.synchronize()
    assert counters.tolist() == [25 * 2 * 3, 0]


def test_resize_refuses_a_row_pitch_whose_rows_overflow(kh):
    """(src_height - 1) * src_row_bytes past 2^63 - 1: refused (it was accepted, and the
    kernel read at a wrapped-around address)."""
    h, w = 3, 2
    ws_bytes = kh.lib.resize_workspace_size(h, w, 2, 2)
    dst, host = _sentinel(kh, 3 * 2 * 2 * 4)
    with kh.buffer(3 * h * w) as src, kh.buffer(ws_bytes) as ws, dst:
        for pitch in (2**62, (2**63 - 1 - 3 * w) // (h - 1) + 1, 2**63 - 1):
            with pytest.raises(binding.KernelError, match="src_row_bytes") as info:
                kh.lib.resize_normalize(src, h, w, dst, 2, 2, (1, 1, 1), (0, 0, 0), ws, ws_bytes,
                                        kh.stream, src_row_bytes=pitch)
            assert info.value.status == binding.Status.INVALID_SIZE
        assert _untouched(kh, dst, host)


@pytest.mark.parametrize("image_hw", [(binding.MAX_DIM + 1, 10), (10, binding.MAX_DIM + 1),
                                      (100000, 2_000_000_000)])
def test_nms_refuses_an_image_side_above_max_dim(kh, image_hw):
    """TF_MAX_DIM bounds every image side, tf_nms's too (it checked only >= 1)."""
    cand_host = kh.candidate_buffer(np.float32([[1, 2, 30, 40]]), np.float32([1.0]),
                                    np.uint32([0]), 4)
    ws_bytes = kh.lib.nms_workspace_size(4)
    stats, host = _sentinel(kh, 16)
    with kh.buffer(cand_host.nbytes) as cand, kh.buffer(ws_bytes) as ws, kh.buffer(80) as out, stats:
        cand.upload(cand_host, kh.stream)
        params = binding.nms_params(0.3, 1.0, True, *image_hw)
        side, value = ("image_height", image_hw[0]) if image_hw[0] > binding.MAX_DIM else \
            ("image_width", image_hw[1])
        with pytest.raises(binding.KernelError, match=f"{side} = {value} is outside "
                           rf"\[1, {binding.MAX_DIM}\]") as info:
            kh.lib.nms(cand, 4, params, 4, ws, ws_bytes, out, stats, kh.stream)
        assert info.value.status == binding.Status.INVALID_SIZE
        assert _untouched(kh, stats, host)
        edge = binding.nms_params(0.3, 1.0, True, binding.MAX_DIM, binding.MAX_DIM)
        rows, got = kh.nms(cand, 4, edge, 4)  # TF_MAX_DIM itself is accepted
    assert got["num_kept"] == 1
    np.testing.assert_array_equal(rows[:, :4], [[1, 2, 30, 40]])


# --- resize -------------------------------------------------------------------------------------

RESIZES = [((61, 83), (31, 42)), ((61, 83), (17, 22)), ((61, 83), (87, 118)), ((61, 83), (122, 166)),
           ((61, 83), (61, 83)), ((61, 83), (1, 1)), ((61, 83), (1, 83)), ((33, 47), (9, 300)),
           ((160, 120), (40, 30)), ((1, 1), (5, 3))]


@pytest.mark.parametrize("variant", ["pytorch", "matconvnet"])
@pytest.mark.parametrize("src_hw, dst_hw", RESIZES)
def test_resize_matches_numpy(kh, variant, src_hw, dst_hw):
    config = DetectorConfig.for_variant(variant)
    rng = np.random.default_rng(src_hw[0] * 1000 + dst_hw[1])
    image = rng.integers(0, 256, (*src_hw, 3), dtype=np.uint8)
    want = resize_reference(image, dst_hw, config)
    got = kh.resize(image, dst_hw, config)
    assert got.shape == want.shape == (1, 3, *dst_hw)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("src_hw, dst_hw", RESIZES)
def test_a_planned_resize_gives_the_same_floats_bit_for_bit(kh, src_hw, dst_hw):
    """tf_resize_plan + tf_resize_normalize_planned = tf_resize_normalize, exactly; the plan
    and the workspace it needs sum to tf_resize_workspace_size's bytes."""
    config = DetectorConfig()
    image = np.random.default_rng(src_hw[1] * 1000 + dst_hw[0]).integers(
        0, 256, (*src_hw, 3), dtype=np.uint8)
    np.testing.assert_array_equal(kh.resize(image, dst_hw, config, planned=True),
                                  kh.resize(image, dst_hw, config))
    assert sum(kh.lib.resize_plan_size(*src_hw, *dst_hw)) == \
        kh.lib.resize_workspace_size(*src_hw, *dst_hw)


def test_one_resize_plan_serves_many_images_and_pitches(kh):
    config = DetectorConfig()
    a, b = config.normalization.scale_and_bias()
    h, w, dh, dw = 45, 70, 23, 35
    plan_bytes, ws_bytes = kh.lib.resize_plan_size(h, w, dh, dw)
    rng = np.random.default_rng(17)
    with kh.buffer(plan_bytes) as plan, kh.buffer(ws_bytes) as ws, \
            kh.buffer(h * 256) as src, kh.buffer(3 * dh * dw * 4) as dst:
        kh.lib.resize_plan(h, w, dh, dw, plan, plan_bytes, kh.stream)
        for pitch in (0, 256, 0):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            host = np.zeros((h, pitch or 3 * w), np.uint8)
            host[:, :3 * w] = image.reshape(h, 3 * w)
            src.upload(host, kh.stream)
            kh.lib.resize_normalize_planned(src, h, w, dst, dh, dw, a, b, plan, plan_bytes, ws,
                                            ws_bytes, kh.stream, src_row_bytes=pitch)
            got = dst.download(np.empty((1, 3, dh, dw), np.float32), kh.stream)
            kh.stream.synchronize()
            np.testing.assert_array_equal(got, kh.resize(image, (dh, dw), config))


def test_resize_plans_refuse_what_a_workspace_refuses(kh):
    """The plan is checked as a workspace is (NULL, alignment, size), before anything is
    queued; so is the planned resize's workspace."""
    h, w, dh, dw = 8, 9, 4, 5
    plan_bytes, ws_bytes = kh.lib.resize_plan_size(h, w, dh, dw)
    dst, host = _sentinel(kh, 3 * dh * dw * 4)
    S = binding.Status
    with kh.buffer(plan_bytes + 16) as plan, kh.buffer(ws_bytes + 16) as ws, \
            kh.buffer(3 * h * w) as src, dst:
        def planned(plan_at=plan.ptr, plan_n=plan_bytes, ws_at=ws.ptr, ws_n=ws_bytes):
            kh.lib.resize_normalize_planned(src, h, w, dst, dh, dw, (1, 1, 1), (0, 0, 0), plan_at,
                                            plan_n, ws_at, ws_n, kh.stream)

        cases = [
            (lambda: kh.lib.resize_plan(h, w, dh, dw, 0, plan_bytes, kh.stream),
             S.NULL_POINTER, "plan is NULL"),
            (lambda: kh.lib.resize_plan(h, w, dh, dw, plan.ptr + 8, plan_bytes, kh.stream),
             S.MISALIGNED, "plan is not 16-byte aligned"),
            (lambda: kh.lib.resize_plan(h, w, dh, dw, plan, plan_bytes - 1, kh.stream),
             S.WORKSPACE_TOO_SMALL, f"plan_bytes = {plan_bytes - 1}, need {plan_bytes}"),
            (lambda: kh.lib.resize_plan(0, w, dh, dw, plan, plan_bytes, kh.stream),
             S.INVALID_SIZE, "src_height = 0 is outside"),
            (lambda: planned(plan_at=0), S.NULL_POINTER, "plan is NULL"),
            (lambda: planned(plan_n=plan_bytes - 1), S.WORKSPACE_TOO_SMALL,
             f"plan_bytes = {plan_bytes - 1}, need {plan_bytes}"),
            (lambda: planned(plan_at=plan.ptr + 8), S.MISALIGNED, "plan is not 16-byte aligned"),
            (lambda: planned(ws_at=0), S.NULL_POINTER, "workspace is NULL"),
            (lambda: planned(ws_n=ws_bytes - 1), S.WORKSPACE_TOO_SMALL,
             f"workspace_bytes = {ws_bytes - 1}, need {ws_bytes}"),
            (lambda: planned(ws_at=ws.ptr + 4), S.MISALIGNED, "workspace is not 16-byte aligned"),
            # NULL pointers first, before the sizes, as tf_resize_normalize reports them
            (lambda: kh.lib.resize_plan(0, w, dh, dw, 0, plan_bytes, kh.stream),
             S.NULL_POINTER, "plan is NULL"),
            (lambda: kh.lib.resize_normalize_planned(src, 0, w, dst, dh, dw, (1, 1, 1), (0, 0, 0),
                                                     plan, plan_bytes, 0, ws_bytes, kh.stream),
             S.NULL_POINTER, "workspace is NULL"),
            (lambda: kh.lib.resize_normalize_planned(src, 0, w, dst, dh, dw, (1, 1, 1), (0, 0, 0),
                                                     0, plan_bytes, 0, ws_bytes, kh.stream),
             S.NULL_POINTER, "plan is NULL"),
            (lambda: kh.lib.resize_normalize(src, 0, w, dst, dh, dw, (1, 1, 1), (0, 0, 0), 0,
                                             ws_bytes, kh.stream),
             S.NULL_POINTER, "workspace is NULL"),
        ]
        for call, status, message in cases:
            with pytest.raises(binding.KernelError, match=message) as info:
                call()
            assert info.value.status == status, message
        assert _untouched(kh, dst, host)
    for plan_p, ws_p, message in ((None, ctypes.byref(ctypes.c_size_t()), "plan_bytes is NULL"),
                                  (ctypes.byref(ctypes.c_size_t()), None,
                                   "workspace_bytes is NULL")):
        assert kh.lib.raw.tf_resize_plan_size(h, w, dh, dw, plan_p, ws_p) == S.NULL_POINTER
        assert kh.lib.last_error_message() == message


def test_resize_workspace_is_not_monotone_in_dst_but_under_the_header_bound(kh):
    """tinyfaces_kernels.h: the query is not monotone in the output size (more taps per output
    pixel as it shrinks), the documented bound is never below it."""
    size = kh.lib.resize_workspace_size
    assert size(1080, 1920, 540, 959) == 12516352 > size(1080, 1920, 540, 960) == 12513792

    def bound(sh, sw, dh, dw):
        return 12 * sh * dw + 16 * (max(sw, dw) + max(sh, dh)) + 32 * (dw + dh) + 1280

    rng = np.random.default_rng(13)
    sizes = [(1, 1, 1, 1), (1, 1, 5, 3), (8192, 8192, 1, 1), (1000, 1000, 1, 999), (1080, 1920, 540, 959)]
    for _ in range(300):
        sh, sw = (int(v) for v in rng.integers(1, 5000, 2))
        dh, dw = (max(1, int(v * f)) for v, f in zip((sh, sw), rng.uniform(0.01, 2.0, 2)))
        sizes.append((sh, sw, dh, dw))
    for sh, sw, dh, dw in sizes:
        assert size(sh, sw, dh, dw) <= bound(sh, sw, dh, dw), (sh, sw, dh, dw)


def test_resize_pitched_source(kh):
    config = DetectorConfig()
    image = np.random.default_rng(12).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    np.testing.assert_allclose(kh.resize(image, (23, 35), config, row_bytes=256),
                               resize_reference(image, (23, 35), config), rtol=0, atol=1e-4)


# --- uncapped NMS on crafted candidate buffers (the adversarial cases of test_nms_uncapped.py) --

@pytest.mark.parametrize("thresh", [0.0, 0.3, 1.0])
def test_uncapped_identical_boxes(kh, thresh):
    n = 4000 if kh.quick else 20000  # t = 1: every box reads every earlier one
    boxes = np.tile(np.float32([[10, 20, 50, 70]]), (n, 1))
    kh.assert_kept(boxes, np.zeros(n), np.arange(n)[::-1], thresh, 1.0)


@pytest.mark.parametrize("n", [1, 2, 5000])
def test_uncapped_chain(kh, n):
    x = np.arange(n, dtype=np.float64) * 6.0
    boxes = square_boxes(np.stack([x, np.zeros(n)], 1), np.full(n, 10.0))
    kh.assert_kept(boxes, -np.arange(n, dtype=np.float32), np.arange(n), 0.2, 0.0)


@pytest.mark.parametrize("thresh, offset", [(0.0, 1.0), (0.3, 1.0), (0.5, 0.0)])
def test_uncapped_nested_sizes_and_ties(kh, thresh, offset):
    rng = np.random.default_rng(21)
    n = 3000
    sizes = np.exp(rng.uniform(np.log(2), np.log(2000), n))
    boxes = square_boxes(1000 + rng.normal(0, 1, (n, 2)) * sizes[:, None] * 0.3, sizes)
    logits = np.round(rng.normal(size=n) * 2) / 2
    kh.assert_kept(boxes, logits, rng.permutation(n), thresh, offset)


def test_uncapped_border_and_degenerate_boxes(kh):
    rng = np.random.default_rng(22)
    n = 4000
    centres = np.concatenate([rng.uniform(-60, 60, (n // 2, 2)), rng.uniform(-1e5, 1e5, (n // 2, 2))])
    boxes = square_boxes(centres, np.exp(rng.uniform(np.log(2), np.log(120), n)))
    boxes[:50, 2] = boxes[:50, 0]        # zero width (isolated with o = 0)
    boxes[50:60] = np.nan                # never produced by decode; isolated
    kh.assert_kept(boxes, rng.normal(size=n), rng.permutation(n), 0.3, 0.0)


@pytest.mark.parametrize("base", [0.0, 12345.5, 6.0e4])
@pytest.mark.parametrize("t, o", [(0.3, 1.0), (0.5, 0.0), (0.01, 1.0), (0.999, 0.0)])
def test_uncapped_pairs_at_the_window_bounds_as_the_emulation(kh, base, t, o):
    """Box pairs at the walks' window and class bounds (tests/test_nms_uncapped.py's
    _edge_pairs), IoU within 1e-6 of t: the kernel keeps exactly the emulation's boxes (both
    are float32 with every operation rounded; the float64 oracle may differ there)."""
    from test_nms_uncapped import _edge_pairs

    rng = np.random.default_rng(int(base) + int(1000 * t))
    boxes = _edge_pairs(base, t, o, rng, classes=range(1, 30) if t == 0.3 else range(1, 10))
    n = len(boxes)
    logits, keys = rng.normal(size=n).astype(np.float32), rng.permutation(n).astype(np.uint32)
    want = emulation().emulate_nms(boxes, logits, keys, t, o).kept
    for lookahead in binding.NMS_RULES.values():
        rows = kh.nms_on(boxes, logits, keys, t, o, lookahead=lookahead)
        np.testing.assert_array_equal(rows[:, :4], boxes[want])


#: The cases, collected by tests/test_kernels_gpu.py and tests/test_kernels_cpu.py
#: (helpers_kernels.collect_cases): a case added here runs in both.
__all__ = [name for name in dict(globals()) if name.startswith("test_")]
