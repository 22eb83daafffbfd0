"""Loading a :class:`~.schema.NodeConfig`: a TOML file, then ``QUICMESH_*`` environment
variables, then overrides (command-line flags), each over the previous one."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .schema import SECTIONS, NodeConfig, build_section
from .values import coerce, field_types

__all__ = ["load_config"]


def _build(data: Mapping[str, Any]) -> NodeConfig:
    hints = field_types(NodeConfig)
    top: dict[str, Any] = {}
    for key, value in data.items():
        if key in SECTIONS:
            top[key] = build_section(key, value)
        elif key in hints:
            top[key] = coerce(key, hints[key], value)
        else:
            raise ConfigError(key, "unknown setting")
    return NodeConfig(**top)


def _put(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data[section][key]`` for ``"section.key"`` (or ``data[key]``), merging sections."""
    section, dot, key = dotted.partition(".")
    if not dot:
        if isinstance(value, Mapping) and isinstance(data.get(dotted), dict):
            data[dotted].update(value)
        else:
            data[dotted] = dict(value) if isinstance(value, Mapping) else value
        return
    if "." in key:
        raise ConfigError(dotted, "unknown setting")
    table = data.setdefault(section, {})
    if not isinstance(table, dict):
        raise ConfigError(section, "must be a table")
    table[key] = value


_NOT_CONFIG_ENV = frozenset({"QUICMESH_SOAK", "QUICMESH_SIM_LARGE", "QUICMESH_HYPOTHESIS_DERANDOMIZE"})
"""``QUICMESH_*`` variables that steer tests and tools, not a node's configuration."""


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Read a TOML file (optional), then apply ``QUICMESH_*`` environment variables, then
    ``overrides`` (e.g. from command-line flags; ``None`` values are ignored).

    Environment names: ``QUICMESH_REALM`` for top-level keys, ``QUICMESH_TRANSPORT__MAX_CONNECTIONS``
    (section, two underscores, field) for nested ones; lists are comma-separated. Override keys
    are top-level names, dotted names (``"transport.max_connections"``) or a section name with a
    mapping, merged into that section. An unknown key or a bad value raises
    :class:`~quicmesh.errors.ConfigError` naming the dotted key (and the variable it came from).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    environ = os.environ if env is None else env
    sources: dict[str, str] = {}  # dotted key -> environment variable it came from
    for name, value in environ.items():
        if not name.startswith("QUICMESH_") or name in _NOT_CONFIG_ENV:
            continue
        rest = name[len("QUICMESH_") :].lower()
        section, sep, key = rest.partition("__")
        dotted = f"{section}.{key}" if sep else rest
        _put(data, dotted, value)
        sources[dotted] = name
    for key, value in (overrides or {}).items():
        if value is not None:
            _put(data, key, value)
            sources.pop(key, None)
    try:
        return _build(data)
    except ConfigError as exc:
        var = sources.get(exc.key.split("[", 1)[0])
        if var is None:
            raise
        raise ConfigError(exc.key, f"{exc.message} (from {var})") from None
