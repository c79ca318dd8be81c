"""TensorRT engine build: the parts testable without TensorRT, and a real build where it imports.

Nothing here mocks TensorRT: without it only the command line, the lazy import and the error
type are checked; the build itself is tested (``tensorrt`` + ``gpu`` markers) only where
``tensorrt`` imports and a GPU is present.
"""

from __future__ import annotations

import shutil
import sys
import types

import pytest

from tinyfaces_trt.export.trt_build import (TensorRTUnavailableError, build_engine, import_tensorrt,
                                            tensorrt_problem, tensorrt_version, trtexec_command)
from tinyfaces_trt.core.errors import BackendUnavailableError
from tinyfaces_trt.core.profiles import Profile

HAS_TRT = tensorrt_version() is not None
PROFILE = Profile((1, 3, 32, 32), (1, 3, 96, 128), (1, 3, 128, 160))


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def test_trtexec_command_has_exact_profile_and_options():
    cmd = trtexec_command("out dir/model.onnx", "out dir/model_fp16.engine", PROFILE, fp16=True,
                          workspace_gb=2.5, timing_cache="cache.bin")
    assert cmd == ("trtexec '--onnx=out dir/model.onnx' --minShapes=image:1x3x32x32 "
                   "--optShapes=image:1x3x96x128 --maxShapes=image:1x3x128x160 --fp16 "
                   "--memPoolSize=workspace:2560M '--saveEngine=out dir/model_fp16.engine' "
                   "--timingCacheFile=cache.bin")
    fp32 = trtexec_command("m.onnx", "m.engine", PROFILE, fp16=False)
    assert "--fp16" not in fp32 and fp32.endswith("--memPoolSize=workspace:4096M --saveEngine=m.engine")


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
