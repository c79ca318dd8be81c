"""TensorRT engine build from the exported ONNX (TensorRT 10 and 11 Python API, imported
lazily).

Nothing here has run against a real TensorRT in this repository's CI: the workplace that
wrote it has neither TensorRT nor a GPU. The code follows the TensorRT 10 and 11 Python API
(documentation and the bindings' sources); ``tests/test_trt_build.py`` exercises it wherever
``tensorrt`` imports, and its logic over a stand-in module everywhere.

Steps: ``trt.Builder`` -> ``create_network`` (explicit batch, the only mode since TRT 10;
strongly typed for fp16) -> ``trt.OnnxParser.parse_from_file`` (every parser error is
reported) -> builder config with a WORKSPACE memory-pool limit (TF32 cleared for fp32
engines, which TensorRT otherwise enables by default), an optional timing cache (loaded
before, saved after the build; one TensorRT refuses is replaced by a new one, with a
warning), an ``IProgressMonitor`` printing the builder's top-level phases (a Ctrl-C during
the build cancels it and ends the run as an interrupt) -> one optimization profile ->
``build_serialized_network`` -> engine file.

fp16 engines are built strongly typed from ``model_fp16.onnx``, whose precision is already in
the graph (float32 I/O, Casts inside; its parity is checked with ONNX Runtime at export): the
only fp16 route of TensorRT 11, which removed the FP16 builder flag (weak typing), and the
one TensorRT 10.12+ recommends, so both versions build the same engine and the printed
``trtexec`` command (``--stronglyTyped``, a no-op on 11) builds it too.

One optimization profile, not one per pyramid level:

* The level shapes depend on the image size, so per-level profiles would only fit one image
  size (a fixed camera stream); for arbitrary images they cannot be enumerated.
* Each profile needs its own execution context (or a profile switch before each level),
  and contexts held together multiply activation memory; build time grows with the number
  of profiles too.
* Where the time goes: with the adaptive pyramid the levels' pixel counts fall by 2x per
  half-octave and 4x per octave, so the 2x level alone holds roughly half of all pixels and
  the two largest levels about 80% (arithmetic on the pyramid, e.g. 1080x1920: 2x, 1.41x,
  1x, 1/2x, ...). Tuning kernels for that largest shape (``opt``) targets most of the work;
  the small levels cost little whichever kernels they get.

Whether per-level profiles would still win on the small levels has not been measured (no
TensorRT or GPU here); the profile is recorded in the manifest, and a per-level experiment
only needs ``--image-size`` profiles built separately.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

# TensorRTUnavailableError and import_tensorrt live in core (shared with the runtime's runner);
# they are imported here for this module and its callers (tf-export maps the error to exit 3).
from tinyfaces_trt.core.cli import interrupt_on_sigterm
from tinyfaces_trt.core.errors import TensorRTUnavailableError, TinyFacesError
from tinyfaces_trt.core.optional import import_tensorrt
from tinyfaces_trt.core.files import write_bytes_atomic
from tinyfaces_trt.core.manifest import INPUT_NAME
from tinyfaces_trt.core.profiles import Profile

Log = Callable[[str], None]
DEFAULT_WORKSPACE_GB = 4.0


class EngineBuildError(TinyFacesError):
    """TensorRT could not parse the ONNX file or build the engine."""


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or None when it is not usable (absent, broken, < 10)."""
    try:
        return str(import_tensorrt().__version__)
    except TensorRTUnavailableError:
        return None


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot build engines here, in a few words ("NVIDIA TensorRT is not
    installed", "NVIDIA TensorRT 8.6.1 is older than 10", ...); None when a usable one imports."""
    try:
        import_tensorrt()
    except TensorRTUnavailableError as exc:
        return exc.problem or str(exc)
    return None


def trtexec_command(onnx_path: str | Path, engine_path: str | Path, profile: Profile, *, fp16: bool,
                    workspace_gb: float = DEFAULT_WORKSPACE_GB, timing_cache: str | Path | None = None,
                    input_name: str = INPUT_NAME) -> str:
    """The ``trtexec`` command line (TensorRT 10 and 11) building the same engine as
    :func:`build_engine`: ``onnx_path`` is ``model_fp16.onnx`` for fp16 (strongly typed),
    ``model.onnx`` for fp32 (TF32 off)."""
    args = ["trtexec", f"--onnx={onnx_path}", *profile.trtexec_args(input_name)]
    args.append("--stronglyTyped" if fp16 else "--noTF32")
    args += [f"--memPoolSize=workspace:{int(round(workspace_gb * 1024))}M", f"--saveEngine={engine_path}"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def _make_logger(trt: ModuleType, log: Log, interrupts: _Interrupts) -> Any:
    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            with interrupts.caught():
                if int(severity) <= int(trt.ILogger.Severity.WARNING):  # lower = more severe
                    log(f"  [TensorRT {severity.name}] {msg}")

    return _Logger()


class _Interrupts:
    """Ctrl-C (or SIGTERM in a CLI) during parsing and building. TensorRT's Python bindings
    catch and print every exception of a logger or progress-monitor callback, the only Python
    code that runs then, so an interrupt raised there would be lost (or read as a failed
    build). While :meth:`deferred` holds, the signals that would raise it only mark it
    pending; the progress monitor then cancels the build at its next step, and
    :meth:`raise_pending` raises it once TensorRT has returned. An interrupt raised in a
    callback anyway (another thread's handlers) is kept the same way (:meth:`caught`)."""

    def __init__(self) -> None:
        self.pending: BaseException | None = None

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """SIGINT and SIGTERM, where their handler would raise a KeyboardInterrupt (Python's
        for SIGINT, a CLI's for SIGTERM: :func:`~tinyfaces_trt.core.cli.cli_interrupts`), mark
        it pending instead (main thread only: Python runs handlers there). Other handlers
        stay as they are."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        raising = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: interrupt_on_sigterm}
        saved = {sig: handler for sig, handler in raising.items() if signal.getsignal(sig) is handler}
        for sig in saved:
            signal.signal(sig, self._mark)
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)

    def _mark(self, signum: int, frame: Any) -> None:
        self.pending = self.pending or KeyboardInterrupt()

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        try:
            yield
        except (KeyboardInterrupt, SystemExit) as exc:
            self.pending = self.pending or exc

    def raise_pending(self) -> None:
        if self.pending is not None:
            raise self.pending


def _make_progress_monitor(trt: ModuleType, log: Log, interrupts: _Interrupts) -> Any | None:
    """An IProgressMonitor logging top-level builder phases with their duration, cancelling
    the build once an interrupt is pending."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._top: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with interrupts.caught():
                if parent_phase is None:
                    with self._lock:
                        self._top[phase_name] = time.perf_counter()
                    log(f"  TensorRT: {phase_name} ({num_steps} steps) ...")

        def step_complete(self, phase_name: str, step: int) -> bool:
            with interrupts.caught():
                return interrupts.pending is None  # False cancels the build
            return False

        def phase_finish(self, phase_name: str) -> None:
            with interrupts.caught():
                with self._lock:
                    start = self._top.pop(phase_name, None)
                if start is not None:
                    log(f"  TensorRT: {phase_name} done in {time.perf_counter() - start:.1f} s")

    return _Progress()


def _use_timing_cache(config: Any, path: Path, log: Log) -> bool:
    """Loads the timing cache at ``path`` into ``config``: a new one when there is none, or
    when TensorRT refuses the file (another TensorRT version or GPU, or damaged). False when
    TensorRT makes none at all (the build goes on without)."""
    blob = path.read_bytes() if path.is_file() else b""
    if blob and not _set_timing_cache(config, blob):
        log(f"  WARNING: TensorRT refused the timing cache {path} (another TensorRT version or "
            "GPU, or a damaged file); building with a new one, which replaces it")
        blob = b""
    if not blob and not _set_timing_cache(config, b""):
        log("  WARNING: TensorRT made no timing cache; building without one")
        return False
    log(f"  timing cache: {'loaded ' + str(len(blob)) + ' bytes from' if blob else 'new,'} {path}")
    return True


def _set_timing_cache(config: Any, blob: bytes) -> bool:
    """``create_timing_cache`` + ``set_timing_cache`` (mismatches refused); whether both worked."""
    try:
        cache = config.create_timing_cache(blob)
        return cache is not None and bool(config.set_timing_cache(cache, False))
    except Exception:  # the bindings raise on some damaged data
        return False


def _parse(trt: ModuleType, builder: Any, onnx_path: Path, strongly_typed: bool, logger: Any) -> tuple[Any, Any]:
    flags = 0
    if strongly_typed:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}:\n  " + "\n  ".join(errors or ["(no details)"]))
    return network, parser


def build_engine(onnx_fp32: str | Path, engine_path: str | Path, profile: Profile, *, fp16: bool = False,
                 onnx_fp16: str | Path | None = None, workspace_gb: float = DEFAULT_WORKSPACE_GB,
                 timing_cache: str | Path | None = None, input_name: str = INPUT_NAME,
                 log: Log = print) -> dict[str, Any]:
    """Builds and writes a TensorRT engine with one optimization profile.

    Args:
        onnx_fp32: the fp32 ONNX model (the source of fp32 engines).
        engine_path: where the serialized engine goes.
        profile: min/opt/max shapes of ``input_name``.
        fp16: build an fp16 engine.
        onnx_fp16: the fp16 ONNX model, the source of fp16 engines (strongly typed).
        workspace_gb: WORKSPACE memory-pool limit in GiB.
        timing_cache: file to load the timing cache from (if it exists) and save it to.
        log: progress sink.

    Returns:
        Build details for the manifest: source ONNX file name, precision, typing mode,
        TensorRT version, workspace, build seconds.

    Raises:
        TensorRTUnavailableError: tensorrt does not import.
        EngineBuildError: parsing or building failed (TensorRT's messages included), or an
            fp16 engine without ``onnx_fp16``.
        KeyboardInterrupt: Ctrl-C (or SIGTERM in a CLI) during the build, which is cancelled.
    """
    trt = import_tensorrt()
    start = time.perf_counter()
    interrupts = _Interrupts()
    logger = _make_logger(trt, log, interrupts)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # TypeError/RuntimeError when CUDA is unusable
        raise EngineBuildError(f"TensorRT could not create a builder (is a CUDA GPU and driver present?): {exc}") from exc
    if builder is None:
        raise EngineBuildError("TensorRT could not create a builder (is a CUDA GPU and driver present?)")

    source = Path(onnx_fp32)
    if fp16:
        if onnx_fp16 is None:
            raise EngineBuildError("an fp16 engine is built strongly typed from model_fp16.onnx, "
                                   "which was not given; export with --fp16")
        source = Path(onnx_fp16)
    log(f"  TensorRT {trt.__version__}: parsing {source.name}")
    with interrupts.deferred():
        network, _parser = _parse(trt, builder, source, fp16, logger)
    interrupts.raise_pending()
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if input_name not in names:
        raise EngineBuildError(f"{source} has inputs {names}; expected {input_name!r}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    tf32 = fp16  # TF32 is on by default; an fp32 engine must be fp32 to meet the fp32 parity tolerance
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    monitor = _make_progress_monitor(trt, log, interrupts)
    if monitor is not None:
        config.progress_monitor = monitor
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)

    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None and not _use_timing_cache(config, cache_path, log):
        cache_path = None

    log(f"  building {'fp16' if fp16 else 'fp32'} engine (profile min {list(profile.min)}, "
        f"opt {list(profile.opt)}, max {list(profile.max)}); this takes minutes")
    with interrupts.deferred():
        serialized = builder.build_serialized_network(network, config)
    interrupts.raise_pending()  # the build was cancelled for it
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {source} (see the TensorRT errors above)")
    write_bytes_atomic(engine_path, bytes(serialized))
    cache = config.get_timing_cache() if cache_path is not None else None
    if cache is not None:
        write_bytes_atomic(cache_path, bytes(cache.serialize()))
        log(f"  timing cache saved to {cache_path}")
    elif cache_path is not None:
        log(f"  WARNING: TensorRT gave no timing cache to save; {cache_path} is unchanged")
    seconds = time.perf_counter() - start
    return {
        "file": Path(engine_path).name,
        "source_onnx": source.name,
        "precision": "fp16" if fp16 else "fp32",
        # every TensorRT 11 network is strongly typed (the creation flag is ignored there)
        "strongly_typed": fp16 or not hasattr(trt.BuilderFlag, "FP16"),
        "tf32": tf32,
        "tensorrt": str(trt.__version__),
        "workspace_gb": workspace_gb,
        "build_seconds": round(seconds, 1),
    }
