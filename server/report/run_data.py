"""A run folder as the report reads it: summary.json (any schema, keys may be missing) and config.yaml."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

SUMMARY, CONFIG, REPORT, EVENTS = "summary.json", "config.yaml", "report.html", "events"
MISSING = "-"


class NotARunFolder(ValueError):
    """The folder is not a run folder (no readable summary.json); the message names it."""


@dataclass(frozen=True)
class RunData:
    """summary.json as a dict (never validated: older schemas lack keys) and config.yaml's text."""

    folder: Path
    summary: dict[str, Any]
    config_text: str | None

    @property
    def rounds(self) -> list[dict[str, Any]]:
        rounds = self.summary.get("rounds")
        return [r for r in rounds if isinstance(r, dict)] if isinstance(rounds, list) else []

    @property
    def sites(self) -> dict[str, dict[str, Any]]:
        sites = self.summary.get("sites")
        return {str(k): v for k, v in sites.items() if isinstance(v, dict)} if isinstance(sites, dict) else {}

    def site_names(self) -> list[str]:
        """Every site named anywhere in the summary, sorted."""
        names = set(self.sites)
        for r in self.rounds:
            names |= set(as_dict(r.get("epsilon")))
            names |= set(as_dict(as_dict(r.get("metrics")).get("sites")))
        for sites in as_dict(self.summary.get("participation")).values():
            names |= set(as_dict(sites))
        return sorted(str(n) for n in names)

    def flower_run_ids(self) -> list[str]:
        """Flower's run ids (schema 2: a list, one per start; schema 1: `flower_run_id`)."""
        ids = self.summary.get("flower_run_ids")
        if isinstance(ids, list):
            return [str(i) for i in ids]
        one = self.summary.get("flower_run_id")
        return [str(one)] if one is not None else []


def load_run(folder: Path) -> RunData:
    """Read `folder`/summary.json and `folder`/config.yaml (optional).

    Raises NotARunFolder when the folder or its summary.json is missing or not a JSON object.
    """
    path = folder / SUMMARY
    if not folder.is_dir():
        raise NotARunFolder(f"{folder}: no such folder (a run folder is runs/<run-id>/)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotARunFolder(f"{folder}: not a run folder (no {SUMMARY}; a run writes it after its first "
                            "round)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotARunFolder(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(summary, dict):
        raise NotARunFolder(f"{path}: not a run summary (expected a JSON object)")
    config = folder / CONFIG
    try:
        config_text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        config_text = None
    return RunData(folder, summary, config_text)


def number(value: object) -> float | None:
    """A finite number, or None for anything else (missing, null, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: object, digits: int = 3) -> str:
    """A value as the report shows it: numbers rounded, missing as '-'."""
    if value is None or value == "" or value == []:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return MISSING
        return f"{value:g}" if 0 < abs(value) < 10 ** -digits else f"{value:.{digits}f}"  # δ = 1e-05
    if isinstance(value, list):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def started_at(run_id: str) -> datetime | None:
    """The UTC start time encoded in a run id (YYYYmmdd-HHMMSS-xxxx, server.run_folder.new_run_id)."""
    try:
        return datetime.strptime(run_id[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def as_dict(value: object) -> dict[Any, Any]:
    """`value` if it is a dict, else an empty one (older or damaged summaries)."""
    return value if isinstance(value, dict) else {}
