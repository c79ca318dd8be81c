"""Running tf-detect in-process from a test."""

from __future__ import annotations

from tinyfaces_trt.cli.detect import main


def run_tf_detect(capsys, *argv) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``tf-detect argv`` (paths given as they are),
    which must print no traceback."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err
