"""Editing a test site's site.yaml: a top-level section set as a whole (site.yaml refuses a key
given twice, so tests cannot simply append a second block)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def set_sections(site: Path, **sections: Any) -> None:
    """Replace (or add) each top-level section of `site`/site.yaml with the value given."""
    path = site / "site.yaml"
    raw = (yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None) or {}
    raw.update(sections)
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
