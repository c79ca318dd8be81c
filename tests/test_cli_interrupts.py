"""Ctrl-C ends every CLI with its documented exit status, wherever the interrupt lands.

Two places where CPython mishandles an interrupt, each made deterministic here:
- a KeyboardInterrupt that leaves a string ``exec``/``eval`` (a dataclass or namedtuple being
  made, e.g. while PIL imports its PNG plugin on the first PNG of a batch) is remembered as
  unhandled even when main() catches it, and under ``python -m`` the process then dies by
  SIGINT (exit -2) instead of returning 130. The signal test of test_reliability_outputs.py
  hit this twice in loaded full runs;
- a KeyboardInterrupt raised in a finalizer or a weakref callback is printed and dropped,
  so the run goes on as if Ctrl-C had not been pressed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tinyfaces_trt.core import cli
from tinyfaces_trt.core.cli import cli_interrupts, interrupt_handled
from tinyfaces_trt.parity.images import synthetic_image

ROOT = Path(__file__).resolve().parents[1]

# Runs a CLI's main() as ``python -m`` runs it, with one function of the run replaced by one
# that raises a KeyboardInterrupt inside a string exec ("exec") or drops one in a finalizer
# and goes on ("finalizer").
DRIVER = textwrap.dedent('''
    import importlib
    import sys

    module, attr, how, cli = sys.argv[1:5]
    target = importlib.import_module(module)
    real = getattr(target, attr)


    class _Dropping:
        def __del__(self):
            raise KeyboardInterrupt


    def interrupted(*args, **kwargs):
        if how == "exec":
            exec("raise KeyboardInterrupt")
        _Dropping()  # Python prints the interrupt as unraisable and drops it
        return real(*args, **kwargs)


    setattr(target, attr, interrupted)
    sys.exit(importlib.import_module(cli).main(sys.argv[5:]))
''')


def _drive(tmp_path: Path, target: str, how: str, cli: str, *argv: object,
           ignore_sigint: bool = False) -> subprocess.CompletedProcess:
    (tmp_path / "drive_interrupt.py").write_text(DRIVER)
    module, attr = target.rsplit(".", 1)
    # from the checkout's root, as the other subprocess tests (a plain checkout imports so)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-m", "drive_interrupt", module, attr, how, cli,
                           *map(str, argv)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=_ignore_sigint if ignore_sigint else None)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as for `tf-detect ... &` in a script


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(synthetic_image(40, 56, seed=k)).save(folder / f"p{k}.png")
    return folder


@pytest.mark.parametrize("how, ignore_sigint", [("exec", False), ("finalizer", False),
                                                ("finalizer", True)])
def test_tf_detect_interrupted_exits_130_under_python_m(tmp_path, photos, export_dir, how,
                                                        ignore_sigint):
    out = tmp_path / "out"
    done = _drive(tmp_path, "tinyfaces_trt.cli.detect._load", how, "tinyfaces_trt.cli.detect",
                  photos, "--model", export_dir, "--out", out, "--blur",
                  ignore_sigint=ignore_sigint)
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert "tf-detect: interrupted" in done.stderr and "Traceback" not in done.stderr
    assert "Exception ignored" not in done.stderr  # not printed and dropped
    written = list(out.glob("*")) if out.exists() else []
    assert len(written) < 6  # stopped before the end (3 images, 2 files each)


def test_tf_export_interrupted_exits_130_under_python_m(tmp_path):
    out = tmp_path / "export"
    # interrupted as it checks --out, before it imports torch (seconds of the child's start)
    done = _drive(tmp_path, "tinyfaces_trt.export.cli_export.check_out_dir", "exec",
                  "tinyfaces_trt.export.cli_export", "--untrained", "--out", out)
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert f"tf-export: interrupted; {out} is unchanged" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_tf_anonymize_interrupted_exits_130_under_python_m(tmp_path, photos, export_dir):
    out = tmp_path / "out"
    done = _drive(tmp_path, "tinyfaces_trt.anonymize.jobs.process_file", "exec",
                  "tinyfaces_trt.anonymize.cli", photos / "p0.png", "--model", export_dir,
                  "--out", out)
    assert done.returncode == 130, (done.returncode, done.stderr[-2000:])
    assert "tf-anonymize: interrupted" in done.stderr and "Traceback" not in done.stderr


def test_tf_serve_stopped_exits_0_under_python_m(tmp_path, export_dir):
    done = _drive(tmp_path, "tinyfaces_trt.scaleout.cluster.connect", "exec",
                  "tinyfaces_trt.scaleout.cli_serve", "--model", export_dir)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "tf-serve: stopped" in done.stderr and "Traceback" not in done.stderr


def test_interrupt_handled_returns_the_status():
    assert interrupt_handled(130) == 130 and interrupt_handled(0) == 0


class _Dropping:
    def __del__(self):
        raise KeyboardInterrupt


def test_an_interrupt_dropped_in_a_finalizer_is_raised_again_in_the_main_thread():
    with pytest.raises(KeyboardInterrupt), cli_interrupts():
        _Dropping()  # collected at once; its interrupt goes to the unraisable hook
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the simulated SIGINT is raised in this loop
            time.sleep(0.001)


def test_a_redelivered_interrupt_wakes_a_blocked_wait():
    """A real signal, not only a flag: a wait without progress returns at once."""
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), cli_interrupts():
        _Dropping()
        threading.Event().wait(20)
    assert time.monotonic() - start < 10


def test_an_interrupt_while_the_context_closes_skips_no_restore(monkeypatch):
    def interrupted_close(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli._Redelivery, "close", interrupted_close)
    hook, sigterm = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), cli_interrupts():
        assert signal.getsignal(signal.SIGTERM) is cli.interrupt_on_sigterm
    assert sys.unraisablehook is hook and signal.getsignal(signal.SIGTERM) is sigterm


@pytest.mark.parametrize("module, argv, status, message", [
    ("tinyfaces_trt.export.cli_export", ["--untrained", "--out", "{tmp}/export"], 130,
     "tf-export: interrupted; {tmp}/export is unchanged"),
    ("tinyfaces_trt.cli.detect", ["{tmp}/in.png"], 130,
     "tf-detect: interrupted (files written so far are complete; no partial file was left)"),
    ("tinyfaces_trt.anonymize.cli", ["{tmp}/in.png", "--out", "{tmp}/out"], 130,
     "tf-anonymize: interrupted (no partial output is left under a final name)"),
    ("tinyfaces_trt.scaleout.cli_serve", [], 0, "tf-serve: stopped"),
])
def test_every_cli_catches_an_interrupt_raised_as_the_context_closes(monkeypatch, tmp_path, capsys,
                                                                     module, argv, status,
                                                                     message):
    import importlib

    target = importlib.import_module(module)

    @contextlib.contextmanager
    def closing_interrupted():
        yield
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cli_interrupts", closing_interrupted)
    monkeypatch.setattr(target, "_run", lambda *args: 0)
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png")
    assert target.main([a.format(tmp=tmp_path) for a in argv]) == status
    assert capsys.readouterr().err.splitlines()[-1] == message.format(tmp=tmp_path)


def test_nothing_is_delivered_once_the_run_is_over(monkeypatch):
    monkeypatch.setattr(cli, "REDELIVERY_DELAY_S", 0.3)
    with cli_interrupts():
        _Dropping()
    try:
        time.sleep(0.6)
    except KeyboardInterrupt:
        pytest.fail("an interrupt was delivered after the run it belonged to had ended")


def test_other_unraisables_pass_on_and_the_hook_is_restored(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)

    class Failing:
        def __del__(self):
            raise ValueError("in a finalizer")

    with cli_interrupts():
        assert sys.unraisablehook is not seen.append
        Failing()
    assert sys.unraisablehook == seen.append
    assert [(u.exc_type, str(u.exc_value)) for u in seen] == [(ValueError, "in a finalizer")]
