"""Detector configuration: everything besides the network that turns score maps into boxes.

One :class:`DetectorConfig` describes the templates, input normalisation, receptive-field
constants, template-selection and pyramid rules, and thresholds. Two variants exist:

``"pytorch"`` (the default)
    The public PyTorch port (github varunagrawal/tiny-faces-pytorch, commit a07e5da):
    RGB/255 normalised with ImageNet mean/std, ConvTranspose x2 upsampling of the res4 score
    (cropped at the end to the res3 size), the template policy ``tinyfaces/models/utils.py``
    means (Type A templates 4..11 at every scale; Type B 18..24 only where their scale column
    is 1.0, i.e. never with the shipped templates; its code indexes the x axis of an NHWC
    array instead of the templates, an indexing slip not reproduced).

``"matconvnet"``
    The authors' release (github peiyunh/tiny, ``tiny_face_detector.m``):
    raw 0..255 RGB minus ``net.meta.normalization.averageImage`` (no std), ConvTranspose
    with crop [1,2,1,2] and the res3 score cropped at its bottom/right to that size (dagnn.Crop), Type B templates used at s > 1.

Both use stride 8 and offset -1: ``cy = fy*8 - 1`` with 0-based cell indices. The MATLAB code's
``(fy-1)*8 - 1`` on 1-based indices gives the same number, but MATLAB reads it as a 1-based pixel
coordinate, so the release's boxes sit 1 px right/down of the port's in 0-based pixels. We keep the
numbers as both codes compute them: boxes of the matconvnet variant are in the release's 1-based
convention (:attr:`DetectorConfig.coordinate_base`) and clipped as the release clips them, to
``[1, W] x [1, H]``; the port's to ``[0, W-1] x [0, H-1]``. The pyramid rule is the authors'
adaptive demo rule by default (see :mod:`.pyramid`), or the port's fixed exponents with
``pyramid="fixed"``.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from typing import Any

import numpy as np

from tinyfaces_trt.core.errors import ConfigError

NUM_TEMPLATES = 25
NUM_CHANNELS = 5 * NUM_TEMPLATES  # 25 score_cls + 100 score_reg (tx, ty, tw, th blocks)
VARIANTS = ("pytorch", "matconvnet")
#: What column 4 of the detections can hold (:attr:`DetectorConfig.score`).
SCORES = ("prob", "logit")
#: ResNet trunk depths of the detector (export/resnet.py builds these; the released one is 101).
DEPTHS = (50, 101)
#: Largest ``abs(k)`` of the ``fixed_scales`` exponents (no level comes from a larger one).
MAX_FIXED_EXPONENT = 64


def coordinate_base_of(variant: str | None) -> float:
    """:attr:`DetectorConfig.coordinate_base` of a variant (None: unknown, taken as 0-based)."""
    return 1.0 if variant == "matconvnet" else 0.0


def is_integer(value: object) -> bool:
    """An integer of any integral type (numpy's too), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number of any type (numpy's too), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_whole(value: object) -> bool:
    """A real number with no fractional part (5, np.int64(5), 5.0), not a bool."""
    return is_real(value) and float(value).is_integer()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_default_templates() -> np.ndarray:
    """The 25 shipped templates as a (25, 5) float64 array of [x1, y1, x2, y2, scale].

    Rounded to 8 decimals as the PyTorch port does after reading its JSON.
    """
    text = resources.files("tinyfaces_trt.core").joinpath("data/templates.json").read_text()
    return np.round(np.asarray(json.loads(text)["templates"], dtype=np.float64), 8)


@dataclass(frozen=True)
class Normalization:
    """``x = (pixel * input_scale - mean) / std`` per RGB channel, pixel in 0..255.

    ``input_scale`` is a number and ``mean`` and ``std`` three numbers each (any sequence;
    stored as a float and tuples of floats), else a :class:`ConfigError` naming the field.
    A :class:`DetectorConfig` taking it checks the values: finite, ``input_scale`` and
    ``std`` positive.
    """

    input_scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if not is_real(self.input_scale):
            raise ConfigError(f"normalization.input_scale must be a number, got "
                              f"{self.input_scale!r} ({type(self.input_scale).__name__})")
        object.__setattr__(self, "input_scale", float(self.input_scale))
        for name in ("mean", "std"):
            value = getattr(self, name)
            items = value.tolist() if isinstance(value, np.ndarray) and value.ndim == 1 else value
            if not isinstance(items, (tuple, list)) or len(items) != 3 \
                    or not all(map(is_real, items)):
                raise ConfigError(f"normalization.{name} must be three numbers (R, G, B), got "
                                  f"{value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in items))

    def check_values(self) -> None:
        """Raises a :class:`ConfigError` naming the field unless every number is finite and
        ``input_scale`` and ``std`` are positive."""
        if not all(map(math.isfinite, (self.input_scale, *self.mean, *self.std))):
            raise ConfigError(f"normalization holds a non-finite number: {self}")
        if self.input_scale <= 0:
            raise ConfigError(f"normalization.input_scale must be > 0, got {self.input_scale}")
        if min(self.std) <= 0:
            raise ConfigError(f"normalization std must not be 0 or negative, got {self.std}")

    @classmethod
    def imagenet(cls) -> "Normalization":
        """RGB/255 normalised with the ImageNet mean and std (the PyTorch port's input)."""
        return cls(1.0 / 255.0, IMAGENET_MEAN, IMAGENET_STD)

    @classmethod
    def average_image(cls, average_rgb: tuple[float, float, float]) -> "Normalization":
        """0-255 RGB minus the network's average image colour ``average_rgb`` (the
        MatConvNet release's input)."""
        return cls(1.0, tuple(float(v) for v in average_rgb), (1.0, 1.0, 1.0))

    def scale_and_bias(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (a, b) with ``x = pixel * a + b``; what the GPU resize kernel takes."""
        mean = np.asarray(self.mean, np.float64)
        std = np.asarray(self.std, np.float64)
        return (self.input_scale / std).astype(np.float32), (-mean / std).astype(np.float32)


@dataclass(frozen=True)
class DetectorConfig:
    """Everything the runtime needs besides the network itself.

    Attributes:
        variant: ``"pytorch"`` or ``"matconvnet"`` (see module docstring).
        templates: (25, 5) float64 [x1, y1, x2, y2, scale] per template.
        normalization: input normalisation.
        stride, offset: receptive-field stride and offset of the score map, pixels.
        template_policy: ``"pytorch"`` or ``"matconvnet"``, which templates run at which scale.
        prob_thresh: keep a cell when sigmoid(score_cls) > prob_thresh. 0.5 in both variants:
            the release demo's (``tiny_face_detector.m``: ``if nargin < 3, prob_thresh =
            0.5``); the port's ``get_detections`` defaults to 0.65, its ``detect_image.py`` to
            0.6, and both WIDER FACE evaluations use 0.03.
        nms_thresh: suppress a box whose IoU with a kept box is > nms_thresh. 0.3 by default:
            the port's (``get_detections``, ``detect_image.py``) and the authors' WIDER FACE
            script's (``scripts/hr_res101.m``: ``nmsThresh = 0.3``). :meth:`for_variant`
            gives ``"matconvnet"`` the release demo's 0.1 (``tiny_face_detector.m``:
            ``if nargin < 4, nms_thresh = 0.1``).
        box_pixel_offset: 1.0 for the reference's inclusive "+1" widths in NMS IoU, 0.0 for none.
        clip_boxes: clip final boxes to the image's pixel area in the variant's coordinates
            (:attr:`coordinate_base`): ``[0, W-1] x [0, H-1]`` for ``"pytorch"``,
            ``[1, W] x [1, H]`` for ``"matconvnet"`` (``tiny_face_detector.m``:
            ``bboxes(:,[1 3]) = max(1, min(raw_w, ...))``, rows likewise with ``raw_h``).
        pyramid: ``"adaptive"`` (authors' demo rule) or ``"fixed"`` (port: fixed exponents,
            short side resized to ``int(min_side * 2**k)``).
        fixed_scales: exponents k for ``pyramid="fixed"`` (not empty with it; each within
            +-:data:`MAX_FIXED_EXPONENT`).
        max_input_dim: no pyramid level's longer side exceeds this (the authors' MAX_INPUT_DIM).
        min_face, max_face: face sizes (longer box side, original-image pixels) the caller
            needs; None: no limit. Pyramid levels and templates that cannot produce a face in
            ``[min_face, max_face]`` are not run / not decoded (see :mod:`.pyramid`).
        size_refinement: how far the box regression is assumed to stretch or shrink a
            template, ``exp(|tw|), exp(|th|) <= size_refinement``; only used with
            ``min_face``/``max_face`` (a smaller value prunes more, at a recall risk).
        score: what column 4 of the detections holds (:data:`SCORES`): ``"prob"`` (the
            default) the probability ``sigmoid(score_cls)`` as float32; ``"logit"`` the
            network's float32 logit ``score_cls`` itself, exactly, as both references print
            it (the authors' ``cnn_widerface_test_AB.m`` writes it with ``%f``; a float32
            probability rounds to 1 above a logit of about 16.6 and loses the logit's
            digits well before). Which boxes are kept, and their order, are the same.
    """

    variant: str = "pytorch"
    # compared by value in __eq__/__hash__ (an array's == is not a bool)
    templates: np.ndarray = field(default_factory=load_default_templates, compare=False)
    normalization: Normalization = field(default_factory=Normalization.imagenet)
    stride: int = 8
    offset: float = -1.0
    template_policy: str = "pytorch"
    prob_thresh: float = 0.5
    nms_thresh: float = 0.3
    box_pixel_offset: float = 1.0
    clip_boxes: bool = True
    pyramid: str = "adaptive"
    fixed_scales: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0)
    max_input_dim: int = 5000
    min_face: float | None = None
    max_face: float | None = None
    size_refinement: float = 2.0
    score: str = "prob"

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "templates", _frozen_templates(self.templates))
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        if self.template_policy not in VARIANTS:
            raise ConfigError(f"unknown template_policy {self.template_policy!r}")
        if self.pyramid not in ("adaptive", "fixed"):
            raise ConfigError(f"unknown pyramid rule {self.pyramid!r}")
        if self.score not in SCORES:
            raise ConfigError(f"unknown score {self.score!r}; expected one of {SCORES} (what "
                              "column 4 of the detections holds)")
        if not 0.0 < self.prob_thresh < 1.0:
            raise ConfigError(f"prob_thresh must be in (0, 1), got {self.prob_thresh}")
        if not 0.0 <= self.nms_thresh <= 1.0:
            raise ConfigError(f"nms_thresh must be in [0, 1], got {self.nms_thresh}")
        if self.stride < 1 or self.max_input_dim < 1:
            raise ConfigError(f"stride ({self.stride}) and max_input_dim ({self.max_input_dim}) "
                              "must be >= 1")
        values = [self.offset, self.box_pixel_offset, *self.fixed_scales]
        if not np.all(np.isfinite(self.templates)) or not all(map(math.isfinite, values)):
            raise ConfigError("config holds a non-finite number")
        self.normalization.check_values()
        self._check_fixed_scales()
        self._check_face_sizes()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[Any, ...]:
        # through __init__: an unpickled or deep-copied config gets read-only templates too
        return self.__class__, tuple(getattr(self, f.name) for f in fields(self))

    def _key(self) -> tuple[Any, ...]:
        """Every field's value, the templates as (shape, dtype, bytes): what == and hash use."""
        t = self.templates
        return tuple((t.shape, t.dtype.str, t.tobytes()) if f.name == "templates"
                     else getattr(self, f.name) for f in fields(self))

    def _check_types(self) -> None:
        """A field of the wrong type is a ConfigError naming it (a string threshold from a
        config file reached the range checks as a bare TypeError). Numbers are stored as
        Python's float and int (numpy scalars too: the config goes into JSON files)."""
        def wrong(name: str, what: str, value: Any) -> ConfigError:
            return ConfigError(f"{name} must be {what}, got {value!r} ({type(value).__name__})")

        for name in ("offset", "prob_thresh", "nms_thresh", "box_pixel_offset", "size_refinement"):
            value = getattr(self, name)
            if not is_real(value):
                raise wrong(name, "a number", value)
            object.__setattr__(self, name, float(value))
        for name in ("stride", "max_input_dim"):  # 4000.0 is 4000; 4000.5 is refused
            value = getattr(self, name)
            if not is_whole(value):
                raise wrong(name, "an integer", value)
            object.__setattr__(self, name, int(value))
        for name in ("variant", "template_policy", "pyramid", "score"):
            if not isinstance(getattr(self, name), str):
                raise wrong(name, "a string", getattr(self, name))
        if not isinstance(self.clip_boxes, (bool, np.bool_)):
            raise wrong("clip_boxes", "True or False", self.clip_boxes)
        object.__setattr__(self, "clip_boxes", bool(self.clip_boxes))
        if not isinstance(self.normalization, Normalization):
            raise wrong("normalization", "a Normalization", self.normalization)
        scales = self.fixed_scales
        if isinstance(scales, np.ndarray) and scales.ndim == 1:
            scales = scales.tolist()
        if not isinstance(scales, (tuple, list)) or not all(map(is_real, scales)):
            raise wrong("fixed_scales", "a sequence of numbers", self.fixed_scales)
        object.__setattr__(self, "fixed_scales", tuple(float(k) for k in scales))

    def _check_fixed_scales(self) -> None:
        """The fixed rule needs exponents, each within what a level can use (2**64 is beyond
        any image; 2.0**1024 is not even a float)."""
        if self.pyramid != "fixed":
            return
        if not self.fixed_scales:
            raise ConfigError('fixed_scales must not be empty with pyramid="fixed"; give the '
                              "exponents k of its levels, e.g. (-1.0, 0.0, 1.0)")
        wild = [k for k in self.fixed_scales if abs(k) > MAX_FIXED_EXPONENT]
        if wild:
            raise ConfigError(f"fixed_scales are exponents k (a level is 2**k times the image), "
                              f"each within +-{MAX_FIXED_EXPONENT}; got {wild[0]:g}")

    def _check_face_sizes(self) -> None:
        for name in ("min_face", "max_face"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of pixels or None, "
                                    f"got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.min_face is not None and self.max_face is not None \
                and self.min_face > self.max_face:
            raise ConfigError(f"min_face ({self.min_face:g}) must not exceed max_face "
                                f"({self.max_face:g})")
        if not (math.isfinite(self.size_refinement) and self.size_refinement >= 1.0):
            raise ConfigError(f"size_refinement must be a finite number >= 1, "
                                f"got {self.size_refinement}")
        if self.min_face is not None or self.max_face is not None:
            self._check_face_range_reachable()

    def _check_face_range_reachable(self) -> None:
        """Refuses a ``[min_face, max_face]`` that no pyramid level of any image can meet
        (every image would have its whole pyramid pruned): ``max_face`` below the smallest
        face the templates produce at the rule's largest scale, ``min_face`` above the
        largest at the fixed rule's smallest scale, or a range between the template sizes."""
        # pyramid imports this module; by the time a config is made both are loaded
        from tinyfaces_trt.core.pyramid import face_range_reachable, face_size_bounds

        if face_range_reachable(self):
            return
        low, high = face_size_bounds(self)
        r = self.size_refinement
        if self.max_face is not None and self.max_face < low:
            why = (f"max_face ({self.max_face:g}) is below the smallest face any pyramid level "
                   f"can produce ({low:.4g} px: the smallest template at the {self.pyramid} "
                   f"rule's largest scale, shrunk by size_refinement={r:g})")
        elif self.min_face is not None and self.min_face > high:
            why = (f"min_face ({self.min_face:g}) is above the largest face any pyramid level "
                   f"can produce ({high:.4g} px: the largest template at the smallest of "
                   f"fixed_scales, stretched by size_refinement={r:g})")
        else:
            low_text = "0" if self.min_face is None else f"{self.min_face:g}"
            high_text = "inf" if self.max_face is None else f"{self.max_face:g}"
            why = (f"min_face/max_face ({low_text}..{high_text} px) falls between the face "
                   f"sizes the templates produce at the {self.pyramid} rule's scales with "
                   f"size_refinement={r:g}")
        raise ConfigError(f"{why}: no image could have a face detected; widen min_face/max_face "
                          f"(--min-face/--max-face on the command lines)")

    @classmethod
    def for_variant(cls, variant: str, **overrides: Any) -> "DetectorConfig":
        """Defaults of one variant; ``overrides`` replace single fields.

        ``"matconvnet"`` takes the release's demo defaults (``tiny_face_detector.m``): its
        template policy, ``averageImage`` normalisation and ``nms_thresh`` 0.1.
        """
        if variant == "matconvnet":
            base = dict(variant="matconvnet", template_policy="matconvnet",
                        normalization=Normalization.average_image((123.68, 116.779, 103.939)),
                        nms_thresh=0.1)
        elif variant == "pytorch":
            base = dict(variant="pytorch", template_policy="pytorch")
        else:
            raise ConfigError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
        check_field_names(overrides)
        base.update(overrides)
        return cls(**base)

    def with_(self, **overrides: Any) -> "DetectorConfig":
        """A copy with some fields replaced (an unknown name is a :class:`ConfigError`)."""
        check_field_names(overrides)
        return replace(self, **overrides)

    @property
    def coordinate_base(self) -> float:
        """Coordinate of the image's first pixel in this variant's boxes: 0.0 for
        ``"pytorch"`` (0-based), 1.0 for ``"matconvnet"`` (the release's 1-based convention,
        see the module docstring). The image's pixel area is ``[base, base + W - 1] x
        [base, base + H - 1]``: what the final boxes are clipped to and tested against."""
        return coordinate_base_of(self.variant)

    @property
    def logit_thresh(self) -> np.float32:
        """``prob_thresh`` in logit space: cells with ``score_cls > logit_thresh`` are kept.

        Every decoder (numpy and CUDA) compares float32 logits against this one float32 value,
        so they agree bit for bit on which cells pass.
        """
        p = self.prob_thresh
        return np.float32(math.log(p / (1.0 - p)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as stored in an export manifest."""
        n = self.normalization
        return {
            "variant": self.variant,
            "templates": self.templates.tolist(),
            "normalization": {"input_scale": n.input_scale, "mean": list(n.mean), "std": list(n.std)},
            "stride": self.stride,
            "offset": self.offset,
            "template_policy": self.template_policy,
            "prob_thresh": self.prob_thresh,
            "nms_thresh": self.nms_thresh,
            "box_pixel_offset": self.box_pixel_offset,
            "clip_boxes": self.clip_boxes,
            "pyramid": self.pyramid,
            "fixed_scales": list(self.fixed_scales),
            "max_input_dim": self.max_input_dim,
            "min_face": self.min_face,
            "max_face": self.max_face,
            "size_refinement": self.size_refinement,
            "score": self.score,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DetectorConfig":
        """Inverse of :meth:`to_dict`; a missing or malformed field is a :class:`ConfigError`
        (the manifest loader names the manifest)."""
        try:
            n = d["normalization"]
            return cls(
                variant=d["variant"],
                templates=d["templates"],
                normalization=Normalization(float(n["input_scale"]), n["mean"], n["std"]),
                stride=int(d["stride"]),
                offset=float(d["offset"]),
                template_policy=d["template_policy"],
                prob_thresh=float(d["prob_thresh"]),
                nms_thresh=float(d["nms_thresh"]),
                box_pixel_offset=float(d["box_pixel_offset"]),
                clip_boxes=bool(d["clip_boxes"]),
                pyramid=d["pyramid"],
                fixed_scales=tuple(map(float, d["fixed_scales"])),
                max_input_dim=int(d["max_input_dim"]),
                # absent from manifests written before face-size pruning existed
                min_face=_optional_float(d.get("min_face")),
                max_face=_optional_float(d.get("max_face")),
                size_refinement=float(d.get("size_refinement", 2.0)),
                score=d.get("score", "prob"),  # absent from manifests of older versions
            )
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"detector config is incomplete or malformed: {exc!r}") from exc


def check_field_names(names: Any) -> None:
    """Raises a :class:`ConfigError` naming those of ``names`` that are no
    :class:`DetectorConfig` field."""
    known = [f.name for f in fields(DetectorConfig)]
    unknown = sorted(str(n) for n in names if n not in known)
    if unknown:
        raise ConfigError(f"unknown detector config field(s) {', '.join(unknown)}; known: "
                          f"{', '.join(known)}")


def _frozen_templates(templates: Any) -> np.ndarray:
    """A read-only (25, 5) float64 copy of ``templates``: a config's own, which neither the
    caller's array nor a write through ``config.templates`` can change."""
    try:
        t = np.array(templates, dtype=np.float64)  # always a copy
    except (TypeError, ValueError):
        raise ConfigError(f"templates must be a (25, 5) array of numbers, got "
                          f"{type(templates).__name__}") from None
    if t.shape != (NUM_TEMPLATES, 5):
        raise ConfigError(f"templates must have shape (25, 5), got {t.shape}")
    t.setflags(write=False)
    return t


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
