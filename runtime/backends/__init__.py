"""Network runners over an export folder, and detectors built on them.

    detector = create_detector("onnxruntime", model_dir="export/")   # a tf-export folder
    boxes = detector.detect(rgb_uint8_image)

Backends: ``"onnxruntime"`` (default, CPU unless ``providers`` asks for more),
``"onnxruntime-cuda"`` (onnxruntime-gpu, device I/O through IOBinding) and ``"tensorrt"`` (an
engine from the export folder). Optional dependencies are imported only when their backend is
asked for; a missing one is a :class:`BackendUnavailableError`.

:func:`detector_for` picks the stages by the runner's capabilities, not by backend name: a
device-I/O runner gets the CUDA resize and decode+NMS kernels on its own stream, so nothing
but boxes comes back to the host.

This package runs export folders only and never imports torch. A checkpoint (exported once
into the cache) and the torch backends are :func:`tinyfaces_trt.create_detector`'s job.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import BackendUnavailableError, ConfigError, TinyFacesError
from tinyfaces_trt.core.manifest import ExportFolder, ModelIdentity, load_export_folder
from tinyfaces_trt.core.runner import NetworkRunner, capabilities_of, close_all, require_runner
from tinyfaces_trt.runtime.backends.ort_tensorrt import TensorrtEpSettings
from tinyfaces_trt.runtime.pipeline import Detector

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "onnxruntime-cuda", "tensorrt")
#: The backends only the app layer's create_detector makes (torch's, and the choice among all).
APP_BACKENDS = ("torch", "torch-cuda", "auto")


def available_backends() -> list[str]:
    """Export-folder backends whose dependencies are installed here (tensorrt also needs
    a visible GPU).

    Never raises and imports nothing heavy except, for tensorrt, the CUDA device query.
    """
    found = []
    if importlib.util.find_spec("onnxruntime") is not None:
        found.append("onnxruntime")
        if _ort_cuda_usable():
            found.append("onnxruntime-cuda")
    if importlib.util.find_spec("tensorrt") is not None and _gpu_visible():
        found.append("tensorrt")
    return found


def _gpu_visible() -> bool:
    try:
        from tinyfaces_trt.runtime.backends.cuda_device import gpu_available

        return gpu_available()
    except Exception as exc:  # any failure means "not available", never an error here
        log.debug("no CUDA GPU usable through cuda-python: %s", exc)
        return False


def _ort_cuda_usable() -> bool:
    try:
        from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import require_onnxruntime_cuda

        require_onnxruntime_cuda()
        return True
    except Exception as exc:  # any failure means "not available", never an error here
        log.debug("the onnxruntime-cuda backend cannot run here: %s", exc)
        return False


#: Logged (WARNING) once for every detector created over an untrained network.
UNTRAINED_WARNING = ("detector runs an UNTRAINED network (seeded random weights, %s): its "
                     "detections are meaningless; give trained weights or an export folder of them")


def warn_if_untrained(identity: ModelIdentity) -> None:
    """Logs :data:`UNTRAINED_WARNING` (WARNING) when ``identity`` is untrained; called once
    per detector where detectors are created."""
    if identity.untrained:
        log.warning(UNTRAINED_WARNING, identity.source)


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        also = (f"; {backend!r} is tinyfaces_trt.create_detector's" if backend in APP_BACKENDS
                else "")
        raise TinyFacesError(
            f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}{also}")


def create_runner(backend: str, folder: ExportFolder, *, fp16: bool = False,
                  providers: str | Sequence[str] | None = None,
                  threads: int | None = None,
                  cache_dir: str | os.PathLike[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> NetworkRunner:
    """The network runner of ``backend`` for an export folder.

    Args:
        backend: one of :data:`BACKENDS`.
        folder: from :func:`~tinyfaces_trt.core.manifest.load_export_folder`.
        fp16: use the folder's fp16 ONNX model / engine.
        providers, threads: ONNX Runtime options (see :class:`OnnxRuntimeRunner`); for
            onnxruntime-cuda, providers ``"cuda"`` leaves ONNX Runtime's TensorRT provider out
            (:func:`cuda_backend_uses_tensorrt`) and threads are not used.
        cache_dir: cache root for ONNX Runtime's TensorRT engines (default
            :func:`~tinyfaces_trt.core.files.cache_root`).
        progress: takes a line of text before and after a long step (ONNX Runtime's TensorRT
            provider building its engine); the log where None.

    Raises:
        ManifestError: the folder lacks the requested file, or it disagrees with the manifest.
        BackendUnavailableError: the backend's dependency is missing.
    """
    _check_backend(backend)
    # ONNX Runtime's TensorRT provider builds one engine for the export's profile, kept
    # in the cache (a folder without a profile, from an old tf-export: the CUDA provider)
    tensorrt = None if folder.profile is None else TensorrtEpSettings(
        folder.profile, folder.input_name, cache_dir=cache_dir, progress=progress)
    if backend == "onnxruntime":
        from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(folder.onnx_path(fp16), providers=providers, threads=threads,
                                 tensorrt=tensorrt, fp16=fp16)
    if backend == "onnxruntime-cuda":
        from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import OnnxRuntimeCudaRunner

        return OnnxRuntimeCudaRunner(
            folder.onnx_path(fp16), tensorrt=tensorrt if cuda_backend_uses_tensorrt(providers) else None,
            fp16=fp16)
    if backend == "tensorrt":
        from tinyfaces_trt.runtime.backends.tensorrt_runner import TensorRTRunner, import_tensorrt

        import_tensorrt()  # a missing dependency is the first thing to report
        return TensorRTRunner(folder.engine_path(fp16), input_name=folder.input_name,
                              output_name=folder.output_name, manifest_profile=folder.profile)
    raise AssertionError(backend)  # _check_backend refused it


def cuda_backend_uses_tensorrt(providers: str | Sequence[str] | None) -> bool:
    """Whether the onnxruntime-cuda backend tries ONNX Runtime's TensorRT provider first (where
    TensorRT is installed): for ``providers`` None, ``"auto"`` or TensorRT then CUDA; not for
    ``"cuda"`` (the CUDA provider alone: any image size, no engine build). The CPU provider
    may close either list (it is always there); the value reads as
    :func:`~.onnxruntime_runner.parse_providers` reads it (a string comma separated).

    Raises:
        TinyFacesError: any other list (the backend runs the CUDA provider).
    """
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import (AUTO, CPU, CUDA_EP,
                                                                   TENSORRT_EP, parse_providers)

    parsed = parse_providers(providers)
    if parsed is None or parsed == AUTO:
        return True
    full = list(parsed)
    if full and full[-1] == CPU:
        full.pop()
    if full in ([CUDA_EP], [TENSORRT_EP, CUDA_EP]):
        return full == [TENSORRT_EP, CUDA_EP]
    raise TinyFacesError(f"the onnxruntime-cuda backend runs ONNX Runtime's CUDA provider: its "
                         f"providers are 'cuda' (that one alone) or 'tensorrt,cuda' (the "
                         f"default), got {providers!r}")


#: DetectorConfig fields that describe the network itself (how it was trained: its input
#: normalisation, score-map geometry and templates); overriding them gives wrong boxes.
NETWORK_FIELDS = ("variant", "templates", "normalization", "stride", "offset", "template_policy")


def apply_overrides(config: DetectorConfig, overrides: Mapping[str, Any] | None) -> DetectorConfig:
    """``config`` with some fields replaced (None values are ignored); unknown names, and the
    :data:`NETWORK_FIELDS` that the export or checkpoint fixes, are a :class:`ConfigError`."""
    if not overrides:
        return config
    known = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown detector config field(s) {unknown}; known: {sorted(known)}")
    fixed = [name for name in NETWORK_FIELDS if overrides.get(name) is not None]
    if fixed:
        raise ConfigError(f"detector config field(s) {fixed} describe the network and come "
                          f"with it (its export folder or checkpoint); overriding them gives "
                          f"wrong boxes. Fields that can be changed: "
                          f"{sorted(known - set(NETWORK_FIELDS))}")
    return config.with_(**{k: v for k, v in overrides.items() if v is not None})


def create_detector(backend: str = "onnxruntime", model_dir: str | os.PathLike[str] | None = None,
                    config_overrides: Mapping[str, Any] | None = None, *,
                    fp16: bool = False, providers: str | Sequence[str] | None = None,
                    threads: int | None = None, gpu_stages: bool | None = None,
                    folder: ExportFolder | None = None,
                    cache_dir: str | os.PathLike[str] | None = None,
                    progress: Callable[[str], None] | None = None) -> Detector:
    """A ready :class:`Detector` for an export folder.

    Args:
        backend: one of :data:`BACKENDS` (default ``"onnxruntime"``).
        model_dir: an export folder (``tf-export`` output).
        config_overrides: :class:`DetectorConfig` fields to replace, e.g.
            ``{"prob_thresh": 0.8}`` (None values are ignored); not :data:`NETWORK_FIELDS`.
        fp16: the folder's fp16 ONNX model / engine.
        providers, threads: ONNX Runtime options (``threads``: an integer >= 1, or None;
            more than the usable cores is accepted with a ``RuntimeWarning``).
        gpu_stages: device-I/O runners (onnxruntime-cuda, tensorrt): resize/normalise and
            decode/NMS on the GPU with the CUDA kernels (see :func:`detector_for`).
        folder: an already loaded export folder (instead of ``model_dir``).
        cache_dir: cache root for ONNX Runtime's TensorRT engines (default
            :func:`~tinyfaces_trt.core.files.cache_root`).
        progress: takes a line of text before and after a long step (an engine build).

    Raises:
        TinyFacesError (a subclass of it) for every user-side problem: bad or missing files,
        a missing optional dependency, conflicting arguments.
    """
    from tinyfaces_trt.core.threads import warn_if_oversubscribed
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import check_threads

    _check_backend(backend)
    check_threads(threads)
    if backend == "onnxruntime":  # onnxruntime-cuda does not use threads
        warn_if_oversubscribed(threads)
    if folder is None:
        if model_dir is None:
            raise TinyFacesError(
                "tinyfaces_trt.runtime runs export folders (model_dir=...); for a checkpoint or "
                "the untrained default network use tinyfaces_trt.create_detector")
        folder = load_export_folder(model_dir)
    config = apply_overrides(folder.config, config_overrides)
    runner = create_runner(backend, folder, fp16=fp16, providers=providers, threads=threads,
                           cache_dir=cache_dir, progress=progress)
    warn_if_untrained(folder.identity)
    return detector_owning(runner, config, gpu_stages=gpu_stages,
                           identity=folder.identity.running(fp16))


def detector_owning(runner: NetworkRunner, config: DetectorConfig,
                    gpu_stages: bool | None = None,
                    identity: ModelIdentity | None = None) -> Detector:
    """:func:`detector_for` a runner made for it: closed when no detector can be built."""
    try:
        return detector_for(runner, config, gpu_stages=gpu_stages, identity=identity)
    except BaseException:
        runner.close()
        raise


def detector_for(runner: NetworkRunner, config: DetectorConfig,
                 gpu_stages: bool | None = None,
                 identity: ModelIdentity | None = None) -> Detector:
    """A :class:`Detector` over ``runner`` with the stages its capabilities call for.

    A device-I/O runner gets the CUDA resize and decode+NMS stages on its own stream (one
    stream: no event, no host wait between stages), the resize writing into the runner's own
    input buffers where it declares ``input_buffers``; a host runner the numpy stages.

    Args:
        runner: any :class:`~tinyfaces_trt.core.runner.NetworkRunner`.
        config: the detector config.
        gpu_stages: None: the CUDA stages for a device-I/O runner when the kernel library
            loads, else the host stages with a warning (the runner then takes and returns host
            arrays, which costs copies); True: required (an error when they cannot load);
            False: host stages.
        identity: the model's identity (weights hash, untrained flag) the detector reports.
    """
    caps = capabilities_of(require_runner(runner))
    if not caps.device_io or gpu_stages is False:
        if gpu_stages:
            raise BackendUnavailableError(
                f"{type(runner).__name__} is not a device-I/O runner: the CUDA stages need one")
        return Detector(runner, config, identity=identity)
    try:
        from tinyfaces_trt.runtime.backends.cuda_stages import cuda_stages, require_current_device

        if caps.device is not None:  # the stages are made on the current device
            require_current_device(caps.device, f"the runner ({type(runner).__name__})")
        pre, post = cuda_stages(config, runner_stream=runner.stream,
                                input_buffers=runner.input_buffer  # type: ignore[attr-defined]
                                if caps.input_buffers else None)
    except BackendUnavailableError as exc:
        if gpu_stages:
            raise
        log.warning("CUDA resize/decode/NMS unavailable (%s); using the host stages, with a copy "
                    "to and from the GPU per pyramid level", exc)
        return Detector(runner, config, identity=identity)
    try:
        return Detector(runner, config, preprocessor=pre, postprocessor=post,
                        identity=identity)
    except BaseException:
        with contextlib.suppress(Exception):  # already failing: keep the first error
            close_all((pre, post))
        raise


__all__ = [
    "BACKENDS", "apply_overrides", "available_backends", "create_detector",
    "create_runner", "cuda_backend_uses_tensorrt", "detector_for", "detector_owning",
    "warn_if_untrained",
]

