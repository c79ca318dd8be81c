"""The detector pipeline: image -> pyramid -> network -> decode -> NMS -> boxes.

This is where detection loops over pyramid levels (the parity harness runs the same levels
one by one to compare score maps). A backend swaps the :class:`NetworkRunner`; the GPU fast
path additionally swaps the pre- and post-processing stages for their CUDA versions
(device-resident buffers). Everything else is shared.

    detector = Detector(runner, config)
    boxes = detector.detect(rgb_uint8_image)      # (N, 5) float32: x1, y1, x2, y2, prob
"""

from __future__ import annotations

import contextlib
import numbers
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import ConfigError, ImageError, ImageTooLargeError, TinyFacesError
from tinyfaces_trt.core.manifest import ModelIdentity
from tinyfaces_trt.core.pyramid import PyramidLevel, plan_pyramid
from tinyfaces_trt.core.runner import (
    NetworkRunner, capabilities_of, close_all, require_members, require_runner)
from tinyfaces_trt.runtime.imageio import DEFAULT_MAX_PIXELS


#: Image sizes whose pyramid plan a detector keeps (all are dropped when this many are).
PLANS_KEPT = 256


@runtime_checkable
class Preprocessor(Protocol):
    """Resizes + normalises images for one pyramid level into the network's input.

    Each level's input stays valid while the other levels of the same image (or batch) are
    prepared: a runner declaring ``capabilities.concurrent_levels`` is given every level's
    input at once (the numpy stage returns new arrays, the CUDA one keeps a buffer per level).
    """

    def prepare(self, image: np.ndarray, level: PyramidLevel) -> Any:
        """``image`` is (H, W, 3) uint8 RGB; returns the (1, 3, h, w) float32 input
        (a numpy array, or a device array for device stages). A device stage may still read
        an image from page-locked memory (:meth:`empty_images`'s) after returning: change
        such an image only once :meth:`synchronize` has returned (:class:`Detector` waits
        before its calls return or raise)."""

    def prepare_batch(self, images: Sequence[np.ndarray], level: PyramidLevel) -> Any:
        """N images of one size -> the level's (N, 3, h, w) float32 input."""

    def empty_images(self, count: int, height: int, width: int) -> np.ndarray:
        """A new, uninitialised (count, height, width, 3) uint8 array in the host memory the
        stage reads fastest (page-locked for a GPU upload, else plain numpy memory). A device
        stage reads such an image asynchronously: refill it only after :meth:`synchronize`."""

    def synchronize(self) -> None:
        """Waits until the stage's queued work is done (nothing to wait for on the host)."""

    def close(self) -> None:
        """Releases the stage's buffers; idempotent."""


@runtime_checkable
class Postprocessor(Protocol):
    """Collects candidates level by level, then runs one NMS per image over all levels."""

    def reset(self, image_height: int, image_width: int, count: int = 1) -> None:
        """Starts ``count`` new images of the given original size."""

    def add_level(self, score_map: Any, level: PyramidLevel) -> None:
        """Decodes one level's (count, 125, h', w') score map into candidates in
        original-image pixels, image by image."""

    def finish_all(self) -> list[np.ndarray]:
        """NMS per image: one (N_i, 5) float32 [x1, y1, x2, y2, prob] array each, best first."""

    def finish(self) -> np.ndarray:
        """:meth:`finish_all` of a single image."""

    def synchronize(self) -> None:
        """Waits until the stage's queued work is done (nothing to wait for on the host)."""

    def close(self) -> None:
        """Releases the stage's buffers; idempotent."""


_STAGE_MEMBERS = {
    Preprocessor: ("prepare", "prepare_batch", "empty_images", "synchronize", "close"),
    Postprocessor: ("reset", "add_level", "finish_all", "finish", "synchronize", "close"),
}


def _require_stage(stage: object, protocol: type) -> Any:
    require_members(stage, _STAGE_MEMBERS[protocol], protocol.__name__)
    return stage


class Detector:
    """The Tiny Faces detector over a pluggable network runner.

    One image (or batch) at a time: the stages keep per-image state and reuse their buffers,
    so calls from several threads take turns (a lock), and ``close()`` waits for the one
    running. A call made on the thread of a running one (from ``on_level``, a signal handler,
    a finalizer) cannot wait for it: :meth:`detect`, :meth:`detect_batch` and :meth:`warmup`
    raise :class:`~tinyfaces_trt.core.errors.TinyFacesError` there, and ``close()`` is done
    as soon as the running call ends. For images in parallel, use one detector per thread or
    GPU.

    ``config`` is read-only: the stages were built from it. For other settings create another
    detector: ``create_detector(..., config_overrides={...})`` (a detector owns its runner:
    two detectors sharing one would close it under each other).

    An image whose pyramid has no level (:func:`~tinyfaces_trt.core.pyramid.plan_pyramid`:
    too thin for the network variant, or no level can produce faces in ``[min_face,
    max_face]``) has no faces to find: no boxes, and the network does not run.

    Args:
        runner: the network (ONNX Runtime, TensorRT, torch reference, ...): a
            :class:`~tinyfaces_trt.core.runner.NetworkRunner`, e.g. a ``RunnerBase`` subclass.
        config: templates, normalisation, thresholds, pyramid rule.
        preprocessor: defaults to the numpy resize + normalise.
        postprocessor: defaults to the numpy decode + NMS.
        identity: which network this is (checkpoint sha256, untrained flag), recorded in
            output files; None when unknown.

    Raises:
        TypeError: the runner or a stage lacks a member of its protocol.
        ConfigError: ``identity`` names another network variant than ``config``'s.
    """

    def __init__(self, runner: NetworkRunner, config: DetectorConfig | None = None,
                 preprocessor: Preprocessor | None = None,
                 postprocessor: Postprocessor | None = None, *,
                 identity: ModelIdentity | None = None) -> None:
        from tinyfaces_trt.runtime.postprocess import HostPostprocessor
        from tinyfaces_trt.runtime.preprocess import HostPreprocessor

        self._config = config or DetectorConfig()
        if identity is not None and identity.variant is not None \
                and identity.variant != self._config.variant:
            raise ConfigError(f"the network is a {identity.variant} one ({identity.source}) but "
                              f"the config is for the {self._config.variant} variant: its "
                              f"templates, normalisation and score-map geometry would give wrong "
                              f"boxes; use DetectorConfig.for_variant({identity.variant!r})")
        self.runner = require_runner(runner)
        self.preprocessor: Preprocessor = _require_stage(
            preprocessor or HostPreprocessor(self._config), Preprocessor)
        self.postprocessor: Postprocessor = _require_stage(
            postprocessor or HostPostprocessor(self._config), Postprocessor)
        self._identity = identity
        self._plans: dict[tuple[int, int], list[PyramidLevel]] = {}  # by image size
        self._max_pixels: int | None = DEFAULT_MAX_PIXELS
        # reentrant: close() from a finalizer or a signal handler mid-detect on the same thread
        # must not deadlock (it is deferred to the run's end: _running)
        self._lock = threading.RLock()
        self._running = False  # a run holds the stages: only its own thread can see this True
        self._close_deferred = False
        self._closed = False
        # close() was called: calls that start from then on are refused at once (they would
        # otherwise wait on the lock with close() and could get it first, again and again)
        self._closing = False

    @property
    def config(self) -> DetectorConfig:
        """The detector's :class:`~tinyfaces_trt.core.config.DetectorConfig` (read-only)."""
        return self._config

    @config.setter
    def config(self, value: DetectorConfig) -> None:
        # the stages were built from the config: a new one would apply only in part
        raise AttributeError("Detector.config is read-only (its stages were built from it); "
                             "create a new detector with other settings: create_detector(..., "
                             "config_overrides={...})")

    @property
    def max_pixels(self) -> int | None:
        """The largest image (width x height) :meth:`detect`, :meth:`detect_batch` and
        :meth:`warmup` take: ``load_image``'s limit by default (a 20000x20000 array ran for a
        minute, then failed in numpy); None for any. Settable: None or an integer >= 1, else a
        :class:`~tinyfaces_trt.core.errors.ConfigError`."""
        return self._max_pixels

    @max_pixels.setter
    def max_pixels(self, value: int | None) -> None:
        if value is not None:
            number = _positive_integer(value)
            if number is None:
                raise ConfigError(f"Detector.max_pixels must be None (any size) or an integer "
                                  f">= 1, got {value!r}")
            value = number
        self._max_pixels = value

    @property
    def coordinate_base(self) -> float:
        """Coordinate of the image's first pixel in this detector's boxes (read-only,
        :attr:`~tinyfaces_trt.core.config.DetectorConfig.coordinate_base` of its config): 0.0
        for the pytorch variant (0-based boxes), 1.0 for matconvnet (1-based). Pass it as
        ``base=`` to :func:`~tinyfaces_trt.runtime.masks.apply_masks` and the functions of
        :mod:`~tinyfaces_trt.runtime.draw` with this detector's boxes."""
        return self._config.coordinate_base

    @property
    def identity(self) -> ModelIdentity | None:
        """The network's :class:`~tinyfaces_trt.core.manifest.ModelIdentity`, or None when
        the detector was built from a bare runner."""
        return self._identity

    @property
    def untrained(self) -> bool:
        """True when the network has seeded RANDOM weights: its detections are meaningless."""
        return self._identity is not None and self._identity.untrained

    def plan(self, height: int, width: int) -> list[PyramidLevel]:
        """The pyramid levels this detector runs for an image of that size; empty when there
        is none (the image has no faces to find, see
        :func:`~tinyfaces_trt.core.pyramid.plan_pyramid`). Planned once per size (the config
        is read-only): a new list each call."""
        key = (int(height), int(width))
        levels = self._plans.get(key)
        if levels is None:
            levels = plan_pyramid(height, width, self.config)
            if len(self._plans) >= PLANS_KEPT:  # sizes that never repeat
                self._plans.clear()
            self._plans[key] = levels
        return list(levels)

    def image_buffer(self, height: int, width: int, count: int | None = None) -> np.ndarray:
        """A new, uninitialised uint8 RGB array to fill with images and pass to :meth:`detect`
        ((height, width, 3)) or, given ``count``, to :meth:`detect_batch` ((count, height,
        width, 3)), in the host memory this detector's stages read fastest: on the CUDA stages
        page-locked memory, which the upload reads directly, without the staging copy of the
        image (which the first resize waits for); elsewhere plain numpy memory.

        Fill it in place with RGB pixels (``np.copyto``, a decoder writing into a given
        array) and reuse it image after image: page-locked memory takes far longer to make
        than an image to copy. Refill it only once the call given it has returned or raised
        (not from ``on_level``: the upload may still read it then). It stays valid as long
        as it (or a view of it) is referenced, also after :meth:`close`.

        Raises:
            ConfigError: a size or count that is not a positive integer.
            ImageTooLargeError: larger than :attr:`max_pixels`.
            TinyFacesError: the detector is closed; on the CUDA stages, another CUDA device
                is current in this thread (as for :meth:`detect`).
        """
        height, width = _positive_size((height, width))
        images = 1 if count is None else _positive_integer(count)
        if images is None:
            raise ConfigError(f"count must be None (one image) or an integer >= 1, got {count!r}")
        check_image_size(height, width, self.max_pixels)
        self._check_open()
        made = self.preprocessor.empty_images(images, height, width)
        return made[0] if count is None else made

    def detect(self, image: np.ndarray,
               timings: MutableMapping[str, float] | None = None, *,
               on_level: Callable[[PyramidLevel], None] | None = None) -> np.ndarray:
        """Detects faces in one (H, W, 3) uint8 RGB image.

        Args:
            image: the image, uint8 RGB, height x width x 3.
            timings: if given, seconds spent per stage are added under ``"preprocess"``,
                ``"network"``, ``"decode"`` and ``"nms"`` (stages are synchronised first).
            on_level: if given, called with each pyramid level of :meth:`plan` once it has run
                (on the device path: once it is queued), smallest first: progress for the
                seconds a large image takes on a CPU.

        Returns:
            (N, 5) float32 array of [x1, y1, x2, y2, prob] in original-image pixels (the
            logit instead of prob where ``config.score == "logit"``),
            sorted by descending score; (0, 5) when the image's pyramid has no level.

        Raises:
            ImageError: not an (H, W, 3) uint8 array (:class:`ImageTooLargeError`: over
                :attr:`max_pixels`).
        """
        image = validate_image(image, self.max_pixels)
        with self._using("detect()"):
            (boxes,) = self._run([image], timings, on_level)
        return boxes

    def detect_batch(self, images: Sequence[np.ndarray] | np.ndarray,
                     timings: MutableMapping[str, float] | None = None) -> list[np.ndarray]:
        """Detects faces in several images of one size (video frames, camera streams): a
        sequence of (H, W, 3) uint8 arrays, or one (N, H, W, 3) array.

        With a runner that takes batches (``capabilities.batch``) each pyramid level runs once
        for all images (for up to ``capabilities.max_batch`` at a time); decode and NMS stay
        per image. Returns one (N_i, 5) array per image,
        each what :meth:`detect` returns for it (up to the runner's batch-vs-single rounding).
        The whole call holds the detector: another thread's call or ``close()`` waits for it.

        Raises:
            ImageError: an image is not an (H, W, 3) uint8 array (the message gives its index
                in the batch), or the images differ in size.
        """
        images = validate_batch(images, self.max_pixels)
        if not images:
            self._check_open()
            return []
        caps = capabilities_of(self.runner)
        step = (caps.max_batch or len(images)) if caps.batch else 1
        with self._using("detect_batch()"):
            return [boxes for start in range(0, len(images), step)
                    for boxes in self._run(images[start:start + step], timings)]

    def warmup(self, sizes: Iterable[tuple[int, int]],
               batch_sizes: Iterable[int] = (1,)) -> tuple[int, ...]:
        """Readies the detector for images of these sizes before the first real one (a
        service before it takes requests): the runner prepares every pyramid level's input
        shape (:meth:`NetworkRunner.warmup <tinyfaces_trt.core.runner.NetworkRunner.warmup>`;
        torch-cuda captures (or compiles) them, up to seconds per shape, and keeps them, instead of
        preparing at a size's third image), then one blank image of each size and batch size
        goes through the whole pipeline (first-run costs: ONNX Runtime CUDA's convolution
        algorithm search per shape, kernels loaded, allocators grown). A size whose pyramid
        has no level (:meth:`plan`: its images have no faces to find) has nothing to prepare.

        Args:
            sizes: a list of ``(height, width)`` image sizes (not one bare pair).
            batch_sizes: how many images of one size :meth:`detect_batch` will be given at
                once (1: :meth:`detect`); only 1 when the runner takes no batches, at most
                its ``max_batch`` (a larger batch runs in parts of that size). torch-cuda
                runs any other batch padded into the next larger warmed-up one of its size,
                so a few cover all (``tf-serve``: 1, the powers of two, the largest).

        Returns:
            The batch sizes it warmed up with (those of ``batch_sizes`` the runner takes).

        Raises:
            ConfigError: a size or batch size that is not a positive integer, or none (a
                ValueError too).
            TinyFacesError: a size the runner cannot run (e.g. outside a TensorRT engine's
                profile), before any work.
        """
        sizes = _warmup_sizes(sizes)
        try:
            batches = sorted({operator.index(n) for n in batch_sizes})
        except TypeError:
            raise ConfigError(f"batch sizes are integers, got {batch_sizes!r}") from None
        if not sizes or not batches or batches[0] < 1:
            raise ConfigError(f"warmup needs at least one image size and batch sizes >= 1, got "
                              f"sizes {sizes}, batch sizes {batches}")
        caps = capabilities_of(self.runner)
        if not caps.batch:
            batches = [1]
        elif caps.max_batch is not None and batches[-1] > caps.max_batch:
            batches = [n for n in batches if n < caps.max_batch] + [caps.max_batch]
        for height, width in sizes:
            check_image_size(height, width, self.max_pixels)
        plans = {size: self.plan(*size) for size in dict.fromkeys(sizes)}
        plans = {size: levels for size, levels in plans.items() if levels}  # nothing to run
        if not plans:
            self._check_open()
            return tuple(batches)
        with self._using("warmup()"):
            for levels in plans.values():
                self.runner.check_levels(levels)
            self.runner.warmup([(n, 3, level.height, level.width)
                                for levels in plans.values() for n in batches for level in levels])
        for height, width in plans:
            blank = np.zeros((height, width, 3), np.uint8)
            for n in batches:
                with self._using("warmup()"):
                    self._run([blank] * n, None)
        return tuple(batches)

    def _run(self, images: list[np.ndarray], timings: MutableMapping[str, float] | None,
             on_level: Callable[[PyramidLevel], None] | None = None) -> list[np.ndarray]:
        """The data flow for validated images of one size, all levels batched; the caller
        holds the stages (:meth:`_using`)."""
        height, width = images[0].shape[:2]
        levels = self.plan(height, width)
        if not levels:  # no level fits the image or can produce a face of the wanted size
            return [np.zeros((0, 5), np.float32) for _ in images]
        self.runner.check_levels(levels)  # refuse the whole image before running any level
        clock = _StageClock(timings, (self.preprocessor, self.runner, self.postprocessor))
        self.postprocessor.reset(height, width, len(images))
        if len(levels) > 1 and capabilities_of(self.runner).concurrent_levels:
            self._run_levels_at_once(images, levels, clock, on_level)
        else:
            for level in levels:
                net_input = self._prepare(images, level)
                clock.lap("preprocess")
                score_map = self.runner.run(net_input)
                clock.lap("network")
                self.postprocessor.add_level(score_map, level)
                clock.lap("decode")
                if on_level is not None:
                    on_level(level)
        boxes = self.postprocessor.finish_all()
        clock.lap("nms")
        return boxes

    def _run_levels_at_once(self, images: list[np.ndarray], levels: list[PyramidLevel],
                            clock: "_StageClock",
                            on_level: Callable[[PyramidLevel], None] | None) -> None:
        """Every level's input, then one ``run_levels`` (the runner may run them side by
        side), then each level's decode (``capabilities.concurrent_levels``)."""
        net_inputs = [self._prepare(images, level) for level in levels]
        clock.lap("preprocess")
        score_maps = self.runner.run_levels(net_inputs)  # type: ignore[attr-defined]
        clock.lap("network")
        if len(score_maps) != len(levels):
            raise TinyFacesError(f"{type(self.runner).__name__}.run_levels returned "
                                 f"{len(score_maps)} score maps for {len(levels)} levels")
        for level, score_map in zip(levels, score_maps):
            self.postprocessor.add_level(score_map, level)
            if on_level is not None:
                on_level(level)
        clock.lap("decode")

    def _prepare(self, images: list[np.ndarray], level: PyramidLevel) -> Any:
        if len(images) == 1:
            return self.preprocessor.prepare(images[0], level)
        return self.preprocessor.prepare_batch(images, level)

    def close(self) -> None:
        """Releases the stages' and the runner's memory (device buffers, sessions), once the
        image another thread may be detecting is done; idempotent. Called on the thread of a
        running detect (from ``on_level``, a signal handler, a finalizer), it is done as soon
        as that call ends, and no call starts after it. Every part is closed even when one
        fails; the first failure is raised afterwards."""
        self._closing = True
        with self._lock:
            if self._running:
                self._close_deferred = True
                return
            self._close_now()

    def _close_now(self) -> None:
        self._closed = True
        self._close_deferred = False
        close_all((self.preprocessor, self.postprocessor, self.runner))

    @contextlib.contextmanager
    def _using(self, call: str) -> Iterator[None]:
        """Holds the stages for one call: waits for another thread's, refuses a call nested in
        this thread's own, and does a close() asked for meanwhile once the call ends."""
        self._check_open()  # before the wait: a call after close() does not delay it
        with self._lock:
            self._check_open()
            if self._running:  # only the running call's own thread gets here
                raise TinyFacesError(
                    f"{call} was called inside a running detect of the same detector (from "
                    f"on_level, a signal handler or a finalizer): a detector runs one image at "
                    f"a time; use another detector, or call it once the running one returns")
            try:
                self._running = True
                yield
            except BaseException:
                self._settle()
                raise
            finally:
                self._running = False
                if self._close_deferred:
                    self._close_now()

    def _settle(self) -> None:
        """After a call that raised: waits for the preprocessor's queued work, which may
        still read the caller's images (page-locked ones are uploaded from their own memory),
        so that they may be refilled or freed once the call is over. Best effort: the call's
        own error is the one raised."""
        try:
            self.preprocessor.synchronize()
        except Exception:  # a device in an error state: the call's error says more
            pass

    def _check_open(self) -> None:
        if self._closing or self._closed or self._close_deferred:
            raise TinyFacesError("this detector is closed")

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _StageClock:
    """Adds wall time per stage into ``timings`` (no-op when it is None)."""

    def __init__(self, timings: MutableMapping[str, float] | None,
                 stages: tuple[Preprocessor | NetworkRunner | Postprocessor, ...]):
        if timings is not None and not isinstance(timings, MutableMapping):
            raise TypeError(f"timings must be a dict (stage name -> seconds, added to) or "
                            f"None, got {type(timings).__name__}")
        self.timings = timings
        self.stages = stages
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.timings is None:
            return
        for stage in self.stages:
            stage.synchronize()
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - self.last)
        self.last = now


def _warmup_sizes(sizes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``warmup``'s sizes, checked: a list of positive (height, width) integer pairs."""
    if isinstance(sizes, (tuple, list)) and len(sizes) == 2 \
            and all(isinstance(v, numbers.Integral) for v in sizes):
        raise ConfigError(f"warmup takes a list of (height, width) image sizes, got the single "
                          f"size {tuple(sizes)!r}; pass [{tuple(sizes)!r}]")
    try:
        given = iter(sizes)
    except TypeError:
        raise ConfigError(f"warmup takes a list of (height, width) image sizes, got "
                          f"{type(sizes).__name__}") from None
    return [_positive_size(size) for size in given]


def _positive_integer(value: Any) -> int | None:
    """``value`` as an int where it is an integer >= 1 of any integral type (not a float or a
    bool), else None."""
    try:
        number = operator.index(value)
    except TypeError:
        return None
    return None if isinstance(value, bool) or number < 1 else number


def _positive_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (operator.index(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"image sizes are (height, width) pairs of integers, got {size!r}") from None
    if height < 1 or width < 1:
        raise ConfigError(f"an image size (height, width) must be positive, got {tuple(size)}")
    return height, width


def validate_image(image: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """Checks that ``image`` is (H, W, 3) uint8, of at most ``max_pixels`` pixels (None: any
    size), and returns it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image is empty: shape {image.shape}")
    check_image_size(*image.shape[:2], max_pixels)
    return np.ascontiguousarray(image)


def check_image_size(height: int, width: int, max_pixels: int | None) -> None:
    """Raises :class:`ImageTooLargeError` for an image of more than ``max_pixels`` pixels
    (None: any size)."""
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} ({height * width} pixels) is larger than the detector "
            f"takes ({max_pixels} pixels, Detector.max_pixels); detect a downscaled copy or "
            f"tiles of it")


def validate_batch(images: Sequence[np.ndarray] | np.ndarray, max_pixels: int | None = None
                   ) -> list[np.ndarray]:
    """Checks every image (:func:`validate_image`; an error names the image's index in the
    batch) and that all have one size."""
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ImageError(f"detect_batch takes a sequence of images (a list, or an (N, H, W, 3) "
                         f"array), got an array of shape {images.shape}; for one image use "
                         f"detect(image)")
    try:
        given = iter(images)
    except TypeError:
        raise ImageError(f"detect_batch takes a sequence of images, got "
                         f"{type(images).__name__}") from None
    checked = []
    for index, image in enumerate(given):
        try:
            checked.append(validate_image(image, max_pixels))
        except ImageError as exc:
            kind = ImageTooLargeError if isinstance(exc, ImageTooLargeError) else ImageError
            raise kind(f"image {index} of the batch: {exc}") from None
    sizes = {image.shape for image in checked}
    if len(sizes) > 1:
        raise ImageError(f"a batch takes images of one size, got {sorted(sizes)}; "
                         f"detect images of other sizes separately")
    return checked
