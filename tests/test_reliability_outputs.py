"""tf-detect as an anonymiser (issue 10): atomic outputs under faults (full disk, Ctrl-C,
SIGTERM, SIGKILL), no copy showing the faces unless asked, skip/overwrite, and the smaller
items (stdin, JPEG quality, threads, providers, symlinks, GIFs, empty folders, --version)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faults import assert_no_truncated_outputs, enospc, failing_save, temporaries
from helpers_cli import run_tf_detect as _run
from helpers_run import current_umask
from tinyfaces_trt.cli.detect import main
from tinyfaces_trt.parity.images import synthetic_image

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def photos(tmp_path):
    """Four small images: two JPEG, two PNG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(4):
        ext = ".jpg" if k % 2 == 0 else ".png"
        Image.fromarray(synthetic_image(40 + k, 56, seed=k)).save(folder / f"p{k}{ext}")
    return folder


# ------------------------------------------------------------------ item 1: atomic outputs

def test_full_disk_during_a_write_leaves_no_truncated_file_and_counts_the_error(
        capsys, photos, export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(Image.Image, "save", failing_save("p1_pixelated", enospc()))
    out = tmp_path / "out"
    code, _, err = _run(capsys, photos, "--model", export_dir, "--out", out, "--pixelate")
    assert code == 1
    assert "p1_pixelated.png: cannot save (No space left on device)" in err
    assert "1 error(s)" in err
    finals = assert_no_truncated_outputs(out)
    assert not (out / "p1_pixelated.png").exists() and temporaries(out) == []
    assert (out / "p0_pixelated.jpg") in finals and (out / "p3_pixelated.png") in finals


def test_full_disk_while_writing_json_is_reported(capsys, photos, export_dir, tmp_path,
                                                  monkeypatch):
    from tinyfaces_trt.core import files

    real = files.atomic_output

    def failing(path):
        if Path(path).name == "p2.json":
            raise enospc()
        return real(path)

    monkeypatch.setattr(files, "atomic_output", failing)
    out = tmp_path / "out"
    code, _, err = _run(capsys, photos, "--model", export_dir, "--out", out, "--blur")
    assert code == 1 and "p2.json: cannot write (No space left on device)" in err
    assert not (out / "p2.json").exists() and (out / "p2_blurred.jpg").is_file()


def test_interrupt_during_a_write_leaves_no_partial_file(capsys, photos, export_dir, tmp_path,
                                                         monkeypatch):
    monkeypatch.setattr(Image.Image, "save", failing_save("p2_blurred", KeyboardInterrupt()))
    out = tmp_path / "out"
    code, _, err = _run(capsys, photos, "--model", export_dir, "--out", out, "--blur")
    assert code == 130 and "interrupted" in err
    finals = assert_no_truncated_outputs(out)
    # p2's JSON is written first (it claims the name for p2 in later runs), complete; a rerun
    # writes p2's missing copy
    assert {p.name for p in finals} == {"p0_blurred.jpg", "p0.json", "p1_blurred.png", "p1.json",
                                        "p2.json"}
    assert temporaries(out) == []


BATCH = 480  # about 20 s of work after the first image: the signal lands mid-batch even when
#              the test process is descheduled for a while (with 16 images, 0.7 s, a loaded
#              machine once let the batch finish first and the signal hit the exiting process;
#              with 120, 5 s, so did a 2-core machine running two test suites at once). The
#              run stops at the signal, so the size costs only the copies


def _batch(photos: Path, export_dir: Path, out: Path) -> subprocess.Popen:
    for k in range(4, BATCH):
        shutil.copy(photos / f"p{k % 4}{'.jpg' if k % 2 == 0 else '.png'}",
                    photos / f"q{k}{'.jpg' if k % 2 == 0 else '.png'}")
    return subprocess.Popen(
        [sys.executable, "-m", "tinyfaces_trt.cli.detect", str(photos), "--model", str(export_dir),
         "--out", str(out), "--blur", "--draw"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_sigint_by_default)


def _sigint_by_default() -> None:
    # a suite started in the background of a script (`... &`) inherits SIGINT ignored, and so
    # would the batch (tf-detect keeps an ignored SIGINT ignored: test_cli_interrupts.py)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_signal_during_a_batch_leaves_only_complete_files(photos, export_dir, tmp_path, sig):
    out = tmp_path / "out"
    proc = _batch(photos, export_dir, out)
    try:
        assert proc.stdout.readline()  # the first image is done: the batch is under way
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    finals = assert_no_truncated_outputs(out)
    assert 0 < len(finals) < BATCH * 3  # stopped mid-batch
    if sig == signal.SIGKILL:
        return  # nothing can clean up after SIGKILL; hidden temporaries may stay
    # exit -2 was CPython's string-exec flag (test_cli_interrupts.py): the signal lands as PIL
    # imports its PNG plugin for the second image
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, \
        (proc.returncode, err[-3000:])
    assert temporaries(out) == []


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a private tmpfs")
def test_really_full_disk_on_a_tiny_tmpfs(photos, export_dir, tmp_path):
    """A 48 KiB tmpfs (a private mount namespace) fills up during the batch."""
    probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("this machine does not allow user mount namespaces")
    rng = np.random.default_rng(0)
    for k in range(6):  # noise does not compress: ~20 KiB per PNG
        Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(
            photos / f"n{k}.png")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=48k tmpfs {disk} && "
              f"{sys.executable} -m tinyfaces_trt.cli.detect {photos} --model {export_dir} "
              f"--out {disk}/out --blur --draw; rc=$?; "
              f"cp -r {disk}/out {tmp_path}/copy 2>/dev/null; exit $rc")
    done = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "No space left on device" in done.stderr and "Traceback" not in done.stderr
    finals = assert_no_truncated_outputs(tmp_path / "copy")
    assert finals and temporaries(tmp_path / "copy") == []


# -------------------------------------------------- item 5: no copy with the faces visible

def test_anonymising_writes_no_copy_with_the_faces_unless_draw(capsys, photos, export_dir,
                                                               tmp_path):
    out = tmp_path / "anonymised"
    code, _, _ = _run(capsys, photos / "p1.png", "--model", export_dir, "--out", out, "--blur")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["p1.json", "p1_blurred.png"]
    drawn = tmp_path / "drawn"
    code, _, _ = _run(capsys, photos / "p1.png", "--model", export_dir, "--out", drawn,
                      "--pixelate", "--draw")
    assert code == 0
    assert sorted(p.name for p in drawn.iterdir()) == ["p1.json", "p1_boxes.png",
                                                       "p1_pixelated.png"]


def test_readme_says_anonymised_folders_hold_no_faces():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "--blur" in text and "only anonymised images" in text and "--draw" in text


# ----------------------------------------------------------- item 7: overwrite / skip

def test_rerun_skips_done_images_and_overwrite_replaces(capsys, photos, export_dir, tmp_path):
    out = tmp_path / "out"
    assert _run(capsys, photos / "p0.jpg", "--model", export_dir, "--out", out)[0] == 0
    json_path = out / "p0.json"
    # still this image's record, of this run's detector
    marked = {**json.loads(json_path.read_text()), "marker": 1}
    json_path.write_text(json.dumps(marked))
    code, stdout, err = _run(capsys, photos / "p0.jpg", "--model", export_dir, "--out", out)
    assert code == 0 and stdout == "" and "skipped, its outputs exist" in err
    assert json.loads(json_path.read_text()) == marked
    (out / "p0_boxes.jpg").unlink()  # partial: the missing file is written, the others kept
    _run(capsys, photos / "p0.jpg", "--model", export_dir, "--out", out)
    assert (out / "p0_boxes.jpg").is_file() and json.loads(json_path.read_text()) == marked
    code, _, _ = _run(capsys, photos / "p0.jpg", "--model", export_dir, "--out", out,
                      "--overwrite")
    assert code == 0 and "detections" in json.loads(json_path.read_text())


def test_a_later_run_never_takes_another_images_outputs_for_its_own(capsys, photos, export_dir,
                                                                    tmp_path, monkeypatch):
    """Outputs are named after the file: a.jpg then a.png, or two folders' p.jpg, in two runs.
    The second was skipped as done, or lost its JSON (the first's was kept): it now gets the
    next name, as within one run; a rerun of either finds its own files and skips."""
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
    shutil.copy(photos / "p0.jpg", tmp_path / "x" / "p.jpg")
    shutil.copy(photos / "p1.png", tmp_path / "y" / "p.png")
    shutil.copy(photos / "p2.jpg", tmp_path / "y" / "p.jpg")
    out = tmp_path / "out"
    runs = [tmp_path / "x" / "p.jpg", tmp_path / "y" / "p.png", tmp_path / "y" / "p.jpg"]
    for image in runs:
        code, stdout, _ = _run(capsys, image, "--model", export_dir, "--out", out, "--blur")
        assert code == 0 and stdout.startswith(f"{image}: ")
    records = {name: json.loads((out / name).read_text())["image"]
               for name in ("p.json", "p_2.json", "p_3.json")}
    assert records == {"p.json": str(runs[0]), "p_2.json": str(runs[1]), "p_3.json": str(runs[2])}
    assert sorted(f.name for f in out.iterdir()) == [
        "p.json", "p_2.json", "p_2_blurred.png", "p_3.json", "p_3_blurred.jpg", "p_blurred.jpg"]
    for image in runs:  # each finds its own files
        code, stdout, err = _run(capsys, image, "--model", export_dir, "--out", out, "--blur")
        assert code == 0 and stdout == "" and "skipped, its outputs exist" in err
    # together, in another order: a name refused to one is still the other's own
    code, stdout, err = _run(capsys, runs[2], runs[0], "--model", export_dir, "--out", out, "--blur")
    assert code == 0 and stdout == "" and err.count("skipped, its outputs exist") == 2
    # given relatively, from another working folder: still its own files
    monkeypatch.chdir(tmp_path / "y")
    code, stdout, err = _run(capsys, "p.jpg", "--model", export_dir, "--out", out, "--blur")
    assert code == 0 and stdout == "" and "skipped, its outputs exist" in err


def test_jpeg_quality_option(capsys, photos, export_dir, tmp_path):
    sizes = {}
    for quality in (95, 20):
        out = tmp_path / f"q{quality}"
        _run(capsys, photos / "p0.jpg", "--model", export_dir, "--out", out,
             "--jpeg-quality", quality)
        sizes[quality] = (out / "p0_boxes.jpg").stat().st_size
    assert sizes[95] > 1.5 * sizes[20]
    with pytest.raises(SystemExit) as info:
        main([str(photos / "p0.jpg"), "--jpeg-quality", "0"])
    assert info.value.code == 2


# ------------------------------------------------------------------ item 7: the rest

def test_empty_out_folder_is_removed_when_nothing_was_written(capsys, tmp_path, export_dir):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = tmp_path / "new" / "out"
    code, _, _ = _run(capsys, bad, "--model", export_dir, "--out", out, "--wider-dir",
                      tmp_path / "pred")
    assert code == 1 and not (tmp_path / "new").exists() and not (tmp_path / "pred").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    _run(capsys, bad, "--model", export_dir, "--out", existing)
    assert existing.is_dir()  # the user's folder stays


def test_only_the_folders_a_run_created_for_itself_are_removed(tmp_path):
    """Two runs with --out results/a and results/b, results/ new: the run that ends first
    removed the other's still empty --out with the shared parent's empty sub-folders."""
    from tinyfaces_trt.core.files import removed_if_left_empty

    results = tmp_path / "results"
    with removed_if_left_empty(results / "a" / "out"):
        (results / "a" / "out").mkdir(parents=True)
        (results / "b").mkdir()  # the other run's --out, nothing in it yet
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "results", "results/b"]
    with removed_if_left_empty(results / "b", results / "c" / "d"):
        (results / "c" / "d").mkdir(parents=True)
        (results / "c" / "d" / "boxes.json").write_text("{}")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "results", "results/b", "results/c", "results/c/d", "results/c/d/boxes.json"]
    with removed_if_left_empty(tmp_path / "x" / "y" / "z"):  # nothing else: all three go
        (tmp_path / "x" / "y" / "z").mkdir(parents=True)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argument", ["-", "/dev/stdin"])
def test_image_from_standard_input(photos, export_dir, tmp_path, argument):
    data = (photos / "p1.png").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "tinyfaces_trt.cli.detect", argument, "--model", str(export_dir),
         "--out", str(tmp_path / "out"), "--blur"],
        input=data, cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().startswith(f"{argument}: ")
    assert (tmp_path / "out" / "stdin_blurred.png").is_file()
    record = json.loads((tmp_path / "out" / "stdin.json").read_text())
    assert (record["width"], record["height"]) == (56, 41)


def test_threads_are_capped_at_the_usable_cores(capsys, photos, export_dir):
    code, _, err = _run(capsys, photos / "p1.png", "--model", export_dir, "--threads", 1000)
    cores = len(os.sched_getaffinity(0))
    assert code == 0
    assert f"--threads 1000 is more than the {cores} usable core(s); using {cores}" in err


def _stderr_on_a_terminal(argv: list[str], stdout: Path) -> tuple[int, str]:
    """Runs tf-detect with stderr on a pseudo-terminal; (exit status, what it showed)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 0 cols: no bar
    with open(stdout, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tinyfaces_trt.cli.detect", *argv],
                                stdout=out, stderr=slave, cwd=ROOT)
    os.close(slave)
    shown = b""
    try:
        while select.select([master], [], [], 60)[0]:
            shown += os.read(master, 4096)  # OSError (EIO) once the process is gone
    except OSError:
        pass
    finally:
        os.close(master)
    return proc.wait(timeout=60), shown.decode()


def test_json_batch_shows_progress_on_stderr(capsys, photos, export_dir, tmp_path):
    """The folder bar is drawn on a terminal only: a log file gets no \\r frames."""
    code, stdout, err = _run(capsys, photos, "--model", export_dir, "--json")
    assert code == 0 and len(json.loads(stdout)["images"]) == 4
    assert "\r" not in err and "4/4" not in err
    assert err.startswith("tf-detect: 4 image(s), ")
    code, shown = _stderr_on_a_terminal([str(photos), "--model", str(export_dir), "--json"],
                                        tmp_path / "stdout.json")
    assert code == 0 and len(json.loads((tmp_path / "stdout.json").read_text())["images"]) == 4
    assert "\rtf-detect: 100%" in shown and "4/4" in shown and "image/s" in shown  # tqdm's bar


def test_symlinked_folders_are_followed_and_loops_reported(capsys, photos, export_dir, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.move(photos / "p3.png", outside / "p3.png")
    (photos / "linked").symlink_to(outside, target_is_directory=True)
    (outside / "loop").symlink_to(photos, target_is_directory=True)
    code, stdout, err = _run(capsys, photos, "--model", export_dir)
    assert code == 0 and "p3.png: " in stdout and len(stdout.splitlines()) == 4
    assert "links to a folder already searched" in err


def test_animated_gif_uses_the_first_frame_and_says_so(capsys, photos, export_dir, tmp_path):
    frames = [Image.fromarray(synthetic_image(40, 56, seed=k)) for k in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    code, _, err = _run(capsys, gif, "--model", export_dir)
    assert code == 0 and "anim.gif: has 3 frames" in err and "first frame only" in err
    from tinyfaces_trt.runtime.imageio import load_image

    with Image.open(gif) as im:  # the frames as the GIF holds them (its palette quantises)
        stored = []
        for k in range(3):
            im.seek(k)
            stored.append(np.asarray(im.convert("RGB")))
    loaded = load_image(gif)
    assert np.array_equal(loaded, stored[0])
    assert not np.array_equal(loaded, stored[1]) and not np.array_equal(loaded, stored[2])


def test_tf_export_rejects_an_old_opset_as_a_usage_error(capsys):
    from tinyfaces_trt.export.cli_export import main as export_main

    with pytest.raises(SystemExit) as info:
        export_main(["--untrained", "--opset", "5"])
    assert info.value.code == 2 and "--opset: 5 must be between 15 and 28" in capsys.readouterr().err


@pytest.mark.parametrize("module, prog", [
    ("tinyfaces_trt.cli.detect", "tf-detect"),
    ("tinyfaces_trt.export.cli_export", "tf-export"),
    ("tinyfaces_trt.wider.cli", "tf-eval"),
    ("tinyfaces_trt.kernels.build", "tf-build-kernels"),
])
def test_version(capsys, module, prog):
    import importlib

    import tinyfaces_trt

    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{prog} {tinyfaces_trt.__version__}"


def test_build_kernels_prints_the_compiler_error_once(tmp_path, capsys):
    from tinyfaces_trt.kernels import build

    nvcc = tmp_path / "nvcc"
    nvcc.write_text("#!/bin/sh\necho \"nvcc fatal   : Unsupported gpu architecture "
                    "'compute_99'\" >&2\nexit 1\n")
    nvcc.chmod(0o755)
    code = build.main(["--nvcc", str(nvcc), "--arch", "99", "--out", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    assert code == 1 and (out + err).count("Unsupported gpu architecture") == 1


def test_latency_help_has_no_issue_reference():
    done = subprocess.run([sys.executable, "benchmarks/latency.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: latency.py")
    assert "--image-size" in done.stdout and "issue" not in done.stdout


def test_atomic_outputs_get_the_usual_file_mode(tmp_path):
    """The finished file gets the mode any new file gets (0666 less the process's current
    umask), as does the temporary while written; not mkstemp's 0600."""
    from tinyfaces_trt.core import files

    files.write_text_atomic(tmp_path / "a.json", "{}")
    (tmp_path / "b.json").write_text("{}")  # what a plain open() makes here
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert (tmp_path / "a.json").stat().st_mode == (tmp_path / "b.json").stat().st_mode


def test_staged_folders_get_the_usual_folder_mode(tmp_path, export_dir):
    """An export folder is built in a staging folder (mkdtemp: 0700) and swapped in: it must get
    the mode a new folder gets, or a service's account or another user on shared storage could
    not read the model."""
    from tinyfaces_trt.core import files

    plain = tmp_path / "plain"
    plain.mkdir()
    usual = plain.stat().st_mode & 0o777
    assert usual == 0o777 & ~current_umask()
    assert files.staging_dir(tmp_path, "x").stat().st_mode & 0o777 == usual
    assert export_dir.stat().st_mode & 0o777 == usual  # the export cache's folder, swapped in
    shared = tmp_path / "shared"  # a group's folder: new folders keep its group (setgid)
    shared.mkdir()
    shared.chmod(0o2775)
    (shared / "plain").mkdir()
    assert files.staging_dir(shared, "x").stat().st_mode & 0o7777 == \
        (shared / "plain").stat().st_mode & 0o7777 == 0o2000 | usual


def test_a_run_removes_what_killed_runs_left_in_its_out_folder(capsys, photos, export_dir,
                                                               tmp_path):
    """A run killed mid-write (SIGKILL: no clean-up) leaves ``.tf-tmp-*`` files in --out, in
    any subfolder; the next tf-detect or tf-anonymize run over that folder removes those of
    dead processes of this machine, and keeps a live writer's."""
    from tinyfaces_trt.anonymize.cli import main as anonymize
    from tinyfaces_trt.core import files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for run, out in ((lambda o: main([str(photos / "p0.jpg"), "--model", str(export_dir),
                                          "--out", str(o)]), tmp_path / "detect"),
                         (lambda o: anonymize([str(photos / "p0.jpg"), "--model", str(export_dir),
                                               "--out", str(o), "--quiet"]), tmp_path / "anon")):
            (out / "sub").mkdir(parents=True)
            stale = [out / f".tf-tmp-{dead}.{files.HOST_TAG}-abcd1234-clip.mp4",
                     out / "sub" / f".tf-tmp-{dead}.{files.HOST_TAG}-efgh5678-p.json"]
            live = out / f".tf-tmp-{writer.pid}.{files.HOST_TAG}-ijkl9012-x.json"
            for path in stale + [live]:
                path.write_bytes(b"half")
            assert run(out) == 0
            capsys.readouterr()
            assert not any(p.exists() for p in stale) and live.exists()
    finally:
        writer.kill()
        writer.wait()


def test_anonymize_leaves_no_empty_out_and_names_every_skip(capsys, photos, export_dir, tmp_path):
    """A run that fails before writing anything (no usable backend) leaves no new empty --out;
    a run that skips every input says which."""
    from tinyfaces_trt.anonymize.cli import main as anonymize

    out = tmp_path / "new" / "out"
    assert anonymize([str(photos / "p0.jpg"), "--out", str(out), "--backend", "tensorrt",
                      "--model", str(export_dir)]) == 1
    assert not (tmp_path / "new").exists()  # nor the folder above it that the run created
    capsys.readouterr()
    argv = [str(photos / "p0.jpg"), "--out", str(out), "--model", str(export_dir)]
    assert anonymize(argv) == 0
    capsys.readouterr()
    assert anonymize(argv) == 0
    assert f"tf-anonymize: {photos / 'p0.jpg'}: skipped, {out / 'p0.jpg'} exists" \
        in capsys.readouterr().err


def test_stale_temporaries_are_judged_only_for_this_machine(tmp_path):
    """A folder shared by machines (an NFS home holding the cache): the leftovers of this
    machine's dead processes are removed; another machine's recent temporaries are kept,
    whatever this machine's process table says about their process id. One with this
    process's id is kept only if this process made it (tests/test_export_staging.py)."""
    import hashlib
    import socket

    from tinyfaces_trt.core import files

    host = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
    assert files.HOST_TAG == host
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    other = "0123abcd" if host != "0123abcd" else "fedc9876"
    mine = files.staging_dir(tmp_path, "export")
    names = {f".tf-tmp-{dead}.{host}-export-a1": "removed",     # this machine, writer gone
             f".tf-tmp-{dead}-export-b2": "removed",             # before hosts were recorded
             f".tf-tmp-{dead}.{other}-export-c3": "kept",         # another machine's, recent
             f".tf-tmp-{os.getpid()}.{host}-export-d4": "removed",  # not made by this process
             "model.onnx": "kept"}
    for name in names:
        (tmp_path / name).mkdir()
    names[mine.name] = "kept"  # this process's
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(n for n, v in names.items() if v == "removed")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, v in names.items()
                                                                if v == "kept")
    # what this process writes carries this machine, and temporaries_of finds it
    staging = mine
    assert staging.name.startswith(f".tf-tmp-{os.getpid()}.{host}-export-")
    with files.atomic_output(tmp_path / "photo.json") as tmp:
        assert tmp.name.startswith(f".tf-tmp-{os.getpid()}.{host}-")
        tmp.write_text("{}")
        assert files.temporaries_of(tmp_path / "photo.json") == [tmp]
    assert files.temporaries_of(tmp_path / "photo.json") == []
