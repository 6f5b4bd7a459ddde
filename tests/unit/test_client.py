"""infra.client against a small scripted HTTP server (a real socket, real requests)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from maskflow.infra.ops.processes import free_port
from maskflow.infra.sdk.cli.names import result_stems as _stems
from maskflow.infra.sdk.cli.names import unique_stems
from maskflow.infra.sdk.client import Client, ClientError, TaskFailed, atomic_write, sniff_content_type


class Scripted:
    """Answers GET /api/v1/tasks/<id> from a list of (status, body), recording each request."""

    def __init__(self):
        self.answers: list[tuple[int, object]] = []
        self.requests: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append((self.path, dict(self.headers)))
                status, body = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = Scripted()
    yield s
    s.server.shutdown()


def task(status: str, **kw) -> dict:
    return {"task_id": "t1", "status": status, "result": {"segmented_image_url": None,
                                                          "mask_image_url": None},
            "error": None, "created_at": "x", "completed_at": None, **kw}


def test_wait_returns_completed_and_sends_token_and_long_poll(server):
    server.answers = [(200, task("pending")), (200, task("processing")), (200, task("completed"))]
    seen = []
    got = Client(server.url, token="abc").wait("t1", poll_interval=0.01, max_polls=5,
                                               on_status=lambda t: seen.append(t["status"]))
    assert got["status"] == "completed"
    assert seen == ["pending", "processing", "completed"]
    assert len(server.requests) == 3
    path, headers = server.requests[0]
    assert path == "/api/v1/tasks/t1?wait=0.01"
    assert headers["Authorization"] == "Bearer abc"


def test_wait_raises_task_failed_with_error(server):
    server.answers = [(200, task("failed", error="image is truncated"))]
    with pytest.raises(TaskFailed) as info:
        Client(server.url).wait("t1", poll_interval=0.01)
    assert info.value.error == "image is truncated"


def test_wait_times_out_after_max_polls(server):
    server.answers = [(200, task("processing"))]
    with pytest.raises(TimeoutError, match="3 polls"):
        Client(server.url).wait("t1", poll_interval=0.01, max_polls=3, long_poll=False)
    assert len(server.requests) == 3
    assert "wait=" not in server.requests[0][0]


@pytest.mark.parametrize("status,body,expect", [
    (401, {"error": {"status": 401, "code": "unauthorized", "message": "nope"}}, "token"),
    (404, {"error": {"status": 404, "code": "not_found", "message": "no task with id 't1'"}},
     "no task with id 't1' (HTTP 404)"),
    (502, "<html>bad gateway</html>", "without a maskflow error body"),
    (200, "<html>hello</html>", "did not answer JSON"),
])
def test_http_problems_are_one_line_client_errors(server, status, body, expect):
    server.answers = [(status, body)]
    with pytest.raises(ClientError) as info:
        Client(server.url).get("t1")
    assert expect in str(info.value) and "\n" not in str(info.value)
    assert info.value.status == status


def test_connection_refused_is_a_client_error():
    with pytest.raises(ClientError, match="cannot reach the API .*connection refused"):
        Client(f"http://127.0.0.1:{free_port()}").get("t1")


def test_find_and_batch_return_none_on_404(server):
    server.answers = [(404, {"error": {"status": 404, "code": "not_found", "message": "x"}})]
    c = Client(server.url)
    assert c.find("input/a.jpg") is None
    assert c.batch("input/my batch") is None
    assert server.requests[-1][0].startswith("/api/v1/batches/input/my%20batch/?")


def test_atomic_write_leaves_nothing_on_interrupt(tmp_path):
    def chunks():
        yield b"half"
        raise KeyboardInterrupt

    target = tmp_path / "d" / "x.png"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, chunks())
    assert list((tmp_path / "d").iterdir()) == []
    atomic_write(target, [b"a", b"b"])
    assert target.read_bytes() == b"ab" and [p.name for p in target.parent.iterdir()] == ["x.png"]


def test_sniff_content_type():
    assert sniff_content_type(b"\xff\xd8\xff\xe0rest", "x.bin") == "image/jpeg"
    assert sniff_content_type(b"RIFF1234WEBPVP8 ", "x") == "image/webp"
    assert sniff_content_type(b"hello", "notes.txt") is None
    assert sniff_content_type(b"", "empty.jpg") is None


def test_result_names():
    assert unique_stems([Path("a/photo.jpg"), Path("b.png")]) == ["photo", "b"]
    assert unique_stems([Path("x.jpg"), Path("x.png")]) == ["x.jpg", "x.png"]
    assert unique_stems([Path("a/x.jpg"), Path("b/x.jpg")]) == ["x.jpg", "x.jpg-2"]
    assert _stems(["a/x.jpg", "a/x.png", "b/x.jpg", "y.gif"]) == \
        {"a/x.jpg": "a/x.jpg", "a/x.png": "a/x.png", "b/x.jpg": "b/x", "y.gif": "y"}


def test_requests_go_through_the_proxy_the_environment_names(server, monkeypatch):
    monkeypatch.setenv("http_proxy", server.url)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    server.answers = [(200, task("completed"))]
    assert Client("http://api.invalid:8000").get("t1")["status"] == "completed"
    assert server.requests[0][0] == "http://api.invalid:8000/api/v1/tasks/t1"
