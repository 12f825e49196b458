"""The site-owned site.yaml, parsed strictly: local lab codes, lab unit spellings and the lab feature
file the site's labs follow, what the data means (`data:`), the privacy policy, the validation split and what is released about it, and the limits on what a
coordinator may ask. Every problem names the file and the field (docs/site-data.md lists them all)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from client.site_data.errors import SiteDataError
from client.site_data.lab_units import configured_unit, unit_key
from configs.load import CONFIG_DIR, load_experiment
from configs.parse import ConfigError, parse_dataclass
from configs.schema import DataConfig, LabFeature, SiteFileConfig
from configs.validate import ACCOUNTANTS, validate_data_meaning

SITE_DATA_KEYS = ("window_center", "window_width", "frame_policy", "lab_window_hours")
RELEASES = ("dp", "exact")
MAX_LIFETIME_EPSILON = 100.0



class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (YAML loaders keep the last
    one silently, so a second `privacy:` or `limits:` block would drop the first one's settings)
    and refuses aliases."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        """Refuses YAML aliases (`*name`): a site.yaml never needs them, and nested aliases let a
        few hundred bytes stand for billions of values ("billion laughs")."""
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not "
                              "accepted in site.yaml; write the value out")
        return super().compose_node(parent, index)  # type: ignore[no-any-return]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"{key}: given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                                  "keep one and merge their settings")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


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
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError("<root>: expected a mapping")
        raw = dict(raw)
        data = _site_data(catalogue, raw.pop("data", None) or {})
        cfg = parse_dataclass(SiteFileConfig, raw)
        if cfg.lab_features is not None:
            data = dataclasses.replace(data, labs=_released_lab_features(cfg.lab_features))
        cfg = dataclasses.replace(cfg, data=data)
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as exc:
        raise SiteDataError(f"{path}: {exc}; fix the site configuration file") from exc
    problems = [*_policy_problems(cfg), *_validation_problems(cfg), *_limit_problems(cfg),
                *_lab_code_problems(cfg, data.labs), *_lab_unit_problems(cfg, data.labs)]
    if problems:
        raise SiteDataError(f"{path}: " + "; ".join(problems))
    return cfg


def _released_lab_features(name: str) -> tuple[LabFeature, ...]:
    """The lab features of the released data group `name` (configs/data/<name>.yaml), never a
    path: every site and the coordinator read the same file. Raises ConfigError naming the key."""
    options = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
    if name not in options:
        raise ConfigError(f"lab_features: {name!r} is not a released lab feature file (configs/data: "
                          f"{', '.join(options)}; a name, not a path)", field="lab_features")
    try:
        return load_experiment([f"data={name}"]).data.labs
    except ConfigError as exc:
        raise ConfigError(f"lab_features: configs/data/{name}.yaml does not load: {exc}",
                          field="lab_features") from exc


def _factor_ok(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _lab_code_problems(cfg: SiteFileConfig, labs: tuple[LabFeature, ...]) -> list[str]:
    """Each lab_codes entry maps a site-local code onto a configured feature, with finite factors
    > 0; a unit the catalogue already has for that feature keeps its released factor."""
    by_code, problems = {f.code: f for f in labs}, []
    features = set(by_code)
    for i, local in enumerate(cfg.lab_codes):
        if local.feature not in features:
            problems.append(f"lab_codes[{i}].feature {local.feature!r} is not a configured lab feature "
                            f"(configured: {', '.join(sorted(features))}; a dataset whose lab features are not "
                            "in the catalogue selects a lab feature file: lab_features)")
        if local.code in features:
            problems.append(f"lab_codes[{i}].code {local.code!r} is already a configured code (a unit of a "
                            "configured code goes in lab_units)")
        for unit, factor in local.conversions.items():
            if not _factor_ok(factor):
                problems.append(f"lab_codes[{i}].conversions.{unit}: the factor must be a finite number > 0 "
                                f"(got {factor})")
                continue
            feature = by_code.get(local.feature)
            released = configured_unit(unit, feature.conversions) if feature is not None else None
            if released is not None and not math.isclose(feature.conversions[released], factor, rel_tol=1e-9):
                problems.append(f"lab_codes[{i}].conversions.{unit}: {unit!r} is the catalogue's {released!r} for "
                                f"{feature.code} (factor {feature.conversions[released]:g}); a site does not "
                                "change a released factor")
    return problems


def _lab_unit_problems(cfg: SiteFileConfig, labs: tuple[LabFeature, ...]) -> list[str]:
    """Each lab_units entry names a configured feature and exactly one of a catalogue unit of it
    (`same_as`) or a finite factor > 0; it never changes a released factor, and a feature lists
    each unit once."""
    by_code, problems = {f.code: f for f in labs}, []
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(cfg.lab_units):
        where, feature = f"lab_units[{i}]", by_code.get(entry.feature)
        if feature is None:
            problems.append(f"{where}.feature {entry.feature!r} is not a configured lab feature "
                            f"(configured: {', '.join(sorted(by_code))})")
            continue
        if not entry.unit.strip():
            problems.append(f"{where}.unit must not be empty")
            continue
        if (entry.same_as is None) == (entry.factor is None):
            problems.append(f"{where}: give exactly one of same_as (a unit of {feature.code} in the catalogue: "
                            f"{', '.join(feature.conversions)}) or factor (to {feature.unit})")
            continue
        if entry.same_as is not None and entry.same_as not in feature.conversions:
            problems.append(f"{where}.same_as {entry.same_as!r} is not a unit of {feature.code} in the catalogue "
                            f"({', '.join(feature.conversions)})")
            continue
        if entry.factor is not None and not _factor_ok(entry.factor):
            problems.append(f"{where}.factor must be a finite number > 0 (got {entry.factor})")
            continue
        factor = feature.conversions[entry.same_as] if entry.same_as is not None else entry.factor
        released = configured_unit(entry.unit, feature.conversions)
        if released is not None and not math.isclose(feature.conversions[released], factor, rel_tol=1e-9):
            problems.append(f"{where}.unit {entry.unit!r} is the catalogue's {released!r} for {feature.code} "
                            f"(factor {feature.conversions[released]:g}); a site does not change a released factor")
        earlier = seen.setdefault((feature.code, unit_key(entry.unit)), i)
        if earlier != i:
            problems.append(f"{where}.unit {entry.unit!r}: {feature.code} already has this unit at "
                            f"lab_units[{earlier}]")
    return problems


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
    if not (math.isfinite(v.test_fraction) and 0 <= v.test_fraction < 1
            and (1 - v.test_fraction) * (1 - v.fraction) > 0.05):
        problems.append(f"validation.test_fraction must be in [0, 1) and leave training patients "
                        f"(got {v.test_fraction} with fraction {v.fraction})")
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
        if f.name == "max_proximal_mu":  # a float; 0 refuses any proximal term
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"limits.max_proximal_mu must be a finite number >= 0 (got {value})")
        elif value is not None and value < 1:
            problems.append(f"limits.{f.name} must be >= 1 (got {value})")
    return problems
