"""Raw configuration values: conversion of TOML and environment values to a field's type
(:func:`coerce`) and checks of values built in code (:func:`check_type`).

Supported field types: bool, int, float, str, ``X | None`` of those, and ``tuple[str, ...]``
(any ``tuple[X, ...]`` of a supported X). A field of another type is a programming error and
raises TypeError when it is first coerced or checked.
"""

from __future__ import annotations

import math
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

from ..errors import ConfigError

__all__ = ["KiB", "MiB", "check_type", "coerce", "field_types"]

KiB = 1024
"""Bytes in a kibibyte."""
MiB = 1024 * KiB
"""Bytes in a mebibyte."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _type_name(typ: Any) -> str:
    """``int``, ``str or none``, ``list of str``: how a type is named in error messages."""
    origin, args = get_origin(typ), get_args(typ)
    if origin in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a) for a in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}"
    return getattr(typ, "__name__", str(typ))


def coerce(key: str, typ: Any, value: Any) -> Any:
    """Convert a TOML or environment value to the field's type, or raise :class:`ConfigError`.

    Environment values are strings: ``"true"``/``"false"`` (also 1/0, yes/no, on/off) for bool,
    decimal text for numbers, comma-separated items for lists, and an empty string for ``None``.
    An int field refuses a float with a fraction (``2.5``) instead of truncating it; numbers
    must be finite.
    """
    origin, args = get_origin(typ), get_args(typ)
    if origin in (Union, types.UnionType):
        if value is None or (type(None) in args and isinstance(value, str) and not value.strip()):
            if type(None) in args:
                return None
        for alt in args:
            if alt is type(None):
                continue
            try:
                return coerce(key, alt, value)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_type_name(typ)}, got {value!r}")
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{key}: unsupported config type {typ!r}")
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise ConfigError(key, f"expected {_type_name(typ)}, got {value!r}")
        return tuple(coerce(f"{key}[{i}]", args[0], v) for i, v in enumerate(items))
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
    elif typ is float:
        number: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is not None and math.isfinite(number):
            return number
    elif typ is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{key}: unsupported config type {typ!r}")
    raise ConfigError(key, f"expected {_type_name(typ)}, got {value!r}")


def check_type(key: str, typ: Any, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` already has the field's type (no conversion).

    Used on configs built in code (``NodeConfig(realm=5)``); an int is accepted for a float.
    """
    origin, args = get_origin(typ), get_args(typ)
    if origin in (Union, types.UnionType):
        for alt in args:
            try:
                check_type(key, alt, value)
                return
            except ConfigError:
                continue
    elif origin is tuple:
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                check_type(f"{key}[{i}]", args[0], v)
            return
    elif typ is type(None):
        if value is None:
            return
    elif typ is bool:
        if isinstance(value, bool):
            return
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return
    elif typ is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return
    elif isinstance(origin, type):  # another generic (dict[str, int]...): check the container only
        if isinstance(value, origin):
            return
    elif isinstance(typ, type):
        if isinstance(value, typ):
            return
    else:  # Literal, Any, ...: not checked here; validate() checks such fields by value
        return
    raise ConfigError(key, f"expected {_type_name(typ)}, got {value!r}")


def field_types(cls: type) -> dict[str, Any]:
    """The resolved field types of a config dataclass (cached)."""
    hints = _FIELD_TYPES.get(cls)
    if hints is None:
        hints = _FIELD_TYPES[cls] = get_type_hints(cls)
    return hints


_FIELD_TYPES: dict[type, dict[str, Any]] = {}  # bounded: one entry per config dataclass (12)
