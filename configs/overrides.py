"""The override allow-list: what a coordinator (or a user) may write on the command line.

Overrides are plain `key=value` pairs on the keys of configs.schema.ExperimentConfig, or a group
option (`strategy=fedavg`) that names a YAML file shipped in configs/. Refused, with the key
named: Hydra's `+`/`++`/`~` forms (add, force-add, delete), `hydra.*` (it moves the config search
path onto the site's disk), `@` package forms, group options containing `/` or `..` (a path to
any YAML file), unknown keys and interpolations (`${...}`, which could read a site's
environment). Checking happens before Hydra sees the override.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from configs.parse import ConfigError

GROUPS = ("data", "model", "train", "privacy", "strategy")
_SEGMENT = re.compile(r"[A-Za-z0-9_]+")
_OPTION = re.compile(r"[A-Za-z0-9_-]+")


def check_overrides(overrides: Iterable[str], *, schema: type, config_dir: Path) -> None:
    """Raise ConfigError, naming the key, for the first override outside the allow-list."""
    for item in overrides:
        if "${" in item:
            raise ConfigError(f"override {item!r}: interpolations (${{...}}) are not accepted",
                              field=item.partition("=")[0])
        key, sep, value = item.partition("=")
        bare = key.lstrip("+~")
        if bare != key:
            known = "" if _is_schema_key(schema, bare) else f"unknown key{_did_you_mean(schema, bare) or ';'} "
            raise ConfigError(f"{bare}: {known}overrides are plain key=value on the configuration's keys "
                              "(no +, ++ or ~ forms)", field=bare)
        if not sep:
            raise ConfigError(f"override {item!r}: expected key=value", field=key)
        if key == "hydra" or key.startswith("hydra."):
            raise ConfigError(f"{key}: Hydra's own settings cannot be overridden", field=key)
        if key in GROUPS:
            _check_option(key, value, config_dir)
        elif not _is_schema_key(schema, key):
            raise ConfigError(f"{key}: unknown key{_did_you_mean(schema, key) or _known(schema, key)} "
                              "(`fedclinic run --help` lists every key)", field=key)


def _check_option(group: str, option: str, config_dir: Path) -> None:
    options = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
    if not _OPTION.fullmatch(option) or option not in options:
        raise ConfigError(f"{group}: cannot compose option {option!r}: the options are {', '.join(options)} "
                          "(files in the released configs/; no paths)", field=group)


def _did_you_mean(schema: type, key: str) -> str:
    """'; did you mean strategy.min_sites?': the schema's dotted key, as deep as `key`, closest to it
    (difflib's ratio >= 0.6), else ''."""
    depth = key.count(".")
    close = difflib.get_close_matches(key, [k for k in dotted_keys(schema) if k.count(".") == depth], n=1)
    return f"; did you mean {close[0]}?" if close else ""


def _known(schema: type, key: str) -> str:
    """' (train has: local_epochs, batch_size, ...)': the keys under the longest known prefix of
    `key` (the top level when none is known)."""
    segments, tp, prefix = key.split("."), schema, "the configuration"
    for segment in segments[:-1]:
        child = _child(tp, segment) if _SEGMENT.fullmatch(segment) else None
        if not dataclasses.is_dataclass(child):
            break
        tp, prefix = child, segment if prefix == "the configuration" else f"{prefix}.{segment}"
    names = [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []
    return f"; {prefix} has: {', '.join(names)}" if names else ""


def dotted_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, sections included: ['rounds', 'data', 'data.root',
    ...]; list items and mapping entries are not enumerated."""
    keys = []
    for f in dataclasses.fields(schema):
        keys.append(f"{prefix}{f.name}")
        child = _child(schema, f.name)
        inner = [a for a in typing.get_args(child) if a is not type(None)]
        child = inner[0] if len(inner) == 1 and dataclasses.is_dataclass(inner[0]) else child
        if dataclasses.is_dataclass(child):
            keys += dotted_keys(child, f"{prefix}{f.name}.")
    return keys


def _is_schema_key(schema: type, key: str) -> bool:
    """True when the dotted `key` addresses a field (or list item, or mapping entry) of `schema`."""
    segments = key.split(".")
    if not all(_SEGMENT.fullmatch(s) for s in segments):
        return False
    tp: Any = schema
    for segment in segments:
        tp = _child(tp, segment)
        if tp is None:
            return False
    return True


def _child(tp: Any, segment: str) -> Any:
    """The type one segment below `tp`, or None when `segment` does not exist there."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _child(inner[0], segment) if len(inner) == 1 else None
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return hints.get(segment) if segment in {f.name for f in dataclasses.fields(tp)} else None
    if origin is tuple:
        return args[0] if segment.isdigit() else None
    if origin is dict:
        return args[1]
    return None
