"""tf-serve's bounds on what one request costs (security review): the pixels a replica detects
together, ``/anonymize``'s ``mask_scale``, and the mask limits held by ``MaskStyle`` alone
(tf-anonymize and the service ask it, each wording its refusal as before)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import TinyFacesError
from tinyfaces_trt.runtime.imageio import decode_image, encode_image
from tinyfaces_trt.runtime.masks import MaskStyle, apply_masks
from tinyfaces_trt.scaleout.service import (
    DEFAULT_MAX_PIXELS, MAX_BATCH_PIXELS, MAX_MASK_SCALE, DetectionError, Limits, RequestError,
    detect_images, parse_anonymise_query, pixel_batches)


def _blank(height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 image without its memory (the fakes below read shapes only)."""
    return np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (height, width, 3))


class _Recorder:
    """detect_batch recording each call's images (by index: the value of pixel (0, 0)) and
    answering each image a box holding that index; it fails a call holding index 99."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    def detect_batch(self, images):
        self.calls.append([int(im[0, 0, 0]) for im in images])
        if any(im[0, 0, 0] == 99 for im in images):
            raise MemoryError("Failed to allocate memory for requested buffer")
        return [np.array([[0, 0, 1, 1, im[0, 0, 0]]], np.float32) for im in images]


def _indexed(index: int, height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[0, 0] = index
    return image


# --- 1. a batch is detected in runs of at most MAX_BATCH_PIXELS -----------------------------

def test_a_batch_is_detected_in_runs_under_the_pixel_budget_in_order():
    """Serve's batch (up to --max-batch-size requests) went to detect_batch whole: 8 requests
    of 40 Mpx needed 8 times one's memory. Same-size images now run in even runs of at most
    the budget, one after the other; each request gets its own image's boxes."""
    shapes = [(10, 5)] * 5 + [(10, 10)] * 2 + [(20, 10)] + [(10, 5)]
    images = [_indexed(i, h, w) for i, (h, w) in enumerate(shapes)]
    order = [3, 0, 7, 5, 1, 8, 2, 6, 4]  # the sizes interleaved
    recorder = _Recorder()
    results = detect_images(recorder, [images[i] for i in order], max_batch_pixels=100)
    assert [int(r[0, 4]) for r in results] == order
    # each size in the order it first came: 10x5 (50 px), six images, two a run, in the order
    # given; 20x10 (200 px, over the budget) alone; 10x10 (100 px) one a run
    assert recorder.calls == [[3, 0], [1, 8], [2, 4], [7], [5], [6]]
    assert pixel_batches(list(range(8)), 50, 350) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # 4 + 4,
    assert pixel_batches(list(range(8)), 50, 150) == [[0, 1, 2], [3, 4, 5], [6, 7]]  # not 7 + 1
    assert pixel_batches([4, 2], 10 ** 9, 100) == [[4], [2]]


def test_the_default_budget_runs_40_mpx_requests_alone_and_small_ones_together():
    """The review's case: two PNGs of 6324 x 6324 (just under the default --max-pixels)
    batched failed ONNX Runtime's allocation, then ran one by one."""
    assert MAX_BATCH_PIXELS == DEFAULT_MAX_PIXELS == 40_000_000
    for (height, width), count, runs in [((6324, 6324), 2, [1, 1]), ((5000, 4000), 3, [2, 1]),
                                         ((1080, 1920), 8, [8]), ((2160, 3840), 8, [4, 4])]:
        seen: list[int] = []

        class Counter:
            def detect_batch(self, batch):
                seen.append(len(batch))
                return [np.zeros((0, 5), np.float32) for _ in batch]

        detect_images(Counter(), [_blank(height, width)] * count)
        assert seen == runs, (height, width)
        assert all(n * height * width <= MAX_BATCH_PIXELS for n in runs if n > 1)


def test_a_failing_run_is_detected_again_one_by_one_and_the_other_runs_are_not():
    recorder = _Recorder()
    images = [_indexed(i, 10, 5) for i in (1, 99, 2, 3)]
    results = detect_images(recorder, images, max_batch_pixels=100)
    assert recorder.calls == [[1, 99], [1], [99], [2, 3]]
    assert [int(r[0, 4]) for r in (results[0], results[2], results[3])] == [1, 2, 3]
    assert isinstance(results[1], DetectionError) and str(results[1]) == (
        "detection failed: MemoryError: Failed to allocate memory for requested buffer")


def test_runs_give_each_image_the_boxes_it_gets_detected_alone(export_dir):
    """Exactness with the real detector (ONNX Runtime, CPU): a run holds only same-size
    images and every image's boxes are those of detecting it alone."""
    from tinyfaces_trt.detectors import DetectorSpec
    from tinyfaces_trt.scaleout.serve import replica_spec

    spec, _ = replica_spec(DetectorSpec(model_dir=str(export_dir), threads=1))
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in [(48, 64, 3), (40, 56, 3), (48, 64, 3), (48, 64, 3)]]
    with spec.create() as detector:
        alone = [detector.detect_batch([image])[0] for image in images]
        assert sum(len(b) for b in alone) > 0  # the seeded network finds "faces"
        for budget, runs in ((48 * 64, [1, 1, 1, 1]), (2 * 48 * 64, [2, 1, 1]),
                             (MAX_BATCH_PIXELS, [3, 1])):
            sizes: list[int] = []

            class Counted:
                def detect_batch(self, batch):
                    sizes.append(len(batch))
                    return detector.detect_batch(batch)

            results = detect_images(Counted(), images, max_batch_pixels=budget)
            assert sizes == runs, budget
            for got, want in zip(results, alone):
                np.testing.assert_array_equal(got, want)


# --- 2. /anonymize's mask_scale is capped ----------------------------------------------------

SCALE_400 = "mask_scale must be a number >= 1 (1 = the detected box) and <= 4, got "


@pytest.mark.parametrize("value", ["4.0001", "5", "100", "1e3"])
def test_a_mask_scale_past_the_service_s_limit_is_a_400(value):
    """mask_scale=100 made every face's region the whole image: 200 faces on a 2000 x 2000
    photo took 97 s (blur) instead of about 1 s; 967 on 800 x 600, 55.8 s instead of 19.8."""
    with pytest.raises(RequestError) as info:
        parse_anonymise_query({"mask_scale": value}, b"")
    assert (info.value.status, str(info.value)) == (400, SCALE_400 + repr(value))
    assert MAX_MASK_SCALE == 4.0
    # the limit itself, and the other mask limits (their cost does not grow: measured) are taken
    request = parse_anonymise_query({"mask_scale": "4", "blur_strength": "10", "cells": "10000",
                                     "mode": "pixelate"}, b"")
    assert request.style == MaskStyle(mode="pixelate", scale=4, blur_strength=10, cells=10000)


class _Counting:
    """A replica's detector (unclipped boxes) counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.config = DetectorConfig.for_variant("pytorch", clip_boxes=False)

    def detect_batch(self, images):
        self.calls += 1
        return [np.array([[10, 5, 30, 40, 0.75]], np.float32) for _ in images]


def _post(detector, query: bytes, body: bytes):
    requests = pytest.importorskip("starlette.requests",
                                   reason="Ray Serve's web framework (the scale extra)")
    from tinyfaces_trt.scaleout.serve import RequestHandler

    scope = {"type": "http", "method": "POST", "path": "/anonymize", "query_string": query,
             "headers": [(b"content-type", b"image/png"),
                         (b"content-length", str(len(body)).encode())]}
    parts = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def detect(image):
        return detect_images(detector, [image])[0]

    handler = RequestHandler(detector, "onnxruntime", Limits(), True)
    return asyncio.run(handler(requests.Request(scope, receive), detect))


def test_anonymize_refuses_a_large_mask_scale_before_detecting():
    image = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    detector = _Counting()
    response = _post(detector, b"mask_scale=100&blur_strength=10", encode_image(image, "PNG"))
    assert response.status_code == 400 and detector.calls == 0
    assert json.loads(response.body) == {"error": {"status": 400, "message": SCALE_400 + "'100'"}}
    response = _post(detector, b"mask_scale=4&format=png", encode_image(image, "PNG"))
    assert response.status_code == 200 and detector.calls == 1
    boxes = np.array([[10, 5, 30, 40, 0.75]], np.float32)
    assert np.array_equal(decode_image(response.body),
                          apply_masks(image, boxes, MaskStyle(scale=4)))


# --- 3. MaskStyle's checks are the only ones -------------------------------------------------

@pytest.fixture
def stricter_style(monkeypatch):
    """MaskStyle refusing one more value of each checked field (scale 1.5, blur strength
    0.3, 7 cells): tf-anonymize's options and /anonymize's query must refuse them too."""
    original = MaskStyle.__post_init__

    def stricter(self):
        original(self)
        if self.scale == 1.5 or self.blur_strength == 0.3 or self.cells == 7:
            raise TinyFacesError("refused by MaskStyle")

    monkeypatch.setattr(MaskStyle, "__post_init__", stricter)


@pytest.mark.parametrize("option, field, value, cli, http", [
    ("--mask-scale", "mask_scale", "1.5",
     "1.5 must be >= 1 and <= 100 (1 = the detected box: a smaller mask leaves part of the face "
     "visible)", "mask_scale must be a number >= 1 (1 = the detected box) and <= 4, got '1.5'"),
    ("--blur-strength", "blur_strength", "0.3", "0.3 must be > 0 and <= 10",
     "blur_strength must be a number > 0 and <= 10, got '0.3'"),
    ("--cells", "cells", "7", "7 must be between 1 and 10000",
     "cells must be a whole number 1..10000, got '7'")])
def test_tf_anonymize_and_anonymize_take_what_mask_style_takes(
        stricter_style, tmp_path, capsys, option, field, value, cli, http):
    """The lower and upper bounds were restated in tf-anonymize's option types and the
    service's query parsing; both now ask MaskStyle, with their own messages."""
    from tinyfaces_trt.anonymize.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), option, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.splitlines()[-1] == f"tf-anonymize: error: argument " \
                                                           f"{option}: {cli}"
    with pytest.raises(RequestError) as info:
        parse_anonymise_query({field: value}, b"")
    assert (info.value.status, str(info.value)) == (400, http)


def test_the_help_names_the_limits():
    from tinyfaces_trt.scaleout import cli_serve

    text = " ".join(cli_serve.build_parser().format_help().split())
    for words in ("mask_scale 1 to 4 (tf-anonymize's 100 would make every face's mask the whole "
                  "image), blur_strength up to 10, cells up to 10000",
                  "where together they pass 40 Mpx, the batch is detected in runs under that"):
        assert words in text, words

