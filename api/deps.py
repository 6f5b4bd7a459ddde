"""What every resource is given: the settings and the stores (built in api/app.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from maskflow.api import metrics
from maskflow.api.tokens import TokenSet
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
    # The valid bearer tokens; None: the config's, fixed (build_deps watches their files).
    tokens: TokenSet | None = None

    def __post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = TokenSet(self.cfg.api_tokens)
