"""Control characters in file names (ESC, carriage return, bell...) reach the terminal escaped:
a name cannot recolour, retitle, clear or rewrite what the CLIs print."""

from __future__ import annotations

import io
import logging

from helpers_cli import run_tf_detect
from tinyfaces_trt.core.cli import logging_to_stderr, printable, shown, stdout_line

CLEARS_THE_SCREEN = "bad\x1b[2Jname.jpg"
RETITLES_THE_WINDOW = "gone\x1b]0;pwned\x07.jpg"


def test_printable_escapes_c0_del_and_c1_but_tab_and_newline():
    assert printable("a\x1b[31mb\rc\x08d\x07\te\nf\x7fg\x9bh\x85i") == \
        "a\\x1b[31mb\\x0dc\\x08d\\x07\te\nf\\x7fg\\x9bh\\x85i"
    assert printable("visage_é_顔.jpg") == "visage_é_顔.jpg"  # printable text kept
    assert printable("\udce9") == "\udce9"  # an undecodable byte: stderr's backslashreplace


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stdout_is_escaped_on_a_terminal_and_kept_as_is_in_a_pipe(capsys, monkeypatch):
    stdout_line(f"{CLEARS_THE_SCREEN}: 2 face(s)")
    assert capsys.readouterr().out == f"{CLEARS_THE_SCREEN}: 2 face(s)\n"  # a pipe: as ls
    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    stdout_line(f"{CLEARS_THE_SCREEN}: 2 face(s)")
    assert terminal.getvalue() == "bad\\x1b[2Jname.jpg: 2 face(s)\n"
    assert shown("\x1b", io.StringIO()) == "\x1b"


def test_log_records_are_escaped(capsys):
    with logging_to_stderr("tf-x"):
        logging.getLogger("tinyfaces_trt.test").warning("skipped %s", RETITLES_THE_WINDOW)
    assert capsys.readouterr().err == "tf-x: skipped gone\\x1b]0;pwned\\x07.jpg\n"


def test_tf_detect_names_such_files_escaped(capsys, tmp_path, export_dir):
    (tmp_path / CLEARS_THE_SCREEN).write_bytes(b"not an image")
    code, _, err = run_tf_detect(capsys, tmp_path / CLEARS_THE_SCREEN,
                                 tmp_path / RETITLES_THE_WINDOW, "--model", export_dir,
                                 "--out", tmp_path / "out")
    assert code == 1
    assert f"tf-detect: error: {tmp_path}/bad\\x1b[2Jname.jpg: not a recognised image file\n" \
        in err
    assert f"tf-detect: error: {tmp_path}/gone\\x1b]0;pwned\\x07.jpg: image file not found\n" \
        in err
    assert "\x1b" not in err and "\x07" not in err


def test_tf_build_kernels_names_such_folders_escaped(capsys, tmp_path):
    from tinyfaces_trt.kernels import build

    assert build.main(["--out", str(tmp_path / CLEARS_THE_SCREEN), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tf-build-kernels: error: --out {tmp_path}/bad\\x1b[2Jname.jpg: ")
    assert "\x1b" not in err
