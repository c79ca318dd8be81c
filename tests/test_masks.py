"""Face masks (runtime/masks.py): modes, shapes, scaling; runtime/draw.py's blur_boxes and
pixelate_boxes are a convenience API over them."""

from __future__ import annotations

import numpy as np
import pytest

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.runtime.draw import blur_boxes, draw_boxes, pixelate_boxes
from tinyfaces_trt.runtime.masks import (MaskStyle, apply_masks, blur_region, ellipse_mask,
                                         mask_regions, pixel_boxes, pixelate_region,
                                         scale_boxes)


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
    tiny = pixelate_region(region[:3, :2], cells=5)  # capped at one cell of 3 x 2 (3 // 2, 2 // 2)
    mean = np.rint(region[:3, :2].reshape(-1, 3).astype(float).mean(0))
    np.testing.assert_array_equal(tiny, np.broadcast_to(mean, (3, 2, 3)))


def test_pixelate_uneven_grid_covers_every_pixel(noise):
    out = pixelate_region(noise[:11, :7], cells=5)
    assert out.shape == (11, 7, 3)
    # 5 rows of cells, 3 columns (7 // 2: no cell under 2 px)
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 15


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
    (dict(scale=0), "mask scale"), (dict(cells=0), "cell"), (dict(blur_strength=-1), "blur"),
    (dict(scale=0.5), "mask scale must be a number >= 1"), (dict(block=1), "pixelation block")])
def test_bad_styles_are_refused(kwargs, message):
    with pytest.raises(TinyFacesError, match=message):
        MaskStyle(**kwargs)


# The face of these tests: 0-based pixels x 10..20, y 10..18; as a 1-based box, 11..21 x 11..19.
FACE0 = np.array([[10, 10, 20, 18, 0.9]])
FACE1 = FACE0 + [1, 1, 1, 1, 0]
HIDERS = {
    "solid": lambda image, boxes, **kw: apply_masks(image, boxes, MaskStyle(mode="solid"), **kw),
    "ellipse": lambda image, boxes, **kw: apply_masks(
        image, boxes, MaskStyle(mode="pixelate", shape="ellipse"), **kw),
    "blur_boxes": blur_boxes,
    "pixelate_boxes": lambda image, boxes, **kw: pixelate_boxes(image, boxes, cells=5, **kw),
}


@pytest.mark.parametrize("name", HIDERS)
def test_one_based_boxes_with_base_1_hide_the_faces_first_column_and_top_row(noise, name):
    """1-based boxes (the matconvnet variant's) were taken as 0-based: the mask sat 1 px right
    of and below the face, whose first column and top row stayed visible."""
    hide = HIDERS[name]
    out = hide(noise, FACE1, base=1.0)
    np.testing.assert_array_equal(out, hide(noise, FACE0))  # the same pixels as 0-based
    changed = (out != noise).any(axis=2)
    if name != "ellipse":
        assert changed[10:19, 10].any() and changed[10, 10:21].any()  # first column, top row
        assert changed[10:19, 10:21].mean() > 0.9
        expected = np.zeros_like(changed)
        expected[10:19, 10:21] = changed[10:19, 10:21]
        np.testing.assert_array_equal(changed, expected)  # nothing left of or above it, ...
    assert not changed[:, 9].any() and not changed[9].any()
    assert not changed[:, 21].any() and not changed[19].any()  # ... nor right of or below
    np.testing.assert_array_equal(hide(noise, FACE1, base=0.0), hide(noise, FACE1))


def test_base_is_applied_before_the_mask_scale(noise):
    """``scale`` enlarges the face about its centre in pixels: the same mask either way."""
    style = MaskStyle(mode="solid", scale=1.3)
    out = apply_masks(noise, FACE1, style, base=1.0)
    np.testing.assert_array_equal(out, apply_masks(noise, FACE0, style))
    assert mask_regions(FACE1, 40, 50, style, base=1.0) == mask_regions(FACE0, 40, 50, style)


def test_base_0_leaves_boxes_as_they_were(noise):
    """0-based boxes (the default, the pytorch variant's): unchanged by ``base=0.0``."""
    solid = apply_masks(noise, FACE0, MaskStyle(mode="solid"), base=0.0)
    changed = (solid != noise).any(axis=2)
    assert changed[10:19, 10:21].all() and changed.sum() == 9 * 11
    for name, hide in HIDERS.items():
        np.testing.assert_array_equal(hide(noise, FACE0, base=0.0), hide(noise, FACE0), name)
    np.testing.assert_array_equal(draw_boxes(noise, FACE0, base=0.0), draw_boxes(noise, FACE0))
    assert mask_regions(FACE0, 40, 50, MaskStyle(), base=0.0) == [(10, 19, 10, 21)]
    assert mask_regions(FACE1, 40, 50, MaskStyle(), base=1.0) == [(10, 19, 10, 21)]


def test_draw_boxes_with_base_1_outlines_the_face():
    black = np.zeros((40, 50, 3), np.uint8)
    drawn = draw_boxes(black, FACE1, width=1, show_scores=False, base=1.0)
    np.testing.assert_array_equal(drawn, draw_boxes(black, FACE0, width=1, show_scores=False))
    lit = (drawn != 0).any(axis=2)
    assert lit[10:19, 10].all() and lit[10, 10:21].all()  # the face's first column and top row
    assert lit[10:19, 20].all() and lit[18, 10:21].all()
    assert lit.sum() == 2 * 11 + 2 * 7 and not lit[:, 21].any() and not lit[19].any()
    # the score label is placed from the same corner
    labelled = draw_boxes(np.zeros((60, 60, 3), np.uint8), FACE1 + [0, 20, 0, 20, 0], base=1.0)
    np.testing.assert_array_equal(
        labelled, draw_boxes(np.zeros((60, 60, 3), np.uint8), FACE0 + [0, 20, 0, 20, 0]))


@pytest.mark.parametrize("base", [2, -1, 0.5, float("nan"), True, "1", None])
def test_a_base_other_than_0_or_1_is_refused(noise, base):
    functions = [lambda: apply_masks(noise, FACE1, MaskStyle(), base=base),
                 lambda: apply_masks(noise, FACE1, MaskStyle(mode="none"), base=base),
                 lambda: blur_boxes(noise, FACE1, base=base),
                 lambda: pixelate_boxes(noise, FACE1, base=base),
                 lambda: draw_boxes(noise, FACE1, base=base),
                 lambda: mask_regions(FACE1, 40, 50, MaskStyle(), base=base),
                 lambda: pixel_boxes(FACE1, base)]
    for call in functions:
        with pytest.raises(TinyFacesError, match=r"coordinate base must be 0\.0 .* or 1\.0"):
            call()
    for good in (0, 1, np.float64(1.0), np.int64(0)):
        apply_masks(noise, FACE1, base=good)


def test_a_matconvnet_detectors_boxes_masked_with_its_coordinate_base():
    """End to end: a matconvnet detector's box clipped to the image's corner (1, 1) left
    the image's first column and top row of the face visible."""
    from helpers_runners import PooledRunner
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.runtime.pipeline import Detector

    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    pytorch = Detector(PooledRunner(), DetectorConfig(variant="pytorch"))
    detector = Detector(PooledRunner(), DetectorConfig(variant="matconvnet"))
    assert (pytorch.coordinate_base, detector.coordinate_base) == (0.0, 1.0)
    with pytest.raises(AttributeError):
        detector.coordinate_base = 0.0
    boxes = detector.detect(image)[:1]
    assert boxes[0, 0] == boxes[0, 1] == 1.0  # the face at the image's corner, 1-based
    style = MaskStyle(mode="solid")
    out = apply_masks(image, boxes, style, base=detector.coordinate_base)
    np.testing.assert_array_equal(out, apply_masks(image, boxes - [1, 1, 1, 1, 0], style))
    assert (out[0, 0] == 0).all() and (out[:int(boxes[0, 3]), 0] == 0).all()
    assert (apply_masks(image, boxes, style)[0, 0] == image[0, 0]).all()  # the leak


@pytest.mark.parametrize("kwargs, message", [
    (dict(scale=100.5), "mask scale must be at most 100, got 100.5"),
    (dict(blur_strength=1e9), "blur strength must be at most 10, got 1000000000.0"),
    (dict(cells=10001), "pixelation grid must have at most 10000 cells, got 10001")])
def test_styles_past_the_limits_are_refused(kwargs, message):
    """They were accepted, then apply_masks failed: Pillow's 'radius too large', numpy's
    'Python int too large to convert to C long'."""
    with pytest.raises(TinyFacesError) as info:
        MaskStyle(**kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (1500, 2000, 3)])
def test_the_largest_accepted_values_work(shape):
    """The documented limits (tf-anonymize's --help, README) work on a tiny and a large image,
    for a face filling it and one running far past its borders."""
    from tinyfaces_trt.runtime.masks import MAX_BLUR_STRENGTH, MAX_CELLS, MAX_SCALE

    assert (MAX_SCALE, MAX_BLUR_STRENGTH, MAX_CELLS) == (100, 10, 10000)
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    h, w = shape[:2]
    boxes = np.array([[0, 0, w - 1, h - 1, 0.9], [-1e6, -1e6, 1e6, 1e6, 0.8]])
    for style in (MaskStyle(mode="blur", scale=MAX_SCALE, blur_strength=MAX_BLUR_STRENGTH),
                  MaskStyle(mode="pixelate", scale=MAX_SCALE, cells=MAX_CELLS, shape="ellipse")):
        out = apply_masks(image, boxes, style, base=1.0)
        assert out.shape == shape and out.dtype == np.uint8
    # a whole-image blur of that radius leaves it flat (noise spanning 0..255 before)
    out = apply_masks(image, boxes[:1], MaskStyle(scale=MAX_SCALE,
                                                  blur_strength=MAX_BLUR_STRENGTH))
    assert np.ptp(out.reshape(-1, 3).astype(int), axis=0).max() <= 2


@pytest.mark.parametrize("option, value, message", [
    ("--blur-strength", "1e9", "argument --blur-strength: 1000000000.0 must be > 0 and <= 10"),
    ("--mask-scale", "1e300", "argument --mask-scale: 1e+300 must be >= 1 and <= 100 (1 = the "
                              "detected box: a smaller mask leaves part of the face visible)"),
    ("--mask-scale", "0.5", "argument --mask-scale: 0.5 must be >= 1 and <= 100 (1 = the "
                            "detected box: a smaller mask leaves part of the face visible)"),
    ("--cells", "10001", "argument --cells: 10001 must be between 1 and 10000")])
def test_tf_anonymize_refuses_values_past_the_limits(tmp_path, capsys, option, value, message):
    """--blur-strength 1e9 ended in a ValueError traceback per image."""
    from tinyfaces_trt.anonymize.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), option, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines()[-1] == f"tf-anonymize: error: {message}"
    assert "Traceback" not in err


# -- pixelate never leaves the face as it is; no mask smaller than the box (review finding 3) --

def _runs(line: np.ndarray) -> list[int]:
    """Lengths of the runs of equal pixels along ``line`` (n, 3)."""
    new = np.flatnonzero((line[1:] != line[:-1]).any(axis=1)) + 1
    return np.diff(np.concatenate([[0], new, [len(line)]])).tolist()


def _cells_are_at_least_2_px(out: np.ndarray) -> None:
    """Every run of one colour along each row and column of ``out`` (a pixelated face of
    noise: two cells next to each other practically never share a mean) spans >= 2 px
    where that side is >= 2 px."""
    h, w = out.shape[:2]
    for r in range(h if w >= 2 else 0):
        assert min(_runs(out[r])) >= 2, (r, _runs(out[r]))
    for c in range(w if h >= 2 else 0):
        assert min(_runs(out[:, c])) >= 2, (c, _runs(out[:, c]))


def test_no_mosaic_cell_is_under_2_px_whatever_the_face_and_grid():
    """``_cell_starts`` capped the grid at one cell per pixel: ``cells`` >= the face's size
    (or ``block=1``) gave 1 px cells, the face unchanged. Random faces of 2..64 px, whole or
    cut by the border, any grid: each cell spans >= 2 px, and on a checkerboard (where a
    2-pixel cell's mean is neither 0 nor 255) no face pixel keeps its value."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    board = np.broadcast_to(((np.indices((80, 80)).sum(0) % 2) * 255).astype(np.uint8)[..., None],
                            (80, 80, 3)).copy()
    for _ in range(400):
        fw, fh = rng.integers(2, 65, size=2)
        x0, y0 = rng.integers(-fw // 2, 80 - fw // 2), rng.integers(-fh // 2, 80 - fh // 2)
        box = np.array([[x0, y0, x0 + fw - 1, y0 + fh - 1]], float)  # fw x fh pixels
        grid = (dict(cells=int(rng.choice([1, 2, 5, fw // 2, fw - 1, fw, 32, 64, 10000])))
                if rng.random() < 0.6 else dict(block=int(rng.integers(2, 9)), cells=None))
        style = MaskStyle(mode="pixelate", **grid)
        (r0, r1, c0, c1), = mask_regions(box, 80, 80, style)
        _cells_are_at_least_2_px(apply_masks(noise, box, style)[r0:r1, c0:c1])
        changed = (apply_masks(board, box, style) != board).any(axis=2)[r0:r1, c0:c1]
        if r1 - r0 >= 2 or c1 - c0 >= 2:  # a 1 x 1 part seen is one pixel whatever is done
            assert changed.all(), (box, grid, (r0, r1, c0, c1))


@pytest.mark.parametrize("side, cells", [(24, 32), (30, 32), (30, 64), (24, 24), (5, 3)])
def test_a_grid_finer_than_the_face_still_hides_it(noise, side, cells):
    """The review's case: a 24 px face with --cells 32 came out byte-identical (576 of 576
    pixels); 30 px faces kept 324 (cells=32) and 900 (cells=64) of 900."""
    box = np.array([[10, 5, 10 + side - 1, 5 + side - 1]], float)
    out = apply_masks(noise, box, MaskStyle(mode="pixelate", cells=cells))
    face, seen = out[5:5 + side, 10:10 + side], noise[5:5 + side, 10:10 + side]
    assert (face != seen).any(axis=2).mean() > 0.9
    _cells_are_at_least_2_px(face)
    assert len(_runs(face[0])) == min(cells, side // 2)  # side // 2 cells of >= 2 px


def test_block_and_remainders_are_at_least_2_px(noise):
    """block=1 left the face as it was: refused (MaskStyle, pixelate_boxes, pixelate_region).
    A 1 px remainder (5 px face, block 2) joins its neighbour: cells 2 + 3, not 2 + 2 + 1."""
    message = "pixelation block must be a whole number >= 2 of pixels (1 px cells would leave " \
              "the face as it is), got 1"
    for call in (lambda: MaskStyle(mode="pixelate", block=1),
                 lambda: pixelate_boxes(noise, FACE0, block=1),
                 lambda: pixelate_region(noise[:10, :10], block=1)):
        with pytest.raises(TinyFacesError) as info:
            call()
        assert str(info.value) == message
    out = pixelate_region(noise[:5, :5], block=2)
    assert _runs(out[0]) == [2, 3] and _runs(out[:, 0]) == [2, 3]
    # a face cut by the border 1 px into a cell: that pixel joins the next cell
    cut = pixelate_region(noise[:6, :7], block=4, whole=(0, 6, -3, 7))  # columns 3..9 of 10
    assert _runs(cut[0]) == [5, 2] and _runs(cut[:, 0]) == [4, 2]  # not 1, 4, 2


@pytest.mark.parametrize("scale", [0.5, 0.1, 0.999])
def test_a_mask_smaller_than_the_box_is_refused(noise, scale):
    """scale 0.5 left 644 of a 30 px face's 900 pixels visible, 0.1 left 884."""
    with pytest.raises(TinyFacesError) as info:
        MaskStyle(scale=scale)
    assert str(info.value) == ("mask scale must be a number >= 1 (1 = the detected box): a smaller mask "
                               f"leaves part of the face visible, got {scale!r}")
    for call in (lambda: blur_boxes(noise, FACE0, scale=scale),
                 lambda: pixelate_boxes(noise, FACE0, scale=scale)):
        with pytest.raises(TinyFacesError, match="mask scale must be a number >= 1"):
            call()
    assert MaskStyle(scale=1).scale == 1.0


def test_draw_mask_functions_with_the_anonymize_style_give_the_tools_masks(noise):
    """blur_boxes/pixelate_boxes mask the box as given by default (API unchanged) and, with
    ANONYMIZE_STYLE's settings, exactly as the tools do: tf-detect --blur/--pixelate
    (its mask_style), tf-anonymize and tf-serve /anonymize all call apply_masks with
    ANONYMIZE_STYLE (in the mode asked for), not these functions. pixelate_boxes' own
    default grid is finer than their 5 x 5 one."""
    from dataclasses import replace

    from tinyfaces_trt.cli.detect_plan import mask_style
    from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE

    s = ANONYMIZE_STYLE.scale
    assert (s, ANONYMIZE_STYLE.cells) == (1.3, 5)
    for mode, ours in (("blur", blur_boxes(noise, FACE0, scale=s)),
                       ("pixelate", pixelate_boxes(noise, FACE0, cells=5, scale=s))):
        assert mask_style(mode) == replace(ANONYMIZE_STYLE, mode=mode)
        np.testing.assert_array_equal(ours, apply_masks(noise, FACE0, mask_style(mode)))
    assert not np.array_equal(pixelate_boxes(noise, FACE0, scale=s),
                              apply_masks(noise, FACE0, mask_style("pixelate")))
    np.testing.assert_array_equal(blur_boxes(noise, FACE0, 0.3, scale=s),
                                  apply_masks(noise, FACE0, MaskStyle(blur_strength=0.3, scale=s)))
    np.testing.assert_array_equal(blur_boxes(noise, FACE0), apply_masks(noise, FACE0))
    changed = (blur_boxes(noise, FACE0, scale=s) != noise).any(axis=2)
    (r0, r1, c0, c1), = mask_regions(FACE0, 40, 50, ANONYMIZE_STYLE)
    assert (r0, r1, c0, c1) == (8, 21, 8, 23)  # x 8.5..21.5, y 8.8..19.2: 1.3x the box
    assert not changed[:r0].any() and not changed[r1:].any()
    assert changed[r0:r1, c0:c1].mean() > 0.9


def test_pixelate_cells_start_at_the_floor_of_i_times_side_over_cells(noise):
    """A grid that does not divide the side puts cell i at floor(i * side / cells): 7 rows
    in 3 cells start at 0, 2, 4 and 10 columns at 0, 3, 6 (the last cells take the extra
    pixels). Rounding instead (0, 2, 5 and 0, 3, 7) would move boundaries by a pixel: every
    face still hidden, but not as the outputs tf-anonymize already made under the same
    masking revision (anonymize.sidecar.MASKS_REVISION), which its reruns keep."""
    region = noise[:7, :10]
    out = pixelate_region(region, cells=3)
    expected = np.empty_like(region)
    for r0, r1 in ((0, 2), (2, 4), (4, 7)):
        for c0, c1 in ((0, 3), (3, 6), (6, 10)):
            cell = region[r0:r1, c0:c1].reshape(-1, 3).astype(float)
            expected[r0:r1, c0:c1] = np.rint(cell.mean(0))
    np.testing.assert_array_equal(out, expected)
