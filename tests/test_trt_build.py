"""TensorRT engine build: the parts testable without TensorRT, and a real build where it imports.

Without TensorRT the command line, the lazy import, the error type and the build's own logic
are checked, the last over a stand-in module (``_StandInTensorRT``: what build_engine asks of
TensorRT, the bindings' return values and their swallowing of callback exceptions, as read in
the TensorRT 10/11 sources). That shows the logic, not that TensorRT builds the engine: the
build itself is tested (``tensorrt`` + ``gpu`` markers) only where ``tensorrt`` imports and a
GPU is present.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import types
from pathlib import Path

import pytest

from tinyfaces_trt.export.trt_build import (TensorRTUnavailableError, build_engine, import_tensorrt,
                                            tensorrt_problem, tensorrt_version, trtexec_command)
from tinyfaces_trt.core.cli import interrupt_on_sigterm
from tinyfaces_trt.core.errors import BackendUnavailableError
from tinyfaces_trt.core.profiles import Profile

HAS_TRT = tensorrt_version() is not None
PROFILE = Profile((1, 3, 32, 32), (1, 3, 96, 128), (1, 3, 128, 160))


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def test_trtexec_command_has_exact_profile_and_options():
    """Valid for TensorRT 10 and 11 (11 removed --fp16; --stronglyTyped is a no-op there) and
    the same engine as build_engine: fp16 strongly typed from the fp16 ONNX, fp32 without
    TF32 (trtexec's default is on)."""
    cmd = trtexec_command("out dir/model_fp16.onnx", "out dir/model_fp16.engine", PROFILE,
                          fp16=True, workspace_gb=2.5, timing_cache="cache.bin")
    assert cmd == ("trtexec '--onnx=out dir/model_fp16.onnx' --minShapes=image:1x3x32x32 "
                   "--optShapes=image:1x3x96x128 --maxShapes=image:1x3x128x160 --stronglyTyped "
                   "--memPoolSize=workspace:2560M '--saveEngine=out dir/model_fp16.engine' "
                   "--timingCacheFile=cache.bin")
    fp32 = trtexec_command("m.onnx", "m.engine", PROFILE, fp16=False)
    assert fp32 == ("trtexec --onnx=m.onnx --minShapes=image:1x3x32x32 --optShapes=image:1x3x96x128 "
                    "--maxShapes=image:1x3x128x160 --noTF32 --memPoolSize=workspace:4096M "
                    "--saveEngine=m.engine")


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed")
def test_missing_tensorrt_is_a_backend_error(tmp_path):
    assert tensorrt_version() is None
    with pytest.raises(TensorRTUnavailableError, match="needs NVIDIA TensorRT >= 10, which is not installed"):
        import_tensorrt()
    with pytest.raises(BackendUnavailableError):  # the CLI maps this subclass to exit code 3
        build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", PROFILE)
    assert not (tmp_path / "model.engine").exists()


def test_a_tensorrt_older_than_10_is_named_with_its_version(monkeypatch):
    """What tf-export --engine prints before "wrote ONNX only" (a stand-in module that has
    only a version: nothing of TensorRT itself runs here)."""
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1",
                                                                       __name__="tensorrt"))
    assert tensorrt_problem() == "NVIDIA TensorRT 8.6.1 is older than 10"
    assert tensorrt_version() is None
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__name__="tensorrt"))
    assert tensorrt_problem() == "NVIDIA TensorRT has no version to check against 10"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails: not installed
    assert tensorrt_problem() == "NVIDIA TensorRT is not installed"


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRT and _has_gpu()), reason="needs the tensorrt package and a CUDA GPU")
@pytest.mark.parametrize("fp16", [False, True])
def test_build_engine_with_profile_and_timing_cache(tmp_path, fp16):
    from tinyfaces_trt.export.export_pipeline import export_model
    from tinyfaces_trt.export.model import build_model
    from tinyfaces_trt.core.manifest import load_export_folder

    trt = import_tensorrt()
    model = build_model(depth=50, seed=0)
    cache = tmp_path / "timing.cache"
    lines: list[str] = []
    export_model(model, model.detector_config(), tmp_path, fp16=fp16, engine=True, profile=PROFILE,
                 workspace_gb=1.0, timing_cache=cache, verify=False, log=lines.append)
    folder = load_export_folder(tmp_path)
    engine_path = folder.engine_path(fp16)
    assert cache.stat().st_size > 0
    assert folder.manifest["engines"]["engine_fp16" if fp16 else "engine_fp32"]["tensorrt"] == trt.__version__
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
    assert engine is not None and engine.num_optimization_profiles == 1
    assert [tuple(s) for s in engine.get_tensor_profile_shape("image", 0)] == [PROFILE.min, PROFILE.opt, PROFILE.max]
    assert engine.get_tensor_dtype("image") == engine.get_tensor_dtype("scores") == trt.float32
    assert any("building TensorRT engine" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# build_engine's logic over a stand-in TensorRT (not a verification of TensorRT itself)
# ---------------------------------------------------------------------------------------------

class _StandInTensorRT(types.ModuleType):
    """The TensorRT 10/11 Python surface build_engine uses. Like the real bindings, an
    exception raised in a logger or progress-monitor callback is printed and dropped, and one
    raised in ``step_complete`` cancels the build (which then returns None)."""

    def __init__(self, version: str = "11.1.0", cache_ok: bool = True,
                 no_cache: bool = False) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        self.cache_ok, self.no_cache = cache_ok, no_cache
        this = self

        class SeverityValue(int):
            @property
            def name(self) -> str:
                return {1: "ERROR", 2: "WARNING"}[int(self)]

        class ILogger:
            Severity = types.SimpleNamespace(WARNING=SeverityValue(2), ERROR=SeverityValue(1))

            def __init__(self) -> None:
                pass

        def tell(logger, severity, message):  # the bindings: print and drop what log raises
            try:
                logger.log(severity, message)
            except BaseException as exc:
                print(f"[ERROR] Exception caught in log(): {exc!r}")

        class IProgressMonitor:
            def __init__(self) -> None:
                pass

        class Config:
            def __init__(self) -> None:
                self.progress_monitor = None
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                this.calls.append(("workspace", size))

            def clear_flag(self, flag):
                this.calls.append(("clear", flag))

            def add_optimization_profile(self, profile):
                this.calls.append(("profile", profile.shapes))

            def create_timing_cache(self, blob):
                this.calls.append(("create_cache", bytes(blob)))
                return None if blob == b"damaged" or this.no_cache else types.SimpleNamespace(
                    serialize=lambda: b"cache:" + bytes(blob))

            def set_timing_cache(self, cache, ignore_mismatch):
                ok = this.cache_ok or cache.serialize() == b"cache:"
                this.calls.append(("set_cache", cache.serialize(), ignore_mismatch, ok))
                if ok:
                    self.cache = cache
                return ok

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger) -> None:
                self.logger = logger

            def create_network(self, flags):
                this.calls.append(("network", flags))
                return types.SimpleNamespace(num_inputs=1, get_input=lambda i: types.SimpleNamespace(name="image"))

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                profile = types.SimpleNamespace(shapes=None)
                profile.set_shape = lambda name, lo, opt, hi: setattr(profile, "shapes", (name, lo, opt, hi))
                return profile

            def build_serialized_network(self, network, config):
                monitor = config.progress_monitor
                tell(self.logger, ILogger.Severity.WARNING, "building: tactics may be slow")
                for step in range(3):
                    try:
                        monitor.phase_start("Building engine", None, 3) if step == 0 else None
                        go_on = monitor.step_complete("Building engine", step)
                    except BaseException as exc:  # the bindings: print, then cancel
                        print(f"[ERROR] Exception caught in step_complete(): {exc!r}")
                        go_on = False
                    if not go_on:
                        this.calls.append(("cancelled", step))
                        return None
                try:
                    monitor.phase_finish("Building engine")
                except BaseException as exc:
                    print(f"[ERROR] Exception caught in phase_finish(): {exc!r}")
                return memoryview(b"engine")

        class OnnxParser:
            def __init__(self, network, logger) -> None:
                self.num_errors = 0
                self.logger = logger

            def parse_from_file(self, path):
                this.calls.append(("parse", Path(path).name))
                tell(self.logger, ILogger.Severity.WARNING, "parsing: an opset feature")
                return True

        self.ILogger, self.IProgressMonitor, self.Builder, self.OnnxParser = (
            ILogger, IProgressMonitor, Builder, OnnxParser)
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        flags = {"TF32": "TF32"} if version.startswith("11") else {"TF32": "TF32", "FP16": "FP16"}
        self.BuilderFlag = types.SimpleNamespace(**flags)


def _build(monkeypatch, tmp_path, trt, fp16=True, log=None, cache=None):
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    lines = []
    details = build_engine(tmp_path / "model.onnx", tmp_path / "model.engine", PROFILE, fp16=fp16,
                           onnx_fp16=tmp_path / "model_fp16.onnx", timing_cache=cache,
                           log=log or lines.append)
    return details, lines


@pytest.mark.parametrize("version", ["10.9.0", "11.1.0"])
def test_an_fp16_engine_is_built_strongly_typed_from_the_fp16_onnx(monkeypatch, tmp_path, version):
    trt = _StandInTensorRT(version)
    details, _ = _build(monkeypatch, tmp_path, trt)
    assert ("parse", "model_fp16.onnx") in trt.calls and ("network", 1 << 0) in trt.calls
    assert not any(call[0] == "clear" for call in trt.calls)  # TF32 may stay for fp16
    assert (tmp_path / "model.engine").read_bytes() == b"engine"
    assert details["strongly_typed"] and details["source_onnx"] == "model_fp16.onnx"
    fp32 = _StandInTensorRT(version)
    details, _ = _build(monkeypatch, tmp_path, fp32, fp16=False)
    assert ("parse", "model.onnx") in fp32.calls and ("network", 0) in fp32.calls
    assert ("clear", "TF32") in fp32.calls and not details["tf32"]
    assert details["strongly_typed"] == version.startswith("11")  # every 11 network is


def test_a_refused_timing_cache_is_replaced_with_a_warning(monkeypatch, tmp_path):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"from another gpu")
    trt = _StandInTensorRT(cache_ok=False)  # TensorRT refuses a loaded cache
    _, lines = _build(monkeypatch, tmp_path, trt, cache=cache)
    assert any(f"WARNING: TensorRT refused the timing cache {cache}" in line for line in lines)
    assert f"  timing cache: new, {cache}" in lines
    assert cache.read_bytes() == b"cache:"  # the new one, saved after the build
    cache.write_bytes(b"damaged")  # create_timing_cache returns None
    _, lines = _build(monkeypatch, tmp_path, _StandInTensorRT(), cache=cache)
    assert any("refused the timing cache" in line for line in lines)
    cache.write_bytes(b"good")
    trt = _StandInTensorRT()
    _, lines = _build(monkeypatch, tmp_path, trt, cache=cache)
    assert ("set_cache", b"cache:good", False, True) in trt.calls  # mismatches not ignored
    assert f"  timing cache: loaded 4 bytes from {cache}" in lines
    assert cache.read_bytes() == b"cache:good"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("where, cancelled_at", [
    ("parsing:", None),  # in the logger, while parsing: raised before the build starts
    ("building:", 0),  # in the logger, during the build
    ("TensorRT: Building engine (3 steps) ...", 0),  # in phase_start
    ("TensorRT: Building engine done in", None),  # in phase_finish: the build has ended
])
def test_ctrl_c_during_the_build_cancels_it_and_is_an_interrupt(monkeypatch, tmp_path, capsys,
                                                                where, cancelled_at, sig):
    """A signal arriving while TensorRT parses or builds (its handler runs in the callbacks,
    the only Python code then; an interrupt raised there would be printed and dropped by the
    bindings) cancels the build at its next step, or after it has ended, and is raised as an
    interrupt, so tf-export ends with 130, not "failed to build"."""
    def log(line):
        if where in line:
            os.kill(os.getpid(), sig)  # the handler runs at the next bytecode, here

    # the handlers a CLI run has (cli_interrupts): both raise a KeyboardInterrupt
    handlers = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: interrupt_on_sigterm}
    saved = {s: signal.signal(s, handler) for s, handler in handlers.items()}
    try:
        trt = _StandInTensorRT()
        with pytest.raises(KeyboardInterrupt):
            _build(monkeypatch, tmp_path, trt, log=log)
        assert {s: signal.getsignal(s) for s in handlers} == handlers  # put back
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert not (tmp_path / "model.engine").exists()
    cancelled = [step for name, *step in trt.calls if name == "cancelled"]
    assert cancelled == ([] if cancelled_at is None else [[cancelled_at]])
    assert "Exception caught" not in capsys.readouterr().out  # nothing reached the bindings


def test_other_signal_handlers_are_left_alone_during_the_build(monkeypatch, tmp_path):
    """A program's own SIGTERM handler (a flag for a clean stop) keeps its signal."""
    got = []

    def own(signum, frame):
        got.append(signum)

    def log(line):
        if "building:" in line:
            assert signal.getsignal(signal.SIGTERM) is own
            os.kill(os.getpid(), signal.SIGTERM)

    saved = signal.signal(signal.SIGTERM, own)
    try:
        details, _ = _build(monkeypatch, tmp_path, _StandInTensorRT(), log=log)
    finally:
        signal.signal(signal.SIGTERM, saved)
    assert got == [signal.SIGTERM] and details["file"] == "model.engine"


def test_an_interrupt_raised_inside_a_callback_is_kept_too(monkeypatch, tmp_path, capsys):
    """Where the signal handler raises anyway (the build runs outside the main thread, whose
    handlers stay as they are), an interrupt inside a callback is kept and raised after."""
    def log(line):
        if "TensorRT: Building engine (3 steps)" in line:
            raise KeyboardInterrupt

    trt = _StandInTensorRT()
    with pytest.raises(KeyboardInterrupt):
        _build(monkeypatch, tmp_path, trt, log=log)
    assert ("cancelled", 0) in trt.calls and not (tmp_path / "model.engine").exists()
    assert "Exception caught" not in capsys.readouterr().out


def test_a_timing_cache_tensorrt_cannot_make_is_left_out_with_a_warning(monkeypatch, tmp_path):
    cache = tmp_path / "timing.cache"
    _, lines = _build(monkeypatch, tmp_path, _StandInTensorRT(no_cache=True), cache=cache)
    assert "  WARNING: TensorRT made no timing cache; building without one" in lines
    assert (tmp_path / "model.engine").read_bytes() == b"engine" and not cache.exists()
