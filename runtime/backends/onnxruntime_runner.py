"""ONNX Runtime network runner (the embedded default backend, CPU unless asked otherwise).

    runner = OnnxRuntimeRunner("export/model.onnx")                 # CPUExecutionProvider
    runner = OnnxRuntimeRunner("export/model.onnx", providers="auto",  # TensorRT > CUDA > CPU
                               tensorrt=TensorrtEpSettings(folder.profile))  # its engine's shapes
    scores = runner.run(x)     # x: (1, 3, h, w) float32 -> (1, 125, ceil(h/8), ceil(w/8)) float32

The providers actually in use, and any fallback from the ones asked for, are logged on the
``tinyfaces_trt.runtime.backends.onnxruntime_runner`` logger.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import NUM_CHANNELS, is_integer
from tinyfaces_trt.core.errors import (BackendUnavailableError, ConfigError, ManifestError,
                                       NetworkRunError, TinyFacesError, first_line)
from tinyfaces_trt.core.manifest import DEFAULT_FILE_NAMES, MANIFEST_NAME
from tinyfaces_trt.core.optional import MIN_ONNXRUNTIME_VERSION, import_optional, version_tuple
from tinyfaces_trt.core.runner import RunnerBase, RunnerCapabilities, check_network_input
from tinyfaces_trt.core.threads import Worker
from tinyfaces_trt.runtime.backends.ort_tensorrt import (TENSORRT_EP, TensorrtEpSettings,
                                                         open_with_engine_cache)

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
#: Short names accepted in ``providers`` besides ONNX Runtime's full provider names.
PROVIDER_ALIASES = {
    "cpu": CPU,
    "cuda": CUDA_EP,
    "tensorrt": TENSORRT_EP,
    "trt": TENSORRT_EP,
}
#: The providers whose work runs on an (NVIDIA) GPU; the others (OpenVINO, DNNL, XNNPACK,
#: ...) run on the CPU.
GPU_PROVIDERS = (CUDA_EP, TENSORRT_EP)
#: Preference order for ``providers="auto"``.
AUTO_ORDER = (TENSORRT_EP, CUDA_EP, CPU)
#: The most images one run takes on the CPU provider (``capabilities.max_batch``; the detector
#: runs a larger batch in parts): a run's memory grows with its batch (about 18 MiB per 120x160
#: frame, GBs per 1080p frame) while batching saves a CPU no work. Measured on 2 cores, 8
#: frames of 320x240 (levels up to 240 px) run 1 / 2 / 4 / 8 at a time: the same CPU time per
#: frame (2.2 frames per CPU-second); 3.6 / 3.7 / 3.9 / 4.2 frames/s wall with 2 intra-op
#: threads (a small level fills them better in a batch). 2 keeps all but ~10% of that.
HOST_MAX_BATCH = 2


def import_onnxruntime() -> Any:
    """Imports onnxruntime or raises :class:`BackendUnavailableError` with the install hint."""
    return import_optional("onnxruntime", purpose="the onnxruntime backend",
                           name="the onnxruntime package", min_version=MIN_ONNXRUNTIME_VERSION,
                           extra_hint="pip install 'tinyfaces-trt[onnxruntime]'")


#: ``providers`` value that asks for the best available providers (:data:`AUTO_ORDER`).
AUTO = "auto"
#: What :func:`parse_providers` says of a value of the wrong type.
PROVIDERS_TYPE_ERROR = ("providers must be a provider name, 'auto', a list of names such as "
                        "['cuda', 'cpu'], or None; got {!r}")


def provider_name(name: str) -> str:
    """The full ONNX Runtime provider name of a name or alias (:data:`PROVIDER_ALIASES`):
    an alias is matched lowercased and stripped, any other name is kept as given, stripped."""
    return PROVIDER_ALIASES.get(name.strip().lower(), name.strip())


def parse_providers(value: object) -> list[str] | str | None:
    """How a ``providers`` value reads: the one rule of every place that takes one
    (``OnnxRuntimeRunner``, ``create_detector``, the CLIs' ``--providers``, the scale-out
    GPU planning).

    Args:
        value: None; a string: ``"auto"`` (any case, spaces around it ignored) or names
            separated by commas (``"cuda"``, ``"cpu, CUDA"``, ``"TensorrtExecutionProvider"``);
            or a sequence of names (each one name, not split).

    Returns:
        None for None (the CPU provider); :data:`AUTO` for ``"auto"``; else the full provider
        names in the order given (:func:`provider_name`: an alias in any case, stripped; a
        full name stripped, its case kept as ONNX Runtime spells it). Names are not checked
        here (:func:`unknown_providers`); an empty name stays ``""``. Reading a result again
        gives it back unchanged.

    Raises:
        ConfigError: ``value`` is none of these types (:data:`PROVIDERS_TYPE_ERROR`).
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() == AUTO:
            return AUTO
        return [provider_name(name) for name in value.split(",")]
    if isinstance(value, Sequence) and all(isinstance(name, str) for name in value):
        return [provider_name(name) for name in value]
    raise ConfigError(PROVIDERS_TYPE_ERROR.format(value))


def unknown_providers(value: object, known: Iterable[str] | None = None) -> list[str]:
    """The names of a ``providers`` value (:func:`parse_providers`) that are neither an alias
    nor a provider of ``known``: typos, and empty names (``"cpu,,cuda"``), stripped.

    Args:
        known: ``onnxruntime.get_all_providers()``; None: the installed onnxruntime's (where
            onnxruntime is missing only empty names are refused: its backend then says so).
    """
    names = parse_providers(value)
    if names is None or names == AUTO:
        return []
    aliased = set(PROVIDER_ALIASES.values())  # aliases need no onnxruntime
    candidates = [name for name in names if name not in aliased]
    if not candidates:
        return []
    if known is None:
        try:
            known = import_onnxruntime().get_all_providers()
        except BackendUnavailableError:  # onnxruntime missing
            return [name for name in candidates if not name]
    have = set(known)
    return [name for name in candidates if name not in have]


def unknown_providers_message(unknown: Sequence[str]) -> str:
    """What :func:`resolve_providers` and the CLIs' ``--providers`` say of unknown names."""
    aliases: dict[str, str] = {}  # one alias per provider
    for alias, full in PROVIDER_ALIASES.items():
        aliases.setdefault(full, alias)
    return (f"unknown ONNX Runtime provider(s) {list(unknown)}; use {', '.join(aliases.values())}, "
            f"'auto', or a full provider name such as CUDAExecutionProvider")


def resolve_providers(requested: str | Sequence[str] | None,
                      available: Sequence[str], known: Sequence[str] | None = None) -> list[str]:
    """The provider list to open a session with.

    Args:
        requested: ``None`` (CPU only), ``"auto"`` (TensorRT, CUDA, CPU: those available),
            or provider names / aliases (``"cpu"``, ``"cuda"``, ``"tensorrt"``) in priority order,
            a string comma separated, as :func:`parse_providers` reads them.
        available: ``onnxruntime.get_available_providers()``.
        known: ``onnxruntime.get_all_providers()``; a requested name outside it (a typo) is
            an error instead of a fallback. None: not checked.

    Returns:
        The requested providers that this onnxruntime build has, in order, always ending with
        CPUExecutionProvider as the fallback. Requested providers that are missing are logged
        as a warning, naming the fallback.
    """
    parsed = parse_providers(requested)
    if parsed is None:
        wanted = [CPU]
    elif parsed == AUTO:
        wanted = list(AUTO_ORDER)
    else:
        if not parsed:
            raise TinyFacesError("providers must not be empty (use None for CPU or 'auto')")
        wanted = list(parsed)
        unknown = unknown_providers(parsed, known) if known is not None else []
        if unknown:
            raise TinyFacesError(unknown_providers_message(unknown))
    chosen = [p for p in dict.fromkeys(wanted) if p in available]
    missing = [p for p in dict.fromkeys(wanted) if p not in available]
    if CPU not in chosen:
        chosen.append(CPU)
    if missing and parsed != AUTO:
        log.warning("ONNX Runtime providers %s are not available in this onnxruntime build "
                    "(available: %s); falling back to %s", missing, list(available), chosen)
    elif missing:
        log.info("ONNX Runtime 'auto': %s not available, using %s", missing, chosen)
    return chosen


#: ONNX Runtime's run option that returns the CPU arena's unused memory at the end of each
#: run: without it, one large image's peak (gigabytes for a photo of several megapixels)
#: stayed held by a long-lived detector until it was closed (about 1% slower per run).
ARENA_SHRINKAGE = ("memory.enable_memory_arena_shrinkage", "cpu:0")


def run_options() -> Any:
    """New ``RunOptions`` of one run: the CPU arena shrinks back after it
    (:data:`ARENA_SHRINKAGE`)."""
    options = import_onnxruntime().RunOptions()
    options.add_run_config_entry(*ARENA_SHRINKAGE)
    return options


#: Words of an allocation failure in ONNX Runtime's message (its arena: "Failed to allocate
#: memory for requested buffer", "Available memory of 0 is smaller than requested bytes" at
#: its limit; CUDA: "out of memory", cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED; a
#: C++ std::bad_alloc).
_ALLOCATION_WORDS = ("failed to allocate", "smaller than requested bytes", "out of memory",
                     "bad_alloc", "bad allocation", "memoryallocation", "alloc_failed")


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether a runner's exception says it ran out of (host or GPU) memory."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(word in text for word in _ALLOCATION_WORDS)


def run_failure(exc: BaseException, shape: Sequence[int]) -> NetworkRunError:
    """The :class:`NetworkRunError` for ONNX Runtime's exception ``exc`` on a network input
    of ``shape`` (N, 3, H, W), with what to do when it ran out of memory; the caller raises
    it ``from exc``."""
    message = (f"ONNX Runtime failed to run the network on an input of (N, 3, H, W) = "
               f"{tuple(int(d) for d in shape)}: {first_line(exc)}")
    if is_allocation_failure(exc):
        message += ("; not enough memory for an input this large: detect a smaller (downscaled) "
                    "image, or lower Detector.max_pixels to refuse such images; run fewer "
                    "threads or detectors at once; or give the process more memory (a larger "
                    "memory limit; on a GPU, more free GPU memory)")
    return NetworkRunError(message)


def _session_run(session: Any, output_names: list[str], feeds: dict[str, Any],
                 options: Any) -> list[Any]:
    """``session.run``; ONNX Runtime's exceptions (out of memory, a provider error) raised as
    :class:`NetworkRunError` (:func:`run_failure`), chained."""
    try:
        return session.run(output_names, feeds, options)
    except TinyFacesError:
        raise
    except Exception as exc:  # ORT's own types (Fail, RuntimeException, ...), MemoryError
        shape = next(iter(feeds.values())).shape
        raise run_failure(exc, shape) from exc


def interruptible_run(session: Any, output_names: list[str], feeds: dict[str, Any]) -> list[Any]:
    """``session.run`` with :func:`run_options`, stoppable by Ctrl-C and by what signal
    handlers raise (an exception of the run itself is a :class:`NetworkRunError`; an
    interruption is raised as it came): Python runs
    signal handlers in the main thread between bytecodes, never inside ONNX Runtime's run (a
    large image's level takes minutes on a CPU), so there the run goes on a helper thread
    while the main thread waits; an exception while it waits (KeyboardInterrupt, a SIGTERM
    handler's ``sys.exit``, a request timeout's ``TimeoutError``) sets the run's
    ``terminate`` flag, waits for it to stop and is raised. In other threads (no signal
    arrives there) it runs directly.

    No run outlives the exception, wherever it lands (in ``Thread.start`` too, whose wait a
    signal breaks, or a second signal during the wait): a process that exits while ONNX
    Runtime runs on another thread aborts in its C++ teardown ("terminate called without an
    active exception", exit 134 instead of the handler's), and a caller whose lock is released
    could start a second run alongside it."""
    options = run_options()
    if threading.current_thread() is not threading.main_thread():
        return _session_run(session, output_names, feeds, options)
    worker = Worker(lambda: _session_run(session, output_names, feeds, options),
                    "tf-onnxruntime-run")
    try:
        worker.start()
        worker.wait()
    except BaseException:
        worker.stop(ask=lambda: setattr(options, "terminate", True))
        raise
    return worker.result()


def check_threads(threads: object) -> None:
    """Raises :class:`ConfigError` unless ``threads`` (intra-op threads) is None or an
    integer >= 1."""
    if threads is not None and not (is_integer(threads) and threads >= 1):
        raise ConfigError(f"threads must be an integer >= 1 or None, got {threads!r}")


#: The oldest onnxruntime-gpu whose CUDA provider takes ``use_tf32`` (onnxruntime PRs #19357,
#: #19426: the 1.18.0 wheel's CUDA provider library names it, 1.17.1's does not). Older ones
#: refuse the session on an option they do not know ("Unknown provider option",
#: ``ProviderOptionsParser::Parse``).
USE_TF32_VERSION = "1.18"
#: The precision of an fp32 export run with TF32 convolutions (inputs rounded to 10 mantissa
#: bits, float32 range and sums): its parity tolerances are fp16-like.
TF32 = "tf32"



def export_is_fp16(onnx_path: str | os.PathLike[str]) -> bool:
    """Whether ``onnx_path`` is an export folder's fp16 model: the ``onnx_fp16`` file of the
    manifest beside it or, without a readable manifest, tf-export's name for that file."""
    path = Path(onnx_path)
    try:
        files = json.loads((path.parent / MANIFEST_NAME).read_text()).get("files")
    except (OSError, ValueError, AttributeError):  # no manifest, not JSON, not an object
        files = None
    if isinstance(files, dict) and path.name in files.values():
        return files.get("onnx_fp16") == path.name
    return path.name == DEFAULT_FILE_NAMES["onnx_fp16"]


def cuda_provider_options(fp16: bool, onnxruntime_version: str) -> dict[str, str]:
    """The CUDA provider's options for an export of that precision: ``use_tf32`` "0" for an
    fp32 one (TF32 is the provider's default for float32 convolutions and GEMMs); none for an
    fp16 one, or under onnxruntime :data:`USE_TF32_VERSION`, which refuses the option."""
    if fp16 or version_tuple(onnxruntime_version) < version_tuple(USE_TF32_VERSION):
        return {}
    return {"use_tf32": "0"}


def session_precision(providers: Sequence[str], reported: Mapping[str, Mapping[str, str]],
                      fp16: bool) -> str:
    """The precision a session on ``providers`` runs an export at: ``"fp16"`` for an fp16
    export; for an fp32 one :data:`TF32` on ONNX Runtime's TensorRT provider (TensorRT's builder
    allows TF32 by default, and the provider has no option to clear it) or on a CUDA provider
    whose options (``reported``: the session's ``get_provider_options()``) do not say
    ``use_tf32`` "0"; else ``"fp32"``."""
    if fp16:
        return "fp16"
    if TENSORRT_EP in providers:
        return TF32
    if CUDA_EP in providers and (reported.get(CUDA_EP) or {}).get("use_tf32") != "0":
        return TF32
    return "fp32"



def _session_source(path: Path) -> str | bytes:
    """What ``InferenceSession`` is given for ``path``: the path, or the file's bytes where the
    name is not valid UTF-8 (ONNX Runtime's binding takes only encodable str paths; an
    export's models are single files, without external data)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the name (surrogate escapes)
        return path.read_bytes()
    return str(path)


class OnnxRuntimeRunner(RunnerBase):
    """Runs an exported Tiny Faces ONNX model with ONNX Runtime.

    Args:
        onnx_path: the ``.onnx`` file (fp32, or fp16 with float32 I/O).
        providers: ``None`` for CPU, ``"auto"`` for the best available (TensorRT, CUDA, CPU),
            or a list of provider names / aliases in priority order.
        threads: intra-op thread count (``None``: ONNX Runtime's default, all cores).
        provider_options: options per provider name (e.g. the CUDA stream), for subclasses.
        tensorrt: how the TensorRT provider, where it is among ``providers``, builds its
            engine (the export's profile, the engine cache: :mod:`.ort_tensorrt`);
            ``create_detector`` gives the export folder's. Without it that provider rebuilds
            its engine for the input shapes as they come (warned).
        fp16: whether ``onnx_path`` is an fp16 export (None: :func:`export_is_fp16`); an fp32
            one runs on the CUDA provider without TF32 (``use_tf32`` "0",
            :func:`cuda_provider_options`).

    Attributes:
        precision: what the network runs at: ``"fp32"``, ``"fp16"``, or :data:`TF32` (an fp32
            export on ONNX Runtime's TensorRT provider, or on a CUDA provider too old to turn
            TF32 off), as :func:`session_precision` reads the session.

    Raises:
        BackendUnavailableError: onnxruntime is not installed.
        TinyFacesError: an unknown provider name, or ``threads`` < 1.
        ManifestError: the file is missing, not a loadable ONNX model, or not shaped like the
            detector network (one (1, 3, h, w) float input, a 125-channel output).
    """

    def __init__(self, onnx_path: str | os.PathLike[str],
                 providers: str | Sequence[str] | None = None,
                 threads: int | None = None, *,
                 provider_options: dict[str, dict[str, str]] | None = None,
                 tensorrt: TensorrtEpSettings | None = None, fp16: bool | None = None) -> None:
        ort = import_onnxruntime()
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise ManifestError(f"ONNX model not found: {self.onnx_path}")
        self.fp16 = export_is_fp16(self.onnx_path) if fp16 is None else bool(fp16)
        check_threads(threads)
        chosen = resolve_providers(providers, ort.get_available_providers(),
                                   ort.get_all_providers())
        options = ort.SessionOptions()
        # fatal only: ORT prints its errors (ANSI-coloured) to stderr, outside logging, and
        # the NetworkRunError raised holds the same text
        options.log_severity_level = 4
        # no memory plan kept per input shape: with free height and width, every new image
        # size added one per pyramid level for the session's life (a service's memory grew
        # by ~0.15 MB per new shape, without end); no cost measured on repeated sizes
        options.enable_mem_pattern = False
        if threads is not None:
            options.intra_op_num_threads = threads
        with_options = {p: dict((provider_options or {}).get(p, {})) for p in chosen}
        if CUDA_EP in with_options:  # float32 convolutions in fp32, not the provider's TF32
            with_options[CUDA_EP] = {**cuda_provider_options(self.fp16, ort.__version__),
                                     **with_options[CUDA_EP]}

        def make() -> Any:
            # no silent retry on other providers (printed to stdout, where tf-detect --json
            # writes); a provider that fails is an error the caller sees and handles
            return ort.InferenceSession(_session_source(self.onnx_path), sess_options=options,
                                        providers=list(with_options.items()), enable_fallback=0)

        if TENSORRT_EP in chosen and tensorrt is None:
            log.warning("ONNX Runtime's TensorRT provider without an input-shape profile builds "
                        "its engine at the first run and again for every input shape outside "
                        "those seen so far (minutes each); give the export's profile "
                        "(tensorrt=TensorrtEpSettings(folder.profile), as create_detector does)")
        try:
            if TENSORRT_EP in chosen and tensorrt is not None:
                # the TensorRT provider builds or reads its engine as the session is made
                self.session = open_with_engine_cache(tensorrt, self.onnx_path,
                                                      with_options[TENSORRT_EP], make)
            else:
                self.session = make()
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ManifestError(f"cannot load ONNX model {self.onnx_path}: {first_line(exc)}") \
                from exc
        self.providers: list[str] = list(self.session.get_providers())
        dropped = [p for p in chosen if p not in self.providers]
        if dropped:
            log.warning("ONNX Runtime could not initialise %s; running on %s",
                        dropped, self.providers)
        log.info("ONNX Runtime %s session for %s on providers %s",
                 ort.__version__, self.onnx_path.name, self.providers)
        reported = getattr(self.session, "get_provider_options", dict)()
        #: What the network runs at: "fp32", "fp16", or :data:`TF32` (:func:`session_precision`).
        self.precision = session_precision(self.providers, reported, self.fp16)
        if self.precision == TF32:
            why = ("TensorRT's default, which ONNX Runtime's TensorRT provider cannot turn off"
                   if TENSORRT_EP in self.providers else "the CUDA provider kept use_tf32 on")
            log.info("%s runs with TF32 convolutions on %s (%s): precision %s, fp16-like "
                     "accuracy", self.onnx_path.name, self.providers[0], why, TF32)
        self.input_name, self.output_name = self._check_signature()
        batch_dim = self.session.get_inputs()[0].shape[0]
        #: The explicit profile of the TensorRT engine running the network; None without one.
        self.tensorrt = tensorrt if TENSORRT_EP in self.providers else None
        # an export with a dynamic batch axis runs a pyramid level for several images at once
        batch = not isinstance(batch_dim, int)
        self.capabilities = RunnerCapabilities(
            batch=batch, max_batch=self._max_batch() if batch else None,
            gpu=any(p in GPU_PROVIDERS for p in self.providers))

    def _max_batch(self) -> int | None:
        """The most images one run takes: a TensorRT engine's profile; on the CPU alone
        :data:`HOST_MAX_BATCH`; elsewhere (CUDA) no cap."""
        if self.tensorrt is not None:
            return self.tensorrt.profile.max_batch
        return HOST_MAX_BATCH if self.providers == [CPU] else None

    def check_levels(self, levels: Sequence[Any]) -> None:
        """Refuses a level outside the profile of the TensorRT provider's engine (TensorRT
        would fail on it mid-image); any level runs on the other providers."""
        if self.tensorrt is not None:
            self.tensorrt.check(levels)

    def _check_signature(self) -> tuple[str, str]:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise ManifestError(f"{self.onnx_path}: expected 1 network input, found {len(inputs)}")
        inp, out = inputs[0], outputs[0]
        fixed_channels = len(inp.shape) == 4 and isinstance(inp.shape[1], int)
        if inp.type != "tensor(float)" or len(inp.shape) != 4 or \
                fixed_channels and inp.shape[1] != 3:
            raise ManifestError(f"{self.onnx_path}: input {inp.name!r} is {inp.type} "
                                f"{inp.shape}, expected a float32 (1, 3, h, w) tensor")
        channels = out.shape[1] if len(out.shape) == 4 else -1
        if out.type != "tensor(float)" or channels != NUM_CHANNELS:
            raise ManifestError(f"{self.onnx_path}: output {out.name!r} is {out.type} "
                                f"{out.shape}, expected float32 (1, {NUM_CHANNELS}, h, w)")
        return inp.name, out.name

    def run(self, net_input: np.ndarray) -> np.ndarray:
        """Runs the network on an (N, 3, h, w) float32 input (N = 1 unless
        ``capabilities.batch``).

        Returns:
            The (N, 125, h', w') float32 score map (``h' = ceil(h/8)`` for the pytorch
            variant; see ``TinyFacesNet.output_size`` for matconvnet).

        Raises:
            NetworkRunError: ONNX Runtime failed on the input (out of memory, a provider
                error); its exception is the cause. The runner can run again.
        """
        x = check_network_input(net_input, batch=self.capabilities.batch)
        if self.tensorrt is not None:
            self.tensorrt.check([x.shape])
        session = self._require_open(self.session)
        (scores,) = interruptible_run(session, [self.output_name], {self.input_name: x})
        if scores.ndim != 4 or scores.shape[:2] != (x.shape[0], NUM_CHANNELS):
            raise ManifestError(f"{self.onnx_path}: network returned shape {scores.shape} for "
                                f"input {x.shape}, expected ({x.shape[0]}, {NUM_CHANNELS}, h', w')")
        return np.asarray(scores, dtype=np.float32)

    def close(self) -> None:
        """Drops the session (ONNX Runtime frees its memory once no run holds it any more);
        idempotent. A closed runner may not run again."""
        self.session = None

    def __repr__(self) -> str:
        return f"OnnxRuntimeRunner({str(self.onnx_path)!r}, providers={self.providers})"
