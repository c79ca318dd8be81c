"""Decoding one level's score map into candidate boxes (numpy; the CUDA decode matches it).

Score map channels: ``cls=[0:25]``, ``tx=[25:50]``, ``ty=[50:75]``, ``tw=[75:100]``,
``th=[100:125]``. A cell ``(c, y, x)`` is a candidate when template ``c`` is active at the
level's scale (:func:`~tinyfaces_trt.core.pyramid.active_templates`: the template policy and
the face-size limits) and ``cls > config.logit_thresh`` (float32 compare). A score map holding
NaN or infinity is refused (:class:`NonFiniteScoresError`): a broken network must fail loudly,
not report "no faces".
Candidates come out in C order over ``(c, y, x)`` with canonical key
``level_base + (c*h + y)*w + x``; the key breaks score ties in NMS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyfaces_trt.core.config import NUM_CHANNELS, NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.errors import NonFiniteScoresError, ScoreMapError
from tinyfaces_trt.core.pyramid import PyramidLevel, active_templates


@dataclass(frozen=True)
class Candidates:
    """Decoded boxes before NMS.

    Attributes:
        boxes: (N, 4) float64 [x1, y1, x2, y2] in original-image pixels.
        logits: (N,) float32 classification logits.
        keys: (N,) int64 canonical keys (unique across the levels of one image).
    """

    boxes: np.ndarray
    logits: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    @classmethod
    def empty(cls) -> "Candidates":
        return cls(np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def concatenate(cls, parts: list["Candidates"]) -> "Candidates":
        """All candidates of ``parts``, in order."""
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.boxes for p in parts]),
                   np.concatenate([p.logits for p in parts]),
                   np.concatenate([p.keys for p in parts]))


def check_finite_scores(score_map: np.ndarray, level: PyramidLevel) -> None:
    """Raises :class:`NonFiniteScoresError` naming the level when ``score_map`` holds NaN or
    infinity."""
    finite = np.isfinite(score_map)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise NonFiniteScoresError(
            f"the network's score map of pyramid level {level.index} (scale {level.scale:g}, "
            f"{level.width}x{level.height} input) holds {bad} NaN or infinite value(s) of "
            f"{finite.size}: the weights, the export or the backend is broken; no detections "
            "were produced for this image")


def _as_score_map(score_map: np.ndarray) -> np.ndarray:
    """Validates a (1, 125, h, w) or (125, h, w) score map; returns (125, h, w) float32."""
    arr = np.asarray(score_map)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[0] != NUM_CHANNELS:
        raise ScoreMapError(
            f"score map must have shape (1, {NUM_CHANNELS}, h, w) or ({NUM_CHANNELS}, h, w), "
            f"got {np.shape(score_map)}; is the model a 25-template Tiny Faces network?")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ScoreMapError(f"score map must be floating point, got dtype {arr.dtype}")
    return arr.astype(np.float32, copy=False)


def decode_level(score_map: np.ndarray, level: PyramidLevel, config: DetectorConfig,
                 level_base: int = 0) -> Candidates:
    """Candidates of one pyramid level, boxes in original-image pixels.

    Args:
        score_map: (1, 125, h, w) or (125, h, w) network output for the level.
        level: the level (its nominal ``scale`` divides the boxes).
        config: templates, stride/offset, threshold, template policy.
        level_base: key offset, the sum of ``25*h*w`` over the image's earlier levels.
    """
    sm = _as_score_map(score_map)
    check_finite_scores(sm, level)
    _, h, w = sm.shape
    cls = sm[:NUM_TEMPLATES]
    mask = cls > config.logit_thresh
    mask &= active_templates(level.scale, config)[:, None, None]
    c, y, x = np.nonzero(mask)  # C order over (c, y, x)
    t = config.templates
    tx, ty, tw, th = (sm[(k + 1) * NUM_TEMPLATES + c, y, x].astype(np.float64) for k in range(4))
    cx = x * float(config.stride) + config.offset
    cy = y * float(config.stride) + config.offset
    cw = t[c, 2] - t[c, 0] + 1
    ch = t[c, 3] - t[c, 1] + 1
    rcx = cx + cw * tx
    rcy = cy + ch * ty
    with np.errstate(over="ignore", invalid="ignore"):
        rcw = cw * np.exp(tw)
        rch = ch * np.exp(th)
        boxes = np.stack([rcx - rcw / 2, rcy - rch / 2, rcx + rcw / 2, rcy + rch / 2], axis=1)
        boxes /= level.scale
    finite = np.isfinite(boxes).all(axis=1)
    keys = int(level_base) + (c.astype(np.int64) * h + y) * w + x
    # + 0: a -0.0 logit as +0.0, as the CUDA sort keys fold it (score="logit" rows agree bit for bit)
    return Candidates(boxes[finite], cls[c, y, x][finite] + np.float32(0), keys[finite])
