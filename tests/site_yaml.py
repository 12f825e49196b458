"""Editing a test site's site.yaml: a top-level section set as a whole (site.yaml refuses a key
given twice, so tests cannot simply append a second block)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_sections(site: Path) -> dict[str, Any]:
    """`site`/site.yaml's top-level sections ({} for a site without one)."""
    path = site / "site.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}


def set_sections(site: Path, **sections: Any) -> None:
    """Replace (or add) each top-level section of `site`/site.yaml with the value given."""
    raw = {**read_sections(site), **sections}
    (site / "site.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def release_exact_metrics(site: Path) -> None:
    """Make `site` release exact validation metrics (validation.release: exact, a site that trusts
    the coordinator with them; nothing spent), keeping the rest of its validation section.

    A run ends `completed` only if some round's AUROC is defined. A DP release adds noise of std
    5 to each of a class's 10 cells, so the class total it shows has std 5 x sqrt(10) = 15.8
    patients: over the 10-30 held-out patients of a test site, a class shows fewer than one
    patient in 35-60% of releases, and a multi-round run in which every site releases with DP
    ends `failed` in several per cent of tries. One exact site (with both classes held out)
    defines every round's AUROC; the other sites still exercise the DP release."""
    set_sections(site, validation={**(read_sections(site).get("validation") or {}), "release": "exact"})
