"""What parity means: tolerances, score-map statistics, detection matching, NMS ties.

Two levels are compared, for every backend and image size (the harness,
:mod:`.harness`, runs them; :mod:`.report` prints them):

raw score maps
    Every pyramid level's (1, 125, h', w') map, on the same preprocessed input, against
    :class:`~tinyfaces_trt.export.torch_runner.TorchRunner` (fp32, CPU). An element passes when
    ``|test - ref| <= atol + rtol * |ref|`` (numpy ``allclose``); the report also gives the max
    absolute error and the max error relative to the map's range (``max_abs / max|ref|``).

final detections
    The whole pipeline (decode + NMS) on each set of maps, matched greedily by score at
    IoU >= ``iou`` (:func:`match_detections`). A reduced-precision network legitimately
    moves a logit across the threshold, or flips an NMS decision between two boxes whose
    IoU (as the NMS measures it: its "+1" pixel convention, boxes before clipping) is at
    the NMS threshold or whose scores are tied; so (:func:`compare_detections`)
    every detection whose prob is more than ``margin`` away from ``prob_thresh`` must be
    matched unless it is *NMS-ambiguous*, and matched probs must agree within ``score``.
    A flip can also leave two *different* boxes overlapping at IoU >= ``iou``, one kept on
    each side, which the matching pairs; such a pair whose probs differ by more than
    ``score`` and whose difference an NMS near-tie explains (:func:`nms_swapped`) counts as
    two unmatched, NMS-ambiguous detections instead.

Tolerances (:data:`TOLERANCES`), measured with seeded ResNet-50/101 weights (``build_model``)
on ONNX Runtime 1.32 CPU, synthetic images 33x47 .. 640x480 (all pyramid levels, up to
1280x960 network inputs):

fp32 (ONNX Runtime fp32; TensorRT fp32 engines built with TF32 off)
    maps ``atol = 5e-4, rtol = 1e-4, mean <= 2.5e-5``. Measured: max abs error 2.5e-5 (33x47)
    growing to 1.0e-4 (640x480, ResNet-101) on maps reaching |6|; mean abs 2.5e-6.
    Polygraphy's default 1e-5 is too tight for a 23-block trunk summed in another order.
    (A TensorRT engine built with TF32 kernels, the builder's default, rounds convolution
    inputs to 10 mantissa bits and needs fp16-like tolerances.)
    Detections: IoU >= 0.99, ``|dprob| <= 1e-4`` (measured 1e-5), threshold margin 1e-4.
fp16 (fp16 weights and activations, float32 I/O; Polygraphy's fp32 defaults do not apply)
    maps ``atol = 0.3, rtol = 0.05, mean <= 0.01``. fp16 keeps 11 significant bits (relative
    rounding 4.9e-4) and the error accumulates over ~100 layers; measured max abs error
    0.010 .. 0.017 (ResNet-50) and 0.028 (33x47) .. 0.111 (640x480) (ResNet-101), mean abs
    0.0005 / 0.0025; the error grows with image size, so the margin is larger than for fp32.
    A real bug (wrong crop, normalisation, layer) moves logits by O(1) and still fails.
    Detections: IoU >= 0.8 (measured >= 0.989), ``|dprob| <= 0.05`` (measured 0.012),
    threshold margin 0.05 prob (estimated for a GPU fp16 network at 1920x1080, ResNet-101,
    by an fp32 emulation of fp16 rounding, ``tools/fp16_parity_estimate.py``: matched IoU
    >= 0.842, ``|dprob|`` 0.024, 36 firm detections excused as NMS flips, none missing);
    NMS flips between near-tied boxes happen (a few per image on untrained weights, whose
    scores are flat) and are reported as NMS-ambiguous.
tf32 (an fp32 export run with TF32 convolutions: ONNX Runtime's TensorRT provider, whose
TensorRT builder allows TF32 by default with no provider option to clear it)
    fp16's tolerances. TF32 rounds each convolution's inputs to 10 mantissa bits, as fp16
    does, while keeping float32 range, storage and sums, so its error is at most about fp16's
    (estimated from the rounding; not measured here, where there is no GPU). The fp32
    tolerances above would fail such a run without any bug.

Non-finite values (NaN, inf) in a test or reference map, or in a detection, always fail the
comparison, with a criterion saying how many were found; every failed criterion is named in
:attr:`MapComparison.failures` / :attr:`DetectionComparison.failures` with the measured value
and its limit.

CLI: ``tf-parity`` (:mod:`.cli`), see ``--help``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tinyfaces_trt.runtime.boxes import box_iou

# ---------------------------------------------------------------------------------------------
# Tolerances
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MapTolerance:
    """Every element: ``|test - ref| <= atol + rtol * |ref|``; and mean ``|test - ref| <= mean``."""

    atol: float
    rtol: float
    mean: float


@dataclass(frozen=True)
class DetectionTolerance:
    """How final detections must agree.

    Attributes:
        iou: a test detection matches a reference one at IoU >= this.
        score: matched probs may differ by at most this.
        margin: detections whose prob is within this of ``prob_thresh`` may be missing on
            the other side (they may cross the threshold); also the score closeness under
            which two overlapping boxes count as tied for NMS.
        nms_iou_margin: IoU closeness to ``nms_thresh`` under which an NMS decision may flip.
    """

    iou: float
    score: float
    margin: float
    nms_iou_margin: float


@dataclass(frozen=True)
class Tolerances:
    """The tolerances of one precision."""

    maps: MapTolerance
    detections: DetectionTolerance


TOLERANCES: dict[str, Tolerances] = {
    "fp32": Tolerances(MapTolerance(atol=5e-4, rtol=1e-4, mean=2.5e-5),
                       DetectionTolerance(iou=0.99, score=1e-4, margin=1e-4, nms_iou_margin=1e-3)),
    "fp16": Tolerances(MapTolerance(atol=0.3, rtol=0.05, mean=0.01),
                       DetectionTolerance(iou=0.8, score=0.05, margin=0.05, nms_iou_margin=0.05)),
}
TOLERANCES["tf32"] = TOLERANCES["fp16"]



# ---------------------------------------------------------------------------------------------
# Raw maps
# ---------------------------------------------------------------------------------------------

def _worst(a: float, b: float) -> float:
    """The larger of two statistics; NaN (not computable) wins, unlike Python's ``max``."""
    return float(np.max([a, b]))


@dataclass
class MapComparison:
    """Error statistics of one (or several, merged) score maps against the reference.

    Attributes:
        shape_ok: shapes were equal (otherwise the statistics are NaN).
        max_abs: max ``|test - ref|`` over the elements finite on both sides.
        max_rel: ``max_abs / max|ref|``, the error relative to the map's range.
        mean_abs: mean ``|test - ref|`` over the elements finite on both sides.
        ref_scale: ``max|ref|`` over the finite reference elements.
        n_elements: elements compared.
        n_failed: finite elements outside ``atol + rtol*|ref|``.
        tolerance: the limits applied.
        worst_mean_abs: the largest ``mean_abs`` of the merged maps (each map's mean is held
            to ``tolerance.mean`` on its own).
        n_nonfinite_test, n_nonfinite_ref: NaN / inf values in the test / reference maps.
        shape_errors: one line per map whose shape differed.
        failures: every failed criterion, with the measured value and its limit.
        passed: no criterion failed.
    """

    shape_ok: bool
    max_abs: float
    max_rel: float
    mean_abs: float
    ref_scale: float
    n_elements: int
    n_failed: int
    tolerance: MapTolerance
    worst_mean_abs: float = 0.0
    n_nonfinite_test: int = 0
    n_nonfinite_ref: int = 0
    shape_errors: tuple[str, ...] = ()
    failures: tuple[str, ...] = field(init=False)
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        tol = self.tolerance
        failures = list(self.shape_errors)
        if self.n_nonfinite_test or self.n_nonfinite_ref:
            failures.append(f"non-finite values found: {self.n_nonfinite_test} in the test maps, "
                            f"{self.n_nonfinite_ref} in the reference maps (limit 0)")
        if self.n_failed:
            failures.append(f"{self.n_failed} of {self.n_elements} elements with abs error > "
                            f"{tol.atol:g} + {tol.rtol:g}*abs(ref) (max abs error "
                            f"{format_stat(self.max_abs)})")
        if not self.worst_mean_abs <= tol.mean and self.shape_ok:
            failures.append(f"mean abs error {format_stat(self.worst_mean_abs)} > {tol.mean:g}")
        self.failures = tuple(failures)
        self.passed = not failures

    @property
    def detail(self) -> str:
        """The failed criteria on one line ("" when passed)."""
        return "; ".join(self.failures)

    def merge(self, other: "MapComparison") -> "MapComparison":
        """Statistics over both comparisons (e.g. all pyramid levels of an image)."""
        n = self.n_elements + other.n_elements
        ref_scale = _worst(self.ref_scale, other.ref_scale)
        max_abs = _worst(self.max_abs, other.max_abs)
        mean = (self.mean_abs * self.n_elements + other.mean_abs * other.n_elements) / max(n, 1)
        return MapComparison(
            shape_ok=self.shape_ok and other.shape_ok, max_abs=max_abs,
            max_rel=max_abs / ref_scale if ref_scale > 0 else max_abs, mean_abs=mean,
            ref_scale=ref_scale, n_elements=n, n_failed=self.n_failed + other.n_failed,
            tolerance=self.tolerance,
            worst_mean_abs=_worst(self.worst_mean_abs, other.worst_mean_abs),
            n_nonfinite_test=self.n_nonfinite_test + other.n_nonfinite_test,
            n_nonfinite_ref=self.n_nonfinite_ref + other.n_nonfinite_ref,
            shape_errors=self.shape_errors + other.shape_errors)


def compare_maps(reference: np.ndarray, test: np.ndarray,
                 tolerance: MapTolerance = TOLERANCES["fp32"].maps) -> MapComparison:
    """Compares a backend's score map to the reference's (any equal shapes).

    Fails on a shape difference, on any non-finite value on either side, on any finite
    element outside ``atol + rtol*|ref|``, and on a mean error above ``tolerance.mean``.
    """
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    if ref.shape != out.shape:
        nan = float("nan")
        return MapComparison(False, nan, nan, nan, nan, int(ref.size), 0, tolerance,
                             worst_mean_abs=nan,
                             shape_errors=(f"shape {out.shape} != reference {ref.shape}",))
    bad_ref, bad_out = ~np.isfinite(ref), ~np.isfinite(out)
    both = ~(bad_ref | bad_out)
    diff = np.abs(out - ref)[both]
    scale = np.abs(ref)[both]
    n_failed = int(np.count_nonzero(diff > tolerance.atol + tolerance.rtol * scale))
    max_abs = float(diff.max()) if diff.size else 0.0
    mean_abs = float(diff.mean()) if diff.size else 0.0
    ref_scale = float(scale.max()) if scale.size else 0.0
    return MapComparison(
        shape_ok=True, max_abs=max_abs,
        max_rel=max_abs / ref_scale if ref_scale > 0 else max_abs, mean_abs=mean_abs,
        ref_scale=ref_scale, n_elements=int(ref.size), n_failed=n_failed, tolerance=tolerance,
        worst_mean_abs=mean_abs, n_nonfinite_test=int(np.count_nonzero(bad_out)),
        n_nonfinite_ref=int(np.count_nonzero(bad_ref)))


# ---------------------------------------------------------------------------------------------
# Detections
# ---------------------------------------------------------------------------------------------

@dataclass
class Matching:
    """Result of :func:`match_detections`: matched index pairs and the leftovers."""

    ref_index: np.ndarray
    test_index: np.ndarray
    iou: np.ndarray
    unmatched_ref: np.ndarray
    unmatched_test: np.ndarray


def match_detections(reference: np.ndarray, test: np.ndarray, iou_thresh: float = 0.5) -> Matching:
    """Greedy one-to-one matching by score.

    Reference detections are visited by descending prob (ties: lower index first); each
    takes the still-unmatched test detection of highest IoU, if that IoU is >= ``iou_thresh``
    (ties: the higher-scored test detection). Inputs are (N, 5) [x1, y1, x2, y2, prob].
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 5)
    tst = np.asarray(test, dtype=np.float64).reshape(-1, 5)
    iou = box_iou(ref, tst)
    taken = np.zeros(len(tst), dtype=bool)
    test_rank = np.argsort(np.argsort(-tst[:, 4], kind="stable"), kind="stable")
    pairs: list[tuple[int, int, float]] = []
    for i in np.argsort(-ref[:, 4], kind="stable"):
        if not len(tst):
            break
        cand = np.where(taken, -1.0, iou[i])
        best = cand.max()
        if best < iou_thresh:
            continue
        j = min(np.flatnonzero(cand == best), key=lambda k: test_rank[k])
        taken[j] = True
        pairs.append((int(i), int(j), float(best)))
    ri = np.array([p[0] for p in pairs], dtype=np.int64)
    ti = np.array([p[1] for p in pairs], dtype=np.int64)
    return Matching(ri, ti, np.array([p[2] for p in pairs], dtype=np.float64),
                    np.setdiff1d(np.arange(len(ref)), ri), np.setdiff1d(np.arange(len(tst)), ti))


#: Two detections overlapping this much are one box (fp16 rounding measured >= 0.989): a pair
#: of them with different probs is a wrong score, never an NMS swap of two boxes.
SAME_BOX_IOU = 0.98


def nms_swapped(reference: np.ndarray, test: np.ndarray, matching: Matching, nms_thresh: float,
                tolerance: DetectionTolerance, pixel_offset: float = 0.0) -> np.ndarray:
    """Which matched pairs are two different boxes, each kept on one side only by an NMS flip.

    When two overlapping boxes ``h`` and ``x`` with near-tied probs swap their NMS order,
    ``x`` is kept on one side and ``h`` on the other, each suppressing the other's
    counterpart; ``h`` may also suppress a box ``l`` of lower prob that the side keeping
    ``x`` keeps. Where ``l`` overlaps ``h`` at IoU >= ``iou``, the matching pairs ``l`` with
    ``h``, two different boxes whose probs differ by more than the rounding.

    So a pair whose probs differ by more than ``score`` is taken for such a swap when its
    higher-prob box ``h`` has on the other side an *unmatched* detection ``x`` that overlaps
    it above ``nms_thresh - nms_iou_margin`` with a prob within ``margin`` of its own (the
    near-tie that :func:`nms_ambiguous` calls fragile), and ``h`` overlaps its partner ``l``
    above ``nms_thresh - nms_iou_margin`` too (so that it suppresses ``l`` on its side). A
    pair of the same box with a wrong prob is not excused unless such an unmatched near-tied
    rival lies next to it: as for unmatched detections, the detections alone cannot tell that
    case from a swap; the score maps' comparison catches a network whose scores are off.

    These overlaps are the NMS's: give the boxes as the NMS saw them (before clipping) and
    its ``pixel_offset`` (see :func:`~tinyfaces_trt.runtime.boxes.box_iou`).

    Returns:
        bool array over the matched pairs (``matching.ref_index``).
    """
    swapped = np.zeros(len(matching.ref_index), dtype=bool)
    overlap = nms_thresh - tolerance.nms_iou_margin
    for k, (i, j) in enumerate(zip(matching.ref_index, matching.test_index)):
        gap = test[j, 4] - reference[i, 4]
        if abs(gap) <= tolerance.score or matching.iou[k] >= SAME_BOX_IOU or \
                box_iou(reference[i][None], test[j][None], pixel_offset)[0, 0] <= overlap:
            continue
        high, others = (test[j], reference[matching.unmatched_ref]) if gap > 0 else \
            (reference[i], test[matching.unmatched_test])
        tied = np.abs(others[:, 4] - high[4]) <= tolerance.margin
        swapped[k] = bool(np.any(tied & (box_iou(high[None], others, pixel_offset)[0] > overlap)))
    return swapped


def _unpair(matching: Matching, drop: np.ndarray) -> Matching:
    """``matching`` without the pairs flagged in ``drop``; their detections become unmatched."""
    keep = ~drop
    return Matching(matching.ref_index[keep], matching.test_index[keep], matching.iou[keep],
                    np.union1d(matching.unmatched_ref, matching.ref_index[drop]),
                    np.union1d(matching.unmatched_test, matching.test_index[drop]))


def nms_ambiguous(reference: np.ndarray, test: np.ndarray, matching: Matching, prob_thresh: float,
                  nms_thresh: float, tolerance: DetectionTolerance,
                  pixel_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Which unmatched detections may differ legitimately through NMS.

    A detection present on one side only was either near the probability threshold, or
    suppressed on the other side by an overlapping box that it suppresses (or does not
    overlap enough) on its own side. Such a decision flips under small errors only when it is
    fragile: the two boxes' IoU is within ``nms_iou_margin`` of ``nms_thresh``, or their probs
    are within ``margin`` (an order swap). Flips cascade: the box kept instead suppresses
    another one, and so on.

    So the unmatched detections of both sides form a graph, with an edge between a reference
    and a test detection whose IoU exceeds ``nms_thresh - nms_iou_margin``. A connected group
    is *ambiguous* when it contains a fragile edge, a detection near the probability
    threshold, or a detection in a fragile relation to a matched detection of the other side.
    IoUs here are the NMS's: give the boxes as the NMS saw them (before clipping) and its
    ``pixel_offset`` (see :func:`~tinyfaces_trt.runtime.boxes.box_iou`); a link of IoU 0.314
    under the "+1" convention is only 0.283 in continuous areas.

    Returns:
        Two bool arrays over ``matching.unmatched_ref`` and ``matching.unmatched_test``.
    """
    ur, ut = matching.unmatched_ref, matching.unmatched_test
    a, b = reference[ur], test[ut]
    n = len(ur) + len(ut)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def fragile(iou: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
        return (iou > nms_thresh - tolerance.nms_iou_margin) & (
            (np.abs(iou - nms_thresh) <= tolerance.nms_iou_margin)
            | (np.abs(p[:, None] - q[None, :]) <= tolerance.margin))

    seed = np.zeros(n, dtype=bool)
    seed[:len(ur)] = np.abs(a[:, 4] - prob_thresh) <= tolerance.margin
    seed[len(ur):] = np.abs(b[:, 4] - prob_thresh) <= tolerance.margin
    if len(ur) and len(ut):
        iou = box_iou(a, b, pixel_offset)
        weak = fragile(iou, a[:, 4], b[:, 4])
        for i, j in zip(*np.nonzero(iou > nms_thresh - tolerance.nms_iou_margin)):
            root_i, root_j = find(int(i)), find(len(ur) + int(j))
            parent[root_i] = root_j
            seed[root_j] |= seed[root_i] | weak[i, j]
    for rows, offset, other, matched in ((a, 0, test, matching.test_index),
                                         (b, len(ur), reference, matching.ref_index)):
        if len(rows) and len(matched):
            near = box_iou(rows, other[matched], pixel_offset)
            hit = fragile(near, rows[:, 4], other[matched, 4]).any(axis=1)
            for k in np.flatnonzero(hit):
                seed[find(offset + int(k))] = True
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    ambiguous_root = np.zeros(n, dtype=bool)
    for i in range(n):
        ambiguous_root[roots[i]] |= seed[i]
    flags = ambiguous_root[roots] if n else np.zeros(0, dtype=bool)
    return flags[:len(ur)], flags[len(ur):]


@dataclass
class DetectionComparison:
    """Final detections of a backend against the reference's (see the module docstring).

    Attributes:
        n_ref, n_test, n_matched: detections on each side, and matched pairs.
        n_ref_firm, n_test_firm: detections farther than ``margin`` from the threshold.
        missing_firm, extra_firm: firm reference / test detections left unmatched and not
            NMS-ambiguous (each must be 0).
        nms_ambiguous: firm unmatched detections excused as NMS flips.
        nms_swapped: matched pairs of two different boxes undone as NMS flips
            (:func:`nms_swapped`); their detections count as unmatched (``n_matched`` leaves
            them out) and, firm ones, in ``nms_ambiguous``.
        max_score_diff: max ``|dprob|`` of the matched pairs (limit ``tolerance.score``).
        min_iou: the smallest IoU of a matched pair.
        tolerance: the limits applied.
        n_nonfinite_ref, n_nonfinite_test: detections holding NaN / inf (each must be 0);
            they take no part in the matching.
        missing_examples, extra_examples: up to :data:`EXAMPLES` of the missing / extra
            detections, highest prob first, each ``(x1, y1, x2, y2, prob, iou)`` with ``iou``
            its largest IoU with a detection of the other side (which boxes moved, and how far).
        failures: every failed criterion, with the measured value and its limit.
        passed: no criterion failed.
    """

    n_ref: int
    n_test: int
    n_matched: int
    n_ref_firm: int
    n_test_firm: int
    missing_firm: int
    extra_firm: int
    nms_ambiguous: int
    max_score_diff: float
    min_iou: float
    tolerance: DetectionTolerance
    n_nonfinite_ref: int = 0
    n_nonfinite_test: int = 0
    nms_swapped: int = 0
    missing_examples: tuple[tuple[float, ...], ...] = ()
    extra_examples: tuple[tuple[float, ...], ...] = ()
    failures: tuple[str, ...] = field(init=False)
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        tol = self.tolerance
        failures = []
        if self.n_nonfinite_test or self.n_nonfinite_ref:
            failures.append(f"non-finite values found: {self.n_nonfinite_test} test and "
                            f"{self.n_nonfinite_ref} reference detections (limit 0)")
        if self.missing_firm:
            failures.append(f"missing {self.missing_firm} > 0 (firm reference detections "
                            f"without a test match at IoU >= {tol.iou:g})")
        if self.extra_firm:
            failures.append(f"extra {self.extra_firm} > 0 (firm test detections without a "
                            f"reference match at IoU >= {tol.iou:g})")
        if not self.max_score_diff <= tol.score:
            failures.append(f"dprob {format_stat(self.max_score_diff, 1)} > {tol.score:g}")
        self.failures = tuple(failures)
        self.passed = not failures


#: Missing and extra detections :func:`compare_detections` lists, each side.
EXAMPLES = 5


def _examples(unmatched: np.ndarray, other: np.ndarray) -> tuple[tuple[float, ...], ...]:
    """The :data:`EXAMPLES` highest-prob of ``unmatched`` (N, 5) with their best IoU against
    ``other``."""
    top = unmatched[np.argsort(-unmatched[:, 4], kind="stable")[:EXAMPLES]]
    best = box_iou(top, other).max(axis=1) if len(other) else np.zeros(len(top))
    return tuple(tuple(round(float(v), 4) for v in (*row, b)) for row, b in zip(top, best))


def _rows(detections: np.ndarray) -> np.ndarray:
    """(N, 5) float64 [x1, y1, x2, y2, prob] rows."""
    return np.asarray(detections, dtype=np.float64).reshape(-1, 5)


def compare_detections(reference: np.ndarray, test: np.ndarray, prob_thresh: float,
                       nms_thresh: float, tolerance: DetectionTolerance, pixel_offset: float = 0.0,
                       nms_boxes: tuple[np.ndarray, np.ndarray] | None = None,
                       ) -> DetectionComparison:
    """Compares final (N, 5) detections of a backend with the reference's.

    Passes when every *firm* detection (prob farther than ``margin`` from ``prob_thresh``)
    on either side is matched or NMS-ambiguous (:func:`nms_ambiguous`), matched probs
    differ by at most ``score``, and no detection holds a non-finite value (those are
    counted and left out of the matching). A matched pair of two boxes swapped by an NMS
    flip (:func:`nms_swapped`) is undone first: its detections are unmatched, and
    NMS-ambiguous (the rival that makes it a swap seeds their group). ``nms_ambiguous``
    counts the firm unmatched detections that were excused.

    The NMS-flip checks measure overlaps as the NMS did: with ``pixel_offset``, its IoU
    convention (``config.box_pixel_offset``, 1.0 in the default config; the default 0.0,
    continuous areas, suits boxes compared without the pipeline's NMS), and on
    ``nms_boxes``, the same detections row for row as the NMS saw them, where the pipeline
    changed them afterwards: it clips its final boxes to the image (``config.clip_boxes``),
    which squeezes boxes that cross a border together or apart (IoUs of such kept pairs
    move by up to 0.7 on small images). The matching uses continuous areas on the final boxes:
    how closely the two sides agree, whatever the NMS.
    """
    ref, tst = _rows(reference), _rows(test)
    nms_ref, nms_tst = (ref, tst) if nms_boxes is None else (_rows(d) for d in nms_boxes)
    if (nms_ref.shape, nms_tst.shape) != (ref.shape, tst.shape):
        raise ValueError(f"nms_boxes must hold the detections row for row: shapes "
                         f"{nms_ref.shape}, {nms_tst.shape} for {ref.shape}, {tst.shape}")
    finite_ref = np.isfinite(ref).all(axis=1) & np.isfinite(nms_ref).all(axis=1)
    finite_tst = np.isfinite(tst).all(axis=1) & np.isfinite(nms_tst).all(axis=1)
    n_ref, n_tst = len(ref), len(tst)
    ref, nms_ref = ref[finite_ref], nms_ref[finite_ref]
    tst, nms_tst = tst[finite_tst], nms_tst[finite_tst]
    m = match_detections(ref, tst, tolerance.iou)
    swapped = nms_swapped(nms_ref, nms_tst, m, nms_thresh, tolerance, pixel_offset)
    m = _unpair(m, swapped)

    def firm(d: np.ndarray) -> np.ndarray:
        return np.abs(d[:, 4] - prob_thresh) > tolerance.margin

    ok_ref, ok_test = nms_ambiguous(nms_ref, nms_tst, m, prob_thresh, nms_thresh, tolerance,
                                    pixel_offset)
    firm_ref = firm(ref[m.unmatched_ref]) if len(m.unmatched_ref) else np.zeros(0, bool)
    firm_test = firm(tst[m.unmatched_test]) if len(m.unmatched_test) else np.zeros(0, bool)
    missing_rows = ref[m.unmatched_ref][firm_ref & ~ok_ref] if len(m.unmatched_ref) else ref[:0]
    extra_rows = tst[m.unmatched_test][firm_test & ~ok_test] if len(m.unmatched_test) else tst[:0]
    missing, extra = len(missing_rows), len(extra_rows)
    ambiguous = int(np.count_nonzero(firm_ref & ok_ref) + np.count_nonzero(firm_test & ok_test))
    diffs = np.abs(ref[m.ref_index, 4] - tst[m.test_index, 4])
    max_diff = float(diffs.max()) if len(diffs) else 0.0
    return DetectionComparison(
        n_ref=n_ref, n_test=n_tst, n_matched=len(m.ref_index),
        n_ref_firm=int(firm(ref).sum()), n_test_firm=int(firm(tst).sum()),
        missing_firm=missing, extra_firm=extra, nms_ambiguous=ambiguous,
        max_score_diff=max_diff, min_iou=float(m.iou.min()) if len(m.iou) else 1.0,
        tolerance=tolerance, n_nonfinite_ref=int(n_ref - len(ref)),
        n_nonfinite_test=int(n_tst - len(tst)), nms_swapped=int(swapped.sum()),
        missing_examples=_examples(missing_rows, tst), extra_examples=_examples(extra_rows, ref))


def format_stat(value: float, digits: int = 2) -> str:
    """A statistic in scientific notation ("nan" / "inf" as such)."""
    return str(value) if not math.isfinite(value) else f"{value:.{digits}e}"
