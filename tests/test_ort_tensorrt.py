"""TensorrtEpSettings: the options ONNX Runtime's TensorRT provider gets, and where its engine
is kept. Pure logic: nothing of ONNX Runtime or TensorRT runs (tests/test_onnxruntime_cuda_providers.py
checks that the runners pass these options and hold the build lock)."""

from __future__ import annotations

import logging
import re
import shutil

import pytest

from tinyfaces_trt.core.errors import ManifestError
from tinyfaces_trt.core.profiles import Profile
from tinyfaces_trt.runtime.backends.ort_tensorrt import TensorrtEpSettings

PROFILE = Profile((1, 3, 8, 8), (4, 3, 360, 640), (4, 3, 720, 1280))


@pytest.fixture
def models(tmp_path):
    """Two files named model.onnx with the same bytes, and a third with other bytes."""
    paths = [tmp_path / d / "model.onnx" for d in ("a", "b", "c")]
    for path in paths:
        path.parent.mkdir()
    paths[0].write_bytes(b"weights one")
    shutil.copy(paths[0], paths[1])
    paths[2].write_bytes(b"weights two")
    return paths


def test_the_profile_in_trtexecs_notation_under_the_networks_input_name():
    assert TensorrtEpSettings(PROFILE, "pixels").provider_options(None) == {
        "trt_profile_min_shapes": "pixels:1x3x8x8", "trt_profile_opt_shapes": "pixels:4x3x360x640",
        "trt_profile_max_shapes": "pixels:4x3x720x1280"}


def test_the_engine_folder_is_the_models_bytes_profile_and_input_name(models, tmp_path):
    """ONNX Runtime names engine files after the model's file and tensor names, not its
    weights: two exports named model.onnx share a folder only when their bytes are equal."""
    settings = TensorrtEpSettings(PROFILE, cache_dir=tmp_path / "cache")
    a, b, c = (settings.cache_folder(m) for m in models)
    assert a == b != c and a.is_dir() and c.is_dir()
    assert a.parent == tmp_path / "cache" / "ort_tensorrt"
    other_profile = Profile((1, 3, 8, 8), (4, 3, 360, 640), (4, 3, 720, 1281))
    assert TensorrtEpSettings(other_profile, cache_dir=tmp_path / "cache").cache_folder(models[0]) != a
    assert TensorrtEpSettings(PROFILE, "pixels", cache_dir=tmp_path / "cache").cache_folder(models[0]) != a
    options = settings.provider_options(a)
    assert {k: v for k, v in options.items() if "profile" not in k} == {
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(a),
        "trt_timing_cache_enable": "True"}  # the timing cache beside (ORT 1.16 has no path option)


def test_without_a_writable_cache_the_engine_is_built_in_each_process(models, tmp_path, caplog):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        assert TensorrtEpSettings(PROFILE, cache_dir=blocked).cache_folder(models[0]) is None
    assert re.search(f"no TensorRT engine cache \\(Not a directory: {re.escape(str(blocked))}/ort_tensorrt/"
                     "[0-9a-f]{16}\\); ONNX Runtime's TensorRT provider builds its engine in every "
                     "process", caplog.text)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):  # the session then says why
        assert TensorrtEpSettings(PROFILE).cache_folder(tmp_path / "missing.onnx") is None
    assert f"no TensorRT engine cache (ONNX model not found: {tmp_path / 'missing.onnx'})" in caplog.text
    off = TensorrtEpSettings(PROFILE, cache_dir=tmp_path / "cache", engine_cache=False)
    assert off.cache_folder(models[0]) is None and not (tmp_path / "cache").exists()


def test_a_shape_outside_the_profile_is_refused():
    settings = TensorrtEpSettings(PROFILE)
    settings.check([(1, 3, 8, 8), (4, 3, 720, 1280)])
    with pytest.raises(ManifestError, match=r"^input shape 1x3x7x8 is outside"):
        settings.check([(1, 3, 7, 8)])
    with pytest.raises(ManifestError, match=r"^input shape 5x3x8x8 is outside"):
        settings.check([(5, 3, 8, 8)])
