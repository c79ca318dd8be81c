"""Image input that costs without bound: a JPEG repeating one scan (a pass over the whole image
each), a named pipe (blocks for ever) or a device (``/dev/zero``: endless) swapped in for an
input file, an endless standard input; and the quality setting, which WebP files ignored."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers_cli import run_tf_detect
from tinyfaces_trt.anonymize.sidecar import input_identity
from tinyfaces_trt.core.errors import ImageError
from tinyfaces_trt.runtime.imageio import (MAX_JPEG_SCANS, decode_image, encode_image, load_image,
                                           load_image_frames, load_image_stream, save_image)

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a refusal may take before the guard fails the test (a regression blocks for ever).
GUARD_SECONDS = 20
NOT_REGULAR = "is not a regular file (a named pipe, device or socket)"


@contextmanager
def guard(seconds: int = GUARD_SECONDS):
    """Fails the test where its body blocks (a named pipe opened) for ``seconds``."""
    def expire(*_):
        raise TimeoutError(f"blocked for over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _in_child(code: str, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    """Runs ``code`` in a Python child limited to 1 GiB of address space and 60 s: a
    regression that reads an endless device fails with MemoryError there, not by filling
    this machine's memory."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True,
                          text=True, timeout=60, cwd=ROOT, preexec_fn=limit)


def _rgb(height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _progressive(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", progressive=True, quality=50, **options)
    return buffer.getvalue()


def _with_repeated_last_scan(data: bytes, times: int) -> bytes:
    """``data`` (a progressive JPEG) with its last scan repeated ``times`` more times, as
    /work/scratch/s38/rA/scanbomb.py builds its bomb: each costs a pass over the image."""
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * times + b"\xff\xd9"


def _pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


# ------------------------------------------------------------------ JPEG scans
def test_a_jpeg_of_more_scans_than_the_limit_is_refused_before_decoding(tmp_path):
    good = _progressive(_rgb())
    assert good.count(b"\xff\xda") == 10  # Pillow's (libjpeg's) progressive script
    np.testing.assert_array_equal(decode_image(good), _pillow_rgb(good))
    # at the limit: decoded; FF DA bytes inside a marker segment (a comment) are no scan
    at_limit = _with_repeated_last_scan(_progressive(_rgb(), comment=b"\xff\xda" * 300),
                                        MAX_JPEG_SCANS - 10)
    np.testing.assert_array_equal(decode_image(at_limit), _pillow_rgb(at_limit))

    bomb = _with_repeated_last_scan(good, 150)
    assert _pillow_rgb(bomb).shape == (48, 64, 3)  # a valid JPEG Pillow decodes, 160 scans
    why = (f"JPEG has 160 scans, more than the limit of {MAX_JPEG_SCANS}; refusing to decode a "
           "possible scan bomb (each scan is a pass over the whole image)")
    with pytest.raises(ImageError) as refused:
        decode_image(bomb, name="request body")
    assert str(refused.value) == f"request body: {why}"
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bomb)
    for load in (load_image, load_image_frames):
        with pytest.raises(ImageError) as refused:
            load(path)
        assert str(refused.value) == f"{path}: {why}"
    with pytest.raises(ImageError) as refused:
        load_image_stream(io.BytesIO(bomb))
    assert str(refused.value) == f"<stdin>: {why}"
    (tmp_path / "good.jpg").write_bytes(good)
    np.testing.assert_array_equal(load_image(tmp_path / "good.jpg"), _pillow_rgb(good))


def test_tf_detect_refuses_a_scan_bomb_and_still_reads_standard_input(capsys, export_dir,
                                                                      tmp_path):
    good = _progressive(_rgb(41, 56))
    bomb = _with_repeated_last_scan(good, 150)
    (tmp_path / "bomb.jpg").write_bytes(bomb)
    code, out, err = run_tf_detect(capsys, tmp_path / "bomb.jpg", "--model", export_dir)
    assert code == 1 and out == ""
    assert (f"{tmp_path / 'bomb.jpg'}: JPEG has 160 scans, more than the limit of "
            f"{MAX_JPEG_SCANS}; refusing to decode") in err
    for data, status in ((good, 0), (bomb, 1)):
        done = subprocess.run([sys.executable, "-m", "tinyfaces_trt.cli.detect", "-", "--model",
                               str(export_dir), "--out", str(tmp_path / "out")],
                              input=data, cwd=ROOT, capture_output=True, timeout=120)
        assert done.returncode == status, done.stderr
        if status == 0:
            assert done.stdout.decode().startswith("-: ")
            assert (tmp_path / "out" / "stdin.json").is_file()
        else:
            assert b"<stdin>: JPEG has 160 scans, more than the limit of" in done.stderr


# ------------------------------------------------------------------ quality
def test_webp_and_every_jpeg_suffix_take_the_quality_given(tmp_path):
    image = _rgb(64, 80)
    sizes = {}
    for quality in (10, 95):
        path = tmp_path / f"q{quality}.webp"
        save_image(path, image, jpeg_quality=quality)
        sizes[quality] = path.stat().st_size
        assert path.read_bytes() == encode_image(image, "WEBP", quality)
    assert sizes[10] < sizes[95]
    for suffix, fmt in ((".jpg", "JPEG"), (".jfif", "JPEG"), (".jpe", "JPEG"), (".webp", "WEBP"),
                        (".png", "PNG")):
        path = tmp_path / f"a{suffix}"
        save_image(path, image, jpeg_quality=30)
        assert path.read_bytes() == encode_image(image, fmt, 30), suffix


# ------------------------------------------------------------------ files that are no files
def test_a_named_pipe_is_refused_at_once(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with guard():
        for load in (load_image, load_image_frames):
            with pytest.raises(ImageError) as refused:
                load(fifo)
            assert str(refused.value) == f"{fifo}: {NOT_REGULAR}; refusing to read it"
        with pytest.raises(OSError) as refused:
            input_identity(fifo)
    assert refused.value.strerror == NOT_REGULAR and refused.value.filename == str(fifo)


def test_a_link_to_dev_zero_is_refused_at_once(tmp_path):
    link = tmp_path / "photo.jpg"
    link.symlink_to("/dev/zero")
    code = ("import sys\n"
            "from tinyfaces_trt.runtime.imageio import load_image\n"
            "from tinyfaces_trt.anonymize.sidecar import input_identity\n"
            "try:\n    load_image(sys.argv[1])\nexcept Exception as e:\n    print(e)\n"
            "try:\n    input_identity(sys.argv[1])\nexcept OSError as e:\n    print(e.strerror)\n")
    done = _in_child(code.replace("sys.argv[1]", repr(str(link))))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{link}: {NOT_REGULAR}; refusing to read it",
                                        NOT_REGULAR]


def test_standard_input_is_read_but_not_without_end(tmp_path):
    """Named as /dev/stdin, standard input is read as a stream, up to MAX_STREAM_BYTES."""
    buffer = io.BytesIO()
    Image.fromarray(_rgb(5, 4)).save(buffer, "PNG")
    read, write = os.pipe()
    saved = os.dup(0)
    writer = threading.Thread(target=lambda: (os.write(write, buffer.getvalue()), os.close(write)))
    try:
        os.dup2(read, 0)
        os.close(read)
        writer.start()
        with guard():
            assert load_image("/dev/stdin").shape == (5, 4, 3)
    finally:
        writer.join(10)
        os.dup2(saved, 0)
        os.close(saved)
    code = ("from tinyfaces_trt.runtime import imageio\n"
            "imageio.MAX_STREAM_BYTES = 1 << 20\n"
            "for load in (lambda: imageio.load_image('/dev/stdin'),\n"
            "             lambda: imageio.load_image_stream(open('/dev/zero', 'rb'), 'zeros')):\n"
            "    try:\n        load()\n    except Exception as e:\n        print(e)\n")
    with open("/dev/zero", "rb") as zeros:
        done = _in_child(code, stdin=zeros)
    assert done.returncode == 0, done.stderr
    tail = ("more than 1048576 bytes of image data on the stream (the limit, MAX_STREAM_BYTES); "
            "refusing to read further")
    assert done.stdout.splitlines() == [f"/dev/stdin: {tail}", f"zeros: {tail}"]


def test_tf_detect_reads_standard_input_up_to_the_limit():
    """``tf-detect - < /dev/zero`` read standard input without end (before the model even
    loaded) until memory ran out; it is one error, exit 1, no model loaded."""
    code = ("import sys\n"
            "from tinyfaces_trt.runtime import imageio\n"
            "from tinyfaces_trt.cli import detect\n"
            "imageio.MAX_STREAM_BYTES = 1 << 20\n"
            "detect._make_detector = lambda args: sys.exit('the model was loaded')\n"
            "sys.exit(detect.main(['-']))\n")
    with open("/dev/zero", "rb") as zeros:
        done = _in_child(code, stdin=zeros)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "tf-detect: error: <stdin>: more than 1048576 bytes of image data on the stream (the "
        "limit, MAX_STREAM_BYTES); refusing to read further")
