"""Input-shape profiles: which network input shapes an engine must accept.

The network is fully convolutional and runs once per pyramid level, so the input shapes it
sees are the level sizes of :func:`~.pyramid.plan_pyramid`. A TensorRT optimization profile
is a box ``min <= shape <= max`` (element-wise) plus one ``opt`` shape the builder tunes its
kernels for. :func:`profile_for_image_sizes` derives that box from the pyramids of a few
representative image sizes.

Choice of ``opt``: the largest level (by pixel count) of the *first* image size given. The
run time of a multi-scale detector is dominated by its largest level (the authors'
``test_time.m`` says the same), and the first size is the one the user names as typical, so
tactics tuned for that shape buy the most. This module cannot measure that claim (no GPU
here); it is the usual rule for dynamic-shape engines, not a benchmark result.

Images whose pyramid has a level outside the profile cannot run on that engine:
:meth:`Profile.check` raises a :class:`~.errors.ManifestError` saying so. A profile built
from a few typical sizes is tight and misses many others (the adaptive pyramid's smallest
level of a 1000x1900 photo is narrower than that of a 1080x1920 one), so the default
(:func:`default_profile`) instead covers *every* image whose sides are both at most
``max_side`` (1920): min ``1x3x1x1`` (``1x3x3x3`` for the matconvnet variant, see
:data:`MIN_INPUT_SIDE`), max ``1x3x3840x3840`` (the 2x level of a 1920x1920
image), opt the 2x level of a 1080x1920 image. Whether so wide a range costs TensorRT speed
on the small levels is not measured here; with a known image size (a camera stream) pass
``--image-size`` for a tight profile.

Batches: with ``max_batch`` N > 1 (``tf-export --max-batch``) the profile's batch dimension runs
from 1 (single images) to N, and ``opt`` is tuned for N images (video frames, camera streams
detected together: ``Detector.detect_batch`` runs each level once for up to N images).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ImageError, ManifestError
from tinyfaces_trt.core.pyramid import MIN_INPUT_SIDE, no_level_reason, plan_pyramid

Shape = tuple[int, int, int, int]

#: The default profile covers every image with both sides at most this many pixels.
DEFAULT_MAX_SIDE = 1920


def _shape(value: Any, what: str) -> Shape:
    try:
        dims = tuple(int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"profile {what} shape must be 4 integers, got {value!r}") from exc
    if len(dims) != 4 or any(isinstance(v, bool) for v in value):
        raise ManifestError(f"profile {what} shape must be 4 integers [N, 3, h, w], got {value!r}")
    if dims[0] < 1 or dims[1] != 3:
        raise ManifestError(f"profile {what} shape must be [N, 3, h, w] (N >= 1 images, RGB), "
                            f"got {list(dims)}")
    if dims[2] < 1 or dims[3] < 1:
        raise ManifestError(f"profile {what} shape must have positive h and w, got {list(dims)}")
    return dims  # type: ignore[return-value]


def format_shape(shape: Sequence[int]) -> str:
    """``(1, 3, 480, 640)`` -> ``"1x3x480x640"`` (trtexec's notation)."""
    return "x".join(str(int(v)) for v in shape)


@dataclass(frozen=True)
class Profile:
    """One optimization profile for the ``image`` input: NCHW shapes (N images, C = 3)."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        shapes = {k: _shape(getattr(self, k), k) for k in ("min", "opt", "max")}
        for k, v in shapes.items():
            object.__setattr__(self, k, v)
        if shapes["min"][0] != 1:  # single images, and the rest of a split batch, run too
            raise ManifestError(f"profile min shape must have batch 1, got {list(shapes['min'])}")
        if not all(a <= b <= c for a, b, c in zip(shapes["min"], shapes["opt"], shapes["max"])):
            raise ManifestError(
                f"profile needs min <= opt <= max in every dimension, got min {list(shapes['min'])}, "
                f"opt {list(shapes['opt'])}, max {list(shapes['max'])}")

    @property
    def max_batch(self) -> int:
        """The most images one run of the engine takes."""
        return self.max[0]

    def contains(self, shape: Sequence[int]) -> bool:
        """Whether an input of ``shape`` (N, 3, h, w) lies within ``min..max``."""
        return len(shape) == 4 and all(lo <= int(v) <= hi for lo, v, hi in zip(self.min, shape, self.max))

    def check(self, shape: Sequence[int]) -> None:
        """Raises :class:`ManifestError` when ``shape`` is outside the profile."""
        if not self.contains(shape):
            raise ManifestError(
                f"input shape {format_shape(shape)} is outside the engine's optimization profile "
                f"(min {format_shape(self.min)}, max {format_shape(self.max)}); rebuild the engine "
                f"with tf-export --image-size covering this image (--max-batch for more images "
                f"a run), or use the onnxruntime backend")

    def to_dict(self) -> dict[str, list[int]]:
        """JSON form stored in the manifest: ``{"min": [1,3,h,w], "opt": [N,3,h,w], "max": [...]}``."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Any) -> "Profile":
        """Inverse of :meth:`to_dict`; malformed input is a :class:`ManifestError`."""
        if not isinstance(d, dict) or set(d) < {"min", "opt", "max"}:
            raise ManifestError(f"profile must be an object with min, opt and max shapes, got {d!r}")
        return cls(d["min"], d["opt"], d["max"])

    def shape_specs(self, input_name: str = "image") -> dict[str, str]:
        """``{"min": "image:1x3x1x1", "opt": ..., "max": ...}``: the shapes in trtexec's
        notation (also that of ONNX Runtime's ``trt_profile_*_shapes`` options)."""
        return {k: f"{input_name}:{format_shape(getattr(self, k))}" for k in ("min", "opt", "max")}

    def trtexec_args(self, input_name: str = "image") -> list[str]:
        """The ``--minShapes/--optShapes/--maxShapes`` arguments of trtexec for this profile."""
        return [f"--{k}Shapes={spec}" for k, spec in self.shape_specs(input_name).items()]


def input_shape(level_or_shape: Any) -> tuple[int, ...]:
    """The network input shape of a pyramid level (``height`` and ``width``: (1, 3, h, w)), or
    the (N, 3, h, w) shape given."""
    if hasattr(level_or_shape, "height"):
        return (1, 3, level_or_shape.height, level_or_shape.width)
    return tuple(level_or_shape)


def pyramid_shapes(height: int, width: int, config: DetectorConfig) -> list[Shape]:
    """Network input shapes ``(1, 3, h, w)`` of every pyramid level of a ``height`` x ``width`` image.

    Raises:
        ImageError: from :func:`plan_pyramid` for an invalid size, or an empty pyramid (no
            level of the size fits, or none can produce faces of the config's sizes: the
            reason).
    """
    levels = plan_pyramid(height, width, config)
    if not levels:
        raise ImageError(no_level_reason(height, width, config) or "no pyramid level")
    return [(1, 3, lv.height, lv.width) for lv in levels]


def profile_for_image_sizes(sizes: Iterable[tuple[int, int]], config: DetectorConfig,
                            max_batch: int = 1) -> Profile:
    """The smallest profile that covers every pyramid level of every image size, for batches
    of 1 to ``max_batch`` images.

    Args:
        sizes: image sizes as ``(height, width)`` pairs (note: tf-export's ``--image-size``
            option is ``WxH`` and swaps them before calling this). The first is the typical
            one: ``opt`` is its largest level (see the module docstring), for ``max_batch``
            images.
        config: the detector config whose pyramid rule applies.
        max_batch: the most images one run takes (>= 1).

    Raises:
        ManifestError: ``sizes`` is empty, or ``max_batch`` < 1.
        ImageError: a size is invalid or has an empty pyramid.
    """
    sizes = list(sizes)
    if not sizes:
        raise ManifestError("profile_for_image_sizes needs at least one image size")
    if max_batch < 1:
        raise ManifestError(f"a profile's batch must be >= 1, got {max_batch}")
    per_size = [pyramid_shapes(h, w, config) for h, w in sizes]
    every = [s for shapes in per_size for s in shapes]
    lo = tuple(min(s[i] for s in every) for i in range(4))
    hi = (max_batch, *(max(s[i] for s in every) for i in range(1, 4)))
    opt = (max_batch, *max(per_size[0], key=lambda s: (s[2] * s[3], s[2], s[3]))[1:])
    return Profile(lo, opt, hi)  # type: ignore[arg-type]


def default_profile(config: DetectorConfig, max_side: int = DEFAULT_MAX_SIDE,
                    max_batch: int = 1) -> Profile:
    """A profile covering every image whose height and width are both ``<= max_side``.

    Built from the extreme sizes: ``max_side x max_side`` gives the largest levels, the
    thinnest runnable strips (:data:`~.pyramid.MIN_INPUT_SIDE` x ``max_side``) the smallest ones; ``opt`` is the largest level of the 16:9
    landscape image of width ``max_side`` (1080x1920 for the default); batches of 1 to
    ``max_batch`` images.
    """
    typical = (max(1, round(max_side * 9 / 16)), max_side)
    thin = MIN_INPUT_SIDE[config.variant]  # the thinnest strip that still has a runnable level
    return profile_for_image_sizes(
        [typical, (max_side, max_side), (thin, max_side), (max_side, thin)], config, max_batch)
