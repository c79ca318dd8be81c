"""TensorRT network runner (TensorRT >= 10 named-tensor API, cuda-python streams and buffers).

    runner = TensorRTRunner("export/model.engine", input_name="image", output_name="scores",
                            manifest_profile=folder.profile)
    scores = runner.run(x)     # x: (N, 3, h, w) float32 numpy -> (N, 125, h', w') float32 numpy
                               # (N within the engine's profile: 1, or up to tf-export --max-batch)
    scores = runner.run(dev)   # device input (DeviceArray / __cuda_array_interface__) -> DeviceArray

Loading deserializes the engine, enumerates its I/O tensors and checks them against the
export manifest (tensor names, float32 I/O, 125 output channels, the optimization profile).
One execution context is created per optimization profile; the device buffers are sized
for the largest MAX shape over the profiles, so no allocation happens per call. A call picks
the first profile containing the input shape, sets the input shape and the tensor
addresses, and runs ``execute_async_v3`` on the runner's stream; the copies are
stream-ordered and the host waits once, before returning the scores.

An input shape outside every profile is a :class:`ManifestError` naming the shape and the
profile ranges (never a TensorRT crash); :meth:`TensorRTRunner.check_levels` checks a whole
pyramid before any work, which :meth:`~tinyfaces_trt.runtime.pipeline.Detector.detect` does
for every image.

``tensorrt`` is imported lazily: without it the runner raises :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import NUM_CHANNELS
from tinyfaces_trt.core.errors import (BackendUnavailableError, ManifestError, TinyFacesError,
                                       first_line)
from tinyfaces_trt.core.optional import import_tensorrt
from tinyfaces_trt.core.profiles import Profile, format_shape, input_shape
from tinyfaces_trt.core.runner import RunnerCapabilities, check_network_input
from tinyfaces_trt.runtime.backends.cuda_device import DeviceIoRunner

log = logging.getLogger(__name__)

#: Alignment TensorRT requires of tensor addresses (``IExecutionContext::setTensorAddress``);
#: a device input off it is copied into the runner's own buffer first.
TENSOR_ALIGNMENT = 256


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor: name, direction, TensorRT dtype name, shape (-1 = dynamic)."""

    name: str
    is_input: bool
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class EngineSignature:
    """What an engine exposes: its I/O tensors and, per optimization profile, the input range."""

    tensors: tuple[TensorInfo, ...]
    profiles: tuple[Profile, ...]

    @property
    def inputs(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.is_input]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [t for t in self.tensors if not t.is_input]


def describe_engine(engine: Any, trt: Any) -> EngineSignature:
    """Reads an engine's I/O tensors and input profiles through the TensorRT 10 API."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        tensors.append(TensorInfo(
            name=name,
            is_input=engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
            dtype=getattr(engine.get_tensor_dtype(name), "name", str(engine.get_tensor_dtype(name))),
            shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
        ))
    inputs = [t for t in tensors if t.is_input]
    profiles: list[Profile] = []
    if len(inputs) == 1:
        inp = inputs[0]
        try:
            if -1 in inp.shape:
                for p in range(engine.num_optimization_profiles):
                    lo, opt, hi = engine.get_tensor_profile_shape(inp.name, p)
                    profiles.append(Profile(tuple(lo), tuple(opt), tuple(hi)))
            else:
                profiles.append(Profile(inp.shape, inp.shape, inp.shape))
        except ManifestError as exc:
            raise ManifestError(f"engine input {inp.name!r} has an unusable profile: {exc}") from exc
    return EngineSignature(tuple(tensors), tuple(profiles))


def validate_engine(signature: EngineSignature, input_name: str, output_name: str,
                    manifest_profile: Profile | None = None, source: str = "engine") -> None:
    """Checks an engine against the export manifest.

    Raises:
        ManifestError: unless the engine has exactly one input named ``input_name`` and an
            output named ``output_name``, both float32; an (N, 3, h, w) input and an
            (N, 125, h', w') output (N = 1, or dynamic); and (when the manifest records one) an optimization
            profile equal to ``manifest_profile``.
    """
    inputs, outputs = signature.inputs, signature.outputs
    if [t.name for t in inputs] != [input_name]:
        raise ManifestError(f"{source}: engine inputs {[t.name for t in inputs]} do not match "
                            f"the manifest's input {input_name!r}")
    out = next((t for t in outputs if t.name == output_name), None)
    if out is None:
        raise ManifestError(f"{source}: engine outputs {[t.name for t in outputs]} do not "
                            f"include the manifest's output {output_name!r}")
    inp = inputs[0]
    for t in (inp, out):
        if t.dtype.upper() not in ("FLOAT", "FLOAT32"):
            raise ManifestError(f"{source}: tensor {t.name!r} is {t.dtype}, expected float32 "
                                "(fp16 engines keep float32 I/O)")
    if len(inp.shape) != 4 or inp.shape[1] != 3 or inp.shape[0] not in (1, -1):
        raise ManifestError(f"{source}: input {inp.name!r} has shape {list(inp.shape)}, "
                            "expected [N, 3, h, w]")
    if len(out.shape) != 4 or out.shape[1] != NUM_CHANNELS:
        raise ManifestError(f"{source}: output {out.name!r} has shape {list(out.shape)}, "
                            f"expected [N, {NUM_CHANNELS}, h, w] ({NUM_CHANNELS} channels)")
    if not signature.profiles:
        raise ManifestError(f"{source}: engine has no optimization profile for {inp.name!r}")
    if manifest_profile is not None and manifest_profile not in signature.profiles:
        raise ManifestError(
            f"{source}: the manifest's profile (min {format_shape(manifest_profile.min)}, max "
            f"{format_shape(manifest_profile.max)}) is not one of the engine's profiles "
            f"({describe_profiles(signature.profiles)}); was the engine built for another export?")


def describe_profiles(profiles: Sequence[Profile]) -> str:
    """``"profile 0: min 1x3x8x8 .. max 1x3x960x960; ..."``."""
    return "; ".join(f"profile {i}: min {format_shape(p.min)} .. max {format_shape(p.max)}"
                     for i, p in enumerate(profiles))


def select_profile(shape: Sequence[int], profiles: Sequence[Profile]) -> int:
    """Index of the first profile whose [min, max] box contains ``shape``.

    Raises:
        ManifestError: naming the shape and every profile's range when none contains it.
    """
    for i, profile in enumerate(profiles):
        if profile.contains(shape):
            return i
    if len(profiles) == 1:
        profiles[0].check(shape)  # raises, with the rebuild hint
    raise ManifestError(
        f"input shape {format_shape(shape)} is outside every optimization profile of the engine "
        f"({describe_profiles(profiles)}); rebuild the engine with tf-export --image-size "
        "covering this image, or use the onnxruntime backend")


def _volume(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class TensorRTRunner(DeviceIoRunner):
    """Runs a serialized TensorRT engine of the detector network.

    A device-I/O runner (:class:`~tinyfaces_trt.core.runner.RunnerCapabilities`,
    :class:`~.cuda_device.DeviceIoRunner`): given a device input it returns a device score map
    made on :attr:`stream`, over the runner's output buffer (valid until the next run), and the
    detector keeps every stage on the GPU; a host input comes back as numpy. It takes batches
    of up to the largest batch of the engine's profiles (``tf-export --max-batch``; 1 by
    default: single images); a shape outside every profile is a ``ManifestError``.

    Args:
        engine_path: the ``.engine`` file (from ``tf-export --engine``).
        input_name, output_name: tensor names from the export manifest.
        manifest_profile: the manifest's recorded profile, checked against the engine.
        stream: a :class:`~.cuda_device.Stream` or handle to run on (default: a new one).
        engine: an already deserialized engine (or a stand-in with the same methods) instead
            of ``engine_path``; ``trt`` and ``cuda`` likewise replace the tensorrt module and
            :mod:`.cuda_device`. For tests of this class's logic without TensorRT or a GPU.

    Raises:
        BackendUnavailableError: tensorrt, cuda-python or a GPU is missing.
        ManifestError: the engine file is missing, cannot be deserialized, or disagrees with
            the manifest.
    """

    def __init__(self, engine_path: str | os.PathLike[str] | None = None, input_name: str = "image",
                 output_name: str = "scores", manifest_profile: Profile | None = None,
                 stream: Any = None, *, engine: Any = None, trt: Any = None,
                 cuda: Any = None) -> None:
        trt = trt if trt is not None else import_tensorrt()
        if cuda is None:
            from tinyfaces_trt.runtime.backends import cuda_device as cuda
        self.engine_path = Path(engine_path) if engine_path is not None else Path("<injected engine>")
        if engine is None and not self.engine_path.is_file():
            raise ManifestError(f"TensorRT engine not found: {self.engine_path}")
        if not cuda.gpu_available():
            raise BackendUnavailableError("the tensorrt backend needs a CUDA GPU; none is visible")
        self._buffers: list[Any] = []
        self._contexts: list[Any] = []
        self.engine = engine if engine is not None else self._deserialize(trt)
        self.signature = describe_engine(self.engine, trt)
        validate_engine(self.signature, input_name, output_name, manifest_profile,
                        source=str(self.engine_path))
        self.input_name, self.output_name = input_name, output_name
        self.profiles = self.signature.profiles
        max_batch = max(p.max_batch for p in self.profiles)
        self.capabilities = RunnerCapabilities(device_io=True, batch=max_batch > 1,
                                               max_batch=max_batch)
        self._take_stream(stream, cuda)
        try:
            self._make_contexts(input_name, output_name)
        except BaseException:
            self.close()
            raise
        log.info("TensorRT %s engine %s: %s", trt.__version__, self.engine_path.name,
                 describe_profiles(self.profiles))

    def _make_contexts(self, input_name: str, output_name: str) -> None:
        """One execution context per profile; device buffers sized for the largest MAX shape."""
        max_in = max_out = 0
        for index, profile in enumerate(self.profiles):
            context = self.engine.create_execution_context()
            if context is None:
                raise TinyFacesError(f"TensorRT could not create an execution context for "
                                     f"profile {index} of {self.engine_path} (out of GPU memory?)")
            try:  # TensorRT raises where it refuses (it never returns False here)
                context.set_optimization_profile_async(index, self.stream)
            except RuntimeError as exc:
                raise ManifestError(f"TensorRT refused optimization profile {index} of "
                                    f"{self.engine_path}: {first_line(exc)}") from None
            if not context.set_input_shape(input_name, profile.max):
                raise ManifestError(f"TensorRT refused the input shape {format_shape(profile.max)} "
                                    f"of profile {index} of {self.engine_path}")
            max_in = max(max_in, _volume(profile.max))
            max_out = max(max_out, _volume(context.get_tensor_shape(output_name)))
            self._contexts.append(context)
        self.cuda_stream.synchronize()
        itemsize = np.dtype(np.float32).itemsize
        self._input = self._cuda.DeviceBuffer(max_in * itemsize)
        self._buffers.append(self._input)
        self._output = self._cuda.DeviceBuffer(max_out * itemsize)
        self._buffers.append(self._output)

    def _deserialize(self, trt: Any) -> Any:
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        try:
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        except Exception as exc:  # TensorRT raises its own types for corrupt data
            engine = None
            log.debug("deserialize_cuda_engine raised %r", exc)
        if engine is None:
            raise ManifestError(
                f"cannot deserialize TensorRT engine {self.engine_path} (built with another "
                f"TensorRT version or GPU? this is TensorRT {trt.__version__}); rebuild it")
        self._trt_runtime = runtime  # engines must not outlive their runtime
        return engine

    def check_levels(self, shapes: Iterable[Any]) -> None:
        """Checks that every input shape (or pyramid level) lies inside some profile.

        ``shapes`` holds (1, 3, h, w) tuples or objects with ``height``/``width`` (pyramid
        levels). Raises :class:`ManifestError` for the first that does not fit.
        """
        for s in shapes:
            select_profile(input_shape(s), self.profiles)

    def _is_open(self) -> bool:
        return bool(self._buffers)

    def _release(self) -> None:
        """Frees the device buffers and drops the contexts and the engine."""
        for buf in self._buffers:
            buf.free()
        self._buffers = []
        self._contexts = []
        self.engine = None

    def _run_host(self, net_input: Any) -> Any:
        return self._execute(check_network_input(net_input, self.capabilities.batch))

    def _run_device(self, x: Any, net_input: Any) -> Any:
        return self._execute(x)

    def _execute(self, x: Any) -> Any:
        """Queues the engine on a host array (uploaded; the scores come back synchronised) or a
        :class:`~.cuda_device.DeviceArray` (read in place, or copied in where TensorRT's
        alignment asks; the scores stay on the device)."""
        self._require_open(self.engine)
        on_device = not isinstance(x, np.ndarray)
        shape, input_ptr = tuple(x.shape), (x.ptr if on_device else self._input.ptr)
        context = self._contexts[select_profile(shape, self.profiles)]
        if on_device and input_ptr % TENSOR_ALIGNMENT:  # TensorRT's rule for tensor addresses
            self._input.copy_from_device(input_ptr, _volume(shape) * 4, self.cuda_stream)
            input_ptr = self._input.ptr
        if not context.set_input_shape(self.input_name, shape):
            raise TinyFacesError(f"TensorRT rejected input shape {format_shape(shape)}")
        out_shape = tuple(int(d) for d in context.get_tensor_shape(self.output_name))
        for name, ptr in ((self.input_name, input_ptr), (self.output_name, self._output.ptr)):
            if not context.set_tensor_address(name, ptr):
                raise TinyFacesError(f"TensorRT refused the address 0x{ptr:x} of tensor {name!r}")
        if not on_device:
            self._input.upload(x, self.cuda_stream)
        if not context.execute_async_v3(self.stream):
            raise TinyFacesError(f"TensorRT execution failed for input {format_shape(shape)}")
        if on_device:
            return self._cuda.DeviceArray(self._output.ptr, out_shape, np.float32,
                                          owner=self._output, stream=self.cuda_stream)
        scores = np.empty(out_shape, dtype=np.float32)
        self._output.download(scores, self.cuda_stream)
        self.cuda_stream.synchronize()
        return scores

    def __repr__(self) -> str:
        return f"TensorRTRunner({str(self.engine_path)!r}, {describe_profiles(self.profiles)})"
