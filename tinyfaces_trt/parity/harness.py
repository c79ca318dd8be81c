"""The parity harness: run backends and the torch reference on the same inputs, compare.

For every image size a :class:`ReferenceCase` holds the synthetic image
(:func:`~.images.synthetic_image`), its pyramid, the preprocessed network inputs, the
reference's score maps and detections; :func:`compare_runner` runs one backend on those
inputs and compares maps and detections (:mod:`.compare`); :func:`run_parity` does it for
several backends and sizes, creating the runners from an export folder.

Each :class:`ParityResult` has one of three statuses: ``passed``, ``failed`` (with every
failed criterion in :attr:`ParityResult.failures`) or ``skipped`` (the backend could not be
created here; :attr:`ParityResult.skipped` says why). A skipped result is not a pass: the
caller decides whether a skip is acceptable (``tf-parity --allow-skip``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ImageError, TinyFacesError
from tinyfaces_trt.core.pyramid import PyramidLevel, no_level_reason, plan_pyramid
from tinyfaces_trt.core.runner import NetworkRunner, close_all
from tinyfaces_trt.parity.compare import (TOLERANCES, DetectionComparison, MapComparison, Tolerances,
                                         compare_detections, compare_maps)
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.runtime.postprocess import finish_boxes, postprocess_levels
from tinyfaces_trt.runtime.preprocess import HostPreprocessor

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"

#: backend name -> (runtime backend, fp16)
PARITY_BACKENDS: dict[str, tuple[str, bool]] = {
    "onnxruntime": ("onnxruntime", False),
    "onnxruntime-fp16": ("onnxruntime", True),
    "onnxruntime-cuda": ("onnxruntime-cuda", False),
    "onnxruntime-cuda-fp16": ("onnxruntime-cuda", True),
    "tensorrt": ("tensorrt", False),
    "tensorrt-fp16": ("tensorrt", True),
}


def precision_of(backend: str) -> str:
    """``"fp16"`` or ``"fp32"``: the precision of a :data:`PARITY_BACKENDS` entry's export."""
    return "fp16" if PARITY_BACKENDS[backend][1] else "fp32"


def runner_precision(runner: Any, backend: str) -> str:
    """The tolerances (a key of :data:`~.compare.TOLERANCES`) ``runner``, made for the
    :data:`PARITY_BACKENDS` entry ``backend``, is held to: the precision it runs at (an ONNX
    Runtime runner's ``precision``: ``"tf32"`` for an fp32 export on ONNX Runtime's TensorRT
    provider, TF32 convolutions being TensorRT's default), else the export's."""
    stated = getattr(runner, "precision", None)
    if isinstance(stated, str) and stated in TOLERANCES:
        return stated
    return precision_of(backend)


#: Why a :class:`ParityResult` has no detections compared.
DETECTIONS_NOT_COMPARED = "not compared (the score maps' shapes differ or hold non-finite values)"


@dataclass
class ParityResult:
    """One backend on one image size.

    Attributes:
        backend, precision, width, height: what was compared.
        levels: pyramid levels compared (0 when skipped).
        maps, detections: the comparisons (``detections`` is None when the maps' shapes
            differ or hold non-finite values: :data:`DETECTIONS_NOT_COMPARED`).
        skipped: why the backend could not be run ("" when it ran).
    """

    backend: str
    precision: str
    width: int
    height: int
    levels: int
    maps: MapComparison | None = None
    detections: DetectionComparison | None = None
    skipped: str = ""

    @property
    def failures(self) -> list[str]:
        """Every failed criterion, prefixed by "maps: " or "detections: " (empty if skipped)."""
        if self.skipped:
            return []
        found = ([f"maps: {f}" for f in self.maps.failures] if self.maps is not None
                 else ["maps: not compared"])
        found += ([f"detections: {f}" for f in self.detections.failures]
                  if self.detections is not None
                  else [f"detections: {DETECTIONS_NOT_COMPARED}"])
        return found

    @property
    def status(self) -> str:
        """:data:`PASSED`, :data:`FAILED` or :data:`SKIPPED`."""
        if self.skipped:
            return SKIPPED
        return FAILED if self.failures else PASSED

    @property
    def passed(self) -> bool:
        """The comparison ran and every criterion held (a skipped result has not passed)."""
        return self.status == PASSED


def detections_of(maps: Sequence[np.ndarray], levels: Sequence[PyramidLevel],
                  image_hw: tuple[int, int], config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's final detections of one image's score maps, and the same rows as the
    NMS kept them, before ``config.clip_boxes`` clipped them to the image (what the
    NMS-flip checks of :func:`~.compare.compare_detections` measure)."""
    kept = postprocess_levels(maps, levels, image_hw, replace(config, clip_boxes=False))
    return finish_boxes(kept.copy(), image_hw, config), kept


class ReferenceCase:
    """One synthetic test image with its pyramid, network inputs and reference score maps.

    Computed once per image size and shared by every backend compared on it.
    ``detections`` are the pipeline's final ones; ``nms_detections`` the same rows before
    clipping (:func:`detections_of`).
    """

    def __init__(self, reference: NetworkRunner, config: DetectorConfig, height: int, width: int,
                 seed: int = 0) -> None:
        self.height, self.width = height, width
        self.levels = plan_pyramid(height, width, config)
        if not self.levels:
            raise ImageError(no_level_reason(height, width, config) or "no pyramid level")
        prep = HostPreprocessor(config)
        image = synthetic_image(height, width, seed)
        self.inputs = [prep.prepare(image, level) for level in self.levels]
        self.maps = [np.asarray(reference.run(x)) for x in self.inputs]
        self.detections, self.nms_detections = detections_of(self.maps, self.levels,
                                                             (height, width), config)


def compare_runner(reference: NetworkRunner | ReferenceCase, runner: NetworkRunner,
                   config: DetectorConfig, height: int, width: int, precision: str,
                   backend: str = "", seed: int = 0,
                   tolerances: Tolerances | None = None) -> ParityResult:
    """Maps of every pyramid level, then final detections, of ``runner`` vs ``reference``
    (a runner, or a precomputed :class:`ReferenceCase` of that size) on
    :func:`~.images.synthetic_image` of that size."""
    tol = tolerances or TOLERANCES[precision]
    case = reference if isinstance(reference, ReferenceCase) else \
        ReferenceCase(reference, config, height, width, seed)
    test_maps = [np.asarray(runner.run(x)) for x in case.inputs]
    maps = None
    for r, t in zip(case.maps, test_maps):
        c = compare_maps(r, t, tol.maps)
        maps = c if maps is None else maps.merge(c)
    result = ParityResult(backend, precision, width, height, len(case.levels), maps=maps)
    finite = maps is not None and not (maps.n_nonfinite_test or maps.n_nonfinite_ref)
    if maps is not None and maps.shape_ok and finite:  # NaN maps already failed; no decode
        test_dets, test_nms = detections_of(test_maps, case.levels, (height, width), config)
        result.detections = compare_detections(
            case.detections, test_dets, config.prob_thresh, config.nms_thresh, tol.detections,
            config.box_pixel_offset, (case.nms_detections, test_nms))
    return result


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
        tolerances: per precision ("fp32", "fp16", "tf32"); a precision not in it (all of
            them, with None) takes its :data:`~.compare.TOLERANCES` entry. A runner is held to
            the precision it runs at (:func:`runner_precision`).

    A backend that cannot be created here (missing dependency, file absent from the export
    folder) gives one :data:`SKIPPED` result per size saying why.
    """
    from tinyfaces_trt.export.torch_runner import TorchRunner
    from tinyfaces_trt.runtime.backends import create_runner

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
    try:
        for w, h in sizes:
            case = ReferenceCase(reference, config, h, w, seed) if runners else None
            for name, runner in runners.items():
                precision = runner_precision(runner, name)
                found[name, w, h] = compare_runner(
                    case, runner, config, h, w, precision, name, seed,
                    (tolerances or {}).get(precision, TOLERANCES[precision]))
    finally:
        close_all(runners.values())
    results = []
    for name in backends:
        for w, h in sizes:
            results.append(found[name, w, h] if name in runners else
                           ParityResult(name, precision_of(name), w, h, 0, skipped=skipped[name]))
    return results
