"""OnnxRuntimeCudaRunner's provider setup, against each thing ONNX Runtime may do with them.

No onnxruntime-gpu can run here. ``GpuListingOrt`` (tests/helpers_ort_gpu.py) is the real
(CPU) onnxruntime that lists the CUDA and TensorRT providers, and whose sessions report what a
scenario says ONNX Runtime did with them: which providers started and whether they kept our
``user_compute_stream``. The network itself runs on the CPU provider. This checks the
runner's logic (which providers it asks for, with which options, what it retries, what it
refuses and what it says) and nothing of ONNX Runtime's GPU providers themselves.
The stream comes from ``cuda_device`` over host memory (tests/host_cudart.py).
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import logging
import os
import re
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import host_cudart
from tinyfaces_trt.core.errors import BackendUnavailableError, ManifestError, TinyFacesError
from tinyfaces_trt.core.manifest import load_export_folder
from tinyfaces_trt.core.profiles import Profile
from tinyfaces_trt.core.pyramid import plan_pyramid
from tinyfaces_trt.core.runner import RunnerCapabilities
from tinyfaces_trt.runtime.backends import (create_runner, cuda_device, onnxruntime_cuda_runner,
                                            onnxruntime_runner, ort_tensorrt)
from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import (CUDA_EP, TENSORRT_EP,
                                                                    OnnxRuntimeCudaRunner)
from tinyfaces_trt.runtime.backends.ort_tensorrt import TensorrtEpSettings
from tinyfaces_trt.runtime.pipeline import Detector

pytest.importorskip("onnxruntime")

from helpers_ort_gpu import CPU_EP, GpuListingOrt  # noqa: E402


@pytest.fixture
def host(monkeypatch):
    if host_cudart.missing():
        pytest.skip(host_cudart.missing())
    h = host_cudart.install(monkeypatch, finalizers=False)
    yield h
    h.release_all()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """The cache root (ONNX Runtime's TensorRT engines) of each test."""
    monkeypatch.setenv("TINYFACES_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _settings(export_dir) -> TensorrtEpSettings:
    """What create_detector gives: the export folder's profile and input name."""
    folder = load_export_folder(export_dir)
    return TensorrtEpSettings(folder.profile, folder.input_name)


def _use_ort(monkeypatch, fake) -> None:
    """Both ORT runner modules import the stand-in ``fake``."""
    monkeypatch.setattr(onnxruntime_cuda_runner, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(onnxruntime_runner, "import_onnxruntime", lambda: fake)


def _runner(monkeypatch, fake, export_dir, **kwargs):
    _use_ort(monkeypatch, fake)
    if "tensorrt" not in kwargs:
        kwargs["tensorrt"] = _settings(export_dir)
    return OnnxRuntimeCudaRunner(export_dir / "model.onnx", **kwargs)


def _with_tensorrt(monkeypatch) -> None:
    """The tensorrt package looks installed (ONNX Runtime's TensorRT provider is then tried)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt" else find_spec(name, *a))


def test_the_cuda_provider_runs_on_our_stream(host, monkeypatch, export_dir, caplog):
    fake = GpuListingOrt()
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        runner = _runner(monkeypatch, fake, export_dir, device_id=0)
    stream = runner.cuda_stream
    assert runner.stream == stream.handle and stream.handle in host.streams
    (session,) = fake.sessions  # no tensorrt package here: the CUDA provider alone, at once
    # the CPU provider last and allowed: ORT's CUDA provider leaves shape computations to it
    assert session["providers"] == [CUDA_EP, CPU_EP] and not session["strict"]
    assert session["fallback"] == 0  # no silent retry elsewhere, no banner on stdout
    assert session["options"][CUDA_EP] == {"device_id": "0", "user_compute_stream": str(stream.handle),
                                           "use_tf32": "0"}  # an fp32 export: no TF32
    assert runner.providers == [CUDA_EP, CPU_EP] and runner.precision == "fp32"
    assert runner.capabilities.device_io
    assert "no TensorRT here for ONNX Runtime's TensorRT provider" in caplog.text


def test_a_given_stream_is_used_as_it_is(host, monkeypatch, export_dir):
    mine = cuda_device.Stream()
    runner = _runner(monkeypatch, GpuListingOrt(), export_dir, stream=mine)
    assert runner.cuda_stream is mine
    runner = _runner(monkeypatch, GpuListingOrt(), export_dir, stream=mine.handle)
    assert runner.stream == mine.handle and host.live()["streams"] == 1
    # ORT takes stream 0 as none and runs on streams of its own: refused
    with pytest.raises(TinyFacesError, match="^ONNX Runtime takes CUDA stream 0 .* give a created "
                                             r"stream, or none \(the runner makes one\)$"):
        _runner(monkeypatch, GpuListingOrt(), export_dir, stream=0)


def test_a_tensorrt_provider_that_fails_to_start_leaves_the_cuda_provider(
        host, monkeypatch, export_dir, caplog, capsys):
    """With ORT's fallback off, a TensorRT provider that cannot start (libnvinfer missing) is
    an error the runner answers with a session on CUDA alone (ORT's own fallback dropped our
    stream, or went to the CPU, and printed a banner on stdout)."""
    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(CUDA_EP,), fails=(TENSORRT_EP,))
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        runner = _runner(monkeypatch, fake, export_dir)
    assert [s["providers"] for s in fake.sessions] == [[TENSORRT_EP, CUDA_EP, CPU_EP],
                                                       [CUDA_EP, CPU_EP]]
    assert runner.providers == [CUDA_EP, CPU_EP] and runner.stream == runner.cuda_stream.handle
    assert ("ONNX Runtime's TensorRT provider did not start (cannot load ONNX model" in caplog.text
            and "retrying with the CUDA provider alone" in caplog.text)
    assert capsys.readouterr().out == ""
    fake = GpuListingOrt(started=(CUDA_EP,), fails=(TENSORRT_EP, CUDA_EP))
    with pytest.raises(ManifestError, match="cannot load ONNX model"):  # CUDA alone fails too
        _runner(monkeypatch, fake, export_dir)


def test_tensorrt_first_where_it_imports_then_cuda_alone_when_it_drops_the_stream(
        host, monkeypatch, export_dir, caplog):
    """ORT retries a failing TensorRT provider on CUDA without our options: the runner sees
    the lost stream and opens a session on the CUDA provider alone."""
    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(CUDA_EP,), loses_stream=(CUDA_EP,))
    with pytest.raises(BackendUnavailableError,
                       match=r"did not run its CUDA provider on the given stream"):
        _runner(monkeypatch, fake, export_dir)
    assert [s["providers"] for s in fake.sessions] == [[TENSORRT_EP, CUDA_EP, CPU_EP],
                                                       [CUDA_EP, CPU_EP]]
    fake = GpuListingOrt(started=(CUDA_EP,))  # TensorRT did not start; CUDA kept the stream
    runner = _runner(monkeypatch, fake, export_dir)
    assert len(fake.sessions) == 1 and runner.providers == [CUDA_EP, CPU_EP]
    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP), loses_stream=(TENSORRT_EP,))
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        runner = _runner(monkeypatch, fake, export_dir)
    assert len(fake.sessions) == 2 and runner.providers == [CUDA_EP, CPU_EP]
    assert "retrying with the CUDA provider alone" in caplog.text


def test_what_cannot_run_on_the_gpu_is_a_clear_error(host, monkeypatch, export_dir, tmp_path):
    """... and a runner that fails after making its stream destroys it."""
    with pytest.raises(BackendUnavailableError, match=r"could not start its CUDA provider \(running "
                                                      r"on \['CPUExecutionProvider'\]\)"):
        _runner(monkeypatch, GpuListingOrt(started=()), export_dir)
    with pytest.raises(BackendUnavailableError, match=r"needs the onnxruntime-gpu build .* "
                                                      r"pip install onnxruntime-gpu"):
        _runner(monkeypatch, GpuListingOrt(listed=(CPU_EP,)), export_dir)
    old = GpuListingOrt()
    old.__version__ = "1.17.3"  # its providers refuse user_compute_stream
    with pytest.raises(BackendUnavailableError, match=r"^the onnxruntime-cuda backend needs "
                                                      r"onnxruntime-gpu >= 1.18 .*; this is 1.17.3: "
                                                      r"pip install -U onnxruntime-gpu$"):
        _runner(monkeypatch, old, export_dir)
    assert old.sessions == []
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    broken = GpuListingOrt()
    with pytest.raises(ManifestError, match="cannot load ONNX model"):
        _runner(monkeypatch, broken, tmp_path, tensorrt=None)
    assert len(broken.sessions) == 1  # not a placement problem: no retry
    with pytest.raises(TinyFacesError, match=r"^device_id 1 is not the current CUDA device \(0\): "
                                             r".* CUDA_VISIBLE_DEVICES=1 \(it is then device 0\)"):
        _runner(monkeypatch, GpuListingOrt(), export_dir, device_id=1)
    monkeypatch.setattr(cuda_device, "gpu_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU; none is visible"):
        _runner(monkeypatch, GpuListingOrt(), export_dir)
    assert host.calls["cudaStreamCreate"] == 2 and host.live()["streams"] == 0


# ---------------------------------------------------------------------------------------------
# Precision: TF32 off on the CUDA provider for fp32 exports; TF32 said on the TensorRT provider
# ---------------------------------------------------------------------------------------------

class _KeepsTf32(GpuListingOrt):
    """A CUDA provider that reports TF32 on whatever it was asked (as ONNX Runtime reports its
    options: ``ToProviderOptions``)."""

    def _reported(self, provider: str, options: dict) -> dict:
        return {**super()._reported(provider, options), "use_tf32": "1"}


def test_an_fp32_export_runs_on_the_cuda_provider_without_tf32_an_fp16_one_as_it_is(
        host, monkeypatch, export_dir, caplog):
    """The CUDA provider's ``use_tf32`` is on by default (float32 convolutions with inputs
    rounded to 10 mantissa bits): an fp32 export turns it off and runs in fp32; an fp16 export
    (fp16 convolutions, which the option does not touch) gets no such option. Which file is
    which comes from the export's manifest, or is given."""
    fake = GpuListingOrt()
    _use_ort(monkeypatch, fake)
    folder = load_export_folder(export_dir)
    fp32 = create_runner("onnxruntime-cuda", folder)
    assert fake.sessions[-1]["options"][CUDA_EP] == {
        "device_id": "0", "user_compute_stream": str(fp32.stream), "use_tf32": "0"}
    assert (fp32.fp16, fp32.precision) == (False, "fp32")
    fp16 = create_runner("onnxruntime-cuda", folder, fp16=True)
    assert fake.sessions[-1]["options"][CUDA_EP] == {
        "device_id": "0", "user_compute_stream": str(fp16.stream)}
    assert (fp16.fp16, fp16.precision) == (True, "fp16")
    assert "precision='fp16'" in repr(fp16)
    given = _runner(monkeypatch, fake, export_dir, tensorrt=None, fp16=True)  # said, not read
    assert "use_tf32" not in fake.sessions[-1]["options"][CUDA_EP] and given.precision == "fp16"
    # a CUDA provider that does not say it took use_tf32 "0" runs TF32: said so
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        kept = _runner(monkeypatch, _KeepsTf32(), export_dir, tensorrt=None)
    assert kept.precision == "tf32"
    assert ("model.onnx runs with TF32 convolutions on CUDAExecutionProvider (the CUDA provider "
            "kept use_tf32 on): precision tf32") in caplog.text


def test_an_fp32_export_on_the_tensorrt_provider_runs_at_tf32_and_says_so(
        host, monkeypatch, export_dir, caplog):
    """TensorRT's builder allows TF32 by default and ONNX Runtime's TensorRT provider has no
    option to clear it: an fp32 export on it is labelled ``"tf32"`` (parity: fp16-like
    tolerances), not fp32; nodes left to the CUDA provider run without TF32. An fp16 export on
    it is fp16."""
    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP))
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        runner = _runner(monkeypatch, fake, export_dir)
    options = fake.sessions[-1]["options"]
    assert not any("tf32" in key for key in options[TENSORRT_EP])  # ORT has no such option
    assert options[CUDA_EP]["use_tf32"] == "0"
    assert runner.providers[0] == TENSORRT_EP and runner.precision == "tf32"
    assert ("model.onnx runs with TF32 convolutions on TensorrtExecutionProvider (TensorRT's "
            "default, which ONNX Runtime's TensorRT provider cannot turn off): precision tf32"
            ) in caplog.text
    fp16 = OnnxRuntimeCudaRunner(export_dir / "model_fp16.onnx", tensorrt=_settings(export_dir))
    assert fp16.providers[0] == TENSORRT_EP and fp16.precision == "fp16"
    assert "use_tf32" not in fake.sessions[-1]["options"][CUDA_EP]
    # where the TensorRT provider does not start, the CUDA provider alone runs it in fp32
    fake = GpuListingOrt(started=(CUDA_EP,), fails=(TENSORRT_EP,))
    assert _runner(monkeypatch, fake, export_dir).precision == "fp32"


def test_use_tf32_only_where_onnx_runtime_knows_it():
    """onnxruntime-gpu < 1.18 refuses a session given an option it does not know
    ("Unknown provider option"); ``use_tf32`` came in 1.18."""
    options = onnxruntime_runner.cuda_provider_options
    assert options(False, "1.18.0") == options(False, "1.32.0") == {"use_tf32": "0"}
    assert options(False, "1.17.3") == options(True, "1.32.0") == {}


def test_which_file_is_the_fp16_export(tmp_path):
    is_fp16 = onnxruntime_runner.export_is_fp16
    (tmp_path / "manifest.json").write_text(
        '{"files": {"onnx_fp32": "net.onnx", "onnx_fp16": "model.onnx"}}')
    assert is_fp16(tmp_path / "model.onnx") and not is_fp16(tmp_path / "net.onnx")
    # a file the manifest does not list, or no readable manifest: tf-export's names
    assert is_fp16(tmp_path / "model_fp16.onnx") and not is_fp16(tmp_path / "other.onnx")
    (tmp_path / "manifest.json").write_text("[]")
    assert not is_fp16(tmp_path / "model.onnx")
    (tmp_path / "manifest.json").unlink()
    assert is_fp16(tmp_path / "model_fp16.onnx") and not is_fp16(tmp_path / "model.onnx")


# ---------------------------------------------------------------------------------------------
# ONNX Runtime's TensorRT provider: the export's profile, the engine cache, one build at a time
# ---------------------------------------------------------------------------------------------

def _engine_folder(cache):
    (engines,) = (cache / "ort_tensorrt").iterdir()
    assert re.fullmatch("[0-9a-f]{16}", engines.name)
    return engines


def test_tensorrt_builds_one_engine_for_the_exports_profile_kept_in_the_cache(
        host, monkeypatch, export_dir, cache):
    """The export's profile is the provider's explicit profile (one engine for every pyramid
    level, built as the session is made, instead of a rebuild for each new level shape), the
    engine and timing caches lie in a folder of the model's own, and a level outside the
    profile is refused before TensorRT would fail on it mid-image."""
    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP))
    runner = _runner(monkeypatch, fake, export_dir)
    (session,) = fake.sessions
    engines, stream = _engine_folder(cache), str(runner.stream)
    assert session["providers"] == runner.providers == [TENSORRT_EP, CUDA_EP, CPU_EP]
    assert session["options"][TENSORRT_EP] == {
        "device_id": "0", "user_compute_stream": stream,
        "trt_profile_min_shapes": "image:1x3x1x1", "trt_profile_opt_shapes": "image:1x3x2160x3840",
        "trt_profile_max_shapes": "image:1x3x3840x3840",
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "True"}
    assert session["options"][CUDA_EP] == {"device_id": "0", "user_compute_stream": stream,
                                           "use_tf32": "0"}
    assert runner.capabilities == RunnerCapabilities(device_io=True, batch=True, max_batch=1,
                                                   gpu=True)
    runner.check_levels([(1, 3, 3840, 3840), SimpleNamespace(height=1, width=3840)])
    with pytest.raises(ManifestError, match=r"^input shape 1x3x3841x8 is outside the input-shape "
                                            r"profile of ONNX Runtime's TensorRT engine \(min "
                                            r"1x3x1x1, max 1x3x3840x3840\); re-export with tf-export "
                                            r"--image-size covering this image \(--max-batch for "
                                            r"more images a run\), or run without the TensorRT "
                                            r"provider \(providers 'cuda', tf-detect --providers "
                                            r"cuda\)$"):
        runner.check_levels([(1, 3, 64, 64), SimpleNamespace(height=3841, width=8)])
    with pytest.raises(ManifestError, match=r"^input shape 2x3x8x8 is outside"):
        runner.run(np.zeros((2, 3, 8, 8), np.float32))  # called directly: checked too
    runner.close()
    # the CUDA provider alone takes any level and any batch
    runner = _runner(monkeypatch, GpuListingOrt(started=(CUDA_EP,)), export_dir)
    assert runner.providers == [CUDA_EP, CPU_EP] and runner.tensorrt is None
    runner.check_levels([SimpleNamespace(height=3841, width=8)])
    assert runner.capabilities == RunnerCapabilities(device_io=True, batch=True, gpu=True)


def test_without_a_profile_the_tensorrt_provider_is_left_out(host, monkeypatch, export_dir,
                                                              cache, caplog):
    """Without the export's profile the provider would rebuild its engine for each new level
    shape: the device runner leaves it out, and says so."""
    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP))
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        runner = _runner(monkeypatch, fake, export_dir, tensorrt=None)
    assert [s["providers"] for s in fake.sessions] == [[CUDA_EP, CPU_EP]]
    assert runner.providers == [CUDA_EP, CPU_EP] and not cache.exists()
    assert "no input-shape profile given for ONNX Runtime's TensorRT provider" in caplog.text


def test_sessions_over_one_engine_folder_are_made_one_at_a_time(host, monkeypatch, export_dir,
                                                                cache, caplog):
    """ONNX Runtime writes the engine file in place: a runner finding the folder's build lock
    held (by "another process": a lock of the test's own) makes no session until it is
    released, and holds the lock itself while its session builds or reads the engine."""
    from filelock import FileLock, Timeout

    _with_tensorrt(monkeypatch)
    settings = _settings(export_dir)
    lock_path = settings.cache_folder(export_dir / "model.onnx") / "build.lock"
    held_while_made = []

    def lock_held(record) -> None:
        probe = FileLock(lock_path)
        try:
            probe.acquire(timeout=0)
        except Timeout:
            held_while_made.append(True)
        else:
            probe.release()
            held_while_made.append(False)

    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP), on_session=lock_held)
    holder, made = FileLock(lock_path), []
    holder.acquire()
    worker = threading.Thread(
        target=lambda: made.append(_runner(monkeypatch, fake, export_dir, tensorrt=settings)))
    try:
        with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
            worker.start()
            deadline = time.monotonic() + 60
            while "another process is building or loading the TensorRT engine in" not in caplog.text:
                assert worker.is_alive() and time.monotonic() < deadline, caplog.text
                time.sleep(0.05)
            assert fake.sessions == []
            holder.release()
            worker.join(timeout=60)
    finally:
        if holder.is_locked:
            holder.release()
    assert not worker.is_alive() and made and made[0].providers[0] == TENSORRT_EP
    assert held_while_made == [True]


def test_the_host_runner_gives_the_tensorrt_provider_the_exports_profile(monkeypatch, export_dir,
                                                                          cache, caplog):
    """``tf-detect --backend onnxruntime --providers tensorrt``: create_runner gives the
    folder's profile and input name; a runner made without them warns of the rebuilds."""
    fake = GpuListingOrt(started=(TENSORRT_EP,))
    monkeypatch.setattr(onnxruntime_runner, "import_onnxruntime", lambda: fake)
    runner = create_runner("onnxruntime", load_export_folder(export_dir), providers="tensorrt")
    (session,) = fake.sessions
    engines = _engine_folder(cache)
    assert session["options"][TENSORRT_EP] == {
        "trt_profile_min_shapes": "image:1x3x1x1", "trt_profile_opt_shapes": "image:1x3x2160x3840",
        "trt_profile_max_shapes": "image:1x3x3840x3840",
        "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(engines),
        "trt_timing_cache_enable": "True"}
    assert runner.providers == [TENSORRT_EP, CPU_EP]
    with pytest.raises(ManifestError, match="outside the input-shape profile of ONNX Runtime's"):
        runner.check_levels([SimpleNamespace(height=8, width=3841)])
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        runner = onnxruntime_runner.OnnxRuntimeRunner(export_dir / "model.onnx", providers="tensorrt")
    assert fake.sessions[-1]["options"][TENSORRT_EP] == {}
    assert ("ONNX Runtime's TensorRT provider without an input-shape profile builds its engine at "
            "the first run and again for every input shape outside those seen so far") in caplog.text
    runner.check_levels([SimpleNamespace(height=8, width=3841)])  # its engine grows instead


def test_providers_cuda_leaves_the_tensorrt_provider_out(host, monkeypatch, export_dir, cache):
    """An image larger than the export's profile runs on the CUDA provider alone: providers
    'cuda' (tf-detect --providers cuda); the old boolean parameter still reads."""
    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP))
    _use_ort(monkeypatch, fake)
    folder = load_export_folder(export_dir)
    runners = [create_runner("onnxruntime-cuda", folder, providers=p)
               for p in ("cuda", ["CUDAExecutionProvider", "cpu"], "tensorrt,cuda", None)]
    assert [s["providers"][0] for s in fake.sessions] == [CUDA_EP, CUDA_EP, TENSORRT_EP, TENSORRT_EP]
    assert [r.tensorrt is None for r in runners] == [True, True, False, False]
    runners[0].check_levels([SimpleNamespace(height=3841, width=8)])
    with pytest.raises(TinyFacesError, match=r"its providers are 'cuda' \(that one alone\) or "
                                             r"'tensorrt,cuda' \(the default\), got 'cpu'"):
        create_runner("onnxruntime-cuda", folder, providers="cpu")
    assert _runner(monkeypatch, fake, export_dir, tensorrt=False).providers[0] == CUDA_EP
    with pytest.raises(TypeError, match=r"^tensorrt must be TensorrtEpSettings"):
        _runner(monkeypatch, fake, export_dir, tensorrt=True)


def test_a_batch_profile_splits_a_batch_at_its_size(host, monkeypatch, export_dir, cache):
    """A profile for batches of up to 4 images: detect_batch of 5 runs each level twice (4 + 1),
    and the boxes are those of detect."""
    _with_tensorrt(monkeypatch)
    folder = load_export_folder(export_dir)
    settings = TensorrtEpSettings(Profile((1, 3, 1, 1), (4, 3, 64, 64), (4, 3, 3840, 3840)))
    runner = _runner(monkeypatch, GpuListingOrt(started=(TENSORRT_EP, CUDA_EP)), export_dir,
                     tensorrt=settings)
    assert runner.capabilities == RunnerCapabilities(device_io=True, batch=True, max_batch=4,
                                                   gpu=True)
    config = folder.config.with_(prob_thresh=0.05)
    detector = Detector(runner, config)  # host stages: this checks the split, not the stages
    batches: list[int] = []
    run = runner.run
    monkeypatch.setattr(runner, "run", lambda x: batches.append(len(x)) or run(x))
    images = [np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8) for i in range(5)]
    boxes = detector.detect_batch(images)
    levels = len(plan_pyramid(40, 48, config))
    assert sorted(batches) == [1] * levels + [4] * levels
    assert sum(len(b) for b in boxes) > 0
    for image, found in zip(images, boxes):
        np.testing.assert_allclose(found, detector.detect(image), atol=1e-4)


def test_a_failed_tensorrt_session_lets_the_engine_lock_go(host, monkeypatch, export_dir, cache):
    """The TensorRT provider failing to build: the session on the CUDA provider alone follows,
    without the lock, and the lock is free for other processes afterwards."""
    from filelock import FileLock

    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(CUDA_EP,), fails=(TENSORRT_EP,))
    runner = _runner(monkeypatch, fake, export_dir)
    assert [s["providers"][0] for s in fake.sessions] == [TENSORRT_EP, CUDA_EP]
    assert runner.tensorrt is None
    with FileLock(_engine_folder(cache) / "build.lock").acquire(timeout=0):
        pass


def test_engines_onnx_runtime_cannot_read_are_removed_and_built_again(host, monkeypatch, export_dir,
                                                                      cache, caplog):
    """An engine a killed process left truncated fails the session that reads it: the runner
    sets aside what was cached before the session (engines, profiles, the timing cache),
    makes it again, once, and removes them when that succeeds; what a failing session wrote
    itself is kept, and not retried. A set-aside file a killed retry left is removed."""
    _with_tensorrt(monkeypatch)
    engines = _settings(export_dir).cache_folder(export_dir / "model.onnx")
    for name in ("graph_fp16_sm90.engine", "graph_fp16_sm90.profile"):
        (engines / name).write_bytes(b"trunc")
    (engines / "TensorrtExecutionProvider_cache_sm90.timing").write_bytes(b"kept")
    (engines / "graph_fp16_sm80.engine.aside").write_bytes(b"left by a killed retry")

    def unreadable(record) -> None:
        if TENSORRT_EP in record["providers"] and any(engines.glob("*.engine")):
            raise RuntimeError("TensorRT EP could not deserialize engine from cache")

    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP), on_session=unreadable)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        runner = _runner(monkeypatch, fake, export_dir)
    assert [s["providers"][0] for s in fake.sessions] == [TENSORRT_EP, TENSORRT_EP]
    assert runner.providers[0] == TENSORRT_EP
    assert sorted(p.name for p in engines.iterdir()) == ["build.lock"]
    assert (f"ONNX Runtime's TensorRT provider failed over the engines cached in {engines} "
            "(TensorRT EP could not deserialize engine from cache); building the engine again "
            "without them") in caplog.text
    assert ("removed the cached engines ONNX Runtime's TensorRT provider could not use from "
            f"{engines}") in caplog.text

    def builds_then_fails(record) -> None:  # e.g. out of GPU memory after writing its engine
        if TENSORRT_EP in record["providers"]:
            (engines / "graph_sm90.engine").write_bytes(b"good")
            raise RuntimeError("CUDA out of memory")

    fake = GpuListingOrt(started=(CUDA_EP,), on_session=builds_then_fails)
    _runner(monkeypatch, fake, export_dir)  # no second build: straight to the CUDA provider
    assert [s["providers"][0] for s in fake.sessions] == [TENSORRT_EP, CUDA_EP]
    assert (engines / "graph_sm90.engine").read_bytes() == b"good"


def test_engines_are_put_back_when_the_session_fails_without_them_too(host, monkeypatch, export_dir,
                                                                      cache, caplog):
    """A session failing for a cause other than its cached files (out of GPU memory, say) fails
    again without them: they are put back as they were, and the runner goes on with the CUDA
    provider alone. Where the second session wrote a file before failing (an engine it built),
    that newer file stays."""
    _with_tensorrt(monkeypatch)
    engines = _settings(export_dir).cache_folder(export_dir / "model.onnx")
    cached = {"graph_sm90.engine": b"good engine", "graph_sm90.profile": b"good profile",
              "TensorrtExecutionProvider_cache_sm90.timing": b"good timing"}
    for name, data in cached.items():
        (engines / name).write_bytes(data)
    seen: list[list[str]] = []

    def out_of_memory(record) -> None:  # loading the engine, or building one
        if TENSORRT_EP in record["providers"]:
            seen.append(sorted(p.name for p in engines.iterdir()))
            raise RuntimeError("CUDA out of memory")

    fake = GpuListingOrt(started=(CUDA_EP,), on_session=out_of_memory)
    with caplog.at_level(logging.WARNING, logger="tinyfaces_trt"):
        runner = _runner(monkeypatch, fake, export_dir)
    assert [s["providers"][0] for s in fake.sessions] == [TENSORRT_EP, TENSORRT_EP, CUDA_EP]
    assert runner.tensorrt is None
    assert set(seen[1]) == {"build.lock", *(f"{n}.aside" for n in cached)}
    assert {p.name: p.read_bytes() for p in engines.iterdir() if p.name != "build.lock"} == cached
    assert (f"failed without the cached engines too; they are kept in {engines}") in caplog.text

    def built_then_out_of_memory(record) -> None:
        if TENSORRT_EP in record["providers"]:
            if (engines / "graph_sm90.engine").exists():
                raise RuntimeError("TensorRT EP could not deserialize engine from cache")
            (engines / "graph_sm90.engine").write_bytes(b"built again")
            raise RuntimeError("CUDA out of memory")

    _runner(monkeypatch, GpuListingOrt(started=(CUDA_EP,), on_session=built_then_out_of_memory),
            export_dir)
    assert {p.name: p.read_bytes() for p in engines.iterdir() if p.name != "build.lock"} == \
        {**cached, "graph_sm90.engine": b"built again"}  # the rest put back, nothing set aside


def test_without_the_lock_the_engine_is_built_outside_the_cache(host, monkeypatch, export_dir,
                                                                cache, caplog):
    """A file system refusing the lock: the session builds without the engine cache (ONNX
    Runtime writes in place, where another process may read), unless the folder is
    read-only (an engine shipped in an image), which is read."""
    _with_tensorrt(monkeypatch)
    engines = _settings(export_dir).cache_folder(export_dir / "model.onnx")

    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP))
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        _runner(monkeypatch, fake, export_dir)
    options = fake.sessions[-1]["options"][TENSORRT_EP]
    assert "trt_profile_max_shapes" in options and "trt_engine_cache_enable" not in options
    assert (f"builds its engine without the cache {engines}: its lock is not held") in caplog.text
    writable = os.access
    monkeypatch.setattr(ort_tensorrt.os, "access",
                        lambda path, mode: False if path == engines else writable(path, mode))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tinyfaces_trt"):
        _runner(monkeypatch, fake, export_dir)
    assert fake.sessions[-1]["options"][TENSORRT_EP]["trt_engine_cache_path"] == str(engines)
    assert f"reading the TensorRT engine cache {engines} without its lock" in caplog.text


def test_auto_leaves_the_cpu_backends_options_behind(host, monkeypatch, export_dir, cache):
    """create_detector("auto", providers=..., threads=...) where auto picks onnxruntime-cuda:
    the options were the CPU default's, and are not used (not refused)."""
    from tinyfaces_trt import detectors

    fake = GpuListingOrt(started=(CUDA_EP,))
    _use_ort(monkeypatch, fake)
    monkeypatch.setattr(detectors, "resolve_backend", lambda *a, **k: "onnxruntime-cuda")
    with detectors.create_detector("auto", model_dir=export_dir, providers="cpu", threads=2,
                                   gpu_stages=False) as detector:
        assert detector.runner.providers == [CUDA_EP, CPU_EP]
    with pytest.raises(TinyFacesError, match=r"got 'cpu'"):  # asked for by name: refused
        detectors.create_detector("onnxruntime-cuda", model_dir=export_dir, providers="cpu")


def test_an_engine_build_is_said_through_progress(host, monkeypatch, export_dir, cache):
    """The build takes minutes: the line before and after it goes to ``progress`` (tf-detect's
    stderr); loading an engine already built says nothing there."""
    _with_tensorrt(monkeypatch)
    fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP))
    _use_ort(monkeypatch, fake)
    said: list[str] = []
    folder = load_export_folder(export_dir)
    create_runner("onnxruntime-cuda", folder, progress=said.append).close()
    engines = _engine_folder(cache)
    assert said[0] == (f"ONNX Runtime's TensorRT provider: building its engine for input shapes "
                       f"1x3x1x1 to 1x3x3840x3840 into {engines} (one time; minutes) ...")
    assert re.fullmatch(r"ONNX Runtime's TensorRT provider: engine ready in \d+\.\d s", said[1])
    assert len(said) == 2
    (engines / "graph_sm90.engine").write_bytes(b"built")  # what ONNX Runtime would write
    said.clear()
    create_runner("onnxruntime-cuda", folder, progress=said.append).close()
    assert said == []
    (engines / "graph_sm90.engine").unlink()
    from tinyfaces_trt import detectors

    with detectors.create_detector("onnxruntime-cuda", model_dir=export_dir, gpu_stages=False,
                                   progress=said.append):  # tf-detect's way in
        assert said[0].startswith("ONNX Runtime's TensorRT provider: building its engine")


def test_a_wait_for_another_processs_build_is_said_through_progress(host, monkeypatch, export_dir,
                                                                    cache):
    """Waiting for another process's engine build takes as long as the build: said where the
    build would be (tf-detect's stderr)."""
    from filelock import FileLock

    _with_tensorrt(monkeypatch)
    said: list[str] = []
    settings = TensorrtEpSettings(load_export_folder(export_dir).profile, progress=said.append)
    engines = settings.cache_folder(export_dir / "model.onnx")
    holder = FileLock(engines / "build.lock")
    holder.acquire()
    try:
        fake = GpuListingOrt(started=(TENSORRT_EP, CUDA_EP))
        worker = threading.Thread(target=lambda: _runner(monkeypatch, fake, export_dir,
                                                         tensorrt=settings).close())
        worker.start()
        deadline = time.monotonic() + 60
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        holder.release()
    worker.join(timeout=60)
    assert said[0].startswith(f"another process is building or loading the TensorRT engine in "
                              f"{engines}; waiting for it to finish")
    assert said[1].startswith("ONNX Runtime's TensorRT provider: building its engine")
