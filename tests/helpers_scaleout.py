"""Per-file functions for the Ray pool tests (importable by the Ray workers: the test cluster
puts this folder on their PYTHONPATH)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tinyfaces_trt.cli.detect_ray import process_detect_task
from tinyfaces_trt.core.files import TEMP_PREFIX, write_text_atomic
from tinyfaces_trt.runtime.results import detections_to_list


@dataclass(frozen=True)
class VideoTask:
    """A whole video file and the JSON file its per-frame detections go to."""

    video: Path
    output: Path


def init_local_ray(ray) -> None:
    """``ray.init`` of a local 2-CPU cluster on 127.0.0.1 whose workers import this checkout
    and tests/ (the caller shuts it down).

    Its processes keep the usual priority: Ray starts workers at nice 15, and with the other
    test process busy on both cores Serve's HTTP proxy then failed its readiness checks (5 s
    each, 3 tries) and every served test errored (2 of 2 runs with both cores loaded)."""
    import logging

    root = Path(__file__).resolve().parent.parent
    env = {"PYTHONPATH": os.pathsep.join(
               p for p in (str(root), str(root / "tests"), os.environ.get("PYTHONPATH")) if p),
           "RAY_worker_niceness": "0"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False,
                 _node_ip_address="127.0.0.1", object_store_memory=100 * 2 ** 20,
                 logging_level=logging.WARNING)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


def detect_video(detector, task: VideoTask, options) -> list:
    """Detects every frame of a video (PyAV) and writes them as one JSON file."""
    import av

    frames = []
    with av.open(str(task.video)) as container:
        for frame in container.decode(video=0):
            frames.append(detections_to_list(detector.detect(frame.to_ndarray(format="rgb24"))))
    write_text_atomic(task.output, json.dumps({"video": task.video.name, "frames": frames}))
    return frames


def video_done(task: VideoTask, options) -> bool:
    return task.output.is_file()


def process_or_die_once(detector, task, options):
    """tf-detect's per-image work, except that the first attempt on the image named in the
    file ``.victim`` beside it leaves a half-written temporary file beside its outputs (as a
    write cut short does) and SIGKILLs its own worker process (the marker ``.killed``,
    holding the dead pid, makes it once)."""
    victim = task.job.path.with_name(".victim")
    marker = task.job.path.with_name(".killed")
    if victim.is_file() and victim.read_text() == task.job.path.name and not marker.exists():
        marker.write_text(str(os.getpid()))
        folder = options.out_dir / task.stem.parent
        folder.mkdir(parents=True, exist_ok=True)
        # named as atomic_output names its temporaries: prefix, pid, 8 random characters
        stale = f"{TEMP_PREFIX}{os.getpid()}-k1ll3d_x-{task.stem.name}_boxes.jpg"
        (folder / stale).write_bytes(b"\xff\xd8\xff")
        os.kill(os.getpid(), signal.SIGKILL)
    return process_detect_task(detector, task, options)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width x height pixels but holds almost no data (a bomb probe)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def build_c_client(out: Path) -> Path:
    """examples/serve_client.c compiled into ``out``; pytest.skip without a C compiler or
    libcurl's development files."""
    import pytest

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    binary = out / "serve_client"
    source = Path(__file__).resolve().parents[1] / "examples" / "serve_client.c"
    flags = [*os.environ.get("CFLAGS", "").split(), str(source), "-o", str(binary),
             *os.environ.get("LDFLAGS", "").split(), "-lcurl"]  # e.g. a libcurl of one's own
    build = subprocess.run([compiler, "-Wall", "-Wextra", "-Werror", *flags],
                           capture_output=True, text=True, timeout=120)
    missing = ("curl/curl.h: No such file", "cannot find -lcurl")  # not a compile error
    if build.returncode != 0 and any(m in build.stderr for m in missing):
        pytest.skip("libcurl development files are not installed (libcurl4-openssl-dev)")
    assert build.returncode == 0, build.stderr
    return binary


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in HTTP server of ``handler`` on 127.0.0.1 (a free port) in a thread; yields its
    base URL and shuts it down after."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def fast_serve_polling(monkeypatch, interval_s: float = 0.1) -> None:
    """Ray Serve's client in this process checks every ``interval_s`` seconds, not every
    second (Ray's ``CLIENT_POLLING_INTERVAL_S``), whether what it waits for has happened:
    ``serve.run`` still returns once the application is RUNNING, ``serve.delete`` once it is
    gone, only up to a second sooner each. Nothing changes where this Ray has no such
    constant."""
    try:
        from ray.serve._private import client
    except ImportError:
        return
    if isinstance(getattr(client, "CLIENT_POLLING_INTERVAL_S", None), (int, float)):
        monkeypatch.setattr(client, "CLIENT_POLLING_INTERVAL_S", interval_s)
