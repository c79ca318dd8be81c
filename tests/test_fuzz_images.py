"""Bounded, seeded fuzzing of the image loader (issue 10): mutated PNG/JPEG/TIFF/GIF bytes and
random bytes give an image or a clean :class:`ImageError`, never another exception or a hang.
Also the loader's stream inputs and 32-bit integer TIFFs."""

from __future__ import annotations

import io
import os
import signal
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from tinyfaces_trt.core.errors import ImageError
from tinyfaces_trt.runtime.imageio import load_image

CASES_PER_FORMAT = 60
RANDOM_CASES = 60
SECONDS_PER_CASE = 5


def _seed_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out = {}
    for fmt, ext, options in (("PNG", "png", {}), ("JPEG", "jpg", {"quality": 90}),
                              ("TIFF", "tif", {}), ("GIF", "gif", {})):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt, **options)
        out[ext] = buf.getvalue()
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flipped bytes, an overwritten run, a truncation, a duplicated chunk, an
    inserted run -- the header is hit about half of the time."""
    b = bytearray(data)
    kind = rng.integers(0, 5)
    pos = int(rng.integers(0, 64 if rng.random() < 0.5 else len(b)))
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        n = int(rng.integers(1, 16))
        b[pos:pos + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:
        b = b[:pos]
    elif kind == 3:
        n = int(rng.integers(1, 64))
        b[pos:pos] = b[pos:pos + n]
    else:
        b[pos:pos] = bytes([0xFF] * int(rng.integers(1, 8)))
    return bytes(b)


def _cases() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(20240610)
    cases = []
    for ext, data in _seed_images().items():
        cases += [(ext, _mutate(data, rng)) for _ in range(CASES_PER_FORMAT)]
    for k in range(RANDOM_CASES):
        cases.append((("png", "jpg", "tif", "gif", "bin")[k % 5],
                      rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()))
    return cases


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="the hang guard uses SIGALRM")
def test_loader_gives_images_or_clean_errors_on_fuzzed_bytes(tmp_path):
    cases = _cases()
    assert len(cases) >= 300
    outcomes = {"image": 0, "error": 0}
    previous = signal.signal(signal.SIGALRM, _alarm)
    # the loader's one filter for Pillow's damaged-metadata warnings, installed process-wide at
    # its import (never per call: catch_warnings is not thread-safe; pytest resets the filters
    # around each test, so it is applied again here), lets nothing reach the user's stderr
    from tinyfaces_trt.runtime import imageio

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings(**imageio.PILLOW_WARNINGS)
        _run_cases(cases, tmp_path, outcomes)
    signal.signal(signal.SIGALRM, previous)
    assert [str(w.message) for w in caught] == []
    assert outcomes["error"] > 100 and outcomes["image"] > 10  # both paths were exercised


def _run_cases(cases, tmp_path, outcomes):
    previous = signal.getsignal(signal.SIGALRM)
    try:
        for k, (ext, data) in enumerate(cases):
            path = tmp_path / f"case{k}.{ext}"
            path.write_bytes(data)
            signal.alarm(SECONDS_PER_CASE)
            try:
                image = load_image(path, max_pixels=4096 * 4096)
            except ImageError as exc:
                assert str(exc).startswith(f"{path}: "), exc
                outcomes["error"] += 1
            except _Hang:
                pytest.fail(f"case {k} ({ext}) took over {SECONDS_PER_CASE} s")
            else:
                assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                outcomes["image"] += 1
            finally:
                signal.alarm(0)
            path.unlink()
    finally:
        signal.signal(signal.SIGALRM, previous)


def test_thirty_two_bit_integer_tiff_with_8_bit_values_is_not_black(tmp_path):
    values = np.array([[0, 64, 128, 255]], np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    assert load_image(tmp_path / "i.tif")[0, :, 0].tolist() == [0, 64, 128, 255]
    Image.fromarray(values * 257).save(tmp_path / "i16.tif")  # 16-bit range in 32 bits
    assert load_image(tmp_path / "i16.tif")[0, :, 0].tolist() == [0, 64, 128, 255]


def test_a_named_pipe_is_refused_not_read(tmp_path):
    """A pipe (a file swapped for one after a run was planned, or given by name) blocked the
    open without a writer, or was read without end; data is piped to ``-`` instead."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match=r"fifo: is not a regular file \(a named pipe, device or "
                                         r"socket\)"):
        load_image(fifo)
