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

import logging

import pytest

import host_cudart
from tinyfaces_trt.core.errors import BackendUnavailableError, ManifestError, TinyFacesError
from tinyfaces_trt.runtime.backends import cuda_device, onnxruntime_cuda_runner, onnxruntime_runner
from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import (CUDA_EP, TENSORRT_EP,
                                                                    OnnxRuntimeCudaRunner)

pytest.importorskip("onnxruntime")

from helpers_ort_gpu import CPU_EP, GpuListingOrt  # noqa: E402


@pytest.fixture
def host(monkeypatch):
    if host_cudart.missing():
        pytest.skip(host_cudart.missing())
    h = host_cudart.install(monkeypatch, finalizers=False)
    yield h
    h.release_all()


def _runner(monkeypatch, fake, export_dir, **kwargs):
    monkeypatch.setattr(onnxruntime_cuda_runner, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(onnxruntime_runner, "import_onnxruntime", lambda: fake)
    return OnnxRuntimeCudaRunner(export_dir / "model.onnx", **kwargs)


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
    assert session["options"][CUDA_EP] == {"device_id": "0", "user_compute_stream": str(stream.handle)}
    assert runner.providers == [CUDA_EP, CPU_EP]
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
    monkeypatch.setattr(onnxruntime_cuda_runner.importlib.util, "find_spec",
                        lambda name: object() if name == "tensorrt" else None)
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
    monkeypatch.setattr(onnxruntime_cuda_runner.importlib.util, "find_spec",
                        lambda name: object() if name == "tensorrt" else None)
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
    (tmp_path / "model.onnx").write_bytes(b"not a model")
    broken = GpuListingOrt()
    with pytest.raises(ManifestError, match="cannot load ONNX model"):
        _runner(monkeypatch, broken, tmp_path)
    assert len(broken.sessions) == 1  # not a placement problem: no retry
    with pytest.raises(TinyFacesError, match=r"^device_id 1 is not the current CUDA device \(0\): "
                                             r".* CUDA_VISIBLE_DEVICES=1 \(it is then device 0\)"):
        _runner(monkeypatch, GpuListingOrt(), export_dir, device_id=1)
    monkeypatch.setattr(cuda_device, "gpu_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU; none is visible"):
        _runner(monkeypatch, GpuListingOrt(), export_dir)
    assert host.calls["cudaStreamCreate"] == 2 and host.live()["streams"] == 0
