"""Pyramid planning vs the transcribed reference rules (tiny_face_detector.m, the port)."""

import math

import numpy as np
import pytest
import reference_transcription as ref

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ImageError
from tinyfaces_trt.core.pyramid import (PyramidLevel, active_templates, no_level_reason,
                                        plan_pyramid)

SIZES = [(480, 640), (1080, 1920), (20, 20), (6000, 4000), (100, 3000), (3000, 100),
         (1, 1), (5000, 5000), (7, 9000), (33, 47)]


def _triples(levels):
    return [(lv.exponent, lv.height, lv.width) for lv in levels]


@pytest.mark.parametrize("hw", SIZES)
def test_adaptive_matches_matlab_rule(hw):
    config = DetectorConfig()
    levels = plan_pyramid(*hw, config)
    max_e = ref.matlab_max_scale(*hw, config.max_input_dim)
    # Documented deviation: exponents above max_scale are dropped (MATLAB keeps min:0).
    expected = [e for e in ref.matlab_scales(*hw, config.templates, config.max_input_dim) if e <= max_e]
    assert [lv.exponent for lv in levels] == expected
    assert [lv.index for lv in levels] == list(range(len(levels)))
    for lv in levels:
        assert lv.scale == 2.0 ** lv.exponent
        assert (lv.height, lv.width) == ref.matlab_level_size(*hw, lv.scale)
        assert max(lv.height, lv.width) <= config.max_input_dim


def test_adaptive_hand_computed():
    # Largest normal template is 82 x 110 (w x h); MAX_INPUT_DIM 5000.
    # 480x640: min(floor(log2(82/640)), floor(log2(110/480))) = min(-3, -3); max = min(1, 2.97).
    assert _triples(plan_pyramid(480, 640, DetectorConfig())) == [
        (-3.0, 60, 80), (-2.0, 120, 160), (-1.0, 240, 320), (0.0, 480, 640),
        (0.5, 679, 906), (1.0, 960, 1280)]
    # 1080x1920: min(floor(-4.55), floor(-3.30)) = -5; max = min(1, 1.38) = 1.
    assert [lv.exponent for lv in plan_pyramid(1080, 1920, DetectorConfig())] == [
        -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 0.5, 1.0]


def test_adaptive_deviation_drops_octaves_above_max_input_dim():
    config = DetectorConfig()
    # 6000x4000: max_scale = -log2(6000/5000) = -0.263; MATLAB would still run 2^0 (6000 px).
    assert ref.matlab_scales(6000, 4000, config.templates, 5000)[-1] == 0
    levels = plan_pyramid(6000, 4000, config)
    assert [lv.exponent for lv in levels] == [-6.0, -5.0, -4.0, -3.0, -2.0, -1.0]
    assert levels[-1].height == 3000 and levels[-1].width == 2000


def test_adaptive_small_image_only_upsamples():
    # 20x20: min_scale = 2 > 0 so [min:0] is empty; only 2^0.5 and 2^1 run.
    assert _triples(plan_pyramid(20, 20, DetectorConfig())) == [(0.5, 29, 29), (1.0, 40, 40)]


def test_max_input_dim_from_config():
    levels = plan_pyramid(480, 640, DetectorConfig(max_input_dim=1000))
    # max_scale = -log2(640/1000) = 0.64: 2^0.5 (906 px) runs, 2^1 (1280 px) does not.
    assert [lv.exponent for lv in levels] == [-3.0, -2.0, -1.0, 0.0, 0.5]


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (500, 500), (1080, 1920), (33, 47),
                                (101, 3000), (20, 20)])
def test_fixed_matches_port_rule(hw):
    config = DetectorConfig(pyramid="fixed")
    levels = plan_pyramid(*hw, config)
    expected = [(float(math.log2(s)), h, w) for s, h, w in ref.port_fixed_sizes(*hw)
                if h >= 1 and w >= 1 and max(h, w) <= config.max_input_dim]
    assert _triples(levels) == expected
    assert [lv.scale for lv in levels] == [2.0 ** e for e, _, _ in expected]


def test_fixed_skips_levels_over_max_input_dim_and_empty_levels():
    levels = plan_pyramid(2000, 3000, DetectorConfig(pyramid="fixed"))
    # 2x would be 4000x6000 > 5000: skipped (cnn_widerface_test_AB.m skips it too).
    assert _triples(levels) == [(-2.0, 500, 750), (-1.0, 1000, 1500), (0.0, 2000, 3000)]
    # int(3 * 0.25) == 0: the quarter level cannot exist and is skipped.
    levels = plan_pyramid(3, 40, DetectorConfig(pyramid="fixed"))
    assert [lv.exponent for lv in levels] == [-1.0, 0.0, 1.0]


def test_a_fixed_level_exactly_max_input_dim_long_is_kept():
    """Only a level LONGER than max_input_dim is skipped: dropping one of exactly that length
    would leave this image with no level at all (nothing searched, no faces found)."""
    config = DetectorConfig(pyramid="fixed", fixed_scales=(0.0,), max_input_dim=1000)
    assert plan_pyramid(1000, 800, config) == [PyramidLevel(0, 0.0, 1.0, 1000, 800)]
    assert plan_pyramid(1001, 800, config) == []


@pytest.mark.parametrize("variant, invalid", [("matconvnet", ref.authors_invalid_templates),
                                              ("pytorch", ref.port_invalid_templates)])
@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_template_policies_with_custom_one_scale_templates(variant, invalid, scale):
    """User templates whose one-scale (Type B) templates have scales 0.5, 1 and 2: each
    policy runs the ones its reference runs at every kind of level (s < 1, s == 1, s > 1).
    The shipped templates all have scale 2, so they cannot tell s == 1 from s < 1; a policy
    that confused them would decode the wrong templates (wrong boxes) for such a model."""
    templates = DetectorConfig().templates.copy()
    templates[18:25, 4] = [0.5, 0.5, 1, 1, 1, 2, 2]
    expected = np.ones(25, bool)
    expected[invalid(scale, templates)] = False
    got = active_templates(scale, DetectorConfig.for_variant(variant, templates=templates))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("hw", [(0, 10), (10, 0), (-5, 5), (10.0, 10), (True, 10), ("10", 10)])
def test_invalid_sizes_raise_image_error(hw):
    with pytest.raises(ImageError, match="height|width"):
        plan_pyramid(*hw, DetectorConfig())


def test_no_level_fits_is_an_empty_plan_with_its_reason():
    config = DetectorConfig(pyramid="fixed", fixed_scales=(1.0,), max_input_dim=150)
    assert plan_pyramid(100, 100, config) == []
    assert no_level_reason(100, 100, config).startswith("no pyramid level fits a 100x100 image")
    assert no_level_reason(100, 100, DetectorConfig()) is None


def test_level_is_frozen():
    lv = plan_pyramid(480, 640, DetectorConfig())[0]
    assert isinstance(lv, PyramidLevel)
    with pytest.raises(AttributeError):
        lv.scale = 3.0


def test_levels_below_the_variants_smallest_side_are_skipped():
    # A 6x1920 strip: the 2^-5 .. 2^-2 levels are 1 px high, which the port's padded trunk
    # runs but the MatConvNet trunk (unpadded ceil-mode pool1) cannot.
    port = plan_pyramid(6, 1920, DetectorConfig())
    mcn = plan_pyramid(6, 1920, DetectorConfig.for_variant("matconvnet"))
    assert min(lv.height for lv in port) == 1
    assert [(lv.exponent, lv.height) for lv in mcn] == [(-1.0, 3), (0.0, 6), (0.5, 9), (1.0, 12)]
    assert [lv.index for lv in mcn] == [0, 1, 2, 3]
    mcn_cfg = DetectorConfig.for_variant("matconvnet")
    assert plan_pyramid(1, 1920, mcn_cfg) == []
    assert "smallest side the matconvnet network runs at: 3 px" in no_level_reason(1, 1920, mcn_cfg)
