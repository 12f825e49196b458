"""Compose configs/ with Hydra once and parse the result into an ExperimentConfig."""

from __future__ import annotations

import functools
import shlex
import threading
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
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
    try:
        with _COMPOSE, initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        raw = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose configs/ with overrides {list(overrides)}: {exc}") from exc
    assert isinstance(raw, dict)
    return {str(k): v for k, v in raw.items()}


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
