"""tf-serve on a Ray cluster where Serve already runs (another team's, or another tf-serve's):
it refuses what would take that service over, and its exit leaves that service running."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

pytest.importorskip("ray", reason="the 'scale' extra (ray[data,serve]) is not installed")

import test_scaleout_ray  # noqa: E402
from tinyfaces_trt.scaleout import cli_serve  # noqa: E402
from tinyfaces_trt.scaleout.serve import APP_NAME  # noqa: E402

cluster = test_scaleout_ray.cluster  # the local 2-CPU cluster on 127.0.0.1
_request = test_scaleout_ray._request

#: Longest a tf-serve in these tests may run before a safety SIGTERM stops it.
LIMIT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def other_service(cluster):
    """Serve on port A with a tiny application (the other team's), shut down afterwards."""
    from ray import serve

    @serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
    def other(request) -> str:
        return "other"

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"log_level": "WARNING"})

    def deploy(name: str, route: str) -> None:
        serve.run(other.bind(), name=name, route_prefix=route,
                  logging_config={"log_level": "WARNING"})

    yield port, deploy
    serve.shutdown()


def _tf_serve(cluster, argv: list[str], *, once_serving=None) -> int:
    """cli_serve.main on the test cluster; ``once_serving()`` runs in a thread once our
    application is RUNNING, then SIGTERM stops it (also after LIMIT_S, whatever happens)."""
    from ray import serve

    address = cluster.get_runtime_context().gcs_address  # joined, as a second tf-serve does
    stopped = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline and not stopped.is_set():
            app = serve.status().applications.get(APP_NAME)
            if once_serving and app is not None and app.status == "RUNNING":
                once_serving()
                break
            time.sleep(0.5)
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
