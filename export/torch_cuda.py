"""The ``torch-cuda`` network runner: the Tiny Faces network on any GPU torch sees, fast.

:class:`TorchCudaRunner` runs the network in fp16 (or fp32) with channels_last weights and
keeps, per input shape, a ready callable:

``mode="compile"`` (the class's default; ``create_detector("torch-cuda")`` runs mode graphs with
``fuse_epilogues``, below)
    BatchNorm folded into the convolutions (:func:`fold_batchnorm`), compiled by
    ``torch.compile`` (Inductor, static shapes, one compiled graph per shape), then captured
    in a CUDA graph. Compiled artefacts are cached on disk per shape
    (:mod:`.compile_cache`), so a second process does not compile again; processes sharing
    the cache compile a shape once, the others wait for its file (a lock per shape). When compiling
    fails the runner logs a warning and falls back to ``"graphs"`` (``"eager"`` on the CPU).
``mode="aoti"``
    As ``"compile"``, but each shape is compiled ahead of time by AOTInductor into a ``.pt2``
    package (:mod:`.aoti`: weights included, loadable from C++ too) kept in the cache; a later
    process loads it without tracing or compiling. Falls back as ``"compile"`` does, also
    when torch's loader crashes the child process that loads each package first.
``mode="graphs"``
    The eager network captured in one CUDA graph per shape (no compiler needed). When a
    capture fails the runner logs a warning and falls back to ``"eager"``.
``mode="eager"``
    Plain eager execution.

With ``fuse_epilogues=True`` (not in mode aoti) every mode runs the folded network in which each
convolution takes its bias, residual add and ReLU inside one cuDNN call
(:mod:`.conv_fusion`): graphs then replays cuDNN's fused convolutions alone, nothing compiled.

With ``concurrent_levels=True`` (CUDA, mode ``"graphs"``) the runner declares
``capabilities.concurrent_levels``: the detector hands it every pyramid level of an image at
once (:meth:`TorchCudaRunner.run_levels`), and once each level's shape has its CUDA graph the
small levels' graphs replay on streams of their own beside the large levels'
(:mod:`.level_streams`), which stay on the runner's stream.

A batch smaller than one already compiled or captured for the same image size runs padded
into that shape instead of preparing its own (seconds of compiling saved, e.g. for a video's
last and shorter batch); only its own rows come back. A shape that keeps coming gets its own
after :data:`PADDED_RUNS_BEFORE_OWN_SHAPE` padded runs, unless it pads into a shape
:meth:`TorchCudaRunner.warmup` kept (below).

Preparing a shape costs seconds (about 6-7 s to compile each of the 8 shapes of a 1080p
pyramid on an H200), worth it only for shapes that recur: video frames, a camera's photos, a
service's usual sizes. With ``prepare_after=K`` a new shape runs plain eager for its first K
runs and is prepared at its next (``create_detector("torch-cuda")`` uses
:data:`PREPARE_AFTER_RUNS`), so a folder of photos of every size runs eager instead of
compiling 8 shapes per photo. At most :data:`MAX_PREPARED_SHAPES` shapes prepared on the way
are kept (each holds a CUDA graph and its memory, an AOTInductor package its own weights); the
least recently used is dropped first, and prepared again at once if it comes back (a warning
says so the first time: more shapes in turn than the limit). A batch shape that comes
:data:`PADDED_RUNS_BEFORE_OWN_SHAPE` times padded is prepared at once too (it recurs).

:meth:`TorchCudaRunner.warmup` prepares the shapes it is given at once and keeps them: the
caller chose them (a service's image sizes and batch sizes, ``Detector.warmup``), so they are
never dropped and a smaller batch padded into one of them stays padded, however often it
comes; nothing is compiled while serving. In modes compile and aoti the eager runs use the
folded network those modes compile (no second copy of the weights).

Device I/O (``capabilities.device_io``): ``run`` takes any object with
``__cuda_array_interface__`` -- a float32, C-contiguous (N, 3, h, w) array on the runner's
GPU -- without a copy and returns a contiguous float32 CUDA tensor (N, 125, h', w'), produced
on :attr:`TorchCudaRunner.stream` and valid until the next ``run``. Where the input's interface
names the stream it was made on (version 3: CuPy, Numba, the runtime's ``DeviceArray``), the
runner's stream waits for it, and it for the runner's reads, with an event; a torch tensor
names none and must be ready for work queued now on the runner's stream (made on it, or
ordered before it by the caller); it is marked used on that stream (``record_stream``). A
numpy input is uploaded and its score map comes back as numpy (host use, parity, tests).

The CPU (``device="cpu"``, float32, modes ``"compile"`` / ``"aoti"`` / ``"eager"``) runs the
same code paths except the CUDA graphs, so compilation and its caches are tested without a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfaces_trt.core.errors import (BackendUnavailableError, NetworkInputError,
                                       TinyFacesError, first_line, reraise_interrupt)
from tinyfaces_trt.core.locks import LockOutcome
from tinyfaces_trt.core.optional import import_cuda_runtime
from tinyfaces_trt.core.profiles import format_shape
from tinyfaces_trt.core.pyramid import PyramidLevel
from tinyfaces_trt.core.runner import (RunnerBase, RunnerCapabilities, check_network_input,
                                       check_network_shape, cuda_array_interface,
                                       producer_stream)
from tinyfaces_trt.core.threads import no_cycle_collection
from tinyfaces_trt.export.aoti import PackageCache
from tinyfaces_trt.export.batchnorm import fold_batchnorm
from tinyfaces_trt.export.compile_cache import CompileCache, inductor_cache_counters
from tinyfaces_trt.export.conv_fusion import fuse_conv_epilogues
from tinyfaces_trt.export.level_streams import LevelPlan, plan_levels, run_forked
from tinyfaces_trt.export.torch_settings import cudnn_autotuning, ieee_fp32_convolutions

_logger = logging.getLogger(__name__)

MODES = ("compile", "aoti", "graphs", "eager")
Shape = tuple[int, int, int, int]


def require_cuda(device: torch.device | str = "cuda") -> torch.device:
    """``device`` as a torch.device, checked to be a CUDA device torch can use.

    Raises:
        BackendUnavailableError: torch sees no CUDA GPU (or not that one).
    """
    device = torch.device(device)
    if not torch.cuda.is_available():
        build = ("this torch build has no CUDA support" if torch.version.cuda is None
                 else f"torch is built for CUDA {torch.version.cuda} but finds no usable GPU "
                      "or driver")
        raise BackendUnavailableError(
            f"torch-cuda needs a CUDA GPU visible to torch; torch.cuda.is_available() is False "
            f"(torch {torch.__version__}: {build}). Install a CUDA build of torch on a machine "
            "with an NVIDIA GPU and driver, or use the 'torch' (CPU) or 'onnxruntime' backend")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise BackendUnavailableError(f"torch sees {count} CUDA device(s); {device} does not "
                                      "exist")
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _give_back_all(leases: list[tuple[torch.device, tuple[Any, torch.cuda.Stream]]]) -> None:
    for device, lease in leases:
        _LEASES.give_back(device, lease)
    leases.clear()


class _Forward(nn.Module):
    """float32 NCHW in -> float32 contiguous NCHW out; the compute dtype and memory format
    inside (so compiled code fuses the casts into its first and last kernels)."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x.to(dtype=self.dtype, memory_format=self.memory_format))
        return y.float().contiguous()


@dataclass
class ShapeRecord:
    """How one input shape got its callable (see :attr:`TorchCudaRunner.records`).

    Attributes:
        mode: ``"compile"``, ``"aoti"``, ``"graphs"`` or ``"eager"`` (after any fallback).
        seconds: wall time to prepare it (compile or load, warm-up, capture), including
            ``wait_seconds``.
        wait_seconds: of that, the time spent waiting for another process compiling this
            shape into the shared cache (then loaded from its file).
        cache_file: the compile-cache file (compile mode) or the AOTInductor package (aoti
            mode) of this shape, else None.
        cache_loaded: that file existed and was loaded (aoti: nothing was compiled).
        inductor_hits, inductor_misses: Inductor FX-graph cache hits / misses while compiling
            (all hits and no miss: nothing was compiled).
    """

    mode: str
    seconds: float
    cache_file: Path | None = None
    cache_loaded: bool = False
    inductor_hits: int = 0
    inductor_misses: int = 0
    wait_seconds: float = 0.0


#: Runs of one batch shape padded into a larger prepared one before it gets its own.
PADDED_RUNS_BEFORE_OWN_SHAPE = 16
#: Runs of a new input shape in plain eager before the detector's runner prepares it.
PREPARE_AFTER_RUNS = 2
#: Prepared shapes a runner keeps (4 image sizes of 8 pyramid levels); beyond, the least
#: recently used is dropped (prepared again at once, from the disk caches, if it comes back).
MAX_PREPARED_SHAPES = 32
#: A shape whose preparing took at least this long is said through ``progress``.
PROGRESS_MIN_S = 1.0
#: New shapes whose eager runs a runner counts (the oldest forgotten first).
MAX_COUNTED_SHAPES = 4096


class _StreamLeases:
    """CUDA streams of the runners' own, each lent to one runner at a time (per device).

    ``torch.cuda.Stream()`` hands out torch's 32 pool streams per device in turn, so another
    runner, another detector's CUDA stages or the caller's own torch code may get the stream a
    CUDA graph is being captured on, and its work would be captured into the graph (or break
    the capture). Streams made here (cuda-python, ``cudaStreamNonBlocking`` as torch's) belong
    to the runner that took them until it gives them back (``close()``, or when it is
    collected); they are never destroyed (torch's allocator may still record events on a
    stream a tensor was used on), only lent again. Without cuda-python, or where it cannot
    make a stream, a runner takes a pool stream, as before.
    """

    def __init__(self) -> None:
        self._free: dict[int, list[tuple[Any, torch.cuda.Stream]]] = {}
        # reentrant: a runner collected while this thread holds it gives its streams back
        # (weakref.finalize) in the same thread
        self._lock = threading.RLock()

    def take(self, device: torch.device) -> tuple[Any, torch.cuda.Stream]:
        """(the ``cudaStream_t``, or None for a pool stream; the stream as a torch object)
        for one runner on ``device``."""
        with self._lock:
            free = self._free.get(device.index)
            if free:
                return free.pop()
        rt = _cuda_runtime()
        if rt is None:
            return None, torch.cuda.Stream(device)
        try:
            with torch.cuda.device(device):
                err, handle = rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking)
            if err != rt.cudaError_t.cudaSuccess:
                raise RuntimeError(f"cudaStreamCreateWithFlags: {err}")
        except Exception as exc:  # e.g. cuda-python 13 on a CUDA 12 driver, which torch uses
            _logger.info("no stream of the runner's own on %s (%s); taking one of torch's pool",
                         device, first_line(exc))
            return None, torch.cuda.Stream(device)
        return handle, torch.cuda.ExternalStream(int(handle), device=device)

    def give_back(self, device: torch.device, lease: tuple[Any, torch.cuda.Stream]) -> None:
        if lease[0] is not None:  # a pool stream is torch's: nothing to lend again
            with self._lock:
                self._free.setdefault(device.index, []).append(lease)


_LEASES = _StreamLeases()


def _cuda_runtime() -> Any:
    """cuda-python's runtime API module; None where cuda-python is not installed or does not
    load."""
    try:
        return import_cuda_runtime()
    except BackendUnavailableError:
        return None


class _Captured:
    """One CUDA graph with its static input and output tensors, and the callable it was
    captured from (kept: an AOTInductor model owns the weights its graph reads).

    ``capture``: the stream the graph is captured on (default ``side``, where it is warmed up).
    torch keeps one cuBLAS workspace per stream, and a graph replays the one its capture
    stream had: graphs that call cuBLAS (torch.compile's, AOTInductor's, convolutions without
    cuDNN) need a capture stream of their own, or they share one workspace, and dropping any
    of them (``CUDAGraph.reset`` clears its capture stream's) frees it under the others.
    ``cudnn``: whether cuDNN was on for the capture (its workspaces are each graph's own)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], shape: Shape,
                 device: torch.device, stream: torch.cuda.Stream, side: torch.cuda.Stream,
                 capture: torch.cuda.Stream | None = None) -> None:
        self.fn = fn
        self.cudnn = bool(torch.backends.cudnn.enabled)
        self.static_in = torch.zeros(shape, device=device, dtype=torch.float32)
        # warm-up off the capture stream (compiles, picks cuDNN algorithms), as torch advises
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            for _ in range(2):
                fn(self.static_in)
        stream.wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # No cycle collection inside the capture: a collected DeviceBuffer, Event or Stream
        # would free or destroy it (forbidden while capturing). Other threads' CUDA calls
        # stay legal ("thread_local"): only this thread's would break the capture.
        # The outer stream block puts `stream` back as the current stream even when the
        # capture fails: torch's graph context then raises before restoring it, which left
        # its capture stream current for whatever ran next. The capture runs on a stream of
        # the runner's (nothing else queues work there), on the runner's device: torch's own
        # capture stream is made once, on whichever device was current at its first use (a
        # runner on cuda:1 after one on cuda:0 could not capture).
        with no_cycle_collection(), torch.cuda.stream(stream), \
                torch.cuda.graph(self.graph, stream=capture if capture is not None else side,
                                 capture_error_mode="thread_local"):
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Replays the graph on ``x``, which may hold fewer images than the graph: the rows
        after them keep the last input (finite numbers, each row computed on its own) and
        their outputs are left out. ``x`` may be the static input itself (written there by
        a preprocessor: :meth:`TorchCudaRunner.input_buffer`): then nothing is copied."""
        n = x.shape[0]
        if x.data_ptr() != self.static_in.data_ptr():
            self.static_in[:n].copy_(x)  # on the current (the runner's) stream
        self.graph.replay()
        return self.static_out if n == self.static_out.shape[0] else self.static_out[:n]


class TorchCudaRunner(RunnerBase):
    """The network on a torch device, compiled or captured per input shape.

    Args:
        model: the network (e.g. :class:`~tinyfaces_trt.export.model.TinyFacesNet`); a
            converted copy is used, the caller's model is left unchanged. Any module mapping
            (N, 3, h, w) to (N, 125, h', w') works.
        device: ``"cuda"``, ``"cuda:1"``, ...; ``"cpu"`` for tests (float32, no graphs).
        dtype: ``torch.float16`` (default), ``torch.bfloat16`` or ``torch.float32``.
        channels_last: run convolutions in NHWC memory format (fast on tensor cores).
        mode: ``"compile"``, ``"aoti"``, ``"graphs"`` or ``"eager"`` (module docstring).
        cache_dir: cache root for compiled artefacts and packages (default
            :func:`~tinyfaces_trt.core.files.cache_root`).
        stream: the CUDA stream to run on: None (one of the runner's own, as the CUDA graph
            captures' side stream, lent to it until :meth:`close`: :class:`_StreamLeases`), a
            ``torch.cuda.Stream``, or a ``cudaStream_t`` handle as an int (wrapped with
            ``torch.cuda.ExternalStream``).
        prepare_after: runs of a new input shape in plain eager before it is prepared in
            ``mode`` (0: at its first run; the detector uses :data:`PREPARE_AFTER_RUNS`).
        progress: takes a line of text for each shape whose preparing took seconds (at least
            :data:`PROGRESS_MIN_S`: a compile, a graph capture; tf-detect prints it); the log
            (INFO) says every shape either way.
        fuse_epilogues: run the BatchNorm-folded network with each ``relu(conv(x))`` and
            ``relu(conv(x) + z)`` as one cuDNN convolution (:mod:`.conv_fusion`), in every
            mode but ``"aoti"`` (graphs and eager then run the folded network too): the
            activations are written once instead of once more per add and ReLU.
        concurrent_levels: declare ``capabilities.concurrent_levels`` (CUDA, mode
            ``"graphs"`` only): the detector calls :meth:`run_levels` with all of an image's
            levels, whose small levels then replay beside the others on streams of the
            runner's own. Not with the compiling modes: their graphs may call cuBLAS, whose
            workspace torch keeps per capture stream (see :class:`_Captured`: each compiled
            graph has a capture stream of its own, but where only torch's pool streams can be
            had they share one, and two replaying at once would race on it); cuDNN's
            workspaces are each graph's own.

    Raises:
        BackendUnavailableError: a CUDA device was asked for and torch sees none.
        ValueError: an unknown mode or dtype, or a combination the device cannot run.
    """

    def __init__(self, model: nn.Module, *, device: str | torch.device = "cuda",
                 dtype: torch.dtype = torch.float16, channels_last: bool = True,
                 mode: str = "compile", cache_dir: str | os.PathLike[str] | None = None,
                 stream: int | torch.cuda.Stream | None = None, prepare_after: int = 0,
                 progress: Callable[[str], None] | None = None,
                 fuse_epilogues: bool = False, concurrent_levels: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
        if fuse_epilogues and mode == "aoti":
            raise ValueError("fuse_epilogues cannot go with mode 'aoti': an AOTInductor package "
                             "cannot hold the fused convolution (a Python operator)")
        if concurrent_levels and mode != "graphs":
            raise ValueError(f"concurrent_levels replays the CUDA graphs of mode 'graphs' side "
                             f"by side, not mode {mode!r}: torch.compile's and AOTInductor's "
                             f"graphs may call cuBLAS, whose workspace graphs captured on one "
                             f"stream share")
        if prepare_after < 0:
            raise ValueError(f"prepare_after must be >= 0, got {prepare_after}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"unsupported dtype {dtype}; use float16, bfloat16 or float32")
        device = torch.device(device)
        if device.type == "cuda":
            device = require_cuda(device)
        elif device.type == "cpu":
            if dtype != torch.float32:
                raise ValueError(f"{dtype} needs a CUDA device; the CPU runs float32")
            if mode == "graphs":
                raise ValueError("mode 'graphs' (CUDA graphs) needs a CUDA device")
            if stream is not None:
                raise ValueError("a CUDA stream was given for a CPU runner")
        else:
            raise ValueError(f"unsupported device {device}; use cuda[:i] or cpu")
        self.device = device
        self.dtype = dtype
        self.channels_last = channels_last
        self.mode = mode
        self.fuse_epilogues = fuse_epilogues
        self.cache_dir = cache_dir
        self.capabilities = RunnerCapabilities(device_io=device.type == "cuda", batch=True,
                                               device=device.index,
                                               concurrent_levels=concurrent_levels,
                                               input_buffers=device.type == "cuda")
        self._leases: list[tuple[torch.device, tuple[Any, torch.cuda.Stream]]] = []
        self._give_back = weakref.finalize(self, _give_back_all, self._leases)  # or at close()
        self._stream = self._make_stream(stream) if device.type == "cuda" else None
        self._side: torch.cuda.Stream | None = None  # the captures', taken at the first one
        self._branches: list[torch.cuda.Stream] = []  # run_levels' forks, taken as needed
        self._pool_streams_only = False  # no stream of the runner's own: run_levels in turn
        self._model = model
        self._eager: _Forward | None = None
        self._folded: torch.fx.GraphModule | None = None
        self._compile_cache: CompileCache | None = None
        self._packages: PackageCache | None = None
        self.prepare_after = prepare_after
        self._progress = progress
        #: The prepared shapes' callables, least recently used first.
        self._callables: OrderedDict[Shape, Callable[[torch.Tensor], torch.Tensor]] = OrderedDict()
        #: How each shape was prepared (mode after fallback, time, compile-cache use).
        self.records: dict[Shape, ShapeRecord] = {}
        self._padded_runs: dict[Shape, int] = {}
        self._eager_runs: dict[Shape, int] = {}  # of shapes not prepared (yet), oldest first
        self._dropped: set[Shape] = set()  # prepared, then dropped (LRU)
        self._kept: set[Shape] = set()  # prepared by warmup(): never dropped
        self._prepared_again = 0
        self._producer_event: torch.cuda.Event | None = None
        self._last_input: Any = None  # a device input, read by the queued work until the next run
        self._closed = False

    def _make_stream(self, stream: int | torch.cuda.Stream | None) -> torch.cuda.Stream:
        if stream is None:
            return self._lease()
        if isinstance(stream, torch.cuda.Stream):
            return stream
        if isinstance(stream, (int, np.integer)) and not isinstance(stream, bool):
            return torch.cuda.ExternalStream(int(stream), device=self.device)
        raise TypeError(f"stream must be None, a torch.cuda.Stream or a cudaStream_t int, "
                        f"got {type(stream).__name__}")

    def _lease(self, own_only: bool = False) -> torch.cuda.Stream | None:
        """A stream lent to this runner (given back at :meth:`close`); with ``own_only``
        None where only a torch pool stream can be had."""
        lease = _LEASES.take(self.device)
        self._leases.append((self.device, lease))
        return None if own_only and lease[0] is None else lease[1]

    # -- protocol --------------------------------------------------------------------------

    @property
    def stream(self) -> int | None:
        """The ``cudaStream_t`` handle the runner works on (None on the CPU)."""
        return None if self._stream is None else int(self._stream.cuda_stream)

    def run(self, net_input: Any) -> Any:
        """(N, 3, h, w) float32 input -> (N, 125, h', w') float32 score map.

        A numpy array gives a numpy array. A CUDA array (``__cuda_array_interface__``, e.g. a
        torch tensor) gives a CUDA torch tensor on :attr:`stream`, valid until the next run;
        the runner's stream waits for the stream the interface names (CuPy, Numba, the
        runtime's ``DeviceArray``) and that stream for the runner's reads; else (a torch
        tensor) the caller orders its producer before :attr:`stream`. The input is kept alive
        until the next run.

        Raises:
            NetworkInputError: another input (:mod:`tinyfaces_trt.core.runner`'s contract), or
                a CUDA array given to a CPU runner.
        """
        if self._closed:
            raise TinyFacesError("this TorchCudaRunner is closed")
        device_input = cuda_array_interface(net_input) is not None
        if device_input and self._stream is None:
            raise NetworkInputError("a CUDA array was given to a CPU runner; give a numpy array")
        with torch.inference_mode(), self._on_stream():
            if not device_input:
                x = torch.from_numpy(check_network_input(net_input, self.capabilities.batch))
                scores = self._run_shape(x.to(self.device)).cpu().numpy()
                self._last_input = None  # that run waited for the stream: nothing reads it now
                return scores
            with self._reading([net_input]) as (x,):
                return self._run_shape(x)

    def input_buffer(self, shape: Sequence[int]) -> torch.Tensor | None:
        """The static input of ``shape``'s CUDA graph, where it has one of its own (then
        :meth:`run` and :meth:`run_levels` replay that graph for ``shape``): an input written
        there (the CUDA preprocessor resizes a level straight into it) is read without the
        copy into the graph. None where ``shape`` has no graph of its own (yet: it runs
        eagerly, or padded into a larger batch's graph), or on the CPU. Write into it only
        after this runner's earlier work (its :attr:`stream`); it stays valid while
        referenced, even once the graph is dropped."""
        if self._closed or self._stream is None:
            return None
        shape = tuple(int(d) for d in shape)
        fn = self._callables.get(shape)
        if isinstance(fn, _Captured) and tuple(fn.static_in.shape) == shape:
            return fn.static_in
        return None

    def run_levels(self, net_inputs: Sequence[Any]) -> list[Any]:
        """Several pyramid levels' inputs (one image or batch) -> their score maps, as
        :meth:`run` gives each, all valid until the next call.

        Where every input is a device array whose shape already has its CUDA graph, captured
        with cuDNN on (or runs padded into a larger batch's that :meth:`warmup` kept), and the
        runner was made with ``concurrent_levels``, the inputs of at most
        :data:`~.level_streams.CONCURRENT_MAX_PIXELS` pixels replay on streams of the
        runner's own, forked from :attr:`stream` and joined back into it with events, beside
        the larger ones, which replay on :attr:`stream` (:mod:`.level_streams`); the outputs
        are then ready for work queued on :attr:`stream`, as :meth:`run`'s. Otherwise (a shape
        still to prepare, batches padded into a larger one, no stream of the runner's own to
        be had: without cuda-python) they run one after another on :attr:`stream`. Inputs
        running one graph share its output buffer: each output but the last of that graph is
        a copy. Numpy inputs give numpy outputs, one :meth:`run` each.

        Raises:
            NetworkInputError: an input breaks :meth:`run`'s contract, or host and device
                arrays are mixed.
        """
        if self._closed:
            raise TinyFacesError("this TorchCudaRunner is closed")
        inputs = list(net_inputs)
        on_device = [cuda_array_interface(x) is not None for x in inputs]
        if not any(on_device):
            return [self.run(x) for x in inputs]
        if not all(on_device):
            raise NetworkInputError("run_levels takes numpy arrays or device arrays, not both")
        if self._stream is None:
            raise NetworkInputError("a CUDA array was given to a CPU runner; give a numpy array")
        with torch.inference_mode(), self._on_stream(), self._reading(inputs) as xs:
            shapes = [tuple(x.shape) for x in xs]
            # the graph each input replays: its shape's, or a larger batch's that warmup()
            # kept (a smaller batch runs padded into it for good: tf-serve's batch sizes)
            targets = [self.batch_shape_for(shape) for shape in shapes]
            graphs = [self._callables.get(target) for target in targets]
            if self.capabilities.concurrent_levels and all(isinstance(g, _Captured) and g.cudnn
                                              for g in graphs) and all(
                    t == s or t in self._kept for s, t in zip(shapes, targets)):
                plan = plan_levels(targets)
                branches = self._branch_streams(len(plan.branches))
                if len(branches) == len(plan.branches):
                    for target in targets:
                        self._callables.move_to_end(target)  # used: last for the LRU
                    return run_forked(plan, self._stream, branches, lambda i: graphs[i](xs[i]),
                                      self._copy_output, torch.cuda.stream,
                                      lambda i: targets[i])
            # a batch may run padded into a larger one's graph: named by the shape it runs as
            return run_forked(LevelPlan.in_turn(len(xs)), self._stream, [],
                              lambda i: self._run_shape(xs[i]), self._copy_output,
                              torch.cuda.stream, lambda i: self.batch_shape_for(shapes[i]))

    def _copy_output(self, out: torch.Tensor) -> torch.Tensor:
        """A copy of a graph's output, on the current stream (a branch's, or the runner's),
        marked used on the runner's stream, where it is read after the join."""
        kept = out.clone()
        if kept.is_cuda:
            kept.record_stream(self._stream)
        return kept

    @contextlib.contextmanager
    def _reading(self, inputs: list[Any]) -> Iterator[list[torch.Tensor]]:
        """Device inputs as checked tensors, read by the work queued inside: the runner's
        stream waits for each one's producer first, and each producer for the runner's reads
        after (it may reuse the input then); a torch tensor naming no stream is marked used
        on the runner's stream. The inputs are kept alive until the next run."""
        producers = [self._producer(x) for x in inputs]
        ordered = {int(p.cuda_stream): p for p in producers if p is not None}
        for producer in ordered.values():
            self._order(producer, self._stream)  # the inputs are ready before we read them
        try:
            tensors = []
            for net_input in inputs:
                x = torch.as_tensor(net_input, device=self.device)
                check_network_shape(x.shape, str(x.dtype).removeprefix("torch."),
                                    self.capabilities.batch, contiguous=x.is_contiguous())
                tensors.append(x)
            yield tensors
        finally:  # what was queued reads the inputs until their producers are told
            for producer in ordered.values():
                self._order(self._stream, producer)  # they may reuse them after our reads
            for net_input, producer in zip(inputs, producers):
                if producer is None and isinstance(net_input, torch.Tensor):
                    net_input.record_stream(self._stream)  # torch's allocator: freed after them
            self._last_input = inputs

    def _branch_streams(self, count: int) -> list[torch.cuda.Stream]:
        """``count`` streams of the runner's own for :meth:`run_levels`' forks; none where
        only torch's pool streams can be had (no cuda-python): another runner may be
        capturing a CUDA graph on one, and a replay there would land in its graph."""
        while len(self._branches) < count and not self._pool_streams_only:
            stream = self._lease(own_only=True)
            if stream is None:
                self._pool_streams_only = True
            else:
                self._branches.append(stream)
        return self._branches[:count]

    def _producer(self, net_input: Any) -> torch.cuda.Stream | None:
        """The stream ``net_input``'s CUDA Array Interface names (torch reads only its
        pointer), as a torch stream; None when it names none or this runner's stream."""
        producer = producer_stream(net_input)
        if producer is None or producer == self._stream.cuda_stream:  # the detector's stages
            return None
        if producer == 1:  # the legacy default stream is torch's default stream; an
            stream = torch.cuda.default_stream(self.device)  # ExternalStream cannot hold 1
        else:
            stream = torch.cuda.ExternalStream(producer, device=self.device)
        return None if stream.cuda_stream == self._stream.cuda_stream else stream

    def _order(self, first: torch.cuda.Stream, then: torch.cuda.Stream) -> None:
        """``then`` waits (on the GPU) for the work queued so far on ``first``, through one
        reusable event."""
        if self._producer_event is None:
            self._producer_event = torch.cuda.Event()
        self._producer_event.record(first)
        then.wait_event(self._producer_event)

    def check_levels(self, levels: Sequence[PyramidLevel]) -> None:
        """Any level runs (shapes are prepared on first use or by :meth:`warmup`; the batch
        size a level will run with is not known here)."""
        return None

    def warmup(self, shapes: Iterable[Sequence[int]]) -> None:
        """Prepares (compiles / captures) these (N, 3, h, w) input shapes now and keeps them
        prepared: they are never dropped, and a smaller batch of the same image size runs
        padded into one of them for good instead of getting its own shape."""
        if self._closed:
            raise TinyFacesError("this TorchCudaRunner is closed")
        shapes = list(dict.fromkeys(tuple(int(d) for d in shape) for shape in shapes))
        kept = len(self._kept.union(shapes))
        if kept > MAX_PREPARED_SHAPES:
            _logger.warning("%d input shapes warmed up and kept prepared, more than the %d "
                            "(MAX_PREPARED_SHAPES) kept otherwise: each holds its own "
                            "CUDA graph memory", kept, MAX_PREPARED_SHAPES)
        with torch.inference_mode(), self._on_stream():
            for shape in shapes:
                was_kept = shape in self._kept
                self._kept.add(shape)  # before preparing: never the one the LRU drops
                try:
                    self._callable(shape)
                except BaseException:
                    if not was_kept:
                        self._kept.discard(shape)
                    raise

    def precompile(self, shapes: Iterable[Sequence[int]]) -> dict[Shape, ShapeRecord]:
        """Compiles these (N, 3, h, w) input shapes into the on-disk cache (mode ``"compile"``:
        the compile cache; ``"aoti"``: the packages) without preparing them here: nothing is
        captured or kept, and a shape whose file is already there is left as it is.

        For another process than the one that will run the shapes: one readying a shared
        cache while the machine does other work (``tools/gpu_check.py`` runs the benchmark's
        torch-cuda-compile shapes beside its tests) or before a service's replicas start. A
        process preparing a shape that is being compiled here waits for its file (the
        cache's lock per shape), then loads it.

        Returns:
            A record per shape: ``cache_loaded`` True where its file was there (before, or
            once another process compiling it was waited for), ``seconds`` the time it
            took here; ``mode`` is the runner's. Modes ``"graphs"`` and ``"eager"`` compile
            nothing: ``{}``.

        Raises:
            Exception: what compiling raised (torch.compile, Inductor, Triton, the C++
                compiler, torch.export); the shapes before it are in the cache.
        """
        if self._closed:
            raise TinyFacesError("this TorchCudaRunner is closed")
        if self.mode not in ("compile", "aoti"):
            return {}
        records: dict[Shape, ShapeRecord] = {}
        with torch.inference_mode(), self._on_stream():
            for shape in dict.fromkeys(tuple(int(d) for d in s) for s in shapes):
                start = time.perf_counter()
                record = ShapeRecord(self.mode, 0.0)
                cached = self._cached_file(shape)
                if cached.is_file():
                    record.cache_file, record.cache_loaded = cached, True
                elif self.mode == "compile":
                    self._compile(shape, record)
                else:
                    self._aoti(shape, record)
                record.seconds = time.perf_counter() - start
                records[shape] = record
                if self._progress is not None and not record.cache_loaded:
                    self._progress(f"torch-cuda: input shape {format_shape(shape)} compiled "
                                   f"into the cache in {record.seconds:.1f} s")
        return records

    def _cached_file(self, shape: Shape) -> Path:
        """The compile-cache file (mode compile) or package (mode aoti) of ``shape``."""
        if self.mode == "aoti":
            return self._package_cache().path(shape)
        return self._shape_cache().path(shape)

    def _shape_cache(self) -> CompileCache:
        """The compile cache of the folded network (made once)."""
        if self._compile_cache is None:
            self._compile_cache = CompileCache.for_module(self._folded_net(), self.device,
                                                          self.dtype, self.channels_last,
                                                          self.cache_dir)
        return self._compile_cache

    def _package_cache(self) -> PackageCache:
        """The AOTInductor packages of the folded network (made once)."""
        if self._packages is None:
            self._packages = PackageCache.for_module(self._folded_net(), self.device, self.dtype,
                                                     self.channels_last, self.cache_dir)
        return self._packages

    def synchronize(self) -> None:
        """Waits for the runner's queued work."""
        if self._stream is not None:
            self._stream.synchronize()

    def close(self) -> None:
        """Releases the CUDA graphs, static buffers, compiled callables and the model copy,
        and hands torch's cached blocks back to the driver (ONNX Runtime, TensorRT or another
        process can then use the memory); idempotent. A closed runner may not run again."""
        if self._closed:
            return
        if self._stream is not None:
            self._stream.synchronize()
        for stream in [self._side, *self._branches]:
            if stream is not None:
                stream.synchronize()
        self._closed = True
        self._branches = []
        self._last_input = None
        self._producer_event = None
        self._callables.clear()
        self._eager_runs.clear()
        self._dropped.clear()
        self._kept.clear()
        self._eager = None
        self._folded = None
        self._compile_cache = None
        self._packages = None
        self._model = None
        self._give_back()  # the streams, their graphs gone, are lent to the next runner
        if self.device.type == "cuda":
            try:
                torch.cuda.empty_cache()
            except RuntimeError as exc:  # torch refuses while any thread captures a CUDA graph
                _logger.info("torch kept its cached GPU memory (%s)", first_line(exc))

    # -- preparing shapes --------------------------------------------------------------------

    @contextlib.contextmanager
    def _on_stream(self) -> Iterator[None]:
        """The runner's stream current; cuDNN picks its convolution algorithms by timing them
        (``cudnn.benchmark``: the shapes are static, and the measured 216 TFLOP/s of the
        compiled pyramid on an H200 had it on; done in the warm-up before each capture);
        float32 convolutions in IEEE fp32, not TF32, so that float32 keeps the fp32
        tolerances. The process's own settings are restored when the last runner working
        leaves (:mod:`~tinyfaces_trt.export.torch_settings`: runners in several threads)."""
        if self._stream is None:
            yield
            return
        with cudnn_autotuning(), ieee_fp32_convolutions(self.device, self.dtype), \
                torch.cuda.stream(self._stream):
            yield

    def _run_shape(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through its shape's callable. A batch smaller than one already compiled or
        captured for the same image size runs padded into it instead of preparing its own
        (compiling takes seconds; e.g. a video's last, shorter batch), until the same shape
        has come :data:`PADDED_RUNS_BEFORE_OWN_SHAPE` times: a recurring one (single images
        after batches) then gets its own, rather than doing a batch's work each time; not
        when it pads into a shape :meth:`warmup` kept (the caller's choice)."""
        shape = tuple(x.shape)
        target = self.batch_shape_for(shape)
        recurring = target in self._dropped  # prepared before: it comes back, prepare it now
        if target != shape:
            self._padded_runs[shape] = self._padded_runs.get(shape, 0) + 1
            if self._padded_runs[shape] > PADDED_RUNS_BEFORE_OWN_SHAPE \
                    and target not in self._kept:
                _logger.info("input shape %s came %d times padded into %s: preparing its own",
                             shape, PADDED_RUNS_BEFORE_OWN_SHAPE, target)
                target, recurring = shape, True
        if target not in self._callables and not recurring:
            runs = self._eager_runs.pop(target, 0) + 1  # re-inserted last: oldest counts first
            if runs <= self.prepare_after:  # not (yet) worth seconds of preparing
                self._eager_runs[target] = runs
                while len(self._eager_runs) > MAX_COUNTED_SHAPES:
                    del self._eager_runs[next(iter(self._eager_runs))]
                return self._unprepared_forward()(x)
        fn = self._callable(target)
        if target == shape:
            return fn(x)
        if isinstance(fn, _Captured):
            return fn(x)  # takes the smaller batch into its static input
        pad = x.new_zeros((target[0] - shape[0], *shape[1:]))
        return fn(torch.cat((x, pad)))[: shape[0]]

    def batch_shape_for(self, shape: Sequence[int]) -> Shape:
        """The input shape a batch of ``shape`` runs as: itself when prepared or when no
        larger batch of its image size is compiled or captured, else the smallest such."""
        shape = tuple(int(d) for d in shape)
        if shape in self._callables:
            return shape
        larger = [s for s in self._callables if s[1:] == shape[1:] and s[0] > shape[0]
                  and self.records[s].mode != "eager"]  # eager shapes cost nothing to add
        return min(larger) if larger else shape

    def _callable(self, shape: Shape) -> Callable[[torch.Tensor], torch.Tensor]:
        """The prepared callable of ``shape``, prepared now if it is not."""
        fn = self._callables.get(shape)
        if fn is not None:
            self._callables.move_to_end(shape)
            return fn
        if shape in self._dropped:
            self._dropped.discard(shape)
            self._prepared_again += 1
            (_logger.warning if self._prepared_again == 1 else _logger.info)(
                "input shape %s prepared again after it was dropped: this runner uses more than "
                "%d shapes (MAX_PREPARED_SHAPES) in turn", shape, MAX_PREPARED_SHAPES)
        fn = self._callables[shape] = self._prepare(shape)
        self._eager_runs.pop(shape, None)
        droppable = [s for s in self._callables if s not in self._kept]  # oldest use first
        for dropped in droppable[:max(0, len(droppable) - MAX_PREPARED_SHAPES)]:
            if self._stream is not None:
                self._stream.synchronize()  # its graph may still be replaying
            del self._callables[dropped]
            self._dropped.add(dropped)
            _logger.info("input shape %s dropped: the least recently used of more than %d "
                         "prepared shapes", dropped, MAX_PREPARED_SHAPES)
        return fn

    def _prepare(self, shape: Shape) -> Callable[[torch.Tensor], torch.Tensor]:
        start = time.perf_counter()
        record = ShapeRecord(self.mode, 0.0)
        fn: Callable[[torch.Tensor], torch.Tensor] | None = None
        if self.mode in ("compile", "aoti"):
            try:
                built = (self._compile(shape, record) if self.mode == "compile"
                         else self._aoti(shape, record))
                fn = self._capture(built, shape)
            except Exception as exc:  # export, Inductor, Triton, the C++ compiler, the capture
                reraise_interrupt(exc)
                fallback = "graphs" if self._stream is not None else "eager"
                what = "torch.compile" if self.mode == "compile" else "AOTInductor"
                _logger.warning("%s failed for input shape %s (%s); falling back to mode %r",
                                what, shape, _describe(exc), fallback)
                self.mode = record.mode = fallback
        if fn is None:
            fn = self._eager_forward()
            if record.mode == "graphs":
                try:
                    fn = self._capture(fn, shape)
                except Exception as exc:  # an operation a CUDA graph cannot hold
                    reraise_interrupt(exc)
                    _logger.warning("capturing a CUDA graph failed for input shape %s (%s); "
                                    "falling back to mode 'eager'", shape, _describe(exc))
                    self.mode = record.mode = "eager"
        record.seconds = time.perf_counter() - start
        self.records[shape] = record
        _logger.info("input shape %s ready (%s, %.1f s%s)", shape, record.mode, record.seconds,
                     f", {record.wait_seconds:.1f} s of it waiting for another process's compile"
                     if record.wait_seconds else "")
        if self._progress is not None and record.seconds >= PROGRESS_MIN_S:
            self._progress(f"torch-cuda: input shape {format_shape(shape)} ready in "
                           f"{record.seconds:.1f} s ({record.mode}"
                           f"{', from the compile cache' if record.cache_loaded else ''})")
        return fn

    def _capture(self, fn: Callable[[torch.Tensor], torch.Tensor],
                 shape: Shape) -> Callable[[torch.Tensor], torch.Tensor]:
        """``fn`` replayed from a CUDA graph (on the CPU: ``fn`` itself). In the compiling
        modes, whose graphs may call cuBLAS, each graph is captured on a stream of its own
        (its own cuBLAS workspace, see :class:`_Captured`); else on the side stream."""
        if self._stream is None:
            return fn
        if self._side is None:
            self._side = self._lease()
        capture = self._lease(own_only=True) if self.mode in ("compile", "aoti") else None
        return _Captured(fn, shape, self.device, self._stream, self._side, capture)

    def _unprepared_forward(self) -> nn.Module:
        """What a shape runs before it is prepared: where the mode compiles, the folded
        network it compiles (no second copy of the weights; the same numbers as the prepared
        shapes up to the compiler's rounding), else the eager one."""
        return self._folded_net() if self.mode in ("compile", "aoti") else self._eager_forward()

    def _eager_forward(self) -> nn.Module:
        """What modes graphs and eager run (and a failed compile falls back to): the network
        as given, or the folded one with its fused convolutions."""
        if self.fuse_epilogues:
            return self._folded_net()
        if self._eager is None:
            self._wait_for_the_weights()
            self._eager = self._convert(_Forward(copy.deepcopy(self._model),
                                                 self.dtype, self.channels_last))
        return self._eager

    def _wait_for_the_weights(self) -> None:
        """Waits for the GPUs that hold the given model's weights, before the runner copies
        them on its own stream: a model moved or loaded onto a GPU by the caller may still have
        those copies queued on the caller's stream, which the runner's does not follow (once
        per copy of the network, so a full wait is cheap)."""
        devices = {t.device for t in (*self._model.parameters(), *self._model.buffers())
                   if t.is_cuda}
        for device in devices:
            torch.cuda.synchronize(device)

    def _convert(self, module: nn.Module) -> nn.Module:
        module = module.to(device=self.device, dtype=self.dtype).eval()
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def _folded_net(self) -> torch.fx.GraphModule:
        """The network with BatchNorm folded (and its convolution epilogues fused where asked),
        converted for the device (made once; outside inference mode, as torch.export cannot
        take inference-mode weights)."""
        if self._folded is None:
            self._wait_for_the_weights()
            with torch.inference_mode(False):
                folded = self._convert(fold_batchnorm(_Forward(self._model, self.dtype,
                                                               self.channels_last)))
                if self.fuse_epilogues:  # which adds to fuse is decided on a small input
                    folded = fuse_conv_epilogues(folded, torch.zeros(1, 3, 64, 64,
                                                                     device=self.device))
                self._folded = folded
        return self._folded

    def _aoti(self, shape: Shape, record: ShapeRecord) -> Callable[[torch.Tensor], torch.Tensor]:
        packages = self._package_cache()
        record.cache_file = packages.path(shape)
        with _waiting(packages.lock(shape), record):  # another process may compile it
            fn = packages.load(shape)
            record.cache_loaded = fn is not None
            if fn is None:
                _logger.info("compiling an AOTInductor package for input shape %s ...", shape)
                fn = packages.compile(self._folded_net(), shape)
        return fn

    def _compile(self, shape: Shape, record: ShapeRecord) -> Callable[[torch.Tensor],
                                                                        torch.Tensor]:
        folded = self._folded_net()
        cache = self._shape_cache()
        # One GraphModule (sharing the folded weights) per shape: its own code object, so
        # dynamo keeps one static-shape compilation per shape, never hitting its recompile
        # limit or re-checking guards of other shapes.
        per_shape = torch.fx.GraphModule(folded, copy.deepcopy(folded.graph))
        # the runner captures its own CUDA graph: never Inductor's too (a process-wide
        # setting, also switched on by TORCHINDUCTOR_CUDAGRAPHS=1)
        compiled = torch.compile(per_shape, dynamic=False, fullgraph=True,
                                 options={"triton.cudagraphs": False})
        record.cache_file = cache.path(shape)
        with _waiting(cache.lock(shape), record):  # another process may be compiling it
            record.cache_loaded = cache.load(shape)
            before = inductor_cache_counters()
            _logger.info("compiling the network for input shape %s%s ...", shape,
                         " (from the compile cache)" if record.cache_loaded else "")
            x = torch.zeros(shape, device=self.device, dtype=torch.float32)
            compiled(x)  # compiles now, not inside a later run or a CUDA-graph capture
            after = inductor_cache_counters()
            record.inductor_hits = after["hits"] - before["hits"]
            record.inductor_misses = after["misses"] - before["misses"]
            if record.inductor_misses or not record.cache_loaded:
                cache.save(shape)
        return compiled


@contextlib.contextmanager
def _waiting(lock: contextlib.AbstractContextManager[LockOutcome],
             record: ShapeRecord) -> Iterator[None]:
    """Holds a shape's cache lock, the time spent waiting for it in ``record``."""
    start = time.perf_counter()
    with lock as outcome:
        if outcome.waited:
            record.wait_seconds = time.perf_counter() - start
        yield


def _describe(exc: BaseException) -> str:
    """``Type: first line``, and the error it was raised while handling (a failed capture's
    own message is generic; the cause is the error inside the capture)."""
    text = f"{type(exc).__name__}: {first_line(exc)}"
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return text if cause is None else f"{text}; after {type(cause).__name__}: {first_line(cause)}"


__all__ = ["MAX_PREPARED_SHAPES", "MODES", "PREPARE_AFTER_RUNS", "ShapeRecord", "TorchCudaRunner",
           "fold_batchnorm", "require_cuda"]
