"""Detections as the JSON outputs write them (tf-detect, tf-anonymize sidecars, tf-serve):
box pixels rounded to 0.01, scores to 1e-5."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

#: Decimals kept of box pixels and of scores.
BOX_DIGITS, SCORE_DIGITS = 2, 5


def rounded_box(box: Iterable[float]) -> list[float]:
    """``[x1, y1, x2, y2]`` in pixels rounded to 0.01."""
    return [round(float(v), BOX_DIGITS) for v in box]


def rounded_score(score: float) -> float:
    """A detection score rounded to 1e-5."""
    return round(float(score), SCORE_DIGITS)


def detections_to_list(boxes: np.ndarray) -> list[dict[str, Any]]:
    """(N, 5) [x1, y1, x2, y2, prob] -> ``[{"box": [x1, y1, x2, y2], "score": p}, ...]``
    (:func:`rounded_box`, :func:`rounded_score`)."""
    return [{"box": rounded_box(row[:4]), "score": rounded_score(row[4])}
            for row in np.asarray(boxes, dtype=np.float64).reshape(-1, 5)]
