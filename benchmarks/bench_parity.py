"""Parity of each benchmarked backend's detections with the CPU reference.

The reference is the runtime pipeline with the torch network in fp32 on the CPU (numpy
resize, decode and NMS): ``create_detector("torch")`` for the benchmark's model. It runs the
very image each backend was timed on, once per image size, untimed. The comparison is the
parity package's (IoU-matched detections, counts, probability differences, NMS-tie
excuses) with its tolerances for the backend's precision; this module only adapts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import DetectorConfig

REFERENCE = "torch fp32 on the CPU, runtime pipeline (numpy resize, decode, NMS)"


def _compare_module() -> Any:
    """The parity package's comparison module (``compare`` since its split, else ``harness``)."""
    try:
        from tinyfaces_trt.parity import compare
    except ImportError:
        from tinyfaces_trt.parity import harness as compare
    return compare


def reference_detections(model: Any, config: DetectorConfig, image: np.ndarray) -> np.ndarray:
    """The CPU reference's (N, 5) detections of ``image``."""
    from tinyfaces_trt.export.torch_runner import TorchRunner
    from tinyfaces_trt.runtime.pipeline import Detector

    with Detector(TorchRunner(model, device="cpu"), config) as detector:
        return detector.detect(image)


def compare_with_reference(reference: np.ndarray, boxes: np.ndarray, config: DetectorConfig,
                           precision: str) -> dict[str, Any]:
    """One backend's detections against the reference's, as a JSON-ready dict.

    Keys: ``passed``, ``precision``, ``reference`` / ``test`` (detection counts),
    ``matched``, ``missing_firm`` / ``extra_firm`` (unexplained differences, each must be 0),
    ``nms_ambiguous`` (excused NMS flips), ``max_score_diff``, ``min_iou``, ``tolerance``,
    ``failures`` (why it failed, when the parity package says), ``missing_examples`` /
    ``extra_examples`` (the first few missing / extra detections with their best IoU on the
    other side, where the parity package lists them).
    """
    compare = _compare_module()
    tolerance = compare.TOLERANCES[precision].detections
    c = compare.compare_detections(reference, boxes, config.prob_thresh, config.nms_thresh,
                                   tolerance, config.box_pixel_offset)
    return {
        "passed": bool(c.passed), "precision": precision,
        "reference": int(c.n_ref), "test": int(c.n_test), "matched": int(c.n_matched),
        "missing_firm": int(c.missing_firm), "extra_firm": int(c.extra_firm),
        "nms_ambiguous": int(c.nms_ambiguous), "max_score_diff": float(c.max_score_diff),
        "min_iou": float(c.min_iou),
        "tolerance": {"iou": tolerance.iou, "score": tolerance.score, "margin": tolerance.margin},
        "failures": [str(f) for f in getattr(c, "failures", ())],
        "missing_examples": [list(e) for e in getattr(c, "missing_examples", ())],
        "extra_examples": [list(e) for e in getattr(c, "extra_examples", ())],
    }


def comparison_failure(c: dict[str, Any]) -> str:
    """Why a failed :func:`compare_with_reference` failed: the parity package's own reasons,
    else the unexplained missing and extra counts."""
    return ("; ".join(c.get("failures") or ())
            or f"{c['missing_firm']} missing, {c['extra_firm']} extra of {c['reference']}")


def examples_text(c: dict[str, Any]) -> str:
    """The missing / extra detections a :func:`compare_with_reference` row lists, one line
    ("" where none): size, place, prob and best IoU on the other side of each."""
    parts = []
    for key, what in (("missing_examples", "missing"), ("extra_examples", "extra")):
        boxes = [f"{x2 - x1:.0f}x{y2 - y1:.0f} px at ({x1:.0f}, {y1:.0f}) prob {p:.2f} "
                 f"(best IoU {iou:.2f})" for x1, y1, x2, y2, p, iou in c.get(key) or ()]
        if boxes:
            parts.append(f"{what}: {'; '.join(boxes)}")
    return " | ".join(parts)


def examples_section(rows: Iterable[dict[str, Any]], label: Callable[[dict[str, Any]], str]
                     ) -> list[str]:
    """Markdown lines listing, per row with any (named by ``label``), its missing and extra
    detections (:func:`examples_text`); none where no row has them."""
    listed = [f"- {label(r)}: {text}" for r in rows if (text := examples_text(r))]
    return ["", "Missing and extra detections (the first few, highest prob first):", "",
            *listed] if listed else []
