"""tf-detect never destroys or mistakes the user's files for its outputs: an output that would
replace an input, WIDER files it did not write, piped images, output folders reached from an
input folder (seeded ResNet-50 export, ONNX Runtime CPU, in-process)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_cli import run_tf_detect as _run
from tinyfaces_trt.cli.detect import main
from tinyfaces_trt.cli.detect_plan import DetectOptions, ImageJob, is_stdin_argument, plan_tasks
from tinyfaces_trt.wider.records import RECORDS_FOLDER as WIDER_RECORDS
from tinyfaces_trt.cli.detect_ray import main as ray_main
from tinyfaces_trt.core.files import written_for_another
from tinyfaces_trt.parity.images import synthetic_image

ROOT = Path(__file__).resolve().parents[1]


def _image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_image(40, 52, seed=seed)).save(path)
    return path


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("tf-detect: error: ")]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------ 1: an output replacing an input

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
@pytest.mark.parametrize("ray", [[], ["--ray"]])
def test_an_output_that_would_replace_an_input_is_refused_before_any_work(
        capsys, export_dir, tmp_path, overwrite, ray):
    """--out is the inputs' folder through a link: IMG_001's blurred copy would replace the
    user's own IMG_001_blurred.jpg (it was replaced, or taken for IMG_001's output)."""
    photos = tmp_path / "photos"
    mine = _image(photos / "IMG_001_blurred.jpg", 2)
    _image(photos / "IMG_001.jpg", 1)
    before = mine.read_bytes()
    (tmp_path / "anon").symlink_to(photos, target_is_directory=True)
    argv = [photos / "IMG_001.jpg", mine, "--model", export_dir, "--out", tmp_path / "anon",
            "--blur", *overwrite, *ray]
    code, out, err = _run(capsys, *argv) if not ray else (ray_main([str(a) for a in argv]),
                                                          *capsys.readouterr())
    assert code == 2 and out == ""
    assert _errors(err) == [
        f"tf-detect: error: {mine} is an input of this run and the path of the blurred copy of "
        f"{photos / 'IMG_001.jpg'} written to {tmp_path / 'anon' / 'IMG_001_blurred.jpg'}; "
        "choose another --out"]
    assert mine.read_bytes() == before
    assert _files(photos) == ["IMG_001.jpg", "IMG_001_blurred.jpg"]


def test_an_output_replacing_the_file_a_linked_input_points_to_is_refused(capsys, export_dir,
                                                                          tmp_path):
    """album/pic.jpg links to photos/a_boxes.jpg: a.jpg's drawn copy in --out photos/ would
    replace the only copy of the picture."""
    photos = tmp_path / "photos"
    _image(photos / "a.jpg", 1)
    before = _image(photos / "a_boxes.jpg", 2).read_bytes()
    (tmp_path / "album").mkdir()
    (tmp_path / "album" / "pic.jpg").symlink_to(photos / "a_boxes.jpg")
    code, out, err = _run(capsys, photos / "a.jpg", tmp_path / "album" / "pic.jpg",
                          "--model", export_dir, "--out", photos)
    assert code == 2 and out == ""
    assert _errors(err) == [
        f"tf-detect: error: {tmp_path / 'album' / 'pic.jpg'} links to {photos / 'a_boxes.jpg'}, "
        f"which is an input of this run and the path of the copy with boxes drawn of "
        f"{photos / 'a.jpg'}; choose "
        "another --out"]
    assert (photos / "a_boxes.jpg").read_bytes() == before
    assert _files(photos) == ["a.jpg", "a_boxes.jpg"]


# ----------------------------------------------- 2: WIDER files that are not this image's result

def _labelled_frames(root: Path) -> Path:
    """data/frames/f001.jpg, f002.jpg with YOLO labels f001.txt, f002.txt beside them."""
    for k, name in enumerate(("f001", "f002")):
        _image(root / "frames" / f"{name}.jpg", k)
        (root / "frames" / f"{name}.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    return root


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_wider_dir_into_an_input_folder_neither_skips_nor_replaces_labels(
        capsys, export_dir, tmp_path, monkeypatch, overwrite):
    monkeypatch.chdir(_labelled_frames(tmp_path / "data"))
    code, out, err = _run(capsys, "frames", "--model", export_dir, "--wider-dir", ".", *overwrite)
    assert code == 1 and out == "" and "skipped, its outputs exist" not in err
    assert _errors(err) == [
        f"tf-detect: error: frames/{name}.txt exists and is not the WIDER result of "
        f"frames/{name}.jpg (its first line is not frames/{name}.jpg); it is neither skipped "
        "nor replaced: move it away or give another --wider-dir" for name in ("f001", "f002")]
    assert err.splitlines()[-1].startswith("tf-detect: 0 image(s), 0 face(s), 2 error(s) in ")
    for name in ("f001", "f002"):
        assert Path(f"frames/{name}.txt").read_text() == "0 0.5 0.5 0.2 0.3\n"


def test_wider_results_of_same_named_images_in_two_runs_stay_apart(capsys, export_dir,
                                                                    tmp_path):
    a_jpg, a_png = _image(tmp_path / "ev" / "a.jpg", 1), _image(tmp_path / "ev" / "a.png", 2)
    pred = tmp_path / "pred"
    assert _run(capsys, a_jpg, "--model", export_dir, "--wider-dir", pred)[0] == 0
    result = (pred / "ev" / "a.txt").read_text()
    assert result.startswith("ev/a.jpg\n")
    for overwrite in ([], ["--overwrite"]):
        code, out, err = _run(capsys, a_png, "--model", export_dir, "--wider-dir", pred,
                              *overwrite)
        assert code == 1 and out == ""
        assert _errors(err) == [
            f"tf-detect: error: {pred / 'ev' / 'a.txt'} exists and is not the WIDER result of "
            f"{a_png} (its first line is not ev/a.png); it is neither skipped nor replaced: "
            "move it away or give another --wider-dir"]
        assert (pred / "ev" / "a.txt").read_text() == result
    code, out, err = _run(capsys, a_jpg, "--model", export_dir, "--wider-dir", pred)
    assert code == 0 and out == "" and f"{a_jpg}: skipped, its outputs exist" in err


def test_the_distributed_plan_refuses_a_foreign_wider_file_too(tmp_path):
    job = ImageJob(tmp_path / "ev" / "a.png", Path("a.png"), "ev")
    (tmp_path / "pred" / "ev").mkdir(parents=True)
    (tmp_path / "pred" / "ev" / "a.txt").write_text("ev/a.jpg\n0\n")
    tasks, refused = plan_tasks([job], DetectOptions("onnxruntime", wider_dir=tmp_path / "pred"))
    assert tasks == [] and [j for j, _ in refused] == [job]
    assert refused[0][1].startswith(f"{tmp_path / 'pred' / 'ev' / 'a.txt'} exists and is not "
                                    f"the WIDER result of {job.path} ")
    (tmp_path / "pred" / "ev" / "a.txt").write_text("ev/a.png\n0\n")  # its own: planned
    assert plan_tasks([job], DetectOptions("onnxruntime", wider_dir=tmp_path / "pred"))[1] == []


# --------------------------------------------------------------------- 4: standard input

def test_each_image_on_standard_input_is_processed_under_the_next_free_name(
        capsys, export_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    for k in (1, 2):
        data = _image(tmp_path / f"f{k}.png", k).read_bytes()
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        code, stdout, err = _run(capsys, "-", "--model", export_dir, "--out", out)
        assert code == 0 and stdout.startswith("-: ") and "skipped" not in err
    assert _files(out) == ["stdin.json", "stdin_2.json", "stdin_2_boxes.png", "stdin_boxes.png"]
    assert json.loads((out / "stdin_2.json").read_text())["image"] == "-"


@pytest.mark.parametrize("fmt, suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_an_image_on_standard_input_gets_copies_in_its_own_format(capsys, export_dir, tmp_path,
                                                                 monkeypatch, fmt, suffix):
    """A JPEG on standard input was written as stdin_boxes.png, --jpeg-quality ignored, though
    the help says JPEG files are written for JPEG inputs: piped, the copies are a file's."""
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(40, 52, seed=3)).save(buffer, format=fmt, quality=95)
    data = buffer.getvalue()
    photo = tmp_path / f"photo{suffix}"
    photo.write_bytes(data)
    piped, named = tmp_path / "piped", tmp_path / "named"
    for argument, out in (("-", piped), (photo, named)):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        code, _, err = _run(capsys, argument, "--model", export_dir, "--out", out, "--blur",
                            "--draw", "--jpeg-quality", 30)
        assert code == 0, err
    assert _files(piped) == sorted(["stdin.json", f"stdin_blurred{suffix}",
                                    f"stdin_boxes{suffix}"])
    for kind in ("_blurred", "_boxes"):  # the same pixels, format and --jpeg-quality
        copy = piped / f"stdin{kind}{suffix}"
        assert copy.read_bytes() == (named / f"photo{kind}{suffix}").read_bytes()
        assert Image.open(copy).format == fmt


def test_a_jpeg_piped_to_dev_stdin_gets_the_copies_of_a_jpeg_piped_to_dash(capsys, export_dir,
                                                                          tmp_path):
    """/dev/stdin, which the help gives as the same as -, was taken for a file without a
    suffix: a JPEG piped to it got PNG copies and --jpeg-quality was ignored, where - gave
    .jpg copies. Both are standard input now: the copies are a .jpg file's, byte for byte."""
    buffer = io.BytesIO()
    Image.fromarray(synthetic_image(40, 52, seed=3)).save(buffer, format="JPEG", quality=95)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(buffer.getvalue())
    options = ["--model", str(export_dir), "--blur", "--draw", "--jpeg-quality", "30"]
    code, _, err = _run(capsys, photo, *options, "--out", tmp_path / "named")
    assert code == 0, err
    named = json.loads((tmp_path / "named" / "photo.json").read_text())
    for k, argument in enumerate(("-", "/dev/stdin")):
        out = tmp_path / f"piped{k}"
        with open(photo, "rb") as stdin:
            done = subprocess.run([sys.executable, "-m", "tinyfaces_trt.cli.detect", argument,
                                   *options, "--out", str(out)], stdin=stdin, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{argument}: ")
        assert _files(out) == ["stdin.json", "stdin_blurred.jpg", "stdin_boxes.jpg"]
        for kind in ("_blurred", "_boxes"):  # the same pixels, format and --jpeg-quality
            copy = out / f"stdin{kind}.jpg"
            assert copy.read_bytes() == (tmp_path / "named" / f"photo{kind}.jpg").read_bytes()
        record = json.loads((out / "stdin.json").read_text())
        assert record["image"] == argument and "resolved" not in record
        assert record["detections"] == named["detections"]


def test_every_name_of_standard_input_is_standard_input(tmp_path, monkeypatch):
    """/dev/fd/0, /proc/self/fd/0 and a link to /dev/stdin name standard input too; where it
    is a redirected file, that file's own name is still a file (links are followed up to
    file descriptor 0, never through it)."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    (tmp_path / "in").symlink_to("/dev/stdin")
    (tmp_path / "via").symlink_to(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    saved = os.dup(0)
    try:
        with open(photo, "rb") as redirected:
            os.dup2(redirected.fileno(), 0)  # as "< photo.jpg"
        assert os.path.realpath("/dev/stdin") == str(photo.resolve())
        for name in ("-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0", "/dev/../dev/stdin",
                     f"/proc/{os.getpid()}/fd/0", "in", str(tmp_path / "via")):
            assert is_stdin_argument(name), name
        for name in (str(photo), "photo.jpg", "/dev/stdout", "/proc/self/fd/1", "/dev/fd/00",
                     str(tmp_path), "--"):
            assert not is_stdin_argument(name), name
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_a_record_of_standard_input_is_never_an_inputs_own(tmp_path):
    record = tmp_path / "stdin.json"
    assert written_for_another(record, "image", None) is False  # absent: free
    record.write_text(json.dumps({"image": "-"}))
    assert written_for_another(record, "image", None) is True
    assert written_for_another(record, "image", "-") is False  # a path named "-" is still one


# ----------------------------------------------- 5, 6: output folders reached from the inputs

def test_a_link_to_the_out_folder_inside_the_input_folder_is_not_read(capsys, export_dir,
                                                                      tmp_path):
    photos, results = tmp_path / "photos", tmp_path / "results"
    _image(photos / "a.jpg", 1)
    results.mkdir()
    (photos / "results").symlink_to(Path("..") / "results", target_is_directory=True)
    for run in range(3):
        code, out, err = _run(capsys, photos, "--model", export_dir, "--out", results)
        assert code == 0
        assert out.startswith(f"{photos / 'a.jpg'}: ") if run == 0 else out == ""
        left_out = [line for line in err.splitlines() if "left out" in line]
        assert left_out == ([] if run == 0 else [
            f"tf-detect: left out 1 image file(s) in --out {results}: an output folder is not "
            "read as input (move them elsewhere to detect them)"])
    assert _files(results) == ["a.json", "a_boxes.jpg"]


def test_images_already_in_an_out_folder_inside_the_input_folder_are_reported(
        capsys, export_dir, tmp_path):
    archive = tmp_path / "archive"
    for k, rel in enumerate(("2019/a.jpg", "2020/b.jpg", "2020/c.jpg")):
        _image(archive / rel, k)
    code, out, err = _run(capsys, archive, "--model", export_dir, "--out", archive / "2020")
    assert code == 0 and out.startswith(f"{archive / '2019' / 'a.jpg'}: ")
    assert (f"tf-detect: left out 2 image file(s) in --out {archive / '2020'}: an output folder "
            "is not read as input (move them elsewhere to detect them)") in err.splitlines()
    assert err.splitlines()[-1].startswith("tf-detect: 1 image(s), ")


# ------------------------------------------------------- 7: the distributed run reports the same

def test_the_distributed_run_reports_what_the_single_process_run_reports(capsys, export_dir,
                                                                         tmp_path):
    """Its --json had no "model" nor "skipped", and counted skipped images as processed (their
    old records read back). Run through the pool's serial runner: no cluster needed."""
    from tinyfaces_trt.cli.detect import build_parser
    from tinyfaces_trt.cli.detect_ray import run_detect

    photos = tmp_path / "photos"
    for k in range(2):
        _image(photos / f"p{k}.png", k)

    def both(out: Path) -> tuple[list[dict], list[list[str]]]:
        argv = [str(photos), "--model", str(export_dir), "--out", str(out), "--json"]
        documents, lines = [], []
        for run in (main, lambda a: run_detect(build_parser().parse_args(a))):
            assert run(argv) == 0
            stdout, err = capsys.readouterr()
            documents.append(json.loads(stdout))
            lines.append([line.rsplit(" in ", 1)[0] for line in err.splitlines()])
        return documents, lines

    (single, dist), _ = both(tmp_path / "out")  # the second run finds the first's files
    assert single["images"] and len(single["images"]) == 2 and dist["images"] == []
    assert dist["skipped"] == [{"image": str(photos / f"p{k}.png"), "skipped": True}
                               for k in range(2)]
    assert set(dist) == set(single) and dist["model"] == single["model"] is not None
    (single, dist), (single_err, dist_err) = both(tmp_path / "out")  # both skip everything
    assert single == dist and single["images"] == [] and len(single["skipped"]) == 2
    assert single_err == dist_err == [
        *(f"tf-detect: {photos / f'p{k}.png'}: skipped, its outputs exist (--overwrite "
          "replaces them)" for k in range(2)),
        "tf-detect: 0 image(s), 0 face(s), 2 skipped (outputs exist), 0 error(s)"]


def test_an_image_on_standard_input_replaces_its_wider_result_only_with_overwrite(
        capsys, export_dir, tmp_path, monkeypatch):
    """Its WIDER file has a fixed name (stdin/stdin.txt) and one piped image cannot be told
    from the next: a second run replaced the first image's result in silence (before that it
    failed, 'not the WIDER result of -', though the first line was stdin/stdin). Kept and
    refused, as any output, unless --overwrite."""
    data = _image(tmp_path / "a.png", 1).read_bytes()
    pred = tmp_path / "pred" / "stdin" / "stdin.txt"
    pred.parent.mkdir(parents=True)
    pred.write_text("stdin/stdin\n0\n")  # an earlier result, with no faces
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = _run(capsys, "-", "--model", export_dir, "--wider-dir", tmp_path / "pred")
    assert code == 1 and pred.read_text() == "stdin/stdin\n0\n"
    assert (f"tf-detect: error: {pred} exists, the WIDER result of an earlier image from "
            "standard input, which cannot be told from this one; it is neither skipped nor "
            "replaced: --overwrite replaces it, or give another --wider-dir\n") in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = _run(capsys, "-", "--model", export_dir, "--wider-dir", tmp_path / "pred",
                        "--overwrite")
    assert code == 0, err
    lines = pred.read_text().splitlines()
    assert lines[0] == "stdin/stdin" and int(lines[1]) > 0  # rewritten


def test_a_wider_result_of_another_image_of_the_same_event_and_name_is_kept(
        capsys, export_dir, tmp_path):
    """A/ev/x.png, then B/ev/x.png into the same --wider-dir: B was skipped as done, A's
    result kept as B's (its first line, ev/x.png, is B's name too). --overwrite replaces it
    (a dataset moved since is another file by its path); a record of an earlier tf-detect
    (no resolved path) is not judged."""
    first = _image(tmp_path / "A" / "ev" / "x.png", 1)
    second = _image(tmp_path / "B" / "ev" / "x.png", 2)
    pred = tmp_path / "pred"
    assert _run(capsys, first, "--model", export_dir, "--wider-dir", pred)[0] == 0
    result = (pred / "ev" / "x.txt").read_text()
    code, _, err = _run(capsys, second, "--model", export_dir, "--wider-dir", pred)
    assert code == 1
    assert (f"tf-detect: error: {pred / 'ev' / 'x.txt'} exists and is the WIDER result of "
            "another image of the same event and name (its record "
            f"{pred / '.tf-detect' / 'ev' / 'x.json'} does not name {second}); it is "
            "neither skipped nor replaced: move it away or give another --wider-dir\n") in err
    assert (pred / "ev" / "x.txt").read_text() == result
    code, _, err = _run(capsys, first, "--model", export_dir, "--wider-dir", pred)
    assert code == 0 and "skipped, its outputs exist" in err  # its own: done
    record = pred / ".tf-detect" / "ev" / "x.json"
    old = json.loads(record.read_text())
    del old["resolved"]  # as an earlier tf-detect wrote it
    record.write_text(json.dumps(old))
    code, _, err = _run(capsys, second, "--model", export_dir, "--wider-dir", pred)
    assert code == 0 and "tf-detect: error" not in err  # not judged (skipped as before)
    assert _run(capsys, first, "--model", export_dir, "--wider-dir", pred,
                "--overwrite")[0] == 0
    assert (pred / "ev" / "x.txt").read_text() == result


def test_a_link_loop_in_a_folder_is_an_error_of_that_file(capsys, export_dir, tmp_path):
    """resolve() of a link to itself raised RuntimeError: a traceback, the run lost."""
    photos = tmp_path / "photos"
    _image(photos / "a.png", 1)
    (photos / "loop.jpg").symlink_to("loop.jpg")
    code, _, err = _run(capsys, photos, "--model", export_dir, "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    assert any("loop.jpg" in line and "error" in line for line in err.splitlines()), err
    assert (tmp_path / "out" / "a.json").exists()


def test_a_file_name_that_is_not_utf8_is_printed_as_its_bytes(capsys, export_dir, tmp_path,
                                                               monkeypatch):
    """An archive's Latin-1 name under a UTF-8 locale (stdout 'strict', as on most desktops)
    ended the run with UnicodeEncodeError once the first such image was done."""
    photos = tmp_path / "photos"
    name = os.fsdecode(b"caf\xe9.png")  # a surrogate escape in Python
    _image(photos / name, 1)
    _image(photos / "z.png", 2)
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict",
                              write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main([str(photos), "--model", str(export_dir), "--out", str(tmp_path / "out")]) == 0
    lines = stdout.buffer.getvalue().splitlines()
    assert [line.split(b":")[0] for line in lines] == [
        os.fsencode(photos / name), os.fsencode(photos / "z.png")]
    assert stdout.errors == "strict"  # as it was
    assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "out" / os.fsdecode(b"caf\xe9.json")).is_file()


def test_wider_results_of_a_non_utf8_name_are_written_read_and_resumed(capsys, export_dir,
                                                                      tmp_path):
    """Writing its first line failed with UnicodeEncodeError and ended the whole run."""
    from tinyfaces_trt.wider.format import read_detection_file

    name = os.fsdecode(b"caf\xe9")
    _image(tmp_path / "images" / "ev" / f"{name}.png", 1)
    _image(tmp_path / "images" / "ev" / "z.png", 2)
    pred = tmp_path / "pred"
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    argv = [str(tmp_path / "images"), "--model", str(export_dir), "--wider-dir", str(pred)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", stdout)
        assert main(argv) == 0
    result = pred / "ev" / f"{name}.txt"
    assert result.read_bytes().startswith(b"ev/caf\xe9.png\n")
    assert read_detection_file(result).image_name == f"ev/{name}.png"
    assert (pred / "ev" / "z.txt").is_file()
    code, _, err = _run(capsys, *argv)
    assert code == 0 and err.count("skipped, its outputs exist") == 2


def test_a_linked_image_argument_keeps_the_event_folder_of_its_path(capsys, export_dir,
                                                                    tmp_path):
    """A WIDER layout of links into a flat store (git-annex): the event came from the link
    target's folder (store/), so tf-eval found no prediction for any image."""
    stored = _image(tmp_path / "store" / "0_Parade_a.png", 1)
    link = tmp_path / "images" / "0--Parade" / "0_Parade_a.png"
    link.parent.mkdir(parents=True)
    link.symlink_to(stored)
    pred = tmp_path / "pred"
    assert _run(capsys, link, "--model", export_dir, "--wider-dir", pred)[0] == 0
    assert _files(pred) == [f"{WIDER_RECORDS}/0--Parade/0_Parade_a.json", "0--Parade/0_Parade_a.txt"]
    assert (pred / "0--Parade" / "0_Parade_a.txt").read_text().startswith("0--Parade/0_Parade_a.png\n")


@pytest.mark.parametrize("ray", [[], ["--ray"]])
def test_a_blurred_copy_keeps_alpha_and_grey_levels(capsys, export_dir, tmp_path, ray):
    """--blur wrote an RGBA PNG's copy as RGB (its transparent part opaque) and a grey JPEG's
    as RGB, where tf-anonymize and tf-serve keep both; the drawn copy stays in colour."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rgba = np.dstack([synthetic_image(40, 52, seed=1), np.full((40, 52), 90, np.uint8)])
    rgba[:, :10, 3] = 0
    Image.fromarray(rgba).save(photos / "logo.png")
    Image.fromarray(synthetic_image(40, 52, seed=2)[..., 0]).save(photos / "grey.jpg")
    argv = [photos, "--model", export_dir, "--out", tmp_path / "out", "--blur", "--draw", *ray]
    code = _run(capsys, *argv)[0] if not ray else ray_main([str(a) for a in argv])
    assert code == 0
    out = tmp_path / "out"
    copy = Image.open(out / "logo_blurred.png")
    assert copy.mode == "RGBA"
    np.testing.assert_array_equal(np.array(copy)[..., 3], rgba[..., 3])
    assert Image.open(out / "grey_blurred.jpg").mode == "L"
    assert Image.open(out / "logo_boxes.png").mode == Image.open(out / "grey_boxes.jpg").mode == \
        "RGB"
