"""tf-anonymize's planning of folders and output names: what a folder walk leaves out (hidden
files and folders, links to folders already searched, folders that cannot be read, named
pipes) is said, file by file or counted per kind; links to folders are followed, as
tf-detect follows them (tests/test_media_walk.py); a clash suffix is never a name another
input keeps, and the same inputs get the same names whatever their order, so a rerun finds
its outputs."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from test_anonymize_jobs import BoxDetector, _photo
from tinyfaces_trt.anonymize import jobs
from tinyfaces_trt.anonymize.jobs import (LEFT_OUT, Options, Task, left_out_lines, plan_tasks,
                                          process_file)

HIDDEN_MEDIA = ('hidden image or video (its name starts with "."), not anonymised; give it by '
                'name to anonymise it')
HIDDEN_FILE = 'hidden file (its name starts with "."), left as it is'
HIDDEN_FOLDER = ('hidden folder (its name starts with "."), not searched; give it by name to '
                 'anonymise its files')
LINK_TO_SEARCHED = ("links to a folder already searched (a symbolic-link loop or a second link "
                    "to it), not searched again")


def _left_out(skipped):
    return [(r.task.source, r.notes) for r in skipped if r.status == LEFT_OUT]


# --- finding 6: what a folder walk leaves out is said ------------------------------------------

def test_hidden_files_and_folders_are_left_out_and_said_so_linked_folders_followed(tmp_path):
    """The review's folder: 2 of 5 images were anonymised and the 3 others never named. Each
    left out is now a result of its own (hidden image, hidden folder, a link back up the tree;
    a .DS_Store a hidden file), worded a line each; the linked folder is searched (as tf-detect
    searches it); sidecars, temporary files and the --out folder, also through a link, stay
    silent; the hidden image and the linked and hidden folders given by name are
    anonymised."""
    walk, other, out = tmp_path / "walk", tmp_path / "other", tmp_path / "walk" / "anon"
    (walk / "day1").mkdir(parents=True)
    (walk / ".cache").mkdir()
    (other / "day2").mkdir(parents=True)
    _photo(walk / "day1" / "a.jpg")
    _photo(walk / ".hidden_face.jpg")
    _photo(walk / ".cache" / "b.jpg")
    _photo(other / "day2" / "c.jpg")
    _photo(walk / "ünï cødé.JPG")
    (walk / "day2").symlink_to(other / "day2", target_is_directory=True)
    (walk / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (walk / "ünï cødé.JPG.json").write_text("{}")  # a sidecar of an earlier run: silent
    (walk / ".hidden_face.jpg.json").write_text("{}")  # a hidden input's sidecar: silent
    (walk / ".tf-tmp-123.0badcafe-x.jpg").write_bytes(b"")  # a temporary file: silent
    (walk / ".tf-tmp-123.0badcafe-run-ab12").mkdir()  # a staging folder: silent
    out.mkdir()  # --out inside the folder: passed over, silent
    (walk / "out_link").symlink_to(out, target_is_directory=True)  # --out through a link too
    (walk / "day1" / "up").symlink_to(walk, target_is_directory=True)  # a loop
    tasks, skipped, errors = plan_tasks([walk], out)
    names = ["ünï cødé.JPG", "day1/a.jpg", "day2/c.jpg"]  # day2: a link, followed
    assert [t.source for t in tasks] == [str(walk / name) for name in names]
    assert [t.output for t in tasks] == [str(out / name) for name in names]
    assert errors == []
    assert _left_out(skipped) == [(str(walk / ".cache"), (HIDDEN_FOLDER,)),
                                  (str(walk / ".DS_Store"), (HIDDEN_FILE,)),
                                  (str(walk / ".hidden_face.jpg"), (HIDDEN_MEDIA,)),
                                  (str(walk / "day1" / "up"), (LINK_TO_SEARCHED,))]
    assert all(r.status == LEFT_OUT and r.task.output == "" for r in skipped)
    assert left_out_lines(skipped) == [f"{walk / '.cache'}: {HIDDEN_FOLDER}",
                                       f"{walk / '.DS_Store'}: {HIDDEN_FILE}",
                                       f"{walk / '.hidden_face.jpg'}: {HIDDEN_MEDIA}",
                                       f"{walk / 'day1' / 'up'}: {LINK_TO_SEARCHED}"]
    # given by name, each is taken: the hidden image keeps its name, the folders their files
    tasks, skipped, errors = plan_tasks([walk / ".hidden_face.jpg", walk / "day2",
                                         walk / ".cache"], tmp_path / "out2")
    assert [(Path(t.source).name, Path(t.output).name) for t in tasks] == [
        (".hidden_face.jpg", ".hidden_face.jpg"), ("c.jpg", "c.jpg"), ("b.jpg", "b.jpg")]
    assert skipped == [] and errors == []
    assert process_file(BoxDetector(), tasks[0], Options()).status == "done"
    assert Path(tasks[0].output).is_file() and Path(tasks[0].sidecar).is_file()


def test_many_left_out_of_a_kind_are_counted_with_the_first_names(tmp_path):
    """Over ten of a kind: one line counting them and naming the first ten; ten or fewer: a
    line each. A folder holding nothing but hidden files says how many were left out."""
    folder = tmp_path / "card"
    folder.mkdir()
    _photo(folder / "a.png")
    for i in range(12):
        (folder / f"._IMG_{i:02}.JPG").write_bytes(b"\x00\x05\x16\x07")  # macOS resource forks
    for i in range(10):
        (folder / f".note{i}").write_text("x")
    tasks, skipped, errors = plan_tasks([folder], tmp_path / "out")
    assert [Path(t.source).name for t in tasks] == ["a.png"] and errors == []
    assert len(skipped) == 22
    names = ", ".join(str(folder / f"._IMG_{i:02}.JPG") for i in range(10))
    assert left_out_lines(skipped) == [
        f'12 hidden images or videos (names starting with "."), not anonymised; give one by '
        f'name to anonymise it: {names} and 2 more',
        *(f"{folder / f'.note{i}'}: {HIDDEN_FILE}" for i in range(10))]
    only = tmp_path / "only"
    only.mkdir()
    _photo(only / ".face.png")
    tasks, skipped, errors = plan_tasks([only], tmp_path / "out")
    assert tasks == [] and _left_out(skipped) == [(str(only / ".face.png"), (HIDDEN_MEDIA,))]
    assert errors == [(str(only), f"{only}: folder holds no image or video files (1 left out: "
                                  "hidden, already searched, unreadable or special)")]


def test_a_folder_that_cannot_be_read_and_a_named_pipe_are_said(tmp_path, monkeypatch):
    """os.walk passed over a folder it could not list, and the walk over pipes, without a
    word: a sub-folder is left out and said so, the folder given itself is an error."""
    folder = tmp_path / "in"
    (folder / "locked").mkdir(parents=True)
    _photo(folder / "a.png")
    os.mkfifo(folder / "pipe")
    locked = {str(folder / "locked")}
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) in locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)  # tests run as root: chmod 000 is no lock
    tasks, skipped, errors = plan_tasks([folder], tmp_path / "out")
    assert [Path(t.source).name for t in tasks] == ["a.png"] and errors == []
    assert left_out_lines(skipped) == [
        f"{folder / 'pipe'}: named pipe, socket or device, not a file: left as it is",
        f"{folder / 'locked'}: folder that cannot be read, not searched"]
    locked.add(str(folder))
    tasks, skipped, errors = plan_tasks([folder], tmp_path / "out")
    assert tasks == [] and skipped == []
    assert errors == [(str(folder), f"{folder}: cannot read the folder")]


# --- finding 11: clash names ---------------------------------------------------------------------

def _names(tasks, src: Path, out: Path) -> dict[str, str]:
    """{input relative to ``src``: output relative to ``out``}."""
    return {Path(t.source).relative_to(src).as_posix(): Path(t.output).relative_to(out).as_posix()
            for t in tasks}


def _files(src: Path, names: list[str]) -> list[Path]:
    for name in names:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
    return [_photo(src / name) for name in names]


@pytest.mark.parametrize("names, expected", [
    # the review's set: x.jpg took x_2.jpg, x_2.jpg's own name, which got x_2_2.jpg
    (["X.jpg", "x.jpg", "x_2.jpg"], {"X.jpg": "X.jpg", "x.jpg": "x_3.jpg", "x_2.jpg": "x_2.jpg"}),
    (["x.jpg", "X.JPG", "x_2.jpg", "X_3.jpg"],
     {"X.JPG": "X.JPG", "X_3.jpg": "X_3.jpg", "x.jpg": "x_4.jpg", "x_2.jpg": "x_2.jpg"}),
    # outputs keep their input's name and suffix (a .jfif is written as JPEG under its name):
    # x.png, x.jpg and x.jfif do not clash; x.PNG and x.png do
    (["x.png", "x.jpg", "x.jfif", "x.PNG", "x_2.png"],
     {"x.png": "x_3.png", "x.jpg": "x.jpg", "x.jfif": "x.jfif", "x.PNG": "x.PNG",
      "x_2.png": "x_2.png"}),
    # folders whose names differ in case only, with the suffix on the file's name
    (["Day/x.jpg", "day/x.jpg", "day/x_2.jpg"],
     {"Day/x.jpg": "Day/x.jpg", "day/x.jpg": "day/x_3.jpg", "day/x_2.jpg": "day/x_2.jpg"}),
])
def test_a_clash_suffix_is_never_a_name_another_input_keeps(tmp_path, names, expected):
    src, out = tmp_path / "src", tmp_path / "out"
    _files(src, names)
    tasks, skipped, errors = plan_tasks([src], out)
    assert not skipped and not errors
    assert _names(tasks, src, out) == expected


def test_two_folders_clash_without_taking_a_name_one_keeps(tmp_path):
    """a/x.jpg and b/x.jpg clash; b/x_2.jpg keeps its name, so b/x.jpg gets x_3.jpg, whichever
    folder is given first keeping x.jpg (the first argument)."""
    src, out = tmp_path / "src", tmp_path / "out"
    _files(src, ["a/x.jpg", "b/x.jpg", "b/x_2.jpg"])
    tasks, _, _ = plan_tasks([src / "a", src / "b"], out)
    assert _names(tasks, src, out) == {"a/x.jpg": "x.jpg", "b/x.jpg": "x_3.jpg",
                                       "b/x_2.jpg": "x_2.jpg"}
    tasks, _, _ = plan_tasks([src / "b", src / "a"], out)
    assert _names(tasks, src, out) == {"b/x.jpg": "x.jpg", "b/x_2.jpg": "x_2.jpg",
                                       "a/x.jpg": "x_3.jpg"}


def test_names_are_the_same_in_any_order_and_a_rerun_finds_its_outputs(tmp_path, monkeypatch):
    """The same files named in any order, or walked in any order, get the same outputs; once
    made, every rerun skips them all; outputs an older version named are found too."""
    src, out = tmp_path / "src", tmp_path / "out"
    files = _files(src, ["X.jpg", "x.jpg", "x_2.jpg"])
    expected = {"X.jpg": "X.jpg", "x.jpg": "x_3.jpg", "x_2.jpg": "x_2.jpg"}
    for order in itertools.permutations(files):
        assert _names(plan_tasks(list(order), out)[0], src, out) == expected, order
    walk = jobs._walk
    monkeypatch.setattr(jobs, "_walk", lambda *args: reversed(list(walk(*args))))
    assert _names(plan_tasks([src], out)[0], src, out) == expected
    monkeypatch.undo()
    for task in plan_tasks(files, out)[0]:
        assert process_file(BoxDetector(), task, Options()).status == "done"
    for order in itertools.permutations(files):
        tasks, skipped, errors = plan_tasks(list(order), out, options=Options())
        assert not tasks and not errors
        assert _names([r.task for r in skipped], src, out) == expected
    # outputs named by the version before (x.jpg -> x_2.jpg, x_2.jpg -> x_2_2.jpg) are found
    old = tmp_path / "old"
    for source, name in zip(files, ["X.jpg", "x_2.jpg", "x_2_2.jpg"]):
        task = Task(str(source), str(old / name), str(old / name) + ".json", "image")
        assert process_file(BoxDetector(), task, Options()).status == "done"
    tasks, skipped, errors = plan_tasks(files[::-1], old, options=Options())
    assert not tasks and not errors
    assert _names([r.task for r in skipped], src, old) == {
        "X.jpg": "X.jpg", "x.jpg": "x_2.jpg", "x_2.jpg": "x_2_2.jpg"}


def test_the_cli_names_what_a_walk_left_out_and_counts_it_in_the_summary(tmp_path, monkeypatch,
                                                                          capsys):
    """tf-anonymize prints each left-out entry on a line of its own (also with -q), never as
    "skipped, ... exists", and the summary counts them."""
    from tinyfaces_trt.anonymize import cli

    walk = tmp_path / "walk"
    (walk / ".cache").mkdir(parents=True)
    _photo(walk / "a.jpg")
    _photo(walk / ".hidden_face.jpg")
    monkeypatch.setattr(cli, "_make_detector", lambda args: BoxDetector())
    assert cli.main([str(walk), "--out", str(tmp_path / "out"), "-q"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"tf-anonymize: {walk / '.cache'}: {HIDDEN_FOLDER}" in err
    assert f"tf-anonymize: {walk / '.hidden_face.jpg'}: {HIDDEN_MEDIA}" in err
    assert not any("exists" in line for line in err)
    assert err[-1].startswith("tf-anonymize: 1 done, 0 skipped, 0 failed in ")
    assert err[-1].endswith("; 2 left out of folders (hidden, already searched, unreadable or special: listed above)")
