"""Scale-out pieces that need no cluster: pool sizing, the serial runner's contract, the
tf-detect task plan, the HTTP rules of the service, and the CLIs' arguments."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from helpers_run import load_script
from helpers_scaleout import png_header_only
from tinyfaces_trt.cli.detect_plan import ImageJob, plan_outputs, write_outputs
from tinyfaces_trt.core.errors import ImageError, ImageTooLargeError, TinyFacesError
from tinyfaces_trt.detectors import DetectorSpec
from tinyfaces_trt.parity.images import synthetic_image
from tinyfaces_trt.runtime.imageio import decode_image, encode_image
from tinyfaces_trt.scaleout import cli_serve
from tinyfaces_trt.scaleout.cluster import PoolPlan, Resources, plan_pool, spec_uses_gpu
from tinyfaces_trt.cli.detect_ray import DetectOptions, expected_outputs, plan_tasks
from tinyfaces_trt.scaleout.pool import WorkerSetupError, run_serial
from tinyfaces_trt.scaleout.serve import DRAIN_POLL_S
from tinyfaces_trt.scaleout.service import (
    Limits, RequestError, check_headers, check_route, decode_body, detect_images,
    parse_anonymise_query)


@pytest.mark.parametrize("resources,spec,workers,num_gpus,plan", [
    (Resources(8, 0), DetectorSpec(), None, None, PoolPlan(8, 1, 0)),
    (Resources(8, 0), DetectorSpec(), 2, None, PoolPlan(2, 4, 0)),
    (Resources(8, 2), DetectorSpec(), None, None, PoolPlan(8, 1, 0)),  # CPU backend: CPU actors
    (Resources(8, 2), DetectorSpec(backend="tensorrt"), None, None, PoolPlan(2, 1, 1)),
    (Resources(8, 2), DetectorSpec(providers=("cuda",)), 1, None, PoolPlan(1, 1, 1)),
    (Resources(8, 0), DetectorSpec(backend="tensorrt"), None, None, PoolPlan(8, 1, 0)),
])
def test_pool_plan(resources, spec, workers, num_gpus, plan):
    assert plan_pool(resources, spec, workers, num_gpus) == plan


def test_pool_plan_refuses_gpu_workers_without_gpus():
    with pytest.raises(TinyFacesError, match="no GPU"):
        plan_pool(Resources(4, 0), DetectorSpec(), None, 1)
    assert spec_uses_gpu(DetectorSpec(providers="auto"))
    assert not spec_uses_gpu(DetectorSpec(providers=("cpu",)))


def _fails_on_three(detector, task, options):
    if task == 3:
        raise ImageError(f"image {task} is corrupt")
    if task == 4:
        raise ZeroDivisionError("a bug")
    return task * options


def test_serial_runner_collects_failures_and_skips_finished(export_dir):
    seen = []
    results = run_serial(range(6), DetectorSpec(model_dir=str(export_dir)), _fails_on_three, 10,
                         is_done=lambda task, options: task == 0, progress=False,
                         on_result=seen.append)
    assert [r.status for r in results] == ["skipped", "done", "done", "failed", "failed", "done"]
    assert [r.value for r in results] == [None, 10, 20, None, None, 50]
    assert results[3].error == "image 3 is corrupt"
    assert results[4].error == "ZeroDivisionError: a bug"
    assert [r.index for r in seen] == [1, 2, 3, 4, 5]


def test_serial_runner_setup_error(tmp_path):
    with pytest.raises(WorkerSetupError, match="missing.* does not exist"):
        run_serial([1], DetectorSpec(model_dir=str(tmp_path / "missing")), _fails_on_three,
                   progress=False)


def test_task_plan_fixes_names_in_input_order_and_refuses_wider_clashes(tmp_path):
    jobs = [ImageJob(Path(f"/in/ev/{name}"), Path(f"ev/{name}"), "ev")
            for name in ("a.jpg", "a.png", "b.png")]
    options = DetectOptions("onnxruntime", tmp_path / "out", tmp_path / "wider", "pixelate")
    tasks, refused = plan_tasks(jobs, options)
    assert [t.job.path.name for t in tasks] == ["a.jpg", "b.png"]
    assert [j.path.name for j, _ in refused] == ["a.png"] and "rename one" in refused[0][1]
    tasks, refused = plan_tasks(jobs, DetectOptions("onnxruntime", tmp_path / "out"))
    assert [t.stem.as_posix() for t in tasks] == ["ev/a", "ev/a_2", "ev/b"] and not refused


@pytest.mark.parametrize("anonymise", [None, "blur", "pixelate"])
@pytest.mark.parametrize("name", ["a.jpg", "a.PNG"])
def test_expected_outputs_are_what_write_outputs_writes(tmp_path, anonymise, name):
    job = ImageJob(tmp_path / name, Path("ev") / name, "ev")
    options = DetectOptions("onnxruntime", tmp_path / "out", None, anonymise)
    task = plan_tasks([job], options)[0][0]
    image = synthetic_image(16, 16)
    plan = plan_outputs(options.out_dir, task.stem, job, anonymise, draw=anonymise is None)
    written = write_outputs(plan, image, np.zeros((0, 5)), {}, anonymise)
    assert sorted(expected_outputs(task, options)) == sorted(written)
    assert all(p.is_file() for p in written)


def test_decode_and_encode_image_bytes():
    image = synthetic_image(12, 20, seed=4)
    assert np.array_equal(decode_image(encode_image(image, "PNG")), image)
    assert decode_image(encode_image(image, "JPEG")).shape == (12, 20, 3)
    with pytest.raises(ImageTooLargeError, match="upload: .*10000x10000 = 100000000 pixels.*bomb"):
        decode_image(png_header_only(10000, 10000), max_pixels=10**6, name="upload")
    with pytest.raises(ImageTooLargeError, match="upload: .*decompression bomb"):  # Pillow's own
        decode_image(png_header_only(20000, 20000), name="upload")
    with pytest.raises(ImageError, match="upload: not a recognised image"):
        decode_image(b"hello", name="upload")
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("path,method,status", [
    ("/detect", "GET", 405), ("/nope", "POST", 404), ("/healthz", "POST", 405)])
def test_routes(path, method, status):
    with pytest.raises(RequestError) as info:
        check_route(path, method)
    assert info.value.status == status
    # RFC 9110: a 405 names the methods the resource takes
    assert info.value.headers == ({"Allow": "GET" if path == "/healthz" else "POST"}
                                  if status == 405 else {})
    assert check_route("/detect/", "post") == "/detect"


@pytest.mark.parametrize("headers,status", [
    ({"content-type": "application/json"}, 415), ({"content-type": "text/plain"}, 415),
    ({"content-length": "2000"}, 413), ({"content-length": "ten"}, 400)])
def test_headers_are_checked_before_reading_the_body(headers, status):
    with pytest.raises(RequestError) as info:
        check_headers(headers, Limits(max_request_bytes=1000))
    assert info.value.status == status
    for fine in ({}, {"content-type": "image/jpeg"}, {"content-type": "application/octet-stream"},
                 {"content-length": "1000"}):
        check_headers(fine, Limits(max_request_bytes=1000))


def test_a_form_upload_is_told_to_send_the_bytes():
    """The 415 hint said to add a Content-Type header, which with curl -F gave a 400."""
    with pytest.raises(RequestError) as info:
        check_headers({"content-type": "multipart/form-data; boundary=x"}, Limits())
    assert (info.value.status, str(info.value)) == (415, (
        "the body must be the image file's bytes, not a form upload (curl: --data-binary "
        "@photo.jpg -H 'Content-Type: image/jpeg' instead of -F)"))


class _Upload:
    """A request whose body comes in the given chunks; None stalls, an exception is raised."""

    def __init__(self, *chunks):
        self.chunks = chunks

    async def stream(self):
        import asyncio

        for chunk in self.chunks:
            if chunk is None:  # longer than the test's timeout; then the body would end
                await asyncio.sleep(3)
                continue
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk


def test_a_body_is_read_whole_within_its_time_and_limit():
    """16 uploads that stalled after their headers held every request slot of a replica
    (/healthz included) for as long as their clients liked; a client that hung up left a
    traceback in the server's log."""
    import asyncio

    from starlette.requests import ClientDisconnect

    from tinyfaces_trt.scaleout.serve import _read_body

    def read(request, limits=Limits(max_request_bytes=10), timeout_s=0.2):
        return asyncio.run(_read_body(request, limits, timeout_s))

    assert read(_Upload(b"abc", b"def")) == b"abcdef"
    outcomes = []
    for request in (_Upload(b"abc", None), _Upload(b"abcdef", b"ghijk"),
                    _Upload(b"ab", ClientDisconnect())):
        with pytest.raises(RequestError) as info:
            read(request)
        outcomes.append((info.value.status, str(info.value)))
    assert outcomes[0] == (408, "the request body did not arrive within 0.2 s (3 bytes came); "
                                "send it whole")
    assert outcomes[1][0] == 413
    assert outcomes[2] == (400, "the client closed the connection before the body was complete")


@pytest.mark.parametrize("failure", [TimeoutError("timed out"), ConnectionResetError(104, "reset")])
def test_the_python_client_reports_a_read_timeout_without_a_traceback(failure, monkeypatch,
                                                                       capsys, tmp_path):
    """A 3000x3000 photo on a CPU replica outlasted its 60 s: TimeoutError traceback (and
    the wait is now minutes by default, --timeout to change)."""
    client = load_script("examples/serve_client.py", "serve_client_example")

    waits = []

    def fail(url, data, content_type, timeout):
        waits.append(timeout)
        raise failure

    monkeypatch.setattr(client, "post_image", fail)
    (tmp_path / "p.jpg").write_bytes(b"jpeg")
    assert client.main([str(tmp_path / "p.jpg"), "--url", "http://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == f"serve_client: http://127.0.0.1:9: {failure}\n"
    assert client.main([str(tmp_path / "p.jpg"), "--url", "http://127.0.0.1:9/", "--timeout",
                        "0"]) == 1
    assert capsys.readouterr().err == f"serve_client: http://127.0.0.1:9: {failure}\n"
    assert waits == [600.0, None]  # minutes by default (60 s cut large photos short); 0: none
    with pytest.raises(SystemExit) as refused:
        client.main([str(tmp_path / "p.jpg"), "--timeout", "-1"])
    assert refused.value.code == 2 and "--timeout must be >= 0, got -1.0" in capsys.readouterr().err


def test_decode_body_statuses():
    limits = Limits(max_request_bytes=10_000, max_pixels=400)
    for body, status in ((b"x" * 10_001, 413), (png_header_only(30, 30), 413), (b"junk", 400),
                         (b"", 400)):
        with pytest.raises(RequestError) as info:
            decode_body(body, limits)
        assert info.value.status == status
    assert decode_body(encode_image(synthetic_image(10, 20)), limits).shape == (10, 20, 3)


def test_anonymise_query():
    jpeg = b"\xff\xd8\xff\xe0"
    assert parse_anonymise_query({}, jpeg).format == "JPEG"
    assert parse_anonymise_query({}, b"\x89PNG").media_type == "image/png"
    wanted = parse_anonymise_query({"mode": "pixelate", "format": "png"}, jpeg)
    assert (wanted.mode, wanted.format) == ("pixelate", "PNG")
    for query in ({"mode": "smudge"}, {"format": "gif"}):
        with pytest.raises(RequestError) as info:
            parse_anonymise_query(query, jpeg)
        assert info.value.status == 400


class _Recorder:
    def __init__(self):
        self.calls = []

    def detect_batch(self, images):
        self.calls.append([im.shape for im in images])
        return [np.full((1, 5), im.shape[0], np.float32) for im in images]


def test_detect_images_batches_same_sizes_and_keeps_order():
    recorder = _Recorder()
    images = [np.zeros((h, 8, 3), np.uint8) for h in (4, 6, 4, 6, 5)]
    boxes = detect_images(recorder, images)
    assert [int(b[0, 0]) for b in boxes] == [4, 6, 4, 6, 5]
    assert sorted(len(c) for c in recorder.calls) == [1, 2, 2]


def test_ray_options_on_the_detect_parser(capsys):
    from tinyfaces_trt.cli.detect import build_parser, main

    parser = build_parser()
    assert parser.parse_args(["x.jpg", "--ray"]).ray == ""
    assert parser.parse_args(["x.jpg", "--ray", "ray://head:10001"]).ray == "ray://head:10001"
    assert parser.parse_args(["x.jpg"]).ray is None
    with pytest.raises(SystemExit) as info:
        main(["x.jpg", "--workers", "2"])
    assert info.value.code == 2 and "needs --ray" in capsys.readouterr().err
    assert "--ray [ADDRESS]" in parser.format_help()


@pytest.mark.parametrize("argv,message", [
    (["--min-replicas", "1"], "needs both"),
    (["--min-replicas", "3", "--max-replicas", "2"], "larger than"),
    (["--replicas", "2", "--min-replicas", "1", "--max-replicas", "2"], "exclude each other"),
    (["--backend", "torch", "--model", "x"], "checkpoint"),
    (["--port", "0"], "--port"),
    (["--port", "65536"], "argument --port: 65536 must be 1 to 65535"),
    (["--batch-wait-ms", "100000"], "argument --batch-wait-ms: 100000.0 must be > 0 and at most 1000"),
    # the service's own ceiling (the decoder takes any --max-pixels since Pillow's bomb check defers to it)
    (["--max-pixels", "178956971"], "argument --max-pixels: 178956971 must be 1 to 178956970 (the "
     "service's ceiling: one such image is 0.5 GB decoded, per request in flight)"),
    (["--max-queued", "0"], "argument --max-queued: 0 must be >= 1"),
    (["--request-timeout", "0"], "argument --request-timeout: 0.0 must be > 0 and finite"),
    # inf passed the parser, then a traceback (OverflowError) once a Ray cluster had started
    (["--max-request-mb", "inf"], "argument --max-request-mb: inf must be > 0 and finite"),
])
def test_serve_argument_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli_serve.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_serve_help_documents_endpoints_and_defaults():
    text = cli_serve.build_parser().format_help()
    for word in ("POST /detect", "POST /anonymize", "/healthz", "--max-batch-size",
                 "--max-pixels", "--min-replicas", "default: 127.0.0.1", "Content-Type"):
        assert word in text
    # every curl example sends a Content-Type (without one curl sends a form type: 415)
    curls = [line for line in text.splitlines() if line.strip().startswith("curl ")]
    assert len(curls) == 2 and all("-H 'Content-Type: image/jpeg'" in c for c in curls)


def test_serve_options_from_arguments(export_dir):
    args = cli_serve.build_parser().parse_args(
        ["--model", str(export_dir), "--min-replicas", "0", "--max-replicas", "3",
         "--max-request-mb", "2", "--max-batch-size", "4", "--prob-thresh", "0.7"])
    options = cli_serve.serve_options(args, gpus_in_cluster=0)
    assert options.max_request_bytes == 2 * 2 ** 20 and options.num_gpus == 0
    assert options.warmup == ()
    assert dict(options.spec.config_overrides) == {"score": "prob", "prob_thresh": 0.7}
    deployment = options.deployment_options()
    assert deployment["autoscaling_config"]["min_replicas"] == 0
    assert deployment["autoscaling_config"]["max_replicas"] == 3
    assert "num_replicas" not in deployment and deployment["max_ongoing_requests"] >= 8
    assert deployment["max_queued_requests"] == 64  # bounded by default
    # a stop polls for requests in flight every 0.5 s, not 2 s; how long it waits for them
    # stays Serve's own graceful_shutdown_timeout_s
    assert deployment["graceful_shutdown_wait_loop_s"] == DRAIN_POLL_S == 0.5
    assert "graceful_shutdown_timeout_s" not in deployment
    assert cli_serve.http_options(args) == {"host": "127.0.0.1", "port": 8000}


def test_serve_queue_bound_and_request_timeout(export_dir):
    args = cli_serve.build_parser().parse_args(
        ["--model", str(export_dir), "--max-queued", "5", "--request-timeout", "90",
         "--max-pixels", "178956970", "--port", "8080"])
    options = cli_serve.serve_options(args, gpus_in_cluster=0)
    assert options.deployment_options()["max_queued_requests"] == 5
    assert options.max_pixels == 178956970
    assert cli_serve.http_options(args) == {"host": "127.0.0.1", "port": 8080,
                                            "request_timeout_s": 90.0}


def test_serve_warmup_sizes(capsys, export_dir):
    parser = cli_serve.build_parser()
    args = parser.parse_args(["--model", str(export_dir), "--warmup", "1920x1080, 640x480,1920x1080"])
    options = cli_serve.serve_options(args, gpus_in_cluster=0)
    assert [(s.width, s.height) for s in options.warmup] == [(1920, 1080), (640, 480)]
    assert "--warmup WxH[,WxH...]" in parser.format_help()
    for argv, message in [
            (["--warmup", "1920"], "argument --warmup: image size must be WIDTHxHEIGHT with "
                                   "positive integers, e.g. 1920x1080; got '1920'"),
            (["--warmup", "640x480,2000x1000", "--max-pixels", "1000000"],
             "--warmup 2000x1000 has more pixels than --max-pixels (2000000 > 1000000): the "
             "service would refuse such an image")]:
        with pytest.raises(SystemExit) as info:
            cli_serve.main(["--model", str(export_dir), *argv])
        assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("backend, max_batch_size, num_gpus, batch_sizes", [
    ("torch-cuda", 8, 1, (1, 2, 4, 8)), ("torch-cuda", 6, 1, (1, 2, 4, 6)),
    ("torch-cuda", 1, 1, (1,)), ("torch-cuda", 2, 1, (1, 2)),
    ("torch-cuda", 16, 1, (1, 2, 4, 8, 16)),
    ("onnxruntime-cuda", 4, 1, (1, 2, 3, 4)), ("tensorrt", 3, 1, (1, 2, 3)),
    ("onnxruntime", 8, 0, (1,)),
])
def test_replicas_warm_up_with_the_batch_sizes_their_backend_prepares(backend, max_batch_size,
                                                                      num_gpus, batch_sizes):
    """torch-cuda: any batch then pads into a warmed-up one with less than twice its work;
    ONNX Runtime CUDA searches each new shape's algorithms: every batch size; on the CPU
    nothing is prepared per shape, so only single images warm up."""
    from tinyfaces_trt.scaleout.serve import ServeOptions

    options = ServeOptions(DetectorSpec(backend=backend), max_batch_size=max_batch_size,
                           num_gpus=num_gpus)
    assert options.warmup_batch_sizes == batch_sizes


@pytest.mark.parametrize("during", ["start", "run"])
def test_sigterm_while_the_service_starts_stops_it(monkeypatch, capsys, export_dir, during):
    """A replica may take minutes to warm up (torch-cuda compiling) inside serve.run: SIGTERM
    then (systemd, Kubernetes) stops tf-serve at once, as Ctrl-C does, instead of after the
    warmup; and also while serve.start brings up the controller and proxies, Serve is shut
    down (on a cluster that outlives tf-serve they would keep the port)."""
    import contextlib
    import os
    import time
    from types import SimpleNamespace

    serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the scale extra)")

    from tinyfaces_trt.scaleout import cluster
    from tinyfaces_trt.scaleout import serve as serve_module

    calls = []

    def step(name):
        def call(*args, **kwargs):
            calls.append(name)
            if name == during:
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 5  # the interrupt lands in this wait
                while time.monotonic() < deadline:
                    time.sleep(0.01)
                calls.append(f"{name} done")
        return call

    monkeypatch.setattr(cluster, "connect", lambda address: contextlib.nullcontext())
    monkeypatch.setattr(cluster, "cluster_resources", lambda: SimpleNamespace(gpus=0))
    monkeypatch.setattr(serve_module, "build_app", lambda options: "app")
    monkeypatch.setattr(cli_serve, "check_port_free", lambda host, port: None)
    monkeypatch.setattr(serve_module, "running_serve", lambda: None)
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications={}))
    for name in ("start", "run", "shutdown"):
        monkeypatch.setattr(serve, name, step(name))
    guard = []  # where the CLI failed to take SIGTERM over, this pytest process lives on

    def guarding(signum, frame):
        guard.append(signum)

    handler = signal.signal(signal.SIGTERM, guarding)
    try:
        status = cli_serve.main(["--model", str(export_dir), "--warmup", "64x48"])
        err = capsys.readouterr().err
        assert signal.getsignal(signal.SIGTERM) is guarding  # the CLI put it back
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert status == 0 and guard == []
    assert calls == {"start": ["start", "shutdown"], "run": ["start", "run", "shutdown"]}[during]
    assert "tf-serve: stopped" in err and "serving on" not in err
    if during == "run":
        assert "tf-serve: each replica gets ready for 64x48 (batches of up to 1) before serving" in err


def _serve_args(*argv: str):
    return cli_serve.build_parser().parse_args(["--model", "m", *argv])


@pytest.mark.parametrize("routes, argv, message", [
    ({"tinyfaces": "/"}, ["--port", "8012"],
     "Ray Serve on this cluster already serves 'tinyfaces' at / on http://127.0.0.1:8011: "
     "stop that service first, or run tf-serve on another Ray cluster (--address)"),
    ({"shop": "/", "tinyfaces": "/faces", "x": "/x"}, ["--port", "8011"],
     "Ray Serve on this cluster already serves 'shop' at /, 'tinyfaces' at /faces on "
     "http://127.0.0.1:8011: stop that service first, or run tf-serve on another Ray cluster "
     "(--address)"),
    ({"shop": "/shop"}, ["--port", "8012"],
     "Ray Serve on this cluster already listens on http://127.0.0.1:8011, not on "
     "127.0.0.1:8012 (one HTTP address per cluster): give --host 127.0.0.1 --port 8011, or "
     "run tf-serve on another Ray cluster (--address)"),
    ({}, ["--port", "8011", "--host", "0.0.0.0"],
     "Ray Serve on this cluster already listens on http://127.0.0.1:8011, not on "
     "0.0.0.0:8011 (one HTTP address per cluster): give --host 127.0.0.1 --port 8011, or "
     "run tf-serve on another Ray cluster (--address)"),
    ({}, ["--port", "8011", "--request-timeout", "4"],
     "Ray Serve on this cluster already runs with request timeout none, not 4 s (one per "
     "cluster): give --request-timeout to match, or run tf-serve on another Ray cluster "
     "(--address)"),
])
def test_serve_refuses_to_take_over_a_running_serve(routes, argv, message):
    """A second tf-serve on a cluster replaced the first one's application (fixed name, route
    "/"), and claimed a port that Ray ignored (Serve has one HTTP config per cluster)."""
    from tinyfaces_trt.scaleout.serve import APP_NAME, RunningServe

    running = RunningServe(host="127.0.0.1", port=8011, request_timeout_s=None, routes=routes)
    with pytest.raises(TinyFacesError) as info:
        cli_serve.check_running_serve(running, _serve_args(*argv), APP_NAME)
    assert str(info.value) == message


def test_serve_joins_a_compatible_serve_or_none():
    from tinyfaces_trt.scaleout.serve import APP_NAME, RunningServe

    cli_serve.check_running_serve(None, _serve_args(), APP_NAME)
    running = RunningServe(host="0.0.0.0", port=9000, request_timeout_s=4.0,
                           routes={"shop": "/shop", "internal": None})
    cli_serve.check_running_serve(running, _serve_args("--host", "0.0.0.0", "--port", "9000",
                                                       "--request-timeout", "4"), APP_NAME)


@pytest.mark.parametrize("before, calls", [
    ({"tinyfaces": 1, "shop": 1}, ["delete tinyfaces"]),  # the other team's app stays
    ({"tinyfaces": 1}, ["delete tinyfaces", "shutdown"]),
    ({}, ["shutdown"]),  # stopped before it deployed: the Serve it started goes
    ({"shop": 1}, []),
])
def test_serve_stops_only_its_own_application(monkeypatch, before, calls):
    """serve.shutdown() deletes every application on the cluster: a second tf-serve's SIGTERM
    took the first one's service down."""
    from types import SimpleNamespace

    serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (the scale extra)")
    from tinyfaces_trt.scaleout.serve import stop_app

    apps, done = dict(before), []
    monkeypatch.setattr(serve, "status", lambda: SimpleNamespace(applications=dict(apps)))
    monkeypatch.setattr(serve, "delete", lambda name: (apps.pop(name), done.append(f"delete {name}")))
    monkeypatch.setattr(serve, "shutdown", lambda: done.append("shutdown"))
    stop_app("tinyfaces")
    assert done == calls


def test_serve_refuses_a_busy_port_and_an_unreadable_model_before_starting_ray(
        monkeypatch, capsys, export_dir, tmp_path):
    """Each was found only after Ray had started (seconds), and said in Ray's tracebacks."""
    import socket

    from tinyfaces_trt.scaleout import cluster

    def no_cluster(address):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(cluster, "connect", no_cluster)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert cli_serve.main(["--model", str(export_dir), "--port", str(port)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tf-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use (another "
        f"server there? give another --port)")
    with pytest.raises(TinyFacesError) as elsewhere:  # not this machine's address: no port hint
        cli_serve.check_port_free("192.0.2.1", port)
    assert str(elsewhere.value).startswith(f"cannot listen on 192.0.2.1:{port}: ") and \
        "--port" not in str(elsewhere.value)
    assert cli_serve.main(["--model", str(tmp_path / "nope")]) == 1
    assert "export folder" in capsys.readouterr().err
    import shutil

    cut = tmp_path / "cut"  # a truncated model failed every replica, the cause in Ray's logs
    shutil.copytree(export_dir, cut)
    with open(cut / "model.onnx", "r+b") as f:
        f.truncate(1000)
    assert cli_serve.main(["--model", str(cut)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("tf-serve: error: ") and "model.onnx is 1000 bytes but the manifest " \
        "records" in err
    assert cli_serve.main(["--weights", str(tmp_path / "w.pth")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"tf-serve: error: weights file not found: {tmp_path / 'w.pth'}")


def test_gpu_backends_get_gpu_workers():
    for backend in ("tensorrt", "onnxruntime-cuda", "torch-cuda"):
        assert spec_uses_gpu(DetectorSpec(backend=backend))
        plan = plan_pool(Resources(cpus=16, gpus=2), DetectorSpec(backend=backend))
        assert (plan.workers, plan.num_gpus) == (2, 1)
    assert not spec_uses_gpu(DetectorSpec(backend="onnxruntime"))


def test_a_retry_removes_only_its_own_temporaries(tmp_path):
    from tinyfaces_trt.core.files import TEMP_PREFIX, temporaries_of

    mine = tmp_path / f"{TEMP_PREFIX}123-abcd1234-photo.json"
    other = tmp_path / f"{TEMP_PREFIX}123-abcd1234-my-photo.json"
    for path in (mine, other, tmp_path / "photo.json"):
        path.write_text("{")
    assert temporaries_of(tmp_path / "photo.json") == [mine]


def test_connect_keeps_the_callers_sigterm_handler(monkeypatch):
    """ray.init makes SIGTERM sys.exit(15); inside a CLI run it stays an interrupt (exit 130,
    as without --ray)."""
    from tinyfaces_trt.core.cli import cli_interrupts, interrupt_on_sigterm
    from tinyfaces_trt.scaleout import cluster

    def ray_exit(signum, frame):
        raise SystemExit(signum)

    class FakeRay:
        initialized = False

        def is_initialized(self):
            return self.initialized

        def init(self, **kwargs):
            self.initialized = True
            signal.signal(signal.SIGTERM, ray_exit)  # what ray.init does in a driver

        def shutdown(self):
            self.initialized = False

    monkeypatch.setattr(cluster, "import_ray", FakeRay)
    with cli_interrupts(), cluster.connect("local"):
        assert signal.getsignal(signal.SIGTERM) is interrupt_on_sigterm
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with cluster.connect("local"):  # no Python handler before: Ray's stays (its cleanup)
            assert signal.getsignal(signal.SIGTERM) is ray_exit
    finally:
        signal.signal(signal.SIGTERM, before)


def test_what_ray_prints_on_the_driver_goes_to_stderr_while_connected(monkeypatch, capfd):
    """Ray printed "(raylet) A worker died ..." on stdout, before tf-detect --ray --json's
    document: json.load of the output failed. A failed connection names the address asked
    (RAY_ADDRESS; it said "auto") and Ray's token authentication."""
    pytest.importorskip("ray")
    from ray._private import worker as ray_worker
    from tinyfaces_trt.scaleout import cluster

    original = ray_worker.print_to_stdstream
    events = []

    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            events.append("init")
            if kwargs["address"] != "127.0.0.1:6379":
                raise ConnectionError("Failed to connect to GCS")
            ray_worker.print_to_stdstream({"lines": ["A worker died"], "pid": "raylet",
                                           "is_err": False}, ignore_prefix=False)

        def shutdown(self):
            events.append("shutdown")

    monkeypatch.setattr(cluster, "import_ray", FakeRay)
    monkeypatch.setattr(cluster, "_unreachable", lambda address: None)  # (nothing listens)
    with cluster.connect("127.0.0.1:6379"):
        assert ray_worker.print_to_stdstream is not original
    assert ray_worker.print_to_stdstream is original and events == ["init", "shutdown"]
    out, err = capfd.readouterr()
    assert out == "" and "A worker died" in err
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    with pytest.raises(TinyFacesError) as refused:
        with cluster.connect(None):
            pass
    assert str(refused.value).startswith("cannot connect to the Ray cluster at 10.0.0.5:6379: ")
    with pytest.raises(TinyFacesError) as refused:
        with cluster.connect("fail"):
            pass
    assert str(refused.value) == (
        "cannot connect to the Ray cluster at fail: Failed to connect to GCS (a cluster with "
        "Ray's token authentication needs the same token here: RAY_AUTH_MODE=token and the "
        "cluster's ~/.ray/auth_token or RAY_AUTH_TOKEN)")
    assert ray_worker.print_to_stdstream is original


def test_anonymize_places_one_based_boxes_on_their_pixels():
    """/anonymize of the matconvnet variant's 1-based boxes left the face's first row and
    column unmasked (the replica passes its config's coordinate base)."""
    from tinyfaces_trt.scaleout.service import anonymise

    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    request = parse_anonymise_query({"mode": "pixelate", "format": "png", "mask_scale": "1"}, b"")
    boxes = np.array([[1, 1, 20, 20, 0.9]], np.float32)
    for base, first in ((1.0, 0), (0.0, 1)):
        changed = (decode_image(anonymise(image, boxes, request, base)) != image).any(axis=2)
        assert changed[first, first:20].any() and not changed[:first, :].any()
        assert not changed[20 + first + 1:, :].any()


def test_connect_refuses_an_address_where_nothing_answers_before_ray_init(monkeypatch):
    """RAY_ADDRESS=127.0.0.1:1: ray.init retried for ever, printing warnings every 40 s."""
    import socket

    from tinyfaces_trt.scaleout import cluster

    class NoInit:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            raise AssertionError("ray.init was called")

    monkeypatch.setattr(cluster, "import_ray", NoInit)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(TinyFacesError) as refused:
            with cluster.connect(address):
                pass
        assert str(refused.value) == (
            f"cannot connect to the Ray cluster at {address}: nothing answers at "
            f"127.0.0.1:{port} (Connection refused); is the cluster up (ray status on its head "
            "node), and is this the head's address?")
    assert cluster._unreachable("auto") is None and cluster._unreachable("local") is None
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert cluster._unreachable(f"127.0.0.1:{server.getsockname()[1]}") is None


def test_a_sigterm_during_ray_init_is_the_callers_interrupt_and_stops_what_started(
        monkeypatch):
    """SIGTERM in tf-serve's first seconds, while ray.init ran with its own handler: exit 15,
    nothing said, and the half-started local cluster's agents left running."""
    from tinyfaces_trt.core.cli import cli_interrupts, interrupt_on_sigterm
    from tinyfaces_trt.scaleout import cluster

    events = []

    class DyingRay:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            events.append("init")
            raise SystemExit(15)  # Ray's handler, taking the SIGTERM

        def shutdown(self):
            events.append("shutdown")

    monkeypatch.setattr(cluster, "import_ray", DyingRay)
    with cli_interrupts():
        with pytest.raises(KeyboardInterrupt):
            with cluster.connect("local"):
                pass
        assert signal.getsignal(signal.SIGTERM) is interrupt_on_sigterm
    assert events == ["init", "shutdown"]
