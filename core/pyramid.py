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

A plan can be empty: no level fits the image (a 1x1 or 1x100 image on the matconvnet
variant, an image whose every level exceeds ``max_input_dim`` with the fixed rule), or none
can produce a face in ``[min_face, max_face]`` (``min_face`` larger than the image allows).
Such an image has no faces to find: the detector returns no boxes without running the
network; :func:`no_level_reason` says why (logged at DEBUG by :func:`plan_pyramid`). A
``[min_face, max_face]`` that no level of any image can meet is refused when the config is
made (:func:`face_range_reachable`).

Face-size pruning (``DetectorConfig.min_face`` / ``max_face``)
    Template ``c`` (``cw x ch`` pixels on the level) at a level of scale ``s`` predicts a box
    of ``cw*exp(tw)/s x ch*exp(th)/s`` original pixels. Assuming the regression stays within
    ``exp(|tw|), exp(|th|) <= R`` (``config.size_refinement``, default 2: one octave either
    way), the box's longer side -- the *face size* -- lies in
    ``[L/(R*s), L*R/s]`` with ``L = max(cw, ch)`` (:func:`template_face_sizes`). A template is
    decoded only when that range meets ``[min_face, max_face]``
    (:func:`active_templates`), and a level runs only when one of its templates is active.
    Boxes clipped at the image border can come out smaller than the range; they are kept or
    dropped with their template. Recall trade-off: a face the network would have found only
    through a regression beyond ``R`` at a pruned level is lost (a smaller ``R`` prunes more).
    With the shipped templates the type A templates (43..110 px tall) run at every scale, so
    the 2x level produces faces of 21..55 px nominally and up to 110 px with ``R = 2``:
    ``min_face`` removes it only above 110 px (55 px with ``R = 1``), so ``min_face=20`` prunes
    nothing; ``max_face`` removes the downscaled levels (``max_face=40`` keeps 1x and up).

Detections of a level are divided by its nominal ``scale`` (``2**exponent``), as both
references do, not by the exact ratio of resized to original size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from tinyfaces_trt.core.config import NUM_TEMPLATES, DetectorConfig, is_integer
from tinyfaces_trt.core.errors import ImageError

log = logging.getLogger(__name__)

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


TYPE_A = np.arange(4, 12)   # templates run at every scale (0-based)
TYPE_B = np.arange(18, 25)  # templates run at one scale only


def policy_templates(scale: float, config: DetectorConfig) -> np.ndarray:
    """Which of the 25 templates the reference runs at ``scale`` (bool[25]), per
    ``config.template_policy``, before any face-size pruning."""
    active = np.zeros(NUM_TEMPLATES, dtype=bool)
    active[TYPE_A] = True
    tscale = config.templates[TYPE_B, 4]
    if config.template_policy == "pytorch":
        # tinyfaces/models/utils.py get_bboxes: s > 1 keeps scale == 1 (a deviation from the
        # authors, which makes Type B unused with the shipped templates).
        keep_b = tscale < 1 if scale < 1 else tscale == 1
    elif scale < 1:
        keep_b = tscale < 1
    elif scale == 1:
        keep_b = tscale == 1
    else:
        keep_b = tscale > 1
    active[TYPE_B[keep_b]] = True
    return active


def template_face_sizes(scale: float, config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest) face size, in original-image pixels, each template can produce at a
    level of ``scale``: ``L/(R*s)`` and ``L*R/s`` with ``L`` the template's longer side and
    ``R = config.size_refinement`` (see the module docstring). Two float64 arrays of 25."""
    t = config.templates
    longer = np.maximum(t[:, 2] - t[:, 0] + 1, t[:, 3] - t[:, 1] + 1)
    r = config.size_refinement
    return longer / (r * scale), longer * r / scale


def active_templates(scale: float, config: DetectorConfig) -> np.ndarray:
    """Which of the 25 templates are decoded at ``scale`` (bool[25]): the template policy's,
    less those that cannot produce a face in ``[config.min_face, config.max_face]``."""
    active = policy_templates(scale, config)
    if config.min_face is not None or config.max_face is not None:
        smallest, largest = template_face_sizes(scale, config)
        if config.min_face is not None:
            active &= largest >= config.min_face
        if config.max_face is not None:
            active &= smallest <= config.max_face
    return active


def _check_size(height: object, width: object) -> tuple[int, int]:
    for name, value in (("height", height), ("width", width)):
        if not is_integer(value):
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

    Empty when no level fits the rule (an image so thin that every level is below
    :data:`MIN_INPUT_SIDE`, or so large that even the smallest level exceeds
    ``max_input_dim`` with the fixed rule) or none can produce a face in ``[min_face,
    max_face]``: such an image has no faces to find. The reason is logged at DEBUG
    (:func:`no_level_reason`).

    Raises:
        ImageError: the size is not a positive integer.
    """
    height, width = _check_size(height, width)
    raw, pruned = _plan(height, width, config)
    if not pruned:
        log.debug("%s", _no_level_reason(height, width, config, raw))
    return [PyramidLevel(i, e, 2.0 ** e, h, w) for i, (e, h, w) in enumerate(pruned)]


def no_level_reason(height: int, width: int, config: DetectorConfig) -> str | None:
    """Why :func:`plan_pyramid` has no level for an image of that size; None when it has one
    (what a caller that needs levels, e.g. a TensorRT profile, raises with).

    Raises:
        ImageError: the size is not a positive integer.
    """
    height, width = _check_size(height, width)
    raw, pruned = _plan(height, width, config)
    return None if pruned else _no_level_reason(height, width, config, raw)


_Levels = list[tuple[float, int, int]]  # (exponent, height, width) per level


def _plan(height: int, width: int, config: DetectorConfig) -> tuple[_Levels, _Levels]:
    """(levels the rule gives that the network can run, those left after face-size pruning)
    as (exponent, height, width) triples."""
    if config.pyramid == "adaptive":
        raw = _adaptive_levels(height, width, config)
    else:
        raw = _fixed_levels(height, width, config)
    floor = MIN_INPUT_SIDE[config.variant]
    raw = [(e, h, w) for e, h, w in raw if min(h, w) >= floor]
    if config.min_face is None and config.max_face is None:
        return raw, raw
    return raw, [(e, h, w) for e, h, w in raw if active_templates(2.0 ** e, config).any()]


def _no_level_reason(height: int, width: int, config: DetectorConfig, raw: _Levels) -> str:
    if raw:
        return (f"no pyramid level of a {height}x{width} image can produce faces of "
                f"{_face_range(config)} px (min_face/max_face, size_refinement="
                f"{config.size_refinement:g}): it has no faces of that size")
    scales = f", fixed_scales={config.fixed_scales}" if config.pyramid == "fixed" else ""
    return (f"no pyramid level fits a {height}x{width} image with the {config.pyramid!r} rule "
            f"(max_input_dim={config.max_input_dim}{scales}, smallest side the {config.variant} "
            f"network runs at: {MIN_INPUT_SIDE[config.variant]} px): it has no faces to find")


#: Exponents of the adaptive rule at and above 1x (below: whole octaves down, unbounded).
_ADAPTIVE_UP = (1.0, 0.5, 0.0)
#: Octaves below 1x that :func:`face_range_reachable` looks at, at most (no image is 2**1000 px).
_MAX_OCTAVES_DOWN = 1000


def face_range_reachable(config: DetectorConfig) -> bool:
    """Whether some level of some image can produce a face in ``[config.min_face,
    config.max_face]``: whether :func:`active_templates` keeps a template at one of the scales
    the pyramid rule can use (the fixed rule: ``2**k`` for ``k`` in ``fixed_scales``; the
    adaptive one: 2, 1.41, 1 and every octave below). Conservative: a scale counts even where
    ``max_input_dim`` or the image size would leave it out, so only a range no image can meet
    is False."""
    if config.min_face is None and config.max_face is None:
        return True
    if config.pyramid == "fixed":
        return any(active_templates(2.0 ** k, config).any() for k in set(config.fixed_scales))
    if any(active_templates(2.0 ** e, config).any() for e in _ADAPTIVE_UP):
        return True
    if config.max_face is None:
        return True  # downscaling a large enough image makes its faces as large as it takes
    for n in range(1, _MAX_OCTAVES_DOWN + 1):  # a level's faces grow as it shrinks
        scale = 2.0 ** -n
        if active_templates(scale, config).any():
            return True
        smallest = template_face_sizes(scale, config)[0][policy_templates(scale, config)]
        if smallest.min() > config.max_face:
            return False  # every smaller level's faces are larger still
    return False


def face_size_bounds(config: DetectorConfig) -> tuple[float, float]:
    """(smallest, largest) face size any level of any image can produce with the config's
    templates, template policy, pyramid rule and ``size_refinement`` (the largest is infinite
    with the adaptive rule, which downscales a large image as far as it takes). For messages;
    :func:`face_range_reachable` is the exact test."""
    if config.pyramid == "fixed":
        scales = [2.0 ** k for k in set(config.fixed_scales)]
    else:
        scales = [2.0 ** e for e in (*_ADAPTIVE_UP, -1.0)]
    low, high = math.inf, 0.0
    for scale in scales:
        policy = policy_templates(scale, config)
        smallest, largest = template_face_sizes(scale, config)
        low = min(low, float(smallest[policy].min()))
        high = max(high, float(largest[policy].max()))
    return low, (math.inf if config.pyramid == "adaptive" else high)


def _face_range(config: DetectorConfig) -> str:
    low = "0" if config.min_face is None else f"{config.min_face:g}"
    high = "inf" if config.max_face is None else f"{config.max_face:g}"
    return f"{low}..{high}"
