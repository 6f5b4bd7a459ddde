"""Issue 9, part 4: hostile clients against a real `python -m maskflow.api` (waitress) process.

Slow clients must neither starve the API nor stay connected for long, and what waitress
refuses by itself (headers or body too large, malformed requests) is answered in the API's
JSON error shape.
"""
from __future__ import annotations

import itertools
import json
import select
import socket
import statistics
import time

import requests

from checks import assert_error
from conftest import UPLOAD_LIMIT as LIMIT
from maskflow.infra.stores.tasks import TaskStore

SLOW_CLIENTS = 500
MAX_LATENCY_S = 1.0


def _closed(sock: socket.socket) -> bool:
    """Has the server closed this connection? (called when select says it is readable)"""
    try:
        return sock.recv(4096) == b""
    except OSError:  # reset
        return True


def test_slow_clients_neither_starve_the_api_nor_stay(api, servers):
    cfg = api.cfg.api
    host, port = cfg.host, cfg.port
    task = TaskStore(servers.redis(), servers.cfg).create_pending(
        f"slow{time.monotonic_ns()}", "input/slow.jpg")
    probes = [f"{api.url}/healthz", f"{api.url}/api/v1/tasks/{task.task_id}"]
    # A request that starts and never ends: one byte now, then one per client every 2 s.
    trickle = itertools.cycle(b"OST /api/v1/tasks/segmentation HTTP/1.1\r\nX-Slow: ")
    socks: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for _ in range(SLOW_CLIENTS):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"P")
            socks.append(sock)
        # Probe while every slow client is still well inside its time.
        probe_until = opened + cfg.request_timeout - 2
        latencies: list[float] = []
        next_byte = opened + 2
        while time.monotonic() < probe_until:
            for url in probes:
                started = time.monotonic()
                r = requests.get(url, timeout=5)  # a new connection each time
                latencies.append(time.monotonic() - started)
                assert r.status_code == 200, r.text
            if time.monotonic() >= next_byte:
                byte = bytes([next(trickle)])
                for sock in socks:
                    sock.sendall(byte)
                next_byte += 2
            # pacing of the probes; a slow client readable here was cut off too early
            early, _, _ = select.select(socks, [], [], 0.25)
            assert not [s for s in early if _closed(s)], "slow clients cut off before their time"
        assert len(latencies) >= 10
        assert max(latencies) < MAX_LATENCY_S, sorted(latencies)[-5:]

        # Then every slow client is disconnected: request_timeout, plus the event loop's
        # 1 s tick, plus slack for a loaded machine.
        deadline = opened + cfg.request_timeout + 5
        open_socks = set(socks)
        closed_at: list[float] = []
        while open_socks and time.monotonic() < deadline:
            readable, _, _ = select.select(list(open_socks), [], [], 0.25)
            for sock in readable:
                if _closed(sock):
                    open_socks.discard(sock)
                    closed_at.append(time.monotonic() - opened)
        assert not open_socks, f"{len(open_socks)} slow clients still connected"
        assert min(closed_at) >= cfg.request_timeout - 1, min(closed_at)
        print(f"\n{SLOW_CLIENTS} slow clients: probe latency median "
              f"{statistics.median(latencies) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms "
              f"over {len(latencies)} probes; cut off after {min(closed_at):.1f}-"
              f"{max(closed_at):.1f} s")
        assert requests.get(probes[0], timeout=5).status_code == 200
    finally:
        for sock in socks:
            sock.close()


def _raw(api, data: bytes, read_timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the answer until the server closes; (status, headers, body)."""
    with socket.create_connection((api.cfg.api.host, api.cfg.api.port), timeout=read_timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def _assert_json_error(answer: tuple[int, dict, bytes], status: int, code: str) -> str:
    got, headers, body = answer
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    doc = json.loads(body)
    assert set(doc) == {"error"} and set(doc["error"]) == {"status", "code", "message"}
    assert doc["error"]["status"] == status and doc["error"]["code"] == code
    return doc["error"]["message"]


def test_what_waitress_refuses_is_json_too(api):
    # headers over waitress' max_request_header_size (256 KiB)
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 262_144 + b"\r\n\r\n"
    _assert_json_error(_raw(api, big), 431, "headers_too_large")
    # a declared body over the largest route's limit: refused before any of it is sent
    huge = b"POST /api/v1/tasks/segmentation HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
    message = _assert_json_error(_raw(api, huge), 413, "payload_too_large")
    assert str(LIMIT + 64 * 1024) in message
    # malformed
    _assert_json_error(_raw(api, b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n"),
                       400, "bad_request")
    _assert_json_error(_raw(api, b"POST /api/v1/uploads HTTP/1.1\r\nHost: x\r\n"
                                 b"Transfer-Encoding: gzip\r\n\r\n"), 501, "not_implemented")


def test_chunked_bodies_over_the_limit_are_json_413(api):
    # over the JSON route's 64 KiB, under waitress' cap: waitress de-chunks, the app refuses
    r = requests.post(f"{api.url}/api/v1/uploads", headers={"Content-Type": "application/json"},
                      data=iter([b'{"filename": "', b"x" * 70_000, b'"}']), timeout=10)
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert_error(r, 413, "payload_too_large")
    # over waitress' cap (LIMIT + multipart slack): waitress stops reading and answers
    chunk = b"x" * (LIMIT + 64 * 1024 + 1)
    request = (b"POST /api/v1/tasks/segmentation HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    _assert_json_error(_raw(api, request), 413, "payload_too_large")
