"""What a video's output leaves out as personal data: attachments that are not fonts (always),
audio (unless --keep-audio), metadata tags, subtitle and data streams such as dashcam GPS text
and GoPro telemetry (unless --keep-metadata); said in one warning line and in the sidecar.
Clips are tiny and made here with PyAV."""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from tinyfaces_trt.anonymize import cli  # noqa: E402
from tinyfaces_trt.anonymize.jobs import Options, plan_tasks, process_file  # noqa: E402
from tinyfaces_trt.core.config import DetectorConfig  # noqa: E402
from tinyfaces_trt.core.manifest import ModelIdentity  # noqa: E402
from test_anonymize_video import mux_subtitles  # noqa: E402
from test_anonymize_video_streams import through  # noqa: E402

W, H = 64, 48
PRIVATE = "not copied, as it can identify people or places: "
FONT = b"OTTO" + bytes(60)  # an OpenType (CFF) font's first bytes
GPS_TEXT = "N52.5200 E13.4050 63 km/h"
#: Container tags a dashcam or phone writes (.mov keeps them all), and the video stream's.
TAGS = {"location": "+52.5200+013.4050/", "comment": "Dashcam SN 1234567 plate AB-CD-123",
        "make": "Acme", "model": "DC-9", "creation_time": "2024-05-01T08:30:00.000000Z"}
STREAM_TAGS = {"language": "eng", "title": "cam 3"}


def _jpeg() -> bytes:
    from PIL import Image

    data = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(data, "JPEG")
    return data.getvalue()


def clip(path: Path, n: int = 4, *, audio: bool = False, tags: dict | None = None,
         stream_tags: dict | None = None, rotation: int = 0, timecode: str | None = None,
         subtitles: Path | None = None, attachments=()) -> None:
    """``n`` grey frames at 25 fps; AAC audio, container and video stream tags, a display
    rotation, a timecode track, the subtitle stream of an .srt file, attachments
    ((name, mimetype, data)), as asked."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.metadata.update(stream_tags or {})
        if timecode:
            v.metadata["timecode"] = timecode
        if rotation:
            v.set_display_rotation(rotation)
        a = out.add_stream("aac", rate=48000) if audio else None
        srt = av.open(str(subtitles)) if subtitles else None
        s = out.add_stream_from_template(srt.streams.subtitles[0]) if srt else None
        for name, mimetype, data in attachments:
            out.add_attachment(name, mimetype, data)
        out.metadata.update(tags or {})
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.full((H, W, 3), 30 * i, np.uint8), "rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            out.mux(v.encode(frame))
        out.mux(v.encode())
        if a is not None:
            sound = av.AudioFrame.from_ndarray(
                (0.3 * np.sin(np.arange(48000 * n // 25) / 9.0))[None].astype(np.float32),
                format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 48000, 0
            out.mux(a.encode(sound))
            out.mux(a.encode())
        if srt is not None:
            mux_subtitles(out, srt, s)
            srt.close()


def gopro_like(path: Path) -> None:
    """A .mov whose second track is GoPro-style telemetry: a data track with a ``meta``
    handler named "GoPro MET (GPS)" and a ``gpmd`` sample entry (FFmpeg's timecode track,
    its handler, sample entry and name swapped in place: PyAV cannot write such a track)."""
    clip(path, timecode="10:00:00:00")
    data = path.read_bytes()
    entry = data.rfind(b"stsd") + 16  # (size, "stsd", version and flags, count, entry size)
    assert data[entry:entry + 4] == b"tmcd" and data.count(b"TimeCodeHandler") == 1
    data = data[:entry] + b"gpmd" + data[entry + 4:]
    path.write_bytes(data.replace(b"mhlrtmcd", b"mhlrmeta")
                     .replace(b"TimeCodeHandler", b"GoPro MET (GPS)"))


def gps_subtitles(tmp_path: Path) -> Path:
    """A dashcam's GPS track as subtitles, in an .mkv."""
    srt = tmp_path / "gps.srt"
    srt.write_text(f"1\n00:00:00,000 --> 00:00:00,160\n{GPS_TEXT}\n")
    path = tmp_path / "dashcam.mkv"
    clip(path, subtitles=srt)
    return path


def packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        return [bytes(p) for p in c.demux(*streams) if p.size] if streams else []


def test_only_font_attachments_are_copied(tmp_path):
    """A face photo attached as poster.webp (image/webp) and as face.jpg (a generic mimetype)
    came out byte-identical, with no warning."""
    photo = _jpeg()
    src = tmp_path / "att.mkv"
    clip(src, attachments=[("poster.webp", "image/webp", b"RIFF\0\0\0\0WEBPVP8 " + photo),
                           ("face.jpg", "application/octet-stream", photo),
                           ("notes.txt", "text/plain", b"plate AB-CD-123"),
                           ("fake.ttf", "application/x-truetype-font", photo),
                           ("cover.jpg", "image/jpeg", photo),  # read as a cover-art stream
                           ("font.otf", "font/otf", FONT)])
    with av.open(str(src)) as c:
        assert [s.type for s in c.streams] == ["video"] + ["attachment"] * 4 + ["video",
                                                                                 "attachment"]
    _, writer, _ = through(src, tmp_path / "out.mkv")
    picture = "(a picture in it would keep its faces)"
    assert writer.dropped == [
        f"stream #1 (attachment, poster.webp) not copied: only fonts are copied: this image/webp "
        f"file is not anonymised {picture}",
        f"stream #2 (attachment, face.jpg) not copied: only fonts are copied: this "
        f"application/octet-stream file is not anonymised {picture}",
        f"stream #3 (attachment, notes.txt) not copied: only fonts are copied: this text/plain "
        f"file is not anonymised {picture}",
        f"stream #4 (attachment, fake.ttf) not copied: its data is not a font, whatever its name "
        f"and type say: it is not anonymised {picture}",
        "stream #5 (video, mjpeg) not copied: an attached picture (cover art) is not anonymised: "
        "copying it would keep its faces visible"]
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert [(s.type, s.name, bytes(s.data)) for s in list(c.streams)[1:]] == [
            ("attachment", "font.otf", FONT)]


def test_audio_is_left_out_unless_kept(tmp_path):
    src = tmp_path / "cctv.mp4"
    clip(src, audio=True)
    _, writer, _ = through(src, tmp_path / "out.mp4")
    assert writer.dropped == [] and writer.withheld == (
        PRIVATE + "stream #1 (audio, aac) (--keep-audio keeps it)")
    assert packets(tmp_path / "out.mp4", "audio") == []
    _, writer, _ = through(src, tmp_path / "kept.mp4", keep_audio=True)
    assert writer.dropped == [] and writer.withheld is None
    assert packets(tmp_path / "kept.mp4", "audio") == packets(src, "audio") != []


def test_metadata_is_left_out_unless_kept_but_what_playback_needs(tmp_path):
    """A dashcam's location, serial number, plate, make and model and the time were copied into
    the output; photos, by contrast, lose their EXIF and GPS."""
    src = tmp_path / "dashcam.mov"
    clip(src, tags=TAGS, stream_tags=STREAM_TAGS, rotation=-90)
    _, writer, _ = through(src, tmp_path / "out.mov")
    # the stream's title is read back as "name"; the muxer's own tags are not named
    assert writer.dropped == [] and writer.withheld == (
        PRIVATE + "tags comment, creation_time, location, make, model, "
        "name (--keep-metadata keeps them)")
    with av.open(str(tmp_path / "out.mov")) as c:
        video = c.streams.video[0]
        assert set(c.metadata) <= {"major_brand", "minor_version", "compatible_brands",
                                   "encoder"}
        assert dict(video.metadata) | {"handler_name": None, "vendor_id": None} == {
            "language": "eng", "handler_name": None, "vendor_id": None}
        assert next(c.decode(video)).rotation == -90  # (display matrix: side data, kept)
    _, writer, _ = through(src, tmp_path / "kept.mov", keep_metadata=True)
    assert writer.dropped == [] and writer.withheld is None
    with av.open(str(tmp_path / "kept.mov")) as c:
        assert {k: c.metadata.get(k) for k in TAGS} == TAGS


def test_gps_telemetry_and_gps_subtitles_are_left_out_unless_kept(tmp_path):
    """GoPro's GPMF track (GPS) and a dashcam's GPS subtitles were copied as they are."""
    gopro = tmp_path / "GX010001.mov"
    gopro_like(gopro)
    with av.open(str(gopro)) as c:
        assert [s.type for s in c.streams] == ["video", "data"]
        assert c.streams[1].metadata["handler_name"] == "GoPro MET (GPS)"
    telemetry = packets(gopro, "data")
    _, writer, _ = through(gopro, tmp_path / "out.mov")
    assert writer.dropped == [] and writer.withheld == (
        PRIVATE + "stream #1 (data, GoPro MET (GPS)) (--keep-metadata "
        "keeps them)")
    assert packets(tmp_path / "out.mov", "data") == []
    _, writer, _ = through(gopro, tmp_path / "kept.mp4", keep_metadata=True)  # copied as it is
    assert writer.dropped == [] and packets(tmp_path / "kept.mp4", "data") == telemetry != []
    # a data stream only mov and mp4 hold: named, no longer a failed file
    _, writer, _ = through(gopro, tmp_path / "kept.mkv", keep_metadata=True)
    assert writer.dropped == ["stream #1 (data, GoPro MET (GPS)) not copied: the .mkv container "
                              "cannot hold data streams"]

    dashcam = gps_subtitles(tmp_path)
    _, writer, _ = through(dashcam, tmp_path / "out.mkv")
    assert writer.dropped == [] and writer.withheld == (
        PRIVATE + "stream #1 (subtitle, srt) (--keep-metadata keeps them)")
    assert packets(tmp_path / "out.mkv", "subtitle") == []
    through(dashcam, tmp_path / "kept_gps.mkv", keep_metadata=True)
    assert packets(tmp_path / "kept_gps.mkv", "subtitle") == [GPS_TEXT.encode()]


class BoxDetector:
    """One fixed face in every frame, with the members of a Detector that tf-anonymize uses."""

    config = DetectorConfig()
    identity = ModelIdentity("0" * 64, False, "checkpoint w.pth", variant="pytorch", depth=101)

    def detect_batch(self, images):
        return [np.array([[8, 8, 24, 24, 0.9]], np.float32) for _ in images]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_one_warning_line_and_the_sidecar_say_what_was_left_out(tmp_path):
    src = tmp_path / "clip.mov"
    clip(src, audio=True, tags=TAGS, timecode="10:00:00:00")
    task = plan_tasks([src], tmp_path / "out", overwrite=True)[0][0]
    result = process_file(BoxDetector(), task, Options())
    assert result.status == "done" and result.warnings == () and len(result.notes) == 1
    assert result.notes[0] == (
        PRIVATE + "stream #1 (audio, aac) (--keep-audio keeps it); stream #2 (data, timecode), "
                  "tags comment, creation_time, location, make, model, timecode "
                  "(--keep-metadata keeps them)")
    side = json.loads(Path(task.sidecar).read_text())
    assert side["dropped_streams"] == list(result.notes)
    with av.open(task.output) as c:
        assert [s.type for s in c.streams] == ["video"] and "location" not in c.metadata


def test_help_explains_the_keep_options():
    text = cli.build_parser().format_help()
    flat = " ".join(text.split())
    assert "--keep-audio copy the audio streams (default: left out: voices are personal data)" \
        in flat
    assert "--keep-metadata copy the container's and streams' metadata tags" in flat


class UntrainedBoxDetector(BoxDetector):
    """As the CLI's detector without --weights or --model: the untrained network."""

    identity = ModelIdentity(None, True, "the default network", variant="pytorch", depth=101,
                             seed=0, precision="fp32")


def _run(argv, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_make_detector", lambda args: UntrainedBoxDetector())
    status = cli.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_the_keep_options_reach_the_output_and_a_rerun_redoes_other_ones(tmp_path, monkeypatch,
                                                                        capsys):
    """The options are recorded in the sidecar, and a rerun with another one is not skipped as
    done (it would leave the audio out)."""
    src = tmp_path / "clip.mov"
    clip(src, audio=True, tags=TAGS)
    out = tmp_path / "out"
    status, err = _run([src, "--out", out], monkeypatch, capsys)
    assert status == 0 and f"tf-anonymize: {src}: not copied, as it can identify people or " \
        "places" in err and "1 done, 0 skipped" in err  # a note, not a warning
    assert packets(out / "clip.mov", "audio") == []
    status, err = _run([src, "--out", out, "--keep-audio", "--keep-metadata"], monkeypatch,
                       capsys)
    assert status == 0 and "1 done, 0 skipped" in err
    assert "again: it was made with keep_audio false (now true), keep_metadata false (now true)" \
        in err
    assert packets(out / "clip.mov", "audio") == packets(src, "audio") != []
    with av.open(str(out / "clip.mov")) as c:
        assert c.metadata.get("location") == TAGS["location"]
    options = json.loads((out / "clip.mov.json").read_text())["options"]
    assert (options["keep_audio"], options["keep_metadata"]) == (True, True)
    status, err = _run([src, "--out", out, "--quiet", "--keep-audio", "--keep-metadata"],
                       monkeypatch, capsys)
    assert status == 0 and "0 done, 1 skipped" in err
