"""One folder walk and one set of image suffixes for tf-detect and tf-anonymize
(tinyfaces_trt/media_files.py): the same folder gives both the same images (links to folders
followed, each real folder once; .gif, .ppm, .pgm and the JPEG aliases read by both), both say
what the walk left out, and tf-anonymize's copies of GIF, PPM and PGM files written by Pillow
hold masked pictures only (an animated GIF's first frame alone, a counted warning)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from test_anonymize_jobs import FACE, _photo, _run_cli
from tinyfaces_trt import media_files
from tinyfaces_trt.anonymize import jobs
from tinyfaces_trt.anonymize.jobs import left_out_lines, plan_tasks
from tinyfaces_trt.cli import detect_plan
from tinyfaces_trt.cli.detect_plan import find_inputs
from tinyfaces_trt.media_files import unsupported_image

DETECT_LOG = "tinyfaces_trt.cli.detect"
LINK_TO_SEARCHED = ("links to a folder already searched (a symbolic-link loop or a second link "
                    "to it), not searched again")


def _image(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), np.uint8))
    fmt = "JPEG" if media_files.image_format(path) == ".jpg" else None  # .THM: Pillow's guess
    image.save(path, format=fmt)
    return path


def _detect_inputs(folder: Path, out: Path) -> list[str]:
    return [job.rel.as_posix() for job in find_inputs([str(folder)], [out]).jobs]


def _anonymize_inputs(folder: Path, out: Path) -> list[str]:
    tasks, _, errors = plan_tasks([folder], out)
    assert errors == []
    return sorted(Path(t.source).relative_to(folder).as_posix() for t in tasks)


# --- the review's folder: the same images for both ----------------------------------------------

def test_the_review_folder_gives_both_clis_the_same_images(tmp_path):
    """in/{real/a.jpg, c.gif, linked -> ../elsewhere (b.jpg)}: tf-detect read all three,
    tf-anonymize real/a.jpg alone (the linked folder left out, c.gif an error), so
    ``tf-detect --blur in/`` anonymised faces ``tf-anonymize in/`` did not."""
    folder, out = tmp_path / "in", tmp_path / "out"
    _image(folder / "real" / "a.jpg")
    _image(tmp_path / "elsewhere" / "b.jpg")
    _image(folder / "c.gif")
    (folder / "linked").symlink_to(Path("..") / "elsewhere", target_is_directory=True)
    expected = ["c.gif", "linked/b.jpg", "real/a.jpg"]
    assert _detect_inputs(folder, out) == expected
    assert _anonymize_inputs(folder, out) == expected
    tasks, skipped, _ = plan_tasks([folder], out)
    assert skipped == []
    assert sorted(t.output for t in tasks) == [str(out / name) for name in expected]


def test_one_suffix_rule_for_both(tmp_path):
    """The same constant, and the same files of every suffix either read: .gif, .ppm, .pgm
    (tf-detect's only, before) and .jfif, .jpe, .THM (tf-anonymize's only); not .pbm, .txt."""
    assert detect_plan.IMAGE_SUFFIXES is jobs.IMAGE_SUFFIXES is media_files.IMAGE_SUFFIXES
    assert media_files.IMAGE_SUFFIXES == (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif",
                                          ".tiff", ".webp", ".ppm", ".pgm")
    folder = tmp_path / "in"
    names = ["a.JPG", "b.jpeg", "c.png", "d.bmp", "e.GIF", "f.tif", "g.tiff", "h.webp", "i.ppm",
             "j.pgm", "k.jfif", "l.jpe", "m.THM"]
    for k, name in enumerate(names):
        _image(folder / name, k)
    (folder / "notes.txt").write_text("x")
    assert _detect_inputs(folder, tmp_path / "out") == names
    assert _anonymize_inputs(folder, tmp_path / "out") == names
    # tf-detect's copies of a JPEG under another name are JPEG, as tf-anonymize's
    job = detect_plan.ImageJob(folder / "m.THM", Path("m.THM"), "in")
    assert detect_plan.image_suffix(job) == ".jpg"


# --- the walk: links followed, each real folder once -------------------------------------------

def test_loops_and_second_links_are_searched_once_and_said_by_both(tmp_path, caplog):
    """A link back up the tree and a second link to a linked folder: each real folder is
    searched once, under the first name the sorted walk meets, and the others are said, by
    tf-anonymize as a left-out result, by tf-detect as a warning."""
    folder, store, out = tmp_path / "in", tmp_path / "store", tmp_path / "out"
    _image(folder / "day1" / "a.jpg")
    _image(store / "b.jpg")
    (folder / "day1" / "up").symlink_to(folder, target_is_directory=True)
    (folder / "x_store").symlink_to(store, target_is_directory=True)
    (folder / "y_store").symlink_to(store, target_is_directory=True)
    expected = ["day1/a.jpg", "x_store/b.jpg"]
    with caplog.at_level(logging.WARNING, logger=DETECT_LOG):
        assert _detect_inputs(folder, out) == expected
    lines = [f"{folder / 'day1' / 'up'}: {LINK_TO_SEARCHED}",
             f"{folder / 'y_store'}: {LINK_TO_SEARCHED}"]
    assert [r.getMessage() for r in caplog.records if r.name == DETECT_LOG] == lines
    assert _anonymize_inputs(folder, out) == expected
    _, skipped, _ = plan_tasks([folder], out)
    assert left_out_lines(skipped) == lines


def test_a_real_folder_is_searched_under_its_own_name_before_links_to_it(tmp_path):
    """``a_latest`` links to its sibling ``b_2024`` and sorts first: the real folder is still
    searched first (outputs named after it; a link added to a processed library must not
    make a rerun anonymise it all again under the link's name), the link said."""
    folder = tmp_path / "in"
    _image(folder / "b_2024" / "p.jpg")
    (folder / "a_latest").symlink_to("b_2024", target_is_directory=True)
    left: list[media_files.LeftOut] = []
    assert list(media_files.walk_files(folder, left)) == [folder / "b_2024" / "p.jpg"]
    assert left == [media_files.LeftOut(folder / "a_latest", media_files.LINK_TO_SEARCHED)]
    tasks, _, _ = plan_tasks([folder], tmp_path / "out")
    assert [t.output for t in tasks] == [str(tmp_path / "out" / "b_2024" / "p.jpg")]


def test_what_was_reached_again_is_worded_by_how(tmp_path):
    """The real folder reached after a link to it (the link in a sub-folder walked before it)
    is "already searched through a link"; the folder given, reached again through a link
    above it (``up -> ..``), is a link to a folder already searched, not the other way."""
    folder = tmp_path / "in"
    _image(folder / "b" / "target" / "p.jpg")
    (folder / "a").mkdir()
    (folder / "a" / "to_target").symlink_to(folder / "b" / "target", target_is_directory=True)
    (folder / "up").symlink_to("..", target_is_directory=True)
    left: list[media_files.LeftOut] = []
    assert list(media_files.walk_files(folder, left)) == [folder / "a" / "to_target" / "p.jpg"]
    assert media_files.LeftOut(folder / "b" / "target", media_files.SEARCHED_THROUGH_LINK) in left
    assert media_files.LeftOut(folder / "up" / "in", media_files.LINK_TO_SEARCHED) in left


def test_out_folders_reached_through_links_are_not_inputs(tmp_path):
    """tf-anonymize follows links now: one into its --out (or below it) must not make its
    outputs inputs; an --out holding the input folder still leaves the inputs in."""
    folder, out = tmp_path / "in", tmp_path / "out"
    _image(folder / "a.jpg")
    _image(out / "sub" / "old.jpg")
    (folder / "results").symlink_to(out / "sub", target_is_directory=True)
    (folder / "all_results").symlink_to(out, target_is_directory=True)
    tasks, skipped, errors = plan_tasks([folder], out)
    assert [t.source for t in tasks] == [str(folder / "a.jpg")]
    assert skipped == [] and errors == []
    assert _detect_inputs(folder, out) == ["a.jpg"]  # its own rule: counted in --out
    assert find_inputs([str(folder)], [out]).left_out == {out.resolve(): 1}  # sub/ searched once
    # --out around the inputs: those below the input folder are inputs
    around = tmp_path / "around"
    _image(around / "in" / "sub" / "c.jpg")
    tasks, _, _ = plan_tasks([around / "in"], around)
    assert [t.source for t in tasks] == [str(around / "in" / "sub" / "c.jpg")]


# --- what tf-detect's walk leaves out is said, as tf-anonymize's --------------------------------

def test_tf_detect_says_what_its_walk_left_out(tmp_path, caplog, monkeypatch):
    """Hidden images and folders, a named pipe named as an image (its read would block) and a
    folder that cannot be read were passed over without a word; a hidden file of another
    suffix is no more an input than a visible one (not said). Over ten of a kind: counted."""
    folder = tmp_path / "in"
    _image(folder / "a.png")
    _image(folder / ".face.jpg")
    _image(folder / ".cache" / "b.jpg")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "locked").mkdir()
    os.mkfifo(folder / "pipe.jpg")
    for i in range(11):
        (folder / f"._IMG_{i:02}.JPG").write_bytes(b"\x00\x05\x16\x07")
    scandir = os.scandir
    locked = {str(folder / "locked")}

    def refusing(path="."):
        if os.fspath(path) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)  # tests run as root: chmod 000 is no lock
    with caplog.at_level(logging.WARNING, logger=DETECT_LOG):
        found = find_inputs([str(folder)])
    assert [job.rel.as_posix() for job in found.jobs] == ["a.png"] and found.errors == []
    names = ", ".join(str(folder / f"._IMG_{i:02}.JPG") for i in range(10))
    assert [r.getMessage() for r in caplog.records if r.name == DETECT_LOG] == [
        f'{folder / ".cache"}: hidden folder (its name starts with "."), not searched; give it '
        "by name to search it",
        f'12 hidden images (names starting with "."), not read; give one by name to detect its '
        f"faces: {names} and 2 more",
        f"{folder / 'pipe.jpg'}: named pipe, socket or device, not a file: left as it is",
        f"{folder / 'locked'}: folder that cannot be read, not searched"]
    assert len(found.walk_left_out) == 15
    caplog.clear()
    # one hidden image: a line of its own; a folder holding nothing else says so
    only = tmp_path / "only"
    _image(only / ".face.png")
    with caplog.at_level(logging.WARNING, logger=DETECT_LOG):
        found = find_inputs([str(only)])
    assert found.jobs == [] and found.errors == [
        (str(only), f"{only}: folder holds no image files (.jpg, .jpeg, .png, .bmp, .gif, .tif, "
                    ".tiff, .webp, .ppm, .pgm; 1 left out: hidden, already searched, unreadable or special)")]
    assert [r.getMessage() for r in caplog.records if r.name == DETECT_LOG] == [
        f'{only / ".face.png"}: hidden image (its name starts with "."), not read; give it by '
        "name to detect its faces"]
    # the folder given cannot be read: an error, as tf-anonymize's
    locked.add(str(folder))
    found = find_inputs([str(folder)])
    assert found.jobs == [] and found.walk_left_out == []
    assert found.errors == [(str(folder), f"{folder}: cannot read the folder")]
    assert plan_tasks([folder], tmp_path / "out")[2] == found.errors


# --- GIF, PPM and PGM in tf-anonymize ---------------------------------------------------------

def _face(image: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = FACE
    return image[y1:y2, x1:x2].astype(int)


def _outside(image: np.ndarray) -> np.ndarray:
    """The pixels no mask reaches (BoxDetector's face enlarged 1.3x lies within x, y < 47)."""
    return image[:, 50:].astype(int)


def test_gif_ppm_and_pgm_are_anonymised_in_their_format(tmp_path, monkeypatch, capsys):
    """They were errors (".gif files are not supported; convert it"). Now each copy is written
    in its input's format with the face masked: a static GIF (quantised again: close to the
    rest of the picture), a PPM (exact outside the mask) and a PGM, gray as it came (an RGB
    array under a .pgm name is written as a PPM by Pillow)."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _photo(folder / "still.gif")
    _photo(folder / "colour.ppm")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 64), np.uint8)).save(folder / "gray.pgm")
    status, err = _run_cli([folder, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 0, err
    assert "3 done, 0 skipped, 0 failed" in err and "warning" not in err
    for name, mode, header in (("still.gif", "P", b"GIF8"), ("colour.ppm", "RGB", b"P6"),
                               ("gray.pgm", "L", b"P5")):
        assert (out / name).read_bytes().startswith(header), name
        with Image.open(folder / name) as im_in, Image.open(out / name) as im_out:
            assert (im_out.mode, im_out.size, getattr(im_out, "n_frames", 1)) == \
                (mode, (64, 48), 1), name
            source = np.asarray(im_in.convert("RGB"))
            written = np.asarray(im_out.convert("RGB"))
        assert np.abs(_face(written) - _face(source)).mean() > 20, name  # masked
        change = np.abs(_outside(written) - _outside(source))
        assert change.max() == 0 if name != "still.gif" else change.mean() < 8, name
        side = json.loads((out / f"{name}.json").read_text())
        assert side["image_frames"] == {"in_file": 1, "kept": 1}


def test_an_animated_gif_copy_holds_its_masked_first_frame_alone(tmp_path, monkeypatch, capsys):
    """A 3-frame GIF: the first frame is anonymised and written, alone; the two others never
    reach the copy (they would ship their faces unmasked) and are a counted warning, as a
    multi-page TIFF's pages; the sidecar records them."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    frames = [Image.fromarray(np.random.default_rng(k).integers(0, 255, (48, 64, 3), np.uint8))
              for k in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    with Image.open(folder / "anim.gif") as im:
        assert im.n_frames == 3
        first = np.asarray(im.convert("RGB"))
    status, err = _run_cli([folder, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 0, err
    assert (f"tf-anonymize: warning: {folder / 'anim.gif'}: holds 3 frames or pages; only the "
            f"first is anonymised and written to {out / 'anim.gif'} (2 left out)") in err
    assert "1 done (1 with warnings), 0 skipped, 0 failed" in err
    with Image.open(out / "anim.gif") as im:
        assert im.n_frames == 1 and not getattr(im, "is_animated", False)
        written = np.asarray(im.convert("RGB"))
    assert np.abs(_face(written) - _face(first)).mean() > 20
    assert np.abs(_outside(written) - _outside(first)).mean() < 8
    side = json.loads((out / "anim.gif.json").read_text())
    assert side["image_frames"] == {"in_file": 3, "kept": 1}


def test_a_pbm_is_still_refused(tmp_path):
    """1 bit a pixel: a blurred face would be thresholded back to its outline."""
    scan = tmp_path / "scan.pbm"
    Image.fromarray(np.zeros((48, 64), bool)).save(scan)
    tasks, _, errors = plan_tasks([scan], tmp_path / "out")
    assert tasks == [] and errors == [(str(scan), f"{scan}: not anonymised: .pbm files are not "
                                       "supported; convert it to one of .jpg, .jpeg, .png, .bmp, "
                                       ".gif, .tif, .tiff, .webp, .ppm, .pgm")]


def test_images_of_other_formats_are_errors_and_videos_named_in_tf_detect_too(tmp_path, caplog):
    """tf-detect passed .heic photos and videos in a folder over in silence (``tf-detect --blur``
    left their faces visible without a word); tf-anonymize names both. Now each such image is
    an error in both, worded alike, and tf-detect names the videos it does not read; those
    inside an output folder stay out of it."""
    folder, out = tmp_path / "in", tmp_path / "in" / "out"
    _image(folder / "a.jpg")
    for name in ("b.HEIC", "sub/c.avif", "out/d.heic"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"not decoded: the suffix says it all")
    (folder / "v.mp4").write_bytes(b"\x00")
    (folder / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger=DETECT_LOG):
        found = find_inputs([str(folder)], [out])
    assert [job.rel.as_posix() for job in found.jobs] == ["a.jpg"]
    expected = [(str(folder / name), f"{folder / name}: {{}}: {suffix} files are not supported; "
                 "convert it to one of .jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, "
                 ".pgm") for name, suffix in (("b.HEIC", ".heic"), ("sub/c.avif", ".avif"))]
    assert found.errors == [(path, text.format("not read")) for path, text in expected]
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: 1 video(s) not read (tf-detect reads images; tf-anonymize anonymises "
        "videos): v.mp4"]
    _, _, errors = plan_tasks([folder], out)
    assert sorted(errors) == [(path, text.format("not anonymised")) for path, text in expected]
    only = tmp_path / "only"
    only.mkdir()
    (only / "x.heic").write_bytes(b"")
    assert find_inputs([str(only)]).errors == [  # that error alone: no "holds no image files"
        (str(only / "x.heic"), unsupported_image(only / "x.heic", "not read"))]


def test_images_of_unknown_suffixes_are_errors_in_tf_detect_as_in_tf_anonymize(tmp_path):
    """An exiftool backup (.jpg_original), a .bak or a name without suffix holding a photo:
    tf-anonymize named each as an error while ``tf-detect --blur`` passed them over in
    silence. Now both name them, worded alike; a video or text under another suffix stays
    out of tf-detect, and so does such an image inside an output folder."""
    folder, out = tmp_path / "in", tmp_path / "in" / "out"
    _image(folder / "a.jpg")
    for name in ("a.jpg_original", "c", "sub/b.bak", "out/d.bak"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes((folder / "a.jpg").read_bytes())
    Image.open(folder / "a.jpg").save(folder / "p.bak", format="PNG")
    (folder / "v.insv").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(16))  # a video
    (folder / "IMG_1.CR2").write_bytes(b"II*\x00" + bytes(64))  # a camera's raw file: TIFF-like
    (folder / "notes.txt").write_text("JFIF")
    found = find_inputs([str(folder)], [out])
    assert [job.rel.as_posix() for job in found.jobs] == ["a.jpg"]
    images = ".jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm"
    expected = [(str(folder / name), f"{folder / name}: {{}}: the file holds {what} but {why}; "
                 f"rename or convert it to one of {images}")
                for name, what, why in (
                    ("a.jpg_original", "a JPEG image", "its suffix .jpg_original is not one {} "
                                                       "reads"),
                    ("c", "a JPEG image", "its name has no suffix"),
                    ("p.bak", "a PNG image", "its suffix .bak is not one {} reads"),
                    ("sub/b.bak", "a JPEG image", "its suffix .bak is not one {} reads"))]
    raw = (str(folder / "IMG_1.CR2"), f"{folder / 'IMG_1.CR2'}: {{}}: .cr2 files are not "
           f"supported; convert it to one of {images}")  # convert, not "rename"
    assert found.errors == [raw[:1] + (raw[1].format("not read"),)] + [
        (path, text.replace("{} ", "tf-detect ").format("not read")) for path, text in expected]
    _, _, errors = plan_tasks([folder], out)
    assert sorted(errors) == sorted(
        [raw[:1] + (raw[1].format("not anonymised"),)] +
        [(path, text.replace("{} ", "tf-anonymize ").format("not anonymised"))
         for path, text in expected] +
        [(str(folder / "v.insv"), f"{folder / 'v.insv'}: not anonymised: the file holds an MP4 "
          "or QuickTime video but its suffix .insv is not one tf-anonymize reads; rename or "
          "convert it to one of .mp4, .mov, .mkv, .webm, .avi, .m4v")])
