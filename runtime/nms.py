"""Greedy non-maximum suppression with a deterministic order (numpy; the CUDA NMS matches it).

Order: logit descending, ties by canonical key ascending (NaN logits last). A kept box
suppresses every later box whose IoU with it is strictly greater than the threshold; at a
threshold of 1 or more (or NaN) none can be, and every box comes back in NMS order without
the walk (:func:`suppression_possible`).
IoU uses the reference's inclusive widths: ``area = (x2 - x1 + o) * (y2 - y1 + o)`` with
``o = pixel_offset`` (1.0 as in py_cpu_nms / nms_mex, 0.0 for continuous boxes).

Cost: boxes are resolved in blocks of ``_BLOCK`` in NMS order. A block's kept boxes are
tested only against the later live boxes that can overlap them (:class:`OverlapIndex`:
boxes grouped by width, cut into bands of y, sorted by x), so the work grows with the kept
boxes times their neighbours of similar size, not with kept x N (a 1080p pyramid's 640k
candidates: seconds, not half a minute). The worst case is a scene where nothing is
suppressed and every box overlaps every other (each kept box then meets all later ones, as
without the index).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from tinyfaces_trt.core.errors import TinyFacesError

_BLOCK = 128  # boxes resolved together
_MAX_PAIRS = 1 << 22  # candidate pairs gathered at once (bounds the memory of one step)
# Window slack, relative to the coordinates: covers rounding in float64 and in the float32 IoU
# of the kernel's model (tests/helpers_kernels.py), so a window never misses an x-overlap.
_SLACK = 1e-5
_RATIO_SLACK = 1e-4  # the same for the area-ratio bound of the IoU
# ... plus this absolute slack on areas (float32's subnormal areas round by whole 2^-149 steps)
_AREA_SLACK = 1e-37
_MAX_BAND_QUERIES = 32  # bands a box queries one by one; more are taken whole


def nms_order(logits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Indices sorting candidates by logit descending, then key ascending."""
    logits = np.asarray(logits, dtype=np.float64)
    return np.lexsort((np.asarray(keys), -logits))


def suppression_possible(iou_thresh: float) -> bool:
    """Whether any pair can pass :func:`_suppresses`'s ``IoU > iou_thresh``: not at 1 or
    more, or NaN. There the IoU, as computed, is never above 1: a pair passes only with
    ``iw > 0`` and, for a nonzero intersection, ``ih > 0``; then both boxes have positive
    widths and heights with ``iw <= w`` and ``ih <= h`` for each (rounding is monotone), so
    ``inter <= min(area_i, area_j)``, ``union >= inter`` and the quotient rounds to <= 1; a
    zero intersection gives 0 (or NaN for a zero union), an overflow inf - inf = NaN, and
    NaN never compares greater."""
    return bool(iou_thresh < 1)


def _suppresses(b: np.ndarray, area: np.ndarray, i: np.ndarray, j: np.ndarray, o: float,
                iou_thresh: float) -> np.ndarray:
    """Per pair k: IoU(box i[k], box j[k]) > iou_thresh and the boxes overlap in x (pairs
    apart in x never suppress, whatever the threshold)."""
    iw = np.minimum(b[i, 2], b[j, 2]) - np.maximum(b[i, 0], b[j, 0]) + o
    ih = np.maximum(0.0, np.minimum(b[i, 3], b[j, 3]) - np.maximum(b[i, 1], b[j, 1]) + o)
    inter = iw * ih
    return (iw > 0) & (inter / (area[i] + area[j] - inter) > iou_thresh)


def nms(boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray, iou_thresh: float,
        pixel_offset: float = 1.0) -> np.ndarray:
    """Greedy NMS.

    Args:
        boxes: (N, 4) [x1, y1, x2, y2].
        logits: (N,) scores (any monotone score works; the pipeline passes logits).
        keys: (N,) integer tie-breakers, lower first among equal scores.
        iou_thresh: a box is suppressed when its IoU with a kept box is > this (at 1 or
            more none is: every box is kept, without the walk).
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
    if not suppression_possible(iou_thresh):  # the walk would keep every box, in this order
        return order.astype(np.int64, copy=False)
    b = b[order]
    o = float(pixel_offset)
    # Huge (finite) boxes of a broken network overflow the areas to inf; their IoU is then
    # nan or 0, which never suppresses: handled, not warned.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        area = (b[:, 2] - b[:, 0] + o) * (b[:, 3] - b[:, 1] + o)
        index = OverlapIndex(b, o, iou_thresh)
        kept = greedy_in_blocks(index, lambda i, j: _suppresses(b, area, i, j, o, iou_thresh))
    return order[kept]


class OverlapIndex:
    """Which boxes can overlap a box, for boxes in NMS order (positions 0..n-1).

    Box j overlaps box i in x (``min(x2) - max(x1) + o > 0``) only if
    ``x1_i - W - |o| < x1_j < x2_i + |o|``, ``W`` the widest ``x2 - x1 + o`` of j's group;
    in y likewise with the tallest ``H``. Boxes are grouped by width (one group per power of
    two); a group is cut into bands of y1 at least ``H`` tall, each band sorted by x1 (one
    integer key per box: group, band, rank of x1), so binary searches bound the candidates.
    The y bounds hold only where a suppression needs a positive intersection
    (``iou_thresh >= 0``; else one band per group), and where ``iou_thresh > 0`` a group whose
    areas are all below ``t`` times the box's area, or above it over ``t``, is skipped
    (IoU <= min(area) / max(area)). Bounds are widened by ``_SLACK`` (``_RATIO_SLACK``)
    relative to the values, so they hold under rounding (float64, or the float32 IoU of the
    kernel's model). Boxes of width <= 0 (beyond the slack) or with a NaN coordinate are
    never suppressed and are left out.
    """

    def __init__(self, boxes: np.ndarray, offset: float, iou_thresh: float):
        b = np.asarray(boxes, dtype=np.float64)
        self.x1, self.y1, self.x2, self.y2 = (b[:, k] for k in range(4))
        self.n = b.shape[0]
        self.pad = abs(float(offset))
        self.ratio = float(iou_thresh) * (1 - _RATIO_SLACK) if iou_thresh > 0 else 0.0
        self.y_bounds = bool(iou_thresh >= 0)
        with np.errstate(invalid="ignore", over="ignore"):
            w = self.x2 - self.x1 + float(offset)
            h = self.y2 - self.y1 + float(offset)
            self.area = w * h
            fit = (w > -_SLACK * (np.abs(self.x1) + np.abs(self.x2) + 1)) & ~np.isnan(b).any(axis=1)
        member = np.flatnonzero(fit)
        self.xs = np.sort(self.x1[member])
        rank = np.searchsorted(self.xs, self.x1[member], side="left")
        wm = np.maximum(w[member], 0.0)
        group = np.where(np.isinf(wm), 1 << 12, np.frexp(wm)[1])  # inf: a group of its own
        names, group = np.unique(group, return_inverse=True)
        count = names.size
        self.wmax = np.full(count, -np.inf)
        self.hmax, self.amax = self.wmax.copy(), self.wmax.copy()
        self.amin = np.full(count, np.inf)
        np.maximum.at(self.wmax, group, w[member])
        np.maximum.at(self.hmax, group, h[member])
        np.maximum.at(self.amax, group, self.area[member])
        np.minimum.at(self.amin, group, self.area[member])
        # Bands of y1, at least the group's tallest box high, 4096 at most per group.
        y1 = self.y1[member]
        finite = np.isfinite(y1)
        lo = np.full(count, np.inf)
        hi = np.full(count, -np.inf)
        np.minimum.at(lo, group[finite], y1[finite])
        np.maximum.at(hi, group[finite], y1[finite])
        banded = self.y_bounds & np.isfinite(self.hmax) & (lo <= hi)
        span = np.where(banded, hi - lo, 0.0)
        self.y0 = np.where(banded, lo, 0.0)
        self.step = np.maximum.reduce([np.where(banded, self.hmax, 1.0), span / 4095,
                                       np.full(count, 1e-300)])
        self.bands = np.where(banded, np.floor(span / self.step) + 1, 1).astype(np.int64)
        m = max(member.size, 1)
        self.base = np.concatenate([[0], np.cumsum(self.bands * m)[:-1]]).astype(np.int64)
        self.m = m
        keys = self.base[group] + self._band(group, y1) * m + rank
        by = np.argsort(keys, kind="stable")
        self.p, self.keys = member[by], keys[by]

    def _band(self, g: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Band of y in group g (monotone in y, clipped to the group's bands; NaN -> 0)."""
        with np.errstate(invalid="ignore", over="ignore"):
            k = np.clip(np.floor((y - self.y0[g]) / self.step[g]), 0, self.bands[g] - 1)
        return np.where(np.isnan(k), 0, k).astype(np.int64)

    def within(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(r, c), r < c, r ascending: the pairs of ``block`` (positions) that may overlap."""
        r, c = np.triu_indices(block.size, 1)
        i, j = block[r], block[c]
        pad = self.pad
        with np.errstate(invalid="ignore", over="ignore"):
            near = ((self.x1[j] < self.x2[i] + pad + _SLACK * (np.abs(self.x2[i]) + pad + 1))
                    & (self.x2[j] > self.x1[i] - pad - _SLACK * (np.abs(self.x1[i]) + pad + 1)))
            if self.y_bounds:
                near &= ((self.y1[j] < self.y2[i] + pad + _SLACK * (np.abs(self.y2[i]) + pad + 1))
                         & (self.y2[j] > self.y1[i] - pad - _SLACK * (np.abs(self.y1[i]) + pad + 1)))
        return r[near], c[near]

    @property
    def size(self) -> int:
        """Members left in the index."""
        return int(self.p.size)

    def compact(self, alive: np.ndarray, start: int) -> None:
        """Drop the members before ``start`` or no longer alive."""
        keep = (self.p >= start) & alive[self.p]
        self.p, self.keys = self.p[keep], self.keys[keep]

    def pairs(self, rows: np.ndarray, start: int, alive: np.ndarray
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (i, j): for boxes ``rows``, every live box j >= start that may overlap them
        (a superset), in steps of at most about ``_MAX_PAIRS`` pairs."""
        if self.p.size == 0 or rows.size == 0:
            return
        g = np.arange(self.wmax.size)[None, :]  # (rows, groups) from here on
        x1, x2 = self.x1[rows][:, None], self.x2[rows][:, None]
        y1, y2 = self.y1[rows][:, None], self.y2[rows][:, None]
        area = self.area[rows][:, None]
        pad = self.pad
        with np.errstate(invalid="ignore", over="ignore"):
            sx = _SLACK * (np.abs(x1) + np.abs(x2) + self.wmax[g] + pad + 1)
            sy = _SLACK * (np.abs(y1) + np.abs(y2) + self.hmax[g] + pad + 1)
            r_lo = np.searchsorted(self.xs, x1 - self.wmax[g] - pad - sx, side="left")
            r_hi = np.searchsorted(self.xs, x2 + pad + sx, side="right")
            b_lo = self._band(g, y1 - self.hmax[g] - pad - sy)
            b_hi = self._band(g, y2 + pad + sy)
            never = np.isnan(y1) | np.isnan(y2) | (r_hi <= r_lo)
            if self.ratio > 0:
                sized = (area > 0) & np.isfinite(area)
                never |= sized & ((self.amax[g] < self.ratio * area - _AREA_SLACK)
                                  | (self.amin[g] * self.ratio > area + _AREA_SLACK))
        nb = np.where(never, 0, np.maximum(b_hi - b_lo + 1, 0)).ravel()
        # A box spanning many bands (tall) takes them whole in one query, x unbounded.
        whole = nb > _MAX_BAND_QUERIES
        nb = np.where(whole, 1, nb)
        at = np.repeat(np.arange(nb.size), nb)  # one query per (row, group, band)
        band = np.repeat(b_lo.ravel() - (np.cumsum(nb) - nb), nb) + np.arange(at.size)
        key = self.base[at % g.size] + band * self.m
        whole = whole[at]
        lo_key = np.where(whole, key, key + r_lo.ravel()[at])
        hi_key = np.where(whole, self.base[at % g.size] + (b_hi.ravel()[at] + 1) * self.m,
                          key + r_hi.ravel()[at])
        lo = np.searchsorted(self.keys, lo_key, side="left")
        count = np.searchsorted(self.keys, hi_key, side="left") - lo
        row = at // g.size
        ends = np.cumsum(count)
        first = 0
        while first < count.size:
            done = ends[first - 1] if first else 0
            last = max(first + 1, int(np.searchsorted(ends, done + _MAX_PAIRS, side="right")))
            c = count[first:last]
            total = int(c.sum())
            j = self.p[np.repeat(lo[first:last] - (np.cumsum(c) - c), c) + np.arange(total)]
            i = np.repeat(rows[row[first:last]], c)
            first = last
            live = (j >= start) & alive[j]
            yield i[live], j[live]


def greedy_in_blocks(index: OverlapIndex, suppresses: Callable[[np.ndarray, np.ndarray], np.ndarray]
                     ) -> np.ndarray:
    """The greedy walk over boxes already in NMS order, in blocks of ``_BLOCK``.

    ``suppresses(i, j)``: for position arrays of equal length, whether box i[k] suppresses
    box j[k] (IoU > threshold; False for boxes apart in x); only pairs ``index`` names are
    asked. Returns the int64 positions of the kept boxes, in order.
    """
    n = index.n
    alive = np.ones(n, dtype=bool)
    kept: list[np.ndarray] = []
    stale = 0  # boxes processed or suppressed since the index was last compacted
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        block = start + np.flatnonzero(alive[start:stop])
        if block.size == 0:
            continue
        # Greedy inside the block: only earlier boxes of the block can suppress a box.
        r, c = index.within(block)
        hit = suppresses(block[r], block[c])
        live = np.ones(block.size, dtype=bool)
        r, c = r[hit], c[hit]  # r ascending
        rows, first = np.unique(r, return_index=True)
        for row, a, z in zip(rows.tolist(), first.tolist(), [*first[1:].tolist(), r.size]):
            if live[row]:
                live[c[a:z]] = False
        keep = block[live]
        kept.append(keep)
        stale += block.size
        for i, j in index.pairs(keep, stop, alive):
            gone = np.unique(j[suppresses(i, j)])
            alive[gone] = False
            stale += gone.size
        if stale * 2 > index.size:
            index.compact(alive, stop)
            stale = 0
    if not kept:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(kept).astype(np.int64)
