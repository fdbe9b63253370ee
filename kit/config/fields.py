"""Typed fields: every config value is checked against its annotation, one place for the CLI and the Python API.

A bad value gets one line that names the field, the type it wants and the value it got, raised while the config
is built, before anything heavy loads.
"""
from __future__ import annotations

import dataclasses
import types
import typing


class ConfigError(ValueError):
    """A config value of the wrong type or out of range (one line: field, what is wanted, what was given)."""


def _options(want) -> tuple[list, bool]:
    """The non-None types an annotation allows, and whether None is allowed."""
    if typing.get_origin(want) in (typing.Union, types.UnionType):
        args = typing.get_args(want)
        return [a for a in args if a is not type(None)], type(None) in args
    return [want], False


def describe(want) -> str:
    """`int`, `float or None`, ... for an annotation."""
    kinds, nullable = _options(want)
    return " or ".join([getattr(k, "__name__", str(k)) for k in kinds] + (["None"] if nullable else []))


def _coerce(value, kind):
    """`(ok, value)`: the value if it is of `kind` (an int where a float is wanted becomes a float)."""
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    return isinstance(value, kind), value


def check_types(obj) -> None:
    """Check (and, int to float, coerce) every field of the frozen dataclass `obj` against its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, (kinds, nullable) = getattr(obj, f.name), _options(hints[f.name])
        if value is None and nullable:
            continue
        for kind in kinds:
            ok, coerced = _coerce(value, kind)
            if ok:
                object.__setattr__(obj, f.name, coerced)
                break
        else:
            raise ConfigError(f"{type(obj).__name__}.{f.name} must be {describe(hints[f.name])}, got {value!r}")


def parse(cls, name: str, raw: str, where: str):
    """The value of field `name` of dataclass `cls` from the command-line string `raw` (`where` names it)."""
    hints = typing.get_type_hints(cls)
    if name not in hints:
        raise ConfigError(f"{where}: no field {name!r}; fields there: {sorted(hints)}")
    kinds, nullable = _options(hints[name])
    if nullable and raw.strip().lower() in ("none", "null"):
        return None
    for kind in kinds:
        try:
            if kind is bool and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
                return raw.strip().lower() in ("true", "1", "yes")
            if kind in (int, float) and raw.strip():
                return kind(raw)
            if kind is str and raw != "":
                return raw
        except ValueError:
            continue
    raise ConfigError(f"{where} must be {describe(hints[name])}, got {raw!r}")


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition`."""
    if not condition:
        raise ConfigError(message)
