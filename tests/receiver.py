"""A real HTTP server on 127.0.0.1 (a port the OS picks) that receives webhooks for the tests
and the benchmark: it answers each request with the next of its scripted answers."""
from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when it arrived


HANG = "hang"  # an answer: never answer (until the receiver stops)


class Receiver:
    def __init__(self, answers: list = (), default=200, headers: dict[str, str] | None = None):
        self.answers = list(answers)  # status codes, or HANG; then `default` for every later request
        self.default = default
        self.extra_headers = headers or {}
        self.received: list[Received] = []
        self.answered: list[int] = []
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.changed:
                    receiver.received.append(Received(dict(self.headers), body, time.time()))
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.default
                    receiver.changed.notify_all()
                if answer == HANG:
                    receiver.stopping.wait()
                    return
                self.send_response(answer)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                with receiver.changed:
                    receiver.answered.append(answer)
                    receiver.changed.notify_all()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The first `count` requests, once that many arrived (woken by each arrival)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.received) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.received)} of {count} webhooks received")
                self.changed.wait(left)
            return self.received[:count]


@contextlib.contextmanager
def receiving(*args, **kwargs) -> Iterator[Receiver]:
    receiver = Receiver(*args, **kwargs)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.stopping.set()
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join()
