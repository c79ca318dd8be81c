"""GPU pre- and post-processing stages over the CUDA kernel library.

:class:`CudaPreprocessor` and :class:`CudaPostprocessor` implement the
:class:`~tinyfaces_trt.runtime.pipeline.Preprocessor` / ``Postprocessor`` protocols on device
buffers, with the same semantics as the numpy stages (docs/DESIGN.md):

    pre, post = cuda_stages(config, stream=Stream(runner.stream))   # share the runner's stream
    detector = Detector(runner, config, preprocessor=pre, postprocessor=post)

The preprocessor stages each image in page-locked memory and uploads it once per image
(asynchronously, chunk by chunk as a few threads copy it: :mod:`.staging`) and resizes every
level on the GPU into an (N, 3, h, w) float32
:class:`~.cuda_device.DeviceArray`. The postprocessor decodes each level's score map (a
device array, or a numpy array it uploads) into one device candidate buffer per image and runs
sort + NMS in :meth:`CudaPostprocessor.finish_all`, which downloads only the counters and the
final (N, 5) rows: those of the numpy path's ``finish_boxes`` already (the boxes outside the
image dropped and the rest clipped on the GPU, ``tf_nms_params.drop_outside``).

Stream order: everything of one stage is queued on its ``stream``. When the runner works on
another stream (``runner_stream``), CUDA events order them without the host: the runner waits
for the resize, the decode waits for the network, the runner's next call waits for the
decode to have read its output, and each image's first resize waits for the network to have
read the previous image's level inputs (their buffers are reused). With one shared stream (the
default wiring) no event is needed.
This module is the runtime's one seam to the kernel library (``tinyfaces_trt.kernels``).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import NUM_CHANNELS, NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.core.errors import (BackendUnavailableError, NonFiniteScoresError, ScoreMapError,
                                       StageOrderError, TinyFacesError)
from tinyfaces_trt.core.pyramid import PyramidLevel, plan_pyramid
from tinyfaces_trt.core.runner import cuda_array_interface
from tinyfaces_trt.runtime.backends import cuda_device, staging
from tinyfaces_trt.runtime.backends.cuda_device import (DeviceArray, DeviceBuffer, PinnedBuffer,
                                                        Stream, StreamOrder, as_stream)
from tinyfaces_trt.runtime.decode import active_templates
from tinyfaces_trt.runtime.pipeline import validate_batch

DEFAULT_MAX_NMS_CANDIDATES = 8192
#: Kept rows downloaded with NMS's counters, in one wait (an image keeping more fetches the
#: rest after it): 80 KB of page-locked memory.
PREFETCH_ROWS = 4096
#: Resize plans (a level's filter coefficients, made at the second use of a source and level
#: size; about 0.2 MB each at 1080p) a preprocessor keeps; all are dropped when this many are.
RESIZE_PLANS = 64
#: NMS's CUDA graphs a postprocessor keeps (one per candidate buffer, NMS size and NMS
#: parameters: a batch of 8 and more fit); the least recently used is dropped.
NMS_GRAPHS = 16
log = logging.getLogger(__name__)


def _load(library: Any) -> Any:
    """The kernel library (given, or :func:`tinyfaces_trt.kernels.load_library`)."""
    if library is not None:
        return library
    from tinyfaces_trt.kernels.binding import load_library

    return load_library()


def _require_gpu() -> None:
    cuda_device.runtime()  # a clear error when cuda-python is missing
    if not cuda_device.gpu_available():
        raise BackendUnavailableError("the CUDA stages need a CUDA GPU and driver; none is visible")


def require_current_device(device: int, who: str) -> None:
    """Raises :class:`TinyFacesError` where ``device`` is not this thread's current CUDA device
    (the current device is per thread: a new thread starts on device 0), on which the CUDA
    stages allocate and launch."""
    current = cuda_device.current_device()
    if current != device:
        raise TinyFacesError(
            f"{who} is on CUDA device {device}, but this thread's current CUDA device is "
            f"{current}: make device {device} current in this thread first "
            f"(torch.cuda.set_device({device}), cudaSetDevice), or run the process with "
            f"CUDA_VISIBLE_DEVICES={device} (it is then device 0)")


#: The NMS resolve rule a CudaPostprocessor takes by default (a key of
#: ``kernels.binding.NMS_RULES``): the fastest measured on an H200 (see CudaPostprocessor).
DEFAULT_NMS_RULE = "warp"


def _wait_for_queued_work(stream: Stream, runner_order: StreamOrder) -> None:
    """Before a stage frees its buffers: the work queued on its stream and, through
    ``runner_order``, the runner's (an interrupted detect leaves some)."""
    if stream.live:
        runner_order.after()
        stream.synchronize()


class _Scratch:
    """A buffer that grows on demand (contents are not kept when it grows). Work queued on
    ``stream`` may still use the old buffer: the stream is waited for before it is freed
    (cudaFree only "may" synchronise)."""

    def __init__(self, factory: Any = DeviceBuffer, stream: Stream | None = None) -> None:
        self.factory = factory
        self.stream = stream
        self.buffer: Any = None

    def get(self, nbytes: int) -> Any:
        if self.buffer is None or self.buffer.nbytes < nbytes:
            if self.buffer is not None and self.stream is not None:
                self.stream.synchronize()
            self.free()
            self.buffer = self.factory(max(int(nbytes), 1))
        return self.buffer

    def free(self) -> None:
        if self.buffer is not None:
            self.buffer.free()
            self.buffer = None


class CudaPreprocessor:
    """Resize + normalise on the GPU (Pillow-style antialiased bilinear, DESIGN.md).

    Args:
        config: the detector config (its normalisation is used).
        stream: the stream to work on (a :class:`Stream` or a handle; default: a new one).
        library: a loaded kernel library (default: :func:`~tinyfaces_trt.kernels.load_library`).
        runner_stream: the stream the network runs on, when it is another one: it is made to
            wait (a CUDA event) for each level's input, and each image's first resize waits
            for the network's work on the previous image (which read the reused level buffers).
        staging_threads: threads that copy each image into page-locked memory, this one
            included (default :func:`~.staging.staging_threads`: up to 4); 1 copies in this
            thread alone. Either way the upload starts with the first chunk copied.
        input_buffers: the runner's ``input_buffer(shape)`` (``capabilities.input_buffers``):
            a level whose shape it gives a buffer for is resized straight into it (the runner
            then reads it without a copy), unless an earlier level of the same pyramid took
            that buffer; the runner must work on ``stream`` or ``runner_stream``.

    Raises:
        BackendUnavailableError: no cuda-python, GPU or built kernel library.
    """

    def __init__(self, config: DetectorConfig, stream: Stream | int | None = None,
                 library: Any = None, runner_stream: Stream | int | None = None,
                 staging_threads: int | None = None,
                 input_buffers: Callable[[tuple[int, ...]], Any] | None = None) -> None:
        if staging_threads is not None and int(staging_threads) < 1:
            raise ValueError(f"staging_threads = {staging_threads!r}: expected 1 or more")
        _require_gpu()
        self.staging_threads = staging.staging_threads() if staging_threads is None \
            else int(staging_threads)
        self.config = config
        self.lib = _load(library)
        self.stream = as_stream(stream)
        self._own_stream = stream is None  # made here: close() destroys it
        consumer = runner_stream if runner_stream is not None else self.stream
        self._to_runner = StreamOrder(self.stream, consumer)
        self._from_runner = StreamOrder(consumer, self.stream)
        from tinyfaces_trt.kernels.binding import floats3

        # made once: the library takes them as C float[3] at every resize
        self._scale, self._bias = (floats3(v, name) for v, name in zip(
            config.normalization.scale_and_bias(), ("channel_scale", "channel_bias")))
        self._staging = _Scratch(PinnedBuffer)
        self._pinned_view: tuple[Any, np.ndarray] | None = None  # its buffer, all of it
        self._uploaded: cuda_device.Event | None = None
        self._images = _Scratch(stream=self.stream)
        self._workspace = _Scratch(stream=self.stream)  # grows level by level, resizes queued
        # resize plans (coefficients, from a size pair's second use) and their workspace bytes,
        # by source and level size; the pairs used once so far
        self._plans: dict[tuple[int, int, int, int], tuple[DeviceBuffer, int, int]] = {}
        self._seen_sizes: dict[tuple[int, int, int, int], None] = {}
        self._levels: dict[int, DeviceBuffer] = {}  # by level index, grown on demand
        self._input_buffers = input_buffers
        self._taken: set[int] = set()  # the runner's buffers this pyramid's levels went into
        self._sources: list[np.ndarray] = []
        self._read_directly: list[np.ndarray] = []  # page-locked arrays the last upload read
        #: images (or batches) uploaded straight from their page-locked memory so far
        self.page_locked_uploads = 0
        self._closed = False
        self.device = cuda_device.current_device()  # where the buffers are made

    def _upload(self, images: Sequence[np.ndarray], first_level: bool) -> None:
        """Queues the images' async upload at a pyramid's first level, or when other arrays
        come than for the last level: straight from their memory where every one is
        page-locked (:func:`~.cuda_device.is_page_locked`), else staged in pinned memory,
        chunk by chunk as they are copied (:mod:`.staging`)."""
        if self._same_sources(images) and not first_level:
            return
        nbytes = sum(image.nbytes for image in images)
        if self._uploaded is not None:
            # the previous upload has left the pinned buffer, and the caller's page-locked
            # arrays it read directly (a detect that raised may have left it queued) may go
            self._uploaded.synchronize()
        else:
            self._uploaded = cuda_device.Event()
        self._sources = []  # the device copy is being replaced
        self._read_directly = []
        addresses = [image.ctypes.data for image in images]
        if all(cuda_device.is_page_locked(ptr, image.nbytes)
               for ptr, image in zip(addresses, images)):
            device, stream, offset = self._images.get(nbytes), self.stream, 0
            self._read_directly = list(images)  # alive while the queued copies may read them
            try:
                for ptr, image in zip(addresses, images):
                    device.upload_from(ptr, image.nbytes, stream, offset=offset)
                    offset += image.nbytes
            finally:  # what was queued reads the arrays until this event
                self._uploaded.record(self.stream)
            self.page_locked_uploads += 1
            self._sources = list(images)
            return
        buffer = self._staging.get(nbytes)
        if self._pinned_view is None or self._pinned_view[0] is not buffer \
                or self._pinned_view[1].size < nbytes:
            self._pinned_view = (buffer, buffer.array(buffer.nbytes))
        pinned, device, stream = self._pinned_view[1][:nbytes], self._images.get(nbytes), self.stream
        try:
            staging.stage_and_upload(images, pinned, lambda start, end: device.upload_from(
                buffer.ptr + start, end - start, stream, offset=start), self.staging_threads)
        finally:  # what was queued reads the pinned buffer until this event
            self._uploaded.record(self.stream)
        self._sources = list(images)

    def _same_sources(self, images: Sequence[np.ndarray]) -> bool:
        """Whether ``images`` are the very arrays uploaded last (checked then)."""
        return len(images) == len(self._sources) and \
            all(a is b for a, b in zip(images, self._sources))

    def prepare(self, image: np.ndarray, level: PyramidLevel) -> DeviceArray:
        """(H, W, 3) uint8 RGB -> the level's (1, 3, h, w) float32 input on the device.
        A page-locked image is uploaded straight from its memory, after this returns:
        refill it only once :meth:`synchronize` has returned (a pageable one is copied into
        the stage's pinned buffer before this returns)."""
        return self.prepare_batch([image], level)

    def prepare_batch(self, images: Sequence[np.ndarray], level: PyramidLevel) -> DeviceArray:
        """N (H, W, 3) uint8 RGB images of one size -> the level's (N, 3, h, w) float32
        input; page-locked images are read after this returns, as for :meth:`prepare`."""
        if level.index == 0 or not self._same_sources(images):
            images = validate_batch(images)
        height, width = images[0].shape[:2]
        if level.index == 0:
            require_current_device(self.device, "this detector (its CUDA resize)")
        self._upload(images, level.index == 0)
        if level.index == 0:
            self._from_runner.after()
        n, h, w = len(images), int(level.height), int(level.width)
        out, owner = self._destination(level.index, (n, 3, h, w))
        planned = self._plan(height, width, h, w)
        stream = self.stream.handle
        src = self._images.buffer.ptr
        if planned is None:  # a size pair's first use: its coefficients made in the call
            workspace = self._workspace.get(self.lib.resize_workspace_size(height, width, h, w))
            resize, coefficients = self.lib.resize_normalize, ()
        else:
            plan, plan_bytes, ws_bytes = planned
            workspace = self._workspace.get(ws_bytes)
            resize, coefficients = self.lib.resize_normalize_planned, (plan.ptr, plan_bytes)
        for i in range(n):  # plain ints: the binding's fast path
            resize(src + i * images[0].nbytes, height, width, out + i * 3 * h * w * 4, h, w,
                   self._scale, self._bias, *coefficients, workspace.ptr, workspace.nbytes,
                   stream)
        self._to_runner.after()
        return DeviceArray(out, (n, 3, h, w), np.float32, owner=owner, stream=self.stream)

    def empty_images(self, count: int, height: int, width: int) -> np.ndarray:
        """A new, uninitialised (count, height, width, 3) uint8 array in page-locked memory
        of its own (:func:`~.cuda_device.page_locked_array`): uploaded without the staging
        copy, freed once no view of it is left. Asked for, as a detect is, in a thread whose
        current device is this stage's (the memory is made in that device's context).

        Raises:
            TinyFacesError: another device is current in this thread.
        """
        require_current_device(self.device, "this detector (its page-locked images)")
        return cuda_device.page_locked_array((count, height, width, 3), np.uint8)

    def _destination(self, index: int, shape: tuple[int, int, int, int]) -> tuple[int, Any]:
        """Where level ``index``'s input goes (its address and the object keeping it): the
        runner's own input buffer for the shape where it gives one (no copy into its graph)
        and no earlier level of this pyramid took it, else the level's buffer here."""
        if index == 0:
            self._taken = set()
        if self._input_buffers is not None:
            given = self._input_buffers(shape)
            if given is not None:
                arr = cuda_device.as_device_array(given)
                if arr.shape == shape and arr.dtype == np.float32 and arr.ptr not in self._taken:
                    self._taken.add(arr.ptr)
                    if index > 0:  # an earlier level's replay may still read it (a graph
                        self._from_runner.after()  # made during this pyramid); no-op on one stream
                    return arr.ptr, given
        # One buffer per level index, even where two levels' shapes coincide (the network may
        # still read one level while the next is resized), kept across image sizes and grown
        # to the largest seen: a service alternating sizes allocates nothing after the first
        # of each (a cudaFree waits for the whole device).
        nbytes = 4 * shape[0] * shape[1] * shape[2] * shape[3]
        out = self._levels.get(index)
        if out is None or out.nbytes < nbytes:
            if out is not None:
                del self._levels[index]  # gone even when the larger one cannot be had
                # an interrupted image's work may still read it (the runner's too: this
                # stream waits for it since this image's first level)
                self.stream.synchronize()
                out.free()
            out = self._levels[index] = DeviceBuffer(nbytes)
        return out.ptr, out

    def _plan(self, height: int, width: int, h: int, w: int
              ) -> tuple[DeviceBuffer, int, int] | None:
        """The resize plan (filter coefficients) of one source and level size, its bytes and
        the workspace bytes of a resize with it; None at the size pair's first use (a service
        whose image sizes never repeat makes none). A plan is queued on the stream at the
        pair's second use. All plans are dropped when :data:`RESIZE_PLANS` are kept, after
        the queued work that reads them (one host wait)."""
        key = (height, width, h, w)
        kept = self._plans.get(key)
        if kept is not None:
            return kept
        if key not in self._seen_sizes:
            _remember(self._seen_sizes, key, None, limit=4 * RESIZE_PLANS)
            return None
        if len(self._plans) >= RESIZE_PLANS:
            self.stream.synchronize()
            self._free_plans()
        plan_bytes, ws_bytes = self.lib.resize_plan_size(height, width, h, w)
        plan = DeviceBuffer(plan_bytes)
        try:
            self.lib.resize_plan(height, width, h, w, plan, plan_bytes, self.stream)
        except BaseException:
            plan.free()  # nothing was queued
            raise
        self._plans[key] = kept = (plan, plan_bytes, ws_bytes)
        return kept

    def _free_plans(self) -> None:
        for plan, _, _ in self._plans.values():
            plan.free()
        self._plans = {}

    def synchronize(self) -> None:
        """Waits for the queued GPU work (used by the pipeline's per-stage timing)."""
        self.stream.synchronize()

    def _free_levels(self) -> None:
        for buf in self._levels.values():
            buf.free()
        self._levels = {}

    def close(self) -> None:
        """Waits for the work queued on the buffers (the runner's too: it reads the levels),
        frees the device and pinned buffers and the event, and destroys the stream if it was
        made here (idempotent)."""
        if self._closed:
            return
        _wait_for_queued_work(self.stream, self._from_runner)
        if self._uploaded is not None:
            self._uploaded.synchronize()
            self._uploaded.close()
            self._uploaded = None
        self._free_levels()
        self._free_plans()
        self._pinned_view = None
        for scratch in (self._images, self._workspace, self._staging):
            scratch.free()
        self._to_runner.close()
        self._from_runner.close()
        self._sources, self._read_directly = [], []
        if self._own_stream:
            self.stream.close()
        self._closed = True


def _remember(cache: dict, key: Any, value: Any, limit: int = 256) -> None:
    """Sets ``key`` in ``cache``, emptied first when full (image sizes may never repeat)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value


class _ImageCandidates:
    """One image's device candidate buffer and the key base of its next level."""

    def __init__(self, stream: Stream) -> None:
        self.buffer = _Scratch(stream=stream)
        self.capacity = 0
        self.key_base = 0

    def reset(self, lib: Any, capacity: int, stream: Stream) -> None:
        if capacity > self.capacity:
            self.buffer.get(lib.candidates_size(capacity))
            self.capacity = capacity
        lib.candidates_reset(self.buffer.buffer.ptr, stream.handle)
        self.key_base = 0


class CudaPostprocessor:
    """Decode + sort + NMS on the GPU, one candidate buffer per image (DESIGN.md).

    Args:
        config: templates, thresholds, stride/offset, clipping, score (prob or logit).
        stream: the stream to work on (a :class:`Stream` or a handle; default: a new one).
        library: a loaded kernel library (default: :func:`~tinyfaces_trt.kernels.load_library`).
        runner_stream: the stream the network's score maps are made on, when it is another
            one: each decode waits for it (a CUDA event), and it waits for the decode before
            the runner's next call may reuse the map's memory.
        max_candidates: initial NMS size (its workspace is linear in it); grown to the next
            power of two, and NMS re-run on the candidates still on the device, when an image
            has more. There is no cap: every candidate the pyramid makes goes through NMS.
        nms_graphs: replay NMS's launches (3 sorts or scans in CUB's passes and 6 kernels of
            its own, about 40 launches) as one CUDA graph, captured at the second call for each
            candidate buffer, NMS size, image size and set of NMS parameters
            (:class:`~.cuda_device.CapturedWork`).
            Where the capture fails (a runtime without stream capture) NMS is launched kernel
            by kernel from then on, logged once, and ``nms_graphs_off`` says why.
        nms_rule: the NMS resolve rule, ``tf_nms_params.lookahead``: one of
            ``kernels.binding.NMS_RULES``' values; the same boxes with each. The warp rule
            (default: :data:`DEFAULT_NMS_RULE`) was the fastest on an H200: NMS of 10k / 50k
            clustered candidates in 417 / 437 us, against 659 us / 1.26 ms with the lookahead
            rule and 1.39 / 6.19 ms in walk order (benchmarks/results/h200-2026-12-04/run3).
            The benchmark times every rule.

    Raises:
        BackendUnavailableError: no cuda-python, GPU or built kernel library.
    """

    def __init__(self, config: DetectorConfig, stream: Stream | int | None = None,
                 library: Any = None, runner_stream: Stream | int | None = None,
                 max_candidates: int = DEFAULT_MAX_NMS_CANDIDATES,
                 nms_rule: int | None = None, nms_graphs: bool = True) -> None:
        _require_gpu()
        from tinyfaces_trt.kernels import binding

        self.nms_rule = binding.NMS_RULES[DEFAULT_NMS_RULE] if nms_rule is None else nms_rule
        if self.nms_rule not in binding.NMS_RULES.values():  # before anything is allocated
            raise ValueError(f"nms_rule = {nms_rule!r}: expected one of {binding.NMS_RULES}")
        self._binding = binding
        self.config = config
        self.lib = _load(library)
        self.stream = as_stream(stream)
        self._own_stream = stream is None  # made here: close() destroys it
        producer = runner_stream if runner_stream is not None else self.stream
        self._after_runner = StreamOrder(producer, self.stream)
        self._before_runner = StreamOrder(self.stream, producer)
        self.max_candidates = max(1, min(int(max_candidates), binding.MAX_NMS_CANDIDATES))
        self._templates = np.asarray(config.templates, dtype=np.float64)[:, :4]
        self._images: list[_ImageCandidates] = []
        self._count = 0
        self._scores = _Scratch(stream=self.stream)
        self._workspace = _Scratch(stream=self.stream)
        # NMS's counters (16 bytes) and then its rows: downloaded in one copy
        self._results = _Scratch(stream=self.stream)
        # the counters and the first kept rows (grown only after the stream is waited for: an
        # interrupted image may have left a download into it queued)
        self._host = _Scratch(PinnedBuffer, stream=self.stream)
        self._host_views: tuple[Any, ...] | None = None  # its buffer, rows, counters, rows' view
        self._nms_workspace_bytes: dict[int, int] = {}  # by NMS size
        self._nms_params: dict[tuple[Any, ...], Any] = {}  # by config values and image size
        self._image_hw: tuple[int, int] | None = None
        self.last_stats: dict[str, int] = {}
        # host work done once per image size / level scale, not per image (~0.2 ms each)
        self._capacities: dict[tuple[int, int], int] = {}
        self._decode_params: dict[float, Any] = {}
        self.nms_graphs = nms_graphs
        self.nms_graphs_off: str | None = None if nms_graphs else "nms_graphs=False"
        self._nms_graphs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._capture_stream: Stream | None = None  # made at the first capture
        self._closed = False
        self.device = cuda_device.current_device()  # where the buffers are made

    def _capacity_bound(self, height: int, width: int) -> int:
        """Most candidates the planned pyramid can produce: active templates x cells per level."""
        stride = float(self.config.stride)
        total = 0
        for level in plan_pyramid(height, width, self.config):
            cells = math.ceil(level.height / stride) * math.ceil(level.width / stride)
            total += int(active_templates(level.scale, self.config).sum()) * cells
        return max(total, 1)

    def reset(self, image_height: int, image_width: int, count: int = 1) -> None:
        """Starts ``count`` new images of one size; sizes each candidate buffer for its pyramid."""
        require_current_device(self.device, "this detector (its CUDA decode and NMS)")
        self._image_hw = (int(image_height), int(image_width))
        capacity = self._capacities.get(self._image_hw)
        if capacity is None:
            capacity = min(self._capacity_bound(*self._image_hw), self._binding.MAX_CAPACITY)
            _remember(self._capacities, self._image_hw, capacity)
        while len(self._images) < count:
            self._images.append(_ImageCandidates(self.stream))
        self._count = int(count)
        for image in self._images[:count]:
            image.reset(self.lib, capacity, self.stream)

    def _device_score_map(self, score_map: Any) -> DeviceArray:
        """The (N, 125, h, w) score map on the device (a numpy map is uploaded)."""
        if isinstance(score_map, np.ndarray):
            host = np.ascontiguousarray(score_map, dtype=np.float32)
            buf = self._scores.get(host.nbytes)
            buf.upload(host, self.stream)
            arr = DeviceArray(buf.ptr, host.shape, np.float32, owner=buf)
        elif cuda_array_interface(score_map) is not None:  # (a grad tensor: NetworkInputError)
            arr = cuda_device.as_device_array(score_map)
        else:
            raise ScoreMapError(f"a score map must be a numpy array or a device array with "
                                f"__cuda_array_interface__, got {type(score_map).__name__}")
        if len(arr.shape) != 4 or arr.shape[0] != self._count or arr.shape[1] != NUM_CHANNELS \
                or min(arr.shape[2:]) < 1:
            raise ScoreMapError(f"score map must have shape ({self._count}, {NUM_CHANNELS}, h, w) "
                                f"for {self._count} image(s), got {arr.shape}")
        if arr.dtype != np.float32:
            raise ScoreMapError(f"score map must be float32, got {arr.dtype}")
        return arr

    def add_level(self, score_map: Any, level: PyramidLevel) -> None:
        """Decodes one level's score map (one slice per image) into the images' candidates."""
        if self._image_hw is None:
            raise StageOrderError("CudaPostprocessor.reset() must be called before add_level()")
        self._after_runner.after()  # the decode reads what the runner wrote
        arr = self._device_score_map(score_map)
        h, w = arr.shape[-2:]
        params = self._decode_params.get(level.scale)
        if params is None:  # copied into the kernel's arguments at each launch: reusable
            params = self._binding.decode_params(
                self._templates, active_templates(level.scale, self.config),
                self.config.logit_thresh, self.config.stride, self.config.offset, level.scale)
            _remember(self._decode_params, level.scale, params)
        per_image = NUM_CHANNELS * h * w * 4
        stream = self.stream.handle  # plain ints: the binding's fast path
        for i, image in enumerate(self._images[:self._count]):
            self.lib.decode_level(arr.ptr + i * per_image, h, w, params, image.key_base,
                                  image.buffer.buffer.ptr, image.capacity, stream)
            image.key_base += NUM_TEMPLATES * h * w
        self._before_runner.after()  # the runner's next output may reuse this memory

    def _run_nms(self, image: _ImageCandidates, max_candidates: int
                 ) -> tuple[np.void, np.ndarray]:
        """NMS of one image's candidates: its counters and (a view of, valid until the next
        call) its first :data:`PREFETCH_ROWS` rows, downloaded together in one wait."""
        lib, b = self.lib, self._binding
        ws_bytes = self._nms_workspace_bytes.get(max_candidates)
        if ws_bytes is None:
            ws_bytes = self._nms_workspace_bytes[max_candidates] = \
                lib.nms_workspace_size(max_candidates)
        workspace = self._workspace.get(ws_bytes)
        stats_bytes = b.NMS_STATS_DTYPE.itemsize  # 16: the rows after it stay aligned
        results = self._results.get(stats_bytes + max_candidates * 5 * 4)
        params, values = self._nms_params_for(*self._image_hw)
        # every pointer and value the launches bake in (`values`: the parameters')
        key = (image.buffer.buffer.ptr, image.capacity, max_candidates, workspace.ptr, ws_bytes,
               results.ptr, *values)
        self._enqueue_nms(key, lambda stream: lib.nms(
            image.buffer.buffer.ptr, image.capacity, params, max_candidates, workspace.ptr,
            ws_bytes, results.ptr + stats_bytes, results.ptr, stream))
        rows = min(max_candidates, PREFETCH_ROWS)
        nbytes = stats_bytes + rows * 5 * 4
        pinned = self._host.get(nbytes)
        if self._host_views is None or self._host_views[:2] != (pinned, rows):
            host = pinned.array(nbytes)
            self._host_views = (pinned, rows, host, host[:stats_bytes].view(b.NMS_STATS_DTYPE),
                                host[stats_bytes:].view(np.float32).reshape(rows, 5))
        host, counters, prefetched = self._host_views[2:]
        results.download(host, self.stream)  # the counters and the first rows, in one copy
        self.stream.synchronize()
        return counters[0].copy(), prefetched

    def _nms_params_for(self, height: int, width: int) -> tuple[Any, tuple[Any, ...]]:
        """``tf_nms_params`` of the config and image size (made once per set of values) and
        the values a captured NMS bakes in, the image's size among them: NMS drops the boxes
        outside the image and clips the rest to it (in the variant's pixels), as the numpy
        path's ``finish_boxes``."""
        config = self.config
        wanted = (config.nms_thresh, config.box_pixel_offset, config.clip_boxes,
                  config.coordinate_base, self.nms_rule, config.score, height, width)
        kept = self._nms_params.get(wanted)
        if kept is None:
            params = self._binding.nms_params(config.nms_thresh, config.box_pixel_offset,
                                              config.clip_boxes, height, width, self.nms_rule,
                                              score_logit=config.score == "logit",
                                              pixel_base=config.coordinate_base,
                                              drop_outside=True)
            values = tuple(getattr(params, name) for name, _ in params._fields_)
            kept = (params, values)
            _remember(self._nms_params, wanted, kept)
        return kept

    def _enqueue_nms(self, key: tuple[Any, ...], enqueue: Callable[[Stream], None]) -> None:
        """Queues NMS on the stream: ``enqueue``'s launches at the first use of ``key`` (a
        kernel's lazy loading and CUB's set-up happen outside any capture) and where graphs
        are off; else a replay of its CUDA graph, captured at the second use (on a stream of
        the captures' own)."""
        if not self.nms_graphs or key not in self._nms_graphs:
            enqueue(self.stream)
            if self.nms_graphs:
                self._keep_graph(key, None)
            return
        graph = self._nms_graphs.pop(key)
        if graph is None:
            try:
                if self._capture_stream is None:
                    self._capture_stream = Stream(non_blocking=True)
                graph = cuda_device.CapturedWork(self._capture_stream, enqueue)
            except Exception as exc:
                enqueue(self.stream)  # a fault of the call itself raises here, as without graphs
                self._graphs_off(f"capturing NMS into a CUDA graph failed ({exc}); its "
                                 f"kernels are launched one by one")
                return
        self._keep_graph(key, graph)
        graph.launch(self.stream)

    def _keep_graph(self, key: tuple[Any, ...], graph: Any) -> None:
        """``key``'s graph (None: run once, not captured yet), the most recently used; the
        least recently used dropped past :data:`NMS_GRAPHS`."""
        while len(self._nms_graphs) >= NMS_GRAPHS:
            dropped = self._nms_graphs.popitem(last=False)[1]
            if dropped is not None:
                dropped.close()
        self._nms_graphs[key] = graph

    def _graphs_off(self, why: str) -> None:
        self.nms_graphs, self.nms_graphs_off = False, why
        log.warning("CudaPostprocessor: %s", why)
        self._close_graphs()

    def _close_graphs(self) -> None:
        while self._nms_graphs:
            graph = self._nms_graphs.popitem()[1]
            if graph is not None:
                graph.close()

    def _finish_image(self, image: _ImageCandidates, index: int) -> np.ndarray:
        b = self._binding
        stats, prefetched = self._run_nms(image, self.max_candidates)
        count = int(stats["num_candidates"])
        nonfinite = int(stats["nonfinite"])
        self.last_stats = {"num_candidates": count, "num_kept": 0, "nonfinite": nonfinite}
        if nonfinite:
            which = f" (image {index + 1} of a batch of {self._count})" if self._count > 1 else ""
            raise NonFiniteScoresError(
                f"the network's score maps of this image{which} held {nonfinite} NaN or infinite "
                f"value(s) (counted on the GPU over all pyramid levels): the weights, the export or "
                f"the backend is broken; no detections were produced for this image")
        if stats["overflow"] & b.OVERFLOW_CAPACITY:
            raise ScoreMapError(
                f"{count} candidates overflowed the device candidate buffer ({image.capacity}, "
                f"sized for the planned pyramid of a {self._image_hw[0]}x{self._image_hw[1]} image); "
                f"were levels added that plan_pyramid does not produce?")
        if stats["overflow"] & b.OVERFLOW_NMS:  # more candidates than this NMS size: grow it
            self.max_candidates = min(1 << (count - 1).bit_length(), image.capacity)
            # the candidates are still there
            stats, prefetched = self._run_nms(image, self.max_candidates)
        kept = int(stats["num_kept"])
        self.last_stats = {"num_candidates": count, "num_kept": kept, "nonfinite": 0}
        if kept <= len(prefetched):
            return prefetched[:kept].copy()  # the page-locked rows are reused
        boxes = np.empty((kept, 5), np.float32)  # more than came with the counters
        self._results.buffer.download(boxes, self.stream, offset=b.NMS_STATS_DTYPE.itemsize)
        self.stream.synchronize()
        return boxes

    def finish_all(self) -> list[np.ndarray]:
        """Sort + NMS per image; one (N_i, 5) float32 [x1, y1, x2, y2, score] array per image
        (score: the probability, or the float32 logit with ``config.score == "logit"``).

        Raises:
            NonFiniteScoresError: an image's score maps held NaN or infinite values (counted
                by the decode kernel), as the numpy path refuses them.
        """
        if self._image_hw is None:
            raise StageOrderError("CudaPostprocessor.reset() must be called before finish()")
        return [self._finish_image(image, i) for i, image in enumerate(self._images[:self._count])]

    def finish(self) -> np.ndarray:
        """:meth:`finish_all` of a single image."""
        (boxes,) = self.finish_all()
        return boxes

    def synchronize(self) -> None:
        """Waits for the queued GPU work (used by the pipeline's per-stage timing)."""
        self.stream.synchronize()

    def close(self) -> None:
        """Waits for the work queued on the buffers (and for the runner's score maps it
        decodes), frees the device buffers and the events, and destroys the stream if it was
        made here (idempotent)."""
        if self._closed:
            return
        _wait_for_queued_work(self.stream, self._after_runner)
        for image in self._images:
            image.buffer.free()
        self._images = []
        self._close_graphs()
        self._host_views = None
        if self._capture_stream is not None:
            self._capture_stream.close()
        for scratch in (self._scores, self._workspace, self._results, self._host):
            scratch.free()
        self._after_runner.close()
        self._before_runner.close()
        if self._own_stream:
            self.stream.close()
        self._closed = True


def cuda_stages(config: DetectorConfig, stream: Stream | int | None = None, library: Any = None,
                runner_stream: Stream | int | None = None,
                input_buffers: Callable[[tuple[int, ...]], Any] | None = None
                ) -> tuple[CudaPreprocessor, CudaPostprocessor]:
    """A :class:`CudaPreprocessor` and :class:`CudaPostprocessor` sharing one stream
    (default: ``runner_stream`` when given, so that no event is needed, else a new one, which
    the postprocessor's ``close()`` destroys: a :class:`Detector` closes it last of the two);
    ``input_buffers``: the runner's ``input_buffer`` (:class:`CudaPreprocessor`)."""
    made = stream is None and runner_stream is None
    stream = as_stream(stream if stream is not None else runner_stream)
    pre = post = None
    try:
        pre = CudaPreprocessor(config, stream, library, runner_stream,
                               input_buffers=input_buffers)
        post = CudaPostprocessor(config, stream, library, runner_stream)
    except BaseException:
        if pre is not None:
            pre.close()
        if made:
            stream.close()
        raise
    post._own_stream = made
    return pre, post
