"""Results always come from one version of the input, however a re-upload races a running task.

A 7200x5400 photo is uploaded, and while its task is `processing` a small photo replaces it
under the same key.  The slow run reads the big version and may finish after the fast one;
every time, the task's ETag, the mask and the cut-out must all be the small upload's.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from checks import PHOTOS, check_result, make_photo, pipeline_idle, png
from maskflow.infra.domain.outputs import result_keys
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.tasks import derive_task_id

ROUNDS = 10


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return make_photo(source="astronaut.jpg", width=7200, height=5400, quality=90)


def test_reupload_while_processing_never_mixes_versions(servers, workers, objects, person_model, tasks,
                                                        unique_prefix, big_jpeg):
    r = servers.redis()
    small = (PHOTOS / "chelsea.jpg").read_bytes()
    small_shape = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    for round_ in range(ROUNDS):
        key = f"input/{unique_prefix}/race-{round_}.jpg"
        task_id = derive_task_id(servers.cfg.minio.bucket, key)
        big_etag = objects.client.put_object(servers.cfg.minio.bucket, key, io.BytesIO(big_jpeg),
                                           len(big_jpeg), "image/jpeg").etag
        wait_until(lambda: (t := tasks.get(task_id)) is not None and t.status == "processing"
                   and t.etag == big_etag, "the big upload's task to start", 30)
        small_etag = objects.client.put_object(servers.cfg.minio.bucket, key, io.BytesIO(small),
                                             len(small), "image/jpeg").etag
        wait_until(lambda: (t := tasks.get(task_id)) is not None and t.status == "completed"
                   and t.etag == small_etag, "the small upload's task to complete", 60)
        wait_until(lambda: pipeline_idle(servers.stack, r), "every run to finish", 60)

        task = tasks.get(task_id)
        assert (task.status, task.etag) == ("completed", small_etag), (round_, task)
        for result_key in result_keys(key).values():
            stored = objects.get(result_key)
            assert stored.metadata.get("source-etag") == small_etag, (round_, result_key)
            assert png(stored.data).shape[:2] == small_shape, (round_, result_key)
        check_result(servers, objects, person_model, key, small, tasks)

