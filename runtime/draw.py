"""Drawing detections and anonymising faces on (H, W, 3) uint8 RGB images.

Every function returns a modified copy. Boxes are (N, 4) or (N, 5) [x1, y1, x2, y2(, prob)]
in pixel coordinates, 0-based unless ``base=1.0`` says they are 1-based (the matconvnet
variant's: pass the detector's ``coordinate_base`` with its boxes); rows with a non-finite
coordinate or lying outside the image are skipped. Anonymisation is :mod:`.masks` (one
implementation for every tool): :func:`blur_boxes` and :func:`pixelate_boxes` are a
convenience API over :func:`.masks.apply_masks`, which tf-detect, tf-anonymize and tf-serve
call themselves with :data:`.masks.ANONYMIZE_STYLE` (tf-detect: in its ``--blur`` or
``--pixelate`` mode; the others: unless their options change it). A box covers the pixels
``floor(x1)..ceil(x2)`` and ``floor(y1)..ceil(y2)`` of its 0-based coordinates (clipped to the
image), and at least one pixel even for a box smaller than a pixel.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.runtime.masks import (  # noqa: F401 (box_regions is part of this API)
    MaskStyle, apply_masks, box_regions, check_image, pixel_boxes)


def blur_boxes(image: np.ndarray, boxes: np.ndarray, strength: float = 0.25, *,
               base: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Gaussian-blurs each box region (:func:`.masks.apply_masks` with ``mode="blur"``).

    Args:
        strength: blur radius as a fraction of the region's longer side (at least 1 pixel).
            Only pixels inside the region are blurred and used.
        base: the boxes' coordinate convention, the coordinate of the image's first pixel:
            0.0 (0-based, the pytorch variant's) or 1.0 (1-based, the matconvnet variant's).
            Pass the detector's ``coordinate_base`` with its boxes
            (``blur_boxes(image, boxes, base=detector.coordinate_base)``): 1-based boxes
            taken as 0-based leave the face's first column and top row visible.
        scale: enlarge each box by this factor about its centre first, 1 <= scale <= 100
            (default 1: the box as given). ``scale=ANONYMIZE_STYLE.scale`` (1.3: a detected
            box is tight around the face) with the default ``strength`` gives exactly the
            blur of tf-detect ``--blur``, tf-anonymize and tf-serve ``/anonymize``, which
            call :func:`.masks.apply_masks` with :data:`.masks.ANONYMIZE_STYLE` themselves.

    Raises:
        TinyFacesError: ``base`` is neither 0.0 nor 1.0, or ``strength`` or ``scale`` is out
            of :class:`.masks.MaskStyle`'s range.
    """
    return apply_masks(image, boxes, MaskStyle(mode="blur", blur_strength=strength,
                                               scale=scale), base=base)


def pixelate_boxes(image: np.ndarray, boxes: np.ndarray, block: int | None = None,
                   cells: int | None = None, *, base: float = 0.0,
                   scale: float = 1.0) -> np.ndarray:
    """Replaces each box region by a mosaic of cells of its mean colour
    (:func:`.masks.apply_masks` with ``mode="pixelate"``).

    No mosaic cell is under 2 px along a face side of 2 px or more (see
    :class:`.masks.MaskStyle`).

    Args:
        block: cell size in pixels, at least 2.
        cells: a fixed grid of ``cells`` x ``cells`` per face instead (e.g. 5: Argoverse),
            at most ``side // 2`` per side.
            With neither: about 8 cells across the region's longer side, cells of at least 4 px.
        base: the boxes' coordinate convention, the coordinate of the image's first pixel:
            0.0 (0-based, the pytorch variant's) or 1.0 (1-based, the matconvnet variant's).
            Pass the detector's ``coordinate_base`` with its boxes: 1-based boxes taken as
            0-based leave the face's first column and top row visible.
        scale: enlarge each box by this factor about its centre first, 1 <= scale <= 100
            (default 1: the box as given). ``cells=ANONYMIZE_STYLE.cells`` (5) with
            ``scale=ANONYMIZE_STYLE.scale`` (1.3) gives exactly the mosaic of tf-detect
            ``--pixelate``, tf-anonymize ``--mode pixelate`` and tf-serve
            ``/anonymize?mode=pixelate``, which call :func:`.masks.apply_masks` with
            :data:`.masks.ANONYMIZE_STYLE` themselves (this function's default grid is finer).

    Raises:
        TinyFacesError: both ``block`` and ``cells``, ``base`` neither 0.0 nor 1.0, or
            ``block``, ``cells`` or ``scale`` out of :class:`.masks.MaskStyle`'s range.
    """
    if block is not None and cells is not None:
        raise TinyFacesError("give a pixelation block size or a cell count, not both")
    return apply_masks(image, boxes, MaskStyle(mode="pixelate", block=block, cells=cells,
                                               scale=scale), base=base)


def line_width(height: int, width: int) -> int:
    """Default box outline width: 2 px up to 1000 px images, growing with the longer side so
    boxes stay visible on large photos viewed scaled down (8 px at 4000 px)."""
    return max(2, round(max(height, width) / 500))


def _label_font(line: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if line <= 2:
        return ImageFont.load_default()
    try:
        return ImageFont.load_default(size=5 * line + 1)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def draw_boxes(image: np.ndarray, boxes: np.ndarray, color: tuple[int, int, int] = (0, 255, 0),
               width: int | None = None, show_scores: bool = True, *,
               base: float = 0.0) -> np.ndarray:
    """Draws each box as a rectangle, with its score (column 5, if any) as a label.

    Args:
        width: outline width in pixels; None: :func:`line_width` of the image (labels grow
            with it).
        base: the boxes' coordinate convention, the coordinate of the image's first pixel:
            0.0 (0-based, the pytorch variant's) or 1.0 (1-based, the matconvnet variant's).
            Pass the detector's ``coordinate_base`` with its boxes: 1-based boxes taken as
            0-based are drawn 1 px right of and below the face.

    Raises:
        TinyFacesError: ``base`` is neither 0.0 nor 1.0.
    """
    canvas = Image.fromarray(check_image(image).copy())
    draw = ImageDraw.Draw(canvas)
    b = pixel_boxes(boxes, base)
    height, width_px = image.shape[:2]
    width = line_width(height, width_px) if width is None else width
    font = _label_font(width)
    pad = width + 1  # keeps huge coordinates drawable while edges outside stay invisible
    for row in b:
        if not np.isfinite(row[:4]).all():
            continue
        x1, x2 = (float(np.clip(v, -pad, width_px + pad)) for v in row[0:3:2])
        y1, y2 = (float(np.clip(v, -pad, height + pad)) for v in row[1:4:2])
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=width)
        if show_scores and b.shape[1] == 5 and math.isfinite(row[4]):
            label = f"{row[4]:.2f}"
            left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
            ty = min(y1, y2) - (bottom - top) - 2
            ty = ty if ty >= 0 else max(y1, y2) + 2
            draw.text((min(x1, x2), ty), label, fill=color, font=font)
    return np.asarray(canvas).copy()
