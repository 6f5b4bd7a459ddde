"""Issue 4 acceptance: real MinIO events -> real Redis -> worker processes -> results in MinIO."""
from __future__ import annotations

import shutil

from checks import PHOTOS, check_result, wait_for_task
from maskflow.infra.ops.processes import wait_until
from maskflow.infra.stores.keys import DEAD_LETTER_KEY
from maskflow.infra.stores.tasks import derive_task_id


def test_mc_cp_photo_completes_with_matching_mask(servers, workers, mc, objects, person_model, tasks, unique_prefix):
    key = f"input/{unique_prefix}/astronaut.jpg"
    mc("cp", str(PHOTOS / "astronaut.jpg"), f"local/{servers.cfg.minio.bucket}/{key}")
    check_result(servers, objects, person_model, key, (PHOTOS / "astronaut.jpg").read_bytes(), tasks)


def test_bad_inputs_fail_readably_and_good_ones_still_complete(servers, workers, objects, person_model, tasks,
                                                                unique_prefix):
    jpeg = (PHOTOS / "coffee.jpg").read_bytes()
    bad = {"truncated.jpg": jpeg[: len(jpeg) // 2], "text.jpg": b"hello, I am not an image\n",
           "empty.jpg": b""}
    for name, data in bad.items():
        objects.put(f"input/{unique_prefix}/{name}", data, "image/jpeg")
    good = [f"input/{unique_prefix}/good-{i}.jpg" for i in range(3)]
    for key in good:
        objects.put(key, jpeg, "image/jpeg")
    for name in bad:
        task = wait_for_task(tasks, derive_task_id(servers.cfg.minio.bucket, f"input/{unique_prefix}/{name}"))
        assert task is not None and task.status == "failed", (name, task)
        assert task.error and len(task.error) > 10 and "Traceback" not in task.error, task.error
    errors = {name: tasks.find_by_key(f"input/{unique_prefix}/{name}").error for name in bad}
    assert "trunc" in errors["truncated.jpg"].lower()
    assert "empty" in errors["empty.jpg"].lower()
    for key in good:
        check_result(servers, objects, person_model, key, jpeg, tasks)


def test_same_key_twice_keeps_one_task_with_second_outputs(servers, workers, objects, person_model, tasks,
                                                           unique_prefix):
    key = f"input/{unique_prefix}/twice.jpg"
    first, second = (PHOTOS / "astronaut.jpg").read_bytes(), (PHOTOS / "chelsea.jpg").read_bytes()
    objects.put(key, first, "image/jpeg")
    task_id = derive_task_id(servers.cfg.minio.bucket, key)
    one = wait_for_task(tasks, task_id)
    assert one.status == "completed"
    objects.put(key, second, "image/jpeg")
    # the same task moves to a new version; wait until it is the second upload's
    two = wait_until(lambda: (t := wait_for_task(tasks, task_id)).sequencer != one.sequencer and t,
                     "the second upload's version to complete", 60)
    assert two.task_id == one.task_id and two.sequencer > one.sequencer
    assert tasks.task_id_for_key(key) == task_id
    check_result(servers, objects, person_model, key, second, tasks)


def test_keys_with_spaces_and_unicode(servers, workers, mc, objects, person_model, tasks, unique_prefix, tmp_path):
    names = ["my photo (1).jpg", "фото кошки.jpg", "写真+plus & more.jpg"]
    for name in names:
        path = tmp_path / name
        shutil.copy(PHOTOS / "chelsea.jpg", path)
        mc("cp", str(path), f"local/{servers.cfg.minio.bucket}/input/{unique_prefix}/dir with space/{name}")
    for name in names:
        check_result(servers, objects, person_model, f"input/{unique_prefix}/dir with space/{name}",
                      (PHOTOS / "chelsea.jpg").read_bytes(), tasks)


def test_poison_events_are_dead_lettered_and_worker_keeps_going(servers, workers, objects, person_model, tasks,
                                                                unique_prefix):
    r = servers.redis()
    r.rpush(servers.cfg.queue.events_key, b"{not json", b'[{"Event":[{"eventName":"s3:ObjectRemoved:Delete","s3":{"bucket":{"name":"x"},"object":{"key":"input/x"}}}]}]')
    key = f"input/{unique_prefix}/after-poison.jpg"
    objects.put(key, (PHOTOS / "coffee.jpg").read_bytes(), "image/jpeg")
    check_result(servers, objects, person_model, key, (PHOTOS / "coffee.jpg").read_bytes(), tasks)
    dead = [x.decode() for x in r.lrange(DEAD_LETTER_KEY, 0, -1)]
    assert any("not JSON" in d for d in dead)
    assert any("unsupported event type" in d for d in dead)


