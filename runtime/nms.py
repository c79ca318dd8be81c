"""Greedy non-maximum suppression with a deterministic order (numpy; the CUDA NMS matches it).

Order: logit descending, ties by canonical key ascending (NaN logits last). A kept box
suppresses every later box whose IoU with it is strictly greater than the threshold.
IoU uses the reference's inclusive widths: ``area = (x2 - x1 + o) * (y2 - y1 + o)`` with
``o = pixel_offset`` (1.0 as in py_cpu_nms / nms_mex, 0.0 for continuous boxes).

Cost: boxes are resolved in blocks of ``_BLOCK`` in NMS order; each block's kept boxes are
tested against all later live boxes, so the work is O(kept x N) IoU tests (full IoU only for
pairs overlapping in x). Dense detector output (most candidates suppressed) is fast; a scene
where nothing is suppressed is the worst case.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tinyfaces_trt.core.errors import TinyFacesError

_BLOCK = 128  # boxes resolved together; bounds the IoU matrices to _BLOCK x N


def nms_order(logits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Indices sorting candidates by logit descending, then key ascending."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.lexsort((np.asarray(keys), -logits))


def _overlaps(b: np.ndarray, area: np.ndarray, i: np.ndarray, j: np.ndarray, o: float,
              iou_thresh: float) -> np.ndarray:
    """Bool matrix: IoU(box i[r], box j[c]) > iou_thresh, for boxes ``b`` (N, 4) of ``area``.

    Only pairs that overlap in x get the full IoU (the others have zero intersection and can
    never pass a threshold >= 0), which keeps sparse scenes cheap.
    """
    x1i, x2i = b[i, 0][:, None], b[i, 2][:, None]
    iw = np.minimum(x2i, b[j, 2][None, :]) - np.maximum(x1i, b[j, 0][None, :]) + o
    r, c = np.nonzero(iw > 0)
    bi, bj = i[r], j[c]
    ih = np.maximum(0.0, np.minimum(b[bi, 3], b[bj, 3]) - np.maximum(b[bi, 1], b[bj, 1]) + o)
    inter = iw[r, c] * ih
    out = np.zeros(iw.shape, dtype=bool)
    out[r, c] = inter / (area[bi] + area[bj] - inter) > iou_thresh
    return out


def nms(boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray, iou_thresh: float,
        pixel_offset: float = 1.0) -> np.ndarray:
    """Greedy NMS.

    Args:
        boxes: (N, 4) [x1, y1, x2, y2].
        logits: (N,) scores (any monotone score works; the pipeline passes logits).
        keys: (N,) integer tie-breakers, lower first among equal scores.
        iou_thresh: a box is suppressed when its IoU with a kept box is > this.
        pixel_offset: added to widths and heights (``+1`` convention).

    Returns:
        int64 indices into the inputs of the kept boxes, in NMS order (best first).
    """
    b = np.asarray(boxes, dtype=np.float64)
    n = b.shape[0] if b.ndim == 2 else -1
    if b.ndim != 2 or b.shape[1] != 4 or np.shape(logits) != (n,) or np.shape(keys) != (n,):
        raise TinyFacesError(f"nms expects boxes (N, 4), logits (N,), keys (N,); got "
                             f"{np.shape(boxes)}, {np.shape(logits)}, {np.shape(keys)}")
    order = nms_order(logits, keys)
    b = b[order]
    o = float(pixel_offset)
    with np.errstate(over="ignore", invalid="ignore"):
        area = (b[:, 2] - b[:, 0] + o) * (b[:, 3] - b[:, 1] + o)
    # Huge (finite) boxes of a broken network overflow the areas to inf; their IoU is then
    # nan or 0, which never suppresses: handled, not warned.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        kept = greedy_in_blocks(n, lambda i, j: _overlaps(b, area, i, j, o, iou_thresh))
    return order[kept]


def greedy_in_blocks(n: int, overlaps: Callable[[np.ndarray, np.ndarray], np.ndarray]
                     ) -> np.ndarray:
    """The greedy walk over ``n`` boxes already in NMS order, in blocks of ``_BLOCK``:
    ``overlaps(i, j)`` is the bool matrix "box i[r] suppresses box j[c]" (IoU > threshold).
    Returns the int64 positions of the kept boxes, in order."""
    alive = np.ones(n, dtype=bool)
    kept: list[np.ndarray] = []
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = start + np.flatnonzero(alive[start:stop])
        if block.size == 0:
            continue
        # Greedy inside the block: only earlier boxes of the block can suppress a box.
        over = overlaps(block, block)
        live = np.ones(block.size, dtype=bool)
        for r in range(block.size):
            if live[r]:
                live[r + 1:] &= ~over[r, r + 1:]
        keep = block[live]
        kept.append(keep)
        later = stop + np.flatnonzero(alive[stop:])
        if later.size:
            alive[later[overlaps(keep, later).any(axis=0)]] = False
    if not kept:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(kept).astype(np.int64)
