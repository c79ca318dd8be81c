"""tf-serve after an operator's review, without a Ray cluster: /anonymize masks as
tf-anonymize does, a detector failure is that request's JSON 500 (not its batch's), /detect
and /healthz say the boxes' coordinate convention, the stop runs to its end through a second
Ctrl-C, replicas that cannot be placed are refused up front, the help says what --max-queued
limits, and the Python client sends the type of the bytes and the format of its output.
The same answers from the application served on a local Ray cluster, end to end:
tests/test_scaleout_ray.py (test_the_served_app_answers_as_tf_detect_and_tf_anonymize)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from helpers_run import load_script
from helpers_scaleout import local_http_server
from tinyfaces_trt.core.config import DetectorConfig
from tinyfaces_trt.core.errors import NonFiniteScoresError, TinyFacesError
from tinyfaces_trt.runtime.imageio import decode_image, encode_image
from tinyfaces_trt.runtime.masks import MaskStyle, apply_masks
from tinyfaces_trt.scaleout import cli_serve
from tinyfaces_trt.scaleout.service import (Limits, RequestError, anonymise, detect_images,
                                            parse_anonymise_query)

ROOT = Path(__file__).resolve().parent.parent


def _tf_anonymize_style(*argv: str) -> MaskStyle:
    """The mask tf-anonymize itself builds from these options (its own parser and
    ``options_from``)."""
    from tinyfaces_trt.anonymize.cli import build_parser, options_from

    return options_from(build_parser().parse_args(["in.jpg", "--out", "out", *argv])).style


def _image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# --- 1. /anonymize hides faces as tf-anonymize does ---------------------------------------

def test_the_service_s_default_mask_is_tf_anonymize_s():
    """scaleout may not import anonymize: the default is defined beside the service, and held
    to tf-anonymize's parser here (--mode, --shape, --mask-scale, --blur-strength, --cells)."""
    from tinyfaces_trt.scaleout.service import default_mask_style

    assert default_mask_style() == _tf_anonymize_style()
    assert parse_anonymise_query({}, b"").style == _tf_anonymize_style()


@pytest.mark.parametrize("base", [0.0, 1.0])
def test_anonymize_masks_what_tf_anonymize_masks(base):
    """The service masked with MaskStyle(scale=1.0) where tf-anonymize enlarges boxes 1.3x:
    the same photo changed 2000 px online and 3432 px in batch. A box past the left border
    (tf-anonymize's unclipped boxes) is enlarged about its own centre too."""
    image = _image()
    boxes = np.array([[20, 10, 40, 34, 0.9], [-6, 5, 8, 20, 0.8]], np.float32)
    request = parse_anonymise_query({"format": "png"}, b"")
    served = decode_image(anonymise(image, boxes, request, base))
    batch = apply_masks(image, boxes, _tf_anonymize_style(), base=base)
    assert np.array_equal(served, batch)
    changed = int((served != image).any(axis=2).sum())
    as_detected = int((apply_masks(image, boxes, MaskStyle(), base=base) != image)
                      .any(axis=2).sum())
    assert changed > as_detected  # the enlarged masks (the old answer hid only these)


def test_anonymize_takes_tf_anonymize_s_mask_options():
    image = _image(seed=1)
    boxes = np.array([[12, 8, 40, 30, 0.9]], np.float32)
    for query, argv in [({"mask_scale": "1"}, ["--mask-scale", "1"]),
                        ({"mode": "pixelate", "cells": "3", "shape": "ellipse"},
                         ["--mode", "pixelate", "--cells", "3", "--shape", "ellipse"]),
                        ({"blur_strength": "0.5", "mask_scale": "2.0"},
                         ["--blur-strength", "0.5", "--mask-scale", "2.0"]),
                        ({"mode": "solid"}, ["--mode", "solid"])]:
        request = parse_anonymise_query({**query, "format": "png"}, b"")
        assert request.style == _tf_anonymize_style(*argv), query
        assert np.array_equal(decode_image(anonymise(image, boxes, request)),
                              apply_masks(image, boxes, _tf_anonymize_style(*argv)))


SCALE_400 = "mask_scale must be a number >= 1 (1 = the detected box) and <= 4"


@pytest.mark.parametrize("query, message", [
    ({"mask_scale": "0.5"}, SCALE_400 + ", got '0.5'"),
    ({"mask_scale": "0"}, SCALE_400 + ", got '0'"),
    ({"mask_scale": "-1.3"}, SCALE_400 + ", got '-1.3'"),
    ({"mask_scale": "nan"}, SCALE_400 + ", got 'nan'"),
    ({"mask_scale": "inf"}, SCALE_400 + ", got 'inf'"),
    ({"mask_scale": "big"}, SCALE_400 + ", got 'big'"),
    ({"blur_strength": "0"}, "blur_strength must be a number > 0 and <= 10, got '0'"),
    ({"cells": "0"}, "cells must be a whole number 1..10000, got '0'"),
    ({"cells": "2.5"}, "cells must be a whole number 1..10000, got '2.5'"),
    ({"mask_scale": "1e300"}, SCALE_400 + ", got '1e300'"),
    ({"blur_strength": "1e9"}, "blur_strength must be a number > 0 and <= 10, got '1e9'"),
    ({"cells": "10001"}, "cells must be a whole number 1..10000, got '10001'"),
    ({"shape": "circle"}, "shape must be one of box, ellipse, got 'circle'"),
    ({"mode": "none"}, "mode must be one of blur, pixelate, solid, got 'none'"),
    ({"maskscale": "2"}, "unknown query parameter(s) 'maskscale'; /anonymize takes mode, "
                         "shape, mask_scale, blur_strength, cells, format"),
])
def test_bad_mask_options_are_a_400(query, message):
    with pytest.raises(RequestError) as info:
        parse_anonymise_query(query, b"")
    assert (info.value.status, str(info.value)) == (400, message)


# --- 2. a detector failure is that request's JSON 500 -------------------------------------

NAN_MESSAGE = ("the network's score map of pyramid level 0 (scale 1, 64x48 input) holds 3 NaN "
               "or infinite value(s) of 9: the weights, the export or the backend is broken; "
               "no detections were produced for this image")


class _FailsOnMarked:
    """detect_batch that fails for any batch holding a marked image (its first pixel 255,
    255, 255), as a NaN score map fails a whole batch; boxes encode the image's seed."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[int] = []
        self.error = error or NonFiniteScoresError(NAN_MESSAGE)
        self.config = DetectorConfig()

    def detect_batch(self, images):
        self.calls.append(len(images))
        if any((im[0, 0] == 255).all() for im in images):
            raise self.error
        return [np.array([[1, 2, 3, 4, im[1, 1, 0] / 255]], np.float32) for im in images]


def _marked(image: np.ndarray) -> np.ndarray:
    image = image.copy()
    image[0, 0] = 255
    return image


def test_one_failing_image_fails_only_its_own_request():
    """One NaN image in a batch of three failed all three requests (Ray Serve's batch raised
    for every caller), with a bare 'Internal Server Error'."""
    from tinyfaces_trt.scaleout.service import DetectionError

    detector = _FailsOnMarked()
    images = [_image(seed=1), _marked(_image(seed=2)), _image(seed=3), _image(20, 10, seed=4)]
    results = detect_images(detector, images)
    assert detector.calls == [3, 1, 1, 1, 1]  # the batch, then its images one by one; then 20x10
    for i in (0, 2, 3):
        assert results[i][0, 4] == np.float32(images[i][1, 1, 0] / 255)
    error = results[1]
    assert isinstance(error, DetectionError) and error.status == 500
    assert str(error) == f"detection failed: {NAN_MESSAGE}"
    alone = detect_images(detector, [_marked(_image())])[0]  # a batch of one: not run twice
    assert isinstance(alone, DetectionError) and detector.calls[-1] == 1
    other = detect_images(_FailsOnMarked(RuntimeError("CUDA error: out of memory")),
                          [_marked(_image())])[0]
    assert str(other) == "detection failed: RuntimeError: CUDA error: out of memory"


# --- the replica's routes, through RequestHandler (no Ray) ---------------------------------

def _request(method: str, path: str, body: bytes = b"", query: bytes = b"",
             content_type: bytes = b"image/png"):
    """A Starlette request as Ray Serve's proxy hands it to a replica."""
    requests = pytest.importorskip("starlette.requests",
                                   reason="Ray Serve's web framework (the scale extra)")
    Request = requests.Request

    scope = {"type": "http", "method": method, "path": path, "query_string": query,
             "headers": [(b"content-type", content_type),
                         (b"content-length", str(len(body)).encode())]}
    parts = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    return Request(scope, receive)


class _Fixed:
    """A detector (unclipped, as a replica's) giving the same boxes for every image."""

    def __init__(self, boxes: np.ndarray, variant: str = "pytorch") -> None:
        self.boxes = boxes
        self.config = DetectorConfig.for_variant(variant, clip_boxes=False)

    def detect_batch(self, images):
        if any((im[0, 0] == 255).all() for im in images):
            raise NonFiniteScoresError(NAN_MESSAGE)
        if any((im[0, 0] == 7).all() for im in images):
            raise ValueError("a bug")
        return [self.boxes.copy() for _ in images]


def _answer(detector, request, clip: bool = True):
    from tinyfaces_trt.scaleout.serve import RequestHandler

    handler = RequestHandler(detector, "onnxruntime", Limits(), clip, ["64x48"], [1])

    async def detect(image):
        return detect_images(detector, [image])[0]

    return asyncio.run(handler(request, detect))


@pytest.mark.parametrize("variant, base, clipped", [
    ("pytorch", 0, [0.0, 5.0, 8.0, 47.0]), ("matconvnet", 1, [1.0, 5.0, 8.0, 48.0])])
def test_detect_and_healthz_say_the_coordinate_convention(variant, base, clipped):
    """matconvnet exports give 1-based boxes in [1, W], pytorch 0-based: the answer said
    neither. /detect clips the replica's unclipped boxes as the detector would have."""
    boxes = np.array([[-6, 5, 8, 60, 0.75]], np.float32)
    image = _image()
    response = _answer(_Fixed(boxes, variant), _request("POST", "/detect", encode_image(image)))
    assert response.status_code == 200
    assert json.loads(response.body) == {
        "width": 64, "height": 48, "variant": variant, "coordinate_base": base,
        "detections": [{"box": clipped, "score": 0.75}]}
    unclipped = _answer(_Fixed(boxes, variant), _request("POST", "/detect", encode_image(image)),
                        clip=False)
    assert json.loads(unclipped.body)["detections"][0]["box"] == [-6.0, 5.0, 8.0, 60.0]
    health = _answer(_Fixed(boxes, variant), _request("GET", "/healthz"))
    assert json.loads(health.body) == {
        "status": "ok", "backend": "onnxruntime", "variant": variant, "coordinate_base": base,
        "warmed_up": ["64x48"], "warmup_batch_sizes": [1]}


def test_anonymize_route_masks_the_unclipped_boxes_as_tf_anonymize():
    boxes = np.array([[-6, 5, 8, 20, 0.75], [30, 10, 50, 40, 0.6]], np.float32)
    image = _image(seed=5)
    response = _answer(_Fixed(boxes, "matconvnet"),
                       _request("POST", "/anonymize", encode_image(image), b"format=png"))
    assert response.status_code == 200 and response.headers["x-faces"] == "2"
    assert np.array_equal(decode_image(response.body),
                          apply_masks(image, boxes, _tf_anonymize_style(), base=1.0))


def test_a_detector_failure_is_a_json_500_naming_the_cause():
    """It was a bare 'Internal Server Error' text body."""
    detector = _Fixed(np.zeros((0, 5), np.float32))
    response = _answer(detector, _request("POST", "/detect", encode_image(_marked(_image()))))
    assert response.status_code == 500 and response.media_type == "application/json"
    assert json.loads(response.body) == {"error": {
        "status": 500, "message": f"detection failed: {NAN_MESSAGE}"}}
    bug = _image()
    bug[0, 0] = 7
    response = _answer(detector, _request("POST", "/anonymize", encode_image(bug)))
    assert json.loads(response.body)["error"] == {
        "status": 500, "message": "detection failed: ValueError: a bug"}
    bad = _answer(detector, _request("POST", "/anonymize", encode_image(_image()),
                                     b"mask_scale=0"))
    assert bad.status_code == 400 and json.loads(bad.body)["error"]["message"] == \
        SCALE_400 + ", got '0'"


@pytest.mark.parametrize("query, message", [
    (b"blur_strength=1e9", "blur_strength must be a number > 0 and <= 10, got '1e9'"),
    (b"mask_scale=1e300&mode=pixelate",
     SCALE_400 + ", got '1e300'")])
def test_mask_options_past_their_limits_are_a_400(query, message):
    """They were 500s: 'ValueError: radius too large' (Pillow's blur), 'OverflowError: Python
    int too large to convert to C long' (the pixelate grid)."""
    boxes = np.array([[10, 5, 30, 40, 0.75]], np.float32)
    response = _answer(_Fixed(boxes), _request("POST", "/anonymize", encode_image(_image()),
                                                query))
    assert response.status_code == 400 and json.loads(response.body) == {
        "error": {"status": 400, "message": message}}
    largest = _answer(_Fixed(boxes), _request(
        "POST", "/anonymize", encode_image(_image()),
        b"blur_strength=10&mask_scale=4&cells=10000&format=png"))
    assert largest.status_code == 200
    assert np.array_equal(decode_image(largest.body), apply_masks(
        _image(), boxes, MaskStyle(scale=4, blur_strength=10, cells=10000)))


def test_an_unexpected_failure_is_a_json_500(monkeypatch):
    from tinyfaces_trt.scaleout import serve as serve_module

    def broken(*args):
        raise MemoryError("no room to encode")

    monkeypatch.setattr(serve_module, "anonymise", broken)
    response = _answer(_Fixed(np.zeros((0, 5), np.float32)),
                       _request("POST", "/anonymize", encode_image(_image())))
    assert response.status_code == 500 and json.loads(response.body) == {"error": {
        "status": 500, "message": "internal error: MemoryError: no room to encode"}}


SERVER_SETTINGS = ("the detection settings (thresholds, face sizes, pyramid) are the "
                   "server's, set when it starts (tf-serve --prob-thresh, --nms-thresh, "
                   "--min-face, --max-face, --pyramid)")


@pytest.mark.parametrize("route, query, message", [
    ("/detect", {"prob_thresh": "0.8"},
     f"unknown query parameter(s) 'prob_thresh'; /detect takes no query parameters; "
     f"{SERVER_SETTINGS}"),
    ("/detect", {"mode": "blur", "format": "png"},
     f"unknown query parameter(s) 'format', 'mode'; /detect takes no query parameters; "
     f"{SERVER_SETTINGS}"),
    ("/anonymize", {"prob-thresh": "0.8", "mode": "blur"},
     "unknown query parameter(s) 'prob-thresh'; /anonymize takes mode, shape, mask_scale, "
     f"blur_strength, cells, format; {SERVER_SETTINGS}"),
])
def test_query_parameters_a_route_does_not_take_are_a_400(route, query, message):
    """/detect?prob_thresh=0.8 was a 200 with the server's threshold, said nowhere, while
    /anonymize refused unknown parameters: both refuse them with the same check."""
    from tinyfaces_trt.scaleout.service import check_query

    with pytest.raises(RequestError) as info:
        check_query(query, route)
    assert (info.value.status, str(info.value)) == (400, message)
    check_query({}, "/detect")
    check_query({"mode": "solid", "format": "png"}, "/anonymize")


def test_a_repeated_or_empty_query_parameter_is_a_400():
    """?mode=blur&mode=solid answered with the last one, ?mode= and ?format= with the
    default, each a 200 (?mask_scale= was a 400): every such parameter is refused."""
    datastructures = pytest.importorskip("starlette.datastructures",
                                         reason="Ray Serve's web framework (the scale extra)")
    from tinyfaces_trt.scaleout.service import check_query

    for text, message in [
            ("mode=blur&mode=solid", "mode is given 2 times ('blur', 'solid'); give it once"),
            ("mode=", "mode is empty; leave it out for the default"),
            ("format=%20&mode=blur", "format is empty; leave it out for the default")]:
        with pytest.raises(RequestError) as info:
            parse_anonymise_query(datastructures.QueryParams(text), b"")
        assert (info.value.status, str(info.value)) == (400, message)
    with pytest.raises(RequestError, match="^shape is empty"):
        check_query({"shape": ""}, "/anonymize")
    request = parse_anonymise_query(datastructures.QueryParams("mode=solid&format=png"), b"")
    assert request.style.mode == "solid"


def test_detect_answers_400_to_a_query_parameter_before_reading_the_body():
    requests = pytest.importorskip("starlette.requests",
                                   reason="Ray Serve's web framework (the scale extra)")
    read = []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": encode_image(_image()), "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/detect",
             "query_string": b"prob_thresh=0.8", "headers": [(b"content-type", b"image/png")]}
    response = _answer(_Fixed(np.array([[10, 5, 30, 40, 0.75]], np.float32)),
                       requests.Request(scope, receive))
    assert response.status_code == 400 and response.media_type == "application/json"
    assert json.loads(response.body) == {"error": {"status": 400, "message": (
        "unknown query parameter(s) 'prob_thresh'; /detect takes no query parameters; "
        f"{SERVER_SETTINGS}")}}
    assert read == []
    plain = _answer(_Fixed(np.array([[10, 5, 30, 40, 0.75]], np.float32)),
                    _request("POST", "/detect", encode_image(_image())))
    assert plain.status_code == 200 and len(json.loads(plain.body)["detections"]) == 1


def _option_help(option: str) -> str:
    parser = cli_serve.build_parser()
    action = next(a for a in parser._actions if option in a.option_strings)
    return " ".join(action.help.split())


def test_replicas_help_says_where_unplaceable_replicas_are_refused_and_where_a_warning():
    """It said they were refused at once (exit 1) on any cluster: on an existing one
    (--address) they are a warning and wait (check_placement's can_grow)."""
    assert _option_help("--replicas") == (
        "fixed number of replicas (default: 1; or autoscaling with --min-replicas/"
        "--max-replicas). Where the cluster's nodes cannot hold them: refused at once (exit 1) "
        "on the local cluster tf-serve starts; on an existing cluster (--address, $RAY_ADDRESS "
        "or `ray start` on this machine), which an autoscaler such as KubeRay may grow, a "
        "warning, and they wait until nodes that can hold them join")


def test_gpus_per_replica_help_names_the_gpu_rule_the_code_applies(monkeypatch):
    """Its default named tensorrt and CUDA providers, not torch-cuda (a GPU backend of
    cluster.GPU_BACKENDS): the help is now made from the constants spec_uses_gpu reads."""
    from tinyfaces_trt.scaleout import cluster

    text = _option_help("--gpus-per-replica")
    assert text == (
        "GPUs per replica (default: 1 when the cluster has GPUs and the backend is tensorrt, "
        "onnxruntime-cuda or torch-cuda (auto: the one it picks) or --providers lists auto, "
        "cuda, tensorrt or trt (or their full names), else 0)")
    for backend in cluster.GPU_BACKENDS:
        assert backend in text and cluster.spec_uses_gpu(SimpleNamespace(backend=backend,
                                                                         providers=None))
    for alias in ("auto", "cuda", "tensorrt", "trt"):
        assert cluster.spec_uses_gpu(SimpleNamespace(backend="onnxruntime",
                                                     providers=f"cpu,{alias}"))
    assert not cluster.spec_uses_gpu(SimpleNamespace(backend="onnxruntime", providers="cpu"))
    monkeypatch.setattr(cluster, "GPU_BACKENDS", ("tensorrt", "future-gpu"))
    assert "the backend is tensorrt or future-gpu (auto" in _option_help("--gpus-per-replica")


def test_help_documents_coordinates_liveness_errors_and_the_queue_bound():
    text = " ".join(cli_serve.build_parser().format_help().split())
    for words in ('"variant", "coordinate_base"', "coordinate_base 0 (pytorch: x in [0, W-1]",
                  "1 (matconvnet: x in [1, W]", "(liveness), not a check that its model detects",
                  "500 the detector failed on that image",
                  "&mask_scale=F (1.3) &blur_strength=F (0.25) &cells=N (5)",
                  "408 (--request-timeout), 503 (--max-queued reached, or no replica up)",
                  "a burst arriving at once counts in full even at an idle server",
                  "replicas x 2 x --max-batch-size"):
        assert words in text, words


# --- 4. the stop runs to its end through further interrupts --------------------------------

def test_cleanup_runs_to_its_end_through_further_signals():
    steps, notes = [], []
    seen = threading.Event()

    def cleanup():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            seen.clear()
            os.kill(os.getpid(), sig)
            assert seen.wait(10)  # the main thread took it (and did not stop the cleanup)
            steps.append(sig)
        steps.append("done")

    def on_signal():
        notes.append(1)
        seen.set()

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli_serve.run_to_end(cleanup, 60, on_signal) is True
    assert steps == [signal.SIGINT, signal.SIGTERM, signal.SIGINT, "done"] and len(notes) == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_cleanup_that_fails_or_hangs_is_said_with_the_command_to_remove_what_is_left(capsys):
    release = threading.Event()
    try:
        assert cli_serve.remove_service(release.wait, "10.0.0.5:6379", 8000, "tinyfaces",
                                        timeout_s=0.3) is False
    finally:
        release.set()
    err = capsys.readouterr().err
    assert err == (
        "tf-serve: warning: the application 'tinyfaces' may be left on the Ray cluster (it was "
        "not removed within 0.3 s), its replicas holding their CPUs/GPUs and Serve port 8000; "
        "on a cluster that outlives tf-serve (`ray start`), remove it with: python -c \"import "
        "ray; from ray import serve; ray.init(address='10.0.0.5:6379'); "
        "serve.delete('tinyfaces')\" (or `serve shutdown -y`, which removes every Serve "
        "application there)\n")

    def fails():
        raise TimeoutError("Some of these applications weren't deleted after 60s: ['tinyfaces']")

    assert cli_serve.remove_service(fails, None, 8000, "tinyfaces") is False
    err = capsys.readouterr().err
    assert "(removing it failed: TimeoutError: Some of these applications weren't deleted " \
           "after 60s: ['tinyfaces'])" in err and "ray.init(address='auto')" in err


def _fake_serve(monkeypatch, export_dir, nodes=None):
    """tf-serve's Ray and Serve calls replaced by recorders (no cluster)."""
    serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the scale extra)")
    from tinyfaces_trt.scaleout import cluster
    from tinyfaces_trt.scaleout import serve as serve_module

    monkeypatch.setattr(cluster, "connect", lambda address: contextlib.nullcontext())
    monkeypatch.setattr(cluster, "cluster_resources", lambda: SimpleNamespace(gpus=0, cpus=2))
    # without --address tf-serve starts its own cluster (whatever Ray runs on this machine)
    monkeypatch.setattr(cluster, "_starts_local", lambda address: address in (None, "local"))
    monkeypatch.setattr(cli_serve, "node_resources", lambda: nodes, raising=False)
    monkeypatch.setattr(serve_module, "build_app", lambda options: "app")
    monkeypatch.setattr(cli_serve, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(serve_module, "running_serve", lambda: None)
    return serve


def _unschedulable_serve(monkeypatch, export_dir) -> list[str]:
    """tf-serve on a recorded 2-CPU cluster whose ``serve.run`` never schedules the replicas
    (as Ray would wait for ever); returns the Serve calls made, in order."""
    serve = _fake_serve(monkeypatch, export_dir, nodes=[{"CPU": 2.0}])
    calls: list[str] = []

    def never_scheduled(*args, **kwargs):
        calls.append("run")
        raise RuntimeError("the replicas were never scheduled")

    for name in ("start", "delete", "shutdown"):
        monkeypatch.setattr(serve, name, lambda *a, name=name, **k: calls.append(name))
    monkeypatch.setattr(serve, "run", never_scheduled)
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications={}))
    return calls


def test_a_second_ctrl_c_during_the_stop_leaves_nothing_deployed(monkeypatch, capsys,
                                                                 export_dir):
    """Ctrl-C while replicas started, then another (timeout -s INT signals tf-serve and its
    process group: two SIGINTs) inside stop_app: 'tf-serve: stopped', but the application
    stayed deployed (DEPLOYING) and held the port in 2 of 9 tries."""
    serve = _fake_serve(monkeypatch, export_dir)
    apps, calls, lines = {}, [], []
    noted = threading.Event()

    def stderr_line(line):
        lines.append(line)
        if "still removing" in line:
            noted.set()

    def run(app, **kwargs):
        calls.append("run")
        apps["tinyfaces"] = "DEPLOYING"
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 10  # the interrupt lands in this wait
        while time.monotonic() < deadline:
            time.sleep(0.01)
        calls.append("run done")

    def delete(name):
        calls.append(f"delete {name}")
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C
        assert noted.wait(10)
        apps.pop(name)
        calls.append("deleted")

    monkeypatch.setattr(cli_serve, "stderr_line", stderr_line)
    monkeypatch.setattr(serve, "start", lambda **kwargs: calls.append("start"))
    monkeypatch.setattr(serve, "run", run)
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications=dict(apps)))
    monkeypatch.setattr(serve, "delete", delete)
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append("shutdown"))
    status = cli_serve.main(["--model", str(export_dir)])
    assert status == 0 and apps == {}
    assert calls == ["start", "run", "delete tinyfaces", "deleted", "shutdown"]
    assert [line for line in lines if "removing" in line] == [
        "tf-serve: still removing the service from the Ray cluster (at most 90 s) ..."]
    assert capsys.readouterr().err.strip().splitlines()[-1] == "tf-serve: stopped"


# --- 5. replicas that cannot be placed are refused before anything is deployed -------------

@pytest.mark.parametrize("nodes, replicas, cpus, gpus, message", [
    ([{"CPU": 2.0, "memory": 1e9}], 1, 1, 1,
     "GPU replicas were asked for (--gpus-per-replica 1) but the Ray cluster has no GPU: give "
     "--gpus-per-replica 0 with a CPU backend (--backend onnxruntime), or a cluster with GPUs "
     "(--address)"),
    ([{"CPU": 2.0}], 3, 1, 0,
     "3 replica(s) of 1 CPU(s) each cannot be placed: the Ray cluster has 2 CPU(s), no GPU on "
     "1 node(s), room for 2; give fewer replicas (--replicas, --min-replicas), less per "
     "replica (--cpus-per-replica, --gpus-per-replica), or a larger cluster (--address)"),
    ([{"CPU": 2.0}, {"CPU": 2.0}], 1, 3, 0,  # 4 CPUs, but no node holds 3
     "1 replica(s) of 3 CPU(s) each cannot be placed: the Ray cluster has 4 CPU(s), no GPU on "
     "2 node(s), room for 0; give fewer replicas (--replicas, --min-replicas), less per "
     "replica (--cpus-per-replica, --gpus-per-replica), or a larger cluster (--address)"),
    ([{"CPU": 16.0, "GPU": 1.0}], 2, 1, 1,
     "2 replica(s) of 1 CPU(s) and 1 GPU(s) each cannot be placed: the Ray cluster has 16 "
     "CPU(s), 1 GPU(s) on 1 node(s), room for 1; give fewer replicas (--replicas, "
     "--min-replicas), less per replica (--cpus-per-replica, --gpus-per-replica), or a larger "
     "cluster (--address)"),
])
def test_replicas_that_cannot_be_placed_are_refused(nodes, replicas, cpus, gpus, message):
    """tf-serve waited for ever, Ray repeating 'taken more than 30s to be scheduled'."""
    with pytest.raises(TinyFacesError) as info:
        cli_serve.check_placement(nodes, replicas, cpus, gpus)
    assert str(info.value) == message


WAIT_FOR_NODES = (". On this existing cluster the replicas wait until nodes that can hold "
                  "them join (an autoscaler adds them on demand; `ray status` shows pending "
                  "demands)")


@pytest.mark.parametrize("nodes, replicas, cpus, gpus, message", [
    ([{"CPU": 2.0}], 1, 1, 1,
     "GPU replicas were asked for (--gpus-per-replica 1) but the Ray cluster has no GPU: give "
     "--gpus-per-replica 0 with a CPU backend (--backend onnxruntime), or a cluster with GPUs "
     "(--address)"),
    ([{"CPU": 16.0, "GPU": 1.0}], 2, 1, 1,
     "2 replica(s) of 1 CPU(s) and 1 GPU(s) each cannot be placed: the Ray cluster has 16 "
     "CPU(s), 1 GPU(s) on 1 node(s), room for 1; give fewer replicas (--replicas, "
     "--min-replicas), less per replica (--cpus-per-replica, --gpus-per-replica), or a larger "
     "cluster (--address)")])
def test_unplaceable_replicas_on_a_cluster_that_can_grow_are_a_warning(nodes, replicas, cpus,
                                                                       gpus, message):
    """An autoscaling cluster (KubeRay) adds GPU nodes on demand: it was refused."""
    assert cli_serve.check_placement(nodes, replicas, cpus, gpus, can_grow=True) == \
        message + WAIT_FOR_NODES


def test_unplaceable_replicas_on_an_existing_cluster_are_deployed(monkeypatch, capsys,
                                                                  export_dir):
    calls = _unschedulable_serve(monkeypatch, export_dir)
    assert cli_serve.main(["--model", str(export_dir), "--replicas", "3",
                           "--address", "ray://head:10001"]) == 1
    assert calls[:2] == ["start", "run"]
    assert "tf-serve: warning: 3 replica(s) of 1 CPU(s) each cannot be placed: the Ray " \
           "cluster has 2 CPU(s), no GPU on 1 node(s), room for 2; give fewer replicas " \
           "(--replicas, --min-replicas), less per replica (--cpus-per-replica, " \
           "--gpus-per-replica), or a larger cluster (--address)" + WAIT_FOR_NODES \
           in capsys.readouterr().err.splitlines()


def test_replicas_that_fit_pass_and_too_many_autoscaled_ones_are_a_warning():
    nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0}]
    assert cli_serve.check_placement(nodes, 2, 1, 1) is None
    assert cli_serve.check_placement(nodes, 6, 2, 0) is None
    assert cli_serve.check_placement(nodes, 1, 0.5, 0, max_replicas=24) is None
    assert cli_serve.check_placement(nodes, 1, 1, 1, max_replicas=4) == (
        "--max-replicas 4: the Ray cluster has 12 CPU(s), 2 GPU(s) on 2 node(s), room for 2 "
        "replica(s); autoscaling beyond that waits for resources")


def test_unplaceable_replicas_exit_1_before_serve_starts(monkeypatch, capsys, export_dir):
    calls = _unschedulable_serve(monkeypatch, export_dir)
    assert cli_serve.main(["--model", str(export_dir), "--replicas", "3"]) == 1
    assert calls == []
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "tf-serve: error: 3 replica(s) of 1 CPU(s) each cannot be placed: the Ray cluster has "
        "2 CPU(s), no GPU on 1 node(s), room for 2;")
    assert cli_serve.main(["--model", str(export_dir), "--gpus-per-replica", "1"]) == 1
    assert calls == []
    assert "GPU replicas were asked for (--gpus-per-replica 1) but the Ray cluster has no GPU" \
        in capsys.readouterr().err


def test_startup_warning_says_what_replicas_wait_for():
    """No free room is also what this service's own replicas leave while they are placed
    and warming up (serve.run waits for every --warmup): the warning said they 'wait for
    resources'."""
    assert cli_serve.startup_warning(60, {"CPU": 2.0}, 1, 1) == (
        "tf-serve: warning: the service is not up after 60 s; replicas may still be starting "
        "(--warmup prepares and detects first) or waiting for resources (each takes 1 CPU(s) "
        "and 1 GPU(s); free now: 2 CPU(s), no GPU): those start once other work frees them "
        "or nodes join; `ray status` shows pending demands; Ctrl-C stops")
    assert cli_serve.startup_warning(60, {"CPU": 0.5}, 1, 0) is not None
    assert cli_serve.startup_warning(60, {"CPU": 1.0}, 1, 0) is None  # placed: still loading


# --- 7. the Python client: the type of the bytes, the format of OUT ------------------------

class _Recorder(BaseHTTPRequestHandler):
    """Records each request's path and Content-Type; answers /detect with no faces, the
    others with a 1x1 PNG and X-Faces: 0."""

    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append((self.path, self.headers.get("Content-Type")))
        body = b'{"width": 1, "height": 1, "detections": []}' if self.path == "/detect" \
            else encode_image(np.zeros((1, 1, 3), np.uint8), "PNG")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Faces", "0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    with local_http_server(_Recorder) as url:
        yield url


def _client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / "serve_client.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_python_client_sends_the_type_of_the_bytes_and_asks_for_out_s_format(recorder,
                                                                                  tmp_path):
    """A PNG written to anon.jpg got PNG bytes (no format asked), and a JPEG named p0.txt was
    sent as text/plain (415)."""
    jpeg = tmp_path / "p0.txt"
    jpeg.write_bytes(encode_image(_image(), "JPEG"))
    png = tmp_path / "photo.jpg"  # named .jpg, holds a PNG
    png.write_bytes(encode_image(_image(), "PNG"))
    for photo, out in ((jpeg, None), (png, "anon.jpg"), (jpeg, "anon.PNG"), (png, "a.jpeg")):
        extra = ["--anonymize", str(tmp_path / out)] if out else []
        run = _client(str(photo), "--url", recorder, *extra, "--mode", "pixelate")
        assert run.returncode == 0, run.stderr
    assert _Recorder.seen == [
        ("/detect", "image/jpeg"),
        ("/anonymize?mode=pixelate&format=jpeg", "image/png"),
        ("/anonymize?mode=pixelate&format=png", "image/jpeg"),
        ("/anonymize?mode=pixelate&format=jpeg", "image/png")]
    refused = _client(str(png), "--url", recorder, "--anonymize", str(tmp_path / "anon.webp"))
    assert refused.returncode == 2 and len(_Recorder.seen) == 4
    assert "--anonymize " + str(tmp_path / "anon.webp") + ": the service writes JPEG or PNG; " \
        "give an output name ending in .jpg, .jpeg, .png" in refused.stderr


@pytest.mark.parametrize("data, kind", [
    (b"\xff\xd8\xff\xe0\0\x10JFIF", "image/jpeg"), (b"\x89PNG\r\n\x1a\n\0\0", "image/png"),
    (b"GIF89a..", "image/gif"), (b"RIFF\x10\0\0\0WEBPVP8 ", "image/webp"),
    (b"BM6\0\0\0", "image/bmp"), (b"II*\0\x08\0", "image/tiff"), (b"MM\0*\0\0", "image/tiff"),
    (b"RIFF\x10\0\0\0WAVEfmt ", "application/octet-stream"), (b"hello", "application/octet-stream"),
    (b"", "application/octet-stream")])
def test_the_python_client_tells_the_type_from_the_bytes(data, kind):
    client = load_script("examples/serve_client.py", "serve_client_sniff")
    assert client.content_type(data) == kind


def test_unreachable_face_sizes_are_one_error_before_anything_is_deployed(monkeypatch, capsys,
                                                                          export_dir):
    """--max-face 5 failed inside every replica: 20 s and 199 lines of Ray log ending in
    "Failed to update the deployments"; now one line and exit 2 (a usage error, as in
    tf-detect), before any cluster starts (it was refused after the local cluster's start)."""
    from tinyfaces_trt.scaleout import cluster

    serve = _fake_serve(monkeypatch, export_dir, nodes=[{"CPU": 2.0}])
    calls = []
    for name in ("start", "run", "delete", "shutdown"):
        monkeypatch.setattr(serve, name, lambda *a, name=name, **k: calls.append(name))
    monkeypatch.setattr(cluster, "connect", lambda address: calls.append("connect"))
    assert cli_serve.main(["--model", str(export_dir), "--max-face", "5"]) == 2
    assert calls == []
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("tf-serve: error: max_face (5) is below the smallest face any "
                           "pyramid level can produce"), last


def test_the_python_client_says_what_it_cannot_read_or_write_before_sending(tmp_path, capsys):
    """examples/serve_client.py: a missing image or an --anonymize path in a missing folder
    gave a traceback, the second one after the server had done the work."""
    from helpers_run import load_script

    client = load_script("examples/serve_client.py", "tinyfaces_serve_client_example")
    url = ["--url", "http://127.0.0.1:9"]  # nothing listens: no request may be needed
    assert client.main([str(tmp_path / "gone.jpg"), *url]) == 1
    assert capsys.readouterr().err == (f"serve_client: cannot read {tmp_path / 'gone.jpg'}: No "
                                       "such file or directory\n")
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "no" / "x.png"
    assert client.main([str(photo), "--anonymize", str(out), *url]) == 1
    assert capsys.readouterr().err == (f"serve_client: cannot write {out}: no folder "
                                       f"{tmp_path / 'no'}\n")


def test_anonymize_keeps_alpha_and_grey_levels_as_tf_anonymize_does():
    """/anonymize returned an RGBA PNG as RGB (its transparency gone) and a grey JPEG as RGB,
    where tf-anonymize keeps both."""
    import io

    from PIL import Image

    boxes = np.array([[10, 5, 30, 40, 0.75]], np.float32)
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)
    rgba[:, :20, 3] = 0
    png = io.BytesIO()
    Image.fromarray(rgba).save(png, format="PNG")
    answer = _answer(_Fixed(boxes), _request("POST", "/anonymize", png.getvalue()))
    assert answer.status_code == 200
    copy = Image.open(io.BytesIO(answer.body))
    assert copy.mode == "RGBA"
    np.testing.assert_array_equal(np.array(copy)[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(np.array(copy)[..., :3], apply_masks(rgba[..., :3], boxes,
                                                                       _tf_anonymize_style()))
    gray = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(gray).save(jpeg, format="JPEG")
    answer = _answer(_Fixed(boxes), _request("POST", "/anonymize", jpeg.getvalue()))
    assert answer.status_code == 200 and Image.open(io.BytesIO(answer.body)).mode == "L"
    answer = _answer(_Fixed(boxes), _request("POST", "/anonymize", png.getvalue(),
                                             b"format=jpeg"))  # JPEG holds no alpha
    assert Image.open(io.BytesIO(answer.body)).mode == "RGB"
