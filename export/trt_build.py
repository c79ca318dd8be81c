"""TensorRT engine build from the exported ONNX (TensorRT 10 Python API, imported lazily).

Nothing here has run against a real TensorRT in this repository's CI: the workplace that
wrote it has neither TensorRT nor a GPU. The code follows the TensorRT 10 Python API
documentation; ``tests/test_trt_build.py`` exercises it wherever ``tensorrt`` imports.

Steps: ``trt.Builder`` -> ``create_network(0)`` (explicit batch is the only mode in TRT 10)
-> ``trt.OnnxParser.parse_from_file`` (every parser error is reported) -> builder config with
a WORKSPACE memory-pool limit, the FP16 flag for fp16 engines (TF32 cleared for fp32 engines,
which TensorRT otherwise enables by default), an optional timing cache
(loaded before, saved after the build), an ``IProgressMonitor`` printing the builder's
top-level phases -> one optimization profile -> ``build_serialized_network`` -> engine file.

fp16 engines: TensorRT 10 builds them from the fp32 ``model.onnx`` with ``BuilderFlag.FP16``
(weak typing: the builder picks fp16 kernels where they are faster and keeps the float32
input/output). TensorRT 11 removed that flag; there the fp16 engine is built strongly typed
from ``model_fp16.onnx``, whose precision is already in the graph (float32 I/O, Casts inside).

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

import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

# TensorRTUnavailableError and import_tensorrt live in core (shared with the runtime's runner);
# they are imported here for this module and its callers (tf-export maps the error to exit 3).
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
    """The ``trtexec`` command line (TensorRT 10) building the same engine as :func:`build_engine`."""
    args = ["trtexec", f"--onnx={onnx_path}", *profile.trtexec_args(input_name)]
    if fp16:
        args.append("--fp16")
    args += [f"--memPoolSize=workspace:{int(round(workspace_gb * 1024))}M", f"--saveEngine={engine_path}"]
    if timing_cache:
        args.append(f"--timingCacheFile={timing_cache}")
    return shlex.join(args)


def _make_logger(trt: ModuleType, log: Log) -> Any:
    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.WARNING):  # lower value = more severe
                log(f"  [TensorRT {severity.name}] {msg}")

    return _Logger()


def _make_progress_monitor(trt: ModuleType, log: Log) -> Any | None:
    """An IProgressMonitor logging top-level builder phases with their duration."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._top: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                with self._lock:
                    self._top[phase_name] = time.perf_counter()
                log(f"  TensorRT: {phase_name} ({num_steps} steps) ...")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                start = self._top.pop(phase_name, None)
            if start is not None:
                log(f"  TensorRT: {phase_name} done in {time.perf_counter() - start:.1f} s")

    return _Progress()


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
        onnx_fp32: the fp32 ONNX model (the source for fp32 engines, and for fp16 engines on
            TensorRT 10 with ``BuilderFlag.FP16``).
        engine_path: where the serialized engine goes.
        profile: min/opt/max shapes of ``input_name``.
        fp16: build with fp16 kernels.
        onnx_fp16: the fp16 ONNX model; the source of fp16 engines when the TensorRT has no
            FP16 builder flag (TensorRT 11, strong typing).
        workspace_gb: WORKSPACE memory-pool limit in GiB.
        timing_cache: file to load the timing cache from (if it exists) and save it to.
        log: progress sink.

    Returns:
        Build details for the manifest: source ONNX file name, precision, typing mode,
        TensorRT version, workspace, build seconds.

    Raises:
        TensorRTUnavailableError: tensorrt does not import.
        EngineBuildError: parsing or building failed (TensorRT's messages included).
    """
    trt = import_tensorrt()
    start = time.perf_counter()
    logger = _make_logger(trt, log)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # TypeError/RuntimeError when CUDA is unusable
        raise EngineBuildError(f"TensorRT could not create a builder (is a CUDA GPU and driver present?): {exc}") from exc
    if builder is None:
        raise EngineBuildError("TensorRT could not create a builder (is a CUDA GPU and driver present?)")

    has_fp16_flag = hasattr(trt.BuilderFlag, "FP16")
    strongly_typed = fp16 and not has_fp16_flag
    source = Path(onnx_fp32)
    if strongly_typed:
        if onnx_fp16 is None:
            raise EngineBuildError("this TensorRT has no FP16 builder flag (strong typing only): an fp16 engine "
                                   "needs model_fp16.onnx; export with --fp16")
        source = Path(onnx_fp16)
    log(f"  TensorRT {trt.__version__}: parsing {source.name}")
    network, _parser = _parse(trt, builder, source, strongly_typed, logger)
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if input_name not in names:
        raise EngineBuildError(f"{source} has inputs {names}; expected {input_name!r}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16 and has_fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    tf32 = fp16  # TF32 is on by default; an fp32 engine must be fp32 to meet the fp32 parity tolerance
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    monitor = _make_progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)

    cache_path = Path(timing_cache) if timing_cache else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        log(f"  timing cache: {'loaded ' + str(len(blob)) + ' bytes from' if blob else 'new,'} {cache_path}")
        config.set_timing_cache(config.create_timing_cache(blob), False)  # ignore_mismatch=False

    log(f"  building {'fp16' if fp16 else 'fp32'} engine (profile min {list(profile.min)}, "
        f"opt {list(profile.opt)}, max {list(profile.max)}); this takes minutes")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {source} (see the TensorRT errors above)")
    write_bytes_atomic(engine_path, bytes(serialized))
    if cache_path is not None:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        log(f"  timing cache saved to {cache_path}")
    seconds = time.perf_counter() - start
    return {
        "file": Path(engine_path).name,
        "source_onnx": source.name,
        "precision": "fp16" if fp16 else "fp32",
        "strongly_typed": strongly_typed,
        "tf32": tf32,
        "tensorrt": str(trt.__version__),
        "workspace_gb": workspace_gb,
        "build_seconds": round(seconds, 1),
    }
