"""Site tables (labels, manifest, labs, notes) from CSV, Parquet or JSONL, every value as text.

Undecodable UTF-8 bytes never fail a whole file: they become U+FFFD and the affected rows are
counted by the caller (see `undecodable`). Rows that cannot be parsed at all (a ragged CSV row,
a broken JSON line) are skipped and their number kept in `frame.attrs[MALFORMED]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from client.site_data.errors import SiteDataError

FORMATS = (".csv", ".parquet", ".jsonl")
REPLACEMENT = "\ufffd"


def find_table(site: Path, stem: str) -> Path | None:
    """The site's `stem` table in the first format present; two formats at once is an error."""
    present = [site / f"{stem}{ext}" for ext in FORMATS if (site / f"{stem}{ext}").is_file()]
    if len(present) > 1:
        raise SiteDataError(f"{site}: both {present[0].name} and {present[1].name} exist; keep one")
    return present[0] if present else None


MALFORMED = "malformed_rows"  # frame.attrs key: rows skipped because they could not be parsed


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows, bad = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    frame = pd.DataFrame(rows)
    frame.attrs[MALFORMED] = bad
    return frame


def _read_csv(path: Path) -> pd.DataFrame:
    bad: list[list[str]] = []
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8", encoding_errors="replace",
                        engine="python", on_bad_lines=lambda fields: bad.append(fields))
    frame.attrs[MALFORMED] = len(bad)
    return frame


def _read(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return _read_jsonl(path) if path.suffix == ".jsonl" else _read_csv(path)


def read_table(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """`columns` (+ any of `optional` present) as stripped strings; missing columns name the file."""
    try:
        frame = _read(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a damaged file
        raise SiteDataError(f"{path.name}: cannot be read ({type(exc).__name__}); export it again as "
                            f"{path.suffix[1:].upper()} with columns {list(columns)}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SiteDataError(f"{path.name}: missing column(s) {missing}; expected {list(columns)}")
    keep = list(columns) + [c for c in optional if c in frame.columns]
    malformed = frame.attrs.get(MALFORMED, 0)
    frame = frame[keep].astype(object).where(frame[keep].notna(), "")
    frame = frame.apply(lambda col: col.astype(str).str.strip()) if len(frame) else frame.astype(str)
    frame.attrs[MALFORMED] = malformed
    return frame


def undecodable(values: pd.Series) -> pd.Series:
    """True where a value held bytes that were not valid UTF-8."""
    return values.str.contains(REPLACEMENT, regex=False)
