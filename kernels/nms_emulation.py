"""Step-by-step numpy emulation of the CUDA NMS in ``src/nms.cu`` (pure numpy, no GPU).

It follows the kernels' algorithm with the same float32 arithmetic (every operation rounded
to float32, no fused multiply-add, as the kernel's ``__f*_rn`` intrinsics) so that CI without
a GPU shows that the algorithm gives exactly the serial greedy result of ``runtime/nms.py``,
and so that its cost on a given input is known (pairs examined, rounds, workspace bytes):

1. **sort**: the 64-bit key ``(~ordered_bits(logit)) << 32 | key`` ascending (CUB radix sort,
   stable), i.e. logit descending (-0 == +0), canonical key ascending. Rank = position.
2. **bin**: per box ``w = x2 - x1 + o``, ``h = y2 - y1 + o``, ``area = w * h``. A box with
   ``not (w > 0 and h > 0 and isfinite(area))`` is *isolated*: its IoU with any box is <= 0 or
   NaN, so it is kept and never looked at (cell code ``0xFFFFFFFF``). Otherwise its size class
   is ``k = clamp(floor(log2(max(w, h))), 0, 30)`` (a class-k box, k <= 29, is narrower and
   lower than ``2^(k+1)``) and its cell code ``k << 27 | ycode << 14 | xcode`` with
   ``xcode = clamp(floor(x1 / 2^(k-1)) + 2048, 0, 16383)`` and
   ``ycode = clamp(floor(y1 / 2^k) + 1024, 0, 8191)``: cells a quarter (x) and a half (y) of the
   largest class-k box (class 30: one cell, codes 0). Class 0 spans x in [-1024, 7168) px,
   class 1 twice that; boxes outside land in the edge cells (still exact, longer walks).
3. **cell sort**: stable sort of (cell code, rank): within a cell, ranks ascend.
4. **walk** (the pair enumeration): box j's possible suppressors i have IoU > t. That needs
   ``w_i > t w_j``, ``h_i > t h_j`` (so ``d_i = max(w_i, h_i) > t d_j``), ``d_i < d_j / t``
   and ``area_i > t area_j`` (so ``d_i > sqrt(t area_j)``): with a margin ``tm = t * 0.999``,
   the classes ``max(size_class(tm d_j), size_class(0.999 sqrt(tm area_j))) ..
   size_class(d_j / tm)`` (all classes when ``tm == 0``). It also needs an x overlap
   ``iw > t max(w_i, w_j)``, so ``x1_j - (1 - t) w_i < x1_i < x1_j + (1 - t) w_j``; in class k
   (``w_i < 2^(k+1)``) with ``f = 1 - tm`` and a rounding margin
   ``m = 2^-16 (|x1_j| + |x2_j| + 2^(k+1) + o)``: ``x1_i`` in
   ``[x1_j - f 2^(k+1) - m, x1_j + f w_j + m]``, the same in y. Those windows' cells are the
   rows and columns walked. The walk visits, class by class and row by row, the cell-sorted
   range of each row's columns, in cell-sorted order, skipping ranks >= j.
5. **resolve**: a box is decided by the first candidate of its walk that overlaps it
   (IoU > t) and is not SUPPRESSED: KEPT -> j is SUPPRESSED, UNDECIDED -> j waits there
   (a SUPPRESSED or non-overlapping candidate is passed for good); no such candidate -> j is
   KEPT. With ``lookahead`` (``tf_nms_params.lookahead``) the walk goes on past an UNDECIDED
   one looking for a KEPT one, and only if there is none waits on the first UNDECIDED one
   (its blocker), re-reading just the blocker's status until it decides, then walks on from
   the blocker (reading it and what follows it again). The kernel runs this asynchronously
   (a persistent kernel, live statuses); here it runs in synchronous (Jacobi) rounds, each
   reading the previous round's statuses. Both give exactly serial greedy NMS (a decided
   status is always the greedy one, and the lowest undecided box decides in the next round);
   ``rounds`` is the dependency depth, an upper bound of the kernel's sequential status
   hand-offs.
6. **compact**: kept ranks in NMS order (exclusive scan of the kept flags; tf_nms's
   ``drop_outside`` also unflags the kept boxes outside the image, which this leaves out).

:func:`emulate_nms` returns the kept indices (as ``runtime.nms.nms``) plus the statistics;
:func:`lookahead_schedule` the round in which each box decides under the lookahead rule, and
:func:`walk_reads` the candidates a sample of boxes read under both rules (with that schedule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

X_BITS, Y_BITS, CLASS_SHIFT = 14, 13, 27
X_GRAIN, Y_GRAIN = 2, 1  # cell side 2^(k+1-grain): a quarter (x), a half (y) of 2^(k+1)
X_BIAS, Y_BIAS = 1 << (X_BITS - 3), 1 << (Y_BITS - 3)  # codes cover [-1/8, 7/8) of the range
TOP_CLASS = 30
ISOLATED_CELL = 0xFFFFFFFF
WINDOW_MARGIN = np.float32(0.999)
POSITION_MARGIN = np.float32(2.0 ** -16)  # relative rounding margin of the position windows
RESOLVE_THREADS = 128
ALIGN = 256
UNDECIDED, KEPT, SUPPRESSED = 0, 1, 2

_F = np.float32


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def workspace_bytes(max_candidates: int) -> int:
    """``tf_nms_workspace_size``: the layout of ``nms_layout`` in src/nms.cu."""
    m = int(max_candidates)
    sizes = [8,                 # Control (uint32 n, uint32 next_chunk)
             8 * m, 8 * m,      # 64-bit sort keys (double buffer); later cell codes + ranks
             4 * m, 4 * m,      # slots (double buffer); later kept flags + output rows
             16 * m, 4 * m,     # boxes, logits in NMS order
             1 * m,             # status bytes
             16 * m]            # boxes in cell-sorted order (the walks stream them)
    return sum(_align(s) for s in sizes) + _align(8 * m) + (1 << 20)  # + CUB storage bound


def sort_keys(logits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The kernel's 64-bit sort key (``tf::sort_key``): ascending = NMS order."""
    lg = np.asarray(logits, dtype=_F).copy()
    lg[lg == 0] = 0.0  # -0 -> +0
    bits = lg.view(np.uint32).astype(np.uint64)
    ascending = np.where(bits & 0x80000000, ~bits & 0xFFFFFFFF, bits | 0x80000000)
    return ((~ascending & 0xFFFFFFFF) << np.uint64(32)) | (np.asarray(keys).astype(np.uint64) & 0xFFFFFFFF)


def nms_order(logits: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Indices in NMS order (stable radix sort of :func:`sort_keys`)."""
    return np.argsort(sort_keys(logits, keys), kind="stable")


def geometry(boxes: np.ndarray, offset: float) -> tuple[np.ndarray, ...]:
    """float32 (w, h, area, isolated) as ``box_w`` / ``box_h`` / ``isolated`` in the kernel."""
    b = np.asarray(boxes, dtype=_F)
    o = _F(offset)
    with np.errstate(all="ignore"):
        w = (b[:, 2] - b[:, 0]) + o
        h = (b[:, 3] - b[:, 1]) + o
        area = w * h
    iso = ~((w > 0) & (h > 0) & np.isfinite(area))
    return w, h, area, iso


def size_class(d: np.ndarray) -> np.ndarray:
    """floor(log2(d)) clamped to [0, 30] (monotone; d < 2 -> 0, NaN -> 0)."""
    d = np.asarray(d, dtype=_F)
    with np.errstate(invalid="ignore"):
        exp = ((d.view(np.uint32) >> 23) & 0xFF).astype(np.int64) - 127
        return np.where(~(d >= 2), 0, np.where(d >= _F(2.0 ** 30), TOP_CLASS, exp))


def cell_of(v: np.ndarray, k: np.ndarray, bias: int, bits: int, grain: int) -> np.ndarray:
    """floor(v / 2^(k+1-grain)) + bias clamped to [-1, 2^bits - 1] (float32, as ``cell_of``)."""
    inv = np.ldexp(np.ones(np.shape(k), dtype=_F), grain - (np.asarray(k) + 1)).astype(_F)
    with np.errstate(invalid="ignore", over="ignore"):
        c = np.floor(np.asarray(v, dtype=_F) * inv)
    c = np.minimum(np.maximum(c, _F(-bias - 1)), _F((1 << bits) - 1 - bias))
    with np.errstate(invalid="ignore"):  # NaN only for isolated boxes, whose cell is unused
        return c.astype(np.int64) + bias


def _code(k, y, x) -> np.ndarray:
    return (np.asarray(k, np.int64) << CLASS_SHIFT) | (np.asarray(y, np.int64) << X_BITS) | np.asarray(x, np.int64)


def cell_codes(boxes: np.ndarray, offset: float) -> np.ndarray:
    """uint32 cell code per box (``nms_bin_kernel``)."""
    b = np.asarray(boxes, dtype=_F)
    w, h, _, iso = geometry(b, offset)
    k = size_class(np.maximum(w, h))
    top = k == TOP_CLASS
    kk = np.minimum(k, TOP_CLASS - 1)
    y = np.where(top, 0, np.maximum(cell_of(b[:, 1], kk, Y_BIAS, Y_BITS, Y_GRAIN), 0))
    x = np.where(top, 0, np.maximum(cell_of(b[:, 0], kk, X_BIAS, X_BITS, X_GRAIN), 0))
    return np.where(iso, ISOLATED_CELL, _code(k, y, x)).astype(np.uint32)


def overlaps(bi: np.ndarray, area_i: np.ndarray, bj: np.ndarray, area_j: np.ndarray,
             thresh: float, offset: float) -> np.ndarray:
    """IoU > thresh in float32 (``overlaps`` in the kernel; rows of bi / bj are pairs)."""
    o = _F(offset)
    with np.errstate(all="ignore"):
        iw = np.maximum(_F(0), (np.minimum(bi[:, 2], bj[:, 2]) - np.maximum(bi[:, 0], bj[:, 0])) + o)
        ih = np.maximum(_F(0), (np.minimum(bi[:, 3], bj[:, 3]) - np.maximum(bi[:, 1], bj[:, 1])) + o)
        inter = iw * ih
        return inter / ((area_i + area_j) - inter) > _F(thresh)


@dataclass
class Walks:
    """The pair enumeration: for each examined candidate, its box j and partner i (ranks), in
    walk order (j ascending, then walk position). ``rows`` = binary-searched row ranges."""

    j: np.ndarray
    i: np.ndarray
    rows: int


def class_range(w: np.ndarray, h: np.ndarray, thresh: float) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) size class of the possible suppressors of boxes (w, h) (``walk_start``)."""
    d = np.maximum(w, h)
    tm = _F(thresh) * WINDOW_MARGIN
    with np.errstate(all="ignore"):
        k_lo = np.maximum(size_class(tm * d),
                          size_class(np.sqrt(tm * (w * h)).astype(_F) * WINDOW_MARGIN))
        k_hi = size_class(d / tm) if tm > 0 else np.full(d.shape, TOP_CLASS)
    return k_lo, k_hi


def windows(bj: np.ndarray, wj: np.ndarray, hj: np.ndarray, k: np.ndarray, thresh: float,
            offset: float) -> tuple[np.ndarray, ...]:
    """(y_lo, y_hi, x_lo, x_hi) grid rows and columns of class k holding every box i with
    IoU(i, j) > t (``walk_class`` in the kernel; class 30: the single cell)."""
    o = _F(offset)
    top = k == TOP_CLASS
    kc = np.minimum(k, TOP_CLASS - 1)
    side = np.ldexp(np.ones(kc.shape, _F), kc + 1).astype(_F)
    f = _F(1) - _F(thresh) * WINDOW_MARGIN
    out = []
    for lo_v, hi_v, size, bias, bits, grain in ((bj[:, 1], bj[:, 3], hj, Y_BIAS, Y_BITS, Y_GRAIN),
                                                 (bj[:, 0], bj[:, 2], wj, X_BIAS, X_BITS, X_GRAIN)):
        with np.errstate(all="ignore"):
            m = (((np.abs(lo_v) + np.abs(hi_v)) + side) + o) * POSITION_MARGIN
            first = (lo_v - f * side) - m
            last = (lo_v + f * size) + m
        out.append(np.where(top, 0, np.maximum(cell_of(first, kc, bias, bits, grain), 0)))
        out.append(np.where(top, 0, np.maximum(cell_of(last, kc, bias, bits, grain), 0)))
    return tuple(out)


def walks(b: np.ndarray, w: np.ndarray, h: np.ndarray, js: np.ndarray, cells_sorted: np.ndarray,
          ranks_sorted: np.ndarray, thresh: float, offset: float) -> Walks:
    """All (j, i < j) candidates the kernel's walks visit (``walk_start`` / ``walk_class`` /
    ``walk_row``) for the non-isolated ranks ``js`` (ascending), in walk order."""
    k_lo, k_hi = class_range(w[js], h[js], thresh)
    # (j, k) pairs
    nk = k_hi - k_lo + 1
    jk = np.repeat(js, nk)
    kk = np.repeat(k_lo, nk) + (np.arange(nk.sum()) - np.repeat(np.cumsum(nk) - nk, nk))
    y_lo, y_hi, x_lo, x_hi = windows(b[jk], w[jk], h[jk], kk, thresh, offset)
    # (j, k, y) rows
    ny = y_hi - y_lo + 1
    rj = np.repeat(jk, ny)
    rk = np.repeat(kk, ny)
    ry = np.repeat(y_lo, ny) + (np.arange(ny.sum()) - np.repeat(np.cumsum(ny) - ny, ny))
    lo = np.searchsorted(cells_sorted, _code(rk, ry, np.repeat(x_lo, ny)).astype(np.uint32), "left")
    hi = np.searchsorted(cells_sorted, (_code(rk, ry, np.repeat(x_hi, ny)) + 1).astype(np.uint32), "left")
    # expand the row ranges to positions, keep partners ranked before j
    length = hi - lo
    keep = length > 0
    rj, lo, length = rj[keep], lo[keep], length[keep]
    pos = np.repeat(lo - (np.cumsum(length) - length), length) + np.arange(length.sum())
    pj = np.repeat(rj, length)
    pi = ranks_sorted[pos].astype(np.int64)
    earlier = pi < pj
    return Walks(pj[earlier], pi[earlier], int(ny.sum()))


class ResolveStuckError(RuntimeError):
    """The resolve rounds did not converge: boxes are still undecided after ``n`` rounds."""


def _check_progress(rounds: int, n: int, undecided: np.ndarray) -> None:
    """Every round decides at least the lowest undecided box (its partners, all ranked before
    it, have decided), so ``n`` boxes need at most ``n`` rounds (a chain needs exactly n);
    needing round n + 1 means a broken rule or edges that are not (j, i < j) pairs, which
    would otherwise loop forever."""
    if rounds >= n:
        raise ResolveStuckError(
            f"NMS resolve did not converge: {int(undecided.sum())} of {n} boxes still undecided "
            f"after {rounds} rounds, the most {n} boxes can need (every round decides the lowest "
            "undecided box); the resolve rule is broken or an edge is not a (j, i < j) pair")


def resolve_rounds(n: int, iso: np.ndarray, edge_j: np.ndarray, edge_i: np.ndarray,
                   lookahead: bool = False) -> tuple[np.ndarray, int]:
    """Synchronous rounds of the resolve rule over the overlap edges (in walk order, grouped
    by j ascending). Returns (status per rank, number of rounds).

    Raises:
        ResolveStuckError: boxes still undecided after ``n`` rounds (never, for edges
            (j, i < j) and a correct rule).
    """
    if lookahead:
        return _lookahead_rounds(n, iso, edge_j, edge_i)
    status = np.full(n, UNDECIDED, dtype=np.int8)
    status[iso] = KEPT  # decided before the walks (round 0)
    ej, ei = edge_j, edge_i
    rounds = 0
    while True:
        undecided = status == UNDECIDED
        if not undecided.any():
            return status, rounds
        _check_progress(rounds, n, undecided)
        rounds += 1
        prev = status.copy()
        live = undecided[ej] & (prev[ei] != SUPPRESSED)  # passed edges never count again
        ej, ei = ej[live], ei[live]
        first = np.flatnonzero(np.r_[True, ej[1:] != ej[:-1]]) if ej.size else ej  # per walk
        first_j = ej[first]
        blocker = prev[ei[first]]
        status[first_j[blocker == KEPT]] = SUPPRESSED
        free = undecided.copy()
        free[first_j] = False
        status[free] = KEPT  # nothing left to wait on


def _lookahead_rounds(n: int, iso: np.ndarray, edge_j: np.ndarray,
                      edge_i: np.ndarray) -> tuple[np.ndarray, int]:
    """The lookahead rule's (status, rounds): see :func:`lookahead_schedule`."""
    status, decided = lookahead_schedule(n, iso, edge_j, edge_i)
    return status, int(decided.max(initial=0))


def lookahead_schedule(n: int, iso: np.ndarray, edge_j: np.ndarray,
                       edge_i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lookahead rule (``tf_nms_params.lookahead``) in synchronous rounds: (status, round)
    per rank, the round in which each box decides (1-based; 0: isolated, kept before the walks).

    Arguments as :func:`resolve_rounds` (the overlap edges in walk order, grouped by j
    ascending). The model (lock-step rounds, as the walk-order rule's): every box still
    undecided at the start of round r makes one ``walk_advance`` call in round r, and every
    call reads the statuses as they were at the end of round r - 1. Round 1 is every box's
    first pass, from the start of its walk. A pass scans from its resume point on past
    undecided overlapping boxes; a KEPT one suppresses the box, else the first undecided one
    becomes its blocker (the resume point) and the box waits: from the next round on, each
    call first reads the blocker's status (one poll) and returns while it is undecided; once
    the blocker has decided (in round r - 1 or before), the same call passes again from the
    blocker; a pass that meets no undecided box keeps the box. So box j passes in round 1 and
    in round ``decided[b] + 1`` for each blocker b, and decides in its last pass.

    Raises:
        ResolveStuckError: as :func:`resolve_rounds`.
    """
    status = np.full(n, UNDECIDED, dtype=np.int8)
    status[iso] = KEPT
    decided = np.zeros(n, np.int64)
    m = edge_j.size
    position = np.arange(m)
    end = np.searchsorted(edge_j, np.arange(n), "right")
    resume = np.searchsorted(edge_j, np.arange(n), "left")  # the blocker's edge, or the start
    never = m + 1
    rounds = 0
    while True:
        undecided = status == UNDECIDED
        if not undecided.any():
            return status, decided
        _check_progress(rounds, n, undecided)
        prev = status.copy()
        has_blocker = resume < end
        blocker = np.full(n, KEPT, np.int8)
        blocker[has_blocker] = prev[edge_i[resume[has_blocker]]]
        passing = undecided & ((blocker != UNDECIDED) if rounds else True)
        rounds += 1
        scan = passing[edge_j] & (position >= resume[edge_j])
        sj, sp, s = edge_j[scan], position[scan], prev[edge_i[scan]]
        suppressed = np.zeros(n, bool)
        suppressed[sj[s == KEPT]] = True
        first_undecided = np.full(n, never, np.int64)
        np.minimum.at(first_undecided, sj[s == UNDECIDED], sp[s == UNDECIDED])
        status[passing & suppressed] = SUPPRESSED
        status[passing & ~suppressed & (first_undecided == never)] = KEPT
        decided[undecided & (status != UNDECIDED)] = rounds
        waits = passing & ~suppressed & (first_undecided < never)
        resume[waits] = first_undecided[waits]


@dataclass
class Emulation:
    """Result and cost of one emulated ``tf_nms`` call.

    Attributes:
        kept: indices into the inputs of the kept boxes, NMS order (as ``runtime.nms.nms``).
        order: NMS order (indices into the inputs).
        status: per rank, KEPT (1) / SUPPRESSED (2).
        rounds: synchronous resolve rounds (dependency depth).
        candidate_pairs: (j, i < j) pairs the walks visit (at most; the kernel stops early).
        overlap_pairs: those with IoU > thresh (the sparse overlap graph).
        rows: grid rows binary-searched by all walks.
        isolated: boxes kept without a walk.
        workspace_bytes: ``tf_nms_workspace_size(n)``.
        edge_i, edge_j: the overlap pairs (ranks i < j) the walks found, in walk order.
    """

    kept: np.ndarray
    order: np.ndarray
    status: np.ndarray
    rounds: int
    candidate_pairs: int
    overlap_pairs: int
    rows: int
    isolated: int
    workspace_bytes: int
    edge_i: np.ndarray
    edge_j: np.ndarray


def emulate_nms(boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray, iou_thresh: float,
                pixel_offset: float = 1.0, chunk: int = 8192, lookahead: bool = False) -> Emulation:
    """Emulates ``tf_nms`` on float32 boxes (N, 4), logits (N,), uint32 canonical keys (N,);
    ``chunk`` walks are expanded at a time (memory only; the result does not depend on it);
    ``lookahead``: the resolve rule of ``tf_nms_params.lookahead`` (the same result)."""
    b_in = np.asarray(boxes, dtype=_F).reshape(-1, 4)
    n = b_in.shape[0]
    order = nms_order(logits, keys)
    b = b_in[order]
    w, h, area, iso = geometry(b, pixel_offset)
    codes = cell_codes(b, pixel_offset)
    perm = np.argsort(codes, kind="stable")  # radix sort of (code, rank): ranks ascend per cell
    cells_sorted, ranks_sorted = codes[perm], perm.astype(np.uint32)
    edge_i, edge_j = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    candidates = rows = 0
    walkers = np.flatnonzero(~iso)
    for start in range(0, walkers.size, chunk):  # bounded memory: walks of `chunk` boxes at a time
        wk = walks(b, w, h, walkers[start:start + chunk], cells_sorted, ranks_sorted, iou_thresh,
                   pixel_offset)
        hit = overlaps(b[wk.i], area[wk.i], b[wk.j], area[wk.j], iou_thresh, pixel_offset)
        edge_i.append(wk.i[hit])
        edge_j.append(wk.j[hit])
        candidates += wk.j.size
        rows += wk.rows
    ei, ej = np.concatenate(edge_i), np.concatenate(edge_j)
    status, rounds = resolve_rounds(n, iso, ej, ei, lookahead)
    kept_ranks = np.flatnonzero(status == KEPT)
    return Emulation(kept=order[kept_ranks].astype(np.int64), order=order, status=status,
                     rounds=rounds, candidate_pairs=int(candidates), overlap_pairs=int(ei.size),
                     rows=int(rows), isolated=int(iso.sum()), workspace_bytes=workspace_bytes(max(n, 1)),
                     edge_i=ei, edge_j=ej)


@dataclass
class WalkReads:
    """What the resolve kernel's walks read (see :func:`walk_reads`).

    Attributes:
        reads: candidates read per sampled box before it decides, walk-order rule.
        rows: grid rows (binary-searched ranges) per sampled box, whole walks.
        sampled: how many boxes were sampled (non-isolated ones).
        lookahead_reads: candidates read per sampled box under the lookahead rule, every pass
            counted (a candidate read again after a resume counts again); None unless asked.
        lookahead_polls: blocker status polls per sampled box under the lookahead rule, one
            per round spent waiting (lock-step model of :func:`lookahead_schedule`); or None.
    """

    reads: np.ndarray
    rows: float
    sampled: int
    lookahead_reads: np.ndarray | None = None
    lookahead_polls: np.ndarray | None = None

    def summary(self) -> dict[str, float]:
        """mean / p99 / max of the reads (and of the lookahead reads and polls when counted),
        and rows per box (JSON-ready)."""
        out = {"reads_mean": 0.0, "reads_p99": 0.0, "reads_max": 0, "rows": 0.0}
        if self.reads.size:
            out = {**_stats(self.reads, "reads"), "rows": round(self.rows, 1)}
        if self.lookahead_reads is not None and self.lookahead_polls is not None:
            out.update(_stats(self.lookahead_reads, "reads_lookahead"))
            out.update(_stats(self.lookahead_polls, "polls_lookahead"))
        return out


def _stats(values: np.ndarray, name: str) -> dict[str, float]:
    """{name_mean, name_p99, name_max} (0 for no values)."""
    if not values.size:
        return {f"{name}_mean": 0.0, f"{name}_p99": 0.0, f"{name}_max": 0}
    return {f"{name}_mean": round(float(values.mean()), 1),
            f"{name}_p99": float(np.percentile(values, 99)), f"{name}_max": int(values.max())}


def walk_reads(boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray, kept: np.ndarray,
               thresh: float, offset: float = 1.0, sample: int | None = None,
               seed: int = 0, decided: np.ndarray | None = None) -> WalkReads:
    """Candidates a box's walk reads before it decides, for a sample of boxes: up to the first
    overlapping box that greedy NMS keeps (suppressed there), or the whole walk when it is kept.
    That is the resolve kernel's work per thread under the walk-order rule, each candidate
    counted once (a box waiting on an undecided one re-reads it on each retry: not counted);
    ``kept`` are the greedy result's input indices (from :func:`emulate_nms` or
    ``runtime.nms.nms``: this needs no resolve rounds).

    With ``decided``, the round in which each rank decides under the lookahead rule (from
    :func:`lookahead_schedule` on the same boxes; ranks = NMS order), it also counts the
    lookahead rule's reads and polls (see :func:`_lookahead_reads`)."""
    order = nms_order(logits, keys)
    b = np.asarray(boxes, dtype=_F).reshape(-1, 4)[order]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    is_kept = np.zeros(len(order), bool)
    is_kept[rank[np.asarray(kept, np.int64)]] = True
    w, h, area, iso = geometry(b, offset)
    codes = cell_codes(b, offset)
    perm = np.argsort(codes, kind="stable")
    walkers = np.flatnonzero(~iso)
    if sample is not None and sample < walkers.size:
        walkers = np.sort(np.random.default_rng(seed).choice(walkers, sample, replace=False))
    if decided is not None:
        decided = np.asarray(decided, np.int64)
        if decided.shape != (len(order),):
            raise ValueError(f"decided has shape {decided.shape}, want ({len(order)},)")
    reads, ahead, polls, rows = [], [], [], 0
    for start in range(0, walkers.size, 512):
        js = walkers[start:start + 512]
        wk = walks(b, w, h, js, codes[perm], perm.astype(np.uint32), thresh, offset)
        rows += wk.rows
        group = np.searchsorted(js, wk.j)  # walk of js[group], entries in walk order
        length = np.bincount(group, minlength=js.size)  # a walk without candidates reads nothing
        position = np.arange(wk.j.size) - np.repeat(np.cumsum(length) - length, length)
        hit = overlaps(b[wk.i], area[wk.i], b[wk.j], area[wk.j], thresh, offset)
        # walk order: up to the first overlapping box that greedy NMS keeps, else the whole walk
        stop = np.flatnonzero(hit & is_kept[wk.i])
        first_stop, at = np.unique(group[stop], return_index=True)
        counts = length.copy()
        counts[first_stop] = position[stop[at]] + 1
        reads.append(counts)
        if decided is not None:
            edges = np.flatnonzero(hit)
            la_reads, la_polls = _lookahead_reads(js, length, group[edges], position[edges],
                                                  wk.i[edges], is_kept, decided)
            ahead.append(la_reads)
            polls.append(la_polls)
    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    with_ahead = decided is not None
    return WalkReads(cat(reads), rows / max(walkers.size, 1), int(walkers.size),
                     cat(ahead) if with_ahead else None, cat(polls) if with_ahead else None)


def _lookahead_reads(js: np.ndarray, length: np.ndarray, group: np.ndarray, position: np.ndarray,
                     partner: np.ndarray, is_kept: np.ndarray,
                     decided: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(reads, polls) per walk of ``js`` under the lookahead rule (``walk_advance<true>``), in
    the lock-step model of :func:`lookahead_schedule`; a walk of ``length[g]`` candidates whose
    overlapping ones are the edges (``group``, ``position`` in the walk, ``partner`` rank), in
    walk order.

    A pass in round r sees the statuses at the end of round r - 1 (box i: UNDECIDED while
    ``decided[i] >= r``, then KEPT or SUPPRESSED). Round 1 passes from the start of the walk.
    A pass reads every candidate from its start position on (overlapping or not; the ``i >= j``
    cell skips are no reads) and stops after the first overlapping KEPT one (the box is
    suppressed: reads up to it, inclusive); otherwise it reads to the end of the walk, and the
    box is kept if no overlapping box was undecided, else it waits on the first undecided one
    b: the next pass is in round ``decided[b] + 1`` and starts at b's position (the kernel
    resets its cursor to b's class, row and position), so b and all after it are read again.
    Each round spent waiting reads b's status once (a poll, counted apart from the reads),
    including the round whose poll finds b decided and passes. Raises ValueError when the
    passes do not decide the boxes as ``decided`` says (not the lookahead schedule of these
    boxes)."""
    never = np.iinfo(np.int64).max
    n_walks = js.size
    start = np.zeros(n_walks, np.int64)      # where the next pass starts (walk position)
    rnd = np.ones(n_walks, np.int64)         # the round of the next pass
    reads = np.zeros(n_walks, np.int64)
    polls = np.zeros(n_walks, np.int64)
    last = np.zeros(n_walks, np.int64)       # the round of the deciding pass
    suppressed = np.zeros(n_walks, bool)
    active = np.ones(n_walks, bool)
    edge_kept, edge_round = is_kept[partner], decided[partner]
    while active.any():
        live = np.flatnonzero(active[group] & (position >= start[group]))
        seen = edge_round[live] < rnd[group[live]]  # decided before this pass
        kept_now = live[seen & edge_kept[live]]
        waiting = live[~seen]
        first_kept = np.full(n_walks, never)
        g, at = np.unique(group[kept_now], return_index=True)  # edges are in walk order
        first_kept[g] = position[kept_now[at]]
        blocker = np.full(n_walks, -1)
        g, at = np.unique(group[waiting], return_index=True)
        blocker[g] = waiting[at]
        stop = active & (first_kept < never)
        reads[stop] += first_kept[stop] - start[stop] + 1
        rest = active & ~stop
        reads[rest] += length[rest] - start[rest]
        done = stop | (rest & (blocker < 0))
        suppressed[stop] = True
        last[done] = rnd[done]
        active &= ~done
        wait = np.flatnonzero(active)
        resume = edge_round[blocker[wait]] + 1
        polls[wait] += resume - rnd[wait]
        rnd[wait] = resume
        start[wait] = position[blocker[wait]]
    if not (np.array_equal(last, decided[js]) and np.array_equal(suppressed, ~is_kept[js])):
        raise ValueError("decided is not the lookahead schedule of these boxes")
    return reads, polls


def overlap_pairs_bruteforce(boxes: np.ndarray, logits: np.ndarray, keys: np.ndarray,
                             iou_thresh: float, pixel_offset: float = 1.0) -> set[tuple[int, int]]:
    """Every (i < j) rank pair with float32 IoU > thresh, by brute force (small N only): the
    walks must find all of them."""
    order = nms_order(logits, keys)
    b = np.asarray(boxes, dtype=_F).reshape(-1, 4)[order]
    _, _, area, _ = geometry(b, pixel_offset)
    n = b.shape[0]
    jj, ii = np.tril_indices(n, -1)
    hit = overlaps(b[ii], area[ii], b[jj], area[jj], iou_thresh, pixel_offset)
    return set(zip(ii[hit].tolist(), jj[hit].tolist()))
