"""The backends the latency benchmark compares, each a pipeline with per-stage timing.

Every backend runs the same image through the same pyramid levels and reports seconds per
stage into a ``timings`` dict: ``preprocess`` (pyramid resize + normalise), ``network``
(all levels), ``network[L<i>]`` (level i), ``h2d`` / ``d2h`` (host<->device copies of the
network input / score map, where the backend lets them be timed apart), ``decode``, ``nms``.
A backend that cannot run here raises :class:`Skip` with the reason from :func:`probe` or
while building.

Backends whose name has no ``-host`` suffix run the runtime the way ``create_detector`` builds
it; ``torch-cuda`` is the runtime's GPU path: :class:`tinyfaces_trt.export.torch_cuda.TorchCudaRunner`
(fp16, torch.compile + CUDA graphs) with the CUDA stages (resize, decode, NMS) on one shared
stream, everything device-resident. ``-host`` backends run the network on the GPU but resize,
decode and NMS with numpy on the host.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import time
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.profiles import Profile, format_shape, profile_for_image_sizes
from tinyfaces_trt.runtime.pipeline import Detector
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.core.runner import RunnerBase, close_all
from tinyfaces_trt.detectors import DEFAULT_TORCH_MODE

from bench_common import one_line

Timings = MutableMapping[str, float]


class Skip(Exception):
    """The backend cannot run on this machine; the message is the reason."""


@dataclass
class BenchContext:
    """What every backend is built from (one model, one config, one pyramid)."""

    model: Any                       # torch TinyFacesNet, fp32 on the CPU
    config: DetectorConfig
    levels: list[PyramidLevel]
    image_hw: tuple[int, int]
    threads: int
    export_root: Path
    log: Callable[[str], None] = print
    torch_mode: str = DEFAULT_TORCH_MODE  # create_detector's torch_mode of the torch-cuda ones
    cache_dir: Path | None = None    # compile / ORT engine cache root (None: the tinyfaces cache)
    max_batch: int = 1               # images one TensorRT engine run takes (the batch rows')
    _folders: dict[str, Any] = field(default_factory=dict)

    def engine_profile(self) -> Profile:
        """The benchmark's TensorRT profile: this size's levels, batches of 1 to
        :attr:`max_batch` images (the batch rows run each level once per batch), tuned for one
        image (the latency rows, comparable with engines of batch 1)."""
        whole = profile_for_image_sizes([self.image_hw], self.config, self.max_batch)
        return Profile(whole.min, (1, *whole.opt[1:]), whole.max)

    def export_folder(self, fp16: bool = False, engine: bool = False) -> Any:
        """An export folder of the model (ONNX fp32 [+ fp16] [+ engine]), cached on disk."""
        from tinyfaces_trt.core.errors import ManifestError
        from tinyfaces_trt.core.manifest import load_export_folder

        h, w = self.image_hw
        batch = f"-b{self.max_batch}" if self.max_batch > 1 else ""
        tag = ("fp16" if fp16 else "fp32") + (f"-engine-{h}x{w}{batch}" if engine else "")
        if tag in self._folders:
            return self._folders[tag]
        path = self.export_root / tag
        try:
            folder = load_export_folder(path)
            folder.onnx_path(fp16)
            if engine:
                folder.engine_path(fp16)
            self.log(f"using the cached export {path}")
        except ManifestError:
            from tinyfaces_trt.export.export_pipeline import export_model

            self.log(f"exporting the model to {path} (one time) ...")
            export_model(self.model, self.config, path, fp16=fp16, engine=engine,
                         profile=self.engine_profile() if engine else None, verify=False,
                         log=lambda m: self.log("  " + m))
            folder = load_export_folder(path)
        self._folders[tag] = folder
        return folder


def model_digest(model: Any) -> str:
    """First 12 hex digits of the sha256 of the model's state (names a cached export)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------

class Pipeline:
    """One backend ready to run: ``detect(image, timings)`` -> (N, 5) boxes."""

    #: True when the backend queues device work (then an end-to-end pass without per-stage
    #: synchronisation is also timed).
    uses_gpu = False
    #: Where the host<->device copies are counted when they have no columns of their own.
    copies_note = ""
    #: Whether :meth:`detect_batch` exists (the port's reference pipeline has no batch mode).
    supports_batch = False
    #: Seconds spent preparing the network (compiling, capturing graphs) while building.
    prepare_seconds = 0.0

    def detect(self, image: np.ndarray, timings: Timings | None) -> np.ndarray:
        raise NotImplementedError

    def detect_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def page_locked_copy(self, image: np.ndarray) -> np.ndarray | None:
        """``image`` copied into page-locked memory this backend uploads without its staging
        copy (``Detector.image_buffer`` on the CUDA stages), or None where it has none."""
        return None

    def page_locked_uploads(self) -> int:
        """Images (or batches) uploaded straight from page-locked memory so far."""
        return 0

    def stats(self) -> dict[str, int]:
        """Counters of the last detect (candidates before NMS, for device postprocessing)."""
        return {}

    def runner_calls(self) -> int:
        """Network runs since the last :meth:`detect` / :meth:`detect_batch` began."""
        return 0

    def shape_modes(self, batch: int) -> str:
        """How the network's input shapes of batch size ``batch`` were prepared so far, e.g.
        ``"compile x8"`` or ``"compile x6, eager x2"`` (after any fallback); "" where the
        runner keeps no per-shape record (only torch-cuda does)."""
        return ""

    def fallbacks(self) -> str:
        """The input shapes prepared in another mode than asked (torch-cuda after a failed
        compile or capture), e.g. ``"1x3x1080x1920: graphs"``; "" where none."""
        return ""

    def synchronize(self) -> None:
        pass

    def close(self) -> None:
        pass


class ReferenceBench(Pipeline):
    """The port's get_detections flow (:mod:`bench_reference`)."""

    def __init__(self, ctx: BenchContext, device: str) -> None:
        from bench_reference import ReferencePipeline

        self.pipe = ReferencePipeline(copy.deepcopy(ctx.model), ctx.config, device)
        self.levels = ctx.levels
        self.uses_gpu = device != "cpu"
        if self.uses_gpu:
            self.copies_note = "copies inside preprocess (input) and decode (score maps)"

    def detect(self, image: np.ndarray, timings: Timings | None) -> np.ndarray:
        return self.pipe.detect(image, self.levels, timings)

    def synchronize(self) -> None:
        self.pipe.synchronize()


class LevelTimedRunner:
    """Wraps a runner: adds each call's synchronised time under ``network[L<i>]``.

    Time that the inner runner itself books under ``h2d`` / ``d2h`` during the call (copy
    timing runners) is left out of the level's number. Without ``timings`` (end-to-end and
    batch runs) it only counts the calls and adds no synchronisation. Other attributes are
    forwarded.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.timings: Timings | None = None
        self.index = 0

    def run(self, net_input: Any) -> Any:
        if self.timings is None:
            self.index += 1
            return self.inner.run(net_input)
        copies_before = self._copies()
        start = time.perf_counter()
        out = self.inner.run(net_input)
        self.synchronize()
        elapsed = time.perf_counter() - start
        key = f"network[L{self.index}]"
        self.timings[key] = self.timings.get(key, 0.0) + elapsed - (self._copies() - copies_before)
        self.index += 1
        return out

    def run_levels(self, net_inputs: list[Any]) -> list[Any]:
        """The inner runner's ``run_levels`` (``capabilities.concurrent_levels``): the
        levels run side by side, so only their sum is booked (under the detector's
        ``network``), none under ``network[L<i>]``; each level counts as a call."""
        self.index += len(net_inputs)
        return self.inner.run_levels(net_inputs)

    def _copies(self) -> float:
        t = self.timings or {}
        return t.get("h2d", 0.0) + t.get("d2h", 0.0)

    def synchronize(self) -> None:
        self.inner.synchronize()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class DetectorBench(Pipeline):
    """The runtime's :class:`Detector` over some runner and stages.

    Args:
        detector: the detector; its runner is wrapped for per-level timing.
        timed: objects with a ``timings`` attribute that book copies themselves.
    """

    supports_batch = True

    def __init__(self, detector: Detector, uses_gpu: bool = False, copies_note: str = "",
                 timed: tuple[Any, ...] = (), closers: tuple[Any, ...] = (),
                 prepare_seconds: float = 0.0, asked_mode: str | None = None) -> None:
        self.prepare_seconds = prepare_seconds
        self.asked_mode = asked_mode  # the TorchCudaRunner mode asked for, where one runs
        self.level_runner = LevelTimedRunner(detector.runner)
        detector.runner = self.level_runner
        self.detector = detector
        self.uses_gpu = uses_gpu
        self.copies_note = copies_note
        self.timed = (self.level_runner,) + tuple(timed)
        self.closers = closers
        self._page_locked: list[Any] = []  # PinnedBuffers of page_locked_copy

    def detect(self, image: np.ndarray, timings: Timings | None) -> np.ndarray:
        for obj in self.timed:
            obj.timings = timings
        self.level_runner.index = 0
        boxes = self.detector.detect(image, timings)
        if timings is not None:
            # the Detector booked the copies inside "network"; they have their own columns
            timings["network"] = timings.get("network", 0.0) - timings.get("h2d", 0.0) \
                - timings.get("d2h", 0.0)
        return boxes

    def detect_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        for obj in self.timed:
            obj.timings = None
        self.level_runner.index = 0
        return self.detector.detect_batch(images)

    def page_locked_copy(self, image: np.ndarray) -> np.ndarray | None:
        """On the CUDA stages: the image in page-locked memory of the kind
        ``Detector.image_buffer`` gives, freed explicitly by :meth:`close`.

        Raises:
            RuntimeError: the stages would not see that memory as page-locked."""
        from tinyfaces_trt.runtime.backends.cuda_device import PinnedBuffer, is_page_locked
        from tinyfaces_trt.runtime.backends.cuda_stages import CudaPreprocessor

        if not isinstance(self.detector.preprocessor, CudaPreprocessor):
            return None
        buffer = PinnedBuffer(image.nbytes)
        self._page_locked.append(buffer)
        if not is_page_locked(buffer.ptr, buffer.nbytes):  # the preprocessor would stage it
            raise RuntimeError("cudaMallocHost memory is not seen as page-locked "
                               "(cuda_device.is_page_locked): every image would be staged")
        frame = buffer.array(image.shape, np.uint8)
        np.copyto(frame, image)
        return frame

    def page_locked_uploads(self) -> int:
        return int(getattr(self.detector.preprocessor, "page_locked_uploads", 0))

    def stats(self) -> dict[str, int]:
        return dict(getattr(self.detector.postprocessor, "last_stats", None) or {})

    def _records(self) -> dict[tuple[int, ...], Any]:
        """TorchCudaRunner's ShapeRecord per input shape; {} for other runners."""
        runner = self.level_runner.inner  # or a wrapper feeding it from the host
        return getattr(runner, "records", None) or getattr(
            getattr(runner, "inner", None), "records", None) or {}

    def shape_modes(self, batch: int) -> str:
        modes = Counter(r.mode for shape, r in self._records().items() if shape[0] == batch)
        return ", ".join(f"{mode} x{count}" for mode, count in sorted(modes.items()))

    def fallbacks(self) -> str:
        if self.asked_mode is None:
            return ""
        return ", ".join(f"{format_shape(shape)}: {r.mode}"
                         for shape, r in self._records().items() if r.mode != self.asked_mode)

    def runner_calls(self) -> int:
        return self.level_runner.index

    def synchronize(self) -> None:
        for stage in (self.detector.preprocessor, self.level_runner, self.detector.postprocessor):
            stage.synchronize()

    def close(self) -> None:
        try:
            for obj in self.closers:
                obj.close()
        finally:  # the detector closed (or failed to): no upload of ours reads them now
            for buffer in self._page_locked:
                buffer.free()
            self._page_locked = []


class _CopyTimed(RunnerBase):
    """A host runner over a device runner that times the copies apart into ``timings``."""

    timings: Timings | None = None

    def _add_copy_times(self, h2d: float, d2h: float) -> None:
        if self.timings is not None:
            self.timings["h2d"] = self.timings.get("h2d", 0.0) + h2d
            self.timings["d2h"] = self.timings.get("d2h", 0.0) + d2h

    def warmup(self, shapes: Any) -> None:
        self.inner.warmup(shapes)  # the shapes it is fed are the shapes it runs


class CopyTimedTorchCuda(_CopyTimed):
    """Feeds :class:`~tinyfaces_trt.export.torch_cuda.TorchCudaRunner` from the host with the
    copies timed apart: ``h2d`` (numpy -> CUDA tensor), the runner device to device on its
    stream, ``d2h`` (score map -> numpy)."""

    def __init__(self, inner: Any) -> None:
        import torch

        self.torch = torch
        self.inner = inner
        self.timings: Timings | None = None

    def run(self, net_input: np.ndarray) -> np.ndarray:
        torch = self.torch
        start = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(net_input, dtype=np.float32)).to("cuda")
        torch.cuda.synchronize()
        uploaded = time.perf_counter()
        out = self.inner.run(x)
        self.inner.synchronize()
        computed = time.perf_counter()
        host = out.cpu().numpy()
        done = time.perf_counter()
        self._add_copy_times(uploaded - start, done - computed)
        return host

    def synchronize(self) -> None:
        self.inner.synchronize()

    def close(self) -> None:
        self.inner.close()


class CopyTimedDeviceRunner(_CopyTimed):
    """Feeds a device-capable runner (TensorRT) from the host with the copies timed apart.

    ``h2d``: numpy input -> device buffer; the runner runs device to device; ``d2h``: the
    score map back to numpy (what the runner would otherwise do inside ``run``).
    """

    def __init__(self, inner: Any) -> None:
        from tinyfaces_trt.runtime.backends import cuda_device

        self.cuda = cuda_device
        self.inner = inner
        # the inner runner's stream (runners give the handle, an int); this wrapper is a host runner
        self.inner_stream = cuda_device.Stream(handle=inner.stream)
        self.timings: Timings | None = None
        self._buffer: Any = None

    def run(self, net_input: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(net_input, dtype=np.float32)
        start = time.perf_counter()
        if self._buffer is None or self._buffer.nbytes < x.nbytes:
            if self._buffer is not None:
                self._buffer.free()
            self._buffer = self.cuda.DeviceBuffer(x.nbytes)
        self._buffer.upload(x, self.inner_stream)
        self.inner_stream.synchronize()
        uploaded = time.perf_counter()
        out = self.inner.run(self.cuda.DeviceArray(self._buffer.ptr, x.shape, np.float32,
                                                   owner=self._buffer, stream=self.inner_stream))
        self.inner_stream.synchronize()
        computed = time.perf_counter()
        host = np.empty(tuple(out.shape), dtype=np.float32)
        out.download(host)
        self.inner_stream.synchronize()
        done = time.perf_counter()
        self._add_copy_times(uploaded - start, done - computed)
        return host

    def synchronize(self) -> None:
        self.inner_stream.synchronize()

    def check_levels(self, shapes: Any) -> None:
        self.inner.check_levels(shapes)

    def close(self) -> None:
        if self._buffer is not None:
            self._buffer.free()
        self.inner.close()


# ---------------------------------------------------------------------------------------------
# Availability probes (a reason string, or None when the backend can be tried)
# ---------------------------------------------------------------------------------------------

def _torch_cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    return None


def _ort_provider_reason(provider: str) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    available = ort.get_available_providers()
    if provider not in available:
        return f"onnxruntime {ort.__version__} has no {provider} (available: {', '.join(available)})"
    return _gpu_reason()


def _ort_cpu_reason() -> str | None:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed"
    return None


def _gpu_reason() -> str | None:
    try:
        from tinyfaces_trt.runtime.backends.cuda_device import gpu_available, runtime

        runtime()
    except Exception as exc:
        return one_line(exc)
    return None if gpu_available() else "no CUDA GPU visible"


def _tensorrt_reason() -> str | None:
    try:
        from tinyfaces_trt.runtime.backends.tensorrt_runner import import_tensorrt

        import_tensorrt()
    except Exception as exc:
        return one_line(exc)
    return _gpu_reason()


def _kernels_reason() -> str | None:
    """None when cuda-python sees a GPU and the CUDA kernel library loads."""
    reason = _gpu_reason()
    if reason:
        return reason
    try:
        from tinyfaces_trt.kernels.binding import load_library

        load_library()
    except Exception as exc:
        return one_line(exc)
    return None


def _cuda_stages_reason() -> str | None:
    return _tensorrt_reason() or _kernels_reason()


def _torch_cuda_device_reason() -> str | None:
    return _torch_cuda_reason() or _kernels_reason()


def _ort_cuda_device_reason() -> str | None:
    return _ort_provider_reason("CUDAExecutionProvider") or _kernels_reason()


# ---------------------------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------------------------

def _reference(ctx: BenchContext) -> Pipeline:
    if ctx.config.variant != "pytorch":
        raise Skip("the reference is the PyTorch port's pipeline: variant 'pytorch' only")
    import torch

    return ReferenceBench(ctx, "cuda" if torch.cuda.is_available() else "cpu")


def _torch_cpu(ctx: BenchContext) -> Pipeline:
    from tinyfaces_trt.export.torch_runner import TorchRunner

    return DetectorBench(Detector(TorchRunner(ctx.model), ctx.config))


def _torch_cuda(dtype_name: str, mode: str) -> Callable[[BenchContext], Pipeline]:
    def build(ctx: BenchContext) -> Pipeline:
        import torch

        from tinyfaces_trt.export.torch_cuda import TorchCudaRunner

        inner = TorchCudaRunner(ctx.model, dtype=getattr(torch, dtype_name), mode=mode)
        if mode != "eager":
            ctx.log(f"preparing torch-cuda ({mode}) for {len(ctx.levels)} level shapes ...")
            inner.warmup((1, 3, lv.height, lv.width) for lv in ctx.levels)
        runner = CopyTimedTorchCuda(inner)
        return DetectorBench(Detector(runner, ctx.config), uses_gpu=True, timed=(runner,),
                             closers=(runner,))
    return build


def _torch_cuda_device(dtype_name: str, torch_mode: str | None = None,
                       concurrent_levels: bool | None = None
                       ) -> Callable[[BenchContext], Pipeline]:
    """The runtime's GPU path: ``TorchCudaRunner`` and the CUDA stages on one stream (what
    ``create_detector("torch-cuda")`` builds), from the benchmark's model, with every level's
    shape prepared before timing (the detector prepares a shape at its third run);
    ``torch_mode`` a name of ``create_detector``'s (default: ``--torch-mode``);
    ``concurrent_levels``: the runner's, small levels beside the others on streams of their
    own (None: ``create_detector``'s, :func:`~tinyfaces_trt.detectors.torch_cuda_concurrent_levels`;
    False skips where that is False too: the torch-cuda row is the same then)."""
    def build(ctx: BenchContext) -> Pipeline:
        from tinyfaces_trt.detectors import torch_cuda_concurrent_levels, torch_cuda_settings
        from tinyfaces_trt.runtime.backends.cuda_device import Stream
        from tinyfaces_trt.runtime.backends.cuda_stages import cuda_stages

        asked = torch_mode or ctx.torch_mode
        mode, fused = torch_cuda_settings(asked)
        concurrent = (torch_cuda_concurrent_levels(mode) if concurrent_levels is None
                      else concurrent_levels)
        if concurrent_levels is False and not torch_cuda_concurrent_levels(mode):
            raise Skip(f"the torch-cuda row runs every level in turn in torch mode {asked} "
                       f"(--torch-mode) already")
        stream = Stream()
        parts: list[Any] = [stream]
        try:
            pre, post = cuda_stages(ctx.config, stream)
            parts[:0] = [pre, post]
            runner = _device_runner(ctx, dtype_name, asked, stream=stream.handle,
                                    concurrent_levels=concurrent)
            parts.insert(0, runner)
            shapes = [(1, 3, lv.height, lv.width) for lv in ctx.levels]
            ctx.log(f"  preparing {len(shapes)} input shapes (torch mode {asked}"
                    + ("; torch.compile takes several seconds per shape" if mode == "compile"
                       else "") + ") ...")
            start = time.perf_counter()
            runner.warmup(shapes)
            prepared = time.perf_counter() - start
        except BaseException:
            _close_all(parts)
            raise
        unfused = _unfused() if fused else 0
        records = list(getattr(runner, "records", {}).values())
        loaded = sum(1 for r in records if getattr(r, "cache_loaded", False))
        note = (f"torch mode {asked}: TorchCudaRunner mode {runner.mode}"
                + (f" (asked {mode}: fell back)" if runner.mode != mode else "")
                + (", convolution epilogues fused by cuDNN" if fused else "")
                + (f" ({unfused} convolution shapes it refused run unfused)" if unfused else "")
                + (", levels side by side (run_levels: no per-level network times)"
                   if concurrent else "")
                + f", {len(shapes)} shapes prepared in {prepared:.1f} s"
                + (f" ({loaded} from the compile cache)" if runner.mode == "compile" else "")
                + (f" ({loaded} packages loaded, not compiled)" if runner.mode == "aoti" else "")
                + "; image upload inside preprocess, box download inside NMS")
        det = Detector(runner, ctx.config, preprocessor=pre, postprocessor=post)
        return DetectorBench(det, uses_gpu=True, copies_note=note, closers=tuple(parts),
                             prepare_seconds=prepared, asked_mode=mode)
    return build


def _unfused() -> int:
    """Convolution shapes cuDNN refused to fuse in this process (export/conv_fusion.py)."""
    from tinyfaces_trt.export.conv_fusion import unfused_shapes

    return unfused_shapes()


def _device_runner(ctx: BenchContext, dtype_name: str, torch_mode: str, **options: Any) -> Any:
    """The ``TorchCudaRunner`` of the torch-cuda device backends in ``torch_mode`` (a name of
    ``create_detector``'s), and of their precompile: the same settings name the same compile
    cache."""
    import torch

    from tinyfaces_trt.detectors import torch_cuda_settings

    try:
        from tinyfaces_trt.export.torch_cuda import TorchCudaRunner
    except ImportError as exc:
        raise Skip("the runtime's torch-cuda runner (tinyfaces_trt.export.torch_cuda) is "
                   f"not in this checkout: {one_line(exc)}") from None
    mode, fused = torch_cuda_settings(torch_mode)
    return TorchCudaRunner(ctx.model, device="cuda", dtype=getattr(torch, dtype_name), mode=mode,
                           cache_dir=ctx.cache_dir, fuse_epilogues=fused, **options)


def _torch_cuda_precompile(dtype_name: str, torch_mode: str
                           ) -> Callable[[BenchContext, list[tuple[int, ...]]], dict[Any, Any]]:
    """Compiles input shapes into the compile cache of the runner
    :func:`_torch_cuda_device` builds with the same arguments (same model, settings and cache
    folder); :class:`Skip` where torch sees no GPU (the kernel library is not needed here)."""
    def precompile(ctx: BenchContext, shapes: list[tuple[int, ...]]) -> dict[Any, Any]:
        reason = _torch_cuda_reason()
        if reason:
            raise Skip(reason)
        runner = _device_runner(ctx, dtype_name, torch_mode, progress=ctx.log)
        try:
            return runner.precompile(shapes)
        finally:
            runner.close()
    return precompile


def _close_all(parts: list[Any]) -> None:
    with contextlib.suppress(Exception):  # already failing: keep the first error
        close_all(parts)


def _factory_device(backend: str) -> Callable[[BenchContext], Pipeline]:
    """A backend as ``tinyfaces_trt.create_detector`` builds it from the benchmark's export."""
    def build(ctx: BenchContext) -> Pipeline:
        from tinyfaces_trt import detectors

        if backend not in detectors.BACKENDS:
            raise Skip(f"create_detector in this checkout has no {backend!r} backend (it has "
                       f"{', '.join(detectors.BACKENDS)})")
        det = detectors.create_detector(backend, model_dir=ctx.export_folder().path,
                                        cache_dir=ctx.cache_dir)
        precision = getattr(det.runner, "precision", None)  # "tf32" on ORT's TensorRT EP
        if isinstance(precision, str):
            _PRECISION_RAN[backend] = precision
        return DetectorBench(det, uses_gpu=True, closers=(det,),
                             copies_note=f"as create_detector({backend!r}) builds it")
    return build


def _onnxruntime(providers: list[str] | None, name: str = "") -> Callable[[BenchContext], Pipeline]:
    """ONNX Runtime on ``providers`` (None: the CPU) with numpy stages; the precision its
    session runs the fp32 export at is recorded under the backend ``name``
    (:data:`_PRECISION_RAN`)."""
    def build(ctx: BenchContext) -> Pipeline:
        from tinyfaces_trt.runtime.backends.onnxruntime_runner import OnnxRuntimeRunner
        from tinyfaces_trt.runtime.backends.ort_tensorrt import TensorrtEpSettings

        folder = ctx.export_folder()
        # the TensorRT EP, where asked for, builds one engine for the profile of the
        # tensorrt rows' engines; the CUDA EP runs the fp32 export in fp32 (use_tf32 "0")
        tensorrt = TensorrtEpSettings(ctx.engine_profile(), folder.input_name,
                                      cache_dir=ctx.cache_dir, progress=ctx.log)
        runner = OnnxRuntimeRunner(folder.onnx_path(), providers=providers, threads=ctx.threads,
                                   tensorrt=tensorrt, fp16=False)
        if providers and runner.providers[0] != providers[0]:
            raise Skip(f"onnxruntime could not start {providers[0]} (session runs on "
                       f"{runner.providers})")
        if name:
            _PRECISION_RAN[name] = runner.precision
        gpu = providers is not None
        return DetectorBench(Detector(runner, ctx.config), uses_gpu=gpu,
                             copies_note="copies inside network (ONNX Runtime session)" if gpu else "")
    return build


def _tensorrt(fp16: bool, cuda_stages: bool) -> Callable[[BenchContext], Pipeline]:
    def build(ctx: BenchContext) -> Pipeline:
        from tinyfaces_trt.runtime.pipeline import Detector
        from tinyfaces_trt.runtime.backends.tensorrt_runner import TensorRTRunner

        folder = ctx.export_folder(fp16=fp16, engine=True)
        # on a stream of its own, which its close() destroys
        trt_runner = TensorRTRunner(folder.engine_path(fp16), input_name=folder.input_name,
                                    output_name=folder.output_name,
                                    manifest_profile=folder.profile)
        if cuda_stages:
            from tinyfaces_trt.runtime.backends.cuda_stages import cuda_stages as make_stages

            try:
                pre, post = make_stages(ctx.config, trt_runner.cuda_stream)
            except BaseException:
                trt_runner.close()
                raise
            det = Detector(trt_runner, ctx.config, preprocessor=pre, postprocessor=post)
            return DetectorBench(det, uses_gpu=True, closers=(pre, post, trt_runner),
                                 copies_note="image upload inside preprocess, box download "
                                             "inside nms")
        runner = CopyTimedDeviceRunner(trt_runner)
        det = Detector(runner, ctx.config)
        return DetectorBench(det, uses_gpu=True, timed=(runner,), closers=(runner,))
    return build


#: The precision each ONNX Runtime GPU backend's last build ran at, as its session says
#: (``"tf32"``: the fp32 export with TF32 convolutions, on ONNX Runtime's TensorRT EP).
_PRECISION_RAN: dict[str, str] = {}


def _ran_or(name: str, expected: Callable[[], str]) -> Callable[[], str]:
    """The precision the backend ``name`` ran at once built here, else ``expected()``."""
    return lambda: _PRECISION_RAN.get(name) or expected()


def _ort_cuda_backend_precision() -> str:
    """What ``create_detector('onnxruntime-cuda')`` runs the fp32 export at here: TF32 where
    its runner tries ONNX Runtime's TensorRT EP first (listed, and the tensorrt package
    installed), else fp32 (the CUDA EP with ``use_tf32`` off)."""
    from tinyfaces_trt.runtime.backends.onnxruntime_cuda_runner import tensorrt_provider_usable
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import TF32

    try:
        import onnxruntime as ort
    except ImportError:
        return "fp32"
    return TF32 if tensorrt_provider_usable(ort.get_available_providers()) else "fp32"


def _cuda_ep_precision() -> str:
    """What ONNX Runtime's CUDA EP runs the fp32 export at here: fp32 where it takes
    ``use_tf32`` "0" (onnxruntime >= 1.18), else TF32 (its default)."""
    from tinyfaces_trt.runtime.backends.onnxruntime_runner import TF32, cuda_provider_options

    try:
        import onnxruntime as ort
    except ImportError:
        return "fp32"
    return "fp32" if cuda_provider_options(False, ort.__version__) else TF32


@dataclass(frozen=True)
class BackendSpec:
    """One benchmark backend.

    Attributes:
        name, description: how the report names and describes it.
        probe: the reason it cannot run here, or None.
        build: makes its pipeline.
        precision_at: the parity tolerances it is held to (a key of the parity package's
            ``TOLERANCES``: "fp32", "fp16" or "tf32"), or a function giving them here (what
            ONNX Runtime's providers run the fp32 export at depends on the machine).
        precompile: for a backend that compiles its network per input shape into a cache on
            disk (``torch-cuda-compile``), compiles the given shapes there without building
            the pipeline (another process readies the cache for the run: ``latency.py
            --precompile``); returns the runner's records per shape.
    """

    name: str
    description: str
    probe: Callable[[], str | None]
    build: Callable[[BenchContext], Pipeline]
    precision_at: str | Callable[[], str] = "fp32"
    precompile: Callable[[BenchContext, list[tuple[int, ...]]], dict[Any, Any]] | None = None

    @property
    def precision(self) -> str:
        """The parity tolerances (see ``precision_at``)."""
        return self.precision_at() if callable(self.precision_at) else self.precision_at


BACKENDS: tuple[BackendSpec, ...] = (
    BackendSpec("reference", "tiny-faces-pytorch flow: PIL resize per level, torch ToTensor+"
                "Normalize, torch eager fp32 (CUDA if present), numpy get_bboxes on NHWC, "
                "py_cpu_nms-style numpy NMS", lambda: None, _reference),
    BackendSpec("torch", "runtime pipeline, torch eager fp32 on the CPU, numpy resize/decode/NMS",
                lambda: None, _torch_cpu),
    BackendSpec("torch-cuda", "runtime GPU pipeline as create_detector('torch-cuda') builds "
                "it: TorchCudaRunner fp16 (--torch-mode, default fused: the BatchNorm-folded "
                "network, channels_last, each convolution with its bias, residual add and ReLU "
                "in one cuDNN call, one CUDA graph per shape; in modes fused and graphs the "
                "small levels, up to 2^19 input pixels, replay on streams of their own beside "
                "the large ones), CUDA resize + decode + NMS on the runner's stream",
                _torch_cuda_device_reason, _torch_cuda_device("float16"),
                precision_at="fp16"),
    BackendSpec("torch-cuda-in-turn", "runtime GPU pipeline as torch-cuda, every pyramid level "
                "in turn on the one stream: TorchCudaRunner(concurrent_levels=False) (torch-cuda's "
                "default before run 5 measured levels side by side faster), with per-level "
                "network times",
                _torch_cuda_device_reason, _torch_cuda_device("float16", concurrent_levels=False),
                precision_at="fp16"),
    BackendSpec("torch-cuda-compile", "runtime GPU pipeline as torch-cuda, the network by "
                "torch.compile (Inductor, BatchNorm folded) + CUDA graphs: torch mode compile",
                _torch_cuda_device_reason, _torch_cuda_device("float16", "compile"),
                precision_at="fp16", precompile=_torch_cuda_precompile("float16", "compile")),
    BackendSpec("torch-cuda-fp32", "runtime GPU pipeline as torch-cuda, network in fp32",
                _torch_cuda_device_reason, _torch_cuda_device("float32")),
    BackendSpec("torch-cuda-eager-host", "runtime pipeline, torch eager fp32 on CUDA, numpy "
                "stages", _torch_cuda_reason, _torch_cuda("float32", "eager")),
    BackendSpec("torch-cuda-eager-host-fp16", "runtime pipeline, torch eager fp16 on CUDA, "
                "numpy stages", _torch_cuda_reason, _torch_cuda("float16", "eager"),
                precision_at="fp16"),
    BackendSpec("torch-cuda-graphs-host-fp16", "runtime pipeline, torch fp16 on CUDA replaying "
                "one CUDA graph per level shape, numpy stages", _torch_cuda_reason,
                _torch_cuda("float16", "graphs"), precision_at="fp16"),
    BackendSpec("onnxruntime", "runtime pipeline, ONNX Runtime CPU EP (fp32), numpy stages",
                _ort_cpu_reason, _onnxruntime(None)),
    BackendSpec("onnxruntime-cuda", "runtime GPU pipeline as create_detector('onnxruntime-cuda') "
                "builds it (ONNX Runtime's TensorRT EP where TensorRT is installed, TF32; else "
                "the CUDA EP in fp32; IOBinding, CUDA stages)", _ort_cuda_device_reason,
                _factory_device("onnxruntime-cuda"),
                precision_at=_ran_or("onnxruntime-cuda", _ort_cuda_backend_precision)),
    BackendSpec("onnxruntime-cuda-host", "runtime pipeline, ONNX Runtime CUDA EP (fp32, use_tf32 "
                "off), numpy stages", lambda: _ort_provider_reason("CUDAExecutionProvider"),
                _onnxruntime(["CUDAExecutionProvider"], "onnxruntime-cuda-host"),
                precision_at=_ran_or("onnxruntime-cuda-host", _cuda_ep_precision)),
    BackendSpec("onnxruntime-trt", "runtime pipeline, ONNX Runtime TensorRT EP (the fp32 export "
                "with TF32 convolutions, TensorRT's default; one engine for this size's levels "
                "and --batch, built with the session or loaded from the cache), numpy stages",
                lambda: _ort_provider_reason("TensorrtExecutionProvider"),
                _onnxruntime(["TensorrtExecutionProvider", "CUDAExecutionProvider"],
                             "onnxruntime-trt"),
                precision_at=_ran_or("onnxruntime-trt", lambda: "tf32")),
    BackendSpec("tensorrt", "runtime pipeline, TensorRT fp32 engine, numpy resize/decode/NMS",
                _tensorrt_reason, _tensorrt(False, False)),
    BackendSpec("tensorrt-fp16", "runtime pipeline, TensorRT fp16 engine, numpy resize/decode/NMS",
                _tensorrt_reason, _tensorrt(True, False), precision_at="fp16"),
    BackendSpec("tensorrt-fp16-cuda", "runtime pipeline, TensorRT fp16 engine, CUDA resize + "
                "decode + NMS (device-resident)", _cuda_stages_reason, _tensorrt(True, True),
                precision_at="fp16"),
)

#: Backends that run on a GPU (everything but the CPU ones); the reference uses one when
#: torch sees it.
GPU_BACKENDS = tuple(b.name for b in BACKENDS if b.name not in ("reference", "torch", "onnxruntime"))
