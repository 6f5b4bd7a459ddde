"""Which models a worker loads (functions/worker.load_models): a fetched model whose file is
missing or not the pinned one keeps the worker from serving, naming the command that installs
it; a model nobody asked this worker for is not loaded."""
from __future__ import annotations

import pytest

from conftest import REPO
from maskflow.functions.worker import INSTALL_COMMAND, load_models
from maskflow.infra.domain.catalog import CATALOG, DEFAULT
from maskflow.infra.domain.segmenter import ModelError
from maskflow.infra.wiring.config import load_config, replace

FETCHED = "portrait"


def config(cache, models=()):
    return replace(load_config(env={}), model={"path": str(REPO / "models" / "segmentation.onnx")},
                   models={"cache_dir": str(cache)}, worker={"models": models})


def test_a_required_model_not_installed_names_the_install_command(tmp_path):
    with pytest.raises(ModelError) as caught:
        load_models(config(tmp_path, (DEFAULT, FETCHED)))
    assert f"{FETCHED}:" in str(caught.value) and "not found" in str(caught.value)
    assert INSTALL_COMMAND in str(caught.value)


def test_a_required_model_with_the_wrong_bytes_is_refused(tmp_path):
    (tmp_path / CATALOG[FETCHED].model_file).write_bytes(b"not the pinned model")
    with pytest.raises(ModelError) as caught:
        load_models(config(tmp_path, (FETCHED,)))
    assert "sha256" in str(caught.value) and INSTALL_COMMAND in str(caught.value)


def test_by_default_a_worker_serves_what_is_installed_and_only_the_named_ones_otherwise(tmp_path):
    assert set(load_models(config(tmp_path))) == {name for name, entry in CATALOG.items() if not entry.fetch}
    assert set(load_models(config(tmp_path, (DEFAULT,)))) == {DEFAULT}
