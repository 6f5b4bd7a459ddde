"""Prometheus text exposition, hand-written (a few counters do not justify prometheus-client).

Two sources:
* HTTP metrics of this API process, recorded by `MetricsMiddleware` (per process: each API
  replica exposes its own, as Prometheus expects);
* pipeline metrics read from Redis at scrape time: task counts by status (TaskStore),
  queue depth, dead letters, and the workers' own counters.  Workers do not serve HTTP: they
  publish their counters in their heartbeat hash (fields named in infra/keys.Heartbeat) and
  this endpoint aggregates whatever live workers have written there.

Worker hash fields understood here (all optional, numbers as strings):
  processed, failed                        -> summed over workers, and per worker
  duration_bucket_<le>  (cumulative count of tasks that took <= <le> seconds, e.g.
  duration_bucket_0.5, duration_bucket_+Inf), duration_sum, duration_count
                                           -> maskflow_processing_seconds histogram
Any other numeric field is exported per worker as maskflow_worker_field{worker,field}.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from collections import defaultdict

import falcon
import redis

from maskflow.infra.stores import results
from maskflow.infra.stores.keys import WORKERS_KEY, Heartbeat
from maskflow.infra.stores.queue import dead_letter_count
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.stores.workers import worker_status

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
WORKER_COUNTERS = (Heartbeat.PROCESSED, Heartbeat.FAILED)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class HttpMetrics:
    """Request counts and latency histograms by method, route template and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        # Per (method, route): how many requests fell in each bucket alone, the last one past
        # every bound; render() sums them up into Prometheus' cumulative buckets.
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.queued_total = 0  # requests that found every server thread busy (api/server.py)
        self.queued_max = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            key = (method, route)
            counts = self.buckets.setdefault(key, [0] * (len(LATENCY_BUCKETS) + 1))
            counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds
            self.sums[key] += seconds
            self.counts[key] += 1

    def queued(self, depth: int) -> None:
        """One request waits for a thread, with `depth` requests waiting in all."""
        with self._lock:
            self.queued_total += 1
            self.queued_max = max(self.queued_max, depth)

    def render(self) -> list[str]:
        with self._lock:
            lines = ["# HELP maskflow_http_requests_total HTTP requests by method, route and status.",
                     "# TYPE maskflow_http_requests_total counter"]
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f"maskflow_http_requests_total"
                             f"{_labels(method=method, route=route, status=status)} {n}")
            lines += ["# HELP maskflow_http_request_duration_seconds HTTP request latency.",
                      "# TYPE maskflow_http_request_duration_seconds histogram"]
            for (method, route), counts in sorted(self.buckets.items()):
                cumulative = 0
                for bound, n in zip(LATENCY_BUCKETS, counts):
                    cumulative += n
                    lines.append("maskflow_http_request_duration_seconds_bucket"
                                 f"{_labels(method=method, route=route, le=_num(bound))} {cumulative}")
                total = self.counts[(method, route)]
                lines.append("maskflow_http_request_duration_seconds_bucket"
                             f"{_labels(method=method, route=route, le='+Inf')} {total}")
                lines.append("maskflow_http_request_duration_seconds_sum"
                             f"{_labels(method=method, route=route)} {self.sums[(method, route)]:.6f}")
                lines.append("maskflow_http_request_duration_seconds_count"
                             f"{_labels(method=method, route=route)} {total}")
            lines += ["# HELP maskflow_http_requests_queued_total Requests that found every server "
                      "thread busy and waited (raise api.threads, or add API processes).",
                      "# TYPE maskflow_http_requests_queued_total counter",
                      f"maskflow_http_requests_queued_total {self.queued_total}",
                      "# HELP maskflow_http_queue_depth_max Most requests waiting at once since start.",
                      "# TYPE maskflow_http_queue_depth_max gauge",
                      f"maskflow_http_queue_depth_max {self.queued_max}"]
        return lines


class MetricsMiddleware:
    def __init__(self, metrics: HttpMetrics):
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req, resp, resource, req_succeeded) -> None:
        started = getattr(req.context, "started", None)
        if started is None:
            return
        # Labels come from fixed sets whatever clients send: the method (HTTP's nine, else
        # OTHER), the route template (ids are not labels), the status the app answered.
        method = req.method if req.method in falcon.HTTP_METHODS else "OTHER"
        route = req.uri_template or "unmatched"
        status = int(str(resp.status).split()[0]) if not isinstance(resp.status, int) else resp.status
        self.metrics.observe(method, route, status, time.perf_counter() - started)


def _float(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) else None


def pipeline_lines(r: redis.Redis, tasks: TaskStore, events_key: str) -> list[str]:
    """Metrics read from Redis at scrape time (tasks, queue, workers)."""
    lines = ["# HELP maskflow_tasks Tasks currently in each status (retained records).",
             "# TYPE maskflow_tasks gauge"]
    for status, n in tasks.status_counts().items():
        lines.append(f"maskflow_tasks{_labels(status=status)} {n}")
    lines += ["# HELP maskflow_queue_depth Events waiting in the Redis list MinIO writes to.",
              "# TYPE maskflow_queue_depth gauge",
              f"maskflow_queue_depth {r.llen(events_key)}",
              "# HELP maskflow_dead_letters Events set aside as unprocessable.",
              "# TYPE maskflow_dead_letters gauge",
              f"maskflow_dead_letters {dead_letter_count(r)}"]

    workers = sorted(m.decode() for m in r.smembers(WORKERS_KEY))
    stats = {w: worker_status(r, w) for w in workers}
    alive = {w: s for w, s in stats.items() if s}  # an expired heartbeat hash reads as empty
    lines += ["# HELP maskflow_workers Workers with a live heartbeat in Redis.",
              "# TYPE maskflow_workers gauge", f"maskflow_workers {len(alive)}"]

    totals: dict[str, float] = defaultdict(float)
    per_worker: list[str] = []
    hist: dict[float, float] = defaultdict(float)
    hist_sum = hist_count = 0.0
    for worker, fields in alive.items():
        for name, raw in sorted(fields.items()):
            value = _float(raw)
            if value is None or name in Heartbeat.DESCRIPTIVE:
                continue
            if name in WORKER_COUNTERS:
                totals[name] += value
                per_worker.append(f"maskflow_worker_{name}_total{_labels(worker=worker)} {_num(value)}")
            elif name.startswith(Heartbeat.DURATION_BUCKET):
                bound = _float(name[len(Heartbeat.DURATION_BUCKET):])
                if bound is not None:
                    hist[bound] += value
            elif name == Heartbeat.DURATION_SUM:
                hist_sum += value
            elif name == Heartbeat.DURATION_COUNT:
                hist_count += value
            else:
                per_worker.append(f"maskflow_worker_field{_labels(worker=worker, field=name)} {_num(value)}")

    for name in WORKER_COUNTERS:
        lines += [f"# HELP maskflow_worker_{name}_total Sum over live workers (from their Redis heartbeat).",
                  f"# TYPE maskflow_worker_{name}_total counter",
                  f"maskflow_worker_{name}_total {_num(totals[name])}"]
    lines += per_worker
    lines += ["# HELP maskflow_processing_seconds Time to process one task, over live workers.",
              "# TYPE maskflow_processing_seconds histogram"]
    if math.inf not in hist:
        hist[math.inf] = hist_count
    for bound in sorted(hist):
        lines.append(f"maskflow_processing_seconds_bucket{_labels(le=_num(bound))} {_num(hist[bound])}")
    lines += [f"maskflow_processing_seconds_sum {_num(hist_sum)}",
              f"maskflow_processing_seconds_count {_num(hist_count)}"]
    return lines + result_lines(r)


def result_lines(r: redis.Redis) -> list[str]:
    """The results stream's length, and the webhook dispatchers' counters (kept in Redis)."""
    stats = results.delivery_stats(r)
    lines = ["# HELP maskflow_results_stream_length Entries kept in the results stream.",
             "# TYPE maskflow_results_stream_length gauge", f"maskflow_results_stream_length {results.length(r)}",
             "# HELP maskflow_webhook_deliveries_total Webhook attempts by outcome (retry: failed, tried again).",
             "# TYPE maskflow_webhook_deliveries_total counter"]
    for name, value in sorted(stats.items()):
        if name.startswith("outcome:"):
            lines.append(f"maskflow_webhook_deliveries_total{_labels(outcome=name[8:])} {_num(value)}")
    lines += ["# HELP maskflow_webhook_delivery_seconds From a task's transition to its receiver's 2xx.",
              "# TYPE maskflow_webhook_delivery_seconds histogram"]
    for bound in results.LATENCY_BUCKETS:
        lines.append(f"maskflow_webhook_delivery_seconds_bucket{_labels(le=_num(bound))} "
                     f"{_num(stats.get(f'latency_bucket:{bound}', 0))}")
    count = stats.get("latency_count", 0)
    lines += [f"maskflow_webhook_delivery_seconds_bucket{_labels(le='+Inf')} {_num(count)}",
              f"maskflow_webhook_delivery_seconds_sum {_num(stats.get('latency_sum', 0))}",
              f"maskflow_webhook_delivery_seconds_count {_num(count)}"]
    return lines


def render(http: HttpMetrics, r: redis.Redis, tasks: TaskStore, events_key: str) -> str:
    lines = http.render()
    try:
        lines += pipeline_lines(r, tasks, events_key)
        up = 1
    except redis.exceptions.RedisError:
        up = 0  # still expose HTTP metrics while Redis is down
    lines += ["# HELP maskflow_redis_up Whether Redis answered this scrape.",
              "# TYPE maskflow_redis_up gauge", f"maskflow_redis_up {up}"]
    lines += ["# HELP maskflow_long_polls Requests of this API process waiting for a task to finish.",
              "# TYPE maskflow_long_polls gauge", f"maskflow_long_polls {tasks.changes.waiting()}"]
    return "\n".join(lines) + "\n"
