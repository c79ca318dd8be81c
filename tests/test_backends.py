"""Backends: the ONNX Runtime runner, TensorRT engine checks, create_runner / create_detector.

TensorRT is not installed on CI machines: its runner is only checked for the clear
"unavailable" error, and its manifest/profile validation on plain engine descriptions
(no TensorRT object is faked).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import threading
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from helpers_threads import interrupted_thread_start
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.export.torch_runner import TorchRunner
from tinyfaces_trt.detectors import available_backends, create_detector
from tinyfaces_trt.runtime.backends import create_detector as runtime_create_detector, create_runner
from tinyfaces_trt.export_cache import cache_key, cache_root
from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner, resolve_providers
from tinyfaces_trt.runtime.backends.tensorrt_runner import (EngineSignature, TensorInfo,
                                                            TensorRTRunner, select_profile,
                                                            validate_engine)
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import (BackendUnavailableError, ConfigError, ManifestError,
                                       NetworkInputError, TinyFacesError, WeightsError)
from tinyfaces_trt.core.manifest import load_export_folder
from tinyfaces_trt.runtime.pipeline import Detector
from tinyfaces_trt.core.profiles import Profile
from tinyfaces_trt.core.runner import RunnerBase

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
CPU = "CPUExecutionProvider"


# ---------------------------------------------------------------------------------------------
# A tiny hand-made ONNX model: 1x1 convolution 3 -> 125 with stride 8 (ceil(h/8) outputs)
# ---------------------------------------------------------------------------------------------

def _strided_conv_model(path, channels: int = 125, seed: int = 0):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(channels, 3, 1, 1)).astype(np.float32)
    bias = rng.normal(size=(channels,)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["scores"], strides=[8, 8])],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, channels, "h8", "w8"])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weight[:, :, 0, 0], bias


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    weight, bias = _strided_conv_model(path)
    return path, weight, bias


def test_ort_runner_matches_numpy_convolution(tiny):
    path, weight, bias = tiny
    runner = OnnxRuntimeRunner(path)
    assert runner.providers == [CPU]
    assert (runner.input_name, runner.output_name) == ("image", "scores")
    x = np.random.default_rng(1).normal(size=(1, 3, 33, 47)).astype(np.float32)
    out = runner.run(x)
    assert out.shape == (1, 125, math.ceil(33 / 8), math.ceil(47 / 8)) and out.dtype == np.float32
    expected = np.einsum("ck,kyx->cyx", weight, x[0, :, ::8, ::8]) + bias[:, None, None]
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-5)


def test_ort_runner_loads_a_model_whose_path_is_not_utf8(tiny, tmp_path):
    path, weight, bias = tiny
    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"exp_\xff")))
    folder.mkdir()
    shutil.copy(path, folder / "tiny.onnx")  # ONNX Runtime takes only UTF-8 str paths
    x = np.random.default_rng(1).normal(size=(1, 3, 33, 47)).astype(np.float32)
    np.testing.assert_array_equal(OnnxRuntimeRunner(folder / "tiny.onnx").run(x),
                                  OnnxRuntimeRunner(path).run(x))


def test_ort_runner_accepts_non_contiguous_input(tiny):
    path, _, _ = tiny
    runner = OnnxRuntimeRunner(path, threads=1)
    x = np.random.default_rng(2).normal(size=(1, 3, 40, 24)).astype(np.float32)
    transposed = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not transposed.flags.c_contiguous
    np.testing.assert_array_equal(runner.run(transposed), runner.run(x))


def test_every_run_gives_the_cpu_arenas_unused_memory_back(tiny):
    """One large image's peak stayed held by a long-lived detector (ONNX Runtime's CPU arena
    keeps what it grew to): 935 MB after a 720x960 image among small ones, 510 MB with the
    arena shrinking after each run. Checked on the main thread and on another one."""
    path, _, _ = tiny
    runner = OnnxRuntimeRunner(path, threads=1)
    seen = []
    real = runner.session

    class Recording:
        def run(self, names, feeds, options=None):
            seen.append(None if options is None else
                        options.get_run_config_entry("memory.enable_memory_arena_shrinkage"))
            return real.run(names, feeds, options)

    runner.session = Recording()
    x = np.zeros((1, 3, 16, 16), np.float32)
    runner.run(x)
    worker = threading.Thread(target=runner.run, args=(x,))
    worker.start()
    worker.join()
    assert seen == ["cpu:0", "cpu:0"]


def test_sessions_keep_no_plan_per_shape_and_print_no_errors_of_their_own(tiny):
    """A long-lived detector given images of ever new sizes (cropped faces, many cameras) grew
    without end: ONNX Runtime's memory pattern keeps a plan per input shape (794 shapes:
    164 -> 347 MB; flat at ~210 MB without it). A failed run printed ORT's own ANSI-coloured
    ERROR line to stderr besides the NetworkRunError holding the same text."""
    path, _, _ = tiny
    options = OnnxRuntimeRunner(path, threads=1).session.get_session_options()
    assert options.enable_mem_pattern is False
    assert options.log_severity_level == 4


def test_ctrl_c_stops_a_long_onnxruntime_run(tiny, monkeypatch):
    """Python runs a signal handler between bytecodes, never inside ONNX Runtime's run: a large
    photo's level on a CPU took a minute to answer Ctrl-C. The run is told to terminate, and
    the interrupt is raised as soon as it has."""
    import signal
    import threading
    import time

    runner = OnnxRuntimeRunner(tiny[0], threads=1)
    x = np.zeros((1, 3, 16, 16), np.float32)
    expected = runner.run(x)
    real, seen = runner.session, []

    class Long:  # what ONNX Runtime does with its terminate flag, on a run of 10 s
        def run(self, names, feeds, options=None):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # Ctrl-C now
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if options is not None and options.terminate:
                    seen.append(threading.current_thread().name)
                    raise RuntimeError("Exiting due to terminate flag being set to true.")
                time.sleep(0.01)
            return real.run(names, feeds)

    runner.session = Long()
    with pytest.raises(KeyboardInterrupt):
        runner.run(x)
    assert seen == ["tf-onnxruntime-run"]  # told to terminate, long before its 10 s
    runner.session = real
    np.testing.assert_array_equal(runner.run(x), expected)  # and the runner goes on


class _Blocking:
    """A session whose run lasts until told to terminate (and a moment more), as ONNX
    Runtime's does, recording when it began and ended."""

    def __init__(self) -> None:
        import threading

        self.began, self.ended = threading.Event(), threading.Event()

    def run(self, names, feeds, options=None):
        self.began.set()
        try:
            while not options.terminate:
                time.sleep(0.005)
            time.sleep(0.2)
            raise RuntimeError("Exiting due to terminate flag being set to true.")
        finally:
            self.ended.set()


def test_no_onnxruntime_run_outlives_an_interrupt_in_thread_start(tiny, monkeypatch):
    """A signal breaks Thread.start's wait for the new thread: an interrupt landing there left
    the run going on its thread, and the CLI's exit then aborted in ONNX Runtime's C++
    teardown ("terminate called without an active exception", exit -6; seen in CI)."""
    from tinyfaces_trt.core import threads

    runner = OnnxRuntimeRunner(tiny[0], threads=1)
    session = runner.session = _Blocking()

    monkeypatch.setattr(threads.threading, "Thread", interrupted_thread_start(session.began))
    with pytest.raises(KeyboardInterrupt):
        runner.run(np.zeros((1, 3, 16, 16), np.float32))
    monkeypatch.undo()
    assert session.ended.is_set()  # told to stop and waited for


@pytest.mark.parametrize("bad, message", [
    (np.zeros((1, 3, 16, 16), np.float64), "float32"),
    (np.zeros((1, 4, 16, 16), np.float32), "(1, 3, h, w)"),
    (np.zeros((2, 3, 16, 16), np.float32), "(1, 3, h, w)"),
    (np.zeros((3, 16, 16), np.float32), "(1, 3, h, w)"),
    (np.zeros((1, 3, 0, 16), np.float32), "(1, 3, h, w)"),
    ([[1.0]], "numpy array"),
])
def test_ort_runner_validates_input(tiny, bad, message):
    runner = OnnxRuntimeRunner(tiny[0])
    with pytest.raises(NetworkInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        runner.run(bad)


def test_ort_runner_file_errors(tmp_path):
    with pytest.raises(ManifestError, match="ONNX model not found"):
        OnnxRuntimeRunner(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(ManifestError, match="cannot load ONNX model .*corrupt.onnx"):
        OnnxRuntimeRunner(corrupt)


def test_ort_runner_rejects_wrong_channel_count(tmp_path):
    path = tmp_path / "ten.onnx"
    _strided_conv_model(path, channels=10)
    with pytest.raises(ManifestError, match="expected float32 \\(1, 125, h, w\\)"):
        OnnxRuntimeRunner(path)


def test_ort_runner_rejects_bad_thread_count(tiny):
    for threads in (0, "2", 1.5, True):
        with pytest.raises(ConfigError) as info:
            OnnxRuntimeRunner(tiny[0], threads=threads)
        assert str(info.value) == f"threads must be an integer >= 1 or None, got {threads!r}"


def test_resolve_providers_order_aliases_and_fallback(caplog):
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert resolve_providers(None, available) == [CPU]
    assert resolve_providers("auto", available) == available
    assert resolve_providers(["cuda", "cpu"], available) == ["CUDAExecutionProvider", CPU]
    assert resolve_providers("tensorrt", available) == ["TensorrtExecutionProvider", CPU]
    with caplog.at_level(logging.WARNING):
        assert resolve_providers(["cuda"], [CPU]) == [CPU]
    assert "CUDAExecutionProvider" in caplog.text and "falling back" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert resolve_providers("auto", [CPU]) == [CPU]
    assert caplog.text == ""  # 'auto' taking what exists is not a warning
    with pytest.raises(TinyFacesError, match="must not be empty"):
        resolve_providers([], available)


def test_unknown_provider_name_is_an_error_not_a_silent_cpu_fallback(tiny):
    known = ["CUDAExecutionProvider", CPU]
    assert resolve_providers(["cuda"], [CPU], known) == [CPU]  # known but absent: fallback
    with pytest.raises(TinyFacesError, match=r"unknown ONNX Runtime provider\(s\) \['cdua'\]"):
        resolve_providers(["cdua"], [CPU], known)
    with pytest.raises(TinyFacesError, match="unknown ONNX Runtime provider"):
        OnnxRuntimeRunner(tiny[0], providers=["bogus"])


def test_the_clis_and_the_runtime_say_the_same_of_unknown_providers(capsys):
    """One check and one message (onnxruntime_runner) for resolve_providers and --providers,
    which lists one alias per provider; aliases are checked without onnxruntime."""
    import argparse

    import onnxruntime

    from tinyfaces_trt.detector_options import (add_detector_arguments,
                                                check_detector_arguments, unknown_providers)

    message = ("unknown ONNX Runtime provider(s) ['cdua']; use cpu, cuda, tensorrt, 'auto', or a "
               "full provider name such as CUDAExecutionProvider")
    with pytest.raises(TinyFacesError) as refused:
        resolve_providers(["cpu", "cdua"], [CPU], onnxruntime.get_all_providers())
    assert str(refused.value) == message
    parser = argparse.ArgumentParser(prog="tf-x")
    add_detector_arguments(parser)
    with pytest.raises(SystemExit) as stop:
        check_detector_arguments(parser, parser.parse_args(["--providers", "cpu, cdua"]))
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith(f"tf-x: error: --providers: {message}\n")
    assert unknown_providers("TRT, CUDAExecutionProvider,cuda") == []
    assert unknown_providers("cpu,,cuda") == [""]
    assert unknown_providers("cdua,TensorrtExecutionProvider, MIGraphXExecutionProvider") == ["cdua"]
    assert unknown_providers(" Auto ") == []


def test_ort_runner_logs_actual_providers_and_fallback(tiny, caplog):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA; the fallback path is not taken")
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        runner = OnnxRuntimeRunner(tiny[0], providers=["cuda"])
    assert runner.providers == [CPU]
    assert "falling back" in caplog.text and "providers ['CPUExecutionProvider']" in caplog.text


# ---------------------------------------------------------------------------------------------
# TensorRT: dependency error and engine/manifest validation (on plain descriptions)
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_tensorrt_runner_unavailable_is_one_clear_line(tmp_path):
    with pytest.raises(BackendUnavailableError) as info:
        TensorRTRunner(tmp_path / "model.engine")
    message = str(info.value)
    assert "\n" not in message and "TensorRT" in message and "not installed" in message
    assert "tensorrt" not in available_backends()


PROFILE = Profile((1, 3, 16, 16), (1, 3, 480, 640), (1, 3, 1024, 1024))


def _signature(**changes) -> EngineSignature:
    inp = dict(name="image", is_input=True, dtype="FLOAT", shape=(1, 3, -1, -1))
    out = dict(name="scores", is_input=False, dtype="FLOAT", shape=(1, 125, -1, -1))
    inp.update(changes.get("input", {}))
    out.update(changes.get("output", {}))
    return EngineSignature((TensorInfo(**inp), TensorInfo(**out)),
                           tuple(changes.get("profiles", (PROFILE,))))


def test_validate_engine_accepts_matching_engine():
    validate_engine(_signature(), "image", "scores", PROFILE)
    validate_engine(_signature(), "image", "scores", None)


@pytest.mark.parametrize("changes, message", [
    ({"input": {"name": "input"}}, "engine inputs \\['input'\\] do not match the manifest's input 'image'"),
    ({"output": {"name": "out"}}, "do not include the manifest's output 'scores'"),
    ({"input": {"dtype": "HALF"}}, "'image' is HALF, expected float32"),
    ({"output": {"dtype": "HALF"}}, "'scores' is HALF, expected float32"),
    ({"output": {"shape": (1, 124, -1, -1)}}, "expected \\[N, 125, h, w\\] \\(125 channels\\)"),
    ({"input": {"shape": (1, 1, -1, -1)}}, "expected \\[N, 3, h, w\\]"),
    ({"profiles": ()}, "no optimization profile"),
    ({"profiles": (Profile((1, 3, 8, 8), (1, 3, 64, 64), (1, 3, 512, 512)),)},
     "manifest's profile \\(min 1x3x16x16, max 1x3x1024x1024\\) is not one of the engine's"),
])
def test_validate_engine_reports_each_mismatch(changes, message):
    with pytest.raises(ManifestError, match=message):
        validate_engine(_signature(**changes), "image", "scores", PROFILE, source="m.engine")


def test_select_profile_picks_first_containing_and_names_ranges():
    small = Profile((1, 3, 1, 1), (1, 3, 64, 64), (1, 3, 128, 128))
    large = Profile((1, 3, 64, 64), (1, 3, 512, 512), (1, 3, 1024, 1024))
    assert select_profile((1, 3, 100, 100), [small, large]) == 0
    assert select_profile((1, 3, 600, 100), [small, large]) == 1
    with pytest.raises(ManifestError) as info:
        select_profile((1, 3, 2000, 50), [small, large])
    text = str(info.value)
    assert "1x3x2000x50" in text and "profile 0: min 1x3x1x1 .. max 1x3x128x128" in text
    assert "profile 1: min 1x3x64x64 .. max 1x3x1024x1024" in text
    with pytest.raises(ManifestError, match="1x3x2000x50 is outside the engine's optimization "
                                            "profile \\(min 1x3x1x1, max 1x3x128x128\\)"):
        select_profile((1, 3, 2000, 50), [small])


class _ProfileRunner(RunnerBase):
    """A host runner with a TensorRT-like shape range (tests the pipeline's check_levels hook)."""

    def __init__(self, inner, profile: Profile):
        self.inner, self.profiles, self.calls = inner, [profile], 0

    def check_levels(self, levels):
        for level in levels:
            select_profile((1, 3, level.height, level.width), self.profiles)

    def run(self, x):
        self.calls += 1
        return self.inner.run(x)


def test_detector_refuses_out_of_profile_image_before_any_work(tiny):
    runner = _ProfileRunner(OnnxRuntimeRunner(tiny[0]),
                            Profile((1, 3, 8, 8), (1, 3, 64, 64), (1, 3, 100, 100)))
    detector = Detector(runner, DetectorConfig())
    detector.detect(synthetic_image(33, 47))  # levels 33x47 .. 66x94 fit
    calls = runner.calls
    assert calls > 0
    with pytest.raises(ManifestError, match="outside the engine's optimization profile "
                                            "\\(min 1x3x8x8, max 1x3x100x100\\)"):
        detector.detect(synthetic_image(97, 131))
    assert runner.calls == calls  # refused before running any level


# ---------------------------------------------------------------------------------------------
# create_runner / create_detector on a real (seeded ResNet-50) export
# ---------------------------------------------------------------------------------------------


def test_available_backends_lists_installed_ones():
    found = available_backends()
    assert "onnxruntime" in found and "torch" in found


def test_create_runner_onnxruntime_and_missing_files(export_dir, tmp_path):
    folder = load_export_folder(export_dir)
    runner = create_runner("onnxruntime", folder)
    assert isinstance(runner, OnnxRuntimeRunner) and runner.onnx_path == folder.onnx_fp32
    assert create_runner("onnxruntime", folder, fp16=True).onnx_path == folder.onnx_fp16
    fp32_only = tmp_path / "fp32"
    fp32_only.mkdir()
    for name in ("model.onnx", "manifest.json"):
        shutil.copy(export_dir / name, fp32_only / name)
    manifest = json.loads((fp32_only / "manifest.json").read_text())
    del manifest["files"]["onnx_fp16"]
    (fp32_only / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="no fp16 ONNX model; re-export with tf-export --fp16"):
        create_runner("onnxruntime", load_export_folder(fp32_only), fp16=True)
    with pytest.raises(TinyFacesError, match="unknown backend 'onnx'"):
        create_runner("onnx", folder)
    with pytest.raises(TinyFacesError, match="unknown backend 'torch'; expected one of onnxruntime, onnxruntime-cuda, tensorrt"):
        create_runner("torch", folder)  # the runtime runs export folders; torch is the factory's
    with pytest.raises(TinyFacesError) as refused:
        runtime_create_detector("auto", model_dir=export_dir)
    assert str(refused.value) == ("unknown backend 'auto'; expected one of onnxruntime, "
                                  "onnxruntime-cuda, tensorrt; 'auto' is "
                                  "tinyfaces_trt.create_detector's")
    with pytest.raises(TinyFacesError) as refused:
        create_runner("onnx", folder)
    assert str(refused.value).endswith("tensorrt")  # no pointer for a name no layer has


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")
def test_create_runner_tensorrt_reports_missing_dependency_first(export_dir):
    with pytest.raises(BackendUnavailableError, match="TensorRT"):
        create_runner("tensorrt", load_export_folder(export_dir))


def test_detector_from_export_folder_matches_torch_reference(export_dir, seeded):
    image = synthetic_image(97, 131, seed=3)
    detector = create_detector("onnxruntime", model_dir=export_dir)
    assert type(detector) is Detector and detector.config == seeded[1]
    boxes = detector.detect(image)
    reference = Detector(TorchRunner(seeded[0]), seeded[1]).detect(image)
    assert len(boxes) == len(reference) > 0
    np.testing.assert_allclose(boxes, reference, atol=1e-3)


def test_config_overrides(export_dir):
    image = synthetic_image(97, 131, seed=3)
    base = create_detector(model_dir=export_dir).detect(image)
    strict = create_detector(model_dir=export_dir, config_overrides={"prob_thresh": 0.7,
                                                                    "nms_thresh": None})
    assert strict.config.prob_thresh == 0.7 and strict.config.nms_thresh == 0.3
    boxes = strict.detect(image)
    assert 0 < len(boxes) < len(base) and np.all(boxes[:, 4] > 0.7)
    with pytest.raises(TinyFacesError, match="unknown detector config field\\(s\\) \\['prob'\\]"):
        create_detector(model_dir=export_dir, config_overrides={"prob": 0.7})
    with pytest.raises(ConfigError, match="prob_thresh must be in \\(0, 1\\)"):
        create_detector(model_dir=export_dir, config_overrides={"prob_thresh": 1.5})
    with pytest.raises(ConfigError, match="^prob_thresh must be a number, got '0.7' \\(str\\)$"):
        create_detector(model_dir=export_dir, config_overrides={"prob_thresh": "0.7"})
    # what the network was trained with comes with it: a stride-16 override changed the boxes
    for field, value in (("stride", 16), ("variant", "matconvnet"), ("offset", 0.0)):
        with pytest.raises(ConfigError) as info:
            create_detector(model_dir=export_dir, config_overrides={field: value})
        assert str(info.value).startswith(f"detector config field(s) ['{field}'] describe the "
                                          f"network and come with it")
        assert "'prob_thresh'" in str(info.value) and "'stride'" not in str(info.value).split(
            "changed: ")[1]


def test_create_detector_argument_errors(export_dir, checkpoint):
    with pytest.raises(TinyFacesError, match="not both"):
        create_detector(model_dir=export_dir, weights=checkpoint)
    with pytest.raises(TinyFacesError, match="torch backend runs a checkpoint"):
        create_detector("torch", model_dir=export_dir)
    with pytest.raises(ManifestError, match="does not exist"):
        create_detector(model_dir=export_dir / "nope")


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 34}, "depth must be one of 50, 101 or None, got 34"),
    ({"depth": "50"}, "depth must be one of 50, 101 or None, got '50'"),
    ({"depth": True}, "depth must be one of 50, 101 or None, got True"),
    ({"variant": "caffe"}, "variant must be one of pytorch, matconvnet or None, got 'caffe'"),
    ({"threads": "2"}, "threads must be an integer >= 1 or None, got '2'"),
    ({"threads": 0}, "threads must be an integer >= 1 or None, got 0"),
])
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_create_detector_checks_its_options_before_any_work(backend, kwargs, message, checkpoint,
                                                            monkeypatch):
    """They reached torch or ONNX Runtime as a bare ValueError or TypeError."""
    from tinyfaces_trt import detectors

    def no_work(*args, **kwargs):
        raise AssertionError("loaded or exported before checking the options")

    monkeypatch.setattr(detectors, "reference_model", no_work)
    monkeypatch.setattr(detectors, "cached_export", no_work)
    with pytest.raises(ConfigError) as info:
        create_detector(backend, weights=checkpoint, **kwargs)
    assert str(info.value) == message


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_loader_options_without_a_checkpoint_are_refused_not_ignored(backend, export_dir):
    folder = {"model_dir": export_dir} if backend == "onnxruntime" else {}
    for options in ({"depth": 50}, {"variant": "matconvnet"}):
        with pytest.raises(ConfigError, match="^depth and variant tell the checkpoint loader "
                                                 "how to read weights=...; an export folder and "
                                                 "the untrained default network bring their own$"):
            create_detector(backend, **folder, **options)


@pytest.fixture(scope="module")
def reference_64(seeded):
    """A 64x64 synthetic image and the torch reference's detections of it (the seeded network),
    computed once for the tests that compare a checkpoint's detectors with it."""
    image = synthetic_image(64, 64, seed=1)
    return image, Detector(TorchRunner(seeded[0]), seeded[1]).detect(image)


def test_torch_backend_runs_checkpoint(checkpoint, reference_64):
    image, expected = reference_64
    detector = create_detector("torch", weights=checkpoint)
    np.testing.assert_array_equal(detector.detect(image), expected)


def test_weights_export_into_cache_once_and_reuse(checkpoint, export_dir, tmp_path, reference_64,
                                                  fast_export):
    """fast_export: the checkpoint's graph is the shared export's (torch's exporter is not
    what this checks); the rest of the cache's export runs for real."""
    key = cache_key(checkpoint)
    assert export_dir.name == key
    folder = tmp_path / key
    shutil.copytree(export_dir, folder)
    (folder / "model.onnx").unlink()  # a damaged cache entry is exported again
    lines: list[str] = []
    detector = create_detector(weights=checkpoint, cache_dir=tmp_path, progress=lines.append)
    assert any("exporting weights" in line for line in lines)
    assert any("export done" in line for line in lines)
    assert (folder / "manifest.json").is_file() and (folder / "model.onnx").is_file()
    assert {p.name for p in tmp_path.iterdir()} - {f"{key}.lock"} == {key}  # no staging folder left
    manifest = load_export_folder(folder).manifest
    assert manifest["weights"]["sha256"].startswith(key) and manifest["untrained"] is False
    assert "onnx_fp16" not in manifest["files"]  # fp32 was asked for
    image, expected = reference_64
    np.testing.assert_allclose(detector.detect(image), expected, atol=1e-3)

    stamp = os.stat(folder / "model.onnx").st_mtime_ns
    lines.clear()
    create_detector(weights=checkpoint, cache_dir=tmp_path, progress=lines.append)
    assert lines == [] and os.stat(folder / "model.onnx").st_mtime_ns == stamp


def test_cache_location_and_keys(monkeypatch, tmp_path, checkpoint):
    monkeypatch.setenv("TINYFACES_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("TINYFACES_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tinyfaces_trt"
    monkeypatch.delenv("XDG_CACHE_HOME")  # the default, whatever the tester's environment
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "tinyfaces_trt"
    assert cache_key(checkpoint) != cache_key(checkpoint, depth=50)
    assert cache_key(None).startswith("untrained-")
    with pytest.raises(WeightsError, match="weights file not found"):
        cache_key(tmp_path / "absent.pth")


def test_bad_weights_give_weights_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        create_detector("torch", weights=bad)
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        create_detector(weights=bad, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*/manifest.json"))


def test_cache_export_warns_once_and_gives_no_trtexec_hint(tmp_path, monkeypatch, fast_export):
    """tf-detect's cache export: the untrained warning once, no trtexec hint; tf-export's own
    export (export_model defaults) keeps the repeated warning and the hint. (fast_export: the
    graph written is the shared export's, whatever the model; only the lines are checked.)"""
    import torch

    from tinyfaces_trt.export.export_pipeline import UNTRAINED_WARNING, export_model
    from tinyfaces_trt import export_cache

    torch.manual_seed(0)
    small = torch.nn.Conv2d(3, 125, 1, stride=8)  # any (1,3,H,W) -> (1,125,h,w) network will do
    monkeypatch.setattr(export_cache, "reference_model",
                        lambda weights, depth=None, variant=None: (small, DetectorConfig()))
    lines: list[str] = []
    folder = export_cache.cached_export(None, cache_dir=tmp_path / "cache", progress=lines.append,
                                        verify=False)
    assert folder.untrained and folder.onnx_path().is_file()
    assert lines[-1].startswith("export done in")
    assert [line for line in lines if "RANDOM" in line] == [UNTRAINED_WARNING]
    assert not [line for line in lines if "trtexec" in line or "TensorRT" in line]

    lines.clear()
    export_model(small, DetectorConfig(), tmp_path / "direct", untrained=True, verify=False,
                 log=lines.append)
    assert [line for line in lines if "RANDOM" in line] == [UNTRAINED_WARNING] * 2
    assert lines[-1] == UNTRAINED_WARNING
    (hint,) = [line for line in lines if "trtexec" in line]
    assert hint.startswith("to build a TensorRT engine: trtexec --onnx=")
