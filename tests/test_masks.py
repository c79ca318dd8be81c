"""Face masks (runtime/masks.py): modes, shapes, scaling; the tf-detect API uses them."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.runtime.draw import blur_boxes, pixelate_boxes
from tinyfaces_trt.runtime.masks import (MaskStyle, apply_masks, blur_region, ellipse_mask,
                                         mask_regions, pixelate_region, scale_boxes)


@pytest.fixture
def noise():
    return np.random.default_rng(3).integers(0, 256, (40, 50, 3), dtype=np.uint8)


def test_pixelate_fixed_grid_of_cell_means(noise):
    region = noise[:10, :15]
    out = pixelate_region(region, cells=5)
    # 5 x 5 cells of 2 x 3 pixels, each its mean colour
    for r in range(5):
        for c in range(5):
            cell = region[2 * r:2 * r + 2, 3 * c:3 * c + 3].reshape(-1, 3).astype(float)
            np.testing.assert_array_equal(out[2 * r:2 * r + 2, 3 * c:3 * c + 3],
                                          np.broadcast_to(np.rint(cell.mean(0)), (2, 3, 3)))
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 25
    tiny = pixelate_region(region[:3, :2], cells=5)  # capped at one cell per pixel
    np.testing.assert_array_equal(tiny, region[:3, :2])


def test_pixelate_uneven_grid_covers_every_pixel(noise):
    out = pixelate_region(noise[:11, :7], cells=5)
    assert out.shape == (11, 7, 3)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 25


def test_modes_change_only_the_scaled_boxes(noise):
    boxes = np.array([[10, 10, 20, 18, 0.9]])
    for mode in ("blur", "pixelate", "solid"):
        style = MaskStyle(mode=mode, scale=2.0)
        out = apply_masks(noise, boxes, style)
        (r0, r1, c0, c1), = mask_regions(boxes, 40, 50, style)
        assert (r0, r1, c0, c1) == (6, 23, 5, 26)  # 20 x 16 box around (15, 14)
        inside = np.zeros((40, 50), bool)
        inside[r0:r1, c0:c1] = True
        np.testing.assert_array_equal(out[~inside], noise[~inside])
        assert (out[inside] != noise[inside]).any(axis=1).mean() > 0.9, mode
    solid = apply_masks(noise, boxes, MaskStyle(mode="solid", color=(255, 0, 0)))
    assert (solid[10:19, 10:21] == (255, 0, 0)).all()
    np.testing.assert_array_equal(apply_masks(noise, boxes, MaskStyle(mode="none")), noise)


def test_ellipse_keeps_the_corners(noise):
    out = apply_masks(noise, np.array([[0, 0, 29, 19]]), MaskStyle(mode="solid", shape="ellipse"))
    np.testing.assert_array_equal(out[0, 0], noise[0, 0])
    np.testing.assert_array_equal(out[19, 29], noise[19, 29])
    assert (out[10, 15] == 0).all() and (out[10, 1] == 0).all()
    inside = ellipse_mask(20, 30)
    assert inside.sum() == pytest.approx(np.pi * 10 * 15, rel=0.05)
    assert ellipse_mask(1, 1).all()


def test_an_ellipse_past_the_border_is_the_whole_boxs_ellipse_cut_there(noise):
    """A face centred on the left edge: the ellipse was inscribed in the box's part inside
    the image, leaving pixels of the face's centre line (by the border) unmasked."""
    style = MaskStyle(mode="solid", shape="ellipse")
    box = np.array([[-15, 10, 14, 29]])  # 30 x 20 pixels, centred on column 0
    out = apply_masks(noise, box, style)
    whole = np.zeros((40, 80), bool)  # the same box drawn 20 px further right, then shifted
    whole[10:30, 5:35] = ellipse_mask(20, 30)
    expected = whole[:, 20:70][:, :50]
    changed = (out != noise).any(axis=2)
    np.testing.assert_array_equal(changed, expected)
    assert changed[10:30, 0].sum() == 20  # the centre line, top to bottom
    far = np.array([[-1e12, -1e12, 30, 20]])  # no (1e12 x 1e12) mask is made for this:
    np.testing.assert_array_equal(apply_masks(noise, far, style), noise)  # a corner, outside


def test_a_face_cut_by_the_border_keeps_its_whole_grid_and_blur(noise):
    """Pixelate laid its 5x5 grid over the part of a face inside the image (cells of 7-8 px
    for a 96 px face three quarters outside, 22 px when whole), and blur took its radius from
    that part: the cut face was hidden less than the whole one."""
    from tinyfaces_trt.runtime.masks import pixelate_region

    wide = np.random.default_rng(3).integers(0, 256, (40, 100, 3), dtype=np.uint8)
    box = np.array([[-75, 0, 24, 39]])  # 100 x 40 px, 25 px of its width inside
    out = apply_masks(wide, box, MaskStyle(mode="pixelate", cells=5))
    whole = np.zeros((40, 200, 3), np.uint8)  # the same face whole, drawn 100 px right
    whole[:, 25:125] = wide[:, :100]
    grid = pixelate_region(whole[:, 25:125], cells=5)
    # the whole face's grid: cells 20 px wide at x = 0, 20, ...; inside: 5 px of one, then 20
    np.testing.assert_array_equal(
        out[:, :25], pixelate_region(wide[:, :25], cells=5, whole=(0, 40, -75, 25)))
    assert len(np.unique(out[0, :25], axis=0)) == 2  # columns 0..4 and 5..24
    assert (out[:, 5:25] == out[:, 5:6]).all()
    assert grid.shape == (40, 100, 3)
    with pytest.raises(AssertionError):  # not the old 5 cells over the 25 px seen
        np.testing.assert_array_equal(out[:, :25], pixelate_region(wide[:, :25], cells=5))
    # blur: the radius of the whole face (0.25 x 100 px), not of the 25 px seen
    blurred = apply_masks(wide, box, MaskStyle(mode="blur"))
    np.testing.assert_array_equal(blurred[:, :25], blur_region(wide[:, :25], 0.25, 100))
    assert not np.array_equal(blurred[:, :25], blur_region(wide[:, :25], 0.25))
    far = np.array([[-1e12, 0, 24, 39]])  # no 1e12-wide grid or radius is made for this
    apply_masks(wide, far, MaskStyle(mode="pixelate", block=4))
    apply_masks(wide, far, MaskStyle(mode="blur"))


def test_blur_strength_scales_with_the_face():
    spot = np.zeros((81, 81, 3), np.uint8)
    spot[38:43, 38:43] = 255
    small, large = blur_region(spot[20:61, 20:61], 0.1), blur_region(spot, 0.1)
    # the same spot is spread further (a lower peak) in the larger face
    assert 0 < large.max() < small.max() < 255


def test_scale_boxes_about_centre():
    b = scale_boxes(np.array([[10, 20, 30, 60, 0.5]]), 1.5)
    np.testing.assert_allclose(b, [[5, 10, 35, 70, 0.5]])


def test_tf_detect_api_is_the_same_code(noise):
    boxes = np.array([[5, 5, 25, 25]])
    np.testing.assert_array_equal(blur_boxes(noise, boxes, 0.3),
                                  apply_masks(noise, boxes, MaskStyle(blur_strength=0.3)))
    np.testing.assert_array_equal(pixelate_boxes(noise, boxes, cells=5),
                                  apply_masks(noise, boxes, MaskStyle(mode="pixelate", cells=5)))
    with pytest.raises(TinyFacesError, match="not both"):
        pixelate_boxes(noise, boxes, block=4, cells=5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="smudge"), "unknown mask mode"), (dict(shape="star"), "unknown mask shape"),
    (dict(scale=0), "mask scale"), (dict(cells=0), "cell"), (dict(blur_strength=-1), "blur")])
def test_bad_styles_are_refused(kwargs, message):
    with pytest.raises(TinyFacesError, match=message):
        MaskStyle(**kwargs)
