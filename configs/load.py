"""Compose configs/ with Hydra once and parse the result into an ExperimentConfig."""

from __future__ import annotations

import functools
import shlex
import threading
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from configs.overrides import check_overrides
from configs.parse import ConfigError, parse_dataclass
from configs.schema import ExperimentConfig
from configs.validate import validate_experiment

CONFIG_DIR = Path(__file__).resolve().parent
# Hydra's compose API keeps a process-wide GlobalHydra: one composition at a time per process.
_COMPOSE = threading.Lock()


def split_overrides(text: str) -> list[str]:
    """Split an override string as a shell would: 'a=1 "b=x y"' -> ['a=1', 'b=x y'].

    Raises ConfigError for a string a shell could not split (an unclosed quote)."""
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"overrides: cannot be split into key=value words ({exc})", field="overrides") from exc


def compose_raw(overrides: Sequence[str] = ()) -> dict[str, object]:
    """Compose config.yaml + overrides into a plain, resolved mapping.

    Overrides are values on an allow-list of keys (configs.overrides), never expressions or
    paths: a site composes the coordinator's overrides, so an interpolation (`${...}`), a search
    path or a group option naming a file would reach into the site's environment and disk.
    """
    check_overrides(overrides, schema=ExperimentConfig, config_dir=CONFIG_DIR)
    _check_grammar(overrides)
    try:
        with _COMPOSE, initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise _compose_error(exc, overrides) from exc
    assert isinstance(raw, dict)
    return {str(k): v for k, v in raw.items()}


def _check_grammar(overrides: Sequence[str]) -> None:
    """Raise ConfigError, naming the key and the quoting to use, for an override Hydra's grammar
    cannot read (`data.root=/a#b`, `[a`) or reads as a sweep of several runs (`rounds=1,2`)."""
    parser = OverridesParser.create()
    for item in overrides:
        key, _, value = item.partition("=")
        quoted = f"\"{key}='{value}'\""
        try:
            parsed = parser.parse_overrides([item])[0]
        except HydraException as exc:  # OverrideParseException and the grammar's own errors
            why = str(exc).splitlines()[0]
            raise ConfigError(f"{key}: Hydra cannot read the value {value!r} ({why}); quote it as a string "
                              f"(the shell keeps the inner quotes): {quoted}", field=key) from exc
        if parsed.is_sweep_override():
            raise ConfigError(f"{key}: {value!r} is a sweep over several runs in Hydra's grammar, and a run "
                              f"takes one value: write a list as {key}=[a,b], or a string as {quoted}", field=key)


def _compose_error(exc: Exception, overrides: Sequence[str]) -> ConfigError:
    """Hydra's composition error as a ConfigError naming the override's key, without Hydra's
    advice to add keys with `+` (which fedclinic refuses): a key that check_overrides lets through
    but the composed configuration lacks is an index or mapping entry that does not exist."""
    text = str(exc)
    key = next((o.partition("=")[0] for o in overrides
                if f"'{o.partition('=')[0]}'" in text or f" {o}" in text), None)
    if key is None:
        return ConfigError(f"cannot compose configs/ with overrides {list(overrides)}: {text.splitlines()[0]}")
    return ConfigError(f"{key}: no such entry in the configuration: an override changes an entry that exists "
                       "and cannot add one (list items count from 0; `fedclinic run --help` lists the keys "
                       "and defaults)", field=key)


def load_experiment(overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The one entry point: configs/ + overrides -> validated ExperimentConfig."""
    experiment = parse_dataclass(ExperimentConfig, compose_raw(overrides))
    validate_experiment(experiment)
    return experiment


@functools.lru_cache(maxsize=1)
def released_experiment() -> ExperimentConfig:
    """The released configs/ without any override (immutable, so composed once per process)."""
    return load_experiment([])


def to_yaml(overrides: Sequence[str] = ()) -> str:
    """The resolved config as YAML (what a run folder's config.yaml holds)."""
    return OmegaConf.to_yaml(OmegaConf.create(compose_raw(overrides)))
