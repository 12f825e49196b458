"""Strict conversion of plain mappings into the frozen dataclasses of configs.schema."""

from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# A bad value is shown in the error, bounded: YAML aliases let a 600-byte file hold 10^9 shared
# leaves, which a plain repr() would walk.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 2, 60, 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of bounds.

    `field` names the offending key (dotted path) when one is known. The message is built only
    from configuration values and site limits, never from patient data, so a site may return it
    to the coordinator that sent the configuration.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field if field is not None else message.partition(":")[0].strip()


def parse_dataclass(cls: type[T], raw: Any, path: str = "") -> T:
    """Build `cls` from `raw`, rejecting unknown keys and wrong types; errors name the field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key (known: {', '.join(sorted(fields))})")
    values: dict[str, Any] = {}
    for name, fld in fields.items():
        where = _join(path, name)
        if name not in raw:
            if fld.default is not dataclasses.MISSING or fld.default_factory is not dataclasses.MISSING:
                continue
            raise ConfigError(f"{where}: missing required value")
        values[name] = _convert(hints[name], raw[name], where)
    return cls(**values)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if value is None:
        raise ConfigError(f"{where}: must be set (got null)")
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, where)  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{where}: unsupported schema type {tp!r}")
    raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {_SHORT.repr(value)[:100]}")
