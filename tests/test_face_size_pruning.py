"""--min-face/--max-face: which pyramid levels and templates can produce a face of a size."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ConfigError
from tinyfaces_trt.core.pyramid import (TYPE_A, active_templates, no_level_reason, plan_pyramid,
                                        policy_templates, template_face_sizes)

FULL_HD = [-5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 0.5, 1.0]


def _exponents(**fields):
    return [lv.exponent for lv in plan_pyramid(1080, 1920, DetectorConfig(**fields))]


def test_face_size_range_of_a_template():
    c = DetectorConfig()
    smallest, largest = template_face_sizes(2.0, c)
    # template 4 is 82 x 110 px: longer side 110; at 2x with R = 2 it spans 27.5..110 px
    assert (smallest[4], largest[4]) == pytest.approx((110 / 4, 110))
    # template 11 (33.66 x 42.77) at 0.5x: 42.77..171.1 px
    s, l = template_face_sizes(0.5, c)
    assert (s[11], l[11]) == pytest.approx((42.7711, 171.0844))
    s1, l1 = template_face_sizes(2.0, c.with_(size_refinement=1.0))
    assert (s1[4], l1[4]) == pytest.approx((55, 55))


@pytest.mark.parametrize("fields, expected", [
    ({}, FULL_HD),
    (dict(min_face=20), FULL_HD),                      # the 2x level still makes 20..110 px faces
    (dict(min_face=110), FULL_HD),                     # template 4 at 2x reaches exactly 110
    (dict(min_face=110.5), FULL_HD[:-1]),              # 2x dropped
    (dict(min_face=155.6), FULL_HD[:-2]),              # 1.41x reaches 110 * 2 / sqrt(2) = 155.56
    (dict(min_face=56, size_refinement=1.0), FULL_HD[:-1]),  # nominal sizes: 2x tops at 55 px
    (dict(max_face=40), [0.0, 0.5, 1.0]),              # 0.5x starts at 42.77 px
    (dict(max_face=42.8), [-1.0, 0.0, 0.5, 1.0]),
    (dict(min_face=30, max_face=60), [-1.0, 0.0, 0.5, 1.0]),  # 0.25x starts at 85.5 px
])
def test_level_selection(fields, expected):
    assert _exponents(**fields) == expected


def test_templates_are_pruned_per_level():
    c = DetectorConfig(min_face=100)
    active = active_templates(2.0, c)
    # at 2x only templates whose longer side * 2 / 2 >= 100 survive: 4 (110 px) only
    assert np.flatnonzero(active).tolist() == [4]
    # at 1x: longer side * 2 >= 100, i.e. >= 50 px: 110, 88, 77, 63.6, 56.2 and 52 (not 46, 42.8)
    assert np.flatnonzero(active_templates(1.0, c)).tolist() == [4, 5, 6, 7, 8, 10]
    assert active_templates(0.5, c).sum() == len(TYPE_A)
    np.testing.assert_array_equal(active_templates(1.0, DetectorConfig()),
                                  policy_templates(1.0, DetectorConfig()))


def test_no_level_left_is_an_empty_plan_with_its_reason():
    config = DetectorConfig(min_face=10_000)  # 1/32x tops at 7040 px
    assert plan_pyramid(1080, 1920, config) == []
    assert re.search(r"can produce faces of 10000\.\.inf px", no_level_reason(1080, 1920, config))


def test_pruning_removes_exactly_the_levels_and_templates_out_of_reach(export_dir):
    """Same network, same image: with ``max_face`` the detector's boxes are exactly the
    unlimited run's from the levels plan_pyramid keeps and, per level, the templates
    active_templates keeps (found here by masking the other templates' scores)."""
    from tinyfaces_trt.core.manifest import load_export_folder
    from tinyfaces_trt.core.runner import RunnerBase
    from tinyfaces_trt.parity.images import synthetic_image
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
    from tinyfaces_trt.runtime.pipeline import Detector
    from tinyfaces_trt.runtime.postprocess import postprocess_levels

    class Recording(RunnerBase):
        """The runner, keeping each level's score map by its input size."""

        def __init__(self, inner):
            self.inner, self.maps = inner, {}

        def run(self, net_input):
            self.maps[net_input.shape[2:]] = out = self.inner.run(net_input)
            return out

    folder = load_export_folder(export_dir)
    runner = Recording(OnnxRuntimeRunner(folder.onnx_fp32))
    image = synthetic_image(96, 128, seed=4)
    config = folder.config.with_(prob_thresh=0.05, nms_thresh=1.0)  # no NMS: boxes comparable
    limited_config = config.with_(max_face=30)  # drops the 0.5x level, prunes at 1x and 1.41x
    full = Detector(runner, config).detect(image)
    limited = Detector(OnnxRuntimeRunner(folder.onnx_fp32), limited_config).detect(image)
    levels = plan_pyramid(96, 128, limited_config)
    assert 0 < len(limited) < len(full)
    expected_maps = []
    for level in levels:
        scores = runner.maps[(level.height, level.width)].copy()
        scores[0, :25][~active_templates(level.scale, limited_config)] = -1e4  # no face there
        expected_maps.append(scores)
    expected = postprocess_levels(expected_maps, levels, (96, 128), config)
    np.testing.assert_array_equal(limited, expected)
    assert [lv.exponent for lv in plan_pyramid(96, 128, config)] == [-1.0, 0.0, 0.5, 1.0]
    assert [(lv.exponent, int(active_templates(lv.scale, limited_config).sum()))
            for lv in levels] == [(0.0, 4), (0.5, 6), (1.0, 8)]  # of 8 per level unlimited


@pytest.mark.parametrize("fields, message", [
    (dict(min_face=0), "min_face must be a positive"), (dict(max_face=float("nan")), "max_face"),
    (dict(min_face=50, max_face=20), "must not exceed"), (dict(size_refinement=0.5), ">= 1")])
def test_invalid_limits(fields, message):
    with pytest.raises(ConfigError, match=message):
        DetectorConfig(**fields)


def test_limits_round_trip_and_old_manifests_load():
    c = DetectorConfig(min_face=12, max_face=300, size_refinement=1.5)
    assert DetectorConfig.from_dict(c.to_dict()) == c
    old = c.to_dict()
    for key in ("min_face", "max_face", "size_refinement"):
        del old[key]
    assert DetectorConfig.from_dict(old) == DetectorConfig()
