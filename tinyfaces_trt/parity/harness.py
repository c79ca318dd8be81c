"""Numerical parity of the deployed backends against the torch reference.

Two levels are compared, for every backend and image size:

raw score maps
    Every pyramid level's (1, 125, h', w') map, on the same preprocessed input, against
    :class:`~.torch_runner.TorchRunner` (fp32, CPU). An element passes when
    ``|test - ref| <= atol + rtol * |ref|`` (numpy ``allclose``); the report also gives the max
    absolute error and the max error relative to the map's range (``max_abs / max|ref|``).

final detections
    The whole pipeline (decode + NMS) on each set of maps, matched greedily by score at
    IoU >= ``iou`` (:func:`match_detections`). A reduced-precision network legitimately
    moves a logit across the threshold, or flips an NMS decision between two boxes whose
    IoU is at the NMS threshold or whose scores are tied; so (:func:`compare_detections`)
    every detection whose prob is more than ``margin`` away from ``prob_thresh`` must be
    matched unless it is *NMS-ambiguous*, and matched probs must agree within ``score``.

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
    threshold margin 0.05 prob; NMS flips between near-tied boxes happen (a few per image on
    untrained weights, whose scores are flat) and are reported as NMS-ambiguous.

CLI: ``tf-parity`` (``python -m tinyfaces_trt.parity.harness``), see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.runner import NetworkRunner
from tinyfaces_trt.runtime.postprocess import postprocess_levels
from tinyfaces_trt.runtime.preprocess import HostPreprocessor
from tinyfaces_trt.core.pyramid import plan_pyramid

from tinyfaces_trt.core.cli import parse_image_sizes, seed_argument, stderr_line

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


# ---------------------------------------------------------------------------------------------
# Raw maps
# ---------------------------------------------------------------------------------------------

@dataclass
class MapComparison:
    """Error statistics of one (or several, merged) score maps against the reference.

    Attributes:
        shape_ok: shapes were equal (otherwise the numbers are NaN and ``passed`` False).
        max_abs: max ``|test - ref|``.
        max_rel: ``max_abs / max|ref|``, the error relative to the map's range.
        mean_abs: mean ``|test - ref|``.
        ref_scale: ``max|ref|``.
        n_elements, n_failed: elements compared / outside ``atol + rtol*|ref|``.
        passed: shapes equal, all finite, ``n_failed == 0`` and ``mean_abs <= mean``.
        detail: why it failed, when not by elements alone (shape, non-finite values, mean).
    """

    shape_ok: bool
    max_abs: float
    max_rel: float
    mean_abs: float
    ref_scale: float
    n_elements: int
    n_failed: int
    passed: bool
    detail: str = ""

    def merge(self, other: "MapComparison") -> "MapComparison":
        """Statistics over both comparisons (e.g. all pyramid levels of an image)."""
        n = self.n_elements + other.n_elements
        ref_scale = max(self.ref_scale, other.ref_scale)
        max_abs = max(self.max_abs, other.max_abs)
        mean = (self.mean_abs * self.n_elements + other.mean_abs * other.n_elements) / max(n, 1)
        return MapComparison(
            shape_ok=self.shape_ok and other.shape_ok, max_abs=max_abs,
            max_rel=max_abs / ref_scale if ref_scale > 0 else max_abs, mean_abs=mean,
            ref_scale=ref_scale, n_elements=n, n_failed=self.n_failed + other.n_failed,
            passed=self.passed and other.passed,
            detail="; ".join(d for d in (self.detail, other.detail) if d))


def compare_maps(reference: np.ndarray, test: np.ndarray,
                 tolerance: MapTolerance = TOLERANCES["fp32"].maps) -> MapComparison:
    """Compares a backend's score map to the reference's (any equal shapes)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    if ref.shape != out.shape:
        nan = float("nan")
        return MapComparison(False, nan, nan, nan, nan, int(ref.size), int(ref.size), False,
                             f"shape {out.shape} != reference {ref.shape}")
    if ref.size == 0:
        return MapComparison(True, 0.0, 0.0, 0.0, 0.0, 0, 0, True)
    diff = np.abs(out - ref)
    finite = np.isfinite(diff)
    n_failed = int(np.count_nonzero(~(diff <= tolerance.atol + tolerance.rtol * np.abs(ref))))
    max_abs = float(diff.max()) if finite.all() else float("inf")
    mean_abs = float(diff.mean()) if finite.all() else float("inf")
    ref_scale = float(np.abs(ref).max())
    return MapComparison(
        shape_ok=True, max_abs=max_abs,
        max_rel=max_abs / ref_scale if ref_scale > 0 else max_abs,
        mean_abs=mean_abs,
        ref_scale=ref_scale, n_elements=int(ref.size), n_failed=n_failed,
        passed=n_failed == 0 and mean_abs <= tolerance.mean,
        detail=("" if finite.all() else f"{int((~finite).sum())} non-finite values")
        or ("" if mean_abs <= tolerance.mean else f"mean abs error {mean_abs:.3g} > {tolerance.mean:g}"))


# ---------------------------------------------------------------------------------------------
# Detections
# ---------------------------------------------------------------------------------------------

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU matrix of [x1, y1, x2, y2] boxes (continuous areas, no +1)."""
    a = np.asarray(a, dtype=np.float64)[:, :4].reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64)[:, :4].reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


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


def nms_ambiguous(reference: np.ndarray, test: np.ndarray, matching: Matching, prob_thresh: float,
                  nms_thresh: float, tolerance: DetectionTolerance) -> tuple[np.ndarray, np.ndarray]:
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
        iou = box_iou(a, b)
        weak = fragile(iou, a[:, 4], b[:, 4])
        for i, j in zip(*np.nonzero(iou > nms_thresh - tolerance.nms_iou_margin)):
            root_i, root_j = find(int(i)), find(len(ur) + int(j))
            parent[root_i] = root_j
            seed[root_j] |= seed[root_i] | weak[i, j]
    for rows, offset, other, matched in ((a, 0, test, matching.test_index),
                                         (b, len(ur), reference, matching.ref_index)):
        if len(rows) and len(matched):
            hit = fragile(box_iou(rows, other[matched]), rows[:, 4], other[matched, 4]).any(axis=1)
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
    """Final detections of a backend against the reference's (see the module docstring)."""

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
    passed: bool


def compare_detections(reference: np.ndarray, test: np.ndarray, prob_thresh: float,
                       nms_thresh: float, tolerance: DetectionTolerance) -> DetectionComparison:
    """Compares final (N, 5) detections of a backend with the reference's.

    Passes when every *firm* detection (prob farther than ``margin`` from ``prob_thresh``)
    on either side is matched or NMS-ambiguous (:func:`nms_ambiguous`), and matched probs
    differ by at most ``score``. ``nms_ambiguous`` counts the firm unmatched detections that
    were excused.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(-1, 5)
    tst = np.asarray(test, dtype=np.float64).reshape(-1, 5)
    m = match_detections(ref, tst, tolerance.iou)

    def firm(d: np.ndarray) -> np.ndarray:
        return np.abs(d[:, 4] - prob_thresh) > tolerance.margin

    ok_ref, ok_test = nms_ambiguous(ref, tst, m, prob_thresh, nms_thresh, tolerance)
    firm_ref = firm(ref[m.unmatched_ref]) if len(m.unmatched_ref) else np.zeros(0, bool)
    firm_test = firm(tst[m.unmatched_test]) if len(m.unmatched_test) else np.zeros(0, bool)
    missing = int(np.count_nonzero(firm_ref & ~ok_ref))
    extra = int(np.count_nonzero(firm_test & ~ok_test))
    ambiguous = int(np.count_nonzero(firm_ref & ok_ref) + np.count_nonzero(firm_test & ok_test))
    diffs = np.abs(ref[m.ref_index, 4] - tst[m.test_index, 4])
    max_diff = float(diffs.max()) if len(diffs) else 0.0
    return DetectionComparison(
        n_ref=len(ref), n_test=len(tst), n_matched=len(m.ref_index),
        n_ref_firm=int(firm(ref).sum()), n_test_firm=int(firm(tst).sum()),
        missing_firm=missing, extra_firm=extra, nms_ambiguous=ambiguous,
        max_score_diff=max_diff, min_iou=float(m.iou.min()) if len(m.iou) else 1.0,
        passed=missing == 0 and extra == 0 and max_diff <= tolerance.score)


# ---------------------------------------------------------------------------------------------
# Running the comparison
# ---------------------------------------------------------------------------------------------

def synthetic_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A deterministic (H, W, 3) uint8 test image: smooth colour blobs plus mild noise."""
    rng = np.random.default_rng([seed, height, width])
    gy = np.linspace(0.0, 1.0, height)[:, None, None]
    gx = np.linspace(0.0, 1.0, width)[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, 1, 3))
    freq = rng.uniform(2, 6, size=(2, 1, 1, 3))
    smooth = 127.5 + 100.0 * np.sin(freq[0] * np.pi * gy + phase) * np.cos(freq[1] * np.pi * gx)
    noisy = smooth + rng.normal(0.0, 20.0, size=(height, width, 3))
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@dataclass
class ParityResult:
    """One backend on one image size."""

    backend: str
    precision: str
    width: int
    height: int
    levels: int
    maps: MapComparison | None = None
    detections: DetectionComparison | None = None
    skipped: str = ""

    @property
    def passed(self) -> bool:
        return bool(self.skipped) or (self.maps is not None and self.maps.passed
                                      and self.detections is not None and self.detections.passed)


class ReferenceCase:
    """One synthetic test image with its pyramid, network inputs and reference score maps.

    Computed once per image size and shared by every backend compared on it.
    """

    def __init__(self, reference: NetworkRunner, config: DetectorConfig, height: int, width: int,
                 seed: int = 0) -> None:
        self.height, self.width = height, width
        self.levels = plan_pyramid(height, width, config)
        prep = HostPreprocessor(config)
        image = synthetic_image(height, width, seed)
        self.inputs = [prep.prepare(image, level) for level in self.levels]
        self.maps = [np.asarray(reference.run(x)) for x in self.inputs]
        self.detections = postprocess_levels(self.maps, self.levels, (height, width), config)


def compare_runner(reference: NetworkRunner | ReferenceCase, runner: NetworkRunner,
                   config: DetectorConfig, height: int, width: int, precision: str,
                   backend: str = "", seed: int = 0,
                   tolerances: Tolerances | None = None) -> ParityResult:
    """Maps of every pyramid level, then final detections, of ``runner`` vs ``reference``
    (a runner, or a precomputed :class:`ReferenceCase` of that size) on
    :func:`synthetic_image` of that size."""
    tol = tolerances or TOLERANCES[precision]
    case = reference if isinstance(reference, ReferenceCase) else \
        ReferenceCase(reference, config, height, width, seed)
    test_maps = [np.asarray(runner.run(x)) for x in case.inputs]
    maps = None
    for r, t in zip(case.maps, test_maps):
        c = compare_maps(r, t, tol.maps)
        maps = c if maps is None else maps.merge(c)
    result = ParityResult(backend, precision, width, height, len(case.levels), maps=maps)
    if maps is not None and maps.shape_ok:
        test_dets = postprocess_levels(test_maps, case.levels, (height, width), config)
        result.detections = compare_detections(case.detections, test_dets, config.prob_thresh,
                                               config.nms_thresh, tol.detections)
    return result


#: backend name -> (runtime backend, fp16)
PARITY_BACKENDS: dict[str, tuple[str, bool]] = {
    "onnxruntime": ("onnxruntime", False),
    "onnxruntime-fp16": ("onnxruntime", True),
    "tensorrt": ("tensorrt", False),
    "tensorrt-fp16": ("tensorrt", True),
}


def run_parity(model: Any, config: DetectorConfig, folder: Any, backends: Sequence[str],
               sizes: Sequence[tuple[int, int]], seed: int = 0,
               tolerances: dict[str, Tolerances] | None = None) -> list[ParityResult]:
    """Every backend in ``backends`` (keys of :data:`PARITY_BACKENDS`) on every (W, H) size.

    Args:
        model: the torch reference network.
        config: detector config used for the pyramid, decode and NMS of both sides.
        folder: the export folder, or a mapping backend name -> export folder.
        backends, sizes: what to compare; sizes are (width, height).
        seed: seed of the synthetic images.
        tolerances: per precision ("fp32", "fp16"); default :data:`TOLERANCES`.

    A backend that cannot be created here (missing dependency, file absent from the export
    folder) gives one ``skipped`` result per size saying why.
    """
    from tinyfaces_trt.runtime.backends import create_runner

    from tinyfaces_trt.export.torch_runner import TorchRunner

    reference = TorchRunner(model)
    runners: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in backends:
        kind, fp16 = PARITY_BACKENDS[name]
        try:
            chosen = folder[name] if isinstance(folder, Mapping) else folder
            runners[name] = create_runner(kind, chosen, fp16=fp16)
        except TinyFacesError as exc:
            skipped[name] = str(exc)
    found: dict[tuple[str, int, int], ParityResult] = {}
    for w, h in sizes:
        case = ReferenceCase(reference, config, h, w, seed) if runners else None
        for name, runner in runners.items():
            precision = "fp16" if PARITY_BACKENDS[name][1] else "fp32"
            found[name, w, h] = compare_runner(case, runner, config, h, w, precision, name, seed,
                                               (tolerances or TOLERANCES)[precision])
    results = []
    for name in backends:
        precision = "fp16" if PARITY_BACKENDS[name][1] else "fp32"
        for w, h in sizes:
            results.append(found[name, w, h] if name in runners else
                           ParityResult(name, precision, w, h, 0, skipped=skipped[name]))
    return results


def _fmt(v: float, digits: int = 2) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.{digits}e}"


def markdown_table(results: Sequence[ParityResult]) -> str:
    """A small Markdown table of the results."""
    head = ("| backend | image WxH | levels | max abs | max rel | maps | dets ref/test | matched "
            "| max Δprob | dets |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    for r in results:
        size = f"{r.width}x{r.height}"
        if r.skipped:
            rows.append(f"| {r.backend} | {size} | - | - | - | skipped | - | - | - | "
                        f"{r.skipped.splitlines()[0][:80]} |")
            continue
        m, d = r.maps, r.detections
        maps_ok = "ok" if m and m.passed else \
            f"FAIL ({m.n_failed} el.{'; ' + m.detail if m.detail else ''})" if m else "FAIL"
        if d is None:
            dets, matched, diff, dets_ok = "-", "-", "-", "FAIL (no maps)"
        else:
            dets, matched, diff = f"{d.n_ref}/{d.n_test}", str(d.n_matched), _fmt(d.max_score_diff)
            dets_ok = "ok" if d.passed else f"FAIL ({d.missing_firm} missing, {d.extra_firm} extra)"
            if d.nms_ambiguous:
                dets_ok += f" ({d.nms_ambiguous} NMS-ambiguous)"
        rows.append(f"| {r.backend} | {size} | {r.levels} | {_fmt(m.max_abs) if m else '-'} | "
                    f"{_fmt(m.max_rel) if m else '-'} | {maps_ok} | {dets} | {matched} | {diff} | "
                    f"{dets_ok} |")
    return "\n".join(rows)


def results_to_json(results: Sequence[ParityResult]) -> list[dict[str, Any]]:
    """JSON-ready list of result dicts (non-finite floats as strings)."""
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return [clean({**asdict(r), "passed": r.passed}) for r in results]


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

DEFAULT_SIZES = "33x47,64x64,131x97,160x120"


def parse_backends(text: str) -> list[str]:
    """Comma-separated keys of :data:`PARITY_BACKENDS`."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in names if b not in PARITY_BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown backend(s) {unknown or names}; choose from {', '.join(PARITY_BACKENDS)}")
    return list(dict.fromkeys(names))


def default_backends() -> list[str]:
    """The ONNX Runtime backends, plus TensorRT ones when TensorRT and a GPU are usable."""
    from tinyfaces_trt.runtime.backends import available_backends

    names = ["onnxruntime", "onnxruntime-fp16"]
    if "tensorrt" in available_backends():
        names += ["tensorrt", "tensorrt-fp16"]
    return names


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its ``--help`` documents options, tolerances and exit status)."""
    tol = "\n".join(
        f"  {k}: maps |d| <= {v.maps.atol:g} + {v.maps.rtol:g}*|ref| and mean |d| <= {v.maps.mean:g};\n"
        f"        detections matched at IoU >= {v.detections.iou:g}, |dprob| <= {v.detections.score:g},"
        f" may differ within {v.detections.margin:g} of the threshold"
        for k, v in TOLERANCES.items())
    parser = argparse.ArgumentParser(
        prog="tf-parity",
        description=textwrap.fill(
            "Compare the deployed backends (ONNX Runtime fp32/fp16, TensorRT fp32/fp16) with the "
            "torch reference: the raw 125-channel score maps of every pyramid level, and the "
            "final detections, on synthetic images of several sizes. Prints a Markdown table; "
            "exits 1 when a tolerance fails.", 88),
        epilog=f"""\
tolerances:
{tol}

exit status: 0 all within tolerance, 1 a tolerance failed, 2 bad arguments or a setup
error (missing file or dependency, export folder of other weights).

example:
  tf-parity --untrained --depth 50 --sizes 33x47,64x64 --json parity.json
  tf-parity --weights checkpoint.pth --model export/ --backends tensorrt,tensorrt-fp16""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", metavar="W", help="checkpoint (.pth or MatConvNet .mat) to test")
    src.add_argument("--untrained", action="store_true",
                     help="test the seeded random-weight network instead of a checkpoint")
    parser.add_argument("--depth", type=int, default=101, choices=(50, 101),
                        help="ResNet depth of the --untrained network (default: 101)")
    parser.add_argument("--seed", type=seed_argument, default=0,
                        help="seed of the --untrained network (default: 0)")
    parser.add_argument("--model", metavar="EXPORT_DIR",
                        help="export folder to test (must come from the same weights); default: "
                             "export into a temporary folder first")
    parser.add_argument("--sizes", type=parse_image_sizes, default=parse_image_sizes(DEFAULT_SIZES),
                        help=f"image sizes WxH, comma separated (default: {DEFAULT_SIZES})")
    parser.add_argument("--backends", type=parse_backends, default=None,
                        help="comma separated, from: " + ", ".join(PARITY_BACKENDS)
                             + " (default: onnxruntime,onnxruntime-fp16, plus tensorrt,"
                               "tensorrt-fp16 when TensorRT and a GPU are usable)")
    parser.add_argument("--json", metavar="OUT", help="also write the full results as JSON")
    return parser


def _check_folder_source(folder: Any, args: argparse.Namespace) -> None:
    """Refuses an export folder made from other weights than the reference's."""
    manifest = folder.manifest
    if args.weights:
        from tinyfaces_trt.export_cache import file_sha256

        recorded = (manifest.get("weights") or {}).get("sha256")
        if recorded != file_sha256(args.weights):
            made_from = ("the UNTRAINED seeded network (test it with --untrained)"
                         if folder.untrained else f"weights with sha256 {recorded}")
            raise TinyFacesError(f"export folder {folder.path} was not made from {args.weights} "
                                 f"but from {made_from}; compare like with like")
    else:
        depth = (manifest.get("model") or {}).get("depth")
        if not folder.untrained or depth not in (None, args.depth):
            raise TinyFacesError(f"export folder {folder.path} does not hold the untrained "
                                 f"ResNet-{args.depth} network (untrained={folder.untrained}, "
                                 f"depth={depth})")


def _export_folders(model: Any, config: DetectorConfig, backends: Sequence[str], work: Path,
                    weights: str | None) -> dict[str, Any]:
    """Exports what ``backends`` need into ``work``; backend -> export folder."""
    from tinyfaces_trt.core.manifest import load_export_folder

    from tinyfaces_trt.export.export_pipeline import export_model
    from tinyfaces_trt.export.trt_build import tensorrt_version

    trt = tensorrt_version() is not None
    folders: dict[str, Any] = {}
    for fp16 in (False, True):
        names = [b for b in backends if PARITY_BACKENDS[b][1] == fp16]
        if not names:
            continue
        engine = trt and any(PARITY_BACKENDS[b][0] == "tensorrt" for b in names)
        out = work / ("fp16" if fp16 else "fp32")
        export_model(model, config, out, fp16=fp16, engine=engine, weights_path=weights,
                     untrained=weights is None, verify=False, log=lambda line: stderr_line(f"tf-parity: {line}"))
        folder = load_export_folder(out)
        folders.update({b: folder for b in names})
    return folders


def main(argv: Sequence[str] | None = None) -> int:
    """``tf-parity`` entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    backends = args.backends or default_backends()
    try:
        from tinyfaces_trt.core.manifest import load_export_folder

        from tinyfaces_trt.export.weights import load_model

        # --depth and --seed describe the --untrained network only
        model, config = load_model(args.weights, depth=None if args.weights else args.depth,
                                   seed=args.seed)
        with tempfile.TemporaryDirectory(prefix="tf-parity-") as work:
            if args.model:
                folder = load_export_folder(args.model)
                _check_folder_source(folder, args)
                config = folder.config
                folders: dict[str, Any] = {b: folder for b in backends}
            else:
                folders = _export_folders(model, config, backends, Path(work), args.weights)
            start = time.perf_counter()
            results = run_parity(model, config, folders, backends,
                                 args.sizes)
            elapsed = time.perf_counter() - start
    except TinyFacesError as exc:
        print(f"tf-parity: error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    failed = [r for r in results if not r.passed]
    skipped = [r for r in results if r.skipped]
    print(f"\n{len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed, "
          f"{len(skipped)} skipped in {elapsed:.1f} s "
          f"({'untrained seeded network' if args.untrained else args.weights})")
    if args.json:
        report = {"passed": not failed, "reference": "torch fp32 CPU",
                  "weights": None if args.untrained else str(args.weights),
                  "untrained": bool(args.untrained),
                  "sizes_wh": [list(s) for s in args.sizes], "backends": backends,
                  "tolerances": {k: asdict(v) for k, v in TOLERANCES.items()},
                  "results": results_to_json(results)}
        try:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            print(f"tf-parity: error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
