"""One file fails, the batch goes on: tf-anonymize and tf-detect on a file this process runs
out of memory on, a video whose frames are over the pixel limit, an output folder that is a
link out of ``--out``, and (tf-detect) an output file no detections JSON shows it wrote. Stand-in
detectors, no network."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from helpers_cli import run_tf_detect
from test_anonymize_jobs import BoxDetector
from tinyfaces_trt.anonymize import cli as anonymize_cli
from tinyfaces_trt.anonymize import video
from tinyfaces_trt.anonymize.jobs import Options, plan_tasks, process_file
from tinyfaces_trt.cli import detect as detect_cli
from tinyfaces_trt.cli.detect_plan import DetectOptions, ImageJob, task_plan, write_outputs
from tinyfaces_trt.cli.detect_plan import plan_tasks as detect_plan_tasks
from tinyfaces_trt.cli.detect_ray import process_detect_task
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.core.files import TEMP_PREFIX
from tinyfaces_trt.scaleout.pool import DetectorWorker

#: What numpy says when the resize of a 13000 x 13000 image cannot get its memory.
NUMPY_OOM = ("Unable to allocate 1.89 GiB for an array with shape (13000, 39000) and data "
             "type float32")


class StandIn(BoxDetector):
    """A detector finding one face in every image, but raising numpy's MemoryError for images
    ``oom_width`` pixels wide; the members of a Detector that tf-anonymize and tf-detect use."""

    coordinate_base = 0.0

    def __init__(self, oom_width: int | None = None, max_pixels: int | None = None) -> None:
        self.oom_width = oom_width
        self.max_pixels = max_pixels
        self.seen: list[tuple[int, int]] = []

    def detect(self, image):
        self.seen.append(image.shape[:2])
        if image.shape[1] == self.oom_width:
            raise MemoryError(NUMPY_OOM)
        return np.array([[4, 4, 20, 20, 0.9]], np.float32)


def _photo(path: Path, width: int = 64, height: int = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(width)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def _three(folder: Path) -> Path:
    """a.png, b.png (70 px wide: the stand-in runs out of memory on it), c.png."""
    _photo(folder / "a.png")
    _photo(folder / "b.png", width=70, height=50)
    _photo(folder / "c.png")
    return folder


def _anonymize(argv, monkeypatch, capsys, detector) -> tuple[int, str]:
    monkeypatch.setattr(anonymize_cli, "_make_detector", lambda args: detector)
    status = anonymize_cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def _detect(argv, monkeypatch, capsys, detector) -> tuple[int, str]:
    monkeypatch.setattr(detect_cli, "_make_detector", lambda args: detector)
    status, _, err = run_tf_detect(capsys, *argv)
    return status, err


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --- 1: a file this process runs out of memory on -------------------------------------------

def test_tf_anonymize_fails_the_file_it_runs_out_of_memory_on_and_goes_on(tmp_path, monkeypatch,
                                                                          capsys):
    src, out = _three(tmp_path / "src"), tmp_path / "out"
    detector = StandIn(oom_width=70)
    status, err = _anonymize([src, "--out", out, "-q"], monkeypatch, capsys, detector)
    assert status == 1
    assert detector.seen == [(48, 64), (50, 70), (48, 64)]  # c.png processed after b.png
    assert f"tf-anonymize: error: {src / 'b.png'}: not enough memory to process it (70x50): " \
           f"{NUMPY_OOM}; nothing was written for it" in err
    assert "1 failed" in err.splitlines()[-1] and "2 done" in err.splitlines()[-1]
    assert _files(out) == ["a.png", "a.png.json", "c.png", "c.png.json"]  # nothing of b.png


def test_process_file_reports_memory_errors_while_reading_too(tmp_path, monkeypatch):
    """Before its size is known (the file read whole for its identity): the pool's per-file
    function (--ray) gets a failed result, not an exception."""
    from tinyfaces_trt.anonymize import jobs

    photo = _photo(tmp_path / "p.png")
    task = plan_tasks([photo], tmp_path / "out")[0][0]

    def no_memory(path):
        raise MemoryError()

    monkeypatch.setattr(jobs, "input_identity", no_memory)
    result = process_file(StandIn(), task, Options())
    assert (result.status, result.error) == (
        "failed", f"{photo}: not enough memory to process it: MemoryError; nothing was written "
                  "for it (run it with more memory, or downscale it)")
    monkeypatch.undo()
    worker = DetectorWorker(SimpleNamespace(create=lambda: StandIn(oom_width=64)), process_file,
                            Options())
    _, status, value, error, _ = worker.run(0, task)
    assert status == "done" and value.status == "failed" and error is None
    assert value.error.startswith(f"{photo}: not enough memory to process it (64x48): ")
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []


def test_tf_detect_fails_the_image_it_runs_out_of_memory_on_and_goes_on(tmp_path, monkeypatch,
                                                                        capsys):
    src, out = _three(tmp_path / "src"), tmp_path / "out"
    detector = StandIn(oom_width=70)
    status, err = _detect([src, "--out", out], monkeypatch, capsys, detector)
    assert status == 1
    assert detector.seen == [(48, 64), (50, 70), (48, 64)]
    assert f"tf-detect: error: {src / 'b.png'}: not enough memory to process it (70x50): " \
           f"{NUMPY_OOM} (run it with more memory, or downscale it)" in err.splitlines()
    assert "2 image(s), 2 face(s), 1 error(s)" in err
    assert _files(out) == ["a.json", "a_boxes.png", "c.json", "c_boxes.png"]


def test_tf_detect_reports_memory_errors_while_reading(tmp_path, monkeypatch, capsys):
    src, out = _three(tmp_path / "src"), tmp_path / "out"
    load = detect_cli._load

    def load_or_fail(job):
        if job.path.name == "a.png":
            raise MemoryError()
        return load(job)

    monkeypatch.setattr(detect_cli, "_load", load_or_fail)
    status, err = _detect([src, "--out", out], monkeypatch, capsys, StandIn())
    assert status == 1
    assert f"tf-detect: error: {src / 'a.png'}: not enough memory to process it: MemoryError " \
           "(run it with more memory, or downscale it)" in err.splitlines()
    assert _files(out) == ["b.json", "b_boxes.png", "c.json", "c_boxes.png"]


def test_tf_detect_ray_worker_fails_the_image_with_the_message(tmp_path):
    """--ray's per-image function, through the pool's worker: the failure is the message."""
    photo = _photo(tmp_path / "b.png", width=70, height=50)
    options = DetectOptions("onnxruntime", tmp_path / "out")
    tasks, refused = detect_plan_tasks([ImageJob(photo, Path("b.png"), "x")], options)
    worker = DetectorWorker(SimpleNamespace(create=lambda: StandIn(oom_width=70)),
                            process_detect_task, options)
    _, status, value, error, _ = worker.run(0, tasks[0])
    assert (status, value) == ("failed", None)
    assert error == (f"{photo}: not enough memory to process it (70x50): {NUMPY_OOM} (run it "
                     "with more memory, or downscale it)")
    assert not (tmp_path / "out").exists() or _files(tmp_path / "out") == []


# --- 2: a video's frames over the pixel limit -----------------------------------------------

def test_a_video_over_the_pixel_limit_is_refused_before_a_frame_is_decoded(tmp_path, monkeypatch,
                                                                          capsys):
    pytest.importorskip("av")
    from test_anonymize_video_streams import make

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    make(src / "big.mp4", n=3, w=320, h=240)
    _photo(src / "p.png")
    decoded = []
    run = video.VideoReader._run
    monkeypatch.setattr(video.VideoReader, "_run",
                        lambda self: (decoded.append(self.path.name), run(self))[1])
    detector = StandIn(max_pixels=320 * 240 - 1)
    status, err = _anonymize([src, "--out", out, "-q"], monkeypatch, capsys, detector)
    assert status == 1
    assert (f"tf-anonymize: error: {src / 'big.mp4'}: not anonymised: its frames are 320x240 "
            f"(76800 pixels), more than the limit of 76799 pixels an image has "
            f"(Detector.max_pixels); downscale it first (e.g. ffmpeg -i big.mp4 -vf "
            f"scale=iw/2:-2 smaller.mp4), or raise Detector.max_pixels (None: no limit) where "
            f"the detector is made in Python") in err.splitlines()
    assert decoded == [] and detector.seen == [(48, 64)]  # the image after it is done
    assert _files(out) == ["p.png", "p.png.json"]
    # at the limit, the same video is anonymised
    detector.max_pixels = 320 * 240
    status, err = _anonymize([src, "--out", out, "-q"], monkeypatch, capsys, detector)
    assert status == 0 and decoded == ["big.mp4"]
    assert _files(out) == ["big.mp4", "big.mp4.json", "p.png", "p.png.json"]


def test_a_first_frame_over_the_limit_is_refused_where_the_header_gave_no_size():
    reader = object.__new__(video.VideoReader)
    reader.path, reader.max_pixels = Path("clip.mkv"), 100
    with pytest.raises(video.VideoError, match=r"^clip.mkv: not anonymised: its frames are "
                                               r"20x10 \(200 pixels\), more than the limit of "
                                               r"100 pixels"):
        reader._check_size(SimpleNamespace(width=20, height=10), 0)


# --- 3: a link in --out to a folder elsewhere -----------------------------------------------

def _linked_out(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(inputs: sub/a.png, sub/deep/c.png and b.png, --out whose sub is a link to victim,
    victim)."""
    src, out, victim = tmp_path / "in", tmp_path / "out", tmp_path / "victim"
    _photo(src / "sub" / "a.png")
    _photo(src / "sub" / "deep" / "c.png")
    _photo(src / "b.png")
    out.mkdir()
    victim.mkdir()
    (out / "sub").symlink_to(victim)
    return src, out, victim


def test_tf_anonymize_writes_nothing_through_a_link_to_a_folder_in_out(tmp_path, monkeypatch,
                                                                       capsys):
    src, out, victim = _linked_out(tmp_path)
    (victim / "a.png").write_bytes(b"someone's file")
    for overwrite in ([], ["--overwrite"]):
        status, err = _anonymize([src, "--out", out, "-q", *overwrite], monkeypatch, capsys,
                                 StandIn())
        assert status == 1
        assert (f"tf-anonymize: error: {src / 'sub' / 'a.png'}: not anonymised: the folder of "
                f"its output {out / 'sub' / 'a.png'} leads to {victim}, outside the output "
                f"folder {out} (a symbolic link in it); nothing is written through it: remove "
                f"the link, or give that folder as --out") in err.splitlines()
        assert f"{src / 'sub' / 'deep' / 'c.png'}: not anonymised: the folder of its output " \
               f"{out / 'sub' / 'deep' / 'c.png'} leads to {victim / 'deep'}, outside" in err
        assert _files(victim) == ["a.png"] and (out / "b.png.json").is_file()  # no folder made
        assert (victim / "a.png").read_bytes() == b"someone's file"
    # a link put there after the run was planned: refused when the file is processed
    later = tmp_path / "later"
    later.mkdir()
    task = next(t for t in plan_tasks([src], later)[0] if t.source.endswith("a.png"))
    (later / "sub").symlink_to(victim)
    result = process_file(StandIn(), task, Options())
    assert result.status == "failed" and "outside the output folder" in result.error
    assert _files(victim) == ["a.png"] and (victim / "a.png").read_bytes() == b"someone's file"
    # an --out that is itself a link is written through (resolved when the run starts)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)
    status, _ = _anonymize([src / "sub", "--out", tmp_path / "link", "-q"], monkeypatch, capsys,
                           StandIn())
    assert status == 0 and _files(elsewhere) == ["a.png", "a.png.json", "deep", "deep/c.png",
                                                 "deep/c.png.json"]


def test_tf_detect_writes_nothing_through_a_link_to_a_folder_in_out(tmp_path, monkeypatch, capsys):
    src, out, victim = _linked_out(tmp_path)
    (victim / "a_blurred.png").write_bytes(b"someone's file")
    for overwrite in ([], ["--overwrite"]):
        status, err = _detect([src, "--out", out, "--blur", *overwrite], monkeypatch, capsys,
                              StandIn())
        assert status == 1
        assert (f"tf-detect: error: {src / 'sub' / 'a.png'}: output folder {out / 'sub'} leads "
                f"to {victim}, outside --out {out} (a symbolic link in it); nothing is written "
                f"through it: remove the link, or give that folder as --out") in err.splitlines()
        assert f"output folder {out / 'sub' / 'deep'} leads to {victim / 'deep'}, outside" in err
        assert _files(victim) == ["a_blurred.png"]
        assert _files(out) == ["b.json", "b_blurred.png", "sub"]
    assert (victim / "a_blurred.png").read_bytes() == b"someone's file"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(elsewhere)  # --out itself a link: written through
    status, _ = _detect([src / "sub", "--out", tmp_path / "link"], monkeypatch, capsys, StandIn())
    assert status == 0 and _files(elsewhere) == ["a.json", "a_boxes.png", "deep", "deep/c.json",
                                                 "deep/c_boxes.png"]
    # --ray's per-image function refuses it too, before removing anything there
    (victim / f"{TEMP_PREFIX}1-a.json").write_text("not ours to remove")
    options = DetectOptions("onnxruntime", out, out_root=out.resolve())
    tasks, _ = detect_plan_tasks([ImageJob(src / "sub" / "a.png", Path("sub/a.png"), "sub")],
                                 options)
    with pytest.raises(TinyFacesError, match="outside --out"):
        process_detect_task(StandIn(), tasks[0], options)
    assert _files(victim) == [f"{TEMP_PREFIX}1-a.json", "a_blurred.png"]
    # and the writer itself, whoever calls it
    plan = task_plan(tasks[0], options)
    with pytest.raises(TinyFacesError, match="outside --out"):
        write_outputs(plan, np.zeros((8, 8, 3), np.uint8), np.zeros((0, 5)), {}, None,
                      root=out.resolve())
    assert _files(victim) == [f"{TEMP_PREFIX}1-a.json", "a_blurred.png"]


# --- 4: tf-detect and an output file it cannot show it wrote --------------------------------

@pytest.mark.parametrize("flags, name", [((), "a_boxes.png"), (("--blur",), "a_blurred.png")])
def test_tf_detect_leaves_an_output_without_its_json_alone(tmp_path, monkeypatch, capsys, flags,
                                                           name):
    src, out = tmp_path / "in", tmp_path / "out"
    _photo(src / "a.png")
    _photo(src / "b.png")
    out.mkdir()
    (out / name).write_bytes(b"someone's file")
    status, err = _detect([src, "--out", out, *flags], monkeypatch, capsys, StandIn())
    assert status == 1
    assert (f"tf-detect: error: {src / 'a.png'}: {out / name} exists and was not written by "
            f"tf-detect (no detections JSON a.json beside it); it is neither skipped nor "
            f"replaced: move it away, or --overwrite replaces it (and makes every output "
            f"again)") in err.splitlines()
    assert (out / name).read_bytes() == b"someone's file" and not (out / "a.json").exists()
    assert (out / "b.json").is_file()
    status, err = _detect([src, "--out", out, *flags, "--overwrite"], monkeypatch, capsys,
                          StandIn())
    assert status == 0 and (out / "a.json").is_file()
    assert (out / name).read_bytes() != b"someone's file"
