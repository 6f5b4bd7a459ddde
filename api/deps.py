"""What every resource is given: the settings and the stores (built in api/app.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from maskflow.api import metrics
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.tasks import TaskStore
from maskflow.infra.wiring.config import Config

API = "/api/v1"


@dataclass
class Deps:
    cfg: Config
    tasks: TaskStore
    objects: ObjectStore
    redis: redis.Redis
    # name -> probe raising on failure; each must answer within ~0.5 s
    readiness: dict[str, Callable[[], Any]] = field(default_factory=dict)
    http_metrics: metrics.HttpMetrics = field(default_factory=metrics.HttpMetrics)
