"""The API's waitress server: requests that wait for a thread are counted, not logged one by one."""
from __future__ import annotations

import logging
import threading

from conftest import make_config
from maskflow.api.metrics import HttpMetrics
from maskflow.api.server import create_server


class Blocking:
    """A task that holds its server thread until released."""

    def __init__(self, started: threading.Semaphore, release: threading.Event):
        self.started, self.release = started, release

    def service(self) -> None:
        self.started.release()
        self.release.wait(10)

    def cancel(self) -> None:
        pass

    def defer(self) -> None:
        pass


def test_requests_waiting_for_a_thread_are_counted_and_logged_once(tmp_path, caplog):
    cfg = make_config(tmp_path, api={"threads": 1})
    metrics = HttpMetrics()
    server = create_server(lambda environ, start_response: [], cfg, 1024, metrics=metrics)
    started, release = threading.Semaphore(0), threading.Event()
    try:
        with caplog.at_level(logging.WARNING):
            server.task_dispatcher.add_task(Blocking(started, release))
            assert started.acquire(timeout=10)  # the one thread is busy from here on
            # (the first task counts too if it came before the thread was up and waiting)
            before = metrics.queued_total
            for _ in range(3):
                server.task_dispatcher.add_task(Blocking(started, release))
        lines = metrics.render()
        assert f"maskflow_http_requests_queued_total {before + 3}" in lines
        assert "maskflow_http_queue_depth_max 3" in lines
        queue_warnings = [r for r in caplog.records if "waiting for a free thread" in r.getMessage()]
        assert len(queue_warnings) == 1
        assert not [r for r in caplog.records if "Task queue depth" in r.getMessage()]
    finally:
        release.set()
        server.task_dispatcher.shutdown(timeout=10)
        server.close()
