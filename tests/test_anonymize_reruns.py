"""tf-anonymize reruns and folders, with the CLI's own planning and writers (a fixed-box
detector, real PyAV and Pillow files): an input replaced under the same name is made again,
a file at an output path without a sidecar is not tf-anonymize's and is left as it is, and
every file of a folder is anonymised or mentioned (camera names such as .LRV and .THM read)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from test_anonymize_jobs import FACE, BoxDetector, _photo, _run_cli, _sha
from tinyfaces_trt import media_files
from tinyfaces_trt.anonymize import cli, jobs, reruns
from tinyfaces_trt.anonymize.sidecar import input_identity as sidecar_identity
from tinyfaces_trt.anonymize.sidecar import output_record
from tinyfaces_trt.anonymize.jobs import Options, is_done, plan_tasks

av = pytest.importorskip("av")


def _clip(path: Path, frames: int, rate: int = 25, fmt: str | None = None) -> Path:
    """A ``frames``-frame 64 x 48 H.264 clip (MP4 unless ``fmt`` names another muxer)."""
    with av.open(str(path), "w", format=fmt or "mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(frames)
        for _ in range(frames):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def _frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _blurred(output: Path, source: Path) -> bool:
    """Whether ``output`` is the image ``source`` with its face (:data:`FACE`) blurred."""
    from PIL import Image

    x1, y1, x2, y2 = FACE
    inner = np.s_[y1 + 6:y2 - 6, x1 + 6:x2 - 6]
    made, original = (np.asarray(Image.open(p).convert("RGB")).astype(int)
                      for p in (output, source))
    return made.shape == original.shape and np.abs(made[inner] - original[inner]).mean() > 20


# --- 1: an input replaced under the same name --------------------------------------------------

def test_a_clip_replaced_under_its_name_is_made_again(tmp_path, monkeypatch, capsys):
    """A card dump reuses FILE0001.MP4: the 5-frame clip that replaced the 3-frame one is
    anonymised (the run says why), and a third run skips it."""
    card, out = tmp_path / "sd", tmp_path / "out"
    card.mkdir()
    clip = _clip(card / "FILE0001.MP4", 3)
    status, err = _run_cli([card, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 0 and "1 done, 0 skipped, 0 failed" in err
    old_size = clip.stat().st_size
    _clip(clip, 5, rate=10)
    status, err = _run_cli([card, "--out", out], monkeypatch, capsys)
    assert status == 0 and "1 done, 0 skipped, 0 failed" in err
    size = clip.stat().st_size
    assert (f"tf-anonymize: {clip}: making {out / 'FILE0001.MP4'} again: its input changed "
            f"since it was made (size {size} bytes, was {old_size})") in err.splitlines()
    assert _frames(out / "FILE0001.MP4") == 5
    side = json.loads((out / "FILE0001.MP4.json").read_text())
    assert side["summary"]["frames"] == 5 and side["input_identity"]["size"] == size
    status, err = _run_cli([card, "--out", out], monkeypatch, capsys)
    assert status == 0 and "0 done, 1 skipped, 0 failed" in err


def _made(tmp_path: Path, data: bytes, name: str = "v.mp4") -> tuple[Path, jobs.Task]:
    """An input of ``data`` whose output and sidecar (input identity recorded) exist."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir(exist_ok=True)
    source = src / name
    source.write_bytes(data)
    task = plan_tasks([source], out, overwrite=True)[0][0]
    Path(task.output).parent.mkdir(parents=True, exist_ok=True)
    Path(task.output).write_bytes(b"made before")
    header = jobs._header(BoxDetector(), task, Options(), jobs.input_identity(task.source))
    header["output_file"] = output_record(task.output)
    Path(task.sidecar).write_text(json.dumps(header))
    return source, task


def _redo(task: jobs.Task) -> str | None:
    """The planner's reason to make ``task`` again ("skipped": it is not)."""
    tasks, skipped, errors = plan_tasks([task.source], Path(task.output).parent, options=Options())
    assert not errors and len(tasks) + len(skipped) == 1
    assert is_done(task, Options()) == bool(skipped)  # --ray's resume check agrees
    return tasks[0].redo if tasks else "skipped"


def test_what_counts_as_the_same_input(tmp_path):
    """Size, then the sha256 of the whole file (up to 2 MiB) or of its first and last MiB, then,
    for such a large file, its modification time: a photo copied again with a new time is the
    same, a video is not; the middle of a large file is not read."""
    photo, task = _made(tmp_path, b"a" * 1000, "p.jpg")
    assert _redo(task) == "skipped"
    os.utime(photo, ns=(0, 10**18))  # copied again without its time: same bytes
    assert _redo(task) == "skipped"
    photo.write_bytes(b"b" * 1000)
    assert _redo(task) == "its input changed since it was made (same size, other content)"
    big = 3 << 20
    video, task = _made(tmp_path, bytes(big))
    assert _redo(task) == "skipped"
    stat = video.stat()
    with open(video, "r+b") as f:  # rewritten in the middle, its time put back
        f.seek(big // 2)
        f.write(b"x")
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _redo(task) == "skipped"
    with open(video, "r+b") as f:
        f.seek(big - 1)
        f.write(b"x")
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert _redo(task) == "its input changed since it was made (same size, other content)"
    video, task = _made(tmp_path, bytes(big))
    os.utime(video, ns=(0, 1_700_000_000 * 10**9))
    assert _redo(task).startswith("its input was modified since it was made (modified 2023-11-1")
    video.write_bytes(bytes(big + 1))
    assert _redo(task) == f"its input changed since it was made (size {big + 1} bytes, was {big})"


def test_a_sidecar_of_an_older_version_or_an_unfinished_run_is_made_again(tmp_path):
    """A sidecar recording no input identity cannot show the input unchanged, and a run's
    provisional claim is no finished output: both are made again, saying why."""
    _, task = _made(tmp_path, b"photo", "p.jpg")
    side = json.loads(Path(task.sidecar).read_text())
    del side["input_identity"]
    Path(task.sidecar).write_text(json.dumps(side))
    assert _redo(task) == ("its sidecar records no input size, time or hash (an older "
                           "tf-anonymize wrote it), so the input may have changed since")
    Path(task.sidecar).write_text(json.dumps({"format": "tinyfaces-anonymize/1",
                                              "input": task.source, "incomplete": True}))
    assert _redo(task) == "an earlier run stopped before its sidecar was written"


def test_a_run_stopped_before_the_sidecar_leaves_its_claim_and_the_next_run_redoes(
        tmp_path, monkeypatch, capsys):
    """Every output tf-anonymize renames into place has a sidecar first (a provisional one):
    a run killed before the full sidecar leaves the output as its own, made again next time."""
    photo, out = _photo(tmp_path / "p.png"), tmp_path / "out"

    def killed(self, path, **header):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(jobs.AuditLog, "write", killed)
        status, _ = _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 130 and (out / "p.png").exists()
    claim = json.loads((out / "p.png.json").read_text())
    assert claim["incomplete"] is True and claim["input"] == str(photo)
    assert claim["input_identity"]["size"] == photo.stat().st_size
    status, err = _run_cli([photo, "--out", out], monkeypatch, capsys)
    assert status == 0 and "1 done, 0 skipped, 0 failed" in err
    assert (f"tf-anonymize: {photo}: making {out / 'p.png'} again: an earlier run stopped "
            "before its sidecar was written") in err.splitlines()
    assert "incomplete" not in json.loads((out / "p.png.json").read_text())


# --- 2: a file at an output path that tf-anonymize did not write ------------------------------

def test_a_file_without_a_sidecar_at_an_output_path_is_left_as_it_is(tmp_path, monkeypatch,
                                                                     capsys):
    """Without --overwrite: untouched, one error line saying why and what to do, counted as
    failed (exit 1), the other inputs done; --overwrite replaces it."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    first, second = _photo(src / "a.png"), _photo(src / "b.png")
    (out / "a.png").write_bytes(b"precious edited version")
    status, err = _run_cli([src, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 1
    assert err.splitlines()[0] == (
        f"tf-anonymize: error: {first}: not anonymised: {out / 'a.png'} exists and was not "
        "written by tf-anonymize (no sidecar a.png.json); move it away, or --overwrite replaces "
        "it (and redoes every output)")
    assert "1 done, 0 skipped, 1 failed" in err
    assert (out / "a.png").read_bytes() == b"precious edited version"
    assert not (out / "a.png.json").exists() and _blurred(out / "b.png", second)
    status, err = _run_cli([src, "--out", out, "-q", "--overwrite"], monkeypatch, capsys)
    assert status == 0 and "2 done, 0 skipped, 0 failed" in err
    assert _blurred(out / "a.png", first) and (out / "a.png.json").exists()


# --- 3: every file of a folder anonymised or mentioned -----------------------------------------

def _jpeg(path: Path) -> Path:
    from PIL import Image

    _photo(path.with_suffix(".png"))
    Image.open(path.with_suffix(".png")).save(path, format="JPEG", quality=95)
    path.with_suffix(".png").unlink()
    return path


@pytest.fixture()
def gopro(tmp_path) -> Path:
    """A camera card's folder: GoPro's clip, low-resolution copy (.LRV, an MP4) and thumbnail
    (.THM, a JPEG), JPEGs named .jfif and .jpe, QuickTime and MPEG-4 names, an Insta360 clip
    (.insv, an MP4), media with a suffix none reads or none, a note, a hidden file and a
    sidecar of an earlier run."""
    card = tmp_path / "DCIM"
    card.mkdir()
    for name in ("GOPR0001.MP4", "GOPR0001.LRV", "clip.mp4v", "clip.insv"):
        _clip(card / name, 3)
    _clip(card / "clip.qt", 3, fmt="mov")
    for name in ("GOPR0001.THM", "photo.jfif", "photo2.jpe", "IMG_0001", "old.jpg.bak"):
        _jpeg(card / name)
    (card / "notes.txt").write_text("card 3, 2024-05-01\n")
    _jpeg(card / ".hidden.jpg")
    (card / "GOPR0001.MP4.json").write_text("{}")
    return card


def test_camera_and_jpeg_names_are_anonymised_in_their_own_format(gopro, tmp_path, monkeypatch,
                                                                  capsys):
    from PIL import Image

    out = tmp_path / "out"
    status, err = _run_cli([gopro, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 1 and "7 done, 0 skipped, 3 failed" in err
    for name in ("GOPR0001.THM", "photo.jfif", "photo2.jpe"):
        assert Image.open(out / name).format == "JPEG" and _blurred(out / name, gopro / name)
        assert json.loads((out / f"{name}.json").read_text())["kind"] == "image"
    for name, brand in (("GOPR0001.MP4", b"isom"), ("GOPR0001.LRV", b"isom"),
                        ("clip.mp4v", b"isom"), ("clip.qt", b"qt  ")):
        assert (out / name).read_bytes()[8:12] == brand and _frames(out / name) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n for m in ("GOPR0001.MP4", "GOPR0001.LRV", "GOPR0001.THM", "clip.mp4v", "clip.qt",
                    "photo.jfif", "photo2.jpe") for n in (m, f"{m}.json"))  # no temporaries


def test_every_file_of_a_folder_is_anonymised_or_mentioned(gopro, tmp_path, caplog):
    """Media of a suffix none reads (or none) are errors naming what they hold; other files
    are named in one warning; hidden files and sidecars are not mentioned."""
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="tinyfaces_trt.anonymize"):
        tasks, _, errors = plan_tasks([gopro], out)
    assert sorted(Path(t.source).name for t in tasks) == [
        "GOPR0001.LRV", "GOPR0001.MP4", "GOPR0001.THM", "clip.mp4v", "clip.qt", "photo.jfif",
        "photo2.jpe"]
    videos = ".mp4, .mov, .mkv, .webm, .avi, .m4v"
    images = ".jpg, .jpeg, .png, .bmp, .gif, .tif, .tiff, .webp, .ppm, .pgm"
    assert errors == [
        (str(gopro / "IMG_0001"), f"{gopro / 'IMG_0001'}: not anonymised: the file holds a JPEG "
         f"image but its name has no suffix; rename or convert it to one of {images}"),
        (str(gopro / "clip.insv"), f"{gopro / 'clip.insv'}: not anonymised: the file holds an "
         "MP4 or QuickTime video but its suffix .insv is not one tf-anonymize reads; rename or "
         f"convert it to one of {videos}"),
        (str(gopro / "old.jpg.bak"), f"{gopro / 'old.jpg.bak'}: not anonymised: the file holds "
         "a JPEG image but its suffix .bak is not one tf-anonymize reads; rename or convert it "
         f"to one of {images}")]
    assert [r.getMessage() for r in caplog.records] == [
        f"{gopro}: 1 other file(s) left as they are (not images or videos): notes.txt"]


def test_a_long_list_of_other_files_is_cut_short(tmp_path, caplog):
    folder = tmp_path / "logs"
    folder.mkdir()
    _photo(folder / "a.png")
    for i in range(12):
        (folder / f"trip{i:02}.gpx").write_text("<gpx/>")
    with caplog.at_level("WARNING", logger="tinyfaces_trt.anonymize"):
        assert plan_tasks([folder], tmp_path / "out")[2] == []
    names = ", ".join(f"trip{i:02}.gpx" for i in range(10))
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: 12 other file(s) left as they are (not images or videos): {names} and 2 more"]


def test_media_signatures_of_unknown_suffixes(tmp_path):
    """What :func:`media_files.media_in` tells apart: image and video containers, not audio or
    text."""
    heads = {b"\x89PNG\r\n\x1a\n": ("a PNG image", "image"),
             b"\x00\x00\x00\x18ftypheic": ("a HEIF or AVIF image", "image"),
             b"\x00\x00\x00\x18ftypqt  ": ("an MP4 or QuickTime video", "video"),
             b"\x00\x00\x00\x18ftypM4A ": None,
             b"RIFF\x00\x00\x00\x00WEBPVP8 ": ("a WebP image", "image"),
             b"RIFF\x00\x00\x00\x00AVI LIST": ("an AVI video", "video"),
             b"RIFF\x00\x00\x00\x00WAVEfmt ": None,
             b"\x1a\x45\xdf\xa3\x01": ("a Matroska or WebM video", "video"),
             b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00\x28\x00\x00\x00":
                 ("a BMP image", "image"),
             b"BMW service 2024\n": None,
             b"\x00\x00\x01\xba\x44": ("a video", "video"),
             bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"): None,  # ASF: WMA audio too
             b"ID3\x04\x00": None, b"": None}
    assert {head: media_files.media_in(head) for head in heads} == heads


def test_a_named_pipe_in_a_folder_does_not_block_the_plan(tmp_path):
    """Reading the first bytes of every file of unknown suffix opened a named pipe, which
    waits for a writer for ever."""
    import threading

    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "a.png")
    os.mkfifo(folder / "pipe")
    planned = []
    worker = threading.Thread(target=lambda: planned.append(plan_tasks([folder], tmp_path / "out")),
                              daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "planning blocked on the named pipe"
    tasks, skipped, errors = planned[0]
    assert [Path(t.source).name for t in tasks] == ["a.png"] and not errors


def test_an_unchanged_folder_is_skipped_whole(tmp_path, monkeypatch, capsys):
    """The identity recorded is the one a rerun finds: an unchanged folder's outputs are all
    skipped, and they and their sidecars keep their bytes."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _photo(src / "a.png")
    _clip(src / "b.mp4", 3)
    assert _run_cli([src, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    before = {p.name: _sha(p) for p in out.iterdir()}
    status, err = _run_cli([src, "--out", out, "-q"], monkeypatch, capsys)
    assert status == 0 and "0 done, 2 skipped, 0 failed" in err
    assert {p.name: _sha(p) for p in out.iterdir()} == before


# --- 4: the same file given twice, or found again at another path ------------------------------

def test_a_file_named_twice_or_in_a_folder_also_given_is_anonymised_once(tmp_path, monkeypatch,
                                                                        capsys):
    """in/one.png in/one.png ./in/one.png in alias.png (a link to it) --out out: one output per
    file (one.png, two.png; no one_2.png ...), where first found, and one line counting the
    duplicates left out; a folder given with its sub-folder keeps the folder's relative path."""
    monkeypatch.chdir(tmp_path)
    src = Path("in")
    (src / "sub").mkdir(parents=True)
    _photo(src / "one.png")
    _photo(src / "sub" / "two.png")
    Path("alias.png").symlink_to("in/one.png")
    status, err = _run_cli(["in/one.png", "in/one.png", "./in/one.png", "in", "alias.png",
                            "in/sub", "--out", "out"], monkeypatch, capsys)
    assert status == 0 and "2 done, 0 skipped, 0 failed" in err
    assert ("tf-anonymize: 5 duplicate input(s) left out, the same file as an earlier input (by "
            "its real path): in/one.png, alias.png, in/sub/two.png") in err.splitlines()
    assert sorted(p.relative_to("out").as_posix() for p in Path("out").rglob("*")
                  if p.is_file()) == ["one.png", "one.png.json", "sub/two.png",
                                      "sub/two.png.json"]
    assert json.loads(Path("out/one.png.json").read_text())["input"] == "in/one.png"
    tasks = plan_tasks([src / "sub", src], tmp_path / "out2")[0]  # the sub-folder first
    assert [(t.source, Path(t.output).relative_to(tmp_path / "out2").as_posix()) for t in tasks] \
        == [("in/sub/two.png", "two.png"), ("in/one.png", "one.png")]


def test_a_moved_folder_is_skipped_not_anonymised_again_as_new_names(tmp_path, monkeypatch,
                                                                     capsys):
    """mv card1 card2, then a rerun into the same --out: each output whose sidecar records the
    file's identity (size and sha256, its time for a video over 2 MiB) is skipped, the line
    saying of which path it was made, the outputs untouched; with other options it is made
    again under its own name; another file of the same name still gets _2."""
    card1, card2, out = tmp_path / "card1", tmp_path / "card2", tmp_path / "out"
    card1.mkdir()
    _photo(card1 / "a.png")
    _clip(card1 / "clip.mp4", 3)
    assert _run_cli([card1, "--out", out, "-q"], monkeypatch, capsys)[0] == 0
    before = {p.name: _sha(p) for p in out.iterdir()}
    os.rename(card1, card2)
    status, err = _run_cli([card2, "--out", out], monkeypatch, capsys)
    assert status == 0 and "0 done, 2 skipped, 0 failed" in err
    for name in ("a.png", "clip.mp4"):
        assert (f"tf-anonymize: {card2 / name}: skipped, {out / name} exists, made of the same "
                f"file (size and sha256) as {card1 / name} (--overwrite replaces it)"
                ) in err.splitlines()
    assert {p.name: _sha(p) for p in out.iterdir()} == before
    status, err = _run_cli([card2 / "a.png", "--out", out, "--mode", "pixelate"], monkeypatch,
                           capsys)
    assert status == 0 and "1 done, 0 skipped, 0 failed" in err
    assert (f"tf-anonymize: {card2 / 'a.png'}: making {out / 'a.png'} again: it was made with "
            "mode blur (now pixelate)") in err.splitlines()
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no a_2.png
    pixelated = _sha(out / "a.png")
    other = tmp_path / "card3" / "a.png"
    other.parent.mkdir()
    from PIL import Image

    Image.open(card2 / "a.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    status, err = _run_cli([other, "--out", out, "-q", "--mode", "pixelate"], monkeypatch,
                           capsys)
    assert status == 0 and "1 done, 0 skipped, 0 failed" in err
    assert json.loads((out / "a_2.png.json").read_text())["input"] == str(other)
    assert _sha(out / "a.png") == pixelated


def test_which_moved_files_are_the_same_and_which_are_read(tmp_path, monkeypatch):
    """A moved photo is the same whatever its time; a large video copied anew (its time
    changed) is not, and gets _2 as before; an input of the run at the recorded path takes its
    own output; only a sidecar recording the input's size has the input read."""
    photo, task = _made(tmp_path, b"a" * 1000, "p.jpg")
    moved = tmp_path / "moved"
    os.rename(tmp_path / "src", moved)
    os.utime(moved / "p.jpg", ns=(0, 10**18))
    tasks, skipped, _ = plan_tasks([moved / "p.jpg"], Path(task.output).parent, options=Options())
    assert not tasks and skipped[0].task.output == task.output
    assert skipped[0].task.moved_from == str(photo)
    (moved / "p.jpg").write_bytes(b"b" * 1000)  # same size, other bytes
    assert _redo_moved(moved / "p.jpg", task) == "p_2.jpg"
    big = 3 << 20
    video, task = _made(tmp_path, bytes(big))
    os.rename(video, moved / "v.mp4")
    assert _redo_moved(moved / "v.mp4", task) == "skipped"
    os.utime(moved / "v.mp4", ns=(0, 1_700_000_000 * 10**9))  # cp without -p
    assert _redo_moved(moved / "v.mp4", task) == "v_2.mp4"
    # the run's own input at the recorded path keeps its output; the moved copy gets _2
    (tmp_path / "src" / "v.mp4").write_bytes(bytes(big))
    os.utime(tmp_path / "src" / "v.mp4", ns=(0, 1_700_000_000 * 10**9))
    out = Path(task.output).parent
    tasks, skipped, _ = plan_tasks([moved / "v.mp4", tmp_path / "src" / "v.mp4"], out,
                                   options=Options())
    assert [Path(t.output).name for t in tasks] == ["v_2.mp4", "v.mp4"]
    assert [t.moved_from for t in tasks] == [None, None]
    read = []
    monkeypatch.setattr(reruns, "input_identity",
                        lambda path: read.append(path) or sidecar_identity(path))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "v.mp4").write_bytes(bytes(big - 1))
    assert _redo_moved(tmp_path / "other" / "v.mp4", task) == "v_2.mp4" and read == []


def _redo_moved(source: Path, task: jobs.Task) -> str:
    """"skipped" where the planner takes ``task``'s output for ``source``'s, else the name of
    the output it plans."""
    tasks, skipped, errors = plan_tasks([source], Path(task.output).parent, options=Options())
    assert not errors
    return "skipped" if skipped else Path(tasks[0].output).name


# --- 4: another --review-band (documentation review rB, finding 4) -----------------------------

class ScoresDetector(BoxDetector):
    """Gives frame ``i`` of a video (or an image) the detections ``per_frame[i]``: scores, each
    on a box of its own (:data:`BOXES`), as float32 as a runner's are; refuses more frames."""

    BOXES = ((8, 8, 28, 28), (34, 8, 54, 28), (8, 28, 28, 46))

    def __init__(self, per_frame):
        self.per_frame, self.seen = list(per_frame), 0

    def detect(self, image):
        scores = self.per_frame[self.seen]
        self.seen += 1
        return np.array([[*box, s] for box, s in zip(self.BOXES, scores)],
                        np.float32).reshape(-1, 5)


def _no_detector(args):
    raise AssertionError("a review list update needs no detector")


def test_another_review_band_updates_only_the_review_list(tmp_path, monkeypatch, capsys):
    """A rerun with --review-band 0.3 keeps the output (same bytes, same modification time)
    and builds no detector: the sidecar's review list is the one a full run with 0.3 writes,
    recomputed from the recorded scores (frame 3's two scores both recorded as 0.5, one above
    the threshold and one below, settled by the old list); every other field is kept but the
    band, the review count and a note of the change. The next such run skips it."""
    per_frame = [[0.55], [0.65, 0.58], [0.75], [0.500003, 0.499998], [0.9], [0.62]]
    clip, out, fresh = _clip(tmp_path / "clip.mp4", 6), tmp_path / "out", tmp_path / "fresh"
    status, _ = _run_cli([clip, "--out", out, "-q", "--hold", "0"], monkeypatch, capsys,
                         ScoresDetector(per_frame))
    assert status == 0
    output, side_path = out / "clip.mp4", out / "clip.mp4.json"
    before, stat = json.loads(side_path.read_text()), output.stat()
    data = output.read_bytes()
    assert before["review"] == {"band": [0.5, 0.6], "frames": [
        {"index": 0, "time": 0.0, "scores": [0.55]}, {"index": 1, "time": 0.04, "scores": [0.58]},
        {"index": 3, "time": 0.12, "scores": [0.5]}]}

    monkeypatch.setattr(cli, "_make_detector", _no_detector)
    status = cli.main([str(clip), "--out", str(out), "--hold", "0", "--review-band", "0.3"])
    printed = capsys.readouterr()
    assert status == 0
    assert "tf-anonymize: 0 done, 1 review list(s) updated, 0 skipped, 0 failed in" in printed.err
    assert printed.out.splitlines() == [
        f"{clip} -> {side_path}: review list updated (review_band 0.1 (now 0.3)), 5 to review; "
        f"{output} kept as it is"]
    assert output.read_bytes() == data and output.stat().st_mtime_ns == stat.st_mtime_ns
    after = json.loads(side_path.read_text())
    expected = {"band": [0.5, 0.8], "frames": [
        {"index": 0, "time": 0.0, "scores": [0.55]},
        {"index": 1, "time": 0.04, "scores": [0.58, 0.65]},
        {"index": 2, "time": 0.08, "scores": [0.75]},
        {"index": 3, "time": 0.12, "scores": [0.5]},
        {"index": 5, "time": 0.2, "scores": [0.62]}]}
    assert after["review"] == expected
    assert after["summary"] == {**before["summary"], "review_frames": 5}
    assert after["options"] == {**before["options"], "review_band": 0.3}
    note = after["review_updates"]
    assert len(note) == 1 and note[0]["command"] == sys.argv
    assert {k: note[0][k] for k in ("review_band", "band", "review_frames")} == {
        "review_band": {"was": 0.1, "now": 0.3}, "band": {"was": [0.5, 0.6], "now": [0.5, 0.8]},
        "review_frames": {"was": 3, "now": 5}}
    changed = ("options", "review", "summary", "review_updates")
    assert {k: v for k, v in after.items() if k not in changed} == \
        {k: v for k, v in before.items() if k not in changed}
    assert after["output_file"] == output_record(output)  # the sha256 of the output kept

    # what a full run with --review-band 0.3 writes
    status, _ = _run_cli([clip, "--out", fresh, "-q", "--hold", "0", "--review-band", "0.3"],
                         monkeypatch, capsys, ScoresDetector(per_frame))
    assert status == 0 and json.loads((fresh / "clip.mp4.json").read_text())["review"] == expected

    status = cli.main([str(clip), "--out", str(out), "--hold", "0", "--review-band", "0.3"])
    assert status == 0 and "0 done, 1 skipped, 0 failed" in capsys.readouterr().err
    assert json.loads(side_path.read_text()) == after
    assert output.read_bytes() == data and output.stat().st_mtime_ns == stat.st_mtime_ns


def test_a_review_list_the_rounded_scores_cannot_give_is_made_again(tmp_path, monkeypatch,
                                                                    capsys):
    """A detection scoring 0.800003, recorded as 0.8, is outside the band (0.5, 0.8] of
    --review-band 0.3, but its recorded score cannot tell: the file is made again, saying why,
    and that frame is not listed; a sidecar without the frames' scores is made again too."""
    per_frame = [[0.55], [0.800003], [0.7]]
    clip, out = _clip(tmp_path / "clip.mp4", 3), tmp_path / "out"
    status, _ = _run_cli([clip, "--out", out, "-q"], monkeypatch, capsys,
                         ScoresDetector(per_frame))
    assert status == 0
    status, err = _run_cli([clip, "--out", out, "--review-band", "0.3"], monkeypatch, capsys,
                           ScoresDetector(per_frame))
    assert status == 0 and "1 done, 0 skipped, 0 failed" in err
    assert (f"tf-anonymize: {clip}: making {out / 'clip.mp4'} again: it was made with "
            "review_band 0.1 (now 0.3), and a detection of frame 1 is recorded with the score 0.8 "
            "(rounded to 1e-5), too close to the new review band's top 0.8 to tell whether it lies "
            "within the band") in err.splitlines()
    side = json.loads((out / "clip.mp4.json").read_text())
    assert [(f["index"], f["scores"]) for f in side["review"]["frames"]] == [(0, [0.55]),
                                                                            (2, [0.7])]
    assert "review_updates" not in side
    del side["frames"]
    (out / "clip.mp4.json").write_text(json.dumps(side))
    tasks, skipped, _ = plan_tasks([clip], out, options=Options(review_band=0.2))
    assert not skipped and tasks[0].review is None and tasks[0].redo == (
        "it was made with review_band 0.3 (now 0.2), and its sidecar does not record the review "
        "band and list and every frame's masks with their scores, which the new review list is "
        "computed from")


def test_a_review_band_reaching_1_keeps_a_score_recorded_as_1(tmp_path, monkeypatch, capsys):
    """A face scoring 0.999999 is recorded as 1 (rounded to 1e-5); --review-band 0.5 over the
    threshold 0.5 reaches 1, which no probability exceeds: the review list is updated (the
    output kept, no detector built), as a full run with 0.5 lists it, not made again as "too
    close to the new review band's top 1". The threshold stays an edge, and a score that is no
    probability (a logit) cannot be placed in a band."""
    from tinyfaces_trt.anonymize.sidecar import ReviewNotRecomputable, recomputed_review

    photo, out, fresh = _photo(tmp_path / "p.png"), tmp_path / "out", tmp_path / "fresh"
    status, _ = _run_cli([photo, "--out", out, "-q"], monkeypatch, capsys,
                         ScoresDetector([[0.999999]]))
    assert status == 0
    before = json.loads((out / "p.png.json").read_text())
    assert before["frames"][0]["faces"][0]["score"] == 1.0 and before["review"]["frames"] == []
    data = (out / "p.png").read_bytes()
    monkeypatch.setattr(cli, "_make_detector", _no_detector)
    status = cli.main([str(photo), "--out", str(out), "--review-band", "0.5"])
    err = capsys.readouterr().err
    assert status == 0 and "0 done, 1 review list(s) updated, 0 skipped, 0 failed" in err
    expected = {"band": [0.5, 1.0], "frames": [{"index": 0, "time": None, "scores": [1.0]}]}
    assert json.loads((out / "p.png.json").read_text())["review"] == expected
    assert (out / "p.png").read_bytes() == data
    status, _ = _run_cli([photo, "--out", fresh, "-q", "--review-band", "0.5"], monkeypatch,
                         capsys, ScoresDetector([[0.999999]]))
    assert status == 0 and json.loads((fresh / "p.png.json").read_text())["review"] == expected
    # a band past 1 is cut at 1; a narrower one still has its top as an edge
    assert recomputed_review(before, 0.9) == expected
    with pytest.raises(ReviewNotRecomputable, match="too close to the new review band's top"):
        recomputed_review({**before, "frames": [{"index": 0, "time": None, "faces": [
            {"track": 0, "box": [8, 8, 40, 40], "score": 0.8, "kind": "detected"}]}]}, 0.3)
    # at the threshold the detector keeps scores that round to it (float32 sigmoids): the
    # recorded list settles them, or nothing does
    at_threshold = {**before, "review": {"band": [0.5, 1.0], "frames": []}, "frames": [
        {"index": 0, "time": None, "faces": [
            {"track": 0, "box": [8, 8, 40, 40], "score": 0.5, "kind": "detected"}]}]}
    assert recomputed_review(at_threshold, 0.2)["frames"] == []
    with pytest.raises(ReviewNotRecomputable, match="too close to the threshold 0.5"):
        recomputed_review({**at_threshold, "review": {"band": [0.5, 0.5], "frames": []}}, 0.2)
    logit = {**before, "frames": [{"index": 0, "time": None, "faces": [
        {"track": 0, "box": [8, 8, 40, 40], "score": 3.2, "kind": "detected"}]}]}
    with pytest.raises(ReviewNotRecomputable, match=r"the score 3.2, which is no probability"):
        recomputed_review(logit, 0.5)
