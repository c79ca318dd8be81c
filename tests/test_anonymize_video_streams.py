"""The video reader/writer on inputs as cameras write them: timecode tracks, damaged packets,
truncation, colour tags and ranges, anamorphic pixels, extra tracks, attachments, chapters,
B-frames and timestamps in AVI, size changes, encoder quirks. Clips are tiny and made here with
PyAV. (What is left out as personal data: test_anonymize_video_privacy.py.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from tinyfaces_trt.anonymize import video  # noqa: E402
from tinyfaces_trt.anonymize.video import VideoError, VideoReader, VideoWriter  # noqa: E402
from tinyfaces_trt.anonymize.video_formats import (crf_problem, encoder_time_base,  # noqa: E402
                                                   output_pixel_format)

W, H = 64, 48
#: A TrueType font's first bytes (sfnt version 1.0), as an attachment's data.
FONT = b"\x00\x01\x00\x00" + b"\0font" * 20


def image(i: int, w: int = W, h: int = H) -> np.ndarray:
    """Frame ``i``: a grey level ramp across with a bright block moving down."""
    img = np.repeat(np.linspace(20, 220, w).astype(np.uint8)[None, :, None], h, 0)
    img = np.repeat(img, 3, 2)
    img[(2 * i) % (h - 8):(2 * i) % (h - 8) + 8, :8] = 240
    return img


def make(path: Path, n: int = 6, *, codec: str = "libx264", pix_fmt: str = "yuv420p",
         w: int = W, h: int = H, tb: Fraction | None = Fraction(1, 1000), rate=25,
         options: dict | None = None, tags: dict | None = None, sar: Fraction | None = None,
         metadata: dict | None = None, audio: bool = False, second_video: bool = False,
         attachment: bool = False, chapters: list | None = None, frames=None,
         pts: list[int] | None = None, muxer_options: dict | None = None) -> None:
    """A clip of ``n`` frames (``frames``: the RGB images, default :func:`image`; ``pts``:
    their timestamps, default one every 1/``rate`` s)."""
    out = av.open(str(path), "w", options=muxer_options or {})
    streams = []
    for k in range(2 if second_video else 1):
        v = out.add_stream(codec, rate=rate)
        v.width, v.height, v.pix_fmt = w, h, pix_fmt
        if tb is not None:
            v.time_base = v.codec_context.time_base = tb
        v.codec_context.options = options if options is not None else (
            {"crf": "0"} if codec == "libx264" else {})
        for key, value in (tags or {}).items():
            setattr(v.codec_context, key, value)
        if sar:
            v.codec_context.sample_aspect_ratio = sar
        v.metadata.update(metadata or {})
        streams.append(v)
    a = out.add_stream("aac", rate=48000) if audio else None
    if attachment:
        out.add_attachment("font.ttf", "application/x-truetype-font", FONT)
    if chapters:
        out.set_chapters(chapters)
    step = Fraction(1, rate) / (tb or Fraction(1, rate))
    for i in range(n):
        rgb = frames[i] if frames is not None else image(i, w, h)
        for v in streams:
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if tags:  # converted as tagged, as a camera does
                f = f.reformat(format=pix_fmt, dst_colorspace=tags.get("colorspace", 5) or 5,
                               dst_color_range="JPEG" if tags.get("color_range") == 2 else
                               "MPEG")
            f.pts = int(i * step) if pts is None else pts[i]
            f.time_base = v.codec_context.time_base or Fraction(1, rate)
            for p in v.encode(f):
                out.mux(p)
    for v in streams:
        for p in v.encode():
            out.mux(p)
    if a is not None:  # 0.2 s longer than the video (Matroska's duration includes it)
        seconds = n / rate if pts is None else float(pts[-1] * (tb or Fraction(1, rate))) + 1 / rate
        total = int(48000 * (seconds + 0.2))
        for t in range(0, total, 1024):
            k = min(1024, total - t)
            af = av.AudioFrame.from_ndarray(np.zeros((1, k), np.float32), format="fltp",
                                            layout="mono")
            af.sample_rate, af.pts = 48000, t
            for p in a.encode(af):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    out.close()


def through(src: Path, out: Path, **writer_args) -> tuple[VideoReader, VideoWriter, list]:
    """Copies ``src`` to ``out`` through the reader and writer, frames unchanged; returns
    them (closed) and the frames read."""
    with VideoReader(src) as reader:
        writer = VideoWriter(out, reader, **writer_args)
        try:
            frames = list(reader.frames())
            for frame in frames:
                writer.write(frame.image, frame.pts)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
    return reader, writer, frames


def first_rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        # converted as the stream is tagged (what a tag-aware player shows)
        return frame.reformat(format="rgb24", src_colorspace=_matrix(frame),
                              src_color_range="JPEG" if frame.color_range == 2 else "MPEG"
                              ).to_ndarray()


def _matrix(frame) -> int:
    return {1: 1, 9: 9}.get(frame.colorspace, 5)


def stream_tags(path: Path) -> dict:
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return {"pix_fmt": cc.pix_fmt, "profile": cc.profile, "colorspace": cc.colorspace,
                "color_primaries": cc.color_primaries, "color_trc": cc.color_trc,
                "color_range": cc.color_range}


# -- 2: timecode tracks, temporary names -------------------------------------------------

@pytest.mark.parametrize("suffix", [".mov", ".mp4"])
def test_a_timecode_track_is_written_anew_from_the_tag(tmp_path, suffix):
    """Copying the tmcd data stream failed in the trailer ("returned 22")."""
    src = tmp_path / f"tc{suffix}"
    make(src, n=4, tb=None, metadata={"timecode": "10:00:00:00"})
    with av.open(str(src)) as c:
        assert [s.type for s in c.streams] == ["video", "data"]  # the muxer wrote a tmcd
    _, writer, _ = through(src, tmp_path / f"out{suffix}", keep_metadata=True)
    assert writer.dropped == []
    with av.open(str(tmp_path / f"out{suffix}")) as c:
        assert [s.type for s in c.streams] == ["video", "data"]
        assert [s.metadata.get("timecode") for s in c.streams] == ["10:00:00:00"] * 2
        assert sum(1 for _ in c.decode(video=0)) == 4
    # a time of day: metadata, left out by default and said so
    _, writer, _ = through(src, tmp_path / f"bare{suffix}")
    assert writer.dropped == []
    assert writer.withheld.startswith("not copied, as it can identify people or places: "
                                      "stream #1 (data, timecode), tags ")
    with av.open(str(tmp_path / f"bare{suffix}")) as c:
        assert [s.type for s in c.streams] == ["video"]
        assert "timecode" not in c.streams.video[0].metadata


def test_a_timecode_track_in_mkv_is_named_and_kept_as_a_tag(tmp_path):
    src = tmp_path / "tc.mov"
    make(src, n=3, tb=None, metadata={"timecode": "01:02:03:04"})
    _, writer, _ = through(src, tmp_path / "out.mkv", keep_metadata=True)
    assert writer.dropped == ["stream #1 (data, timecode) not copied: the .mkv container holds no "
                              "timecode track; the timecode 01:02:03:04 is kept as a tag of "
                              "the video stream"]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.video[0].metadata.get("TIMECODE") == "01:02:03:04"


def test_errors_name_the_output_not_its_temporary_file(tmp_path):
    temp, final = tmp_path / ".tf-tmp-1-x-out.mov", tmp_path / "out.mov"
    exc = OSError(22, "Invalid argument", str(temp))
    with pytest.raises(VideoError) as info:
        video._raise_from(exc, final, "finish the output", temp)
    assert str(info.value) == f"{final}: cannot finish the output: [Errno 22] Invalid argument: " \
                              f"'{final}'"


def test_a_disk_full_at_the_end_gives_the_writers_error_not_the_trailers(tmp_path):
    """The disk filled as the encoder's last packets were written (a Matroska cluster is
    written whole): the trailer then failed too, and finish() raised its bare OSError naming
    the temporary file instead of the write's error naming the output."""
    src, temp, final = tmp_path / "clip.mkv", tmp_path / ".tmp-out.mkv", tmp_path / "out.mkv"
    make(src, n=6)
    full = OSError(28, "No space left on device", str(temp))

    class FullDisk:
        """The output container, its writes failing from now on (the trailer's too)."""

        def __init__(self, container) -> None:
            self.container = container

        def __getattr__(self, name):
            return getattr(self.container, name)

        def mux(self, packet) -> None:
            raise full

        def close(self) -> None:
            self.container.close()
            raise full

    with VideoReader(src) as reader:
        writer = VideoWriter(temp, reader, name=final)
        for frame in reader.frames():  # (x264 holds them all: its first packet comes later)
            writer.write(frame.image, frame.pts)
        writer.container = FullDisk(writer.container)
        with pytest.raises(VideoError) as info:
            writer.finish()
    assert str(info.value) == f"{final}: cannot write the output: [Errno 28] No space left " \
                              f"on device: '{final}'"


# -- 5, 6: damaged and truncated inputs ------------------------------------------------------

def _damage(src: Path, dst: Path, packet: int) -> None:
    """Overwrites the payload of the video packet ``packet`` with noise."""
    with av.open(str(src)) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(video=0) if p.size][packet]
    data = bytearray(src.read_bytes())
    data[pos:pos + size] = np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def test_an_undecodable_packet_is_skipped_and_reported(tmp_path):
    good, bad = tmp_path / "cctv.avi", tmp_path / "bad.avi"
    make(good, n=10, codec="mjpeg", pix_fmt="yuvj420p", tb=None)
    _damage(good, bad, 5)
    with av.open(str(bad)) as c:  # FFmpeg's decoder refuses that packet
        with pytest.raises(av.error.InvalidDataError):
            for p in c.demux(video=0):
                p.decode()
    reader, _, frames = through(bad, tmp_path / "out.mp4")
    assert len(frames) == 9 and [f.pts for f in frames] == [0, 1, 2, 3, 4, 6, 7, 8, 9]
    assert reader.problems == ["skipped 1 undecodable packet (frames near 0:00:00.2 lost)"]
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 9


def test_a_truncated_file_is_reported_and_a_whole_one_not(tmp_path):
    whole, cut = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    make(whole, n=40, audio=True, options={"crf": "30"})
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    reader, _, frames = through(whole, tmp_path / "whole_out.mkv")
    # the frame total from the video's own duration, not the container's (audio: 0.2 s more)
    assert len(frames) == 40 and reader.info.frames == 40 and reader.problems == []
    reader, _, frames = through(cut, tmp_path / "cut_out.mkv")
    assert 0 < len(frames) < 38
    end = (frames[-1].pts + 40) / 1000  # (1/1000 time base, 25 fps)
    assert reader.problems == [f"the frames decoded end at 0:00:{end:04.1f} where the video "
                               f"stream lasts 0:00:01.6: the file may be truncated or damaged"]


def test_a_whole_variable_frame_rate_mkv_is_not_reported(tmp_path):
    """30 frames at 30 fps, then one a second: a frame count from the duration (304) made
    this complete file 'truncated'."""
    path = tmp_path / "screen.mkv"
    pts = [int(i * 1000 / 30) for i in range(30)] + [1000 + 1000 * k for k in range(10)]
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=30)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.time_base = v.codec_context.time_base = Fraction(1, 1000)
        v.codec_context.options = {"bf": "0"}
        for i, p in enumerate(pts):
            f = av.VideoFrame.from_ndarray(image(i), format="rgb24")
            f.pts, f.time_base = p, Fraction(1, 1000)
            out.mux(v.encode(f))
        out.mux(v.encode())
    reader, _, frames = through(path, tmp_path / "out.mkv")
    assert [f.pts for f in frames] == pts and reader.problems == []


def _video_packets(path: Path) -> list[tuple[int, int]]:
    """(file position, pts) of each video packet, in file order."""
    with av.open(str(path)) as c:
        return [(p.pos, p.pts) for p in c.demux(video=0) if p.size]


def test_a_file_a_frame_or_two_short_is_reported_and_uncounted_frames_are_not(tmp_path):
    """A 2% (at least 2 frames) tolerance let an MP4 cut by 1% (1470 of 1500 frames) and a
    Matroska file short by 0.5 s pass as whole; frames an edit list leaves out (MP4) and
    AVI's empty frames, which its count holds, are no loss."""
    whole = tmp_path / "whole.mp4"  # its index (moov) first: a cut keeps it
    make(whole, n=40, options={"crf": "30", "bf": "0"}, muxer_options={"movflags": "+faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[:_video_packets(whole)[38][0]])  # the last 2 frames
    reader, _, frames = through(cut, tmp_path / "cut_out.mp4")
    assert len(frames) == 38 and reader.problems == [
        "decoded 38 frames where the container announces 40: the file may be truncated or "
        "damaged"]
    whole_mkv, cut_mkv = tmp_path / "whole.mkv", tmp_path / "cut.mkv"
    make(whole_mkv, n=50, options={"crf": "30", "bf": "0"})
    cut_mkv.write_bytes(whole_mkv.read_bytes()[:_video_packets(whole_mkv)[45][0]])  # 0.2 s
    reader, _, frames = through(cut_mkv, tmp_path / "cut_out.mkv")
    assert len(frames) == 45 and reader.problems == [
        "the frames decoded end at 0:00:01.8 where the video stream lasts 0:00:02.0: the file "
        "may be truncated or damaged"]
    # whole: 15 of the 20 samples shown (the first 5 before the edit list's start) ...
    trimmed = tmp_path / "trimmed.mp4"
    make(trimmed, n=20, tb=Fraction(1, 25), options={"bf": "0"}, pts=list(range(-5, 15)))
    # ... and an AVI whose index counts 4 empty frames (variable frame rate) among 24
    gappy = tmp_path / "gappy.avi"
    make(gappy, n=20, codec="mjpeg", pix_fmt="yuvj420p", tb=Fraction(1, 25),
         pts=[0, 1, 2, 5, 6, 7] + list(range(10, 24)))
    for path, shown, announced in ((whole, 40, 40), (whole_mkv, 50, 50), (trimmed, 15, 20),
                                   (gappy, 20, 24)):
        reader, _, frames = through(path, tmp_path / f"out_{path.name}")
        assert (len(frames), reader.problems) == (shown, []), path.name
        assert (reader.info.frames, reader.info.frames_decoded) == (announced, shown)


def test_frames_lost_mid_file_are_reported_and_long_steps_over_whole_data_not(tmp_path):
    """A damaged Matroska cluster: the demuxer skips to the next one and the timestamps jump
    by its second (60 s clip, 4000 bytes damaged: 11.4 s gone, reported as whole). A
    variable frame rate's long steps, whose bytes all give packets, are not reported."""
    whole, damaged = tmp_path / "whole.mkv", tmp_path / "damaged.mkv"
    make(whole, n=100, options={"crf": "30", "g": "25", "bf": "0"}, audio=True,
         muxer_options={"cluster_time_limit": "1000"})  # a cluster (and a key frame) a second
    data = bytearray(whole.read_bytes())
    clusters = [m.start() for m in re.finditer(re.escape(b"\x1f\x43\xb6\x75"), data)]
    data[clusters[2]:clusters[2] + 4] = bytes(4)  # an ID gone: the cluster of 2.0-3.0 s is lost
    damaged.write_bytes(bytes(data))
    reader, _, frames = through(damaged, tmp_path / "out.mkv")
    pts = [f.pts for f in frames]
    assert len(frames) == 75 and pts[:50] == list(range(0, 2000, 40)) and pts[50] == 3000
    # from the end of the last packet (audio or video) before that cluster to the next packet
    with av.open(str(whole)) as c:
        spans = [(p.pos, p.pos + p.size) for p in c.demux() if p.size]
    unread = min(a for a, _ in spans if a > clusters[3]) - max(b for _, b in spans
                                                              if b < clusters[2])
    assert reader.problems == [
        f"frames missing from 0:00:02.0 to 0:00:03.0 (about 25 frames, 1.0 s; {unread} bytes "
        f"of the file there could not be read): the file may be damaged"]
    # 30 fps, then a frame a second (a screen recording): whole, with audio, in each container
    pts = [int(i * 1000 / 30) for i in range(30)] + [1000 + 1000 * k for k in range(10)]
    # (and fragmented MP4, whose moof boxes give no packet: it was reported as damaged)
    fragmented = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
    for name, codec, muxer in (("vfr.mp4", "libx264", None), ("vfr.mkv", "libx264", None),
                               ("vfr.webm", "libvpx-vp9", None),
                               ("frag.mp4", "libx264", fragmented),
                               ("frag_every.mp4", "libx264",
                                {"movflags": "frag_every_frame+empty_moov"})):
        make(tmp_path / name, n=40, rate=30, pts=pts, codec=codec, audio=codec == "libx264",
             options={"bf": "0", "g": "5"} if codec == "libx264" else {}, muxer_options=muxer)
        reader, _, frames = through(tmp_path / name, tmp_path / f"out_{name}")
        times = [f.time for f in frames]  # (mp4 keeps them on its own time base)
        if muxer is None:  # (FFmpeg's fragmented mp4 without a moov edit list shifts them)
            assert times == pytest.approx([t / 1000 for t in pts], abs=1e-3), name
        assert reader.problems == [], name


def _damaged_index(src: Path, dst: Path, box: bytes, field: int) -> None:
    """``src`` with the 32-bit field at byte ``field`` of its first ``box`` box (after the
    size and type) set to 0xfffffff0: an entry count asking for gigabytes."""
    data = bytearray(src.read_bytes())
    at = data.index(box) + 4 + field
    data[at:at + 4] = b"\xff\xff\xff\xf0"
    dst.write_bytes(bytes(data))


def test_a_damaged_index_is_said_to_look_damaged(tmp_path):
    """FFmpeg's "Cannot allocate memory" for a damaged moov box read as a system problem."""
    src = tmp_path / "clip.mp4"
    make(src, n=4)
    for box, field, error in ((b"stts", 4, "[Errno 12] Cannot allocate memory"),
                              (b"stsz", 8, "[Errno 1094995529] Invalid data found when "
                                           "processing input")):
        bad = tmp_path / f"bad_{box.decode()}.mp4"
        _damaged_index(src, bad, box, field)  # (version and flags first, then the count)
        with pytest.raises(VideoError) as info:
            VideoReader(bad)
        assert str(info.value) == (f"{bad}: cannot open the video: {error}: '{bad}' (the file "
                                   f"looks damaged, or is not a video)")
    with pytest.raises(VideoError) as info:  # the system's errors say nothing more
        VideoReader(tmp_path / "missing.mp4")
    assert str(info.value).endswith("No such file or directory: "
                                    f"'{tmp_path / 'missing.mp4'}'")


# -- 7, 12: colour ----------------------------------------------------------------------------

def _patches(w: int = W, h: int = H) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for k, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 190, 140)]):
        img[:, k * w // 4:(k + 1) * w // 4] = colour
    return img


def test_bt709_video_keeps_its_colours_and_tags(tmp_path):
    """The output was converted with BT.601 and left untagged: green (30, 200, 40) came out
    as (17, 172, 34) on a player."""
    src = tmp_path / "hd.mp4"
    tags = {"colorspace": 1, "color_primaries": 1, "color_trc": 1, "color_range": 1}
    make(src, n=2, tags=tags, frames=[_patches()] * 2)
    reader, _, frames = through(src, tmp_path / "out.mp4", crf=0)
    assert reader.info.colour == tags
    green = (slice(10, 40), slice(20, 28))
    assert np.abs(frames[0].image[green].astype(int) - (30, 200, 40)).max() <= 3
    assert stream_tags(tmp_path / "out.mp4") | {"profile": None} == {
        "pix_fmt": "yuv420p", "profile": None, **tags}
    shown = first_rgb(tmp_path / "out.mp4")
    assert np.abs(shown.astype(int) - _patches()).reshape(-1, 3)[:, 1].max() <= 4
    assert np.abs(shown[green].astype(int) - (30, 200, 40)).max() <= 3


def test_full_range_mjpeg_becomes_full_range_4_2_0_high(tmp_path):
    """yuvj422p became "High 4:2:2" (no browser plays it); the range must stay full."""
    src = tmp_path / "cctv.avi"
    make(src, n=2, codec="mjpeg", pix_fmt="yuvj422p", tb=None,
         options={"q:v": "1", "qmin": "1", "qmax": "1"})
    reader, _, frames = through(src, tmp_path / "out.mp4", crf=1)  # (0: lossless: High 4:4:4)
    tags = stream_tags(tmp_path / "out.mp4")
    assert (tags["pix_fmt"], tags["profile"], tags["color_range"]) == ("yuvj420p", "High", 2)
    back = first_rgb(tmp_path / "out.mp4").astype(int)
    assert np.abs(back - frames[0].image.astype(int))[8:, 10:].max() <= 3
    assert back[20, 0, 0] <= 24 and back[20, -1, 0] >= 216  # the ramp's ends: not squeezed


@pytest.mark.parametrize("name, codec", [("out.avi", "mpeg4"), ("out.mkv", "libvpx")])
def test_an_encoder_without_colour_tags_gets_frames_as_untagged_video_is_read(tmp_path, name,
                                                                             codec):
    """mpeg4 and VP8 streams carry no range or matrix: converting to the input's full range
    there crushed blacks and clipped whites (mean error 9.4 against 1.7) on every player."""
    src = tmp_path / "cam.avi"
    make(src, n=2, codec="mjpeg", pix_fmt="yuvj420p", tb=None, frames=[_patches()] * 2,
         options={"q:v": "1", "qmin": "1", "qmax": "1"})
    through(src, tmp_path / name, codec=codec)
    tags = stream_tags(tmp_path / name)
    assert tags["pix_fmt"] == "yuv420p" and tags.get("color_range") != 2
    shown = first_rgb(tmp_path / name).astype(int)
    assert np.abs(shown - _patches().astype(int))[:, 4:-4].mean() <= 3


def test_full_range_yuv420p_is_read_and_written_as_full_range(tmp_path):
    """yuv420p tagged full range (not a ``yuvj`` format): converted as limited range, its
    darks and lights were clipped."""
    src = tmp_path / "full.mkv"
    make(src, n=2, codec="ffv1", tags={"color_range": 2})
    reader, _, frames = through(src, tmp_path / "out.mp4", crf=1)
    assert (reader.info.pix_fmt, reader.info.colour) == ("yuv420p", {"color_range": 2})
    assert np.abs(frames[0].image.astype(int) - image(0).astype(int))[8:].max() <= 2
    assert stream_tags(tmp_path / "out.mp4")["color_range"] == 2
    back = first_rgb(tmp_path / "out.mp4").astype(int)
    assert np.abs(back - image(0).astype(int))[8:, 10:].max() <= 5  # (swscale's rounding)
    assert back[20, 0, 1] <= 22 and back[20, -1, 1] >= 218  # as limited range: 5 and 237


def test_ten_bit_hlg_becomes_8_bit_high_with_its_tags(tmp_path):
    src = tmp_path / "hlg.mov"
    tags = {"colorspace": 9, "color_primaries": 9, "color_trc": 18, "color_range": 1}
    make(src, n=2, pix_fmt="yuv420p10le", tags=tags)
    through(src, tmp_path / "out.mov")
    assert stream_tags(tmp_path / "out.mov") == {"pix_fmt": "yuv420p", "profile": "High", **tags}


def test_output_pixel_formats_are_8_bit_4_2_0():
    x264 = ["yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuv420p10le", "gray"]
    assert output_pixel_format("yuv420p10le", 96, 64, x264) == "yuv420p"
    assert output_pixel_format("yuvj422p", 96, 64, x264) == "yuvj420p"
    assert output_pixel_format("yuv444p", 96, 64, x264) == "yuv420p"
    assert output_pixel_format("gray", 96, 64, x264) == "yuv420p"
    assert output_pixel_format("yuv420p10le", 97, 64, x264) == "yuv444p"  # odd: 8-bit 4:4:4
    # odd sizes keep only 8-bit YUV that fits: 10-bit grey, 10-bit 4:2:2 (nv20le, which did
    # not even fit the odd width) and 8-bit grey (colour lost) become 8-bit 4:4:4
    odd = x264 + ["gray10le", "nv20le"]
    assert [output_pixel_format(f, 97, 63, odd) for f in ("gray10le", "nv20le", "gray")] \
        == ["yuv444p"] * 3
    assert output_pixel_format("yuv422p", 96, 63, x264) == "yuv422p"
    mjpeg = ["yuvj420p", "yuvj422p", "yuvj444p", "yuv420p"]
    assert output_pixel_format("yuv420p", 96, 64, mjpeg, "mjpeg") == "yuvj420p"
    assert output_pixel_format("rgb24", 9, 9, ["rgb24", "pal8"], "png") == "rgb24"


# -- 3, 14: extra tracks, attachments, chapters -------------------------------------------

def test_a_second_video_track_is_named_and_a_font_attachment_copied(tmp_path):
    src = tmp_path / "dual.mkv"
    make(src, n=3, second_video=True, attachment=True)
    _, writer, _ = through(src, tmp_path / "out.mkv")
    assert writer.dropped == ["stream #1 (video, h264) not copied: only the first video stream "
                              "is anonymised: copying this one would keep its faces visible"]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [s.type for s in c.streams] == ["video", "attachment"]
        assert (c.streams[1].name, bytes(c.streams[1].data)) == ("font.ttf", FONT)
    _, writer, _ = through(src, tmp_path / "out.mp4")
    assert writer.dropped[1:] == ["stream #2 (attachment, font.ttf) not copied: the .mp4 container "
                                  "cannot hold attachments"]


def test_chapters_are_copied_or_named(tmp_path):
    src = tmp_path / "chap.mkv"
    chapters = [{"id": 1, "start": 0, "end": 80, "time_base": Fraction(1, 1000),
                 "metadata": {"title": "Incident"}},
                {"id": 2, "start": 80, "end": 160, "time_base": Fraction(1, 1000),
                 "metadata": {"title": "After"}}]
    make(src, n=4, chapters=chapters)
    for suffix in (".mkv", ".mp4"):
        _, writer, _ = through(src, tmp_path / f"out{suffix}", keep_metadata=True)
        assert writer.dropped == []
        with av.open(str(tmp_path / f"out{suffix}")) as c:
            assert [ch["metadata"]["title"] for ch in c.chapters()] == ["Incident", "After"]
    # an mp4's chapter track is not copied as a data stream (FFmpeg cannot): rewritten
    _, writer, _ = through(tmp_path / "out.mp4", tmp_path / "again.mp4", keep_metadata=True)
    assert writer.dropped == []
    with av.open(str(tmp_path / "again.mp4")) as c:
        assert len(c.chapters()) == 2
    _, writer, _ = through(src, tmp_path / "out.avi", keep_metadata=True)
    assert writer.dropped == ["2 chapters not copied: the .avi container cannot hold them"]
    # by default the chapters keep their times, not their titles (metadata)
    _, writer, _ = through(src, tmp_path / "bare.mkv")
    with av.open(str(tmp_path / "bare.mkv")) as c:
        assert [(ch["start"] * ch["time_base"], ch["metadata"].get("title"))
                for ch in c.chapters()] == [(0, None), (Fraction(80, 1000), None)]
    assert "title" in writer.withheld.split("tags ")[1].split(" (--keep-metadata")[0]


# -- 8: anamorphic pixels -------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_the_sample_aspect_ratio_is_kept(tmp_path, suffix):
    src = tmp_path / f"pal{suffix}"
    make(src, n=2, w=88, h=72, sar=Fraction(12, 11))
    through(src, tmp_path / f"out{suffix}")
    with av.open(str(tmp_path / f"out{suffix}")) as c:
        stream = c.streams.video[0]
        assert (stream.sample_aspect_ratio, stream.display_aspect_ratio) == (
            Fraction(12, 11), Fraction(4, 3))


# -- 13: encoders ----------------------------------------------------------------------------

def test_mpeg4_gets_a_time_base_it_accepts_and_refuses_crf(tmp_path):
    src = tmp_path / "cam.mp4"
    make(src, n=4, tb=Fraction(1, 90000), rate=30)
    assert encoder_time_base(Fraction(1, 90000), "mpeg4") == Fraction(1, 45000)
    assert encoder_time_base(Fraction(1, 90000), "libx264") == Fraction(1, 90000)
    assert encoder_time_base(Fraction(1, 1000), "mpeg4") == Fraction(1, 1000)
    # no divisor of 2 x 65537 fits but 2: not half-second ticks, 1/65535 with pts rounded
    assert encoder_time_base(Fraction(1, 131074), "mpeg4") == Fraction(1, 65535)
    assert encoder_time_base(Fraction(1, 10_000_019), "mpeg4") == Fraction(1, 65535)  # prime
    _, writer, frames = through(src, tmp_path / "out.mp4", codec="mpeg4")
    with av.open(str(tmp_path / "out.mp4")) as c:
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert times == pytest.approx([i / 30 for i in range(4)], abs=1e-4)
    with pytest.raises(VideoError) as info:
        through(src, tmp_path / "q.mp4", codec="mpeg4", crf=20)
    assert str(info.value) == f"{tmp_path / 'q.mp4'}: --crf 20: {crf_problem('mpeg4')}"
    assert crf_problem("mpeg4").startswith("encoder 'mpeg4' has no constant rate factor")
    assert crf_problem("libx264") is None and crf_problem("libx264", 51) is None
    assert crf_problem("libvpx-vp9", 63) is None
    with pytest.raises(VideoError) as info:  # the default encoder of .mp4: x264, 0 to 51
        through(src, tmp_path / "r.mp4", crf=52)
    assert str(info.value) == (f"{tmp_path / 'r.mp4'}: --crf 52: encoder 'libx264' takes a "
                               "constant rate factor of 0 to 51")


def test_libx265_in_mov_is_tagged_hvc1_and_quiet(tmp_path, capfd):
    src = tmp_path / "clip.mov"
    make(src, n=6)  # (x265 clips of 1 or 2 frames fail in the mov muxer now and then: pts < dts)
    capfd.readouterr()
    through(src, tmp_path / "out.mov", codec="libx265")
    assert "x265 [info]" not in capfd.readouterr().err
    with av.open(str(tmp_path / "out.mov")) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"


_SVT_SCRIPT = """
import sys
from tinyfaces_trt.anonymize.video import VideoReader, VideoWriter
with VideoReader(sys.argv[1]) as reader:
    writer = VideoWriter(sys.argv[2], reader, codec="libsvtav1")
    for frame in reader.frames():
        writer.write(frame.image, frame.pts)
    writer.finish()
"""


def test_libsvtav1_is_quiet(tmp_path):
    """SVT-AV1 printed ~20 "Svt[info]" lines a file, which no encoder option silences; it reads
    SVT_LOG when the process's first encoder starts: run in a process of its own."""
    if video.encoder_problem("libsvtav1"):
        pytest.skip("this PyAV's FFmpeg has no libsvtav1")
    src, out = tmp_path / "clip.mkv", tmp_path / "out.mkv"
    make(src, n=4)
    env = {k: v for k, v in os.environ.items() if k != "SVT_LOG"}
    run = subprocess.run([sys.executable, "-c", _SVT_SCRIPT, str(src), str(out)], env=env,
                         cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "Svt[" not in run.stderr
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name in ("libdav1d", "av1", "libaom-av1")
        assert sum(1 for _ in c.decode(video=0)) == 4


# -- 9, 10: timing and sizes --------------------------------------------------------------

@pytest.mark.parametrize("depth", [0, 2, 4])
def test_a_frame_without_a_timestamp_shifts_no_other(depth):
    """The frame gets the previous pts plus a step; at a reorder depth it took its
    successor's pts, and every later frame the next one's."""
    from types import SimpleNamespace

    order = video._Reorder(step=1)
    frames = [SimpleNamespace(n=i, pts=p) for i, p in enumerate([0, 1, None, 3, 4, 5, 6, 7])]
    got = [(f.n, pts) for frame in frames for f, pts in order.push(frame, depth)]
    got += [(f.n, pts) for f, pts in order.drain()]
    assert got == [(i, i) for i in range(8)]


def test_b_frames_in_avi_keep_their_timeline(tmp_path):
    """AVI stores no pts: FFmpeg hands B-frames' timestamps over permuted, and the repair
    (pts <= last: last + step) shifted the timeline (the last frame a tick late)."""
    src = tmp_path / "dvr.avi"
    make(src, n=30, w=32, h=32, tb=Fraction(1, 25), options={"crf": "20", "bf": "3"},
         frames=[np.random.default_rng(i).integers(0, 255, (32, 32, 3), np.uint8)
                 for i in range(30)])
    with av.open(str(src)) as c:
        raw = [f.pts for f in c.decode(video=0)]
    assert raw != sorted(raw)  # the input has permuted pts
    _, writer, frames = through(src, tmp_path / "out.avi")
    assert [f.pts for f in frames] == sorted(raw)
    with av.open(str(tmp_path / "out.avi")) as c:
        back = [f.pts for f in c.decode(video=0)]
    # its own AVI reads back with the input's timestamps (FFmpeg reads this input's from 1:
    # the output starts with an empty frame, as AVI puts its first frame at 0)
    assert back == sorted(raw) == list(range(1, 31))


def _dvr_clip(path: Path, n: int = 20, flash: int = 10) -> None:
    """A DVR-style AVI: MJPEG at 25 fps, a white frame at ``flash``; 16-bit PCM, silent but a
    click at the flash's time (0.4 s)."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("mjpeg", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuvj420p"
        a = out.add_stream("pcm_s16le", rate=8000, layout="mono")
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(
                np.full((H, W, 3), 255 if i == flash else 40, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(v.encode(frame))
        out.mux(v.encode())
        samples = np.zeros((1, 8000 * n // 25), np.int16)
        samples[0, 8000 * flash // 25] = 30000
        sound = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        sound.sample_rate, sound.pts = 8000, 0
        out.mux(a.encode(sound))
        out.mux(a.encode())


def _flash_and_click(path: Path) -> tuple[list[int], float, float]:
    """The video's pts, the flash frame's time and the audio click's time (seconds)."""
    with av.open(str(path)) as c:
        frames = [(f.pts, f.time, f.to_ndarray(format="gray").mean()) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        sound = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
        rate = c.streams.audio[0].rate
    flash = next(time for _, time, level in frames if level > 200)
    return [pts for pts, _, _ in frames], flash, int(np.argmax(np.abs(sound))) / rate


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_avi_output_keeps_the_input_timestamps_and_sync(tmp_path, codec):
    """libx264 in AVI read back one frame late (FFmpeg reads an H.264 frame in AVI at the next
    packet's dts unless the stream carries HRD timing): the flash at 0.44 s, its click at 0.40."""
    src = tmp_path / "dvr.avi"
    _dvr_clip(src)
    pts, flash, click = _flash_and_click(src)
    assert pts == list(range(20)) and flash == click == 0.4
    _, writer, _ = through(src, tmp_path / "out.avi", codec=codec, keep_audio=True)
    assert writer.dropped == []
    assert _flash_and_click(tmp_path / "out.avi") == (pts, 0.4, 0.4)


def test_a_frame_size_change_fails_clearly(tmp_path):
    src = tmp_path / "res.avi"
    out = av.open(str(src), "w")
    v = out.add_stream("mjpeg", rate=25)
    v.width, v.height, v.pix_fmt = 64, 48, "yuvj420p"
    other = av.CodecContext.create("mjpeg", "w")
    other.width, other.height, other.pix_fmt = 96, 48, "yuvj420p"
    other.time_base = Fraction(1, 25)
    for i in range(6):
        w = 64 if i < 3 else 96
        frame = av.VideoFrame.from_ndarray(image(i, w, 48), format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, 25)
        packets = v.encode(frame) if i < 3 else other.encode(frame.reformat(format="yuvj420p"))
        for p in packets:
            p.stream, p.pts, p.dts, p.time_base = v, i, i, Fraction(1, 25)
            out.mux(p)
    out.close()
    with pytest.raises(VideoError) as info:
        through(src, tmp_path / "out.mp4")
    assert str(info.value) == (f"{src}: the frame size changed at frame 3 from 64x48 to 96x48; "
                               f"such a file cannot be anonymised as one video (cut it where "
                               f"the size changes)")


# -- attached pictures (cover art) are not the video (privacy review, finding 9) -------------

def _cover_jpeg() -> bytes:
    """A 40 x 40 JPEG cover (a red "face" on grey)."""
    import io

    from PIL import Image

    pixels = np.full((40, 40, 3), 90, np.uint8)
    pixels[10:30, 10:30] = (255, 0, 0)
    data = io.BytesIO()
    Image.fromarray(pixels).save(data, "JPEG")
    return data.getvalue()


def _with_cover(path: Path, *, video: bool = True) -> None:
    """A clip of 6 frames (``video``) or 0.3 s of silence (not ``video``) with cover art as
    FFmpeg stores it: an MP4's attached picture (``covr``), a Matroska image attachment. Both
    are read back as a one-frame mjpeg "video stream" with disposition attached_pic, after the
    file's tracks."""
    if video:
        make(path, n=6)
        stored = av.open(str(path))
        out = av.open(str(path.with_name("tmp" + path.suffix)), "w")
        copies = {s.index: out.add_stream_from_template(s) for s in stored.streams}
    else:
        stored, out = None, av.open(str(path.with_name("tmp" + path.suffix)), "w")
        copies = {}
        sound = out.add_stream("aac", rate=48000)
    if path.suffix == ".mkv":
        out.add_attachment("cover.jpg", "image/jpeg", _cover_jpeg())
        cover = None
    else:
        cover = out.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 40, 40, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
    if cover is not None:
        picture = av.VideoFrame.from_ndarray(np.full((40, 40, 3), 90, np.uint8), format="rgb24")
        picture = picture.reformat(format="yuvj420p")
        picture.pts = 0
        for p in [*cover.encode(picture), *cover.encode()]:
            p.pts = p.dts = 0
            out.mux(p)
    if stored is not None:
        for packet in stored.demux():
            if packet.dts is not None:
                packet.stream = copies[packet.stream.index]
                out.mux(packet)
        stored.close()
    else:
        for t in range(0, 14400, 1024):
            silence = av.AudioFrame.from_ndarray(np.zeros((1, min(1024, 14400 - t)), np.float32),
                                                 format="fltp", layout="mono")
            silence.sample_rate, silence.pts = 48000, t
            for p in sound.encode(silence):
                out.mux(p)
        for p in sound.encode():
            out.mux(p)
    out.close()
    path.with_name("tmp" + path.suffix).replace(path)
    with av.open(str(path)) as c:  # as the review's file: a one-frame picture among the tracks
        pictures = [s for s in c.streams if s.type == "video" and
                    s.disposition & av.stream.Disposition.attached_pic]
        assert len(pictures) == 1 and pictures[0].codec_context.name == "mjpeg"
        assert len(c.streams.video) == (2 if video else 1)


COVER_DROPPED = ("not copied: an attached picture (cover art) is not anonymised: copying it "
                 "would keep its faces visible")


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_cover_art_is_neither_taken_for_the_video_nor_copied(tmp_path, suffix):
    """The video is the track, not the cover; the cover (it may show a face) is named as left
    out, never copied, whatever --keep-audio/--keep-metadata say."""
    src = tmp_path / f"cover{suffix}"
    _with_cover(src)
    reader, writer, frames = through(src, tmp_path / f"out{suffix}", keep_audio=True,
                                     keep_metadata=True)
    assert (reader.info.codec, reader.info.width, len(frames)) == ("h264", W, 6)
    assert reader.problems == []
    assert writer.dropped == [f"stream #1 (video, mjpeg) {COVER_DROPPED}"]
    with av.open(str(tmp_path / f"out{suffix}")) as c:
        assert [s.type for s in c.streams] == ["video"]  # no picture, no attachment
        assert sum(1 for _ in c.decode(video=0)) == 6


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_file_whose_only_picture_is_cover_art_is_no_video(tmp_path, suffix):
    """Sound with cover art became a one-frame "video" of the cover."""
    src = tmp_path / f"song{suffix}"
    _with_cover(src, video=False)
    with pytest.raises(VideoError) as info:
        VideoReader(src)
    assert str(info.value) == (f"{src}: holds no video stream, only 1 attached picture (cover "
                               f"art), which is not anonymised")


def test_the_first_video_stream_that_is_no_attached_picture_is_taken(tmp_path, monkeypatch):
    """The stream was picked by position (``streams.video[0]``): a picture first made a
    one-frame output and the video was dropped. FFmpeg lists attached pictures after a file's
    tracks, so the review's file (a one-frame mjpeg track, then the video) is flagged here as
    FFmpeg flags cover art; a second real video track still gives today's warning."""
    pick = video.pick_video_stream
    assert pick([]) is None
    flagged = [_Stream(0, 1024), _Stream(1, 0), _Stream(2, 0)]
    assert pick(flagged) is flagged[1] and pick(flagged[:1]) is None
    assert pick([_Stream(0, 1 | 1024), _Stream(1, 1)]).index == 1  # default + attached_pic
    src = tmp_path / "cover_first.mkv"
    out = av.open(str(src), "w")
    still = out.add_stream("mjpeg", rate=25)
    still.width, still.height, still.pix_fmt = 40, 40, "yuvj420p"
    clip = [out.add_stream("libx264", rate=25) for _ in range(2)]
    for v in clip:
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.codec_context.options = {"crf": "0"}
    picture = av.VideoFrame.from_ndarray(np.full((40, 40, 3), 90, np.uint8), format="rgb24")
    picture = picture.reformat(format="yuvj420p")
    picture.pts = 0
    for p in [*still.encode(picture), *still.encode()]:
        out.mux(p)
    for i in range(6):
        for v in clip:
            frame = av.VideoFrame.from_ndarray(image(i), format="rgb24")
            frame.pts = i
            for p in v.encode(frame):
                out.mux(p)
    for v in clip:
        for p in v.encode():
            out.mux(p)
    out.close()
    _, writer, frames = through(src, tmp_path / "plain.mkv")
    assert len(frames) == 1  # a plain one-frame track is a video: taken, as before
    monkeypatch.setattr(video, "is_attached_picture", lambda s: s.index == 0)
    reader, writer, frames = through(src, tmp_path / "out.mkv")
    assert (reader.info.codec, len(frames)) == ("h264", 6)
    assert writer.dropped == [
        f"stream #0 (video, mjpeg) {COVER_DROPPED}",
        "stream #2 (video, h264) not copied: only the first video stream is anonymised: copying "
        "this one would keep its faces visible"]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [s.type for s in c.streams] == ["video"]
        assert sum(1 for _ in c.decode(video=0)) == 6


class _Stream:
    """A stream as :func:`video.pick_video_stream` sees it."""

    def __init__(self, index: int, disposition: int) -> None:
        self.index, self.disposition = index, disposition


def test_a_disposition_that_is_a_plain_flag_is_read():
    """PyAV 17 and earlier give ``Stream.disposition`` as a plain ``enum.Flag``, which ``int()``
    refuses: every video (an ordinary stream's disposition is ``default``, non-zero) stopped
    the batch with a TypeError. Its ``value`` holds the bits."""
    import enum

    class Disposition(enum.Flag):  # as PyAV 17 declares it
        default = 1
        attached_pic = 1024

    assert not video.is_attached_picture(_Stream(0, Disposition.default))
    assert video.is_attached_picture(_Stream(0, Disposition.default | Disposition.attached_pic))
    assert video.pick_video_stream([_Stream(0, Disposition.attached_pic),
                                    _Stream(1, Disposition.default)]).index == 1
    assert not video.is_attached_picture(_Stream(0, None))
