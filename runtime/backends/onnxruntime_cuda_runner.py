"""ONNX Runtime on the GPU with device I/O: the CUDA (and TensorRT) execution providers.

    runner = OnnxRuntimeCudaRunner("export/model.onnx", stream=handle)
    scores = runner.run(device_input)   # (N, 3, h, w) device array -> (N, 125, h', w') device array

A device-I/O runner: the input is bound in place through ONNX Runtime's IOBinding (no copy),
the CUDA execution provider runs on :attr:`stream` (its ``user_compute_stream`` option) and
the output stays on the GPU as an ORT-allocated buffer, valid until the next :meth:`run`. A
numpy input takes the ordinary host path. Needs the ``onnxruntime-gpu`` build and cuda-python
(for the stream). With ``tensorrt`` settings (the export's profile, :mod:`.ort_tensorrt`),
ONNX Runtime's TensorRT provider comes first where TensorRT is installed, building one engine
for the whole profile, kept in the cache. What did not run where it was asked is stated: a
missing TensorRT provider is logged, and a TensorRT provider that ONNX Runtime dropped (it then
retries on CUDA without our stream) is replaced by the CUDA provider alone, with a warning. The
CPU provider stays in the list: ONNX Runtime's CUDA provider leaves small shape computations to
it by design (``GetCpuPreferredNodes``), so a session refusing CPU nodes is expected to fail on
this network (read in ORT's source; not run here, where there is no onnxruntime-gpu).

Precision (:attr:`OnnxRuntimeCudaRunner.precision`): the CUDA provider runs float32
convolutions and GEMMs with TF32 unless told otherwise (its ``use_tf32`` option is on by default,
``cuda_execution_provider_info.h``), so an fp32 export gets ``use_tf32`` "0" and runs in fp32;
an fp16 export runs its fp16 layers as they are. ONNX Runtime's TensorRT provider has no such
option (none in the TensorRT provider library of onnxruntime-gpu 1.18.0 or 1.31.1; onnxruntime
issue #26029) and TensorRT's builder allows TF32 by default, so an fp32 export on it runs with
TF32 convolutions: precision ``"tf32"``, compared at fp16-like tolerances
(:data:`tinyfaces_trt.parity.compare.TOLERANCES`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import NUM_CHANNELS
from tinyfaces_trt.core.errors import (BackendUnavailableError, ManifestError, TinyFacesError,
                                       first_line)
from tinyfaces_trt.core.optional import version_tuple
from tinyfaces_trt.runtime.backends.cuda_device import DeviceIoRunner
from tinyfaces_trt.runtime.backends.onnxruntime_runner import (CUDA_EP, OnnxRuntimeRunner,
                                                               import_onnxruntime, run_failure)
from tinyfaces_trt.runtime.backends.ort_tensorrt import TENSORRT_EP, TensorrtEpSettings

log = logging.getLogger(__name__)

#: The oldest onnxruntime-gpu whose CUDA and TensorRT providers take ``user_compute_stream``
#: from Python (onnxruntime PRs #19229 and #20168); older ones refuse the session.
MIN_ONNXRUNTIME_GPU_VERSION = "1.18"


def require_onnxruntime_cuda() -> list[str]:
    """ONNX Runtime's available providers, where the onnxruntime-cuda backend can run here.

    Raises:
        BackendUnavailableError: onnxruntime is missing, not the onnxruntime-gpu build (no
            CUDA execution provider) or older than :data:`MIN_ONNXRUNTIME_GPU_VERSION`, or no
            CUDA GPU is visible.
    """
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if CUDA_EP not in available:
        raise BackendUnavailableError(
            f"the onnxruntime-cuda backend needs the onnxruntime-gpu build (its CUDA execution "
            f"provider); this onnxruntime {ort.__version__} has {available}: "
            f"pip install onnxruntime-gpu")
    if version_tuple(ort.__version__) < version_tuple(MIN_ONNXRUNTIME_GPU_VERSION):
        raise BackendUnavailableError(
            f"the onnxruntime-cuda backend needs onnxruntime-gpu >= {MIN_ONNXRUNTIME_GPU_VERSION} "
            f"(it runs on the pipeline's CUDA stream); this is {ort.__version__}: "
            f"pip install -U onnxruntime-gpu")
    from tinyfaces_trt.runtime.backends import cuda_device

    if not cuda_device.gpu_available():
        raise BackendUnavailableError("the onnxruntime-cuda backend needs a CUDA GPU; none is visible")
    return available


def tensorrt_provider_usable(available: list[str]) -> bool:
    """Whether ONNX Runtime's TensorRT provider is tried first here: listed among ``available``
    and the tensorrt package installed. ORT lists that provider even without TensorRT's
    libraries, and when it fails ORT retries on CUDA *without our provider options* (the
    stream)."""
    return TENSORRT_EP in available and importlib.util.find_spec("tensorrt") is not None


class OnnxRuntimeCudaRunner(DeviceIoRunner, OnnxRuntimeRunner):
    """The exported ONNX model on ONNX Runtime's CUDA execution provider, device in and out.

    A numpy input runs on the host path and returns numpy; a device input returns a
    :class:`~.cuda_device.DeviceArray` made on :attr:`stream` (:meth:`DeviceIoRunner.run
    <.cuda_device.DeviceIoRunner.run>`), over ONNX Runtime's output, kept with its binding
    until the next run. ONNX Runtime's failures on the input are a ``NetworkRunError`` (its
    exception the cause; the runner can run again).

    Args:
        onnx_path: the ``.onnx`` file (fp32, or fp16 with float32 I/O).
        stream: the ``cudaStream_t`` (int) or :class:`~.cuda_device.Stream` to run on
            (default: a new stream).
        device_id: the GPU: the current CUDA device (others are refused, as the stream and
            the CUDA stages are made on the current one).
        tensorrt: how ONNX Runtime's TensorRT provider builds its engine (the export's
            profile and input name); with them it comes first where this build lists it and
            the tensorrt package is installed. None (or False): the CUDA provider alone.
        fp16: whether ``onnx_path`` is an fp16 export (None: read from the export folder);
            an fp32 one runs on the CUDA provider without TF32 (``use_tf32`` "0"), and
            ``precision`` says what ran (:class:`OnnxRuntimeRunner`).

    Raises:
        BackendUnavailableError: no onnxruntime-gpu (CUDA provider), cuda-python or GPU.
        ManifestError: the model file is missing or not the detector network.
    """

    #: Where the bound input and output live for IOBinding ("cpu" runs the same device path
    #: on ONNX Runtime's CPU provider over host memory: tests/helpers_ort_gpu.py).
    device_type = "cuda"
    _last_output: Any = None  # the last device run's binding and ORT-owned output

    def __init__(self, onnx_path: str | os.PathLike[str], stream: Any = None,
                 device_id: int = 0, tensorrt: TensorrtEpSettings | bool | None = None,
                 fp16: bool | None = None) -> None:
        self._fp16 = fp16
        if tensorrt is False:  # the bool this parameter once was
            tensorrt = None
        elif tensorrt is not None and not isinstance(tensorrt, TensorrtEpSettings):
            raise TypeError(f"tensorrt must be TensorrtEpSettings (the export's input-shape "
                            f"profile and input name) or None, got {tensorrt!r}")
        available = require_onnxruntime_cuda()
        from tinyfaces_trt.runtime.backends import cuda_device

        current = cuda_device.current_device()
        if int(device_id) != current:
            raise TinyFacesError(
                f"device_id {device_id} is not the current CUDA device ({current}): the runner's "
                f"stream and the CUDA stages are made on the current device; choose the GPU with "
                f"CUDA_VISIBLE_DEVICES={device_id} (it is then device 0) or make it current first")
        self._take_stream(stream, cuda_device)
        if self.cuda_stream.handle == 0:
            raise TinyFacesError(
                "ONNX Runtime takes CUDA stream 0 (the legacy default stream, e.g. torch's "
                "default) as no stream and runs on streams of its own, unordered with the "
                "stages: give a created stream, or none (the runner makes one)")
        try:
            self._open_on_stream(onnx_path, available, device_id, tensorrt)
        except BaseException:
            self.close()
            raise

    def _open_on_stream(self, onnx_path: Any, available: list[str], device_id: int,
                        tensorrt: TensorrtEpSettings | None) -> None:
        """Opens the session with the GPU providers on :attr:`cuda_stream`; device I/O."""
        here = tensorrt_provider_usable(available)  # and the stream checked below
        use_trt = tensorrt is not None and here
        if tensorrt is not None and not here:
            log.info("no TensorRT here for ONNX Runtime's TensorRT provider; running on CUDA")
        elif tensorrt is None and here:
            log.info("no input-shape profile given for ONNX Runtime's TensorRT provider "
                     "(tensorrt=TensorrtEpSettings(...)); running on CUDA")
        handle = str(self.cuda_stream.handle)
        options = {CUDA_EP: {"device_id": str(int(device_id)), "user_compute_stream": handle},
                   TENSORRT_EP: {"device_id": str(int(device_id)), "user_compute_stream": handle}}
        for wanted in ([TENSORRT_EP, CUDA_EP], [CUDA_EP]) if use_trt else ([CUDA_EP],):
            try:
                self._open(onnx_path, wanted, options, tensorrt)
            except TinyFacesError as exc:
                if TENSORRT_EP not in wanted:
                    raise
                log.warning("ONNX Runtime's TensorRT provider did not start (%s); retrying with "
                            "the CUDA provider alone", first_line(exc))
                continue
            if self._on_our_stream(handle):
                break
            log.warning("ONNX Runtime dropped %s (running on %s without our CUDA stream); "
                        "retrying with the CUDA provider alone", wanted, self.providers)
        else:
            raise BackendUnavailableError(
                f"ONNX Runtime did not run its CUDA provider on the given stream "
                f"(providers {self.providers}); the device path needs that stream")
        self._start_device_io(self.cuda_stream, device_id)

    def _start_device_io(self, stream: Any, device_id: int) -> None:
        """Device in and out on ``stream`` (a ``cuda_device.Stream``), once the session is open."""
        self.cuda_stream, self.device_id = stream, int(device_id)
        self.capabilities = dataclasses.replace(self.capabilities, device_io=True)
        self._run_options = import_onnxruntime().RunOptions()
        # ordering is the stream's job: no host wait at the end of each run
        self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _open(self, onnx_path: Any, wanted: list[str], options: dict[str, dict[str, str]],
              tensorrt: TensorrtEpSettings | None) -> None:
        """Opens the session on ``wanted``, then the CPU provider (shape computations)."""
        super().__init__(onnx_path, providers=wanted, provider_options=options, tensorrt=tensorrt,
                         fp16=self._fp16)
        if CUDA_EP not in self.providers:
            raise BackendUnavailableError(f"ONNX Runtime could not start its CUDA provider "
                                          f"(running on {self.providers})")

    def _on_our_stream(self, handle: str) -> bool:
        """Whether the session's GPU providers kept our ``user_compute_stream``."""
        used = self.session.get_provider_options()
        # ORT reports the stream in decimal ("0" when it was not taken) and, where it says,
        # whether it runs on it
        return all(used.get(p, {}).get("user_compute_stream") == handle
                   and used.get(p, {}).get("has_user_compute_stream", "1") == "1"
                   for p in (TENSORRT_EP, CUDA_EP) if p in self.providers)

    def _is_open(self) -> bool:
        return getattr(self, "session", None) is not None

    def _release(self) -> None:
        """Drops the last output and the session."""
        self._last_output = None
        self.session = None

    def _run_host(self, net_input: Any) -> Any:
        scores = OnnxRuntimeRunner.run(self, net_input)
        self._last_output = None  # that run waited for ORT's work
        return scores

    def _check_device_input(self, x: Any) -> None:
        if self.tensorrt is not None:
            self.tensorrt.check([x.shape])

    def _run_device(self, x: Any, net_input: Any) -> Any:
        """Binds ``x`` in place and the output to ONNX Runtime's memory, and runs the session
        on :attr:`stream` without waiting for it.

        Raises:
            NetworkRunError: ONNX Runtime failed on the input (out of GPU memory, a provider
                error); its exception is the cause. The runner can run again.
        """
        session = self.session
        binding = None
        try:
            binding = session.io_binding()
            binding.bind_input(name=self.input_name, device_type=self.device_type,
                               device_id=self.device_id, element_type=np.float32,
                               shape=tuple(x.shape), buffer_ptr=x.ptr)
            binding.bind_output(self.output_name, device_type=self.device_type,
                                device_id=self.device_id)
            session.run_with_iobinding(binding, self._run_options)
        except TinyFacesError:
            raise
        except Exception as exc:  # ORT's own types (Fail, RuntimeException, ...), MemoryError
            raise run_failure(exc, x.shape) from exc
        finally:  # what was queued uses the binding until the next run
            self._last_output = binding
        (output,) = binding.get_outputs()
        shape = tuple(int(d) for d in output.shape())
        if len(shape) != 4 or shape[:2] != (x.shape[0], NUM_CHANNELS):
            raise ManifestError(f"{self.onnx_path}: network returned shape {shape} for input "
                                f"{x.shape}, expected ({x.shape[0]}, {NUM_CHANNELS}, h', w')")
        # keeps the ORT-owned output alive until the next run
        self._last_output = (binding, output)
        return self._cuda.DeviceArray(output.data_ptr(), shape, np.float32,
                                      owner=(binding, output, net_input), stream=self.cuda_stream)

    def __repr__(self) -> str:
        return (f"OnnxRuntimeCudaRunner({str(self.onnx_path)!r}, providers={self.providers}, "
                f"precision={getattr(self, 'precision', None)!r})")
