"""Scale-out on a real local Ray cluster (127.0.0.1, 2 CPUs), one cluster for the module:
the distributed batch job against the single-process run, a worker killed mid-job; tf-serve
on a cluster where Serve already runs (another team's, or another tf-serve's): it refuses
what would take that service over, and its exit leaves that service running; and the Ray
Serve app under a bounded load with bad requests mixed in, answering as tf-detect and
tf-anonymize. Skipped without Ray."""

from __future__ import annotations

import concurrent.futures
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the 'scale' extra (ray[data,serve]) is not installed")

from helpers_scaleout import (  # noqa: E402
    VideoTask, build_c_client, detect_video, fast_serve_polling, init_local_ray, png_header_only,
    process_or_die_once, video_done)
from tinyfaces_trt.cli.detect import detections_to_list, main as detect_main  # noqa: E402
from tinyfaces_trt.core.cli import ImageSize  # noqa: E402
from tinyfaces_trt.core.files import TEMP_PREFIX  # noqa: E402
from tinyfaces_trt.detectors import DetectorSpec  # noqa: E402
from tinyfaces_trt.parity.images import synthetic_image  # noqa: E402
from tinyfaces_trt.runtime.draw import blur_boxes  # noqa: E402
from tinyfaces_trt.runtime.imageio import decode_image, encode_image  # noqa: E402
from tinyfaces_trt.runtime.masks import ANONYMIZE_STYLE, MaskStyle, apply_masks  # noqa: E402
from tinyfaces_trt.cli.detect_ray import (  # noqa: E402
    DetectOptions, expected_outputs, main as ray_detect_main, outputs_exist, plan_tasks)
from tinyfaces_trt.scaleout.pool import WorkerSetupError, run_serial, run_tasks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="module")
def cluster():
    """A local 2-CPU cluster on 127.0.0.1 (:func:`helpers_scaleout.init_local_ray`)."""
    init_local_ray(ray)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def spec(export_dir):
    return DetectorSpec(model_dir=str(export_dir), threads=1)


def _photos(root: Path, count: int) -> Path:
    """Two event folders of small JPEG/PNG images, two sharing a name, and a corrupt file."""
    for i in range(count):
        folder = root / ("1--Event" if i % 2 else "2--Other")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"p{i}.jpg" if i % 3 else f"p{i}.png"
        Image.fromarray(synthetic_image(40 + 4 * (i % 3), 56, seed=i)).save(folder / name)
    Image.fromarray(synthetic_image(44, 56, seed=99)).save(root / "2--Other" / "p2.png")
    (root / "1--Event" / "broken.jpg").write_text("not an image")
    return root


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_distributed_detect_writes_what_the_single_process_run_writes(cluster, export_dir,
                                                                     tmp_path, capsys):
    photos = _photos(tmp_path / "images", 5)
    common = ["--model", str(export_dir), "--blur"]
    code = detect_main([str(photos), *common, "--out", str(tmp_path / "single")])
    single_out, single_err = capsys.readouterr()
    argv = [str(photos), *common, "--out", str(tmp_path / "dist"), "--ray", "--workers", "2"]
    assert ray_detect_main(argv) == code == 1  # the corrupt file, in both
    dist_out, dist_err = capsys.readouterr()
    assert "Traceback" not in dist_err
    assert "broken.jpg: not a recognised image file" in dist_err
    assert sorted(dist_out.splitlines()) == sorted(single_out.splitlines())
    assert len(dist_out.splitlines()) == 6
    single, dist = _tree(tmp_path / "single"), _tree(tmp_path / "dist")
    # --blur: the blurred copy and the sidecar; no copy with the faces visible (no --draw)
    assert len(single) == 6 * 2 and any(name.endswith("p2_2.json") for name in single)
    assert not any("_boxes" in name for name in single)
    assert dist == single  # same names, byte for byte (boxes, drawings, blurs, sidecars)

    # A rerun finds every output and dispatches nothing.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "dist").rglob("*") if p.is_file()}
    assert ray_detect_main([*argv, "--json"]) == 1
    out, err = capsys.readouterr()
    assert "0 image(s), 0 face(s), 6 skipped (outputs exist), 1 error(s)" in err
    document = json.loads(out)
    assert document["images"] == [] and len(document["errors"]) == 1
    assert len(document["skipped"]) == 6 and document["model"] is not None
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # WIDER result files (p2.png would clash with p2.jpg there: leave it out).
    (photos / "2--Other" / "p2.png").unlink()
    for name, run in (("single", detect_main), ("dist", ray_detect_main)):
        extra = ["--ray", "--workers", "2"] if run is ray_detect_main else []
        assert run([str(photos), "--model", str(export_dir), "--json",
                    "--wider-dir", str(tmp_path / f"wider_{name}"), *extra]) == 1
    capsys.readouterr()
    assert _tree(tmp_path / "wider_dist") == _tree(tmp_path / "wider_single")
    results = [name for name in _tree(tmp_path / "wider_dist") if not name.startswith(".")]
    assert len(results) == 5 and len(_tree(tmp_path / "wider_dist")) == 10  # + their records


def _video(path: Path, frames: int, seed: int) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(synthetic_image(48, 64, seed=seed + k), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_whole_videos_on_the_pool_match_the_serial_run(cluster, spec, tmp_path):
    pytest.importorskip("av")
    videos = [_video(tmp_path / f"clip{i}.mp4", 3, seed=10 * i) for i in range(2)]
    (tmp_path / "serial").mkdir()
    (tmp_path / "pool").mkdir()
    serial = run_serial([VideoTask(v, tmp_path / "serial" / f"{v.stem}.json") for v in videos],
                        spec, detect_video, is_done=video_done, progress=False)
    pooled = run_tasks([VideoTask(v, tmp_path / "pool" / f"{v.stem}.json") for v in videos],
                       spec, detect_video, is_done=video_done, workers=2, progress=False)
    assert [r.status for r in pooled] == ["done", "done"]
    assert [r.value for r in pooled] == [r.value for r in serial]
    assert all(len(r.value) == 3 for r in pooled)
    assert _tree(tmp_path / "pool") == _tree(tmp_path / "serial")


def test_more_workers_than_free_cpus_finish_the_job(cluster, spec, tmp_path):
    """Tasks were queued on every actor, also on those the cluster had no CPU for: they never
    ran and the job never ended (4 workers on 2 CPUs: 17 of 21 images, then silence)."""
    import threading

    videos = [_video(tmp_path / f"clip{i}.mp4", 2, seed=10 * i) for i in range(6)]
    (tmp_path / "pool").mkdir()
    outcome = []
    job = threading.Thread(target=lambda: outcome.append(run_tasks(
        [VideoTask(v, tmp_path / "pool" / f"{v.stem}.json") for v in videos], spec,
        detect_video, is_done=video_done, workers=4, progress=False)), daemon=True)
    job.start()
    job.join(180)
    assert not job.is_alive(), "the job waited for workers the cluster cannot place"
    (results,) = outcome
    assert [r.status for r in results] == ["done"] * 6
    assert len({r.worker for r in results}) <= 2  # only the placed workers ran


def test_a_worker_killed_mid_image_loses_and_duplicates_nothing(cluster, spec, tmp_path):
    photos = _photos(tmp_path / "images", 6)
    (photos / "1--Event" / "broken.jpg").unlink()
    (photos / "2--Other" / ".victim").write_text("p4.jpg")
    from tinyfaces_trt.cli.detect_plan import collect_images

    jobs, _ = collect_images([str(photos)])
    options = DetectOptions("onnxruntime", out_dir=tmp_path / "out")
    tasks, _ = plan_tasks(jobs, options)
    results = run_tasks(tasks, spec, process_or_die_once, options, is_done=outputs_exist,
                        workers=2, progress=False)
    dead_pid = (photos / "2--Other" / ".killed").read_text()
    assert [r.status for r in results] == ["done"] * len(tasks), [r.error for r in results]
    victim = next(r for r in results if r.task.job.path.name == "p4.jpg")
    assert not victim.worker.endswith(f":{dead_pid}")  # finished by a restarted worker
    expected = sorted(p.relative_to(options.out_dir).as_posix()
                      for t in tasks for p in expected_outputs(t, options))
    assert len(expected) == len(set(expected)) == 2 * len(tasks)
    written = sorted(p.relative_to(options.out_dir).as_posix()
                     for p in options.out_dir.rglob("*") if p.is_file())
    assert written == expected  # each output once; the killed attempt's temporary file is gone
    assert not any(TEMP_PREFIX in p.name for p in options.out_dir.rglob("*"))
    for path in options.out_dir.rglob("*.json"):
        record = json.loads(path.read_text())
        assert record["detections"] and record["width"] == 56
    for path in options.out_dir.rglob("*_boxes.*"):
        Image.open(path).load()  # complete, decodable images


def test_distributed_anonymize_writes_what_the_single_process_run_writes(cluster, export_dir,
                                                                        tmp_path, capsys):
    """tf-anonymize --ray on images and a short video: the same output files, the same masks
    and sidecars as the single-process run; a rerun skips every finished file."""
    pytest.importorskip("av")
    from tinyfaces_trt.anonymize.cli import main as anonymize_main

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_image(48, 64, seed=i)).save(inputs / f"photo{i}.png")
    _video(inputs / "clip.mp4", 4, seed=7)
    common = [str(inputs), "--model", str(export_dir), "--prob-thresh", "0.05", "--quiet"]
    assert anonymize_main([*common, "--out", str(tmp_path / "single")]) == 0
    argv = [*common, "--out", str(tmp_path / "dist"), "--ray", "--workers", "2"]
    assert anonymize_main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 done, 0 skipped, 0 failed" in err
    single, dist = _tree(tmp_path / "single"), _tree(tmp_path / "dist")
    assert sorted(single) == sorted(dist) == sorted(
        ["clip.mp4", "clip.mp4.json", "photo0.png", "photo0.png.json", "photo1.png",
         "photo1.png.json"])
    for name in ("photo0.png", "photo1.png"):
        assert dist[name] == single[name]  # the same masked pixels
    for name in ("photo0.png.json", "photo1.png.json", "clip.mp4.json"):
        a, b = json.loads(single[name]), json.loads(dist[name])
        assert a["frames"] == b["frames"]  # every frame's boxes, tracks, held/filled masks
    assert anonymize_main(argv) == 0  # a rerun finds every output
    assert "0 done, 3 skipped, 0 failed" in capsys.readouterr().err


def test_workers_that_cannot_build_the_detector_are_one_clear_error(cluster, tmp_path):
    with pytest.raises(WorkerSetupError, match="no worker could build the detector: .*missing"):
        run_tasks([1, 2, 3], DetectorSpec(model_dir=str(tmp_path / "missing")),
                  lambda detector, task, options: task, workers=2, progress=False)


# ---------------------------------------------------------------------------------------------
# Ray Serve
# ---------------------------------------------------------------------------------------------

MAX_REQUEST_BYTES = 256 * 1024
MAX_PIXELS = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ServeSlot:
    """Ray Serve on the module's cluster, started once (Serve has one HTTP config per
    cluster, :meth:`serve_port`): the module's tf-serve application on it
    (:meth:`start_server`, deployed once and kept for the tests that ask for it) or, for a
    test about a cluster where Serve already runs, that test's applications in its place
    (:meth:`remove_server` first)."""

    def __init__(self, export_dir: Path) -> None:
        self.export_dir = export_dir
        self.port: int | None = None  # where Serve listens, once started
        self.deployed = False  # the module's application

    def serve_port(self) -> int:
        from ray import serve

        if self.port is not None and not serve.status().proxies:
            # Serve went down in an earlier test (that test fails for it): start it again
            # rather than hand the next ones a dead port
            self.port, self.deployed = None, False
        if self.port is None:
            port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port},
                        logging_config={"log_level": "WARNING"})
            self.port = port
        return self.port

    def start_server(self) -> int:
        port = self.serve_port()
        if not self.deployed:
            from ray import serve

            from tinyfaces_trt.scaleout.serve import APP_NAME, ServeOptions, build_app

            options = ServeOptions(DetectorSpec(model_dir=str(self.export_dir)), replicas=2,
                                   max_batch_size=4, batch_wait_ms=5,
                                   max_request_bytes=MAX_REQUEST_BYTES, max_pixels=MAX_PIXELS,
                                   warmup=(ImageSize(width=32, height=24),))
            try:
                serve.run(build_app(options), name=APP_NAME, route_prefix="/",
                          logging_config={"log_level": "WARNING"})
            except BaseException:
                self.stop()
                raise
            self.deployed = True
        return port

    def remove_server(self) -> None:
        """Deletes the module's application where it runs; Serve stays up."""
        if self.deployed:
            from ray import serve

            from tinyfaces_trt.scaleout.serve import APP_NAME

            self.deployed = False
            serve.delete(APP_NAME)

    def stop(self) -> None:
        if self.port is not None:
            from ray import serve

            self.port, self.deployed = None, False
            serve.shutdown()


@pytest.fixture(scope="module")
def serve_slot(cluster, export_dir):
    """The module's Serve (:class:`_ServeSlot`). Serve ends with the cluster (the ``cluster``
    fixture's ``ray.shutdown`` right after this one's end stops every process of that local
    cluster): ``serve.shutdown`` first would wait out the module application's replicas'
    2 s drain for nothing."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        fast_serve_polling(monkeypatch)
        yield _ServeSlot(export_dir)


@pytest.fixture
def server(serve_slot):
    """The port of the module's tf-serve application (2 replicas, batches of up to 4, warmed
    up for 32x24) on the local cluster."""
    return serve_slot.start_server()


def _request(port: int, method: str, path: str, body: bytes = b"",
             content_type: str | None = "image/png") -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reference_detector(export_dir):
    detector = DetectorSpec(model_dir=str(export_dir)).create()
    yield detector
    detector.close()


# --- tf-serve on a cluster where Serve already runs ---------------------------------------
# (before the tests of the module's application: each of these stops it, for Serve of its own)

#: Longest a tf-serve in these tests may run before a safety SIGTERM stops it.
LIMIT_S = 180


@pytest.fixture
def other_service(serve_slot):
    """Serve on port A with a tiny application (the other team's), deleted afterwards. The
    module's application, where it runs, goes first (Serve, with its one HTTP config per
    cluster, stays up for the module)."""
    from ray import serve

    serve_slot.remove_server()

    # (its replica stops at once when deleted, not after Serve's default 2 s drain)
    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0},
                      graceful_shutdown_wait_loop_s=0.05)
    def other(request) -> str:
        return "other"

    port = serve_slot.serve_port()
    deployed = []

    def deploy(name: str, route: str) -> None:
        serve.run(other.bind(), name=name, route_prefix=route,
                  logging_config={"log_level": "WARNING"})
        deployed.append(name)

    yield port, deploy
    for name in deployed:
        serve.delete(name)
    left = sorted(serve.status().applications)  # e.g. a tf-serve's that outlived its exit
    for name in left:
        serve.delete(name)
    assert not left, f"applications left on Serve after the test: {left}"


def _tf_serve(cluster, argv: list[str], *, once_serving=None) -> int:
    """cli_serve.main on the test cluster; ``once_serving()`` runs in a thread once our
    application answers /healthz on the ``--port`` of ``argv``, then SIGTERM stops it (also
    after LIMIT_S, whatever happens). The thread asks HTTP, not serve.status(): Serve builds
    a DeploymentConfig for each status, and two threads building one at once race in Ray's
    cloudpickle registry ("... is not registered for pickle by value", seen once in CI while
    tf-serve declared its deployment)."""
    from tinyfaces_trt.scaleout import cli_serve

    address = cluster.get_runtime_context().gcs_address  # joined, as a second tf-serve does
    port = int(argv[argv.index("--port") + 1])
    stopped = threading.Event()

    def serving() -> bool:
        try:
            return _answers(port, "/healthz")[0] == 200
        except OSError:  # nothing listens yet
            return False

    def watch() -> None:
        deadline = time.monotonic() + LIMIT_S
        while once_serving and time.monotonic() < deadline and not stopped.is_set():
            if serving():
                once_serving()
                break
            time.sleep(0.05)
        stopped.wait(max(0.0, deadline - time.monotonic()) if not once_serving else 0)
        if not stopped.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return cli_serve.main([*argv, "--address", address])
    finally:
        stopped.set()
        watcher.join(10)


def _answers(port: int, path: str) -> tuple[int, bytes]:
    status, body, _ = _request(port, "GET", path, content_type=None)
    return status, body


def test_a_second_tf_serve_refuses_to_replace_the_first(cluster, other_service, export_dir,
                                                       capsys):
    """The reviewer's case: a second tf-serve (another port) replaced the first one's
    application "tinyfaces" at "/", said it served on a port where nothing listened, and its
    SIGTERM took the first service down."""
    from tinyfaces_trt.scaleout.serve import APP_NAME

    port, deploy = other_service
    deploy(APP_NAME, "/")  # the first tf-serve
    second = _free_port()
    assert _tf_serve(cluster, ["--model", str(export_dir), "--port", str(second)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"tf-serve: error: Ray Serve on this cluster already serves '{APP_NAME}' at / on "
        f"http://127.0.0.1:{port}: stop that service first, or run tf-serve on another Ray "
        "cluster (--address)")
    assert "serving on" not in err
    assert _answers(port, "/") == (200, b"other")  # untouched, still served


def test_tf_serve_beside_another_application_leaves_it_running(cluster, other_service,
                                                              export_dir, capsys):
    """Serve on the asked port with another application at another route: tf-serve serves
    beside it, and its exit deletes only its own application (not serve.shutdown())."""
    from ray import serve

    port, deploy = other_service
    deploy("shop", "/shop")
    seen = []
    status = _tf_serve(cluster, ["--model", str(export_dir), "--port", str(port)],
                       once_serving=lambda: seen.append((_answers(port, "/healthz")[0],
                                                         _answers(port, "/shop"))))
    capsys.readouterr()
    # (its "serving on" line may come after the SIGTERM the watcher sends once it answered)
    assert status == 0 and seen == [(200, (200, b"other"))]
    assert set(serve.status().applications) == {"shop"}
    assert _answers(port, "/shop") == (200, b"other")


# --- the module's tf-serve application --------------------------------------------------------

def test_serve_answers_a_bounded_load_with_exact_boxes(server, reference_detector):
    images = [synthetic_image(24, 32, seed=s) for s in range(4)] + [synthetic_image(20, 36, seed=9)]
    bodies = [_png(im) for im in images]
    expected = [detections_to_list(reference_detector.detect(im)) for im in images]

    def one(k: int) -> tuple[int, float, int, bytes]:
        start = time.perf_counter()
        status, body, _ = _request(server, "POST", "/detect", bodies[k % len(bodies)])
        return k, time.perf_counter() - start, status, body

    total, parallel = 200, 8
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        answers = list(pool.map(one, range(total), timeout=240))
    wall = time.perf_counter() - start
    assert [status for _, _, status, _ in answers] == [200] * total
    for k, _, _, body in answers:
        assert json.loads(body)["detections"] == expected[k % len(images)]
    latencies = sorted(seconds for _, seconds, _, _ in answers)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * (total - 1))]
    print(f"\nserve load: {total} requests, {parallel} concurrent, {total / wall:.1f} req/s, "
          f"p50 {1000 * p50:.0f} ms, p99 {1000 * p99:.0f} ms")


@pytest.mark.parametrize("method,path,body,content_type,status,message", [
    ("POST", "/detect", b"\x89PNG\r\n\x1a\n garbage", "image/png", 400, "truncated or corrupt"),
    ("POST", "/detect", b"not an image at all", "image/jpeg", 400, "not a recognised image"),
    ("POST", "/detect", b"", "image/png", 400, "empty"),
    ("POST", "/detect", b"\0" * (MAX_REQUEST_BYTES + 1), "image/png", 413, "too large"),
    ("POST", "/detect", png_header_only(20000, 20000), "image/png", 413, "decompression bomb"),
    ("POST", "/detect", b'{"image": "x"}', "application/json", 415, "must be an encoded image"),
    ("GET", "/detect", b"", None, 405, "takes POST"),
    ("POST", "/nowhere", b"x", "image/png", 404, "no such endpoint"),
    ("POST", "/anonymize?mode=smudge", b"x", "image/png", 400, "mode must be one of"),
])
def test_bad_requests_get_a_json_4xx_and_the_server_goes_on(server, method, path, body,
                                                            content_type, status, message):
    got, answer, headers = _request(server, method, path, body, content_type)
    assert got == status, answer
    assert headers["content-type"] == "application/json"
    assert headers.get("allow") == ("POST" if status == 405 else None)
    error = json.loads(answer)["error"]
    assert error["status"] == status and message in error["message"]
    good, answer, _ = _request(server, "POST", "/detect", _png(synthetic_image(24, 32, seed=1)))
    assert good == 200 and json.loads(answer)["width"] == 32


def test_anonymize_and_healthz(server, export_dir):
    image = synthetic_image(24, 32, seed=3)
    # tf-anonymize's masks: the unclipped boxes (a face cut by the border is enlarged about its
    # true centre), 1.3x, blurred
    with DetectorSpec(model_dir=str(export_dir),
                      config_overrides=(("clip_boxes", False),)).create() as detector:
        boxes = detector.detect(image)
    status, body, headers = _request(server, "POST", "/anonymize", _png(image))
    assert status == 200 and headers["content-type"] == "image/png"
    assert headers["x-faces"] == str(len(boxes)) and len(boxes) > 0
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))),
                          apply_masks(image, boxes, ANONYMIZE_STYLE))
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(body))), blur_boxes(image, boxes))
    status, body, _ = _request(server, "GET", "/healthz", content_type=None)
    assert status == 200
    assert json.loads(body) == {"status": "ok", "backend": "onnxruntime", "warmed_up": ["32x24"],
                                "warmup_batch_sizes": [1],  # a CPU replica: single images
                                "variant": "pytorch", "coordinate_base": 0}


def _tf_anonymize_style() -> MaskStyle:
    """The mask tf-anonymize itself builds by default (its own parser and ``options_from``)."""
    from tinyfaces_trt.anonymize.cli import build_parser, options_from

    return options_from(build_parser().parse_args(["in.jpg", "--out", "out"])).style


def test_the_served_app_answers_as_tf_detect_and_tf_anonymize(server, reference_detector,
                                                               export_dir):
    """End to end: /detect as the detector clips, with its convention; /anonymize as
    tf-anonymize masks (its unclipped boxes, enlarged 1.3x); /healthz with the convention;
    unknown or bad query parameters are a JSON 400."""
    image = synthetic_image(24, 32, seed=3)
    with DetectorSpec(model_dir=str(export_dir),
                      config_overrides=(("clip_boxes", False),)).create() as whole:
        boxes, unclipped = reference_detector.detect(image), whole.detect(image)
    assert len(boxes) > 0 and not np.array_equal(boxes, unclipped)  # some reach past a border
    status, body, _ = _request(server, "POST", "/detect", encode_image(image))
    assert status == 200 and json.loads(body) == {
        "width": 32, "height": 24, "variant": "pytorch", "coordinate_base": 0,
        "detections": detections_to_list(boxes)}
    status, body, headers = _request(server, "POST", "/anonymize?format=png",
                                     encode_image(image))
    assert status == 200 and headers["x-faces"] == str(len(boxes))
    assert np.array_equal(decode_image(body), apply_masks(image, unclipped, _tf_anonymize_style()))
    status, body, _ = _request(server, "GET", "/healthz", content_type=None)
    assert json.loads(body) == {"status": "ok", "backend": "onnxruntime", "variant": "pytorch",
                                "coordinate_base": 0, "warmed_up": ["32x24"],
                                "warmup_batch_sizes": [1]}
    status, body, headers = _request(server, "POST", "/anonymize?mask_scale=-1",
                                     encode_image(image))
    assert status == 400 and headers["content-type"] == "application/json"
    status, body, headers = _request(server, "POST", "/detect?prob_thresh=0.8",
                                     encode_image(image))
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["message"].startswith(
        "unknown query parameter(s) 'prob_thresh'; /detect takes no query parameters; ")


def test_python_client_example(server, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(synthetic_image(24, 32, seed=2)).save(photo)
    url = f"http://127.0.0.1:{server}"
    run = subprocess.run([sys.executable, str(EXAMPLES / "serve_client.py"), str(photo),
                          "--url", url], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["height"] == 24
    run = subprocess.run([sys.executable, str(EXAMPLES / "serve_client.py"), str(photo), "--url",
                          url, "--anonymize", str(tmp_path / "anon.png"), "--mode", "pixelate"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "face(s) hidden" in run.stdout, run.stderr
    assert Image.open(tmp_path / "anon.png").size == (32, 24)
    (tmp_path / "bad.png").write_bytes(b"nope")
    run = subprocess.run([sys.executable, str(EXAMPLES / "serve_client.py"),
                          str(tmp_path / "bad.png"), "--url", url],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "HTTP 400" in run.stderr


def test_c_client_example(server, tmp_path):
    binary = build_c_client(tmp_path)
    photo = tmp_path / "photo.png"
    Image.fromarray(synthetic_image(24, 32, seed=2)).save(photo)
    run = subprocess.run([str(binary), str(photo), f"http://127.0.0.1:{server}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["width"] == 32
    (tmp_path / "bad.png").write_bytes(b"nope")
    run = subprocess.run([str(binary), str(tmp_path / "bad.png"), f"http://127.0.0.1:{server}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "HTTP 400" in run.stderr

