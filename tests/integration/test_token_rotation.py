"""Rotating the API's bearer tokens while clients poll: the API re-reads its tokens file when it
changes, and on SIGHUP; only the revoked token ever fails (api/tokens.py)."""
from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import requests

from maskflow.infra.ops.processes import wait_until


def _status(url: str, token: str) -> int:
    return requests.get(f"{url}/api/v1/tasks/0", headers={"Authorization": f"Bearer {token}"},
                        timeout=10).status_code


class Poller(threading.Thread):
    """A client polling with one token, counting the answers before and after a moment."""

    def __init__(self, url: str, token: str):
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.stop = threading.Event()
        self.answers: list[int] = []

    def run(self) -> None:
        while not self.stop.is_set():
            self.answers.append(_status(self.url, self.token))
            self.stop.wait(0.02)


def test_tokens_rotate_without_a_restart(start_app, tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text("token-a\n")
    monkeypatch.setenv("MASKFLOW_API_TOKENS_FILE", str(tokens))  # the operator's file, as `maskflow up` passes it
    app = start_app()
    pid = app.running("api")
    assert _status(app.url, "token-a") == 404 and _status(app.url, "token-b") == 401  # 404: no task 0, but let in

    a = Poller(app.url, "token-a")
    a.start()
    tokens.write_text("token-a\ntoken-b\n")                       # 1. add the new token
    wait_until(lambda: _status(app.url, "token-b") == 404, "the new token accepted", 10)
    b = Poller(app.url, "token-b")
    b.start()
    wait_until(lambda: len(b.answers) >= 5, "the new client polling", 10)
    tmp = tmp_path / "tokens.new"                                # 2. revoke the old one, by rename
    tmp.write_text("token-b\n")
    tmp.replace(tokens)
    wait_until(lambda: a.answers[-3:] == [401] * 3, "the old token refused", 10)
    wait_until(lambda: len(b.answers) >= len(a.answers) // 2 + 5, "the new client polling on", 10)
    a.stop.set(), b.stop.set(), a.join(), b.join()

    assert set(b.answers) == {404}, Counter(b.answers)           # the new token never failed
    first_refusal = a.answers.index(401)
    assert set(a.answers[:first_refusal]) == {404} and set(a.answers[first_refusal:]) == {401}, Counter(a.answers)
    assert app.running("api") == pid                              # no restart

    # SIGHUP reloads even a change the watcher cannot see (same size, same mtime, same inode)
    stat = tokens.stat()
    with open(tokens, "r+") as out:
        out.write("token-c\n")
    os.utime(tokens, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    threading.Event().wait(1.5)  # past the watcher's one-second check: it saw nothing change
    assert _status(app.url, "token-c") == 401 and _status(app.url, "token-b") == 404
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: _status(app.url, "token-c") == 404, "token-c after SIGHUP", 10)
    assert _status(app.url, "token-b") == 401


def test_an_emptied_tokens_file_refuses_everyone(start_app, tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.write_text("only-token\n")
    monkeypatch.setenv("MASKFLOW_API_TOKENS_FILE", str(tokens))
    app = start_app()
    tokens.write_text("")
    wait_until(lambda: _status(app.url, "only-token") == 401, "the last token revoked", 10)
    assert requests.get(f"{app.url}/api/v1/tasks/0", timeout=10).status_code == 401  # not open


def test_several_tokens_from_the_config(start_app):
    app = start_app(api={"token": "first-token", "tokens": ("second-token", "third-token")})
    assert [_status(app.url, t) for t in ("first-token", "second-token", "third-token", "fourth")] == \
        [404, 404, 404, 401]
