"""tf-anonymize on videos and images generated here with PyAV (FFmpeg in the wheel)."""

from __future__ import annotations

import contextlib
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from tinyfaces_trt.anonymize.cli import main  # noqa: E402
from tinyfaces_trt.anonymize.jobs import Options, Task, plan_tasks, process_file  # noqa: E402
from tinyfaces_trt.core.config import DetectorConfig  # noqa: E402
from tinyfaces_trt.core.files import TEMP_PREFIX  # noqa: E402
from tinyfaces_trt.core.manifest import ModelIdentity  # noqa: E402
from tinyfaces_trt.runtime.masks import MaskStyle  # noqa: E402
from test_anonymize_video_streams import make, through  # noqa: E402

W, H = 96, 64
FACE = 24  # side of the moving "face": a white square with dark bars (texture to hide)
BARS = np.arange(3, FACE, 6)  # its dark columns


def face_box(i: int) -> tuple[int, int, int, int]:
    x = 4 + 3 * i
    return x, 20, x + FACE, 20 + FACE


#: av.open options that write metadata strings as their bytes (surrogateescape), whatever
#: PyAV: before 19 they are an option, from 19 on the only behaviour.
RAW_METADATA = {"metadata_errors": "surrogateescape"} if int(av.__version__.split(".")[0]) < 19 else {}


def make_video(path: Path, n: int = 16, *, pts_steps=None, rotation: int = 0, audio: bool = True,
               codec: str = "libx264", subtitles: Path | None = None,
               title: str = "anonymise me") -> list[np.ndarray]:
    """A clip of ``n`` frames: grey noise plus a white square moving 3 px/frame; time base
    1/1000, each frame ``pts_steps[i]`` ms after the previous (default 40: 25 fps); AAC
    audio as long as the video. Returns the RGB frames fed to the encoder."""
    tb = Fraction(1, 1000)
    steps = pts_steps or [40] * n
    out = av.open(str(path), "w", **RAW_METADATA)
    v = out.add_stream(codec, rate=25)
    v.width, v.height, v.pix_fmt = W, H, "yuv420p"
    v.time_base = v.codec_context.time_base = tb
    v.codec_context.options = {"crf": "0"} if codec == "libx264" else {}
    if rotation:
        v.set_display_rotation(rotation)
    a = out.add_stream("aac", rate=48000) if audio else None
    s_in = s_out = None
    if subtitles is not None:
        s_in = av.open(str(subtitles))
        s_out = out.add_stream_from_template(s_in.streams.subtitles[0])
    out.metadata["title"] = title
    rng = np.random.default_rng(0)
    frames, pts = [], 0
    for i in range(n):
        img = np.full((H, W, 3), 60, np.uint8) + rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
        x1, y1, x2, y2 = face_box(i)
        img[y1:y2, x1:x2] = 250
        img[y1:y2, x1 + BARS] = 0
        frames.append(img)
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        f.pts, f.time_base = pts, tb
        for p in v.encode(f):
            out.mux(p)
        pts += steps[i]
    for p in v.encode():
        out.mux(p)
    if a is not None:
        total = 48 * pts
        for t in range(0, total, 1024):
            k = min(1024, total - t)
            af = av.AudioFrame.from_ndarray(
                (0.3 * np.sin(np.arange(t, t + k) / 9.0))[None].astype(np.float32),
                format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, t
            for p in a.encode(af):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    if s_in is not None:
        mux_subtitles(out, s_in, s_out)
        s_in.close()
    out.close()
    return frames


def mux_subtitles(out, source, stream) -> None:
    """Muxes the packets of ``source``'s (an opened .srt) subtitle stream into ``stream``."""
    for packet in source.demux(source.streams.subtitles[0]):
        if packet.size:
            packet.stream = stream
            out.mux(packet)


def read_video(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [(f.pts, f.rotation, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        audio = None
        if c.streams.audio:
            c.seek(0)
            samples = sum(f.samples for f in c.decode(audio=0))
            audio = samples / c.streams.audio[0].rate
        return {"pts": [f[0] for f in frames], "rotation": frames[0][1],
                "images": [f[2] for f in frames], "rate": v.average_rate,
                "types": sorted(s.type for s in c.streams), "audio_seconds": audio,
                "title": c.metadata.get("title"), "size": (v.width, v.height)}


class FakeDetector:
    """Finds the face by thresholding, misses the frames in ``drop``, and records
    the images it was shown (and the size of each batch), with the members of a Detector
    that tf-anonymize uses."""

    config = DetectorConfig()
    identity = ModelIdentity("0" * 64, False, "checkpoint w.pth", variant="pytorch", depth=101)

    def __init__(self, drop=(), score=0.9):
        self.drop, self.score, self.seen, self.batches = set(drop), score, [], []

    def detect_batch(self, images):
        self.batches.append(len(images))
        return [self.detect(image) for image in images]

    def detect(self, image):
        index = len(self.seen)
        self.seen.append(image.copy())
        if index in self.drop:
            return np.zeros((0, 5), np.float32)
        ys, xs = np.nonzero(image[..., 0] > 200)
        return np.array([[xs.min(), ys.min(), xs.max(), ys.max(), self.score]], np.float32)


def _task(src: Path, out: Path) -> Task:
    tasks, skipped, errors = plan_tasks([src], out, overwrite=True)
    assert not skipped and not errors
    return tasks[0]


def _face_visible(image, box) -> bool:
    """The face's texture is intact: its dark bars dark and the columns between them bright."""
    x1, y1, x2, y2 = box
    region = image[y1 + 1:y2 - 1, x1:x2, 0].astype(int)
    light = np.setdiff1d(np.arange(FACE), np.concatenate([BARS - 1, BARS, BARS + 1]))
    return bool(region[:, BARS].mean() < 100 and region[:, light].mean() > 200)


def test_video_keeps_timing_and_masks_only_faces_leaving_audio_and_metadata_out(tmp_path):
    src = tmp_path / "clip.mp4"
    make_video(src, n=16)
    task = _task(src, tmp_path / "out")
    opts = Options(style=MaskStyle(mode="pixelate", scale=1.0), hold=2, crf=0)  # lossless
    result = process_file(FakeDetector(), task, opts)
    assert result.status == "done", result.error
    assert (result.frames, result.detections) == (16, 16)
    before, after = read_video(src), read_video(Path(task.output))
    assert after["pts"] == before["pts"] and len(after["images"]) == 16
    assert after["rate"] == before["rate"] == 25
    assert after["size"] == before["size"] == (W, H)
    # personal data, left out by default and said so (test_anonymize_video_privacy.py)
    assert after["types"] == ["video"] and after["title"] is None
    assert result.warnings == ()  # a note, not a warning: it is what was asked for
    assert result.notes == ("not copied, as it can identify people or places: stream #1 "
                            "(audio, aac) (--keep-audio keeps it); tags title "
                            "(--keep-metadata keeps them)",)
    for i, (a, b) in enumerate(zip(before["images"], after["images"])):
        x1, y1, x2, y2 = face_box(i)
        assert _face_visible(a, face_box(i)) and not _face_visible(b, face_box(i))
        outside = np.ones((H, W), bool)
        outside[max(0, y1 - 3):y2 + 4, max(0, x1 - 3):x2 + 4] = False
        diff = np.abs(a.astype(int) - b.astype(int))[outside]
        # outside the mask only RGB <-> YUV 4:2:0 rounding (lossless x264)
        assert diff.max() <= 8 and diff.mean() < 1.5, i
    assert not list(Path(task.output).parent.glob(f"{TEMP_PREFIX}*"))
    side = json.loads(Path(task.sidecar).read_text())
    assert side["model"] == {"weights_sha256": "0" * 64, "untrained": False,
                             "source": "checkpoint w.pth", "variant": "pytorch", "depth": 101,
                             "seed": None, "precision": None}
    assert side["video"]["frames"] == 16
    assert side["summary"]["detections"] == 16 and len(side["frames"]) == 16
    face = side["frames"][3]["faces"][0]
    assert face["kind"] == "detected" and face["track"] == 0 and face["score"] == 0.9
    # kept when asked: the audio as long as the video, the title
    through(src, tmp_path / "kept.mp4", keep_audio=True, keep_metadata=True)
    kept = read_video(tmp_path / "kept.mp4")
    assert kept["types"] == ["audio", "video"] and kept["title"] == "anonymise me"
    assert kept["audio_seconds"] == pytest.approx(before["audio_seconds"], abs=1e-6)
    assert before["audio_seconds"] == pytest.approx(16 * 0.04, abs=0.03)


def test_metadata_that_is_not_utf8_does_not_stop_the_video(tmp_path):
    """Old cameras write Latin-1 titles. PyAV before 19 decodes metadata strictly unless told
    otherwise; 19 dropped that option: the reader must open such a file under both."""
    src = tmp_path / "latin1.mp4"
    make_video(src, n=4, audio=False, title=b"caf\xe9".decode("utf-8", "surrogateescape"))
    with av.open(str(src), **RAW_METADATA) as c:
        assert c.metadata["title"].encode("utf-8", "surrogateescape") == b"caf\xe9"  # really written
    task = _task(src, tmp_path / "out")
    result = process_file(FakeDetector(), task, Options(style=MaskStyle(mode="solid", scale=1.0)))
    assert result.status == "done", result.error
    assert result.frames == 4 and Path(task.output).is_file()
    through(src, tmp_path / "kept.mp4", keep_metadata=True)
    with av.open(str(tmp_path / "kept.mp4"), **RAW_METADATA) as c:
        assert c.metadata["title"].encode("utf-8", "surrogateescape") in (b"caf\xe9", "café".encode(),
                                                                          "caf\ufffd".encode())


def test_dropped_detections_are_held_and_back_filled_in_the_video(tmp_path):
    src = tmp_path / "moving.mkv"
    make_video(src, n=20, audio=False)
    drop = {0, 1, 6, 9, 10, 11, 16, 19}
    task = _task(src, tmp_path / "out")
    opts = Options(style=MaskStyle(mode="solid", scale=1.0), hold=3)
    assert process_file(FakeDetector(drop=drop), task, opts).status == "done"
    after = read_video(Path(task.output))
    assert sum(_face_visible(img, face_box(i)) for i, img in enumerate(after["images"])) == 0
    kinds = [f["faces"][0]["kind"] for f in json.loads(Path(task.sidecar).read_text())["frames"]]
    assert kinds[:3] == ["filled", "filled", "detected"] and kinds[9:12] == ["held"] * 3
    # the control: without hold the dropped frames show the face
    control = _task(src, tmp_path / "control")
    process_file(FakeDetector(drop=drop), control, Options(style=opts.style, hold=0))
    shown = [i for i, img in enumerate(read_video(Path(control.output))["images"])
             if _face_visible(img, face_box(i))]
    assert shown == sorted(drop)


def test_variable_frame_rate_is_kept(tmp_path):
    src = tmp_path / "vfr.mkv"
    steps = [20, 60, 33, 47, 100, 20, 20, 80, 40, 40]
    make_video(src, n=10, pts_steps=steps)
    task = _task(src, tmp_path / "out")
    assert process_file(FakeDetector(), task, Options()).status == "done"
    pts = read_video(Path(task.output))["pts"]
    assert pts == read_video(src)["pts"] == list(np.cumsum([0] + steps[:-1]))


def test_rotation_is_honoured_and_kept(tmp_path):
    src = tmp_path / "phone.mov"
    make_video(src, n=6, rotation=-90, audio=False)
    detector = FakeDetector()
    task = _task(src, tmp_path / "out")
    assert process_file(detector, task, Options(style=MaskStyle(mode="solid", scale=1.0),
                                                hold=0)).status == "done"
    # the detector saw upright frames: -90 (phone portrait) is a quarter turn clockwise
    assert detector.seen[0].shape == (W, H, 3)
    stored = read_video(src)["images"][0]
    np.testing.assert_array_equal(np.rot90(stored, -1).shape, detector.seen[0].shape)
    assert np.abs(np.rot90(stored, -1).astype(int) - detector.seen[0].astype(int)).max() == 0
    after = read_video(Path(task.output))
    assert after["rotation"] == read_video(src)["rotation"] == -90
    assert after["size"] == (W, H)
    assert not any(_face_visible(img, face_box(i)) for i, img in enumerate(after["images"]))


def test_the_sidecar_gives_the_boxes_frame_and_says_how_frames_were_counted(tmp_path):
    """A rotated video's width and height are the stored frame's, its boxes upright; a count
    from the duration (Matroska) is an estimate, far off for a variable frame rate (a 20-frame
    clip was said to hold 62 frames)."""
    src = tmp_path / "phone.mov"
    make_video(src, n=6, rotation=-90, audio=False)
    detector = FakeDetector()
    task = _task(src, tmp_path / "out")
    assert process_file(detector, task, Options()).status == "done"
    side = json.loads(Path(task.sidecar).read_text())
    clip = side["video"]
    assert (clip["width"], clip["height"], clip["rotation"]) == (W, H, -90)  # as stored
    assert (clip["boxes_frame"], clip["upright_width"], clip["upright_height"]) == ("upright", H, W)
    assert detector.seen[0].shape == (clip["upright_height"], clip["upright_width"], 3)
    assert (clip["frames"], clip["frames_announced"], clip["frames_estimated"],
            clip["frames_decoded"], side["summary"]["frames"]) == (6, 6, False, 6, 6)
    vfr = tmp_path / "vfr.mkv"  # 1.2 s at 25 fps "average": 30 frames estimated, 6 there
    make_video(vfr, n=6, pts_steps=[40, 40, 1000, 40, 40, 40], audio=False)
    task = _task(vfr, tmp_path / "out_vfr")
    assert process_file(FakeDetector(), task, Options()).status == "done"
    side = json.loads(Path(task.sidecar).read_text())
    clip = side["video"]
    assert (clip["width"], clip["height"], clip["upright_width"], clip["upright_height"]) == \
        (W, H, W, H)
    assert (clip["frames"], clip["frames_announced"], clip["frames_estimated"],
            clip["frames_decoded"], side["summary"]["frames"]) == (30, 30, True, 6, 6)


def test_subtitles_are_copied_and_unfit_streams_reported(tmp_path):
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,400\nhello\n\n2\n00:00:00,400 --> "
                   "00:00:00,600\nworld\n")
    src = tmp_path / "subs.mkv"
    make_video(src, n=15, subtitles=srt)
    _, writer, _ = through(src, tmp_path / "kept.mkv", keep_audio=True, keep_metadata=True)
    assert writer.dropped == []
    with av.open(str(tmp_path / "kept.mkv")) as c:
        assert sorted(s.type for s in c.streams) == ["audio", "subtitle", "video"]
        texts = [bytes(p) for p in c.demux(c.streams.subtitles[0]) if p.size]
    assert texts == [b"hello", b"world"]
    # webm holds neither AAC nor SubRip: the video is written, the dropped streams named
    _, writer, _ = through(src, tmp_path / "subs.webm", keep_audio=True, keep_metadata=True)
    assert writer.dropped == [
        "stream #1 (audio, aac) not copied: the .webm container cannot hold it",
        "stream #2 (subtitle, srt) not copied: the .webm container cannot hold it"]
    assert read_video(tmp_path / "subs.webm")["types"] == ["video"]
    # by default both are left out, in one line (subtitles can be a dashcam's GPS track)
    task = _task(src, tmp_path / "out")
    result = process_file(FakeDetector(), task, Options())
    assert result.status == "done" and read_video(Path(task.output))["types"] == ["video"]
    assert result.warnings == () and result.notes == (
        "not copied, as it can identify people or places: stream #1 (audio, aac) (--keep-audio "
        "keeps it); stream #2 (subtitle, srt), tags title (--keep-metadata keeps them)",)


def test_corrupt_truncated_and_unwritable_files_fail_alone(tmp_path):
    good = tmp_path / "in" / "good.mp4"
    good.parent.mkdir()
    make_video(good, n=5)
    (tmp_path / "in" / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(5000))
    data = good.read_bytes()
    (tmp_path / "in" / "cut.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "in" / "empty.mov").write_bytes(b"")
    out = tmp_path / "out"
    tasks, _, _ = plan_tasks([tmp_path / "in"], out)
    results = {Path(t.source).name: process_file(FakeDetector(), t, Options()) for t in tasks}
    assert results["good.mp4"].status == "done"
    for name in ("noise.mp4", "cut.mp4", "empty.mov"):
        assert results[name].status == "failed" and name in results[name].error
        assert not (out / name).exists()
    assert sorted(p.name for p in out.iterdir()) == ["good.mp4", "good.mp4.json"]
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should be")
    bad = Task(str(good), str(blocked / "good.mp4"), str(blocked / "good.mp4.json"), "video")
    failed = process_file(FakeDetector(), bad, Options())
    assert failed.status == "failed" and "blocked" in failed.error


def test_encoder_failure_leaves_no_output(tmp_path):
    src = tmp_path / "clip.mp4"
    make_video(src, n=4)
    task = _task(src, tmp_path / "out")
    result = process_file(FakeDetector(), task, Options(codec="no-such-encoder"))
    assert result.status == "failed" and "no-such-encoder" in result.error
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_fails_the_file_early_and_leaves_nothing(tmp_path, monkeypatch):
    """A disk that filled while the muxer held the output's data (a small file's all of it)
    failed it only when the file was closed, after the whole input had been read: the encoder
    thread now asks for the disk's free space as it goes."""
    from tinyfaces_trt.anonymize import video

    assert video.free_bytes(tmp_path) > 0 and video.free_bytes(tmp_path / "none") is None
    src = tmp_path / "long.mp4"
    make(src, n=80)
    asked = []

    def free_bytes(folder):
        asked.append(Path(folder))
        return 0 if len(asked) > 1 else 10 ** 9  # full from the second look on

    monkeypatch.setattr(video, "free_bytes", free_bytes)
    task = _task(src, tmp_path / "out")
    detector = FakeDetector()
    result = process_file(detector, task, Options())
    assert result.status == "failed"
    assert result.error == (f"{src}: {task.output}: cannot write the output: [Errno 28] No "
                            f"space left on device: '{task.output}'")
    assert set(asked) == {Path(task.output).parent} and len(asked) == 2
    assert len(detector.seen) < 60  # stopped early: 20 frames encoded, a few more read
    assert list((tmp_path / "out").iterdir()) == []
    # space left, but less than the packets the muxer holds and has not written (a Matroska
    # cluster; FFmpeg's 32 KiB write buffer): it would fail when writing them, or at the end
    noise = tmp_path / "noise.mkv"
    make(noise, n=200, frames=[np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8)
                               for i in range(200)])
    monkeypatch.setattr(video, "free_bytes", lambda folder: 4096)
    detector = FakeDetector()
    result = process_file(detector, _task(noise, tmp_path / "out_4k"), Options())
    assert result.status == "failed" and "cannot write the output: [Errno 28]" in result.error
    # (x264 hands its first packet over some 70 frames in: about 105 read)
    assert len(detector.seen) < 150 and list((tmp_path / "out_4k").iterdir()) == []
    monkeypatch.setattr(video, "free_bytes", lambda folder: 10 ** 9)
    detector = FakeDetector()
    assert process_file(detector, _task(noise, tmp_path / "out_1g"), Options()).status == "done"
    assert len(detector.seen) == 200


def test_a_video_whose_held_frames_outgrow_the_memory_is_refused_before_any_work(
        tmp_path, monkeypatch):
    """--hold 400 on a 4K video keeps some 10 GB of decoded frames: where that is more than
    half the memory available the kernel would have ended the run long into the video, without
    a word; the video is refused with the figures before a frame is decoded."""
    from tinyfaces_trt.core import memory

    src = tmp_path / "clip.mp4"
    make_video(src, n=4)  # 96x64
    frame = 96 * 64 * 3
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * 10 * frame - 1)
    detector = FakeDetector()
    result = process_file(detector, _task(src, tmp_path / "out"), Options(hold=5, batch=4))
    assert result.status == "failed" and detector.seen == []
    assert result.error == (
        f"{src}: --hold 5 and --batch 4 keep up to 10 decoded 96x64 frames in memory (0.2 MiB), "
        f"more than half of the 0.4 MiB available: lower --hold or --batch, or downscale the "
        f"video; nothing was written for it")
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(memory, "available_bytes", lambda: 2 * 10 * frame)  # just fits
    assert process_file(detector, _task(src, tmp_path / "out"), Options(hold=5, batch=4)
                        ).status == "done"
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # not known: not refused
    assert process_file(FakeDetector(), _task(src, tmp_path / "out2"), Options(hold=5, batch=4)
                        ).status == "done"


def test_images_with_exif_orientation(tmp_path):
    from PIL import Image

    upright = np.full((40, 60, 3), 50, np.uint8)
    upright[5:25, 30:50] = 250
    im = Image.fromarray(np.rot90(upright, 1).copy())  # stored turned; EXIF 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    task = _task(tmp_path / "photo.jpg", tmp_path / "out")
    detector = FakeDetector()
    result = process_file(detector, task, Options(style=MaskStyle(mode="solid", scale=1.0)))
    assert result.status == "done" and result.detections == 1
    assert detector.seen[0].shape == (40, 60, 3)
    out = np.asarray(Image.open(task.output))
    assert out.shape == (40, 60, 3) and out[10:20, 35:45].max() < 30
    side = json.loads(Path(task.sidecar).read_text())
    assert side["image"] == {"width": 60, "height": 40} and side["frames"][0]["time"] is None


def test_review_band_lists_near_threshold_frames(tmp_path):
    src = tmp_path / "clip.mp4"
    make_video(src, n=4, audio=False)
    task = _task(src, tmp_path / "out")
    process_file(FakeDetector(score=0.55), task, Options(review_band=0.1))
    review = json.loads(Path(task.sidecar).read_text())["review"]
    assert review["band"] == [0.5, 0.6] and [f["index"] for f in review["frames"]] == [0, 1, 2, 3]
    process_file(FakeDetector(score=0.8), task, Options(review_band=0.1))
    assert json.loads(Path(task.sidecar).read_text())["review"]["frames"] == []


class FractionalDetector(FakeDetector):
    """Boxes off the pixel grid and a score of many digits, under a threshold of 0.25."""

    config = DetectorConfig(prob_thresh=0.25)

    def detect(self, image):
        boxes = super().detect(image)
        boxes[:, :4] += 0.123456
        boxes[:, 4] = 0.3123456789
        return boxes


def test_sidecar_rounds_as_the_detections_json_and_bands_at_the_detector_threshold(tmp_path):
    """Frames go to detect_batch in batches of Options.batch; the sidecar's boxes and scores
    are rounded as tf-detect's JSON rounds them (runtime.results), and its review band starts
    at the detector's own threshold."""
    from tinyfaces_trt.runtime.results import detections_to_list

    src = tmp_path / "clip.mp4"
    make_video(src, n=10, audio=False)
    task = _task(src, tmp_path / "out")
    detector = FractionalDetector()
    assert process_file(detector, task, Options(batch=4, review_band=0.25)).status == "done"
    assert detector.batches == [4, 4, 2]
    side = json.loads(Path(task.sidecar).read_text())
    assert side["config"] == {"variant": "pytorch", "prob_thresh": 0.25, "nms_thresh": 0.3,
                              "min_face": None, "max_face": None, "pyramid": "adaptive",
                              "size_refinement": 2.0}
    assert side["frames"][0]["faces"] == [{"track": 0, "box": [4.12, 20.12, 27.12, 43.12],
                                           "score": 0.31235, "kind": "detected"}]
    expected = detections_to_list(FractionalDetector().detect(read_video(src)["images"][0]))
    assert [{"box": f["box"], "score": f["score"]} for f in side["frames"][0]["faces"]] == expected
    assert side["review"]["band"] == [0.25, 0.5]
    assert side["review"]["frames"][0] == {"index": 0, "time": 0.0, "scores": [0.31235]}
    assert len(side["review"]["frames"]) == 10


def test_plan_skips_existing_and_numbers_clashes(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.mp4").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.mp4").write_bytes(b"done before")
    (out / "x.mp4.json").write_text(json.dumps({"input": str(tmp_path / "a" / "x.mp4")}))
    tasks, skipped, errors = plan_tasks([tmp_path / "a" / "x.mp4", tmp_path / "b" / "x.mp4",
                                         tmp_path / "nope.mp4", tmp_path / "a.txt"], out)
    assert [Path(t.output).name for t in tasks] == ["x_2.mp4"]
    assert [s.status for s in skipped] == ["skipped"]
    assert [e[0] for e in errors] == [str(tmp_path / "nope.mp4"), str(tmp_path / "a.txt")]
    tasks, skipped, _ = plan_tasks([tmp_path / "a"], out, overwrite=True)
    assert len(tasks) == 1 and not skipped
    # a later run of the other folder's x.mp4: the next name, not a skip or an overwrite
    tasks, skipped, _ = plan_tasks([tmp_path / "b" / "x.mp4"], out)
    assert [Path(t.output).name for t in tasks] == ["x_2.mp4"] and not skipped
    # an output without its sidecar is not one tf-anonymize wrote (it claims each output with
    # a sidecar before its final name): refused, left as it is (test_anonymize_jobs.py)
    (out / "x.mp4.json").unlink()
    tasks, skipped, errors = plan_tasks([tmp_path / "a"], out)
    assert not tasks and not skipped and [e[0] for e in errors] == [str(tmp_path / "a" / "x.mp4")]
    assert (out / "x.mp4").read_bytes() == b"done before"


def test_images_of_other_formats_in_a_folder_are_errors_not_left_alone(tmp_path):
    """A PBM or HEIC in a folder would keep its faces: each is listed as an error (exit 1); other
    files (notes, sidecars) are still ignored. A GIF, PPM or PGM is an input, as tf-detect takes
    it (tests/test_media_walk.py: what is written of each)."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("a.png", "anim.GIF", "sub/im.ppm", "scan.pbm", "IMG_1.HEIC", "notes.txt"):
        (src / name).write_bytes(b"")
    tasks, _, errors = plan_tasks([src, tmp_path / "in" / "scan.pbm"], tmp_path / "out")
    assert [Path(t.source).name for t in tasks] == ["a.png", "anim.GIF", "im.ppm"]
    assert errors == [(str(src / name), f"{src / name}: not anonymised: {suffix} files are not "
                       f"supported; convert it to one of .jpg, .jpeg, .png, .bmp, .gif, .tif, "
                       f".tiff, .webp, .ppm, .pgm")
                      for name, suffix in (("IMG_1.HEIC", ".heic"), ("scan.pbm", ".pbm"),
                                           ("scan.pbm", ".pbm"))]


def test_cli_end_to_end_on_the_real_network(tmp_path, export_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    make_video(src / "tiny.mp4", n=10)
    from PIL import Image

    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(src / "still.png")
    out = tmp_path / "out"
    argv = [str(src), "--out", str(out), "--model", str(export_dir), "--quiet",
            "--prob-thresh", "0.3", "--min-face", "10"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    # a checkpoint's export: no untrained banner; the audio and title left out are a note
    # (not shown with --quiet, not counted as a warning: a damaged file's would be lost in them)
    assert "2 done, 0 skipped, 0 failed" in err and "can identify" not in err
    assert json.loads((out / "tiny.mp4.json").read_text())["dropped_streams"] == [
        "not copied, as it can identify people or places: stream #1 (audio, aac) (--keep-audio "
        "keeps it); tags title (--keep-metadata keeps them)"]
    side = json.loads((out / "tiny.mp4.json").read_text())
    assert side["summary"]["frames"] == 10 and side["config"]["min_face"] == 10
    assert side["config"]["prob_thresh"] == 0.3
    assert len(read_video(out / "tiny.mp4")["images"]) == 10
    # a second run skips both; a broken file makes the exit status 1, the rest still done
    (src / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3 not really matroska")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "broken.mkv" in err and "1 failed" in err and "2 skipped" in err
    assert not (out / "broken.mkv").exists()


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    for argv, message in (
            (["x.mp4"], "the following arguments are required: --out"),
            (["x.mp4", "--out", "o", "--mode", "smear"], "argument --mode: invalid choice: 'smear'"),
            (["x.mp4", "--out", "o", "--min-face", "50", "--max-face", "20"],
             "--min-face 50 is larger than --max-face 20"),
            (["x.mp4", "--out", "o", "--crf", "99"], "argument --crf: 99 must be between 0 and 63"),
            (["x.mp4", "--out", "o", "--codec", "libx265", "--crf", "60"],
             "--crf 60: encoder 'libx265' takes a constant rate factor of 0 to 51"),
            ([str(tmp_path), "--out", str(tmp_path)],
             f"--out {tmp_path} is also an input folder; give another folder")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"tf-anonymize: error: {message}" or \
            err.splitlines()[-1].startswith(f"tf-anonymize: error: {message}"), err
        assert "Traceback" not in err


def test_an_odd_sized_clip_is_encoded_at_its_size(tmp_path, export_dir):
    """libx264 refuses 4:2:0 at an odd size (FFmpeg's "Generic error in an external library",
    which named the temporary file): such a clip is encoded without chroma subsampling, at
    its own size."""
    src = tmp_path / "odd.avi"
    with av.open(str(src), "w") as out:
        v = out.add_stream("mpeg4", rate=25)
        v.width, v.height, v.pix_fmt = 127, 95, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((95, 127, 3), 90 + 10 * i, np.uint8),
                                               format="rgb24")
            for packet in v.encode(frame):
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    assert main([str(src), "--out", str(tmp_path / "out"), "--model", str(export_dir),
                 "--quiet"]) == 0
    with av.open(str(tmp_path / "out" / "odd.avi")) as done:
        stream = done.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 127, 95)
        assert stream.codec_context.pix_fmt == "yuv444p"
        assert sum(1 for _ in done.decode(stream)) == 5


def test_pixel_format_and_encoder_checks():
    from tinyfaces_trt.anonymize.video import encoder_problem
    from tinyfaces_trt.anonymize.video_formats import output_pixel_format

    x264 = ["yuv420p", "yuvj420p", "yuv422p", "yuv444p"]
    assert output_pixel_format("yuv420p", 96, 64, x264) == "yuv420p"
    assert output_pixel_format("yuv420p", 127, 95, x264) == "yuv444p"
    assert output_pixel_format("yuv420p", 96, 63, x264) == "yuv444p"
    assert output_pixel_format("yuv422p", 96, 63, x264) == "yuv422p"  # full height: it copes
    assert output_pixel_format("yuv422p", 97, 64, x264) == "yuv444p"
    assert output_pixel_format("rgb24", 96, 64, x264) == "yuv420p"  # not the encoder's: 4:2:0
    assert output_pixel_format("yuv420p", 127, 95, ["yuv420p"], "mpeg4") == "yuv420p"
    vp9 = ["yuv420p", "yuv422p", "yuv444p"]  # libvpx-vp9 encodes 4:2:0 at odd sizes
    assert output_pixel_format("yuv420p", 127, 95, vp9, "libvpx-vp9") == "yuv420p"
    assert encoder_problem("libx264") is None and encoder_problem("mpeg4") is None
    assert encoder_problem("bogus") == "no such encoder in this FFmpeg build (PyAV's)"
    assert encoder_problem("aac") == "not a video encoder (it encodes audio)"


def test_a_bad_codec_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out"), "--codec", "bogus"])
    assert info.value.code == 2
    assert "--codec bogus: no such encoder in this FFmpeg build" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_crf_with_an_encoder_without_one_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "clip.mp4"), "--out", str(tmp_path / "out"), "--codec", "mpeg4",
              "--crf", "2"])
    assert info.value.code == 2
    assert ("--crf 2: encoder 'mpeg4' has no constant rate factor: leave out --crf, or use one "
            "of libx264,") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _clips(folder: Path, **names: str) -> list[str]:
    """Two-frame clips named by ``names`` (file name -> encoder), their paths."""
    folder.mkdir()
    for name, codec in names.items():
        make_video(folder / name.replace("_", "."), n=2, audio=False, codec=codec)
    return [str(folder / name.replace("_", ".")) for name in names]


def test_a_crf_past_a_default_encoders_range_is_refused_before_any_work(tmp_path, capsys):
    """--crf 60 fits the VP9 a .webm gets, not the x264 of .mp4, .avi and .mkv: the run
    stops before any video is made, naming those, not after making the .webm."""
    clips = _clips(tmp_path / "in", a_mp4="libx264", b_webm="libvpx-vp9", c_avi="libx264",
                   d_mkv="libx264")
    assert main([*clips, "--out", str(tmp_path / "out"), "--crf", "60", "-q"]) == 2
    err = capsys.readouterr().err
    a, _, c, d = clips
    assert (f"tf-anonymize: error: --crf 60: {a}, {c}, {d}: .mp4/.avi/.mkv files are encoded "
            "with libx264 when --codec is not given, and encoder 'libx264' takes a constant "
            "rate factor of 0 to 51; give a smaller --crf, or a --codec\n") in err
    assert err.count("error:") == 1
    assert not (tmp_path / "out").exists()


def test_a_codec_some_containers_cannot_hold_is_refused_before_any_work(tmp_path, capsys):
    clips = _clips(tmp_path / "in", a_mp4="libx264", b_webm="libvpx-vp9", c_avi="libx264")
    assert main([*clips, "--out", str(tmp_path / "out"), "--codec", "libx265", "-q"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"tf-anonymize: error: --codec libx265: {clips[1]}: .webm files cannot hold a libx265 "
        "stream",
        f"tf-anonymize: error: --codec libx265: {clips[2]}: .avi files cannot hold a libx265 "
        "stream"]
    assert lines[0].endswith("; leave out --codec (.webm files get libvpx-vp9) or give those "
                             "inputs a run of their own")
    assert "(.avi files get libx264)" in lines[1]
    assert not (tmp_path / "out").exists()


def test_encoding_problems_group_and_probe_without_writing(tmp_path, monkeypatch):
    from tinyfaces_trt.anonymize.video import container_problem, encoding_problems

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    container_problem.cache_clear()
    assert container_problem(".mkv", "libx265") is None
    assert container_problem(".MP4", "libvpx-vp9") is None
    assert "does not support" in container_problem(".m4v", "libvpx-vp9")
    assert container_problem(".webm", "bogus") is None  # the parser's to refuse
    assert list(tmp_path.iterdir()) == []  # no probe file or folder left
    mp4s = [(f"v{i}.mp4", ".mp4") for i in range(5)]
    assert encoding_problems(mp4s + [("w.webm", ".webm")], None, 60) == [
        "--crf 60: v0.mp4, v1.mp4, v2.mp4 and 2 more: .mp4 files are encoded with libx264 when "
        "--codec is not given, and encoder 'libx264' takes a constant rate factor of 0 to 51; "
        "give a smaller --crf, or a --codec"]
    assert encoding_problems(mp4s, None, 51) == []
    assert encoding_problems(mp4s + [("w.WEBM", ".WEBM")], "libvpx-vp9", 63) == []
    assert encoding_problems([("w.webm", ".webm")], None, 63) == []
    assert len(encoding_problems(mp4s + [("w.webm", ".webm")], "mpeg4", None)) == 1


def test_an_interrupted_open_leaves_no_decode_thread(tmp_path, monkeypatch):
    """Ctrl-C while the reader waits for the first frame: its decode thread, blocked on a
    full queue, and the open file were left behind."""
    import threading

    from tinyfaces_trt.anonymize import video

    src = tmp_path / "clip.mp4"
    make_video(src, n=6)
    monkeypatch.setattr(video, "_QUEUE_FRAMES", 1)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(video.VideoReader, "_get", interrupted)
    with pytest.raises(KeyboardInterrupt):
        video.VideoReader(src)
    left = [t for t in threading.enumerate() if t.name == "tf-decode"]
    for thread in left:  # one may still be on its way out
        thread.join(2)
    assert not any(thread.is_alive() for thread in left)


def test_an_interrupted_writer_start_leaves_no_encode_thread(tmp_path, monkeypatch):
    """Ctrl-C inside Thread.start (a signal breaks its wait) once the encode thread runs:
    the thread, which muxes into the open file, was left behind."""
    import threading

    from tinyfaces_trt.anonymize import video

    src = tmp_path / "clip.mp4"
    make_video(src, n=2)

    class InterruptedStart(threading.Thread):
        def start(self) -> None:
            super().start()
            raise KeyboardInterrupt

    with video.VideoReader(src) as reader:
        monkeypatch.setattr(video.threading, "Thread", InterruptedStart)
        with pytest.raises(KeyboardInterrupt):
            video.VideoWriter(tmp_path / "out.mp4", reader)
        monkeypatch.undo()
    left = [t for t in threading.enumerate() if t.name == "tf-encode"]
    for thread in left:  # one may still be on its way out
        thread.join(2)
    assert not any(thread.is_alive() for thread in left)


class _SlowFlush:
    """A writer whose encoder's final flush (x264's lookahead on a large clip: seconds, one
    call) gets Ctrl-C, then lasts until ``release`` is set and ``linger_s`` more; its
    container records whether each close came while that flush ran."""

    def __init__(self, writer, linger_s: float) -> None:
        import threading

        self.stream, self.container = writer.stream, writer.container
        self.release, self.linger_s = threading.Event(), linger_s
        self.busy, self.closes = False, []
        writer.stream, writer.container = self, self  # encode() and close() come here

    def encode(self, frame=None):
        import signal
        import threading
        import time

        if frame is None:
            self.busy = True
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            self.release.wait(10)
            time.sleep(self.linger_s)
        try:
            return self.stream.encode(frame)
        finally:
            self.busy = False

    def close(self):
        self.closes.append("under the encode" if self.busy else "after it")
        if not self.busy:  # closing under the encode would crash this test's process
            self.container.close()

    def __getattr__(self, name):
        return getattr(self.stream if name in ("pix_fmt", "width", "height", "codec_context")
                       else self.container, name)


@contextlib.contextmanager
def _interrupted_in_flush(tmp_path: Path, linger_s: float):
    """``(writer, flush)``, inside an open reader: a 3-frame clip written, then Ctrl-C during
    the :class:`_SlowFlush` of ``writer.finish()``."""
    from tinyfaces_trt.anonymize import video

    src = tmp_path / "clip.mp4"
    make_video(src, n=3)
    with video.VideoReader(src) as reader:
        writer = video.VideoWriter(tmp_path / "out.mp4", reader)
        flush = _SlowFlush(writer, linger_s)
        for frame in reader.frames():
            writer.write(frame.image, frame.pts)
        with pytest.raises(KeyboardInterrupt):
            writer.finish()
        yield writer, flush


def test_ctrl_c_during_the_final_flush_closes_the_file_only_after_the_encode(tmp_path):
    """Ctrl-C while finish() waits for the encoder's flush: the interrupted Thread.join marked
    the encode thread stopped, abort() then closed the container under the running encode
    and the process crashed (SIGSEGV)."""
    with _interrupted_in_flush(tmp_path, linger_s=0.3) as (writer, flush):
        flush.release.set()
        writer.abort()  # as process_file does
    assert flush.closes == ["after it"]


def test_a_flush_that_outlasts_the_stop_is_announced_and_left_alone(tmp_path, monkeypatch,
                                                                    caplog):
    """A flush still running after the wait: abort() says so and leaves the file open, and
    the encode thread, once its flush ends, no longer touches the reader's packets (the reader
    closes meanwhile, which frees them)."""
    import logging

    from tinyfaces_trt.anonymize import video

    monkeypatch.setattr(video, "ENCODER_STOP_NOTICE_S", 0.05)
    monkeypatch.setattr(video, "ENCODER_STOP_S", 0.1)
    with _interrupted_in_flush(tmp_path, linger_s=0.0) as (writer, flush):
        reader = writer.reader
        with caplog.at_level(logging.WARNING, logger=video.log.name):
            writer.abort()
        freed = object()  # stands for a packet of the closed reader
        reader.passthrough.put(freed)
        flush.release.set()
        assert writer._worker.wait(10)
        assert reader.passthrough.get_nowait() is freed and writer._error is None
    assert flush.closes == []
    assert "out.mp4: waiting for the encoder to finish its last frames" in caplog.text
    flush.container.close()
