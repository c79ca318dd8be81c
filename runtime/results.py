"""Detections as the JSON outputs write them (tf-detect, tf-anonymize sidecars, tf-serve)."""

from __future__ import annotations

from typing import Any

import numpy as np


def detections_to_list(boxes: np.ndarray) -> list[dict[str, Any]]:
    """(N, 5) [x1, y1, x2, y2, prob] -> ``[{"box": [x1, y1, x2, y2], "score": p}, ...]``
    (pixels rounded to 0.01, scores to 1e-5)."""
    return [{"box": [round(float(v), 2) for v in row[:4]], "score": round(float(row[4]), 5)}
            for row in np.asarray(boxes, dtype=np.float64).reshape(-1, 5)]
