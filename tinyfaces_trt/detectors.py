"""The one-call detector factory: any backend, from an export folder or a checkpoint.

    detector = create_detector("onnxruntime", model_dir="export/")        # an export folder
    detector = create_detector("onnxruntime", weights="checkpoint.pth")   # exported once, cached
    detector = create_detector("torch", weights="checkpoint.pth")         # the torch reference
    detector = create_detector("torch-cuda", weights="checkpoint.pth")    # torch on a GPU, fast
    boxes = detector.detect(rgb_uint8_image)

Export-folder backends (``"onnxruntime"``, ``"onnxruntime-cuda"``, ``"tensorrt"``) come from
:mod:`tinyfaces_trt.runtime.backends`, which never imports torch; ``weights=`` with them goes
through the export cache (:mod:`tinyfaces_trt.export_cache`). ``"torch"`` runs the reference
model (needs the ``export`` extra); ``"torch-cuda"`` runs it on a CUDA GPU, fp16, BatchNorm
folded, each convolution with its bias, residual add and ReLU in one cuDNN call, replayed from
CUDA graphs (:class:`~tinyfaces_trt.export.torch_cuda.TorchCudaRunner`; ``torch_mode``
"compile" for torch.compile instead). With neither ``model_dir`` nor ``weights`` the seeded,
UNTRAINED default network is used: its detections are meaningless, only good for plumbing.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinyfaces_trt.core.config import DEPTHS, VARIANTS, is_integer
from tinyfaces_trt.core.errors import BackendUnavailableError, ConfigError, TinyFacesError
from tinyfaces_trt.core.files import is_text_path
from tinyfaces_trt.core.manifest import ModelIdentity
from tinyfaces_trt.detector_record import DETECTION_FIELDS
from tinyfaces_trt.export_cache import (UNTRAINED_MODEL, Progress, cached_export, reference_model,
                                        weights_sha256)
from tinyfaces_trt.runtime import backends as folder_backends
from tinyfaces_trt.runtime.backends import apply_overrides, warn_if_untrained
from tinyfaces_trt.runtime.backends.onnxruntime_runner import check_threads, parse_providers
from tinyfaces_trt.runtime.pipeline import Detector

BACKENDS = (*folder_backends.BACKENDS, *folder_backends.APP_BACKENDS)
#: How torch-cuda prepares each input shape (kept here, torch-free, for the command lines):
#: fused (default: ``TorchCudaRunner`` mode graphs with ``fuse_epilogues``; on an H200 its
#: 1080p pyramid ran 18.6 ms against torch.compile's 20.8 ms and was ready in 3-10 s (10 s in a
#: fresh process) against 54 s of compiling), or one of the runner's modes compile, aoti,
#: graphs (unfused), eager.
TORCH_CUDA_MODES = ("fused", "compile", "aoti", "graphs", "eager")
DEFAULT_TORCH_MODE = "fused"
#: Whether torch-cuda runs a pyramid's small levels side by side on streams of their own
#: (``TorchCudaRunner(concurrent_levels=True)``, in the modes replaying CUDA graphs of the eager
#: network: fused and graphs): on, measured faster with the same detections on an H200 (run 5,
#: benchmarks/results/h200-2026-12-04/run5: 1080p 20.3 ms against 24.2 ms in turn, 19.7 against
#: 20.8 ms without stage syncs; 720p 10.9 against 13.5 ms). The benchmark's
#: ``torch-cuda-in-turn`` row measures the other.
TORCH_CUDA_CONCURRENT_LEVELS = True


def torch_cuda_settings(torch_mode: str) -> tuple[str, bool]:
    """(``TorchCudaRunner`` mode, ``fuse_epilogues``) of a :data:`TORCH_CUDA_MODES` name."""
    if torch_mode not in TORCH_CUDA_MODES:
        raise TinyFacesError(f"unknown torch_mode {torch_mode!r}; expected one of "
                             f"{', '.join(TORCH_CUDA_MODES)}")
    return ("graphs", True) if torch_mode == "fused" else (torch_mode, False)


def torch_cuda_concurrent_levels(mode: str) -> bool:
    """Whether torch-cuda runs the small levels side by side with ``TorchCudaRunner`` mode
    ``mode`` (:data:`TORCH_CUDA_CONCURRENT_LEVELS`, in mode graphs only)."""
    return TORCH_CUDA_CONCURRENT_LEVELS and mode == "graphs"
#: ``"auto"``'s preference, fastest first (TensorRT > torch on the GPU > ORT CUDA > ORT CPU).
AUTO_ORDER = ("tensorrt", "torch-cuda", "onnxruntime-cuda", "onnxruntime")
log = logging.getLogger(__name__)


def available_backends() -> list[str]:
    """Backends whose dependencies are installed here (tensorrt and torch-cuda also need a
    visible GPU).

    Never raises and imports nothing heavy except the CUDA device queries (for tensorrt; and
    torch itself, when installed, to ask ``torch.cuda.is_available()`` for torch-cuda).
    """
    found = folder_backends.available_backends()
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
        import torch

        if torch.cuda.is_available():
            found.append("torch-cuda")
    return found


def resolve_backend(backend: str, model_dir: str | os.PathLike[str] | None = None,
                    fp16: bool = False) -> str:
    """``backend``, or for ``"auto"`` the fastest backend present here that can run the
    request (an export folder runs on tensorrt only when it holds an engine, and never on the
    torch backends, which need the checkpoint)."""
    if backend != "auto":
        return backend
    if model_dir is None:
        present = set(available_backends())
    else:  # the torch backends need the checkpoint: not even torch's import is needed
        present = set(folder_backends.available_backends())
        try:
            from tinyfaces_trt.core.manifest import load_export_folder

            load_export_folder(model_dir, verify=False).engine_path(fp16)
        except TinyFacesError:
            present.discard("tensorrt")
    for name in AUTO_ORDER:
        if name in present:
            log.info("backend auto: %s (present here: %s)", name, ", ".join(sorted(present)))
            return name
    raise TinyFacesError("backend auto: no backend is usable here; install onnxruntime "
                         "(pip install 'tinyfaces-trt[onnxruntime]')")


def create_detector(backend: str = "onnxruntime", model_dir: str | os.PathLike[str] | None = None,
                    weights: str | os.PathLike[str] | None = None,
                    config_overrides: Mapping[str, Any] | None = None, *,
                    fp16: bool | None = None, providers: str | Sequence[str] | None = None,
                    threads: int | None = None, depth: int | None = None,
                    variant: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                    progress: Progress | None = None, gpu_stages: bool | None = None,
                    torch_mode: str | None = None) -> Detector:
    """A ready :class:`~tinyfaces_trt.runtime.pipeline.Detector` for one backend.

    Args:
        backend: ``"onnxruntime"`` (default, CPU), ``"onnxruntime-cuda"``, ``"tensorrt"``,
            ``"torch"`` (the CPU reference), ``"torch-cuda"`` (torch on a GPU) or
            ``"auto"`` (the fastest present here, see :func:`resolve_backend`; logged).
        model_dir: an export folder (``tf-export`` output); onnxruntime, onnxruntime-cuda and
            tensorrt only.
        weights: a checkpoint; torch and torch-cuda run it directly, the others export it
            once into the cache. With neither ``model_dir`` nor ``weights``: the UNTRAINED seeded network.
        config_overrides: :class:`~tinyfaces_trt.core.config.DetectorConfig` fields to
            replace, e.g. ``{"prob_thresh": 0.8}`` (None values are ignored); not those the
            network brings (:data:`~tinyfaces_trt.runtime.backends.NETWORK_FIELDS`).
        fp16: fp16 ONNX model / engine (exported into the cache when needed), or fp16
            compute for torch-cuda. None: the backend's default (fp16 for torch-cuda, fp32
            for the others).
        providers, threads: ONNX Runtime options: providers for onnxruntime and
            onnxruntime-cuda, threads for onnxruntime (refused by the other backends; not
            used where ``"auto"`` picks another backend than onnxruntime). ``providers``
            reads as :func:`~tinyfaces_trt.runtime.backends.onnxruntime_runner.parse_providers`
            reads it (a string comma separated, aliases in any case). ``threads`` above the
            cores this process may use is warned about (ONNX Runtime's threads then wait for
            one another).
        depth, variant: passed to the checkpoint loader (None: detect from the file); only
            with ``weights``.
        cache_dir: cache root for exports, torch-cuda's compiled code (modes compile, aoti)
            and ONNX Runtime's TensorRT engines (default
            :func:`tinyfaces_trt.core.files.cache_root`).
        progress: called with a line of text before and after a long step (an export, ONNX
            Runtime's TensorRT provider building its engine), and for each input shape
            torch-cuda took seconds to prepare.
        gpu_stages: see :func:`tinyfaces_trt.runtime.backends.create_detector`; True is
            refused by ``"torch"`` and ``"onnxruntime"`` (host stages), as ``fp16=True`` is
            by ``"torch"`` (float32 only).
        torch_mode: how torch-cuda prepares each input shape (:data:`TORCH_CUDA_MODES`):
            ``"fused"`` (None: the default; the BatchNorm-folded network with each
            convolution's bias, residual add and ReLU in one cuDNN call, one CUDA graph per
            shape, nothing compiled), ``"compile"`` (torch.compile + CUDA graph, cached on
            disk), ``"aoti"`` (AOTInductor packages in the cache, loaded without compiling by
            later processes, loadable from C++), ``"graphs"`` (the network as given, CUDA
            graphs) or ``"eager"``. Ignored when ``"auto"`` picks another backend; an error
            with any other backend.

    Which backend takes which option is :data:`OPTION_RULES` (:func:`check_backend_options`),
    the CLIs' rule too.

    Raises:
        TinyFacesError (a subclass of it) for every user-side problem: bad or missing files,
        a missing optional dependency, conflicting arguments.
    """
    if backend not in BACKENDS:
        raise TinyFacesError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    _check_arguments(model_dir=model_dir, weights=weights, config_overrides=config_overrides,
                     fp16=fp16, providers=providers, threads=threads, depth=depth,
                     variant=variant, cache_dir=cache_dir, progress=progress,
                     gpu_stages=gpu_stages)
    if torch_mode is not None:
        torch_cuda_settings(torch_mode)  # an unknown one is refused before any work
    if model_dir is not None and weights is not None:
        raise TinyFacesError("give either an export folder (model_dir) or a checkpoint "
                             "(weights), not both")
    check_backend_options(backend, fp16=fp16, gpu_stages=gpu_stages, torch_mode=torch_mode,
                          providers=providers, threads=threads, model_dir=model_dir)
    if backend == "auto":
        backend = resolve_backend(backend, model_dir, fp16=bool(fp16))
        providers, threads, torch_mode = kept_by_auto(backend, providers=providers,
                                                      threads=threads, torch_mode=torch_mode)
    if backend in ("torch", "torch-cuda"):
        if backend == "torch-cuda":
            return _torch_cuda_detector(weights, config_overrides, fp16=runs_fp16(backend, fp16),
                                        depth=depth, variant=variant, cache_dir=cache_dir,
                                        gpu_stages=gpu_stages,
                                        torch_mode=torch_mode or DEFAULT_TORCH_MODE,
                                        progress=progress)
        model, config = reference_model(weights, depth, variant)
        from tinyfaces_trt.export.torch_runner import TorchRunner

        identity = torch_identity(weights, model).running(fp16=False)
        warn_if_untrained(identity)
        return Detector(TorchRunner(model), apply_overrides(config, config_overrides),
                        identity=identity)
    if backend == "tensorrt":
        from tinyfaces_trt.runtime.backends.tensorrt_runner import import_tensorrt

        import_tensorrt()  # before any export into the cache
    if backend == "onnxruntime-cuda":
        from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import require_onnxruntime_cuda

        require_onnxruntime_cuda()  # before any export into the cache
    folder = None
    if model_dir is None:
        folder = cached_export(weights, fp16=runs_fp16(backend, fp16),
                               engine=backend == "tensorrt", depth=depth, variant=variant,
                               cache_dir=cache_dir, progress=progress)
    return folder_backends.create_detector(
        backend, model_dir, config_overrides, fp16=runs_fp16(backend, fp16), providers=providers,
        threads=threads, gpu_stages=gpu_stages, folder=folder, cache_dir=cache_dir,
        progress=progress)


def _check_arguments(*, model_dir: object, weights: object, config_overrides: object,
                     fp16: object, providers: object, threads: object, depth: object,
                     variant: object, cache_dir: object, progress: object,
                     gpu_stages: object) -> None:
    """create_detector's own options, checked before any work (a wrong one reached torch or
    ONNX Runtime as a bare TypeError, or was taken by its truth value: ``fp16="false"``
    exported fp16)."""
    for name, value in (("model_dir", model_dir), ("weights", weights), ("cache_dir", cache_dir)):
        _check_path(name, value)
    for name, value in (("fp16", fp16), ("gpu_stages", gpu_stages)):
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{name} must be True, False or None, got {value!r} "
                              f"({type(value).__name__})")
    parse_providers(providers)  # a value of the wrong type: ConfigError
    if config_overrides is not None and not isinstance(config_overrides, Mapping):
        raise ConfigError(f"config_overrides must be a mapping of config fields to values, "
                          f"e.g. {{'prob_thresh': 0.8}}, or None; got {config_overrides!r} "
                          f"({type(config_overrides).__name__})")
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress must be a function taking a line of text, or None; got "
                          f"{progress!r}")
    if depth is not None and not (is_integer(depth) and depth in DEPTHS):
        raise ConfigError(f"depth must be one of {', '.join(map(str, DEPTHS))} or None, "
                          f"got {depth!r}")
    if variant is not None and (not isinstance(variant, str) or variant not in VARIANTS):
        raise ConfigError(f"variant must be one of {', '.join(VARIANTS)} or None, got {variant!r}")
    if weights is None and (depth is not None or variant is not None):
        raise ConfigError("depth and variant tell the checkpoint loader how to read "
                          "weights=...; an export folder and the untrained default network "
                          "bring their own")
    check_threads(threads)


@dataclass(frozen=True)
class OptionRule:
    """Which backends use some of :func:`create_detector`'s options (:data:`OPTION_RULES`).

    Attributes:
        options: the arguments it is about; one given (not None; True for ``only_true``)
            to another backend than ``backends`` is refused.
        backends: those that use them (``"auto"`` takes every option: see :func:`kept_by_auto`).
        text: the refusal, a :meth:`str.format` template: each option's name as
            :class:`OptionNames` spells it, ``backend`` (the backend refusing), ``the_backend``
            (it, spelled), ``allowed`` (``backends``: "the a and b backends"), ``allowed_or``
            (spelled, "or") and ``why``.
        only_true: only True is refused (False is what the other backends do anyway).
        why: per refusing backend, what it does instead (appended where ``text`` says ``why``).
    """

    options: tuple[str, ...]
    backends: tuple[str, ...]
    text: str
    only_true: bool = False
    why: Mapping[str, str] = field(default_factory=dict)

    def given(self, options: Mapping[str, Any]) -> bool:
        """Whether ``options`` sets one of this rule's options."""
        return any(options.get(name) is True if self.only_true else options.get(name) is not None
                   for name in self.options)


#: The backends an option applies to: the one table :func:`check_backend_options` reads, for
#: create_detector's arguments and the CLIs' flags alike (first broken rule reported).
OPTION_RULES = (
    OptionRule(("model_dir",), folder_backends.BACKENDS,
               "{the_backend} runs a checkpoint ({weights}) directly; an export folder "
               "({model_dir}) runs with {allowed_or}"),
    OptionRule(("torch_mode",), ("torch-cuda",),
               "{torch_mode} applies to {allowed}, not {backend}"),
    OptionRule(("fp16",), ("onnxruntime", "onnxruntime-cuda", "tensorrt", "torch-cuda"),
               "{fp16} applies to {allowed}, not {backend}{why}", only_true=True,
               why={"torch": " (the float32 reference)"}),
    OptionRule(("gpu_stages",), ("onnxruntime-cuda", "tensorrt", "torch-cuda"),
               "{gpu_stages} applies to {allowed}, not {backend}{why}", only_true=True,
               why={"torch": " (host stages)", "onnxruntime": " (host stages)"}),
    OptionRule(("providers", "threads"), ("onnxruntime", "onnxruntime-cuda"),
               "{providers}/{threads} are onnxruntime options, of the onnxruntime backend "
               "({providers} also of onnxruntime-cuda), not {backend}{why}",
               why={"torch": " (torch's CPU threads are process-wide: torch.set_num_threads)"}),
    OptionRule(("threads",), ("onnxruntime",),
               "{threads} applies to {allowed} (its CPU provider), not {backend}"),
)


@dataclass(frozen=True)
class OptionNames:
    """How :func:`check_backend_options`' messages name the options and a backend:
    :data:`API_NAMES` (create_detector's arguments) or the CLIs' flags
    (:data:`tinyfaces_trt.detector_options.FLAG_NAMES`)."""

    options: Mapping[str, str]
    #: A backend (or "a, b or c") as chosen: "the {} backend", "--backend {}".
    backend: str


API_NAMES = OptionNames({"fp16": "fp16=True", "gpu_stages": "gpu_stages=True",
                         "torch_mode": "torch_mode", "providers": "providers",
                         "threads": "threads", "model_dir": "model_dir=...",
                         "weights": "weights=..."}, "the {} backend")


def _listed(names: Sequence[str], last: str) -> str:
    """``a, b and c`` (``last``: "and", "or")."""
    return f"{', '.join(names[:-1])} {last} {names[-1]}" if len(names) > 1 else "".join(names)


def check_backend_options(backend: str, *, names: OptionNames = API_NAMES,
                          **options: Any) -> None:
    """Refuses an option that ``backend`` would not use (:data:`OPTION_RULES`), and providers
    the onnxruntime-cuda backend cannot run
    (:func:`~tinyfaces_trt.runtime.backends.cuda_backend_uses_tensorrt`).

    Args:
        backend: one of :data:`BACKENDS`; ``"auto"`` takes every option.
        names: how the message names options (create_detector's arguments by default).
        options: create_detector's ``fp16``, ``gpu_stages``, ``torch_mode``, ``providers``,
            ``threads``, ``model_dir`` (None: not given).

    Raises:
        ConfigError: one message per rule.
    """
    if backend == "auto":
        return
    for rule in OPTION_RULES:
        if backend in rule.backends or not rule.given(options):
            continue
        plural = "backends" if len(rule.backends) > 1 else "backend"
        raise ConfigError(rule.text.format(
            **names.options, backend=backend, the_backend=names.backend.format(backend),
            allowed=f"the {_listed(rule.backends, 'and')} {plural}",
            allowed_or=names.backend.format(_listed(rule.backends, "or")),
            why=rule.why.get(backend, "")))
    if backend == "onnxruntime-cuda" and options.get("providers") is not None:
        try:
            folder_backends.cuda_backend_uses_tensorrt(options["providers"])
        except TinyFacesError as exc:
            raise ConfigError(f"{names.options['providers']}: {exc}") from None


def kept_by_auto(backend: str, *, providers: str | Sequence[str] | None, threads: int | None,
                 torch_mode: str | None
                 ) -> tuple[str | Sequence[str] | None, int | None, str | None]:
    """``providers``, ``threads`` and ``torch_mode`` asked with ``"auto"``, as the backend it
    picked (``backend``) takes them: providers and threads only by onnxruntime (they were
    the CPU default's), torch_mode only by torch-cuda; None where not taken."""
    if backend != "onnxruntime":
        providers = threads = None
    return providers, threads, torch_mode if backend == "torch-cuda" else None


#: The backends that run fp16 unless told ``fp16=False``.
FP16_BY_DEFAULT = ("torch-cuda",)


def runs_fp16(backend: str, fp16: bool | None) -> bool:
    """Whether ``create_detector(backend, fp16=fp16)`` runs fp16 (``backend`` resolved, not
    ``"auto"``): where asked for, or by default (None) on :data:`FP16_BY_DEFAULT`."""
    return backend in FP16_BY_DEFAULT if fp16 is None else bool(fp16)


def _check_path(name: str, value: object) -> None:
    """Raises :class:`ConfigError` unless ``value`` is None or a path
    (:func:`~tinyfaces_trt.core.files.is_text_path`: bytes are refused)."""
    if value is None or is_text_path(value):
        return
    hint = " (decode a bytes path with os.fsdecode)" if isinstance(value, bytes) else ""
    raise ConfigError(f"{name} must be a path (str or os.PathLike) or None, got {value!r} "
                      f"({type(value).__name__}){hint}")


def _torch_cuda_detector(weights: str | os.PathLike[str] | None,
                         config_overrides: Mapping[str, Any] | None, *, fp16: bool,
                         depth: int | None, variant: str | None,
                         cache_dir: str | os.PathLike[str] | None,
                         gpu_stages: bool | None, torch_mode: str,
                         progress: Progress | None = None) -> Detector:
    if importlib.util.find_spec("torch") is None:
        raise BackendUnavailableError("torch-cuda needs PyTorch built with CUDA: "
                                      "pip install 'tinyfaces-trt[export]' on a GPU machine")
    import torch

    from tinyfaces_trt.export.torch_cuda import PREPARE_AFTER_RUNS, TorchCudaRunner, require_cuda

    require_cuda()  # before loading (or building) the model
    model, config = reference_model(weights, depth, variant)
    config = apply_overrides(config, config_overrides)
    identity = torch_identity(weights, model).running(fp16)
    # a new image size runs eager until it recurs: a folder of photos of every size would
    # otherwise capture (or compile) its pyramid's shapes for each photo
    mode, fuse = torch_cuda_settings(torch_mode)
    runner = TorchCudaRunner(model, dtype=torch.float16 if fp16 else torch.float32,
                             mode=mode, fuse_epilogues=fuse, cache_dir=cache_dir,
                             prepare_after=PREPARE_AFTER_RUNS, progress=progress,
                             concurrent_levels=torch_cuda_concurrent_levels(mode))
    warn_if_untrained(identity)
    # a device-I/O runner: the CUDA stages on its stream
    return folder_backends.detector_owning(runner, config, gpu_stages=gpu_stages,
                                           identity=identity)


def torch_identity(weights: str | os.PathLike[str] | None, model: Any = None) -> ModelIdentity:
    """The identity of a checkpoint run by torch (None: the untrained default network); its
    depth is known once ``model``, the loaded network, is given, its variant from the file
    (the loader's default for it: a MAT-file is read as matconvnet) until then."""
    if weights is None:
        spec = ", ".join(f"{k} {v}" for k, v in UNTRAINED_MODEL.items())
        return ModelIdentity(None, True, f"the default network ({spec})", **UNTRAINED_MODEL)
    return ModelIdentity(weights_sha256(weights), False, f"checkpoint {weights}",
                         variant=getattr(model, "variant", None) or _file_variant(weights),
                         depth=getattr(model, "depth", None))


def _file_variant(weights: str | os.PathLike[str]) -> str:
    """The variant the loader reads ``weights`` as by default: matconvnet for a MAT-file (its
    header starts with ``MATLAB``), pytorch for a checkpoint."""
    try:
        with open(weights, "rb") as file:
            return "matconvnet" if file.read(6) == b"MATLAB" else "pytorch"
    except OSError:
        return "pytorch"  # (hashing it above has already said why it cannot be read)


@dataclass(frozen=True)
class DetectorSpec:
    """The arguments of :func:`create_detector`, picklable: a worker process (a Ray actor, a
    pool) builds its own detector from it with :meth:`create`."""

    backend: str = "onnxruntime"
    model_dir: str | None = None
    weights: str | None = None
    config_overrides: tuple[tuple[str, Any], ...] = ()
    fp16: bool | None = None
    providers: tuple[str, ...] | str | None = None
    threads: int | None = None
    depth: int | None = None
    variant: str | None = None
    cache_dir: str | None = None
    torch_mode: str | None = None

    def create(self, progress: Progress | None = None) -> Detector:
        """A new detector with these arguments."""
        providers = list(self.providers) if isinstance(self.providers, tuple) else self.providers
        return create_detector(self.backend, self.model_dir, self.weights,
                               dict(self.config_overrides), fp16=self.fp16, providers=providers,
                               threads=self.threads, depth=self.depth, variant=self.variant,
                               cache_dir=self.cache_dir, progress=progress,
                               torch_mode=self.torch_mode)


def check_detector_config(spec: Any) -> None:
    """Makes the config the detector of ``spec`` (a :class:`DetectorSpec`) will have (the
    export folder's, or the variant's of the weights / the untrained network, with the
    detection settings), so that a setting no image can meet (``--max-face 5``) is one error
    on the driver before workers or replicas start, not a failure buried in Ray's log.

    Raises:
        ConfigError: the settings are refused (the message says why).
    """
    from tinyfaces_trt.core.config import DetectorConfig
    from tinyfaces_trt.core.manifest import load_export_folder

    if spec.model_dir is not None:
        config = load_export_folder(spec.model_dir).config
    else:
        mat = str(spec.weights or "").lower().endswith(".mat")
        config = DetectorConfig.for_variant(spec.variant or ("matconvnet" if mat else "pytorch"))
    config.with_(**dict(spec.config_overrides))


def spec_from_arguments(args: argparse.Namespace, progress: Progress | None = None, *,
                        for_workers: bool = False) -> DetectorSpec:
    """The detector the CLIs' options ask for (``--backend``, ``--model``, ``--weights``,
    ``--fp16``, ``--torch-mode``, ``--providers``, ``--threads``, and the detection flags of
    :data:`~tinyfaces_trt.detector_record.DETECTION_FIELDS`: ``--prob-thresh``, ``--nms-thresh``,
    ``--min-face``, ``--max-face``, ``--pyramid``; a tool's ``clip_boxes`` default), as a
    :class:`DetectorSpec`:
    ``.create()`` builds it here, and Ray workers and Serve replicas build their own from it.

    Its ``score`` is ``"prob"``, whatever the export's config says: every CLI output holds
    probabilities (tf-detect's ``--wider-dir`` asks for logits on top of it).

    ``--providers`` is kept as
    :func:`~tinyfaces_trt.runtime.backends.onnxruntime_runner.parse_providers` reads it (full
    provider names, or ``"auto"``): what the workers run, and what their GPU planning
    (:func:`~tinyfaces_trt.scaleout.cluster.spec_uses_gpu`) reads.

    ``auto`` is resolved here (said through ``progress``), and the options it takes pass on
    as create_detector passes them (:func:`kept_by_auto`). With ``for_workers``, an ONNX
    Runtime checkpoint (or the untrained default) is exported into the cache here, once, so
    that the workers only load the export folder instead of each exporting it.
    """
    # "auto" is resolved here, on the driver, so that the pool is planned for the backend
    # the workers will run (GPU actors for a GPU backend)
    backend = resolve_backend(args.backend, args.model, fp16=bool(args.fp16))
    if progress is not None and backend != args.backend:
        progress(f"backend auto: {backend} (the fastest present on this machine)")
    model_dir, weights = args.model, args.weights
    if for_workers and backend in ("onnxruntime", "onnxruntime-cuda") and model_dir is None:
        folder = cached_export(weights, fp16=runs_fp16(backend, args.fp16), progress=progress)
        model_dir, weights = str(folder.path), None
    # column 4 is the probability whatever the export's config says: masks, sidecars, review
    # bands and answers are of probabilities (tf-detect's --wider-dir asks for logits after)
    overrides = (("score", "prob"),) + tuple(
        (k, getattr(args, k, None)) for k in (*DETECTION_FIELDS, "clip_boxes")
        if getattr(args, k, None) is not None)
    providers, threads = parse_providers(args.providers), args.threads
    if args.backend == "auto":  # as create_detector would take them with "auto"
        providers, threads, _ = kept_by_auto(backend, providers=providers, threads=threads,
                                             torch_mode=None)
    torch_mode = args.torch_mode if backend == "torch-cuda" else None
    return DetectorSpec(backend, model_dir, weights, overrides, fp16=args.fp16,
                        providers=tuple(providers) if isinstance(providers, list) else providers,
                        threads=threads, torch_mode=torch_mode)


__all__ = ["API_NAMES", "AUTO_ORDER", "BACKENDS", "DEFAULT_TORCH_MODE", "FP16_BY_DEFAULT",
           "OPTION_RULES", "TORCH_CUDA_MODES", "DetectorSpec", "OptionNames", "OptionRule",
           "available_backends", "check_backend_options", "create_detector", "kept_by_auto",
           "resolve_backend", "runs_fp16", "spec_from_arguments", "torch_cuda_concurrent_levels",
           "torch_cuda_settings"]
