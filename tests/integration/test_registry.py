"""A model is one catalogue entry plus its files: registered here, and nowhere else, it is served
end to end by a real worker on the real MinIO and Redis, and every surface offers it."""
from __future__ import annotations

import contextlib
import json
import shutil
import threading

import falcon.testing
import numpy as np

from checks import PHOTOS, png, wait_for_task
from conftest import REPO
from maskflow.api.app import build_deps, create_app
from maskflow.api.openapi import document
from maskflow.functions.worker import build_worker, load_models
from maskflow.infra.domain import catalog
from maskflow.infra.domain.catalog import DEFAULT, ModelEntry
from maskflow.infra.domain.images import decode_image
from maskflow.infra.ops.stack import wait_until
from maskflow.infra.sdk.cli.parser import build_parser
from maskflow.infra.stores.tasks import derive_task_id
from maskflow.infra.wiring.config import replace

THROWAWAY = ModelEntry("throwaway", "throwaway.onnx", (256, 256), "nothing: a test registers it",
                       "as person's", "Apache-2.0", "a copy of the person model under another name")


@contextlib.contextmanager
def registered(entry: ModelEntry):
    catalog.register(entry)
    try:
        yield entry
    finally:
        del catalog.CATALOG[entry.name]


def model_files(tmp_path):
    """The person model's ONNX file and manifest, renamed as the throw-away model's."""
    source = REPO / "models" / catalog.CATALOG[DEFAULT].model_file
    path = tmp_path / THROWAWAY.model_file
    shutil.copy(source, path)
    manifest = json.loads(source.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**manifest, "file": path.name}))
    return path


def test_a_registered_model_is_offered_everywhere_and_serves_a_task(servers, clean_redis, objects, tasks,
                                                                    person_model, unique_prefix, tmp_path):
    with registered(THROWAWAY):
        # The worker serves every installed model, as by default; an empty cache keeps the large
        # fetched ones out of this test's process.
        cfg = replace(servers.cfg, worker={"models": ()},
                      models={"paths": {THROWAWAY.name: str(model_files(tmp_path))},
                              "cache_dir": str(tmp_path / "no-cached-models")})

        api = falcon.testing.TestClient(create_app(build_deps(cfg)))
        listed = api.simulate_get("/api/v1/models").json["models"]
        assert THROWAWAY.name in [m["name"] for m in listed]
        enum = document(cfg)["components"]["schemas"]["Task"]["properties"]["model"]["enum"]
        assert THROWAWAY.name in enum
        args = build_parser().parse_args(["submit", "x.jpg", "--model", THROWAWAY.name])
        assert args.model == THROWAWAY.name

        key = f"input/{unique_prefix}/throwaway.jpg"
        photo = (PHOTOS / "astronaut.jpg").read_bytes()
        objects.put(key, photo, "image/jpeg", {catalog.METADATA_KEY: THROWAWAY.name})
        wait_until(lambda: clean_redis.llen(cfg.queue.events_key), "MinIO's event", 10)
        worker = build_worker(cfg, "registry", servers.redis(), lambda: load_models(cfg))
        running = threading.Thread(target=worker.run, kwargs={"burst": True})
        running.start()
        try:
            task = wait_for_task(tasks, derive_task_id(cfg.minio.bucket, key))
        finally:
            worker.stop()
            running.join(30)

    assert task.status == "completed" and task.model == THROWAWAY.name, task
    mask = png(objects.get(task.results["mask"]).data)
    assert np.abs(mask.astype(int) - person_model.predict(decode_image(photo))).max() <= 1
