"""Garbage in, no garbage out (issue 10, item 6): boxes entirely outside the image are
dropped, and the overflow of absurd boxes is handled without numpy warnings."""

from __future__ import annotations

import warnings

import numpy as np

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.runtime.nms import nms
from tinyfaces_trt.runtime.postprocess import inside_image, postprocess_levels


def _blank(h: int, w: int) -> np.ndarray:
    sm = np.zeros((1, 125, h, w), np.float32)
    sm[0, :25] = -20.0  # no face anywhere; regression 0
    return sm


def test_boxes_entirely_outside_the_image_are_dropped():
    sm = _blank(4, 4)
    sm[0, 8, 1, 1] = 3.0                      # a box inside the 32x32 image
    sm[0, 9, 3, 3] = 3.0
    sm[0, 25 + 9, 3, 3] = 40.0                # shifted far right: outside
    sm[0, 10, 0, 0] = 3.0
    sm[0, 50 + 10, 0, 0] = -40.0              # shifted far up: outside
    level = PyramidLevel(0, 0.0, 1.0, 32, 32)
    boxes = postprocess_levels([sm], [level], (32, 32), DetectorConfig())
    assert len(boxes) == 1
    unclipped = postprocess_levels([sm], [level], (32, 32), DetectorConfig(clip_boxes=False))
    assert len(unclipped) == 1 and np.all(unclipped[:, 2] >= 0)


def test_inside_image_counts_border_touching_boxes():
    boxes = np.array([[-5, -5, 0, 0], [31, 31, 40, 40], [-3, 2, -0.5, 9], [32, 0, 35, 5]])
    assert inside_image(boxes, (32, 32), 0.0).tolist() == [True, True, False, False]


def test_inside_image_of_one_based_pixels():
    """The release's 1-based pixel area [1, 32] x [1, 32] (tiny_face_detector.m clips to it)."""
    boxes = np.array([[-5, -5, 1, 1], [32, 32, 40, 40], [-3, 2, 0.5, 9], [32.5, 1, 35, 5],
                      [2, -9, 9, 0.5]])
    assert inside_image(boxes, (32, 32), 1.0).tolist() == [True, True, False, False, False]
    assert inside_image(boxes, (32, 32), 0.0).tolist() == [True, False, True, False, True]


def test_matconvnet_boxes_outside_the_release_pixels_are_dropped():
    """A box ending left of the release's first pixel column (x2 < 1) is dropped in the
    matconvnet variant, not clipped onto the border; the port's 0-based area keeps it."""
    sm = _blank(4, 4)
    sm[0, 9, 0, 0] = 3.0                  # template 9 (41 x 46), centre (-1, -1)
    sm[0, 25 + 9, 0, 0] = -0.46           # tx: x2 = -1 - 0.46 * 41 + 20.5 = 0.64
    level = PyramidLevel(0, 0.0, 1.0, 32, 32)
    mcn = postprocess_levels([sm], [level], (32, 32), DetectorConfig.for_variant("matconvnet"))
    port = postprocess_levels([sm], [level], (32, 32), DetectorConfig.for_variant("pytorch"))
    assert mcn.shape == (0, 5)
    np.testing.assert_allclose(port[:, :4], [[0, 0, 0.64, 22]], rtol=0, atol=1e-5)


def test_garbage_network_output_gives_no_zero_area_border_boxes_and_no_warnings():
    rng = np.random.default_rng(0)
    sm = (rng.standard_normal((1, 125, 16, 16)) * 30).astype(np.float32)  # absurd outputs
    level = PyramidLevel(0, 0.0, 1.0, 128, 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy overflow warnings would raise here
        boxes = postprocess_levels([sm], [level], (128, 128), DetectorConfig())
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    on_border = ((width == 0) & np.isin(boxes[:, 0], [0, 127])) | \
                ((height == 0) & np.isin(boxes[:, 1], [0, 127]))
    assert not on_border.any()


def test_nms_of_huge_boxes_overflows_without_warnings():
    boxes = np.array([[0, 0, 1e300, 1e300], [1, 1, 2e300, 3e300], [0, 0, 10, 10]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keep = nms(boxes, np.array([3.0, 2.0, 1.0]), np.arange(3), 0.3)
    # the first two overlap by IoU 1/6 (< 0.3); in float64 their areas overflow to inf and
    # the IoU to NaN, which suppresses nothing either
    assert keep.tolist() == [0, 1, 2]
