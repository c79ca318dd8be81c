"""GPU pre- and post-processing stages over the CUDA kernel library.

:class:`CudaPreprocessor` and :class:`CudaPostprocessor` implement the
:class:`~..pipeline.Preprocessor` / :class:`~..pipeline.Postprocessor` protocols on device
buffers, with the same semantics as the numpy stages (docs/DESIGN.md):

    pre, post = cuda_stages(config)                     # one shared stream
    detector = Detector(runner, config, preprocessor=pre, postprocessor=post)

The preprocessor uploads each image once and resizes every level on the GPU into a
(1, 3, h, w) float32 :class:`~.cuda_device.DeviceArray`. The postprocessor decodes each
level's score map (a device array, a raw device pointer, or a numpy array it uploads) into
one device candidate buffer and runs sort + NMS in :meth:`CudaPostprocessor.finish`, which
downloads only the counters and the final (N, 5) rows.

A device score map made on another stream must be complete before ``add_level``: a
:class:`~.cuda_device.DeviceArray` that names its stream is waited for, and ``add_level``
returns only after the decode has read it (its producer may then reuse the memory); for raw
pointers and foreign arrays, share :attr:`stream` or synchronise first (host runners return
finished numpy arrays). A raw pointer carries no shape: it is read as the ``pytorch``
variant's ``(1, 125, ceil(h/8), ceil(w/8))`` map, so other variants must pass an array.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinyfaces_trt.core.config import NUM_CHANNELS, NUM_TEMPLATES, DetectorConfig
from tinyfaces_trt.runtime.decode import active_templates
from tinyfaces_trt.core.errors import BackendUnavailableError, TinyFacesError
from tinyfaces_trt.runtime.pipeline import validate_image
from tinyfaces_trt.core.pyramid import PyramidLevel, plan_pyramid
from tinyfaces_trt.runtime.backends import cuda_device
from tinyfaces_trt.runtime.backends.cuda_device import DeviceArray, DeviceBuffer, Stream

DEFAULT_MAX_NMS_CANDIDATES = 8192


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


class _Scratch:
    """A device buffer that grows on demand (contents are not kept when it grows)."""

    def __init__(self) -> None:
        self.buffer: DeviceBuffer | None = None

    def get(self, nbytes: int) -> DeviceBuffer:
        if self.buffer is None or self.buffer.nbytes < nbytes:
            self.free()
            self.buffer = DeviceBuffer(max(int(nbytes), 1))
        return self.buffer

    def free(self) -> None:
        if self.buffer is not None:
            self.buffer.free()
            self.buffer = None


class CudaPreprocessor:
    """Resize + normalise on the GPU (Pillow-style antialiased bilinear, DESIGN.md).

    Args:
        config: the detector config (its normalisation is used).
        stream: the stream to work on (default: a new one).
        library: a loaded kernel library (default: :func:`~tinyfaces_trt.kernels.load_library`).

    Raises:
        BackendUnavailableError: no cuda-python, GPU or built kernel library.
    """

    def __init__(self, config: DetectorConfig, stream: Stream | None = None, library: Any = None) -> None:
        _require_gpu()
        self.config = config
        self.lib = _load(library)
        self.stream = stream if stream is not None else Stream()
        self._scale, self._bias = config.normalization.scale_and_bias()
        self._image = _Scratch()
        self._workspace = _Scratch()
        self._levels: dict[tuple[int, int], DeviceBuffer] = {}
        self._source: np.ndarray | None = None
        self._source_shape: tuple[int, ...] | None = None

    def prepare(self, image: np.ndarray, level: PyramidLevel) -> DeviceArray:
        """(H, W, 3) uint8 RGB -> the level's (1, 3, h, w) float32 input on the device.

        The image is uploaded at a level of index 0 or when it is another array than last time.
        """
        image = validate_image(image)
        height, width = image.shape[:2]
        if level.index == 0 or image is not self._source or image.shape != self._source_shape:
            if image.shape != self._source_shape:
                self._free_levels()  # another image size: another pyramid
            self._image.get(image.nbytes).upload(image, self.stream)
            self._source, self._source_shape = image, image.shape
        h, w = int(level.height), int(level.width)
        out = self._levels.get((h, w))
        if out is None:
            out = self._levels[(h, w)] = DeviceBuffer(3 * h * w * 4)
        ws_bytes = self.lib.resize_workspace_size(height, width, h, w)
        workspace = self._workspace.get(ws_bytes)
        self.lib.resize_normalize(self._image.buffer, height, width, out, h, w, self._scale,
                                  self._bias, workspace, workspace.nbytes, self.stream)
        return DeviceArray(out.ptr, (1, 3, h, w), np.float32, owner=out, stream=self.stream)

    def synchronize(self) -> None:
        """Waits for the queued GPU work (used by the pipeline's per-stage timing)."""
        self.stream.synchronize()

    def _free_levels(self) -> None:
        for buf in self._levels.values():
            buf.free()
        self._levels = {}

    def close(self) -> None:
        """Frees the device buffers."""
        self._free_levels()
        self._image.free()
        self._workspace.free()


class CudaPostprocessor:
    """Decode + sort + NMS on the GPU, one candidate buffer per image (DESIGN.md).

    Args:
        config: templates, thresholds, stride/offset, clipping.
        stream: the stream to work on (default: a new one).
        library: a loaded kernel library (default: :func:`~tinyfaces_trt.kernels.load_library`).
        max_candidates: initial NMS size; grown (and NMS re-run on the kept candidates) when
            an image has more, up to the library's maximum (131072).

    Raises:
        BackendUnavailableError: no cuda-python, GPU or built kernel library.
    """

    def __init__(self, config: DetectorConfig, stream: Stream | None = None, library: Any = None,
                 max_candidates: int = DEFAULT_MAX_NMS_CANDIDATES) -> None:
        _require_gpu()
        from tinyfaces_trt.kernels import binding

        self._binding = binding
        self.config = config
        self.lib = _load(library)
        self.stream = stream if stream is not None else Stream()
        self.max_candidates = max(1, min(int(max_candidates), binding.MAX_NMS_CANDIDATES))
        self._templates = np.asarray(config.templates, dtype=np.float64)[:, :4]
        self._candidates = _Scratch()
        self._capacity = 0
        self._scores = _Scratch()
        self._workspace = _Scratch()
        self._out = _Scratch()
        self._stats = _Scratch()
        self._image_hw: tuple[int, int] | None = None
        self._key_base = 0
        self.last_stats: dict[str, int] = {}

    def _capacity_bound(self, height: int, width: int) -> int:
        """Most candidates the planned pyramid can produce: active templates x cells per level."""
        stride = float(self.config.stride)
        total = 0
        for level in plan_pyramid(height, width, self.config):
            cells = math.ceil(level.height / stride) * math.ceil(level.width / stride)
            total += int(active_templates(level.scale, self.config).sum()) * cells
        return max(total, 1)

    def reset(self, image_height: int, image_width: int) -> None:
        """Starts a new image; sizes the candidate buffer for its whole pyramid."""
        self._image_hw = (int(image_height), int(image_width))
        capacity = min(self._capacity_bound(*self._image_hw), self._binding.MAX_CAPACITY)
        if capacity > self._capacity:
            self._candidates.get(self.lib.candidates_size(capacity))
            self._capacity = capacity
        self.lib.candidates_reset(self._candidates.buffer, self.stream)
        self._key_base = 0

    def _device_score_map(self, score_map: Any, level: PyramidLevel) -> tuple[DeviceArray, bool]:
        """The score map on the device, and whether it was made on another (known) stream."""
        if isinstance(score_map, np.ndarray):
            host = np.ascontiguousarray(score_map, dtype=np.float32)
            buf = self._scores.get(host.nbytes)
            buf.upload(host, self.stream)
            arr = DeviceArray(buf.ptr, host.shape, np.float32, owner=buf)
            foreign_stream = False
        else:
            has_shape = isinstance(score_map, DeviceArray) or \
                hasattr(score_map, "__cuda_array_interface__")
            if not has_shape and self.config.variant != "pytorch":
                raise TinyFacesError(
                    f"a raw device pointer has no shape, and the {self.config.variant!r} variant's "
                    f"score map is not (1, 125, ceil(h/8), ceil(w/8)); pass a DeviceArray or an "
                    f"array with __cuda_array_interface__")
            stride = float(self.config.stride)
            expected = (1, NUM_CHANNELS, math.ceil(level.height / stride), math.ceil(level.width / stride))
            arr = cuda_device.as_device_array(score_map, shape=expected)
            producer = arr.stream
            foreign_stream = producer is not None and producer is not self.stream
            if foreign_stream:
                producer.synchronize()  # made on another stream: wait for it
        shape = arr.shape[1:] if len(arr.shape) == 4 and arr.shape[0] == 1 else arr.shape
        if len(shape) != 3 or shape[0] != NUM_CHANNELS or min(shape[1:]) < 1:
            raise TinyFacesError(f"score map must have shape (1, {NUM_CHANNELS}, h, w), got {arr.shape}")
        if arr.dtype != np.float32:
            raise TinyFacesError(f"score map must be float32, got {arr.dtype}")
        return arr, foreign_stream

    def add_level(self, score_map: Any, level: PyramidLevel) -> None:
        """Decodes one level's score map into the image's candidate buffer (on the device)."""
        if self._image_hw is None:
            raise RuntimeError("CudaPostprocessor.reset() must be called before add_level()")
        arr, foreign_stream = self._device_score_map(score_map, level)
        h, w = arr.shape[-2:]
        params = self._binding.decode_params(
            self._templates, active_templates(level.scale, self.config), self.config.logit_thresh,
            self.config.stride, self.config.offset, level.scale)
        self.lib.decode_level(arr, h, w, params, self._key_base, self._candidates.buffer,
                              self._capacity, self.stream)
        self._key_base += NUM_TEMPLATES * h * w
        if foreign_stream:
            # The producer (e.g. a TensorRT runner on its own stream) reuses this memory for
            # its next output, which nothing orders after our decode: let the decode finish.
            self.stream.synchronize()

    def _run_nms(self, max_candidates: int) -> np.ndarray:
        lib, b = self.lib, self._binding
        ws_bytes = lib.nms_workspace_size(max_candidates)
        workspace = self._workspace.get(ws_bytes)
        out = self._out.get(max_candidates * 5 * 4)
        stats = self._stats.get(b.NMS_STATS_DTYPE.itemsize)
        height, width = self._image_hw
        params = b.nms_params(self.config.nms_thresh, self.config.box_pixel_offset,
                              self.config.clip_boxes, height, width)
        lib.nms(self._candidates.buffer, self._capacity, params, max_candidates, workspace,
                ws_bytes, out, stats, self.stream)
        host = np.zeros(1, b.NMS_STATS_DTYPE)
        stats.download(host, self.stream)
        self.stream.synchronize()
        return host[0]

    def finish(self) -> np.ndarray:
        """Sort + NMS over all levels' candidates; (N, 5) float32 [x1, y1, x2, y2, prob]."""
        if self._image_hw is None:
            raise RuntimeError("CudaPostprocessor.reset() must be called before finish()")
        b = self._binding
        stats = self._run_nms(self.max_candidates)
        count = int(stats["num_candidates"])
        if stats["overflow"] & b.OVERFLOW_CAPACITY:
            raise TinyFacesError(
                f"{count} candidates overflowed the device candidate buffer ({self._capacity}, "
                f"sized for the planned pyramid of a {self._image_hw[0]}x{self._image_hw[1]} image); "
                f"were levels added that plan_pyramid does not produce?")
        if stats["overflow"] & b.OVERFLOW_NMS:
            if count > b.MAX_NMS_CANDIDATES:
                raise TinyFacesError(
                    f"{count} candidates exceed the GPU NMS limit of {b.MAX_NMS_CANDIDATES}; "
                    f"raise prob_thresh (now {self.config.prob_thresh})")
            self.max_candidates = min(1 << (count - 1).bit_length(), b.MAX_NMS_CANDIDATES)
            stats = self._run_nms(self.max_candidates)  # the candidates are still on the device
        kept = int(stats["num_kept"])
        self.last_stats = {"num_candidates": count, "num_kept": kept}
        boxes = np.empty((kept, 5), np.float32)
        if kept:
            self._out.buffer.download(boxes, self.stream)
            self.stream.synchronize()
        return boxes

    def synchronize(self) -> None:
        """Waits for the queued GPU work (used by the pipeline's per-stage timing)."""
        self.stream.synchronize()

    def close(self) -> None:
        """Frees the device buffers."""
        for scratch in (self._candidates, self._scores, self._workspace, self._out, self._stats):
            scratch.free()
        self._capacity = 0


def cuda_stages(config: DetectorConfig, stream: Stream | None = None,
                library: Any = None) -> tuple[CudaPreprocessor, CudaPostprocessor]:
    """A :class:`CudaPreprocessor` and :class:`CudaPostprocessor` sharing one stream."""
    stream = stream if stream is not None else Stream()
    return (CudaPreprocessor(config, stream, library), CudaPostprocessor(config, stream, library))
