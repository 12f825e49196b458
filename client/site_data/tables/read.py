"""Site tables (labels, manifest, labs, notes) from CSV, Parquet or JSON Lines, every value as text.

`read_table` returns the rows it could read, indexed by where each starts in the file (for CSV
and JSON Lines the 1-based line number, the header being line 1; for Parquet the 1-based data
row), and a Findings of the rows it could not use, by reason and row number. Rows in the file =
rows returned + rows in the Findings (blank lines are not rows, but count toward the row cap; a
record longer than MAX_RECORD_CHARS is counted, unparsed). How each format is read:
`csv_rows`, `jsonl_rows`, `parquet_rows`; text encodings: `encodings`; caps: `rows.Caps`.

Undecodable UTF-8 bytes never fail a whole file: they become U+FFFD and the affected rows are
counted by the caller (see `undecodable`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from client.site_data.tables.csv_rows import read_csv_rows
from client.site_data.tables.encodings import REPLACEMENT, Utf8Tally, open_text
from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.site_data.tables.jsonl_rows import read_jsonl_rows
from client.site_data.tables.parquet_rows import read_parquet_rows
from client.site_data.tables.rows import MAX_RECORD_CHARS, Caps
from configs.schema import SiteLimits

FORMATS = (".csv", ".parquet", ".jsonl")


def find_table(site: Path, stem: str) -> Path | None:
    """The site's `stem` table in the first format present; two formats at once is an error."""
    present = [site / f"{stem}{ext}" for ext in FORMATS if (site / f"{stem}{ext}").is_file()]
    if len(present) > 1:
        raise SiteDataError(f"{site}: both {present[0].name} and {present[1].name} exist; keep one")
    return present[0] if present else None


def _read_text(path: Path, columns: tuple[str, ...], optional: tuple[str, ...], caps: Caps
               ) -> tuple[pd.DataFrame, Findings]:
    size = path.stat().st_size
    caps.check_bytes(path.name, size, "the file holds")
    jsonl = path.suffix == ".jsonl"
    stream, codec = open_text(path, newline="\n" if jsonl else "")  # JSON Lines: records end at LF only
    with stream:
        lines = Utf8Tally(stream, codec, limit=MAX_RECORD_CHARS, cr_ends=not jsonl)
        if jsonl:
            frame, found = read_jsonl_rows(lines, path.name, columns, optional, caps)
        else:
            frame, found = read_csv_rows(lines, path.name, columns, optional, caps, size)
    lines.check(path)
    return frame, found


def read_table(path: Path, columns: tuple[str, ...], optional: tuple[str, ...] = (), *,
               limits: SiteLimits | None = None) -> tuple[pd.DataFrame, Findings]:
    """`columns` (+ any of `optional` present) as stripped str columns indexed by row number, and
    the rows not used by reason (reasons name the table file, e.g. 'labs.csv: ...').

    Raises SiteDataError, naming the file and what to do, when the file cannot be read, lacks a
    column, is in an encoding that is refused, or exceeds `limits` (max_table_rows, max_table_mb;
    None: SiteLimits' defaults).
    """
    caps = Caps.of(limits)
    try:
        if path.suffix == ".parquet":
            frame, found = read_parquet_rows(path, columns, optional, caps)
        else:
            frame, found = _read_text(path, columns, optional, caps)
    except SiteDataError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow and the OS raise many types for a damaged file
        raise SiteDataError(f"{path.name}: cannot be read ({type(exc).__name__}); export it again as "
                            f"{path.suffix[1:].upper()} with columns {list(columns)}") from exc
    named = Findings()
    for reason, by_source in found.rows.items():
        for source, numbers in by_source.items():
            named.add_rows(f"{path.name}: {reason}", source, numbers)
    return frame, named


def undecodable(values: pd.Series) -> pd.Series:
    """True where a value held bytes that were not valid UTF-8."""
    return values.str.contains(REPLACEMENT, regex=False)
