"""The site-owned site.yaml, parsed strictly: local lab codes, what the data means (`data:`), the
privacy policy, the validation split and what is released about it, and the limits on what a
coordinator may ask. Every problem names the file and the field (docs/site-data.md lists them all)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from client.site_data.errors import SiteDataError
from configs.parse import ConfigError, parse_dataclass
from configs.schema import DataConfig, SiteFileConfig
from configs.validate import ACCOUNTANTS, validate_data_meaning

SITE_DATA_KEYS = ("window_center", "window_width", "frame_policy", "lab_window_hours")
RELEASES = ("dp", "exact")
MAX_LIFETIME_EPSILON = 100.0


def read_site_file(path: Path | None, catalogue: DataConfig, *, required: bool = False) -> SiteFileConfig:
    """Parse site.yaml; `catalogue` is the released data configuration the site's `data:` refines.

    An absent file gives the built-in defaults, unless the site named the file explicitly
    (`required`): then a missing file is an error, never a silent fallback to other budgets.
    Raises SiteDataError naming the file and field.
    """
    if path is None or not path.is_file():
        if required:
            raise SiteDataError(f"{path}: the site configuration named in the node config does not exist")
        return SiteFileConfig(data=catalogue)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError("<root>: expected a mapping")
        raw = dict(raw)
        data = _site_data(catalogue, raw.pop("data", None) or {})
        cfg = dataclasses.replace(parse_dataclass(SiteFileConfig, raw), data=data)
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise SiteDataError(f"{path}: {exc}; fix the site configuration file") from exc
    problems = [*_policy_problems(cfg), *_validation_problems(cfg), *_limit_problems(cfg)]
    if problems:
        raise SiteDataError(f"{path}: " + "; ".join(problems))
    features = {f.code for f in catalogue.labs}
    for i, local in enumerate(cfg.lab_codes):
        if local.feature not in features:
            raise SiteDataError(f"{path}: lab_codes[{i}].feature {local.feature!r} is not a configured "
                                f"lab feature (configured: {', '.join(sorted(features))})")
        if local.code in features:
            raise SiteDataError(f"{path}: lab_codes[{i}].code {local.code!r} is already a configured code")
    return cfg


def _site_data(catalogue: DataConfig, section: Any) -> DataConfig:
    """The catalogue with site.yaml's `data:` keys applied (a key present with null means null)."""
    if not isinstance(section, Mapping):
        raise ConfigError("data: expected a mapping")
    unknown = sorted(set(section) - set(SITE_DATA_KEYS))
    if unknown:
        raise ConfigError(f"data.{unknown[0]}: unknown key (site-owned data settings: {', '.join(SITE_DATA_KEYS)})")
    merged = {**dataclasses.asdict(catalogue), **section}
    data = parse_dataclass(DataConfig, merged, "data")
    validate_data_meaning(data)
    return data


def _positive(value: float | None) -> bool:
    return value is None or (math.isfinite(value) and value > 0)


def _policy_problems(cfg: SiteFileConfig) -> list[str]:
    """A NaN or negative cap would make every comparison pass: refuse it."""
    if cfg.privacy is None:
        return []
    p, problems = cfg.privacy, []
    for name in ("run_epsilon", "max_grad_norm"):
        if not _positive(getattr(p, name)):
            problems.append(f"privacy.{name} must be a finite number > 0 (got {getattr(p, name)})")
    if not (math.isfinite(p.lifetime_epsilon) and 0 < p.lifetime_epsilon <= MAX_LIFETIME_EPSILON):
        problems.append(f"privacy.lifetime_epsilon must be in (0, {MAX_LIFETIME_EPSILON:g}] (got {p.lifetime_epsilon})")
    if not (math.isfinite(p.min_noise_multiplier) and p.min_noise_multiplier >= 0):
        problems.append(f"privacy.min_noise_multiplier must be finite and >= 0 (got {p.min_noise_multiplier})")
    if not (math.isfinite(p.lifetime_delta) and 0 < p.lifetime_delta < 1):
        problems.append(f"privacy.lifetime_delta must be in (0, 1) (got {p.lifetime_delta})")
    if p.accountant not in ACCOUNTANTS:
        problems.append(f"privacy.accountant must be one of {', '.join(ACCOUNTANTS)} (got {p.accountant!r})")
    return problems


def _validation_problems(cfg: SiteFileConfig) -> list[str]:
    v, problems = cfg.validation, []
    if not (math.isfinite(v.fraction) and 0 < v.fraction < 1) or v.min_patients < 1:
        problems.append("validation.fraction must be in (0, 1) and validation.min_patients >= 1")
    if v.release not in RELEASES:
        problems.append(f"validation.release must be one of {', '.join(RELEASES)} (got {v.release!r})")
    if not (math.isfinite(v.noise_multiplier) and v.noise_multiplier >= 0.5):
        problems.append(f"validation.noise_multiplier must be a finite number >= 0.5 (got {v.noise_multiplier})")
    if v.max_per_run < 0:
        problems.append(f"validation.max_per_run must be >= 0 (got {v.max_per_run})")
    return problems


def _limit_problems(cfg: SiteFileConfig) -> list[str]:
    problems = []
    for f in dataclasses.fields(cfg.limits):
        value = getattr(cfg.limits, f.name)
        if value is not None and value < 1:
            problems.append(f"limits.{f.name} must be >= 1 (got {value})")
    return problems
