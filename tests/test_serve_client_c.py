"""examples/serve_client.c against a stand-in server on 127.0.0.1 (no Ray): which answers it
prints as a result, which it reports as errors, and the URLs it refuses."""

from __future__ import annotations

import subprocess
import time
from http.server import BaseHTTPRequestHandler

import pytest

from helpers_scaleout import build_c_client, local_http_server


class _Answers(BaseHTTPRequestHandler):
    """Answers POST /<code>[/slow]/detect with that HTTP status and a JSON body (after 3 s
    with /slow); a path with an empty segment (tf-serve has no route for it) gets 404."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code = 404 if "//" in self.path else int(self.path.strip("/").split("/")[0])
        if "/slow/" in self.path:
            time.sleep(3)
        body = b'{"faces": []}'
        self.send_response(code)
        if code not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        if 300 <= code < 400:
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
        self.end_headers()
        if code not in (204, 304):
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on /slow (the test's timeout case)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stand_in():
    with local_http_server(_Answers) as url:
        yield url


def test_only_a_200_answer_is_a_result(stand_in, tmp_path):
    binary = build_c_client(tmp_path)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"any bytes: the stand-in does not decode them")

    def run(url: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), str(photo), url], capture_output=True, text=True,
                              timeout=60)

    ok = run(f"{stand_in}/200")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, '{"faces": []}\n', "")
    for code in (204, 302, 404, 503):  # no result: a redirect is not followed as a result either
        answer = run(f"{stand_in}/{code}")
        assert answer.returncode == 1 and answer.stdout == "", (code, answer)
        assert answer.stderr.startswith(f"serve_client: HTTP {code}: "), (code, answer.stderr)
    cut = run(f"{stand_in}/200/" + "a" * 3000)  # it would have been cut short
    assert (cut.returncode, cut.stdout, cut.stderr) == (
        2, "", "serve_client: the server URL is longer than 2040 characters\n")


def test_a_trailing_slash_and_a_slow_server(stand_in, tmp_path):
    """tf-serve has no route '//detect' (a URL given with a trailing '/'), and a large photo
    on a CPU replica takes minutes, not the 60 s the client gave up after."""
    binary = build_c_client(tmp_path)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"any bytes")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), str(photo), *args], capture_output=True, text=True,
                              timeout=60)

    assert run(f"{stand_in}/200/").returncode == 0
    assert run(f"{stand_in}/200//").returncode == 0
    assert run(f"{stand_in}/200/slow").returncode == 0  # within the default
    slow = run(f"{stand_in}/200/slow", "1")
    assert (slow.returncode, slow.stdout) == (1, "")
    assert slow.stderr == f"serve_client: {stand_in}/200/slow/detect: Timeout was reached\n"
    for bad in ("-1", "ten", "", "5s"):
        refused = run(f"{stand_in}/200", bad)
        assert (refused.returncode, refused.stdout, refused.stderr) == (
            2, "", f"serve_client: TIMEOUT_S must be a whole number of seconds >= 0, got '{bad}'\n")
