"""Video in and out through PyAV (FFmpeg): decode ahead on a thread, encode on a thread.

:class:`VideoReader` demuxes and decodes the first video stream (an attached picture, cover
art, is not one) on a thread, handing over RGB frames (with their pts) and the packets of the
other streams. :class:`VideoWriter` encodes the
processed frames on a thread with the input's time base and each frame's own pts (variable
frame rate kept), at the input's resolution, rotation, sample aspect ratio and colour tags
(the RGB <-> YUV conversions use the input's matrix and range), with the chapters and Matroska
font attachments. What can identify people or places is left out unless asked for: the audio
streams (``keep_audio``); the container's, the streams' and the chapters' metadata tags but a
stream's language, and the subtitle and data streams (dashcam GPS text, GoPro telemetry,
timecode) (``keep_metadata``); those kept are remuxed unchanged (codec copy). An attachment that
is not a font (a picture would keep its faces) is never copied. What is not carried over is
named in :attr:`VideoWriter.dropped`; what was wrong with the input (undecodable packets,
missing frames, a stretch of the file that could not be read) in :attr:`VideoReader.problems`.
The encoder thread checks now and then that the output's disk is not full (:func:`free_bytes`).

Only this module imports :mod:`av`; it is imported lazily by the application.
"""

from __future__ import annotations

import errno
import functools
import heapq
import logging
import os
import queue
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.optional import version_tuple
from tinyfaces_trt.core.threads import WAIT_SLICE_S, Worker
from tinyfaces_trt.runtime.imageio import DEFAULT_MAX_PIXELS
from tinyfaces_trt.anonymize.video_formats import (
    DEFAULT_CRF, avi_timing_params, convert, crf_problem, default_codec, encoder_time_base,
    is_yuv, output_colour, output_pixel_format, stream_colour)

log = logging.getLogger("tinyfaces_trt.anonymize")


#: Output formats (FFmpeg muxer names) that hold chapters, and Matroska attachments.
_CHAPTER_FORMATS = ("matroska", "webm", "mov", "mp4", "ipod")
_ATTACHMENT_FORMATS = ("matroska",)
#: Muxers that write a timecode (tmcd) track from the video stream's ``timecode`` tag, and that
#: hold data streams (GoPro telemetry...).
_TIMECODE_FORMATS = ("mov", "mp4", "ipod")
#: Attachments copied: fonts (for subtitles), by mimetype or file suffix, whose data starts as a
#: font does (TrueType, OpenType, a collection, Type 1, WOFF); any other file could hold a picture.
_FONT_MIMETYPES = ("application/x-truetype-font", "application/vnd.ms-opentype",
                   "application/font-sfnt", "application/x-font-ttf", "application/x-font-otf",
                   "application/x-font-truetype", "application/x-font-opentype",
                   "application/font-woff")
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc")
_FONT_SIGNATURES = (b"\x00\x01\x00\x00", b"OTTO", b"true", b"ttcf", b"typ1", b"wOFF", b"wOF2")
#: Metadata tags copied without ``keep_metadata``: what playback needs (the display matrix is
#: side data, kept; the muxer writes its own encoder, handler and duration tags).
_PLAYBACK_TAGS = ("language",)
#: Tags the muxer writes anew (the file format's, the writing software's, a track's handler),
#: left out without being named.
_FORMAT_TAGS = ("major_brand", "minor_version", "compatible_brands", "duration", "encoder",
                "software", "handler_name", "vendor_id")
#: Reorder depth assumed for a decoder with B-frames when PyAV does not say (before 18):
#: x264's B-pyramids need 2.
_MAX_REORDER = 2
_QUEUE_FRAMES = 8
#: pts steps between the first frames kept to find the usual frame interval
_STEPS_KEPT = 500
#: Bytes between packets past which the file is taken to hold a stretch the demuxer skipped
#: (damage it resynchronised after); Matroska's block and cluster headers take up to ~30.
_UNREAD_BYTES = 64
#: A timestamp step over such a stretch counts as frames missing when it exceeds this many
#: usual frame intervals and this many seconds (a variable frame rate has long steps too,
#: over bytes that all gave packets).
_GAP_STEPS, _GAP_S = 5, 0.5
#: Without a frame count (Matroska, WebM), the frames may end this many usual intervals before
#: the video stream's recorded duration before the file is reported as truncated.
_END_SLACK_STEPS = 2
#: The encoder thread asks the output's filesystem for its free space every this many frames:
#: a full disk fails the file then, not only once the muxer writes what it holds (FFmpeg's
#: 32 KiB write buffer, a Matroska cluster: a small file's all of it when it is closed, after
#: the whole input was processed).
_SPACE_CHECK_FRAMES = 10
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


#: FFmpeg's AV_DISPOSITION_ATTACHED_PIC: a "video stream" that is one picture stored with the
#: file (an MP4's cover art, a Matroska image attachment), not the video.
_ATTACHED_PIC = 0x0400


def _flag_bits(value: Any) -> int:
    """The bits of a disposition: an int (PyAV 18's ``IntFlag``), or a plain ``enum.Flag``
    (PyAV 17 and earlier, which ``int()`` refuses) through its ``value``; 0 for anything else."""
    if isinstance(value, int):
        return int(value)
    bits = getattr(value, "value", None)
    return int(bits) if isinstance(bits, int) else 0


def is_attached_picture(stream: Any) -> bool:
    """Whether ``stream`` is an attached picture (cover art) rather than video (a PyAV without
    ``Stream.disposition`` cannot tell: False)."""
    return bool(_flag_bits(getattr(stream, "disposition", 0)) & _ATTACHED_PIC)


def pick_video_stream(streams: Any) -> Any | None:
    """The video stream to anonymise among ``streams`` (a container's ``streams.video``): the
    first that is not an attached picture (cover art, one still image: taking it made a
    one-frame output and dropped the video); None when there is none. The other video
    streams, attached pictures included, are never copied (:class:`VideoWriter` names them)."""
    return next((s for s in streams if not is_attached_picture(s)), None)


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
    #: pixel aspect ratio when not square (anamorphic video), else None
    sample_aspect_ratio: Fraction | None = None
    #: the input's colour tags that are specified: ``colorspace``, ``color_primaries``,
    #: ``color_trc``, ``color_range`` (FFmpeg's enum values)
    colour: dict[str, int] = field(default_factory=dict)
    #: ``frames`` is an estimate (duration x rate: the container counts none), not a count
    frames_estimated: bool = False
    #: frames decoded (and handed over), known once all are read; None before
    frames_decoded: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the audit sidecar). ``width`` and ``height`` are the stored
        frame's; the masks' boxes are in the upright frame (``boxes_frame``, rotation applied),
        ``upright_width`` x ``upright_height``. ``frames`` (kept for older readers) is
        ``frames_announced``: the container's count, or where it gives none an estimate from
        the duration (``frames_estimated``), 0 (None) when unknown; ``frames_decoded`` is what
        was read."""
        turned = rotation_turns(self.rotation) % 2
        return {"width": self.width, "height": self.height, "rotation": self.rotation,
                "boxes_frame": "upright",
                "upright_width": self.height if turned else self.width,
                "upright_height": self.width if turned else self.height,
                "time_base": str(self.time_base),
                "rate": None if self.rate is None else str(self.rate),
                "frames": self.frames, "frames_announced": self.frames or None,
                "frames_estimated": self.frames_estimated,
                "frames_decoded": self.frames_decoded,
                "duration": self.duration, "codec": self.codec, "pix_fmt": self.pix_fmt}


def _error_text(exc: Exception, temp: Path | None = None, name: Path | None = None) -> str:
    """``exc`` as one line, a temporary file's path in it replaced by the output's name."""
    text = str(exc)
    return text.replace(str(temp), str(name)) if temp is not None and name is not None else text


def _raise_from(exc: Exception, path: Path, what: str, temp: Path | None = None,
                hint: str = "") -> None:
    av = av_module()
    if isinstance(exc, (av.FFmpegError, OSError, ValueError, EOFError)):
        raise VideoError(f"{path}: cannot {what}: {_error_text(exc, temp, path)}{hint}") from exc
    raise exc


def _open_hint(exc: Exception) -> str:
    """What an error opening a file suggests, for the message: FFmpeg's invalid data, end of
    file, "Cannot allocate memory" or "Invalid argument" come from a header or index it cannot
    make sense of (a damaged moov box asks for gigabytes), not from the system."""
    av = av_module()
    if isinstance(exc, av.FFmpegError) and (
            isinstance(exc, (av.error.InvalidDataError, av.error.EOFError))
            or getattr(exc, "errno", None) in (errno.ENOMEM, errno.EINVAL)):
        return " (the file looks damaged, or is not a video)"
    return ""


def free_bytes(folder: Path) -> int | None:
    """Bytes the filesystem holding ``folder`` can still take from this process (root also
    gets the blocks reserved for it); None where it does not say (no size reported, or the
    call fails)."""
    try:
        stat = os.statvfs(folder)
    except (OSError, AttributeError):  # (no statvfs on Windows)
        return None
    if not stat.f_blocks:
        return None
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    return (stat.f_bfree if root else stat.f_bavail) * stat.f_frsize


def _clock(seconds: float | None) -> str:
    """``H:MM:SS.s`` for messages (``an unknown time`` without a timestamp)."""
    if seconds is None:
        return "an unknown time"
    minutes, secs = divmod(max(0.0, seconds), 60)
    return f"{int(minutes // 60)}:{int(minutes % 60):02d}:{secs:04.1f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _video_duration(stream: Any, start: float | None) -> float | None:
    """The video stream's own duration in seconds: its header's, else from Matroska's
    DURATION tag, the end time of its last frame (``start``: the first's); the container's
    includes the other streams, audio often longer, and FFmpeg gives that to a Matroska
    stream as its own."""
    tag = next((v for k, v in stream.metadata.items() if k.upper() == "DURATION"), None)
    try:
        h, m, sec = str(tag).split(":")
        end = int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return float(stream.duration * stream.time_base) \
            if stream.duration and stream.time_base else None
    return end - start if start and end > start else end


def _estimate_frames(duration: float | None, rate: Fraction | None) -> int:
    return int(round(duration * float(rate))) if duration and rate else 0


class _Reorder:
    """Pairs decoded frames with their timestamps in presentation order.

    A decoder that reorders (B-frames) hands frames over in presentation order with the
    pts of the packet that completed them, permuted where the container stores only decode
    times (AVI): holding ``depth`` frames (the decoder's reorder delay) lets the smallest pts
    held go with the oldest frame. A frame without a pts, or whose pts is not past the
    previous one, follows the previous by ``step`` (the others keep theirs).
    """

    def __init__(self, step: int) -> None:
        self.step = step
        self.frames: deque[tuple[Any, bool]] = deque()  # (frame, whether it has a pts)
        self.pts: list[int] = []
        self.last: int | None = None

    def push(self, frame: Any, depth: int) -> Iterator[tuple[Any, int]]:
        """Adds a decoded frame; yields the (frame, pts) pairs now settled."""
        self.frames.append((frame, frame.pts is not None))
        if frame.pts is not None:
            heapq.heappush(self.pts, frame.pts)
        while len(self.frames) > depth:
            yield self._pop()

    def drain(self) -> Iterator[tuple[Any, int]]:
        """The frames still held, at the end of the stream."""
        while self.frames:
            yield self._pop()

    def _pop(self) -> tuple[Any, int]:
        frame, has_pts = self.frames.popleft()
        pts = heapq.heappop(self.pts) if has_pts else None
        if pts is None or (self.last is not None and pts <= self.last):
            pts = 0 if self.last is None else self.last + self.step
        self.last = pts
        return frame, pts


class VideoReader:
    """Decodes the first video stream of ``path`` ahead of use on a thread (the first that is
    not an attached picture: :func:`pick_video_stream`).

    Use as a context manager; iterate :meth:`frames`. Packets of the other streams are
    collected in :attr:`passthrough` for :class:`VideoWriter`. A packet the decoder rejects
    as invalid data is skipped (its frames are lost) and counted; once :meth:`frames` is
    exhausted, :attr:`problems` holds one-line warnings about the input (skipped packets,
    frames missing against what the container announces or against the video's duration,
    a stretch of the file the demuxer could not read, after which the timestamps jump), empty
    when nothing was wrong.

    A video whose frames have more than ``max_pixels`` pixels (width x height; None: any) is
    refused with a :class:`VideoError` from the size its header gives, before any frame is
    decoded (and from its first frame's, where the header gives none): the limit an image has
    (:data:`~tinyfaces_trt.runtime.imageio.DEFAULT_MAX_PIXELS`, ``Detector.max_pixels``), as a
    frame of 8192 x 8192 takes 768 MiB in float32 to detect on.
    """

    def __init__(self, path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        av = av_module()
        self.path = Path(path)
        self.problems: list[str] = []
        self.max_pixels = max_pixels
        try:
            self.container = av.open(str(self.path), "r", **_lenient_metadata(av))
        except Exception as exc:  # noqa: BLE001 (translated or re-raised)
            _raise_from(exc, self.path, "open the video", hint=_open_hint(exc))
        stream = pick_video_stream(self.container.streams.video)
        if stream is None:
            pictures = len(self.container.streams.video)
            self.container.close()
            raise VideoError(f"{self.path}: holds no video stream" + (
                f", only {_plural(pictures, 'attached picture')} (cover art), which is not "
                f"anonymised" if pictures else ""))
        context = stream.codec_context  # (the header's size: nothing decoded yet)
        too_large = self._size_problem(int(context.width or 0), int(context.height or 0))
        if too_large is not None:
            self.container.close()
            raise VideoError(too_large)
        self.stream = stream
        self.stream.thread_type = "AUTO"
        self.others = [s for s in self.container.streams if s.index != self.stream.index
                       and s.type in ("audio", "subtitle", "data")]
        self._passed = {s.index for s in self.others}
        self._avi = self.container.format.name == "avi"
        # only Matroska resynchronises over damage: MP4 fragments (moof) give no packet either
        self._matroska = "matroska" in self.container.format.name
        self.passthrough: queue.Queue[Any] = queue.Queue()
        self._frames: queue.Queue[Any] = queue.Queue(_QUEUE_FRAMES)
        self._stop = threading.Event()
        self._worker = Worker(self._run, "tf-decode")
        self._first: Frame | None = None
        self._rotation = 0
        self._turns = 0
        self._colour: dict[str, int] = {}
        self._size = (0, 0)
        self._first_pts: int | None = None
        self._last_pts = 0
        self._counted = 0  # frames the container counts in the video stream (0: unknown)
        self._own_duration: float | None = None  # the video stream's (seconds)
        self._steps: list[int] = []  # pts steps between the first frames
        self._bad_packets: list[float | None] = []  # times of the packets skipped
        self._decoded = 0
        self._last_duration = 0  # the last frame's own duration (time base; 0: not given)
        # what the file's bytes and the video packets say (:meth:`_note_packet`)
        self._read_to: int | None = None  # end of the furthest bytes a packet came from
        self._unread = 0  # bytes passed over since the last video packet (no packet in them)
        self._video_ts: int | None = None  # latest video packet timestamp so far
        self._last_dts: int | None = None
        self._gaps: list[tuple[int, int, int]] = []  # (timestamp before, after, bytes unread)
        self._gaps_placed = 0  # those of them placed between two frames (_place_gaps)
        self._discarded = 0  # video packets the container says not to show (an edit list)
        self._nulls = 0  # AVI's empty frames (the previous one again), which its count holds
        try:
            self.info = self._probe()
        except BaseException:  # no decode thread or open file outlives a failed open
            self.close()
            raise

    def _probe(self) -> StreamInfo:
        s = self.stream
        rate = s.average_rate or s.guessed_rate
        self._worker.start()
        first = self._get()
        if first is _END:
            raise VideoError(f"{self.path}: its video stream holds no decodable frame")
        self._first = first
        self._own_duration = _video_duration(s, first.time)
        self._counted = int(s.frames or 0)
        duration = self._own_duration or (
            self.container.duration / 1e6 if self.container.duration else None)
        frames = self._counted or _estimate_frames(duration, rate)
        height, width = first.image.shape[:2]
        if self._turns % 2:
            height, width = width, height
        sar = s.sample_aspect_ratio or s.codec_context.sample_aspect_ratio
        return StreamInfo(width, height, self._rotation, s.time_base or Fraction(1, 1000),
                          rate, frames, duration, s.codec_context.name,
                          s.codec_context.pix_fmt, dict(s.metadata),
                          Fraction(sar) if sar and sar != 1 else None, dict(self._colour),
                          frames_estimated=bool(frames) and not self._counted)

    def _run(self) -> None:
        try:
            count = self._decode()
        except Exception as exc:  # noqa: BLE001 (handed to the consumer)
            self._put(exc)
            return
        if count is not None:
            self._decoded = count
            self._put(_END)

    def _decode(self) -> int | None:
        """Decodes and hands over every frame; the number handed over, None when stopped."""
        av = av_module()
        tb = self.stream.time_base
        step = max(1, int(round(1 / (float(self.stream.average_rate or 25) * float(tb))))) \
            if tb else 1
        order = _Reorder(step)
        decoded, index = 0, 0
        # every stream's packets, so that bytes no packet came from are known (_note_packet)
        for packet in self.container.demux():
            if self._stop.is_set():
                return None
            self._note_packet(packet)
            if packet.stream.index != self.stream.index:
                if packet.stream.index in self._passed and packet.size and \
                        packet.dts is not None:
                    self.passthrough.put(packet)
                continue
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                stamp = packet.pts if packet.pts is not None else packet.dts
                self._bad_packets.append(None if stamp is None or not tb else float(stamp * tb))
                continue
            for frame in frames:
                self._check_size(frame, decoded)
                decoded += 1
                # AVI's guessed B-frame pts stray up to twice the decoder's delay
                for settled, pts in order.push(frame, 2 * self._reorder_depth()):
                    if not self._hand_over(settled, pts, index, tb):
                        return None
                    index += 1
        for settled, pts in order.drain():
            if not self._hand_over(settled, pts, index, tb):
                return None
            index += 1
        return index

    def _note_packet(self, packet: Any) -> None:
        """Notes what a packet tells of the file: bytes before it that gave no packet (a
        stretch the demuxer skipped, resynchronising after damage) and, for a video packet,
        a timestamp jump over them (frames lost: :meth:`_note_problems`), a packet the
        container marks as not to be shown (before an edit list's start), AVI's empty frames
        (a step of its frame-numbered dts over 1; AVI's timestamps count the chunks read,
        so they never jump over a damaged stretch: its jumps are empty frames, not gaps)."""
        if not packet.size:
            return  # (the end-of-stream packets, AVI's empty frames)
        pos = packet.pos
        if pos is not None and pos >= 0:
            if self._read_to is not None and pos > self._read_to + _UNREAD_BYTES:
                self._unread += pos - self._read_to
            self._read_to = max(pos + packet.size, self._read_to or 0)
        if packet.stream.index != self.stream.index:
            return
        if getattr(packet, "is_discard", False):  # (PyAV 12 has it)
            self._discarded += 1
        if self._avi and packet.dts is not None:
            if self._last_dts is not None and packet.dts > self._last_dts + 1:
                self._nulls += packet.dts - self._last_dts - 1
            self._last_dts = packet.dts
        stamp = packet.pts if packet.pts is not None else packet.dts
        if stamp is None:
            return
        if self._video_ts is not None and self._unread and stamp > self._video_ts and \
                self._matroska:
            self._gaps.append((self._video_ts, stamp, self._unread))
        self._unread = 0
        self._video_ts = stamp if self._video_ts is None else max(self._video_ts, stamp)

    def _reorder_depth(self) -> int:
        context = self.stream.codec_context
        depth = getattr(context, "reorder_depth", None)  # PyAV 18: the decoder's has_b_frames
        if depth is None:
            return _MAX_REORDER if context.has_b_frames else 0
        return int(depth)

    def _size_problem(self, width: int, height: int) -> str | None:
        """Why frames of ``width`` x ``height`` are refused (more than :attr:`max_pixels`
        pixels), else None."""
        limit = self.max_pixels
        if limit is None or width * height <= limit:
            return None
        return (f"{self.path}: not anonymised: its frames are {width}x{height} "
                f"({width * height} pixels), more than the limit of {limit} pixels an image "
                f"has (Detector.max_pixels); downscale it first (e.g. ffmpeg -i "
                f"{self.path.name} -vf scale=iw/2:-2 smaller{self.path.suffix}), or raise "
                f"Detector.max_pixels (None: no limit) where the detector is made in Python")

    def _check_size(self, frame: Any, index: int) -> None:
        """Notes the first frame's rotation and colour and refuses it over
        :attr:`max_pixels` (where the header said less); refuses a later change of size."""
        if index == 0:
            too_large = self._size_problem(frame.width, frame.height)
            if too_large is not None:
                raise VideoError(too_large)
            self._rotation = int(round(getattr(frame, "rotation", 0) or 0))
            self._turns = rotation_turns(self._rotation)
            self._colour = {**stream_colour(self.stream.codec_context), **stream_colour(frame)}
            if not is_yuv(frame.format.name):  # (PNG says full range of its RGB)
                self._colour.pop("color_range", None)
            self._size = (frame.width, frame.height)
        elif (frame.width, frame.height) != self._size:
            (w0, h0), (w, h) = self._size, (frame.width, frame.height)
            raise VideoError(f"{self.path}: the frame size changed at frame {index} from "
                             f"{w0}x{h0} to {w}x{h}; such a file cannot be anonymised as one "
                             f"video (cut it where the size changes)")

    def _hand_over(self, frame: Any, pts: int, index: int, tb: Fraction | None) -> bool:
        """Converts a decoded frame to upright RGB with the input's matrix and range and
        queues it; False when the reader is stopped."""
        image = convert(frame, "rgb24", self._colour, frame.format.name, "src").to_ndarray()
        if self._turns:
            image = np.ascontiguousarray(np.rot90(image, self._turns))
        time = float(pts * tb) if tb else None
        if index and len(self._steps) < _STEPS_KEPT:
            self._steps.append(pts - self._last_pts)
        if index == 0:
            self._first_pts = pts
        elif self._gaps_placed < len(self._gaps):
            self._place_gaps(pts)
        self._last_pts = pts
        self._last_duration = int(getattr(frame, "duration", 0) or 0)
        return self._put(Frame(index, pts, time, image))

    def _place_gaps(self, pts: int) -> None:
        """Widens the timestamp jumps over unread bytes that the frame at ``pts`` ends to the
        frames around them (the decoder drops frames whose reference was lost)."""
        while self._gaps_placed < len(self._gaps):
            before, after, unread = self._gaps[self._gaps_placed]
            if pts < after:
                return
            self._gaps[self._gaps_placed] = (min(before, self._last_pts), max(after, pts), unread)
            self._gaps_placed += 1

    def _note_problems(self) -> None:
        """Fills :attr:`problems` at the end of the stream."""
        bad, count = self._bad_packets, self._decoded
        self.info.frames_decoded = count
        if bad:
            near = ", ".join(_clock(t) for t in bad[:3]) + (", ..." if len(bad) > 3 else "")
            self.problems.append(f"skipped {_plural(len(bad), 'undecodable packet')} "
                                 f"(frames near {near} lost)")
        self._note_gaps()
        announced = self._counted
        if announced:
            # an exact count (MP4's samples, AVI's index), less the frames an edit list
            # leaves out and AVI's empty ones, which never come out of the decoder
            expected = announced - self._discarded - self._nulls
            if count + len(bad) < expected:
                self.problems.append(f"decoded {count} frames where the container announces "
                                     f"{expected}: the file may be truncated or damaged")
            return
        # no count (Matroska, WebM): the frames' time span against the stream's duration, not
        # a count from it (a variable frame rate makes any such count meaningless)
        tb = self.stream.time_base
        duration, covered = self._own_duration, self._covered_seconds()
        slack = float((_END_SLACK_STEPS * self._usual_step() + 1) * tb) if tb else 0.0
        if duration and covered is not None and covered < duration - slack:
            self.problems.append(f"the frames decoded end at {_clock(covered)} where the video "
                                 f"stream lasts {_clock(duration)}: the file may be truncated "
                                 f"or damaged")

    def _note_gaps(self) -> None:
        """Reports the timestamp jumps over bytes of the file that gave no packet (see
        :data:`_GAP_STEPS`)."""
        tb, step = self.stream.time_base, self._usual_step()
        if not tb:
            return
        for before, after, unread in self._gaps:
            if after - before <= max(_GAP_STEPS * step, _GAP_S / tb):
                continue
            missing = f"about {_plural(round((after - before) / step) - 1, 'frame')}, " \
                if step else ""
            self.problems.append(
                f"frames missing from {_clock(float(before * tb))} to {_clock(float(after * tb))} "
                f"({missing}{float((after - before) * tb):.1f} s; {unread} bytes of the file "
                f"there could not be read): the file may be damaged")

    def _usual_step(self) -> int:
        """The usual frame interval (time base): the median of the first pts steps, 0 when
        unknown."""
        return max(sorted(self._steps)[len(self._steps) // 2], 0) if self._steps else 0

    def _covered_seconds(self) -> float | None:
        """Seconds from the first frame to the end of the last (its own duration, else the
        usual interval), None without timestamps."""
        tb = self.stream.time_base
        if not (tb and self._decoded and self._first_pts is not None):
            return None
        last = self._last_duration if self._last_duration > 0 else self._usual_step()
        return float((self._last_pts - self._first_pts + last) * tb)

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
                self._note_problems()
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


@functools.lru_cache(maxsize=None)
def container_problem(suffix: str, codec: str) -> str | None:
    """Why a file of ``suffix`` cannot hold a ``codec`` video stream (FFmpeg's muxer refuses
    it: a .webm holds VP8, VP9 and AV1 only, an .avi no H.265), else None; None too where
    PyAV is absent or ``codec`` is no encoder here (said where the video is written). Probed
    by adding the stream to an output container that is closed before it writes anything."""
    try:
        av = av_module()
    except TinyFacesError:
        return None
    if encoder_problem(codec):
        return None
    with tempfile.TemporaryDirectory(prefix="tf-probe-") as folder:
        try:
            container = av.open(os.path.join(folder, "probe" + suffix), "w")
        except Exception:  # noqa: BLE001 (no muxer for the suffix: refused per file)
            return None
        try:
            container.add_stream(codec)
        except Exception as exc:  # noqa: BLE001 (ValueError: "'webm' format does not ...")
            return str(exc) or type(exc).__name__
        finally:
            container.close()
    return None


def encoding_problems(videos: Iterable[tuple[str, str]], codec: str | None,
                      crf: int | None) -> list[str]:
    """What keeps ``--codec`` and ``--crf`` from encoding some of the videos of a run, found
    before any is decoded: a container that cannot hold ``codec`` (:func:`container_problem`;
    a line per output suffix), a ``crf`` past the range of the encoder suffixes get by default
    (``--crf 60`` fits a .webm's VP9, not an .mp4's x264; a line per encoder). ``videos``:
    (input as named in messages, output suffix). A ``codec`` refused on its own
    (:func:`encoder_problem`, :func:`~.video_formats.crf_problem`) is the parser's."""
    by_suffix: dict[str, list[str]] = {}
    for name, suffix in videos:
        by_suffix.setdefault(suffix.lower(), []).append(name)
    problems = []
    if codec is not None:
        for suffix, names in by_suffix.items():
            reason = container_problem(suffix, codec)
            if reason:
                problems.append(
                    f"--codec {codec}: {_some(names)}: {suffix} files cannot hold a {codec} "
                    f"stream ({reason}); leave out --codec ({suffix} files get "
                    f"{default_codec(suffix)}) or give those inputs a run of their own")
        return problems
    by_codec: dict[str, list[str]] = {}  # the suffixes that get each default encoder
    for suffix in by_suffix:
        by_codec.setdefault(default_codec(suffix), []).append(suffix)
    for default, suffixes in by_codec.items():
        reason = crf_problem(default, crf) if crf is not None else None
        if reason:
            names = [name for suffix in suffixes for name in by_suffix[suffix]]
            problems.append(f"--crf {crf}: {_some(names)}: {'/'.join(suffixes)} files are "
                            f"encoded with {default} when --codec is not given, and {reason}; "
                            "give a smaller --crf, or a --codec")
    return problems


def _some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` names, and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _stream_codec(stream: Any) -> str:
    """The codec of an input stream, for messages (an attachment's file name; a data stream's
    ``timecode`` or handler name, e.g. GoPro's "GoPro MET"; the type where it has neither)."""
    if stream.type == "attachment":
        return getattr(stream, "name", None) or stream.type
    if stream.type == "data":
        return "timecode" if "timecode" in stream.metadata else \
            stream.metadata.get("handler_name") or stream.type
    context = getattr(stream, "codec_context", None)
    return (context.name if context is not None else None) or stream.type


def attachment_problem(name: str, mimetype: str, data: bytes) -> str | None:
    """Why an attachment is not copied: it is not a font (by mimetype or suffix, and by its
    first bytes), so it could hold a picture, whose faces would stay visible; None for a font."""
    kind = (mimetype or "").lower()
    if not (kind.startswith("font/") or kind in _FONT_MIMETYPES
            or Path(name or "").suffix.lower() in _FONT_SUFFIXES):
        return (f"only fonts are copied: this {mimetype or 'untyped'} file is not anonymised "
                f"(a picture in it would keep its faces)")
    if bytes(data[:4]) not in _FONT_SIGNATURES:
        return ("its data is not a font, whatever its name and type say: it is not anonymised "
                "(a picture in it would keep its faces)")
    return None


@dataclass
class _Withheld:
    """What the privacy defaults left out of one output, said in one line (:meth:`line`)."""

    audio: list[str] = field(default_factory=list)  # streams, as "stream #1 (audio, aac)"
    streams: list[str] = field(default_factory=list)  # subtitle and data streams
    tags: set[str] = field(default_factory=set)  # metadata tag names (lower case)

    def line(self) -> str | None:
        """The note naming all of it (and the options that keep it), None when nothing."""
        parts = []
        if self.audio:
            parts.append(f"{', '.join(self.audio)} (--keep-audio keeps "
                         f"{'it' if len(self.audio) == 1 else 'them'})")
        metadata = self.streams + ([f"tags {', '.join(sorted(self.tags))}"] if self.tags else [])
        if metadata:
            parts.append(f"{', '.join(metadata)} (--keep-metadata keeps them)")
        if not parts:
            return None
        return f"not copied, as it can identify people or places: {'; '.join(parts)}"


def _describe(stream: Any) -> str:
    """An input stream for messages: ``stream #1 (audio, aac)``."""
    return f"stream #{stream.index} ({stream.type}, {_stream_codec(stream)})"


def _set_tags(target: Any, values: dict[str, Any]) -> None:
    """Sets attributes this PyAV has (colour tags came in 12, frame tags later)."""
    for name, value in values.items():
        try:
            setattr(target, name, value)
        except (AttributeError, TypeError, ValueError):
            pass


class VideoWriter:
    """Encodes frames into ``path`` on a thread, remuxing ``reader``'s other streams.

    What is not carried over (a stream the container cannot hold, a second video stream, an
    attachment that is not a font, chapters...) is named, with the reason, in :attr:`dropped`;
    what ``keep_audio`` and ``keep_metadata`` would have kept, in one line in :attr:`withheld`.

    Args:
        path: output file; its suffix chooses the container.
        reader: the input (stream info, rotation, pass-through packets, metadata).
        codec: encoder name (default: :func:`default_codec` of the suffix).
        crf: constant rate factor (default: :data:`DEFAULT_CRF` of the codec, if it has one;
            refused for an encoder without one, see :func:`crf_problem`).
        name: the output as errors name it (default ``path``; a temporary file's final name).
        keep_audio: copy the audio streams (default: left out, voices are personal data).
        keep_metadata: copy the metadata tags of the container, streams and chapters, and the
            subtitle and data streams (GPS text and telemetry, timecode) (default: left out,
            but for each stream's language).
    """

    def __init__(self, path: str | Path, reader: VideoReader, codec: str | None = None,
                 crf: int | None = None, name: str | Path | None = None,
                 keep_audio: bool = False, keep_metadata: bool = False) -> None:
        av = av_module()
        self.path = Path(path)
        self.name = Path(name) if name is not None else self.path
        self.reader = reader
        self.keep_audio, self.keep_metadata = keep_audio, keep_metadata
        self.dropped: list[str] = []
        self._withheld = _Withheld()
        info = reader.info
        self.codec = codec or default_codec(self.path.suffix)
        try:
            self.container = av.open(str(self.path), "w")
        except Exception as exc:  # noqa: BLE001
            _raise_from(exc, self.name, "create the output", self.path)
        try:
            self._add_video_stream(av, info, crf)
            listed = getattr(reader.container, "chapters", None)  # PyAV 12 lists none
            self._chapters: list[dict[str, Any]] = listed() if listed else []
            self._add_other_streams()
            self._copy_chapters()
            self.container.metadata.update(self._kept_tags(reader.container.metadata))
            #: what the privacy defaults left out, in one line (None: nothing); a note, not
            #: a warning: it is what was asked for
            self.withheld: str | None = self._withheld.line()
        except Exception:
            self.container.close()
            raise
        self._frames: queue.Queue[Any] = queue.Queue(_QUEUE_FRAMES)
        self._error: BaseException | None = None
        self._muxed = 0  # bytes of the packets muxed (for _check_space)
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
        problem = crf_problem(self.codec, crf) if crf is not None else None
        if problem:
            raise VideoError(f"{self.name}: --crf {crf}: {problem}")
        try:
            stream = self.container.add_stream(self.codec, rate=info.rate or Fraction(25))
        except Exception as exc:  # noqa: BLE001
            _raise_from(exc, self.name, f"add a {self.codec} video stream", self.path)
        context = stream.codec_context
        stream.width, stream.height = info.width, info.height
        formats = [f.name for f in (context.codec.video_formats or [])]
        stream.pix_fmt = output_pixel_format(info.pix_fmt, info.width, info.height, formats,
                                             self.codec)
        time_base = encoder_time_base(info.time_base, self.codec)
        self._pts_scale = info.time_base / time_base
        stream.time_base = context.time_base = time_base
        context.options = self._encoder_options(crf)
        self._colour = output_colour(info.colour, info.pix_fmt, stream.pix_fmt, self.codec)
        _set_tags(context, self._colour)
        if info.sample_aspect_ratio:
            context.sample_aspect_ratio = info.sample_aspect_ratio
        if self.codec == "libx265" and self.container.format.name in _TIMECODE_FORMATS:
            context.codec_tag = "hvc1"  # Apple's players refuse hev1, FFmpeg's default
        if info.rotation:
            stream.set_display_rotation(info.rotation)
        self.stream = stream
        stream.metadata.update(self._kept_tags({k: v for k, v in info.metadata.items()
                                                if k.lower() not in ("encoder", "rotate")}))
        self._last_pts: int | None = None
        # AVI places its first frame at 0: a later start needs an empty frame there first
        self._lead_in = self.container.format.name == "avi"

    def _encoder_options(self, crf: int | None) -> dict[str, str]:
        options: dict[str, str] = {}
        crf = DEFAULT_CRF.get(self.codec) if crf is None else crf
        if crf is not None:
            options["crf"] = str(crf)
            if self.codec.startswith("libvpx"):
                options["b"] = "0"  # constant quality mode
        if self.codec == "libx265":
            options["x265-params"] = "log-level=error"  # else ~25 info lines a file
        if self.codec == "libsvtav1":
            # ~20 "Svt[info]" lines a file, which no encoder option silences: SVT-AV1 reads
            # SVT_LOG (1: errors only) when its first encoder in the process starts
            os.environ.setdefault("SVT_LOG", "1")
        if self.container.format.name == "avi":
            options["bf"] = "0"  # AVI stores no pts: B-frames would read back out of order
            if self.codec == "libx264":
                info = self.reader.info
                options["x264-params"] = avi_timing_params(info.width, info.height, info.rate)
        return options

    def _kept_tags(self, tags: Any) -> dict[str, str]:
        """The metadata ``tags`` to copy: all with ``keep_metadata``, else those playback needs
        (:data:`_PLAYBACK_TAGS`); the others are noted for the warning."""
        if self.keep_metadata:
            return dict(tags)
        names = {k.lower() for k in tags}
        self._withheld.tags.update(names.difference(_PLAYBACK_TAGS, _FORMAT_TAGS))
        return {k: v for k, v in tags.items() if k.lower() in _PLAYBACK_TAGS}

    def _add_other_streams(self) -> None:
        """Copies the input's other streams the output can hold; names the rest in
        :attr:`dropped`."""
        self._copies: dict[int, Any] = {}
        for source in self.reader.container.streams:
            if source.index != self.reader.stream.index:
                why = self._add_copy(source)
                if why:
                    self._drop(source, why)

    def _add_copy(self, source: Any) -> str | None:
        """Adds a copy of ``source``; why it is not copied, None when it is (or rewritten)."""
        suffix = self.path.suffix.lower()
        if source.type == "video" and is_attached_picture(source):
            return ("an attached picture (cover art) is not anonymised: copying it would keep "
                    "its faces visible")
        if source.type == "video":
            return ("only the first video stream is anonymised: copying this one would keep "
                    "its faces visible")
        if source.type == "attachment":
            return self._add_attachment(source)
        if source.type == "data" and source.frames and source.frames == len(self._chapters):
            return None  # QuickTime's chapter track (FFmpeg cannot copy it): see _copy_chapters
        if self._withhold(source):
            return None  # named in the one line of what the privacy defaults left out
        if source.type == "data" and "timecode" in source.metadata:
            return self._keep_timecode(source)
        if source.type not in ("audio", "subtitle", "data"):
            return f"{source.type} streams are not copied"
        if source.type == "data" and self.container.format.name not in _TIMECODE_FORMATS:
            return f"the {suffix} container cannot hold data streams"
        if source.type != "data" and _stream_codec(source) not in self.container.supported_codecs:
            return f"the {suffix} container cannot hold it"
        try:
            copy = self.container.add_stream_from_template(source)
        except Exception as exc:  # noqa: BLE001 (reported, the rest goes on)
            return str(exc)
        copy.metadata.update(self._kept_tags(source.metadata))
        self._copies[source.index] = copy
        return None

    def _withhold(self, source: Any) -> bool:
        """Notes an audio stream left out without ``keep_audio``, a subtitle or data stream
        without ``keep_metadata``; False when ``source`` is not one."""
        if source.type == "audio" and not self.keep_audio:
            self._withheld.audio.append(_describe(source))
        elif source.type in ("subtitle", "data") and not self.keep_metadata:
            self._withheld.streams.append(_describe(source))
        else:
            return False
        return True

    def _add_attachment(self, source: Any) -> str | None:
        data = getattr(source, "data", None)
        if self.container.format.name not in _ATTACHMENT_FORMATS:
            return f"the {self.path.suffix.lower()} container cannot hold attachments"
        if data is None or not hasattr(self.container, "add_attachment"):
            return "this PyAV cannot copy attachments (PyAV 15 or later can)"
        problem = attachment_problem(source.name, source.mimetype, bytes(data))
        if problem:
            return problem
        self.container.add_attachment(source.name, source.mimetype, data)
        return None

    def _keep_timecode(self, source: Any) -> str | None:
        """A timecode (tmcd) track is not copied (FFmpeg refuses its template): its
        ``timecode`` tag goes on the video stream, from which mov/mp4 write a new track."""
        self.stream.metadata.setdefault("timecode", source.metadata["timecode"])
        if self.container.format.name in _TIMECODE_FORMATS:
            return None
        return (f"the {self.path.suffix.lower()} container holds no timecode track; the "
                f"timecode {source.metadata['timecode']} is kept as a tag of the video stream")

    def _copy_chapters(self) -> None:
        chapters = self._chapters
        if not chapters:
            return
        if self.container.format.name not in _CHAPTER_FORMATS:
            why = f"the {self.path.suffix.lower()} container cannot hold them"
        elif not hasattr(self.container, "set_chapters"):
            why = "this PyAV cannot write them"
        else:
            self.container.set_chapters([{**chapter, "metadata": self._kept_tags(
                chapter.get("metadata") or {})} for chapter in chapters])
            return
        self._report(f"{_plural(len(chapters), 'chapter')} not copied: {why}")

    def _drop(self, source: Any, why: str) -> None:
        self._report(f"{_describe(source)} not copied: {why}")

    def _report(self, message: str) -> None:
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
        encoded = 0
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
                self._mux_video(self.stream.encode(self._frame(*item)))
                encoded += 1
                if encoded % _SPACE_CHECK_FRAMES == 0:
                    self._check_space()
            self._mux_video(self.stream.encode(None))
            self._mux_passthrough()
        except BaseException as exc:  # noqa: BLE001 (re-raised by write/close)
            self._error = exc
            while True:  # unblock a producer waiting on a full queue
                try:
                    self._frames.get_nowait()
                except queue.Empty:
                    break

    def _check_space(self) -> None:
        """Raises ENOSPC when the output's filesystem has no byte left, or fewer than the
        packets muxed but not yet in the file (held in the muxer's buffers: a Matroska cluster
        is written when it closes): a write has failed or will, which the muxer may report
        only when the file is closed. (What the file holds beyond the packets, its headers,
        only makes that estimate short.)"""
        free = free_bytes(self.path.parent)
        if free is None:
            return
        try:
            written = os.stat(self.path).st_size
        except OSError:
            written = 0
        if free == 0 or self._muxed - written > free:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def _mux_video(self, packets: Any) -> None:
        """Muxes encoded packets; in AVI, whose first frame is read at 0 whatever its time,
        an empty frame at 0 first when the video starts later (avienc fills later gaps)."""
        for packet in packets:
            if self._lead_in and packet.dts is not None and packet.dts > 0:
                blank = av_module().Packet(0)
                blank.stream, blank.pts, blank.dts = self.stream, 0, 0
                blank.time_base = self.stream.time_base
                self.container.mux(blank)
            self._lead_in = False
            self._muxed += packet.size
            self.container.mux(packet)

    def _frame(self, image: np.ndarray, pts: int) -> Any:
        """The encoder's frame: turned back to the stored orientation, converted to its
        pixel format with the input's matrix and range, on its time base."""
        av = av_module()
        if self.reader.turns:
            image = np.ascontiguousarray(np.rot90(image, -self.reader.turns))
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        if is_yuv(self.stream.pix_fmt):
            frame = convert(frame, self.stream.pix_fmt, self._colour, self.stream.pix_fmt, "dst")
            _set_tags(frame, {k: v for k, v in self._colour.items()
                              if k in ("colorspace", "color_range")})
        pts = int(round(pts * self._pts_scale))
        if self._last_pts is not None and pts <= self._last_pts:  # a coarser time base
            pts = self._last_pts + 1
        frame.pts = self._last_pts = pts
        frame.time_base = self.stream.codec_context.time_base
        return frame

    def _mux_passthrough(self) -> None:
        while not self._abort.is_set():  # aborted: the reader's packets may be freed soon
            try:
                packet = self.reader.passthrough.get_nowait()
            except queue.Empty:
                return
            target = self._copies.get(packet.stream.index)
            if target is not None:
                packet.stream = target
                self._muxed += packet.size
                self.container.mux(packet)

    def _error_as_video(self) -> BaseException:
        exc = self._error
        av = av_module()
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # (FFmpeg's or ours)
            return VideoError(f"{self.name}: cannot write the output: "
                              f"{_error_text(exc, self.path, self.name)}")
        if isinstance(exc, (av.FFmpegError, OSError, ValueError)):
            return VideoError(f"{self.name}: cannot encode with {self.codec} "
                              f"({self.stream.pix_fmt}, {self.stream.width}x{self.stream.height}): "
                              f"{_error_text(exc, self.path, self.name)}")
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
            self._close_quietly()  # (its trailer may fail too: a full disk)
            raise self._error_as_video()
        try:
            self.container.close()
        except Exception as exc:  # noqa: BLE001
            _raise_from(exc, self.name, "finish the output", self.path)

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
