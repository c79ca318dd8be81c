"""Standard output that cannot take a CLI's lines (``tf-detect folder | head -1``, a full disk)
and standard input that is closed: one line on stderr, never a traceback; the run goes on
with its files, and a lost output other than a closed pipe fails it."""

from __future__ import annotations

import errno
import io
import subprocess
import sys

import pytest
from PIL import Image

from tinyfaces_trt.cli.detect import main
from tinyfaces_trt.parity.images import synthetic_image


def _folder(root, count=6):
    root.mkdir()
    for k in range(count):
        Image.fromarray(synthetic_image(40, 56, seed=k)).save(root / f"p{k}.png")
    return root


class _Gone(io.StringIO):
    """A standard output whose writes fail as ``error`` (no file descriptor)."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error, self.writes = error, 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise self.error


@pytest.mark.parametrize("error, status", [
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), 0),
    (OSError(errno.ENOSPC, "No space left on device"), 1)])
def test_lost_stdout_is_said_once_and_the_run_writes_its_files(
        tmp_path, capsys, monkeypatch, export_dir, error, status):
    photos = _folder(tmp_path / "photos", 3)
    gone = _Gone(error)
    monkeypatch.setattr(sys, "stdout", gone)
    assert main([str(photos), "--model", str(export_dir), "--out", str(tmp_path / "out")]) == status
    err = capsys.readouterr().err
    then = ", then fails" if status else ""
    assert err.count("standard output cannot be written") == 1 and gone.writes == 1
    assert (f"tf-detect: standard output cannot be written ({error.strerror}): the run goes on "
            f"without printing there{then}\n") in err
    assert "tf-detect: 3 image(s)" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"p{k}{suffix}" for k in range(3) for suffix in (".json", "_boxes.png"))


def test_a_pipe_closed_by_its_reader_ends_no_run(tmp_path, export_dir):
    """``tf-detect folder | head -1``: a BrokenPipeError traceback after the first image; the
    others were never detected."""
    photos = _folder(tmp_path / "photos", 12)  # (lines still to come when the pipe closes)
    proc = subprocess.Popen([sys.executable, "-m", "tinyfaces_trt.cli.detect", str(photos),
                             "--model", str(export_dir), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith(f"{photos / 'p0.png'}: ")
    proc.stdout.close()  # as head does once it has its line
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert "tf-detect: standard output cannot be written (Broken pipe)" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert len(list((tmp_path / "out").glob("*.json"))) == 12


def test_closed_stdin_is_an_error_of_that_input(tmp_path, capsys, monkeypatch, export_dir):
    """``tf-detect - 0<&-``: an AttributeError traceback (sys.stdin is None)."""
    monkeypatch.setattr(sys, "stdin", None)
    assert main(["-", "--model", str(export_dir), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "tf-detect: error: <stdin>: standard input is closed; pipe the image to it\n" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_stdout_closed_at_start_is_left_alone(tmp_path, capsys, monkeypatch, export_dir):
    """``tf-detect folder >&-``: Python sets sys.stdout to None; print() wrote nothing, the
    first write_stdout raised AttributeError (a traceback after the first image)."""
    photos = _folder(tmp_path / "photos", 2)
    monkeypatch.setattr(sys, "stdout", None)
    assert main([str(photos), "--model", str(export_dir), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "tf-detect: 2 image(s)" in err
    assert len(list((tmp_path / "out").glob("*.json"))) == 2
