"""onnxruntime-gpu as the runtime sees it, over the real (CPU) onnxruntime.

``GpuListingOrt`` lists the CUDA and TensorRT providers, and its sessions report what a
scenario says ONNX Runtime did with them (which providers started, whether they kept our
``user_compute_stream``); the network itself runs on the CPU provider.

:func:`install` puts the whole onnxruntime-cuda backend on this machine: the onnxruntime module
lists the GPU providers everywhere it is asked (``available_backends``, ``create_detector``,
the benchmark's probes), and ``OnnxRuntimeCudaRunner`` binds its input and output to host
memory (``device_type = "cpu"``), the output declared as device memory to the host CUDA double
(tests/host_cudart.py, which must be installed too) until the runner closes, as ONNX Runtime
allocates it on a GPU.
Nothing of ONNX Runtime's GPU providers runs.
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort

from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import (CUDA_EP, TENSORRT_EP,
                                                                    OnnxRuntimeCudaRunner)

CPU_EP = "CPUExecutionProvider"
NO_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
_SESSION = ort.InferenceSession  # the real one, whatever install() puts in its place


def _strict(options: Any) -> bool:
    try:
        return options.get_session_config_entry(NO_CPU_FALLBACK) == "1"
    except RuntimeError:  # ORT raises for a key that was never set
        return False


class GpuListingOrt:
    """onnxruntime with the GPU providers listed; sessions report ``started`` providers (those
    asked for that are in it, then the CPU) and drop the stream of ``loses_stream`` providers;
    a session asked for one of ``fails`` raises, as ONNX Runtime does with ``enable_fallback``
    off. Provider options come back as ONNX Runtime reports them (``ToProviderOptions``): the
    stream in decimal, "0" when it was not taken, with ``has_user_compute_stream``.
    ``sessions`` records each session asked for: its providers, options and strictness;
    ``on_session`` is called with that record as a session is made (a build starts)."""

    def __init__(self, listed=(TENSORRT_EP, CUDA_EP, CPU_EP), started=(CUDA_EP,), loses_stream=(),
                 fails=(), on_session=lambda record: None):
        self.listed, self.started, self.loses_stream = list(listed), started, loses_stream
        self.fails, self.on_session = fails, on_session
        self.sessions: list[dict] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(ort, name)

    def get_available_providers(self) -> list[str]:
        return self.listed

    def InferenceSession(self, path, sess_options=None, providers=None,  # noqa: N802 (ORT's name)
                         enable_fallback=1):
        asked = dict(p if isinstance(p, tuple) else (p, {}) for p in providers or [CPU_EP])
        self.sessions.append({"providers": list(asked), "options": asked,
                              "strict": sess_options is not None and _strict(sess_options),
                              "fallback": int(enable_fallback)})
        self.on_session(self.sessions[-1])
        failed = [p for p in asked if p in self.fails]
        if failed:
            raise RuntimeError(f"[ONNXRuntimeError] : 1 : FAIL : {failed[0]} could not be created")
        session = _SESSION(path, sess_options=sess_options, providers=[CPU_EP])
        return _ReportingSession(session, [p for p in asked if p in self.started] + [CPU_EP],
                                 {p: self._reported(p, o) for p, o in asked.items()
                                  if p in self.started})

    def _reported(self, provider: str, options: dict) -> dict:
        stream = 0 if provider in self.loses_stream else int(options.get("user_compute_stream", 0))
        return {**options, "user_compute_stream": str(stream),
                "has_user_compute_stream": "1" if stream else "0"}


class _ReportingSession:
    def __init__(self, session, providers, options):
        self._session, self._providers, self._options = session, providers, options

    def __getattr__(self, name):
        return getattr(self._session, name)

    def get_providers(self):
        return self._providers

    def get_provider_options(self):
        return self._options


def install(monkeypatch: Any, fake: GpuListingOrt | None = None) -> GpuListingOrt:
    """The onnxruntime-cuda backend over host memory for the rest of the test (see the module
    docstring); returns the stand-in, whose ``sessions`` say what was asked of ONNX Runtime."""
    fake = fake or GpuListingOrt()
    monkeypatch.setattr(ort, "get_available_providers", fake.get_available_providers)
    monkeypatch.setattr(ort, "InferenceSession", fake.InferenceSession)
    monkeypatch.setattr(OnnxRuntimeCudaRunner, "device_type", "cpu")
    device_run = OnnxRuntimeCudaRunner.run

    def run(self: OnnxRuntimeCudaRunner, net_input: Any) -> Any:
        out = device_run(self, net_input)
        if isinstance(out, cuda_device.DeviceArray):  # ORT's output: device memory on a GPU
            cuda_device.runtime().adopt(self, out.ptr, out.nbytes)
        return out

    monkeypatch.setattr(OnnxRuntimeCudaRunner, "run", run)
    device_close = OnnxRuntimeCudaRunner.close

    def close(self: OnnxRuntimeCudaRunner) -> None:
        device_close(self)
        cuda_device.runtime().disown(self)  # its output went with the session

    monkeypatch.setattr(OnnxRuntimeCudaRunner, "close", close)
    return fake
