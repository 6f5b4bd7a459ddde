"""The model catalogue: names, how a task's model is chosen, and agreement with the manifests."""
from __future__ import annotations

import json

import pytest

from conftest import REPO
from maskflow.infra.domain.catalog import CATALOG, DEFAULT, UnknownModel, named_model, names
from maskflow.infra.wiring.config import ConfigError, load_config

BY_PREFIX = {"input/products/": "general", "input/products/people/": "person"}


@pytest.mark.parametrize("requested, key, expected", [
    ("", "input/a.jpg", ""),                                # nothing named: the default, unnamed
    ("", "input/products/shoe.jpg", "general"),             # a mapped prefix
    ("", "input/products/people/ann.jpg", "person"),        # the longest prefix wins
    ("person", "input/products/shoe.jpg", "person"),        # metadata beats the prefix
    ("general", "input/a.jpg", "general"),
])
def test_metadata_then_prefix_then_default(requested, key, expected):
    assert named_model(requested, key, BY_PREFIX) == expected


@pytest.mark.parametrize("requested", ["cats", "General", "person ", "x" * 500])
def test_unknown_names_are_refused_with_the_valid_ones(requested):
    with pytest.raises(UnknownModel, match="valid models: person, general, u2netp, u2net, portrait") as info:
        named_model(requested, "input/a.jpg", BY_PREFIX)
    assert len(str(info.value)) < 120  # a hostile name does not flood the task's error


def test_the_default_keeps_the_original_model():
    assert DEFAULT == "person" and names() == ("person", "general", "u2net", "portrait")
    assert load_config(env={}).model_files["person"].path.name == CATALOG["person"].model_file


@pytest.mark.parametrize("name", names())
def test_catalogue_agrees_with_each_model_manifest(name):
    entry = CATALOG[name]
    manifest = json.loads((REPO / "models" / entry.model_file).with_suffix(".json").read_text())
    assert manifest["file"] == entry.model_file
    assert (manifest["input_width"], manifest["input_height"]) == entry.input_size
    assert manifest["license"].startswith(entry.license)
    assert load_config(env={}).model_files[name].path.name == entry.model_file
    # a file in git, or one the install step fetches by pinned hashes: never both
    in_git = (REPO / "models" / entry.model_file).exists()
    assert in_git != bool(entry.fetch), name


def test_an_alias_names_its_model_everywhere():
    assert named_model("u2netp", "input/a.jpg", {}) == "general"
    cfg = load_config(env={"MASKFLOW_MODELS_BY_PREFIX": "input/shoes/=u2netp", "MASKFLOW_WORKER_MODELS": "u2netp"})
    assert named_model("", "input/shoes/a.jpg", cfg.models.by_prefix) == "general"
    with pytest.raises(ConfigError, match="unknown model 'cats'"):
        load_config(env={"MASKFLOW_WORKER_MODELS": "person,cats"})


def test_by_prefix_from_the_environment_and_its_checks():
    cfg = load_config(env={"MASKFLOW_MODELS_BY_PREFIX": "input/products/=general, input/team/=person"})
    assert cfg.models.by_prefix == {"input/products/": "general", "input/team/": "person"}
    with pytest.raises(ConfigError, match="unknown model 'cats'"):
        load_config(env={"MASKFLOW_MODELS_BY_PREFIX": "input/x/=cats"})
    with pytest.raises(ConfigError, match="not under input/"):
        load_config(env={"MASKFLOW_MODELS_BY_PREFIX": "output/x/=general"})
    with pytest.raises(ConfigError, match="prefix=name"):
        load_config(env={"MASKFLOW_MODELS_BY_PREFIX": "input/x/"})


def test_by_prefix_from_a_toml_file(tmp_path):
    path = tmp_path / "maskflow.toml"
    path.write_text('[models.by_prefix]\n"input/products/" = "general"\n')
    assert load_config(path, env={}).models.by_prefix == {"input/products/": "general"}
