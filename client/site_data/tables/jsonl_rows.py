"""JSON Lines -> rows by line number; a line that cannot be used is counted, never the whole table.

Records end at LF only (a CR before it is whitespace, as is a CR inside a record: the JSON Lines
spec). Each non-blank line must be one JSON object. A line longer than MAX_RECORD_CHARS is counted
without being parsed. Values are bound by key, so nothing can shift;
a value becomes text (null: empty; other values as Python's str()). Any failure to parse one
line (invalid JSON, nesting too deep for the parser, an integer too long to convert, ...) counts
that line only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd

from client.site_data.tables.encodings import OVERLONG
from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.site_data.tables.rows import LINES, LONG, Caps, TextColumns

BROKEN = "line that is not valid JSON"
NOT_OBJECT = "JSON line that is not an object"
MISSING = "JSON line without a required field"


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def read_jsonl_rows(lines: Iterable[str], name: str, columns: tuple[str, ...], optional: tuple[str, ...],
                    caps: Caps) -> tuple[pd.DataFrame, Findings]:
    """Rows of `columns` + `optional` (those that any line has) and the lines counted, by line number.

    Raises SiteDataError when no line has a required column, or over the row cap (blank lines count).
    """
    found = Findings()
    wanted = columns + optional
    out = TextColumns(wanted)
    seen: set[str] = set()
    records = 0
    for number, line in enumerate(lines, start=1):
        records += 1
        caps.check_rows(name, records, LINES)
        if line == OVERLONG:
            found.add_rows(LONG, name, [number])
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except Exception:  # noqa: BLE001 - JSONDecodeError, RecursionError, ValueError (huge ints), ...
            found.add_rows(BROKEN, name, [number])
            continue
        if not isinstance(row, dict):
            found.add_rows(NOT_OBJECT, name, [number])
            continue
        seen.update(k for k in wanted if k in row)
        if any(c not in row for c in columns):
            found.add_rows(MISSING, name, [number])
            continue
        out.append(number, [_text(row.get(k)) for k in wanted])
    missing = [c for c in columns if c not in seen]
    if missing:
        lost = sum(found.values())
        unparsed = f" ({lost} line{' was' if lost == 1 else 's were'} not usable)" if found else ""
        raise SiteDataError(f"{name}: missing column(s) {missing}; expected {list(columns)}{unparsed}")
    return out.frame(columns + tuple(c for c in optional if c in seen)), found
