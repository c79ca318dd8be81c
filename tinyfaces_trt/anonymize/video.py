"""Video in and out through PyAV (FFmpeg): decode ahead on a thread, encode on a thread.

:class:`VideoReader` demuxes and decodes the first video stream on a thread, handing over RGB
frames (with their pts) and the packets of the other streams. :class:`VideoWriter` encodes the
processed frames on a thread with the input's time base and each frame's own pts (variable
frame rate kept), at the input's resolution and rotation, and remuxes the audio, subtitle and
data packets unchanged (codec copy); container and stream metadata are copied.

Only this module imports :mod:`av`; it is imported lazily by the application.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.optional import version_tuple
from tinyfaces_trt.core.threads import WAIT_SLICE_S, Worker

log = logging.getLogger("tinyfaces_trt.anonymize")

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")

#: Encoder used when ``--codec`` is not given, by output suffix.
DEFAULT_CODECS = {".webm": "libvpx-vp9"}
DEFAULT_CODEC = "libx264"
#: Constant rate factor when ``--crf`` is not given (visually lossless for x264/x265).
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 24, "libvpx": 10, "libsvtav1": 28}

_QUEUE_FRAMES = 8
#: An aborted encode (Ctrl-C) ends within one frame, except in the encoder's final flush, one
#: call that cannot be stopped (11 s for a 45-frame 4K clip with libx264 on 2 cores): after
#: ENCODER_STOP_NOTICE_S seconds the wait is announced, after ENCODER_STOP_S more the output is
#: left open (it is removed) rather than closed under the running call, which would crash.
ENCODER_STOP_NOTICE_S = 2.0
ENCODER_STOP_S = 120.0
_END = object()


class VideoError(TinyFacesError):
    """A video cannot be read or written (corrupt, truncated, unsupported)."""


def av_module() -> Any:
    """The :mod:`av` module, or a clear error naming the extra to install."""
    try:
        import av
    except ImportError as exc:
        raise TinyFacesError("video needs PyAV: pip install 'tinyfaces-trt[video]'") from exc
    return av


def _lenient_metadata(av: Any) -> dict[str, str]:
    """``av.open`` options so that metadata that is not UTF-8 does not stop the read: PyAV
    before 19 decodes it strictly unless ``metadata_errors`` says otherwise; 19 removed that
    option and always decodes with ``surrogateescape``."""
    return {"metadata_errors": "replace"} if version_tuple(av.__version__) < (19,) else {}


def default_codec(suffix: str) -> str:
    """The encoder for an output file suffix."""
    return DEFAULT_CODECS.get(suffix.lower(), DEFAULT_CODEC)


def rotation_turns(rotation: float) -> int:
    """Quarter turns counter-clockwise (``np.rot90``'s ``k``) that bring a stored frame upright,
    from FFmpeg's display-matrix rotation (counter-clockwise degrees; phones write -90)."""
    return int(round(rotation / 90.0)) % 4


@dataclass
class Frame:
    """One decoded frame.

    Attributes:
        index: position in decode order (0-based).
        pts: presentation timestamp in the stream's time base.
        time: seconds (pts x time base), or None when the stream gives no timestamps.
        image: (H, W, 3) uint8 RGB, upright (display rotation applied).
    """

    index: int
    pts: int
    time: float | None
    image: np.ndarray


@dataclass
class StreamInfo:
    """What the output needs to know about the input's video stream."""

    width: int
    height: int
    rotation: int
    time_base: Fraction
    rate: Fraction | None
    frames: int
    duration: float | None
    codec: str
    pix_fmt: str | None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the audit sidecar)."""
        return {"width": self.width, "height": self.height, "rotation": self.rotation,
                "time_base": str(self.time_base),
                "rate": None if self.rate is None else str(self.rate),
                "frames": self.frames, "duration": self.duration, "codec": self.codec,
                "pix_fmt": self.pix_fmt}


def _raise_from(exc: Exception, path: Path, what: str) -> None:
    av = av_module()
    if isinstance(exc, (av.FFmpegError, OSError, ValueError, EOFError)):
        raise VideoError(f"{path}: cannot {what}: {exc}") from exc
    raise exc


class VideoReader:
    """Decodes the first video stream of ``path`` ahead of use on a thread.

    Use as a context manager; iterate :meth:`frames`. Packets of the other streams are
    collected in :attr:`passthrough` for :class:`VideoWriter`.
    """

    def __init__(self, path: str | Path) -> None:
        av = av_module()
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path), "r", **_lenient_metadata(av))
        except Exception as exc:  # noqa: BLE001 (translated or re-raised)
            _raise_from(exc, self.path, "open the video")
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(f"{self.path}: holds no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.others = [s for s in self.container.streams if s.index != self.stream.index
                       and s.type in ("audio", "subtitle", "data")]
        self.passthrough: queue.Queue[Any] = queue.Queue()
        self._frames: queue.Queue[Any] = queue.Queue(_QUEUE_FRAMES)
        self._stop = threading.Event()
        self._worker = Worker(self._run, "tf-decode")
        self._first: Frame | None = None
        self._rotation = 0
        self._turns = 0
        try:
            self.info = self._probe()
        except BaseException:  # no decode thread or open file outlives a failed open
            self.close()
            raise

    def _probe(self) -> StreamInfo:
        s = self.stream
        self._worker.start()
        first = self._get()
        if first is _END:
            raise VideoError(f"{self.path}: its video stream holds no decodable frame")
        self._first = first
        rate = s.average_rate or s.guessed_rate
        duration = float(s.duration * s.time_base) if s.duration and s.time_base else (
            self.container.duration / 1e6 if self.container.duration else None)
        frames = int(s.frames or 0)
        if not frames and duration and rate:
            frames = int(round(duration * float(rate)))
        height, width = first.image.shape[:2]
        if self._turns % 2:
            height, width = width, height
        return StreamInfo(width, height, self._rotation, s.time_base or Fraction(1, 1000),
                          rate, frames, duration, s.codec_context.name,
                          s.codec_context.pix_fmt, dict(s.metadata))

    def _run(self) -> None:
        index = 0
        last_pts: int | None = None
        try:
            tb = self.stream.time_base
            step = max(1, int(round(1 / (float(self.stream.average_rate or 25) * float(tb))))) \
                if tb else 1
            for packet in self.container.demux(self.stream, *self.others):
                if self._stop.is_set():
                    return
                if packet.stream.index != self.stream.index:
                    if packet.size and packet.dts is not None:
                        self.passthrough.put(packet)
                    continue
                for frame in packet.decode():
                    if index == 0:
                        self._rotation = int(round(frame.rotation))
                        self._turns = rotation_turns(self._rotation)
                    pts = frame.pts
                    if pts is None or (last_pts is not None and pts <= last_pts):
                        pts = 0 if last_pts is None else last_pts + step
                    last_pts = pts
                    image = frame.to_ndarray(format="rgb24")
                    if self._turns:
                        image = np.ascontiguousarray(np.rot90(image, self._turns))
                    time = float(pts * tb) if tb else None
                    if not self._put(Frame(index, pts, time, image)):
                        return
                    index += 1
        except Exception as exc:  # noqa: BLE001 (handed to the consumer)
            self._put(exc)
            return
        self._put(_END)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _get(self) -> Any:
        while True:  # in slices: Ctrl-C handed to another thread is raised here meanwhile
            try:
                item = self._frames.get(timeout=WAIT_SLICE_S)
                break
            except queue.Empty:
                if self._worker.wait(0) and self._frames.empty():  # nothing more will come
                    self._worker.result()  # what ended it outside _run's own handling
                    raise VideoError(f"{self.path}: the decoder stopped before the end")
        if isinstance(item, Exception):
            _raise_from(item, self.path, "decode the video")
        return item

    def frames(self) -> Iterator[Frame]:
        """The frames in decode order; raises :class:`VideoError` on corrupt data."""
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while True:
            item = self._get()
            if item is _END:
                return
            yield item

    @property
    def turns(self) -> int:
        """Quarter turns applied to make frames upright (see :func:`rotation_turns`)."""
        return self._turns

    def close(self) -> None:
        """Stops the decode thread and closes the file; idempotent."""
        self._stop.set()
        # the decode thread stops within one frame; a decode call still running after
        # that long leaves the container open (closing it under the call would crash)
        self._worker.stop(timeout=10, then=self.container.close)

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def encoder_problem(codec: str) -> str | None:
    """Why ``codec`` cannot encode this tool's video (not in this FFmpeg build, not a video
    encoder); None when it can, or when PyAV is not installed (said where a video is read)."""
    try:
        av = av_module()
    except TinyFacesError:
        return None
    try:
        found = av.codec.Codec(codec, "w")
    except Exception:  # noqa: BLE001 (UnknownCodecError, or not an encoder)
        return "no such encoder in this FFmpeg build (PyAV's)"
    return None if found.type == "video" else f"not a video encoder (it encodes {found.type})"


#: Encoders that refuse an odd width (height) in a pixel format with one colour sample per
#: 2 pixels across (down); libvpx-vp9 and mpeg4 encode those.
_EVEN_CHROMA_ENCODERS = ("libx264", "libx265")
_HALF_ACROSS = ("420", "422", "411", "410", "nv12", "nv21", "nv16")
_HALF_DOWN = ("420", "440", "410", "nv12", "nv21")


def output_pixel_format(source: str | None, width: int, height: int, formats: list[str],
                        codec: str = "libx264") -> str:
    """The encoder's pixel format: the source's where the encoder takes it, else yuv420p (or
    the encoder's first); for libx264/libx265 at an odd width or height that format's chroma
    cannot hold, yuv444p where the encoder has it (it refused with "Generic error in an
    external library")."""
    choice = source if source in formats else (
        "yuv420p" if "yuv420p" in formats or not formats else formats[0])
    odd = (width % 2 and any(s in choice for s in _HALF_ACROSS)) or \
        (height % 2 and any(s in choice for s in _HALF_DOWN))
    if odd and codec in _EVEN_CHROMA_ENCODERS and "yuv444p" in formats:
        return "yuv444p"
    return choice


class VideoWriter:
    """Encodes frames into ``path`` on a thread, remuxing ``reader``'s other streams.

    Args:
        path: output file; its suffix chooses the container.
        reader: the input (stream info, rotation, pass-through packets, metadata).
        codec: encoder name (default: :func:`default_codec` of the suffix).
        crf: constant rate factor (default: :data:`DEFAULT_CRF` of the codec, if it has one).
        name: the output as errors name it (default ``path``; a temporary file's final name).
    """

    def __init__(self, path: str | Path, reader: VideoReader, codec: str | None = None,
                 crf: int | None = None, name: str | Path | None = None) -> None:
        av = av_module()
        self.path = Path(path)
        self.name = Path(name) if name is not None else self.path
        self.reader = reader
        self.dropped: list[str] = []
        info = reader.info
        self.codec = codec or default_codec(self.path.suffix)
        try:
            self.container = av.open(str(self.path), "w")
        except Exception as exc:  # noqa: BLE001
            _raise_from(exc, self.name, "create the output")
        try:
            self._add_video_stream(av, info, crf)
            self._add_copied_streams()
            self.container.metadata.update(reader.container.metadata)
        except Exception:
            self.container.close()
            raise
        self._frames: queue.Queue[Any] = queue.Queue(_QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._abort = threading.Event()
        self._worker = Worker(self._run, "tf-encode")
        try:
            self._worker.start()
        except BaseException:  # Ctrl-C in start(): no encode thread or open file left
            self.abort()
            raise

    def _add_video_stream(self, av: Any, info: StreamInfo, crf: int | None) -> None:
        problem = encoder_problem(self.codec)  # the default of a container, or --codec
        if problem:
            raise VideoError(f"{self.name}: encoder {self.codec!r}: {problem}")
        try:
            stream = self.container.add_stream(self.codec, rate=info.rate or Fraction(25))
        except Exception as exc:  # noqa: BLE001
            _raise_from(exc, self.name, f"add a {self.codec} video stream")
        stream.width, stream.height = info.width, info.height
        formats = [f.name for f in (stream.codec_context.codec.video_formats or [])]
        stream.pix_fmt = output_pixel_format(info.pix_fmt, info.width, info.height, formats,
                                             self.codec)
        stream.time_base = info.time_base
        stream.codec_context.time_base = info.time_base
        options: dict[str, str] = {}
        crf = DEFAULT_CRF.get(self.codec) if crf is None else crf
        if crf is not None:
            options["crf"] = str(crf)
            if self.codec.startswith("libvpx"):
                options["b"] = "0"  # constant quality mode
        stream.codec_context.options = options
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        stream.metadata.update({k: v for k, v in info.metadata.items()
                                if k.lower() not in ("encoder", "rotate")})
        self.stream = stream

    def _add_copied_streams(self) -> None:
        supported = self.container.supported_codecs
        self._copies: dict[int, Any] = {}
        for source in self.reader.others:
            name = source.codec_context.name if source.codec_context else source.type
            if source.type != "data" and name not in supported:
                self._drop(source, name, f"the {self.path.suffix} container cannot hold it")
                continue
            try:
                copy = self.container.add_stream_from_template(source)
            except Exception as exc:  # noqa: BLE001 (reported, the rest goes on)
                self._drop(source, name, str(exc))
                continue
            copy.metadata.update(source.metadata)
            self._copies[source.index] = copy

    def _drop(self, source: Any, name: str, why: str) -> None:
        message = f"stream #{source.index} ({source.type}, {name}) not copied: {why}"
        self.dropped.append(message)
        # the caller reports ``dropped`` (tf-anonymize prints it as a warning on the input)
        log.info("%s: %s", self.reader.path.name, message)

    def write(self, image: np.ndarray, pts: int) -> None:
        """Queues one upright (H, W, 3) uint8 RGB frame with its input pts."""
        while True:
            if self._error is not None:
                raise self._error_as_video()
            try:
                self._frames.put((image, pts), timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        av = av_module()
        turns = self.reader.turns
        try:
            while True:
                self._mux_passthrough()
                try:
                    item = self._frames.get(timeout=0.1)
                except queue.Empty:
                    if self._abort.is_set():
                        return
                    continue
                if item is _END or self._abort.is_set():
                    if self._abort.is_set():
                        return
                    break
                image, pts = item
                if turns:
                    image = np.ascontiguousarray(np.rot90(image, -turns))
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = pts
                frame.time_base = self.stream.codec_context.time_base
                for packet in self.stream.encode(frame):
                    self.container.mux(packet)
            for packet in self.stream.encode(None):
                self.container.mux(packet)
            self._mux_passthrough()
        except BaseException as exc:  # noqa: BLE001 (re-raised by write/close)
            self._error = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._frames.get_nowait()
                except queue.Empty:
                    break

    def _mux_passthrough(self) -> None:
        while not self._abort.is_set():  # aborted: the reader's packets may be freed soon
            try:
                packet = self.reader.passthrough.get_nowait()
            except queue.Empty:
                return
            target = self._copies.get(packet.stream.index)
            if target is not None:
                packet.stream = target
                self.container.mux(packet)

    def _error_as_video(self) -> BaseException:
        exc = self._error
        av = av_module()
        if isinstance(exc, (av.FFmpegError, OSError, ValueError)):
            return VideoError(f"{self.name}: cannot encode with {self.codec} "
                              f"({self.stream.pix_fmt}, {self.stream.width}x{self.stream.height}): "
                              f"{exc}")
        return exc  # type: ignore[return-value]

    def finish(self) -> None:
        """Flushes the encoder and writes the trailer (raises the thread's error, if any)."""
        while self._error is None:
            try:
                self._frames.put(_END, timeout=0.1)
                break
            except queue.Full:
                continue
        self._worker.wait()
        if self._error is not None:
            self.container.close()
            raise self._error_as_video()
        try:
            self.container.close()
        except Exception as exc:  # noqa: BLE001
            _raise_from(exc, self.name, "finish the output")

    def abort(self) -> None:
        """Stops the encoder thread and closes the file without finishing it."""
        self._abort.set()
        if not self._worker.stop(timeout=ENCODER_STOP_NOTICE_S, then=self._close_quietly):
            log.warning("%s: waiting for the encoder to finish its last frames before "
                        "stopping", self.name)
            self._worker.stop(timeout=ENCODER_STOP_S, then=self._close_quietly)

    def _close_quietly(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 (the file is removed anyway)
            pass
