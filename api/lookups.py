"""Reading what happened: tasks by id or by object key, batches by prefix, and the models."""
from __future__ import annotations

import threading

import falcon

from maskflow.api.deps import Deps
from maskflow.api.errors import bad_request, not_found
from maskflow.infra.domain.catalog import CATALOG, DEFAULT, accepted_names
from maskflow.infra.stores.task_view import task_body
from maskflow.infra.stores.tasks import Task
from maskflow.infra.stores.workers import served_models

MAX_WAIT_S = 30


def _task_answer(deps: Deps, task: Task | None, missing: str) -> dict:
    if task is None:
        raise not_found(missing)
    return task_body(task, deps.objects, deps.cfg.api.presign_expiry)


def _int_param(req: falcon.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = req.get_param(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"query parameter {name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise bad_request(f"query parameter {name} must be between {lo} and {hi}, got {value}")
    return value


class TaskResource:
    """GET /api/v1/tasks/{task_id}[?wait=N]"""

    def __init__(self, deps: Deps):
        self.deps = deps
        # Long-polls hold a waitress thread each: let at most half the threads wait, so a page
        # watching many files cannot starve everyone else; past that, answer at once.
        self.waiters = threading.BoundedSemaphore(max(1, deps.cfg.api.threads // 2))

    def _wait(self, task_id: str, seconds: float) -> Task | None:
        if not self.waiters.acquire(blocking=False):
            return self.deps.tasks.get(task_id)
        try:
            return self.deps.tasks.wait_for_terminal(task_id, seconds)
        finally:
            self.waiters.release()

    def on_get(self, req: falcon.Request, resp: falcon.Response, task_id: str) -> None:
        wait = req.get_param("wait")
        if wait is not None:
            try:
                seconds = float(wait)
            except ValueError:
                raise bad_request(f"wait must be a number of seconds, got {wait!r}") from None
            if not 0 <= seconds <= MAX_WAIT_S:  # also rejects nan and inf
                raise bad_request(f"wait must be between 0 and {MAX_WAIT_S} seconds")
            task = self._wait(task_id, seconds) if seconds else self.deps.tasks.get(task_id)
        else:
            task = self.deps.tasks.get(task_id)
        resp.media = _task_answer(self.deps, task, f"no task with id {task_id!r}")


class TaskLookupResource:
    """GET /api/v1/tasks?key=input/... : the task of an object uploaded directly."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        key = req.get_param("key")
        if not key:
            raise bad_request("query parameter key is required, e.g. ?key=input/photo.jpg")
        resp.media = _task_answer(self.deps, self.deps.tasks.find_by_key(key),
                                  f"no task for object key {key!r}")


class BatchResource:
    """GET /api/v1/batches/{prefix}: counts and failures of every task under a prefix."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response, prefix: str) -> None:
        # WSGI hands us the path decoded, so input%2Fb1%2F and input/b1/ arrive alike.
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        offset = _int_param(req, "offset", 0, 0, 10_000_000)
        limit = _int_param(req, "limit", 100, 1, 1000)
        summary = self.deps.tasks.batch(prefix, offset=offset, limit=limit)
        if summary is None:
            raise not_found(f"no tasks under prefix {prefix!r}")
        resp.media = {
            "prefix": summary.prefix,
            "total": summary.total,
            "done": summary.done,
            "counts": summary.counts,
            "failures": [{"task_id": t.task_id, "key": t.input_key, "error": t.error,
                          "completed_at": t.completed_at} for t in summary.failures],
            "offset": offset,
            "limit": limit,
            "failures_total": summary.counts.get("failed", 0),
        }


class ModelsResource:
    """GET /api/v1/models: the models a task may name, and how many workers serve each now."""

    def __init__(self, deps: Deps):
        self.deps = deps

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        served = served_models(self.deps.redis)
        resp.media = {"default": DEFAULT, "names": list(accepted_names()), "models": [
            {"name": m.name, "aliases": list(m.aliases), "input_size": list(m.input_size),
             "good_for": m.good_for, "cost": m.cost, "quality": m.quality, "license": m.license,
             "source": m.source, "default": m.name == DEFAULT, "workers": served.get(m.name, 0)}
            for m in CATALOG.values()]}
