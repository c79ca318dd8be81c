"""core.optional: one lazy import of optional dependencies, one message for every failure."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tinyfaces_trt.core.errors import BackendUnavailableError, TensorRTUnavailableError
from tinyfaces_trt.core.optional import import_optional, import_tensorrt, version_tuple


@pytest.fixture
def fake_packages(tmp_path, monkeypatch):
    """Writes packages into a folder on sys.path; removes them from sys.modules afterwards."""
    made: list[str] = []

    def make(name: str, source: str) -> None:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "__init__.py").write_text(source)
        made.append(name)

    monkeypatch.syspath_prepend(str(tmp_path))
    yield make
    for name in made:
        sys.modules.pop(name, None)


def _message(**kwargs) -> str:
    with pytest.raises(BackendUnavailableError) as info:
        import_optional(purpose="the fake backend", extra_hint="pip install fake", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_package(fake_packages):
    assert _message(module="tf_no_such_package") == (
        "the fake backend needs tf_no_such_package, which is not installed "
        "(No module named 'tf_no_such_package'); pip install fake")


def test_broken_shared_library_and_broken_import_are_not_called_missing(fake_packages):
    fake_packages("tf_fake_oserror", "raise OSError('libnvinfer.so.10: cannot open shared object file')")
    assert _message(module="tf_fake_oserror", name="Fake") == (
        "the fake backend needs Fake, which is installed but failed to load its libraries "
        "(libnvinfer.so.10: cannot open shared object file); pip install fake")
    fake_packages("tf_fake_inner", "import tf_fake_missing_dependency")
    assert "tf_fake_inner, which is installed but does not import (No module named " \
           "'tf_fake_missing_dependency')" in _message(module="tf_fake_inner")


def test_ctrl_c_during_a_native_module_s_initialisation_stays_an_interrupt(fake_packages):
    """pybind11 (ONNX Runtime, torch) turns a KeyboardInterrupt while its module initialises
    into ImportError("initialization failed") caused by it: tf-detect said the package was
    broken and exited 1 instead of 130 (1 of 55 random Ctrl-Cs)."""
    fake_packages("tf_fake_pybind", "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt as e:\n"
                  "    raise ImportError('initialization failed') from e\n")
    with pytest.raises(KeyboardInterrupt):
        import_optional("tf_fake_pybind", purpose="the fake backend", extra_hint="pip install fake")


def test_minimum_version(fake_packages):
    fake_packages("tf_fake_old", "__version__ = '8.6.1'")
    assert _message(module="tf_fake_old", min_version="10") == (
        "the fake backend needs tf_fake_old >= 10, found tf_fake_old 8.6.1; pip install fake")
    fake_packages("tf_fake_new", "__version__ = '10.3.0.post1'")
    assert import_optional("tf_fake_new", purpose="x", extra_hint="y", min_version="10").__version__ \
        == "10.3.0.post1"
    fake_packages("tf_fake_unversioned", "")
    assert "found tf_fake_unversioned (no version)" in _message(module="tf_fake_unversioned",
                                                                min_version="1")
    assert version_tuple("10.3.0.post1") == (10, 3, 0) and version_tuple("12.3rc1") == (12, 3)


def test_alternatives_and_error_class(fake_packages):
    fake_packages("tf_fake_legacy", "")
    assert import_optional(("tf_no_such_package.sub", "tf_fake_legacy"), purpose="x",
                           extra_hint="y").__name__ == "tf_fake_legacy"
    with pytest.raises(TensorRTUnavailableError):
        import_optional("tf_no_such_package", purpose="x", extra_hint="y",
                        error=TensorRTUnavailableError)


def test_one_tensorrt_import_for_export_and_runtime():
    from tinyfaces_trt.export import trt_build
    from tinyfaces_trt.runtime.backends import tensorrt_runner

    assert trt_build.import_tensorrt is tensorrt_runner.import_tensorrt is import_tensorrt
    assert trt_build.TensorRTUnavailableError is TensorRTUnavailableError
    assert issubclass(TensorRTUnavailableError, BackendUnavailableError)


def test_tensorrt_message_when_absent():
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    with pytest.raises(TensorRTUnavailableError) as info:
        import_tensorrt()
    assert str(info.value).startswith(
        "TensorRT support (engine builds, the tensorrt backend) needs NVIDIA TensorRT >= 10, "
        "which is not installed (No module named 'tensorrt'); install it on a machine with a "
        "CUDA GPU: pip install tensorrt")
