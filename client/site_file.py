"""The site-owned site.yaml (local lab codes, later the privacy policy), parsed strictly."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from client.site_data_errors import SiteDataError
from configs.parse import ConfigError, parse_dataclass
from configs.schema import DataConfig, SiteFileConfig


def read_site_file(path: Path | None, data: DataConfig, *, required: bool = False) -> SiteFileConfig:
    """Parse site.yaml; local codes must map to configured features, policy values be sane.

    An absent file gives the built-in defaults, unless the site named the file explicitly
    (`required`): then a missing file is an error, never a silent fallback to other budgets.
    """
    if path is None or not path.is_file():
        if required:
            raise SiteDataError(f"{path}: the site configuration named in the node config does not exist")
        return SiteFileConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        cfg = parse_dataclass(SiteFileConfig, raw)
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise SiteDataError(f"{path}: {exc}; fix the site configuration file") from exc
    _check_policy(path, cfg)
    features = {f.code for f in data.labs}
    for i, local in enumerate(cfg.lab_codes):
        if local.feature not in features:
            raise SiteDataError(f"{path}: lab_codes[{i}].feature {local.feature!r} is not a configured "
                                f"lab feature (configured: {', '.join(sorted(features))})")
        if local.code in features:
            raise SiteDataError(f"{path}: lab_codes[{i}].code {local.code!r} is already a configured code")
    return cfg


def _check_policy(path: Path, cfg: SiteFileConfig) -> None:
    """A NaN or negative cap would make every comparison pass: refuse it."""
    problems = []
    if cfg.privacy is not None:
        p = cfg.privacy
        for name in ("lifetime_epsilon", "run_epsilon", "max_grad_norm"):
            value = getattr(p, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                problems.append(f"privacy.{name} must be a finite number > 0 (got {value})")
        if not (math.isfinite(p.min_noise_multiplier) and p.min_noise_multiplier >= 0):
            problems.append(f"privacy.min_noise_multiplier must be finite and >= 0 (got {p.min_noise_multiplier})")
        if not 0 < p.lifetime_delta < 1:
            problems.append(f"privacy.lifetime_delta must be in (0, 1) (got {p.lifetime_delta})")
    v = cfg.validation
    if not (math.isfinite(v.fraction) and 0 < v.fraction < 1) or v.min_patients < 1:
        problems.append("validation.fraction must be in (0, 1) and validation.min_patients >= 1")
    if problems:
        raise SiteDataError(f"{path}: " + "; ".join(problems))
