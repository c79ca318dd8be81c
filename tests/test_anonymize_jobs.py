"""tf-anonymize's planning and reporting without a network or real video: outputs that would
replace inputs, videos of other containers, reruns after other options, per-file errors that
name the file, input problems as warnings, and the frame bar off a terminal."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinyfaces_trt import detector_record
from tinyfaces_trt.anonymize import cli, jobs, sidecar
from tinyfaces_trt.anonymize.jobs import (InputOverwriteError, Options, Task, is_done, naming,
                                          plan_tasks, process_file, render)
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.manifest import ModelIdentity
from tinyfaces_trt.core.progress import duration_text
from tinyfaces_trt.runtime.masks import MaskStyle

FACE = (8, 8, 40, 40)


class BoxDetector:
    """Finds one fixed face in every image; usable as the CLI's detector (a context manager),
    with the members of a Detector that tf-anonymize uses. It reports the network the CLI's
    arguments name: the untrained one without --weights."""

    config = DetectorConfig()
    identity = ModelIdentity(None, True, "the default network", variant="pytorch", depth=101,
                             seed=0, precision="fp32")

    def detect(self, image):
        return np.array([[*FACE, 0.9]], np.float32)

    def detect_batch(self, images):
        return [self.detect(image) for image in images]

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FailingDetector(BoxDetector):
    def __init__(self, message: str) -> None:
        self.message = message

    def detect(self, image):
        raise TinyFacesError(self.message)


def _photo(path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_cli(argv, monkeypatch, capsys, detector=None):
    monkeypatch.setattr(cli, "_make_detector", lambda args: detector or BoxDetector())
    status = cli.main([str(a) for a in argv])
    return status, capsys.readouterr().err


def test_a_link_to_a_missing_file_names_its_target(tmp_path, monkeypatch, capsys):
    """A dataset tree of links whose targets moved: each failed file says where its link
    points, whether the link was given or met in a folder (that one said only "No such file or
    directory (album/b.jpg)"); the rest of the folder is done, exit 1."""
    album = tmp_path / "album"
    album.mkdir()
    _photo(album / "a.jpg")
    (album / "b.jpg").symlink_to(tmp_path / "moved" / "b.jpg")
    status, err = _run_cli([album, "--out", tmp_path / "out"], monkeypatch, capsys)
    assert status == 1
    assert (f"tf-anonymize: error: {album / 'b.jpg'}: no such file (a link to the missing "
            f"{tmp_path / 'moved' / 'b.jpg'})") in err.splitlines()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "a.jpg.json"]
    status, err = _run_cli([album / "b.jpg", "--out", tmp_path / "out2"], monkeypatch, capsys)
    assert status == 1
    assert (f"tf-anonymize: error: {album / 'b.jpg'}: no such file or folder (a link to the "
            f"missing {tmp_path / 'moved' / 'b.jpg'})") in err.splitlines()


def test_a_folder_it_cannot_write_into_is_named_not_the_hidden_temporary_file(tmp_path,
                                                                            monkeypatch, capsys):
    """An --out sub-folder without write permission (run as a user; the test stands for it):
    the error named the hidden temporary file the copy is written under ("Permission denied
    (out/sub/.tf-tmp-16431.1a2b3c4d-p.jpg)"); it names the folder."""
    from tinyfaces_trt.runtime import imageio

    album = tmp_path / "album"
    (album / "sub").mkdir(parents=True)
    _photo(album / "sub" / "p.jpg")

    def refused(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(imageio, "save_image", refused)
    status, err = _run_cli([album, "--out", tmp_path / "out"], monkeypatch, capsys)
    assert status == 1
    assert (f"tf-anonymize: error: {album / 'sub' / 'p.jpg'}: cannot write into "
            f"{tmp_path / 'out' / 'sub'} (Permission denied)") in err.splitlines()
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []
    from tinyfaces_trt.core.files import temporary_folder

    assert temporary_folder(OSError(9, "Bad file descriptor", 999)) is None  # an fd: no name
    assert temporary_folder(OSError(2, "No such file", b"/o/.tf-tmp-1.ab-x.jpg")) == Path("/o")


# --- 1: an output that would replace an input ------------------------------------------------

def test_an_output_over_its_own_input_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """``--out`` the folder of the input file (video or image): exit 2, the originals untouched,
    no sidecar written, and the message says what to do."""
    footage = tmp_path / "footage"
    footage.mkdir()
    for name in ("clip.mp4", "b.mp4", "c.mp4"):
        (footage / name).write_bytes(b"original " + name.encode())
    photo = _photo(footage / "p.jpg")
    before = {p.name: _sha(p) for p in footage.iterdir()}
    status, err = _run_cli([footage / "clip.mp4", "--out", footage], monkeypatch, capsys)
    assert status == 2
    assert err.splitlines()[-1] == (f"tf-anonymize: error: {footage / 'clip.mp4'} would be "
                                    f"replaced by its anonymised copy in {footage}; give another --out")
    status, err = _run_cli([photo, "--out", footage], monkeypatch, capsys)
    assert status == 2 and f"{photo} would be replaced by its anonymised copy" in err
    # footage/*.mp4 --out footage: the first named, the others counted
    status, err = _run_cli([*sorted(footage.glob("*.mp4")), "--out", footage], monkeypatch, capsys)
    assert status == 2
    assert err.splitlines()[-1] == (f"tf-anonymize: error: {footage / 'b.mp4'} would be "
                                    f"replaced by its anonymised copy in {footage} (and 2 more "
                                    "input(s)); give another --out")
    assert {p.name: _sha(p) for p in footage.iterdir()} == before  # nothing written, no sidecar


def test_an_output_over_another_input_or_through_a_linked_out_is_refused(tmp_path):
    """The output of one input landing on another input of the run, and an --out reached through
    a symbolic link to the inputs' folder, are both refused; a distinct --out is not."""
    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "src" / "a.mp4").write_bytes(b"src")
    (tmp_path / "out" / "a.mp4").write_bytes(b"kept original")
    with pytest.raises(InputOverwriteError) as exc:
        plan_tasks([tmp_path / "src" / "a.mp4", tmp_path / "out" / "a.mp4"], tmp_path / "out")
    assert str(exc.value) == (f"{tmp_path / 'out' / 'a.mp4'} would be replaced by the anonymised "
                              f"copy of {tmp_path / 'src' / 'a.mp4'} in {tmp_path / 'out'}")
    # a folder input whose relative path lands on a file input
    (tmp_path / "src" / "cam").mkdir()
    (tmp_path / "src" / "cam" / "a.mp4").write_bytes(b"cam")
    with pytest.raises(InputOverwriteError, match="the anonymised copy of .*cam/a.mp4"):
        plan_tasks([tmp_path / "src" / "cam", tmp_path / "src" / "a.mp4"], tmp_path / "src")
    (tmp_path / "link").symlink_to(tmp_path / "src", target_is_directory=True)
    with pytest.raises(InputOverwriteError, match="replaced by its anonymised copy"):
        plan_tasks([tmp_path / "src" / "a.mp4"], tmp_path / "link", overwrite=True)
    tasks, _, _ = plan_tasks([tmp_path / "src" / "a.mp4"], tmp_path / "elsewhere")
    assert [Path(t.output) for t in tasks] == [tmp_path / "elsewhere" / "a.mp4"]


def test_an_input_linked_to_a_file_its_output_would_replace_is_refused(tmp_path, monkeypatch,
                                                                         capsys):
    """album/a.jpg -> ../photos/a.jpg with --out photos (folder walked, or the link given): the
    only real copy would be replaced by its anonymised copy: exit 2, nothing written."""
    (tmp_path / "photos").mkdir()
    (tmp_path / "album").mkdir()
    photo = _photo(tmp_path / "photos" / "a.jpg")
    link = tmp_path / "album" / "a.jpg"
    link.symlink_to("../photos/a.jpg")
    before = _sha(photo)
    for given in (tmp_path / "album", link):
        status, err = _run_cli([given, "--out", tmp_path / "photos"], monkeypatch, capsys)
        assert status == 2
        assert err.splitlines()[-1] == (
            f"tf-anonymize: error: {link} links to {photo}, which would be replaced by its "
            f"anonymised copy in {tmp_path / 'photos'}; give another --out")
        assert _sha(photo) == before and sorted(p.name for p in photo.parent.iterdir()) == ["a.jpg"]


def test_hard_and_symbolic_links_in_out_are_replaced_without_touching_the_input(
        tmp_path, monkeypatch, capsys):
    """An output entry that is a hard link to an input (the input keeps its own name) or a
    symbolic link to it (os.replace swaps the link) is no clash: not tf-anonymize's (no
    sidecar), it is left as it is, and --overwrite anonymises over it; the input's bytes are
    unchanged."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    hard, soft = _photo(src / "hard.png"), _photo(src / "soft.png")
    (out / "hard.png").hardlink_to(hard)
    (out / "soft.png").symlink_to(soft)
    before = {p: _sha(p) for p in (hard, soft)}
    status, err = _run_cli([src, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 1 and "0 done, 0 skipped, 2 failed" in err
    assert (out / "soft.png").is_symlink() and (out / "hard.png").stat().st_nlink == 2
    status, err = _run_cli([src, "--out", out, "-q", "--overwrite"], monkeypatch, capsys)
    assert status == 0 and "2 done, 0 skipped, 0 failed" in err
    assert {p: _sha(p) for p in (hard, soft)} == before
    for name in ("hard.png", "soft.png"):
        made = out / name
        assert not made.is_symlink() and made.stat().st_nlink == 1
        assert _sha(made) != before[src / name]  # the face blurred
    # a hard-linked input whose output would be its own entry still is one
    (src / "linked.png").hardlink_to(src / "soft.png")
    with pytest.raises(InputOverwriteError, match="soft.png would be replaced by its"):
        plan_tasks([src / "soft.png"], src, overwrite=True)


# --- 4: videos of other containers ---------------------------------------------------------

@pytest.fixture(scope="module")
def mpegts() -> bytes:
    """A real MPEG-TS file: three 32 x 32 mpeg2video frames written by PyAV."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=25)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def test_videos_of_other_containers_are_errors_not_left_alone(tmp_path, mpegts):
    src = tmp_path / "walk"
    src.mkdir()
    names = ("a.mp4", "camcorder.MTS", "notes.txt", "old.mpg", "phone.3gp")
    for name in names:
        (src / name).write_bytes(b"")
    (src / "dashcam.ts").write_bytes(mpegts)
    tasks, _, errors = plan_tasks([src, src / "dashcam.ts"], tmp_path / "out")
    assert [Path(t.source).name for t in tasks] == ["a.mp4"]

    def refused(name: str, suffix: str) -> tuple[str, str]:
        stem = Path(name).stem
        return (str(src / name), f"{src / name}: not anonymised: {suffix} videos are not "
                f"supported; remux it to .mkv (ffmpeg -i {name} -c copy {stem}.mkv) or convert "
                "it to one of .mp4, .mov, .mkv, .webm, .avi, .m4v")

    assert errors == [refused("camcorder.MTS", ".mts"), refused("dashcam.ts", ".ts"),
                      refused("old.mpg", ".mpg"), refused("phone.3gp", ".3gp"),
                      refused("dashcam.ts", ".ts")]


def test_a_folder_with_other_videos_exits_1_and_names_each(tmp_path, monkeypatch, capsys, mpegts):
    src = tmp_path / "walk"
    src.mkdir()
    _photo(src / "a.png")
    (src / "dash cam.ts").write_bytes(mpegts)
    status, err = _run_cli([src, "--out", tmp_path / "out", "-q"], monkeypatch, capsys)
    assert status == 1
    assert f"tf-anonymize: error: {src / 'dash cam.ts'}: not anonymised: .ts videos are not " \
        "supported; remux it to .mkv (ffmpeg -i 'dash cam.ts' -c copy 'dash cam.mkv')" in err
    assert "1 done, 0 skipped, 1 failed" in err


def test_code_and_music_files_sharing_a_video_suffix_are_not_videos(tmp_path, monkeypatch,
                                                                      capsys):
    """TypeScript app.ts, Go's go.mod, a tracker .mod song: left alone in a folder (exit 0),
    an unknown file type when named; MPEG-PS, RealMedia and 192-byte-packet M2TS heads are
    videos, also under those suffixes."""
    site = tmp_path / "site"
    site.mkdir()
    _photo(site / "logo.png")
    (site / "app.ts").write_text("export const answer = 42;\n")
    (site / "go.mod").write_text("module example.com/site\n\ngo 1.22\n")
    (site / "song.mod").write_bytes(b"space debris" + bytes(1068) + b"M.K." + bytes(600))
    status, err = _run_cli([site, "--out", tmp_path / "out", "-q"], monkeypatch, capsys)
    assert status == 0
    assert "error" not in err and "1 done, 0 skipped, 0 failed" in err
    assert plan_tasks([site / "app.ts"], tmp_path / "out")[2] == [
        (str(site / "app.ts"), f"{site / 'app.ts'}: unknown file type .ts; expected .jpg, .jpeg, "
         ".png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm, .mp4, .mov, .mkv, .webm, .avi, .m4v")]
    m2ts = bytearray(600)
    m2ts[4::192] = b"G" * len(m2ts[4::192])
    heads = {"camcorder.mod": b"\x00\x00\x01\xba" + bytes(60), "movie.rm": b".RMF" + bytes(60),
             "camcorder.ts": bytes(m2ts)}
    for name, head in heads.items():
        (site / name).write_bytes(head)
    errors = plan_tasks([site], tmp_path / "out")[2]
    assert [(Path(path).name, "videos are not supported" in message) for path, message in errors] \
        == [("camcorder.mod", True), ("camcorder.ts", True), ("movie.rm", True)]


# --- 11: an output made with other options is not skipped as done ----------------------------

def test_a_review_output_is_made_again_by_an_anonymising_run(tmp_path, monkeypatch, capsys):
    """--mode none --draw, then --mode blur into the same --out: the review copy (faces visible)
    is replaced by a blurred one, not skipped; a third identical run skips it."""
    photo = _photo(tmp_path / "p.png")
    out = tmp_path / "out"
    status, _ = _run_cli([photo, "--out", out, "--mode", "none", "--draw"], monkeypatch, capsys)
    assert status == 0
    from PIL import Image

    x1, y1, x2, y2 = FACE
    original = np.asarray(Image.open(photo))[y1 + 6:y2 - 6, x1 + 6:x2 - 6]
    assert np.array_equal(np.asarray(Image.open(out / "p.png"))[y1 + 6:y2 - 6, x1 + 6:x2 - 6],
                          original)  # the face left as it is (inside the drawn box)
    status, err = _run_cli([photo, "--out", out, "--mode", "blur"], monkeypatch, capsys)
    assert status == 0
    assert (f"tf-anonymize: {photo}: making {out / 'p.png'} again: it was made with mode none "
            "(now blur), draw true (now false)") in err.splitlines()
    assert "1 done, 0 skipped, 0 failed" in err
    blurred = np.asarray(Image.open(out / "p.png"))[y1 + 6:y2 - 6, x1 + 6:x2 - 6]
    assert np.abs(blurred.astype(int) - original).mean() > 20
    assert json.loads((out / "p.png.json").read_text())["options"]["style"]["mode"] == "blur"
    status, err = _run_cli([photo, "--out", out, "--mode", "blur"], monkeypatch, capsys)
    assert status == 0 and "0 done, 1 skipped, 0 failed" in err


def _written(output: Path) -> dict:
    """The sidecar fields of this version's output ``output`` as it is now (a rerun compares
    them): its masking revision, its size and sha256."""
    return {"masks_revision": sidecar.MASKS_REVISION, "output_file": sidecar.output_record(output)}


def _sidecar(path: Path, source: Path, options: Options | None) -> None:
    record = {"input": str(source), "resolved": str(source.resolve()),
              "input_identity": jobs.input_identity(source),
              **_written(path.with_suffix(""))}
    if options is not None:
        record["options"] = jobs._jsonable(dataclasses.asdict(options))
    path.write_text(json.dumps(record))


def test_which_options_redo_an_existing_output(tmp_path):
    """Pixel-changing options per kind redo; others (batch, review band, progress) and, for an
    image, the video-only ones do not; a sidecar recording no options redoes."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name in ("v.mp4", "p.jpg"):
        (src / name).write_bytes(b"in")
        (out / name).write_bytes(b"made before")
    made = Options(hold=5, crf=20)

    def plan(options: Options) -> dict[str, str | None]:
        tasks, skipped, _ = plan_tasks([src / "v.mp4", src / "p.jpg"], out, options=options)
        assert all(s.status == "skipped" for s in skipped)
        return {Path(t.source).name: t.redo for t in tasks}

    for name in ("v.mp4", "p.jpg"):
        _sidecar(out / f"{name}.json", src / name, made)
    assert plan(made) == {}
    assert plan(dataclasses.replace(made, batch=8, progress=True)) == {}
    # another review band keeps the output only where the sidecar records the frames' scores
    # (test_anonymize_reruns); this one records none
    assert plan(dataclasses.replace(made, review_band=0.3))["v.mp4"].startswith(
        "it was made with review_band 0.1 (now 0.3), and its sidecar does not record")
    assert plan(dataclasses.replace(made, hold=3, crf=None)) == {
        "v.mp4": "it was made with hold 5 (now 3), crf 20 (now default)"}
    pixelate = dataclasses.replace(made, style=MaskStyle(mode="pixelate", scale=1.3, cells=8))
    assert plan(pixelate) == {
        "v.mp4": "it was made with mode blur (now pixelate), cells 5 (now 8)",
        "p.jpg": "it was made with mode blur (now pixelate), cells 5 (now 8)"}
    task = Task(str(src / "v.mp4"), str(out / "v.mp4"), str(out / "v.mp4.json"), "video")
    assert is_done(task, made) and not is_done(task, pixelate) and is_done(task)
    _sidecar(out / "v.mp4.json", src / "v.mp4", None)
    assert plan(made) == {"v.mp4": f"its sidecar {out / 'v.mp4.json'} records no options"}
    assert not is_done(task, made)
    assert plan_tasks([src / "v.mp4"], out, overwrite=True, options=made)[0][0].redo is None


class WeightsDetector(BoxDetector):
    """The detector --weights F and --min-face/--prob-thresh build (as the sidecar records it)."""

    def __init__(self, weights: Path, **config) -> None:
        self.identity = ModelIdentity(_sha(weights), False, f"checkpoint {weights}",
                                      precision="fp32")
        self.config = DetectorConfig(**config)


def test_another_network_or_detector_setting_redoes_an_output(tmp_path, monkeypatch, capsys):
    """An output made by the untrained network with --min-face 200 (faces missed) is made again
    by a run with trained weights and no --min-face, and by other weights or thresholds; the
    same network and settings skip it."""
    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    first, second = tmp_path / "first.pth", tmp_path / "second.pth"
    first.write_bytes(b"trained weights")
    second.write_bytes(b"other weights")
    runs = [([], BoxDetector(), "done"),  # untrained, then --min-face 200 on it
            (["--min-face", "200"], None, "min_face default (now 200.0)"),
            (["--weights", first], WeightsDetector(first),
             f"model untrained (now sha256 {_sha(first)[:12]}), min_face 200.0 (now default)"),
            (["--weights", first], WeightsDetector(first), "skipped"),
            (["--weights", second, "--prob-thresh", "0.7"],
             WeightsDetector(second, prob_thresh=0.7),
             f"model sha256 {_sha(first)[:12]} (now sha256 {_sha(second)[:12]}), "
             "prob_thresh 0.5 (now 0.7)"),
            ([], BoxDetector(), f"model sha256 {_sha(second)[:12]} (now untrained), "
             "prob_thresh 0.7 (now 0.5)")]
    for argv, detector, expected in runs:
        if detector is None:
            detector = BoxDetector()
            detector.config = DetectorConfig(min_face=200.0)
        status, err = _run_cli([photo, "--out", out, *argv], monkeypatch, capsys, detector)
        assert status == 0
        if expected == "skipped":
            assert "0 done, 1 skipped, 0 failed" in err
        elif expected != "done":
            assert (f"tf-anonymize: {photo}: making {out / 'p.png'} again: it was made with "
                    f"{expected}") in err.splitlines(), err
            assert "1 done, 0 skipped, 0 failed" in err
    side = json.loads((out / "p.png.json").read_text())
    assert (side["model"]["untrained"], side["config"]["prob_thresh"]) == (True, 0.5)


def test_the_expected_detector_of_an_export_folder_and_of_unknown_weights(tmp_path):
    """--model DIR: the manifest's weights sha256 and config (its thresholds, overridden by the
    options); a folder recording no weights sha256 is unknown: its outputs are made again."""
    from tinyfaces_trt.core.manifest import write_manifest

    (tmp_path / "model.onnx").write_bytes(b"onnx")
    write_manifest(tmp_path, config=DetectorConfig(prob_thresh=0.7),
                   files={"onnx_fp32": "model.onnx"}, opset=18,
                   weights={"path": "/w.pth", "sha256": "ab" * 32})
    record = detector_record.detector_record(tmp_path, None, {"min_face": 24.0, "nms_thresh": None})
    assert record == detector_record.DetectorRecord(
        {"weights_sha256": "ab" * 32, "untrained": False, "variant": "pytorch", "depth": None,
         "seed": None, "precision": None},
        {"prob_thresh": 0.7, "nms_thresh": 0.3, "min_face": 24.0, "max_face": None,
         "pyramid": "adaptive"}, {"pyramid": "adaptive"})
    assert detector_record.detector_record(None, None, precision="fp32").model == {
        "weights_sha256": None, "untrained": True, "variant": "pytorch", "depth": 101, "seed": 0,
        "precision": "fp32"}
    write_manifest(tmp_path, config=DetectorConfig(), files={"onnx_fp32": "model.onnx"}, opset=18)
    unknown = detector_record.detector_record(tmp_path, None)
    assert unknown.model is None
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    _photo(src / "p.png")
    (out / "p.png").write_bytes(b"made before")
    record = {"input": str(src / "p.png"), "resolved": str((src / "p.png").resolve()),
              "input_identity": jobs.input_identity(src / "p.png"),
              "model": {"weights_sha256": None, "untrained": False, "source": "export folder"},
              "config": unknown.config, "options": jobs._jsonable(dataclasses.asdict(Options())),
              **_written(out / "p.png")}
    (out / "p.png.json").write_text(json.dumps(record))
    task = plan_tasks([src / "p.png"], out, options=Options(), detector=unknown)[0][0]
    assert task.redo == "it was made with model unknown (now unknown)"
    assert not is_done(task, Options(), unknown) and is_done(task, Options())


def test_a_real_detector_of_a_bare_runner_records_no_model_and_its_own_settings(tmp_path):
    """The fakes above stand for a Detector: it has every member they give tf-anonymize. One
    built from a bare runner has no identity (the sidecar's model is null); the sidecar records
    its config, and the review band starts at its threshold."""
    from tinyfaces_trt.core.runner import RunnerBase
    from tinyfaces_trt.runtime.pipeline import Detector

    class Silent(RunnerBase):  # logits far below any threshold: no detections
        def run(self, x):
            return np.full((x.shape[0], 125, -(-x.shape[2] // 8), -(-x.shape[3] // 8)), -20.0,
                           np.float32)

    for member in ("detect", "detect_batch", "config", "identity"):
        assert hasattr(Detector, member), member
    detector = Detector(Silent(), DetectorConfig(prob_thresh=0.25, min_face=10.0))
    task = plan_tasks([_photo(tmp_path / "p.png")], tmp_path / "out")[0][0]
    assert process_file(detector, task, Options(review_band=0.5)).status == "done"
    side = json.loads(Path(task.sidecar).read_text())
    assert side["model"] is None
    assert side["config"] == {"variant": "pytorch", "prob_thresh": 0.25, "nms_thresh": 0.3,
                              "min_face": 10.0, "max_face": None, "pyramid": "adaptive",
                              "size_refinement": 2.0}
    assert side["review"] == {"band": [0.25, 0.75], "frames": []}
    assert side["frames"] == [{"index": 0, "time": None, "faces": []}]


# --- 10: errors name the file -------------------------------------------------------------

def test_a_file_error_names_the_input(tmp_path):
    photo = _photo(tmp_path / "p.png")
    task = plan_tasks([photo], tmp_path / "out")[0][0]
    message = "a batch takes images of one size, got [(48, 64, 3), (48, 96, 3)]"
    result = process_file(FailingDetector(message), task, Options())
    assert (result.status, result.error) == ("failed", f"{photo}: {message}")
    result = process_file(FailingDetector(f"{photo}: cannot read"), task, Options())
    assert result.error == f"{photo}: cannot read"  # named already: not twice
    assert naming("./a.mp4", "a.mp4: holds no video stream") == "a.mp4: holds no video stream"
    assert naming("a.mp4", "out/a.mp4: encoder 'x': gone") == "a.mp4: out/a.mp4: encoder 'x': gone"
    assert not (tmp_path / "out" / "p.png").exists()


# --- 6 and 15c: the reader's problems as warnings; the frame bar off a terminal --------------

class StubReader:
    """Three 48 x 64 frames; ``problems`` known once they are read, as VideoReader's."""

    def __init__(self, path, max_pixels=None) -> None:
        self.info = SimpleNamespace(frames=4, to_dict=lambda: {
            "frames": 4, "upright_width": 64, "upright_height": 48})
        self.problems: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def frames(self):
        for i in range(3):
            yield SimpleNamespace(index=i, pts=i, time=i / 25, image=np.zeros((48, 64, 3), np.uint8))
        self.problems.extend(["1 undecodable packet skipped", "3 frames decoded, 4 announced"])


class StubWriter:
    def __init__(self, path, reader, codec, crf, name, keep_audio=False,
                 keep_metadata=False) -> None:
        self.path, self.frames, self.dropped = Path(path), 0, ["stream 2 (data) not copied"]
        self.withheld = None

    def write(self, image, pts) -> None:
        self.frames += 1

    def finish(self) -> None:
        self.path.write_bytes(b"%d frames" % self.frames)

    def abort(self) -> None:
        pass


def test_input_problems_are_warned_counted_and_kept_in_the_sidecar(tmp_path, monkeypatch, capsys):
    from tinyfaces_trt.anonymize import video

    monkeypatch.setattr(video, "VideoReader", StubReader)
    monkeypatch.setattr(video, "VideoWriter", StubWriter)
    (tmp_path / "cctv.avi").write_bytes(b"")
    task = plan_tasks([tmp_path / "cctv.avi"], tmp_path / "out")[0][0]
    result = process_file(BoxDetector(), task, Options(progress=True))
    assert result.status == "done" and result.frames == 3
    assert result.warnings == ("stream 2 (data) not copied", "1 undecodable packet skipped",
                               "3 frames decoded, 4 announced")
    side = json.loads(Path(task.sidecar).read_text())
    assert side["input_problems"] == ["1 undecodable packet skipped", "3 frames decoded, 4 announced"]
    assert side["dropped_streams"] == ["stream 2 (data) not copied"]
    assert "\r" not in capsys.readouterr().err  # stderr is no terminal here: no frame bar
    cli._report(result, quiet=True)
    assert cli._summary([result], [], 0.0) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [f"tf-anonymize: warning: {task.source}: {w}" for w in result.warnings]
    assert err[3].startswith("tf-anonymize: 1 done (1 with warnings), 0 skipped, 0 failed in ")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_frame_bar_on_a_terminal_plain_lines_elsewhere_nothing_when_quiet(monkeypatch):
    task = Task("a.mp4", "out/a.mp4", "out/a.mp4.json", "video")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(jobs._progress_bar(task, 10, Options(progress=True)), jobs.ProgressLines)
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = jobs._progress_bar(task, 10, Options(progress=True))
    assert not bar.disable and "a.mp4:   0%|" in sys.stderr.getvalue()
    bar.close()
    for stream in (io.StringIO(), Terminal()):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = jobs._progress_bar(task, 10, Options(progress=False))  # --quiet
        bar.update(10)
        bar.close()
        assert stream.getvalue() == ""


class Clock:
    """Seconds that pass only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_progress_is_a_plain_line_per_interval():
    """nohup or a log file: no bar (its carriage returns), but one line per interval, not
    per frame, with frames done, frames/s over the file so far and the time left."""
    task = Task("in/dash cam.mp4", "out/dash cam.mp4", "out/dash cam.mp4.json", "video")
    log, clock = io.StringIO(), Clock()
    bar = jobs._progress_bar(task, 4500, Options(progress=True), stream=log, clock=clock,
                             interval=30)
    start = clock.now
    for _ in range(40):  # 40 frames in 20 s: no line yet
        clock.now += 0.5
        bar.update(1)
    assert log.getvalue() == ""
    clock.now = start + 30
    bar.update(1)  # 41 frames in 30 s: a line
    clock.now = start + 45
    for _ in range(1158):  # none until 30 s more have passed
        bar.update(1)
    clock.now = start + 60
    bar.update(1)  # 1200 frames in 60 s
    bar.close()
    assert log.getvalue().splitlines() == [
        "tf-anonymize: dash cam.mp4: 41/4500 frames, 1.4 frames/s, ETA 54m23s",
        "tf-anonymize: dash cam.mp4: 1200/4500 frames, 20.0 frames/s, ETA 2m45s"]
    assert "\r" not in log.getvalue()
    unknown, clock = io.StringIO(), Clock()  # no frame count: frames and rate
    bar = jobs._progress_bar(task, 0, Options(progress=True), stream=unknown, clock=clock,
                             interval=30)
    clock.now += 7200
    bar.update(9000)
    assert unknown.getvalue() == "tf-anonymize: dash cam.mp4: 9000 frames, 1.2 frames/s\n"
    assert [duration_text(s) for s in (0.4, 59.6, 131, 3599, 3600, 3 * 3600 + 65)] == [
        "0s", "1m00s", "2m11s", "59m59s", "1h00m", "3h01m"]


def test_a_video_in_a_log_gets_progress_lines_unless_quiet(tmp_path, monkeypatch, capsys):
    from tinyfaces_trt.anonymize import video

    monkeypatch.setattr(video, "VideoReader", StubReader)
    monkeypatch.setattr(video, "VideoWriter", StubWriter)
    monkeypatch.setattr(jobs, "PROGRESS_LINE_INTERVAL_S", 0.0)  # a line per frame
    (tmp_path / "cctv.avi").write_bytes(b"")
    task = plan_tasks([tmp_path / "cctv.avi"], tmp_path / "out")[0][0]
    assert process_file(BoxDetector(), task, Options(progress=True)).status == "done"
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == [
        f"tf-anonymize: cctv.avi: {n}/4 frames" for n in (1, 2, 3)]
    assert process_file(BoxDetector(), task, Options(progress=False)).status == "done"
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_terminal_reporting_no_size_still_gets_a_bar(monkeypatch):
    """A pseudo-terminal never sized reports 0 x 0: tqdm's own size (-1 x -1) hid the bar."""
    import fcntl
    import struct
    import termios

    leader, follower = os.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        assert os.get_terminal_size(follower) == (0, 0)

        class Unsized(Terminal):
            def fileno(self) -> int:
                return follower

        monkeypatch.setattr(sys, "stderr", Unsized())
        task = Task("a.mp4", "out/a.mp4", "out/a.mp4.json", "video")
        bar = jobs._progress_bar(task, 10, Options(progress=True))
        bar.update(10)
        bar.refresh()
        shown = sys.stderr.getvalue()
        bar.close()
    finally:
        os.close(leader)
        os.close(follower)
    assert "a.mp4: 100%|" in shown and "10/10" in shown


def test_an_out_that_is_a_file_exits_1_as_the_help_says(tmp_path, monkeypatch, capsys):
    """tf-anonymize, tf-detect, tf-export and the benchmarks all end with 1 for an --out that
    cannot be used (the shared check): --help says so, besides 2 for bad arguments."""
    photo = _photo(tmp_path / "p.png")
    blocker = tmp_path / "h264.mp4"
    blocker.write_bytes(b"a video")
    status, err = _run_cli([photo, "--out", blocker], monkeypatch, capsys)
    assert status == 1 and err.splitlines() == [
        f"tf-anonymize: error: --out {blocker} exists and is not a folder; give a folder"]
    assert blocker.read_bytes() == b"a video"
    text = " ".join(cli.build_parser().format_help().split())
    assert ("the others finish), or the run could not start (an --out that is a file or cannot "
            "be created or written, a --model or --weights that cannot be read: as tf-detect "
            "and tf-export), 2 bad command-line arguments") in text


def test_the_ray_run_redoes_outputs_of_other_options_and_names_failed_files(tmp_path, monkeypatch,
                                                                           capsys):
    """--ray's resume check is the planner's (an output made with --mode none is not done),
    and a failure the pool reports (a lost worker) names its file."""
    from tinyfaces_trt import detectors
    from tinyfaces_trt.scaleout import pool

    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"
    review = Options(style=MaskStyle(mode="none"), draw=True)
    assert process_file(BoxDetector(), plan_tasks([photo], out)[0][0], review).status == "done"
    seen = []

    def run_tasks(tasks, spec, process, options, *, is_done, on_result, **_):
        seen.extend(is_done(task, options) for task in tasks)
        pooled = [SimpleNamespace(task=task, status="failed", value=None,
                                  error="worker lost 3 time(s)") for task in tasks]
        for result in pooled:
            on_result(result)
        return pooled

    monkeypatch.setattr(pool, "run_tasks", run_tasks)
    # the untrained network's spec, as far as the driver reads it (its config's check)
    spec = SimpleNamespace(model_dir=None, weights=None, variant=None, config_overrides=())
    monkeypatch.setattr(detectors, "spec_from_arguments", lambda *a, **k: spec)
    args = SimpleNamespace(overwrite=False, quiet=True, ray="", workers=None)
    for options, done in ((Options(), False), (review, True)):
        seen.clear()
        assert cli._run_on_ray(args, plan_tasks([photo], out, overwrite=True)[0], options,
                               [], [], 0.0) == 1
        assert seen == [done]
    # and the planner's detector rule: the same options by another network are not done
    for expected, done in ((detector_record.detector_record(None, None), True),
                           (detector_record.detector_record(None, None, {"min_face": 200.0}), False)):
        seen.clear()
        cli._run_on_ray(args, plan_tasks([photo], out, overwrite=True)[0], review, [], [], 0.0,
                        expected)
        assert seen == [done]
    assert f"tf-anonymize: error: {photo}: worker lost 3 time(s)" in capsys.readouterr().err


def test_masks_of_one_based_boxes_cover_the_face_pixels():
    """The matconvnet variant's boxes are 1-based (the release's convention): masks placed
    them as 0-based, 1 px right/down of the face, whose left column and top row stayed
    visible (and at the border, where its boxes are clipped to 1, the whole first row)."""
    from tinyfaces_trt.anonymize.tracking import FaceMask, FrameMasks
    from tinyfaces_trt.runtime.masks import pixel_boxes

    np.testing.assert_array_equal(pixel_boxes(np.array([[1, 1, 20, 30, 0.9]]), 1.0),
                                  [[0, 0, 19, 29, 0.9]])
    image = np.full((40, 40, 3), 255, np.uint8)
    frame = FrameMasks(0, [FaceMask(0, (1.0, 1.0, 20.0, 20.0), 0.9, "detected")])
    solid = Options(style=MaskStyle(mode="solid", scale=1.0))
    out = render(image, frame, solid, base=1.0)  # pixels 0..19 of the face
    changed = (out != image).any(axis=2)
    assert changed[0, 0] and changed[19, 19] and not changed[20, 20]
    assert changed.sum() == 20 * 20
    assert (render(image, frame, solid) != image).any(axis=2)[20, 20]  # 0-based: 1..20


def _copy_of(tmp_path, name, image, options=None, **save):
    """tf-anonymize's copy of ``image`` (a Pillow image) saved as ``name``, with BoxDetector's
    face masked: (input as Pillow reads it, output likewise)."""
    from PIL import Image

    source = tmp_path / name
    image.save(source, **save)
    task = plan_tasks([source], tmp_path / f"out_{name}")[0][0]
    assert process_file(BoxDetector(), task, options or Options(progress=False)).status == "done"
    return Image.open(source), Image.open(task.output)


def _outside_face(array):
    x1, y1, x2, y2 = FACE
    keep = np.ones(array.shape[:2], bool)
    keep[max(0, y1 - 10):y2 + 10, max(0, x1 - 10):x2 + 10] = False  # (mask-scale 1.3)
    return array[keep]


def test_an_image_copy_keeps_its_alpha_channel_and_grey_levels(tmp_path):
    """A PNG logo's transparent half came out opaque (its hidden colour shown), a grey
    picture as RGB: the copy keeps the alpha channel and grey levels where its format holds
    them; only the face's pixels change."""
    from PIL import Image

    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    rgba[:, :40, 3] = 0
    source, copy = _copy_of(tmp_path, "logo.png", Image.fromarray(rgba))
    assert copy.mode == "RGBA"
    got = np.array(copy)
    np.testing.assert_array_equal(got[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(_outside_face(got), _outside_face(rgba))
    face = (slice(FACE[1], FACE[3]), slice(FACE[0], FACE[2]), slice(0, 3))
    assert np.any(got[face] != rgba[face])

    gray = rng.integers(0, 256, (64, 80), dtype=np.uint8)
    for name in ("gray.png", "gray.tif", "gray.bmp", "gray.pgm"):
        _, copy = _copy_of(tmp_path, name, Image.fromarray(gray))
        assert copy.mode == "L", name
        np.testing.assert_array_equal(_outside_face(np.array(copy)), _outside_face(gray))
    _, copy = _copy_of(tmp_path, "gray.jpg", Image.fromarray(gray))
    assert copy.mode == "L"
    _, copy = _copy_of(tmp_path, "gray_alpha.png", Image.fromarray(np.dstack([gray, gray // 2])))
    assert copy.mode == "LA"
    np.testing.assert_array_equal(np.array(copy)[..., 1], gray // 2)
    # drawn boxes keep their colours
    _, copy = _copy_of(tmp_path, "drawn.png", Image.fromarray(gray),
                       Options(progress=False, draw=True))
    assert copy.mode == "RGB"
    # a palette's transparent colour: an alpha channel in the copy
    palette = Image.fromarray(gray).convert("P")
    source, copy = _copy_of(tmp_path, "palette.png", palette,
                            transparency=int(np.array(palette)[0, 0]))
    assert copy.mode == "RGBA"
    np.testing.assert_array_equal(np.array(copy)[..., 3], np.array(source.convert("RGBA"))[..., 3])
    assert 0 < np.count_nonzero(np.array(copy)[..., 3] == 0) < gray.size


def test_as_stored_keeps_only_what_the_format_holds():
    from tinyfaces_trt.runtime.imageio import StoredImage, as_stored

    rgb = np.full((4, 6, 3), 90, np.uint8)
    alpha = np.full((4, 6), 7, np.uint8)
    gray = StoredImage(rgb, 1, alpha, True)
    assert as_stored(rgb, gray, ".webp").shape == (4, 6, 4)  # WebP: no grey + alpha
    assert as_stored(rgb, gray, ".PNG").shape == (4, 6, 2)
    assert as_stored(rgb, gray, ".jpg").shape == (4, 6)  # JPEG: no alpha
    assert as_stored(rgb, gray, ".gif").shape == (4, 6, 4)
    assert as_stored(rgb, gray, ".png", colour=True).shape == (4, 6, 4)
    assert as_stored(rgb, StoredImage(rgb, 1, None, False), ".pgm").shape == (4, 6)
    assert as_stored(rgb, StoredImage(rgb, 1, None, False), ".png") is rgb
    assert (as_stored(rgb, gray, ".png")[..., 0] == 90).all()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_folder_where_an_output_goes_is_an_error_that_leaves_nothing(
        tmp_path, monkeypatch, capsys, overwrite):
    """A folder named as the copy: --overwrite failed writing it, left a temporary audit JSON
    under the final name (every rerun then 'made it again') and called the folder an earlier
    output."""
    _photo(tmp_path / "a.jpg")
    out = tmp_path / "out"
    (out / "a.jpg").mkdir(parents=True)
    status, err = _run_cli([tmp_path / "a.jpg", "--out", out, *overwrite], monkeypatch, capsys)
    assert status == 1
    assert (f"tf-anonymize: error: {tmp_path / 'a.jpg'}: not anonymised: {out / 'a.jpg'} is a "
            "folder, where its copy would go; move it away or give another --out") in err
    assert [p.name for p in out.iterdir()] == ["a.jpg"] and not any((out / "a.jpg").iterdir())


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_unreadable_audit_json_is_an_error_not_a_second_copy(
        tmp_path, monkeypatch, capsys, overwrite):
    """A damaged audit JSON beside a finished copy: the rerun wrote a second copy as a_2.jpg,
    saying nothing."""
    _photo(tmp_path / "a.jpg")
    out = tmp_path / "out"
    assert _run_cli([tmp_path / "a.jpg", "--out", out], monkeypatch, capsys)[0] == 0
    (out / "a.jpg.json").write_text("{bad")
    status, err = _run_cli([tmp_path / "a.jpg", "--out", out, *overwrite], monkeypatch, capsys)
    assert status == 1
    assert (f"tf-anonymize: error: {tmp_path / 'a.jpg'}: not anonymised: {out / 'a.jpg.json'} "
            "cannot be read as an audit JSON (Expecting property name enclosed in double "
            f"quotes: line 1 column 2 (char 1)), so whether {out / 'a.jpg'} is this input's "
            "copy cannot be told; repair that file, or move it away with a.jpg\n") in err
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "a.jpg.json"]
    (out / "a.jpg").unlink()
    (out / "a.jpg.json").unlink()
    (out / "a.jpg.json").mkdir()
    status, err = _run_cli([tmp_path / "a.jpg", "--out", out, *overwrite], monkeypatch, capsys)
    assert status == 1
    assert (f"{out / 'a.jpg.json'} cannot be read as an audit JSON (Is a directory) and may be "
            "another input's; repair it or move it away\n") in err
    assert [p.name for p in out.iterdir()] == ["a.jpg.json"]
