"""A task as the API shows it (``GET /api/v1/tasks/{id}``) and a webhook sends it: one body."""
from __future__ import annotations

from maskflow.infra.domain.outputs import RESULT_KINDS
from maskflow.infra.stores.objects import ObjectStore
from maskflow.infra.stores.tasks import Task


def task_body(task: Task, objects: ObjectStore, expiry: int) -> dict:
    """Exactly the original contract's shape (design section 4.2), plus what a task asked for."""
    done = task.status == "completed" and all(kind.name in task.results for kind in RESULT_KINDS)
    body = {
        "task_id": task.task_id,
        "status": task.status,
        "result": {kind.api_field: objects.presigned_get(task.results[kind.name], expiry) if done else None
                   for kind in RESULT_KINDS},
        "error": task.error if task.status == "failed" else None,
        "created_at": task.created_at,
        "completed_at": task.completed_at if task.terminal else None,
    }
    if done and task.model:
        body["model"] = task.model  # only for tasks that named a model: else the contract's shape
    if done and task.options:
        body["options"] = task.options  # likewise, only for tasks that asked for options
    if task.callback_url:  # likewise, only for tasks with a webhook
        body["callback"] = task.callback or {"status": "pending", "attempts": 0, "last_error": None}
    return body
