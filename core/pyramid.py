"""Image pyramid planning: which scales the detector runs on, and the resized sizes.

Two rules (``DetectorConfig.pyramid``):

``"adaptive"`` (default; the authors' ``tiny_face_detector.m``)
    Downscale in whole octaves until the largest normal template covers the image, upscale
    in half octaves up to 2x, never letting the longer side exceed ``max_input_dim``.
    Level size is ``max(1, ceil(s * side))`` (MATLAB ``imresize`` with a scale factor).
    Deviation: MATLAB keeps the octaves ``min_e..0`` even when they exceed ``max_e``; here
    every exponent above ``max_e`` is dropped.

``"fixed"`` (the PyTorch port's ``get_detections``)
    For each ``k`` in ``fixed_scales`` the short side becomes ``int(min_side * 2**k)`` and the
    long side ``int(new_short * long / short)`` (torchvision's resize rule). Levels whose
    longer side exceeds ``max_input_dim`` are skipped, and so are levels that would have a
    zero-sized side (the reference would fail on them).

Levels with a side shorter than :data:`MIN_INPUT_SIDE` of the network variant are skipped
(the MatConvNet trunk leaves nothing of a 1-2 px side; ONNX Runtime even dies with SIGFPE).

Detections of a level are divided by its nominal ``scale`` (``2**exponent``), as both
references do, not by the exact ratio of resized to original size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ImageError


#: Smallest input height/width each network variant runs at. The MatConvNet trunk's unpadded
#: ceil-mode ``pool1`` leaves nothing of a 1-2 px side; the port's padded trunk runs down to 1 px.
MIN_INPUT_SIDE: dict[str, int] = {"pytorch": 1, "matconvnet": 3}


@dataclass(frozen=True)
class PyramidLevel:
    """One pyramid level.

    Attributes:
        index: position in the plan (0-based).
        exponent: the level runs at ``scale = 2**exponent``.
        scale: nominal scale factor; boxes are divided by it.
        height, width: size of the resized image fed to the network.
    """

    index: int
    exponent: float
    scale: float
    height: int
    width: int


def _check_size(height: object, width: object) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ImageError(f"image {name} must be an integer, got {value!r}")
        if value < 1:
            raise ImageError(f"image {name} must be >= 1, got {value}")
    return int(height), int(width)


def adaptive_exponents(height: int, width: int, config: DetectorConfig) -> list[float]:
    """Exponents of the adaptive (authors' demo) rule, in run order."""
    t = config.templates
    normal = t[:, 4] == 1
    if not normal.any():
        raise ImageError("the adaptive pyramid needs templates with scale 1; none in the config")
    cw = t[normal, 2] - t[normal, 0] + 1
    ch = t[normal, 3] - t[normal, 1] + 1
    min_e = min(math.floor(math.log2(cw.max() / width)), math.floor(math.log2(ch.max() / height)))
    max_e = min(1.0, -math.log2(max(height, width) / config.max_input_dim))
    exponents = [float(e) for e in range(min_e, 1) if e <= max_e]
    e = 0.5
    while e <= max_e:
        exponents.append(e)
        e += 0.5
    return exponents


def _adaptive_levels(height: int, width: int, config: DetectorConfig) -> list[tuple[float, int, int]]:
    levels = []
    for e in adaptive_exponents(height, width, config):
        s = 2.0 ** e
        levels.append((e, max(1, math.ceil(s * height)), max(1, math.ceil(s * width))))
    return levels


def _fixed_levels(height: int, width: int, config: DetectorConfig) -> list[tuple[float, int, int]]:
    short, long = (width, height) if width <= height else (height, width)
    levels = []
    for k in config.fixed_scales:
        new_short = int(short * 2.0 ** k)
        new_long = int(new_short * long / short)
        if new_short < 1 or new_long > config.max_input_dim:
            continue
        new_h, new_w = (new_long, new_short) if width <= height else (new_short, new_long)
        levels.append((float(k), new_h, new_w))
    return levels


def plan_pyramid(height: int, width: int, config: DetectorConfig) -> list[PyramidLevel]:
    """The pyramid levels for an image of ``height`` x ``width`` pixels.

    Raises:
        ImageError: the size is not a positive integer, or no level fits the rule
            (e.g. an image so large that even the smallest level exceeds ``max_input_dim``,
            or so thin that every level is below :data:`MIN_INPUT_SIDE`).
    """
    height, width = _check_size(height, width)
    if config.pyramid == "adaptive":
        raw = _adaptive_levels(height, width, config)
    else:
        raw = _fixed_levels(height, width, config)
    floor = MIN_INPUT_SIDE[config.variant]
    raw = [(e, h, w) for e, h, w in raw if min(h, w) >= floor]
    if not raw:
        raise ImageError(
            f"no pyramid level fits a {height}x{width} image with the {config.pyramid!r} rule "
            f"(max_input_dim={config.max_input_dim}, fixed_scales={config.fixed_scales}, "
            f"smallest side the {config.variant} network runs at: {floor} px)")
    return [PyramidLevel(i, e, 2.0 ** e, h, w) for i, (e, h, w) in enumerate(raw)]
