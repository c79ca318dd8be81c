"""Network backends and the one-call detector factory.

    detector = create_detector("onnxruntime", model_dir="export/")        # an export folder
    detector = create_detector("onnxruntime", weights="checkpoint.pth")   # exported once, cached
    detector = create_detector("torch", weights="checkpoint.pth")         # the torch reference
    boxes = detector.detect(rgb_uint8_image)

Backends: ``"onnxruntime"`` (default, CPU unless ``providers`` asks for more), ``"tensorrt"``
(an engine from the export folder, GPU) and ``"torch"`` (the reference model; needs the
``export`` extra). Optional dependencies are imported only when their backend is asked for;
a missing one is a :class:`BackendUnavailableError`.

``weights=`` with an ONNX/TensorRT backend goes through the export cache
(:mod:`.export_cache`: exported once into ``$TINYFACES_CACHE/<key>/``, then reused). With
neither ``model_dir`` nor ``weights`` the seeded, UNTRAINED default network is used (exported
to the cache the same way): its detections are meaningless, only good for plumbing tests.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

from ..config import DetectorConfig
from ..errors import BackendUnavailableError, TinyFacesError
from ..export_folder import ExportFolder, load_export_folder
from ..pipeline import Detector, NetworkRunner
from .export_cache import Progress, cached_export, reference_model

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "torch")


def available_backends() -> list[str]:
    """Backends whose dependencies are installed here (tensorrt also needs a visible GPU).

    Never raises and imports nothing heavy except, for tensorrt, the CUDA device query.
    """
    found = []
    if importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnxruntime")
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            from .cuda_device import gpu_available

            if gpu_available():
                found.append("tensorrt")
        except Exception as exc:  # any failure means "not available", never an error here
            log.debug("tensorrt not available: %s", exc)
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    return found


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise TinyFacesError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")


def create_runner(backend: str, folder: ExportFolder, *, fp16: bool = False,
                  providers: str | Sequence[str] | None = None,
                  threads: int | None = None) -> NetworkRunner:
    """The network runner of ``backend`` for an export folder.

    Args:
        backend: ``"onnxruntime"`` or ``"tensorrt"`` (``"torch"`` runs a checkpoint, not an
            export folder: use :func:`create_detector`).
        folder: from :func:`~tinyfaces_trt.runtime.export_folder.load_export_folder`.
        fp16: use the folder's fp16 ONNX model / engine.
        providers, threads: ONNX Runtime options (see :class:`OnnxRuntimeRunner`).

    Raises:
        ManifestError: the folder lacks the requested file, or it disagrees with the manifest.
        BackendUnavailableError: the backend's dependency is missing.
    """
    _check_backend(backend)
    if backend == "onnxruntime":
        from .onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(folder.onnx_path(fp16), providers=providers, threads=threads)
    if backend == "tensorrt":
        from .tensorrt_runner import TensorRTRunner, import_tensorrt

        import_tensorrt()  # a missing dependency is the first thing to report
        return TensorRTRunner(folder.engine_path(fp16), input_name=folder.input_name,
                              output_name=folder.output_name, manifest_profile=folder.profile)
    raise TinyFacesError("the torch backend runs a checkpoint directly, not an export folder; "
                         "use create_detector('torch', weights=...)")


def apply_overrides(config: DetectorConfig, overrides: Mapping[str, Any] | None) -> DetectorConfig:
    """``config`` with some fields replaced (None values are ignored); unknown names are an error."""
    if not overrides:
        return config
    known = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TinyFacesError(f"unknown detector config field(s) {unknown}; known: {sorted(known)}")
    return config.with_(**{k: v for k, v in overrides.items() if v is not None})


def create_detector(backend: str = "onnxruntime", model_dir: str | os.PathLike[str] | None = None,
                    weights: str | os.PathLike[str] | None = None,
                    config_overrides: Mapping[str, Any] | None = None, *,
                    fp16: bool = False, providers: str | Sequence[str] | None = None,
                    threads: int | None = None, depth: int | None = None,
                    variant: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                    progress: Progress | None = None, gpu_stages: bool | None = None) -> Detector:
    """A ready :class:`Detector` for one backend.

    Args:
        backend: ``"onnxruntime"`` (default), ``"tensorrt"`` or ``"torch"``.
        model_dir: an export folder (``tf-export`` output); onnxruntime / tensorrt only.
        weights: a checkpoint; torch runs it directly, the others export it once into the
            cache. With neither ``model_dir`` nor ``weights``: the UNTRAINED seeded network.
        config_overrides: :class:`DetectorConfig` fields to replace, e.g.
            ``{"prob_thresh": 0.8}`` (None values are ignored).
        fp16: fp16 ONNX model / engine (exported into the cache when needed).
        providers, threads: ONNX Runtime options.
        depth, variant: passed to the checkpoint loader (None: detect from the file).
        cache_dir: export cache root (default ``$TINYFACES_CACHE`` or ``~/.cache/tinyfaces_trt``).
        progress: called with a line of text before and after a long step (an export).
        gpu_stages: tensorrt only: resize/normalise and decode/NMS on the GPU with the CUDA
            kernels, sharing the runner's stream (device-resident levels, no score-map
            download). None: when the kernel library loads, else the host stages (logged);
            True: required; False: host stages.

    Raises:
        TinyFacesError (a subclass of it) for every user-side problem: bad or missing files,
        a missing optional dependency, conflicting arguments.
    """
    _check_backend(backend)
    if model_dir is not None and weights is not None:
        raise TinyFacesError("give either an export folder (model_dir) or a checkpoint "
                             "(weights), not both")
    if backend == "torch":
        if model_dir is not None:
            raise TinyFacesError("the torch backend runs a checkpoint (weights=...), not an "
                                 "export folder; use onnxruntime or tensorrt with model_dir")
        runner, config = _torch_reference(weights, depth, variant)
        return Detector(runner, apply_overrides(config, config_overrides))
    if backend == "tensorrt":
        from .tensorrt_runner import import_tensorrt

        import_tensorrt()  # before any export into the cache
    if model_dir is not None:
        folder = load_export_folder(model_dir)
    else:
        folder = cached_export(weights, fp16=fp16, engine=backend == "tensorrt",
                               depth=depth, variant=variant, cache_dir=cache_dir,
                               progress=progress)
    config = apply_overrides(folder.config, config_overrides)
    runner = create_runner(backend, folder, fp16=fp16, providers=providers, threads=threads)
    if backend != "tensorrt":
        return Detector(runner, config)
    pre = post = None
    if gpu_stages is not False:
        try:
            from .cuda_stages import cuda_stages

            pre, post = cuda_stages(config, stream=runner.stream)  # type: ignore[attr-defined]
        except BackendUnavailableError as exc:
            if gpu_stages:
                raise
            log.info("CUDA pre/post-processing unavailable (%s); using the host stages", exc)
    return Detector(runner, config, preprocessor=pre, postprocessor=post)


def _torch_reference(weights: str | os.PathLike[str] | None, depth: int | None,
                     variant: str | None) -> tuple[NetworkRunner, DetectorConfig]:
    model, config = reference_model(weights, depth, variant)
    from tinyfaces_trt.export.torch_runner import TorchRunner

    return TorchRunner(model), config


__all__ = [
    "BACKENDS", "apply_overrides", "available_backends", "create_detector",
    "create_runner",
]

