"""Drawing detections and anonymising faces on (H, W, 3) uint8 RGB images.

Every function returns a modified copy. Boxes are (N, 4) or (N, 5) [x1, y1, x2, y2(, prob)]
in pixel coordinates; rows with a non-finite coordinate or lying outside the image are
skipped. For anonymisation a box covers the pixels ``floor(x1)..ceil(x2)`` and
``floor(y1)..ceil(y2)`` (clipped to the image): generous under any pixel convention, and at
least one pixel even for a box smaller than a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tinyfaces_trt.core.errors import ImageError, TinyFacesError


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) uint8 RGB image, got "
                         f"{getattr(image, 'shape', None)} {getattr(image, 'dtype', type(image))}")
    return image


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] not in (4, 5):
        raise TinyFacesError(f"boxes must be (N, 4) or (N, 5), got shape {b.shape}")
    return b


def box_regions(boxes: np.ndarray, height: int, width: int) -> Iterator[tuple[int, int, int, int]]:
    """Pixel regions ``(y0, y1, x0, x1)`` (end exclusive) fully covering each box, clipped."""
    for x1, y1, x2, y2 in _check_boxes(boxes)[:, :4]:
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            continue
        xa, xb = sorted((x1, x2))
        ya, yb = sorted((y1, y2))
        c0, c1 = max(math.floor(xa), 0), min(math.ceil(xb), width - 1) + 1
        r0, r1 = max(math.floor(ya), 0), min(math.ceil(yb), height - 1) + 1
        if c0 < c1 and r0 < r1:
            yield r0, r1, c0, c1


def blur_boxes(image: np.ndarray, boxes: np.ndarray, strength: float = 0.25) -> np.ndarray:
    """Gaussian-blurs each box region.

    Args:
        strength: blur radius as a fraction of the region's longer side (at least 1 pixel).
            Only pixels inside the region are blurred and used.
    """
    out = _check_image(image).copy()
    if strength <= 0:
        raise TinyFacesError(f"blur strength must be > 0, got {strength}")
    for r0, r1, c0, c1 in box_regions(boxes, *out.shape[:2]):
        radius = max(1.0, strength * max(r1 - r0, c1 - c0))
        crop = Image.fromarray(out[r0:r1, c0:c1])
        out[r0:r1, c0:c1] = np.asarray(crop.filter(ImageFilter.GaussianBlur(radius)))
    return out


def pixelate_boxes(image: np.ndarray, boxes: np.ndarray, block: int | None = None) -> np.ndarray:
    """Replaces each box region by a mosaic of ``block`` x ``block`` cells of its mean colour.

    Args:
        block: cell size in pixels; None gives each region about 8 cells across its longer
            side, with cells of at least 4 pixels (small faces become a few flat blocks).
    """
    out = _check_image(image).copy()
    if block is not None and block < 1:
        raise TinyFacesError(f"pixelation block must be >= 1 pixel, got {block}")
    for r0, r1, c0, c1 in box_regions(boxes, *out.shape[:2]):
        cell = block or max(4, math.ceil(max(r1 - r0, c1 - c0) / 8))
        region = out[r0:r1, c0:c1].astype(np.float64)
        ys, xs = np.arange(0, r1 - r0, cell), np.arange(0, c1 - c0, cell)
        sums = np.add.reduceat(np.add.reduceat(region, ys, axis=0), xs, axis=1)
        counts = np.add.reduceat(np.add.reduceat(np.ones(region.shape[:2]), ys, axis=0), xs, axis=1)
        means = np.rint(sums / counts[:, :, None]).astype(np.uint8)
        out[r0:r1, c0:c1] = np.repeat(np.repeat(means, cell, axis=0), cell, axis=1)[:r1 - r0, :c1 - c0]
    return out


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
               width: int | None = None, show_scores: bool = True) -> np.ndarray:
    """Draws each box as a rectangle, with its score (column 5, if any) as a label.

    Args:
        width: outline width in pixels; None: :func:`line_width` of the image (labels grow
            with it).
    """
    canvas = Image.fromarray(_check_image(image).copy())
    draw = ImageDraw.Draw(canvas)
    b = _check_boxes(boxes)
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
