"""Box geometry over ``[x1, y1, x2, y2, ...]`` rows: the IoU matrix that tf-parity's matching
and tf-anonymize's face tracks use."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray, pixel_offset: float = 0.0) -> np.ndarray:
    """(len(a), len(b)) float64 IoU matrix of the boxes ``a`` (N, 4+) and ``b`` (M, 4+)
    (columns past 4, e.g. scores, are ignored; empty inputs give an empty matrix).

    Widths and heights are ``x2 - x1 + pixel_offset``: 0 gives continuous areas, 1 the
    inclusive "+1" pixels of the NMS (:func:`~tinyfaces_trt.runtime.nms.nms` with
    ``config.box_pixel_offset``). Boxes without area (union 0) have IoU 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1] if np.size(a) else 4)[:, :4]
    b = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1] if np.size(b) else 4)[:, :4]
    o = float(pixel_offset)
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]) + o
    inter = np.prod(np.clip(wh, 0, None), axis=2)
    area_a = (a[:, 2] - a[:, 0] + o) * (a[:, 3] - a[:, 1] + o)
    area_b = (b[:, 2] - b[:, 0] + o) * (b[:, 3] - b[:, 1] + o)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)
