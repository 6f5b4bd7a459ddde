"""Where setting values come from: a TOML file, ``MASKFLOW_<SECTION>_<KEY>`` variables, and
secret files named by ``MASKFLOW_<SECTION>_<KEY>_FILE`` (the Docker / Kubernetes secrets
convention), and the way back: the variables that reproduce a config in a child process.

A key may come from a file when its field's metadata says ``from_file`` (infra/wiring/config.py
marks the credentials); a ``secret`` key is also left out of every repr.  A file's text is the
value with its surrounding whitespace stripped; for a list (``api.tokens``) each line is an
item, blank lines and ``#`` comments skipped.  Paths and key names may appear in messages,
never a value read from a secret file.
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path

from maskflow.infra.wiring.values import ConfigError, coerce

ENV_PREFIX = "MASKFLOW_"
CONFIG_FILE_ENV = "MASKFLOW_CONFIG"
FILE_SUFFIX = "_FILE"

# Field metadata: a credential may be read from a file; a secret is a credential never shown.
CREDENTIAL = {"from_file": True}
SECRET = {"from_file": True, "secret": True}


def field_flags(section: type) -> dict[str, Mapping]:
    return {f.name: f.metadata for f in dataclasses.fields(section)}


def secret_keys(sections: Mapping[str, type]) -> list[str]:
    """Every `section.key` whose value is a secret."""
    return [f"{name}.{key}" for name, cls in sections.items()
            for key, meta in field_flags(cls).items() if meta.get("secret")]


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def read_secret_file(variable: str, path: str, kind: typing.Any) -> typing.Any:
    """The raw value a secret file holds (a string, or a list of lines for a list key)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"environment variable {variable}: cannot read {path}: "
                          f"{exc.strerror or exc}") from None
    if typing.get_origin(kind) is tuple:
        return [line.strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    return text.strip()


def read(sections: Mapping[str, type], path: str | None,
         env: Mapping[str, str]) -> dict[str, dict[str, typing.Any]]:
    """Each section's values, by key: the TOML file's, then the environment's on top."""
    values: dict[str, dict[str, typing.Any]] = {name: {} for name in sections}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path}: not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for section, table in data.items():
            if section not in sections or not isinstance(table, dict):
                raise ConfigError(f"config file {path}: unknown section [{section}]")
            hints = typing.get_type_hints(sections[section])
            flags = field_flags(sections[section])
            for key, raw in table.items():
                if key not in hints:
                    raise ConfigError(f"config key {section}.{key}: unknown key")
                values[section][key] = _coerce(section, key, hints[key], raw, flags[key], f"in {path}")

    from_files: set[tuple[str, str]] = set()
    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_FILE_ENV:
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        hints = typing.get_type_hints(sections[section]) if section in sections else {}
        flags = field_flags(sections[section]) if section in sections else {}
        if key not in hints and name.endswith(FILE_SUFFIX):
            key = key[:-len(FILE_SUFFIX)]
            if key not in hints or not flags[key].get("from_file"):
                raise ConfigError(f"environment variable {name}: {section}.{key} cannot be read "
                                  f"from a file (only credentials can)")
            if env_name(section, key) in env:
                raise ConfigError(f"environment variables {env_name(section, key)} and {name}: "
                                  f"set one of them, not both")
            raw = read_secret_file(name, raw, hints[key])
            from_files.add((section, key))
        elif key not in hints:
            raise ConfigError(f"environment variable {name}: no such config key {section}.{key}")
        where = f"in the file {name} names" if (section, key) in from_files else f"in {name}"
        values[section][key] = _coerce(section, key, hints[key], raw, flags[key], where)
    return values


def _coerce(section: str, key: str, kind: typing.Any, raw: typing.Any, flags: Mapping, where: str) -> typing.Any:
    try:
        return coerce(f"{section}.{key}", kind, raw)
    except ConfigError:
        if flags.get("from_file"):  # never echo a credential
            raise ConfigError(f"config key {section}.{key}: malformed value {where}") from None
        raise


def to_env(cfg: typing.Any, files: Mapping[str, str | Path] | None = None) -> dict[str, str]:
    """The variables that reproduce `cfg`; a key in `files` ("section.key" -> path) is passed as
    ``<VARIABLE>_FILE=path`` instead of its value."""
    files = files or {}
    out: dict[str, str] = {}
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        for f in dataclasses.fields(sub):
            name = env_name(section.name, f.name)
            if f"{section.name}.{f.name}" in files:
                out[name + FILE_SUFFIX] = str(files[f"{section.name}.{f.name}"])
                continue
            value = getattr(sub, f.name)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, dict):
                text = ",".join(f"{k}={v}" for k, v in value.items())
            else:
                text = str(value)
            out[name] = text
    return out
