"""Network backends and the one-call detector factory.

    detector = create_detector("onnxruntime", model_dir="export/")        # an export folder
    detector = create_detector("onnxruntime", weights="checkpoint.pth")   # exported once, cached
    detector = create_detector("torch", weights="checkpoint.pth")         # the torch reference
    boxes = detector.detect(rgb_uint8_image)

Backends: ``"onnxruntime"`` (default, CPU unless ``providers`` asks for more), ``"tensorrt"``
(an engine from the export folder, GPU) and ``"torch"`` (the reference model; needs the
``export`` extra). Optional dependencies are imported only when their backend is asked for;
a missing one is a :class:`BackendUnavailableError`.

Export cache: ``weights=`` with an ONNX/TensorRT backend exports the checkpoint once into
``$TINYFACES_CACHE/<key>/`` (default ``~/.cache/tinyfaces_trt/``), ``<key>`` being a prefix
of the checkpoint's sha256, and reuses that folder on later calls. With neither
``model_dir`` nor ``weights`` the seeded, UNTRAINED default network is used (exported to the
cache the same way): its detections are meaningless, only good for plumbing tests.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DetectorConfig
from ..errors import BackendUnavailableError, ManifestError, TinyFacesError
from ..export_folder import ExportFolder, load_export_folder
from ..pipeline import Detector, NetworkRunner, validate_image

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "tensorrt", "torch")
#: The untrained default network: ``build_model(**UNTRAINED_MODEL)``.
UNTRAINED_MODEL = {"depth": 101, "variant": "pytorch", "seed": 0}
CACHE_ENV = "TINYFACES_CACHE"
_KEY_CHARS = 16

Progress = Callable[[str], None]


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


class ShapeCheckedDetector(Detector):
    """A :class:`Detector` whose runner only accepts some input shapes (a TensorRT profile).

    Before any work on an image it asks the runner's ``check_levels`` about the whole
    pyramid, so an image with an out-of-profile level fails with a clear
    :class:`ManifestError` instead of part-way through.
    """

    def detect(self, image: np.ndarray,
               timings: MutableMapping[str, float] | None = None) -> np.ndarray:
        image = validate_image(image)
        self.runner.check_levels(self.plan(*image.shape[:2]))  # type: ignore[attr-defined]
        return super().detect(image, timings)


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
    return ShapeCheckedDetector(runner, config, preprocessor=pre, postprocessor=post)


# ---------------------------------------------------------------------------------------------
# torch reference and the export cache (both need the `export` extra, imported lazily)
# ---------------------------------------------------------------------------------------------

def _import_export_side() -> None:
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailableError(
            "this needs PyTorch (the reference model and exporter): "
            "pip install 'tinyfaces-trt[export]'")


def _load_model(weights: str | os.PathLike[str] | None, depth: int | None,
                variant: str | None) -> tuple[Any, DetectorConfig]:
    """(torch model, its config): the checkpoint, or the untrained seeded network."""
    _import_export_side()
    if weights is None:
        from tinyfaces_trt.export.model import build_model

        model = build_model(**UNTRAINED_MODEL)
        return model, model.detector_config()
    from tinyfaces_trt.export.weights import load_weights

    return load_weights(weights, depth=depth, variant=variant)


def _torch_reference(weights: str | os.PathLike[str] | None, depth: int | None,
                     variant: str | None) -> tuple[NetworkRunner, DetectorConfig]:
    model, config = _load_model(weights, depth, variant)
    from tinyfaces_trt.export.torch_runner import TorchRunner

    return TorchRunner(model), config


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The export cache folder: ``cache_dir``, else ``$TINYFACES_CACHE``, else ``~/.cache/tinyfaces_trt``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "tinyfaces_trt"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes; :class:`WeightsError` when it cannot be read."""
    from ..errors import WeightsError

    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weights file not found: {p}")
    digest = hashlib.sha256()
    try:
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {p}: {exc}") from exc
    return digest.hexdigest()


def cache_key(weights: str | os.PathLike[str] | None, depth: int | None = None,
              variant: str | None = None) -> str:
    """The cache folder name: a prefix of the checkpoint's sha256 (with the loader options
    folded in when given), or of the untrained model's description."""
    if weights is None:
        text = "untrained:" + ",".join(f"{k}={v}" for k, v in sorted(UNTRAINED_MODEL.items()))
        return "untrained-" + hashlib.sha256(text.encode()).hexdigest()[:_KEY_CHARS]
    digest = file_sha256(weights)
    if depth is not None or variant is not None:
        digest = hashlib.sha256(f"{digest}:depth={depth}:variant={variant}".encode()).hexdigest()
    return digest[:_KEY_CHARS]


def _usable(folder_path: Path, fp16: bool, engine: bool) -> ExportFolder | None:
    """The cached folder if it is complete for this request, else None."""
    try:
        folder = load_export_folder(folder_path)
        folder.onnx_path(fp16)
        if engine:
            folder.engine_path(fp16)
    except ManifestError as exc:
        log.info("export cache %s not usable (%s); exporting again", folder_path, exc)
        return None
    return folder


def cached_export(weights: str | os.PathLike[str] | None, *, fp16: bool = False,
                  engine: bool = False, depth: int | None = None, variant: str | None = None,
                  cache_dir: str | os.PathLike[str] | None = None,
                  progress: Progress | None = None, verify: bool = True) -> ExportFolder:
    """The export folder of ``weights`` (None: the untrained network) in the cache.

    Reuses ``<cache>/<key>/`` when it is complete (the requested precision, and an engine
    when ``engine``); otherwise exports into a temporary folder beside it and moves that into
    place, so an interrupted export never leaves a half-written cache entry. ``verify``
    checks each new ONNX file against torch (see ``export_model``).
    """
    say = progress or log.info
    root = cache_root(cache_dir)
    key = cache_key(weights, depth, variant)
    target = root / key
    if target.exists():
        folder = _usable(target, fp16, engine)
        if folder is not None:
            log.info("using cached export %s", target)
            return folder
    _import_export_side()
    from tinyfaces_trt.export.export_pipeline import export_model

    what = f"weights {weights}" if weights is not None else "the UNTRAINED default network"
    say(f"exporting {what} to ONNX{' (fp32 + fp16)' if fp16 else ''}"
        f"{' and a TensorRT engine' if engine else ''} into the cache {target} (one time) ...")
    start = time.perf_counter()
    model, config = _load_model(weights, depth, variant)
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    except OSError as exc:
        raise TinyFacesError(f"cannot create the export cache folder {root}: {exc} "
                             f"(set {CACHE_ENV} to a writable folder)") from exc
    try:
        export_model(model, config, staging, fp16=fp16, engine=engine,
                     weights_path=weights, untrained=weights is None, verify=verify,
                     log=lambda line: say(line.replace(str(staging), str(target))))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(staging, target)
        except OSError as exc:  # another process put a folder there meanwhile
            folder = _usable(target, fp16, engine)
            if folder is None:
                raise TinyFacesError(f"cannot move the export into the cache {target}: {exc}") from exc
            return folder
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    say(f"export done in {time.perf_counter() - start:.1f} s: {target}")
    return load_export_folder(target)


__all__ = [
    "BACKENDS", "ShapeCheckedDetector", "apply_overrides", "available_backends", "cache_key",
    "cache_root", "cached_export", "create_detector", "create_runner", "file_sha256",
]

