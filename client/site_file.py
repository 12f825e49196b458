"""The site-owned site.yaml (local lab codes, later the privacy policy), parsed strictly."""

from __future__ import annotations

from pathlib import Path

import yaml

from client.site_data_errors import SiteDataError
from configs.parse import ConfigError, parse_dataclass
from configs.schema import DataConfig, SiteFileConfig


def read_site_file(path: Path | None, data: DataConfig) -> SiteFileConfig:
    """Parse site.yaml (absent file: empty config); local codes must map to configured features."""
    if path is None or not path.is_file():
        return SiteFileConfig()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        cfg = parse_dataclass(SiteFileConfig, raw)
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise SiteDataError(f"{path}: {exc}; fix the site configuration file") from exc
    features = {f.code for f in data.labs}
    for i, local in enumerate(cfg.lab_codes):
        if local.feature not in features:
            raise SiteDataError(f"{path}: lab_codes[{i}].feature {local.feature!r} is not a configured "
                                f"lab feature (configured: {', '.join(sorted(features))})")
        if local.code in features:
            raise SiteDataError(f"{path}: lab_codes[{i}].code {local.code!r} is already a configured code")
    return cfg
