"""Face masks: blur, pixelate or fill each face box of an (H, W, 3) uint8 RGB image.

One implementation serves ``tf-detect --blur/--pixelate``, ``tf-anonymize`` and tf-serve's
``/anonymize``, which call :func:`apply_masks` with :data:`ANONYMIZE_STYLE` (tf-detect in its
mode); :mod:`.draw`'s ``blur_boxes``/``pixelate_boxes`` wrap it. A box covers the pixels ``floor(x1)..ceil(x2)`` x ``floor(y1)..ceil(y2)``
clipped to the image (:func:`box_regions`); ``shape="ellipse"`` limits the mask to the
ellipse inscribed in the box's whole region (cut where the box runs past the border). Only pixels inside a mask change.

Boxes are taken as 0-based pixel coordinates unless ``base=1.0`` says they are 1-based (the
matconvnet variant's): pass the detector's
:attr:`~tinyfaces_trt.runtime.pipeline.Detector.coordinate_base` with its boxes, or the face's
first column and top row stay visible.

    style = MaskStyle(mode="pixelate", cells=5, scale=1.3)
    anonymised = apply_masks(image, detector.detect(image), style,
                             base=detector.coordinate_base)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from tinyfaces_trt.core.config import is_real, is_whole
from tinyfaces_trt.core.errors import ImageError, TinyFacesError

MODES = ("blur", "pixelate", "solid", "none")
SHAPES = ("box", "ellipse")
#: Coordinate of the image's first pixel in boxes: 0.0 pytorch (0-based), 1.0 matconvnet.
BASES = (0.0, 1.0)
#: Largest :attr:`MaskStyle.scale`: a box enlarged 100x already covers far more than its face.
MAX_SCALE = 100.0
#: Why :attr:`MaskStyle.scale` is at least 1 (tf-anonymize and tf-serve say it too).
SCALE_RULE = ("mask scale must be a number >= 1 (1 = the detected box): a smaller mask leaves "
              "part of the face visible")
#: Largest :attr:`MaskStyle.blur_strength`: a radius of 10x the face's side already blurs the
#: whole region flat (much larger ones overflow Pillow's blur: "radius too large").
MAX_BLUR_STRENGTH = 10.0
#: Largest :attr:`MaskStyle.cells`. The grid is capped at ``side // 2`` cells per face side
#: anyway: no mosaic cell is under 2 px (a 1 px cell would be a copy of the face's pixel).
MAX_CELLS = 10000
#: Smallest mosaic cell side, in pixels, wherever the face is at least that large
#: (:attr:`MaskStyle.block` >= 2; a grid of ``cells`` is capped to keep it).
MIN_CELL = 2


def check_image(image: np.ndarray) -> np.ndarray:
    """``image`` if it is (H, W, 3) uint8, else :class:`ImageError`."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) uint8 RGB image, got "
                         f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image))}")
    return image


def check_boxes(boxes: np.ndarray) -> np.ndarray:
    """``boxes`` as (N, 4) or (N, 5) float64 (an empty input gives (0, 4))."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] not in (4, 5):
        raise TinyFacesError(f"boxes must be (N, 4) or (N, 5), got shape {b.shape}")
    return b


def check_base(base: float) -> float:
    """``base`` as a float if it is a coordinate convention of :data:`BASES` (0.0: 0-based
    boxes, the pytorch variant's; 1.0: 1-based, the matconvnet variant's), else
    :class:`TinyFacesError`."""
    if not (is_real(base) and base in BASES):
        raise TinyFacesError(f"coordinate base must be 0.0 (0-based boxes, pytorch) or 1.0 "
                             f"(1-based, matconvnet): the detector's coordinate_base, "
                             f"got {base!r}")
    return float(base)


Region = tuple[int, int, int, int]


def _box_extents(boxes: np.ndarray, height: int, width: int) -> Iterator[tuple[Region, Region]]:
    """``(whole, clipped)`` pixel regions ``(y0, y1, x0, x1)`` (end exclusive) of each box
    that reaches into the image: ``whole`` covers the box, also where it runs past the
    border; ``clipped`` is its part inside the image."""
    for x1, y1, x2, y2 in check_boxes(boxes)[:, :4]:
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        xa, xb = sorted((x1, x2))
        ya, yb = sorted((y1, y2))
        whole = (math.floor(ya), math.ceil(yb) + 1, math.floor(xa), math.ceil(xb) + 1)
        r0, r1 = max(whole[0], 0), min(whole[1], height)
        c0, c1 = max(whole[2], 0), min(whole[3], width)
        if c0 < c1 and r0 < r1:
            yield whole, (r0, r1, c0, c1)


def box_regions(boxes: np.ndarray, height: int, width: int) -> Iterator[Region]:
    """Pixel regions ``(y0, y1, x0, x1)`` (end exclusive) fully covering each box, clipped."""
    for _, clipped in _box_extents(boxes, height, width):
        yield clipped


@dataclass(frozen=True)
class MaskStyle:
    """How faces are hidden.

    Attributes:
        mode: ``"blur"`` (Gaussian, radius ``blur_strength`` x the region's longer side),
            ``"pixelate"`` (cells of the mean colour), ``"solid"`` (``color``) or ``"none"``.
        shape: ``"box"`` or ``"ellipse"`` (the ellipse inscribed in the box).
        scale: boxes are enlarged by this factor about their centre first (1 = as detected),
            1 <= scale <= :data:`MAX_SCALE` (100); a smaller mask than the detected box
            would leave part of the face visible, so scale < 1 is refused.
        blur_strength: blur radius as a fraction of the region's longer side,
            0 < blur_strength <= :data:`MAX_BLUR_STRENGTH` (10).
        cells: pixelate as a fixed grid of ``cells`` x ``cells`` per face (Argoverse 1.1
            used 5 x 5), 1 <= cells <= :data:`MAX_CELLS` (10000). No mosaic cell is smaller
            than 2 px (:data:`MIN_CELL`) on a face side of 2 px or more: the grid is capped
            at ``side // 2`` cells per side (a cell per pixel would leave the face as it is).
            Ignored when ``block`` is set.
        block: pixelate with square cells of ``block`` >= 2 pixels instead of a fixed grid
            (a cell under 2 px left at a face's edge joins its neighbour).
        color: RGB fill of ``"solid"``.
    """

    mode: str = "blur"
    shape: str = "box"
    scale: float = 1.0
    blur_strength: float = 0.25
    cells: int | None = 5
    block: int | None = None
    color: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        """Checks every field (a wrong type is refused here, not deep inside
        :func:`apply_masks`); numbers are stored as float and int, ``color`` as a tuple."""
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise TinyFacesError(f"unknown mask mode {self.mode!r}; expected one of {MODES}")
        if not isinstance(self.shape, str) or self.shape not in SHAPES:
            raise TinyFacesError(f"unknown mask shape {self.shape!r}; expected one of {SHAPES}")
        for name, what, rule, top in (
                ("scale", "mask scale", SCALE_RULE, MAX_SCALE),  # < 1: smaller than the face
                ("blur_strength", "blur strength", "blur strength must be a number > 0",
                 MAX_BLUR_STRENGTH)):
            value = getattr(self, name)
            if not (is_real(value) and math.isfinite(value)
                    and (value >= 1 if name == "scale" else value > 0)):
                raise TinyFacesError(f"{rule}, got {value!r}")
            if value > top:  # apply_masks would fail (Pillow, numpy) or mask far too much
                raise TinyFacesError(f"{what} must be at most {top:g}, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name, what, least in (
                ("cells", "pixelation grid must have a whole number >= 1 of cells", 1),
                ("block", f"pixelation block must be a whole number >= {MIN_CELL} of pixels "
                          f"(1 px cells would leave the face as it is)", MIN_CELL)):
            value = getattr(self, name)
            if value is not None and not (is_whole(value) and value >= least):
                raise TinyFacesError(f"{what}, got {value!r}")
            object.__setattr__(self, name, None if value is None else int(value))
        if self.cells is not None and self.cells > MAX_CELLS:
            raise TinyFacesError(f"pixelation grid must have at most {MAX_CELLS} cells, "
                                 f"got {self.cells!r}")
        color = self.color.tolist() if isinstance(self.color, np.ndarray) else self.color
        if not isinstance(color, (tuple, list)) or len(color) != 3 \
                or not all(is_whole(c) and 0 <= c <= 255 for c in color):
            raise TinyFacesError(f"solid colour must be three whole numbers 0..255, got "
                                 f"{self.color!r}")
        object.__setattr__(self, "color", tuple(int(c) for c in color))


#: How tf-anonymize and tf-serve's ``/anonymize`` hide faces by default: blur, the whole
#: box, boxes enlarged 1.3x about their centres (a detected box is tight around the face),
#: blur strength 0.25, 5 x 5 pixelate cells.
ANONYMIZE_STYLE = MaskStyle(scale=1.3)


def pixel_boxes(boxes: np.ndarray, base: float) -> np.ndarray:
    """Boxes (N, 4+) of a variant whose first pixel is at ``base`` (1.0: the matconvnet
    variant's 1-based boxes, ``DetectorConfig.coordinate_base``) as 0-based pixel
    coordinates (extra columns kept). :func:`apply_masks` and the functions of
    :mod:`.draw` do this themselves when given ``base=``.

    Raises:
        TinyFacesError: ``base`` is neither 0.0 nor 1.0 (:func:`check_base`).
    """
    base = check_base(base)
    b = check_boxes(boxes).copy()
    if base and b.size:
        b[:, :4] -= base
    return b


def scale_boxes(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Boxes (N, 4+) enlarged by ``factor`` about their centres (extra columns kept)."""
    b = check_boxes(boxes).copy()
    if factor == 1.0 or b.size == 0:
        return b
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    hw, hh = (b[:, 2] - b[:, 0]) * factor / 2, (b[:, 3] - b[:, 1]) * factor / 2
    b[:, 0], b[:, 2], b[:, 1], b[:, 3] = cx - hw, cx + hw, cy - hh, cy + hh
    return b


def blur_region(region: np.ndarray, strength: float, side: int | None = None) -> np.ndarray:
    """Gaussian blur of one (h, w, 3) region with radius ``strength`` x ``side`` (default:
    its longer side; the whole face's where the region is the part of it inside the image),
    at least 1 px; only the region's own pixels are used."""
    radius = max(1.0, strength * (side or max(region.shape[:2])))
    return np.asarray(Image.fromarray(np.ascontiguousarray(region))
                      .filter(ImageFilter.GaussianBlur(radius)))


def _cell_starts(length: int, cells: int | None, block: int | None, whole: int | None = None,
                 offset: int = 0) -> np.ndarray:
    """Where the cells start along a region of ``length`` pixels that begins ``offset``
    pixels into a face's ``whole`` extent (default: the region itself): the whole face's
    grid, read over the region (a new cell at its start where one was cut). No cell is
    under :data:`MIN_CELL` px where the region is at least that long: the grid has at most
    ``whole // 2`` cells, and a shorter cell (a ``block`` remainder, a cell cut by the
    region's ends) joins its neighbour."""
    whole = length if whole is None else whole
    if block is not None:
        first = -(-offset // block) * block
        starts = np.arange(first, offset + length, block) - offset
    else:
        n = max(1, min(cells, whole // MIN_CELL))
        grid = np.unique(np.floor(np.arange(n) * whole / n).astype(np.int64)) - offset
        starts = grid[(grid >= 0) & (grid < length)]
    starts = list(starts if len(starts) and starts[0] == 0 else np.concatenate([[0], starts]))
    while len(starts) > 1:
        sizes = np.diff(starts + [length])
        short = np.flatnonzero(sizes < MIN_CELL)
        if not len(short):
            break
        i = int(short[0])
        del starts[i if i == len(starts) - 1 else i + 1]  # the last joins the one before
    return np.asarray(starts, dtype=np.int64)


def pixelate_region(region: np.ndarray, cells: int | None = 5, block: int | None = None,
                    whole: Region | None = None) -> np.ndarray:
    """One (h, w, 3) region as a mosaic, each cell its mean colour (rounded).

    No cell is under 2 px (:data:`MIN_CELL`) along a side of 2 px or more: a 1 px cell
    would be a copy of the face's pixels.

    Args:
        cells: a fixed grid of ``cells`` x ``cells``, at most ``side // 2`` per side.
        block: square cells of ``block`` >= 2 pixels instead (the last row/column may be
            smaller, but not under 2 px: a 1 px remainder joins its neighbour).
            With neither: about 8 cells across the longer side, cells of at least 4 px.
        whole: ``(y0, y1, x0, x1)`` of the face's whole extent, relative to the region's
            first pixel, where the region is its part inside the image: the grid is the
            whole face's, cut with it (default: the region itself).

    Raises:
        TinyFacesError: ``block`` under 2.
    """
    if block is not None and block < MIN_CELL:
        raise TinyFacesError(f"pixelation block must be a whole number >= {MIN_CELL} of "
                             f"pixels (1 px cells would leave the face as it is), got {block!r}")
    h, w = region.shape[:2]
    y0, y1, x0, x1 = whole if whole is not None else (0, h, 0, w)
    if cells is None and block is None:
        block = max(4, math.ceil(max(y1 - y0, x1 - x0) / 8))
    ys = _cell_starts(h, cells, block, y1 - y0, -y0)
    xs = _cell_starts(w, cells, block, x1 - x0, -x0)
    data = region.astype(np.float64)
    sums = np.add.reduceat(np.add.reduceat(data, ys, axis=0), xs, axis=1)
    heights = np.diff(np.append(ys, h))
    widths = np.diff(np.append(xs, w))
    means = np.rint(sums / (heights[:, None] * widths[None, :])[:, :, None]).astype(np.uint8)
    return np.repeat(np.repeat(means, heights, axis=0), widths, axis=1)


def ellipse_mask(height: int, width: int) -> np.ndarray:
    """bool (height, width): the pixels whose centres lie in the inscribed ellipse (never
    empty: the centre pixel is always in)."""
    return _ellipse_part((0, height, 0, width), (0, height, 0, width))


def _ellipse_part(whole: Region, part: Region) -> np.ndarray:
    """bool, the shape of ``part``: :func:`ellipse_mask` of the region ``whole``, read over
    ``part`` (a region inside it), without making the whole one (a box may run far past
    the border)."""
    (w0, w1, v0, v1), (r0, r1, c0, c1) = whole, part
    height, width = w1 - w0, v1 - v0
    y = (np.arange(r0 - w0, r1 - w0) + 0.5 - height / 2) / (height / 2)
    x = (np.arange(c0 - v0, c1 - v0) + 0.5 - width / 2) / (width / 2)
    inside = y[:, None] ** 2 + x[None, :] ** 2 <= 1.0
    cy, cx = w0 + height // 2, v0 + width // 2
    if r0 <= cy < r1 and c0 <= cx < c1:
        inside[cy - r0, cx - c0] = True
    return inside


def _masked_region(region: np.ndarray, style: MaskStyle, whole: Region) -> np.ndarray:
    """The masked pixels of ``region``, the part inside the image of a face whose ``whole``
    extent is given relative to the region's first pixel (the grid and the blur radius are
    the whole face's)."""
    if style.mode == "blur":  # a radius past 4x the part seen only spreads its mean further
        side = min(max(whole[1] - whole[0], whole[3] - whole[2]), 4 * max(region.shape[:2]))
        return blur_region(region, style.blur_strength, side)
    if style.mode == "pixelate":
        return pixelate_region(region, style.cells, style.block, whole)
    return np.broadcast_to(np.asarray(style.color, np.uint8), region.shape)


def mask_regions(boxes: np.ndarray, height: int, width: int, style: MaskStyle, *,
                 base: float = 0.0) -> list[tuple[int, int, int, int]]:
    """The pixel regions ``(y0, y1, x0, x1)`` that :func:`apply_masks` changes for ``boxes``
    of coordinate ``base`` (after ``style.scale``); empty for ``mode="none"``."""
    base = check_base(base)
    if style.mode == "none":
        return []
    return list(box_regions(scale_boxes(pixel_boxes(boxes, base), style.scale)[:, :4],
                            height, width))


def apply_masks(image: np.ndarray, boxes: np.ndarray, style: MaskStyle = MaskStyle(), *,
                base: float = 0.0) -> np.ndarray:
    """A copy of ``image`` with every box of ``boxes`` ((N, 4) or (N, 5)) hidden per ``style``.

    Boxes are masked in order on the progressively masked image, so overlapping faces are
    both hidden. Rows with a non-finite coordinate or outside the image are skipped.

    Args:
        base: the boxes' coordinate convention, the coordinate of the image's first pixel:
            0.0 (0-based, the pytorch variant's) or 1.0 (1-based, the matconvnet variant's).
            Pass the detector's ``coordinate_base`` with its boxes
            (``apply_masks(image, boxes, style, base=detector.coordinate_base)``): 1-based
            boxes taken as 0-based leave the face's first column and top row visible.

    Raises:
        TinyFacesError: ``base`` is neither 0.0 nor 1.0, or ``boxes`` is not (N, 4) or (N, 5).
        ImageError: ``image`` is not (H, W, 3) uint8.
    """
    out = check_image(image).copy()
    base = check_base(base)
    if style.mode == "none":
        return out
    scaled = scale_boxes(pixel_boxes(boxes, base), style.scale)[:, :4]
    for (w0, w1, v0, v1), (r0, r1, c0, c1) in _box_extents(scaled, *out.shape[:2]):
        region = out[r0:r1, c0:c1]
        masked = _masked_region(region, style, (w0 - r0, w1 - r0, v0 - c0, v1 - c0))
        if style.shape == "ellipse":  # the whole box's ellipse, cut at the border
            inside = _ellipse_part((w0, w1, v0, v1), (r0, r1, c0, c1))
            region[inside] = masked[inside]
        else:
            region[...] = masked
    return out
