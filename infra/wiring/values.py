"""Setting values as a TOML file or the environment spells them, turned into the declared types."""
from __future__ import annotations

import re
import typing


class ConfigError(ValueError):
    """A setting is missing, misspelled or has a bad value; the message names the key."""


def coerce(key: str, kind: typing.Any, raw: typing.Any) -> typing.Any:
    """Turn a TOML value or an environment string into the declared type."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            value = float(raw)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError("expected a finite number")
            return value
        if kind is str:
            if not isinstance(raw, (str, int, float)):
                raise ValueError("expected a string")
            return str(raw)
        if typing.get_origin(kind) is dict:
            # TOML gives a table; the environment "input/a/=general,input/b/=person"
            pairs = raw.items() if isinstance(raw, dict) else \
                [item.split("=", 1) for item in raw.split(",") if item.strip()]
            out = {}
            for pair in pairs:
                if len(pair) != 2 or not all(isinstance(v, str) and v for v in pair):
                    raise ValueError("expected prefix=name pairs")
                out[pair[0].strip()] = pair[1].strip()
            return out
        if typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, Ellipsis):
            # TOML gives an array of strings; the environment "a,b" ("" is the empty list), or
            # one item a line (a Kubernetes Secret made from a file)
            if isinstance(raw, str):
                items = [item.strip() for item in re.split(r"[,\n]", raw.strip())] if raw.strip() else []
            elif isinstance(raw, list) and all(isinstance(item, str) for item in raw):
                items = [item.strip() for item in raw]
            else:
                raise ValueError("expected a list of strings")
            if not all(items):
                raise ValueError("empty item in list")
            return tuple(items)
        if typing.get_origin(kind) is tuple:
            parts = raw.split(",") if isinstance(raw, str) else list(raw)
            values = tuple(int(p) for p in parts)
            if len(values) != len(typing.get_args(kind)):
                raise ValueError(f"expected {len(typing.get_args(kind))} comma-separated integers")
            return values
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config key {key}: bad value {raw!r} ({exc})") from None
    raise ConfigError(f"config key {key}: unsupported type {kind}")  # pragma: no cover


def split_address(address: str) -> tuple[str, int]:
    """"host:port" (or "[v6]:port") -> (host, port); ValueError names what is wrong."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {address!r}")
    return host, int(port)


