"""CSV records -> rows by starting line number; every record is used or counted, none vanishes.

Parsed with the stdlib csv module (excel dialect, strict, any field size up to the file's own),
which sees each record's lines, so a row is never dropped without a reason:
- A quote opened and never closed would swallow the rest of the file into one field. When a
  record spans several lines and the strict parser rejects it (the file ends inside the quote,
  or a later quote closes it with text right after) or it has the wrong number of fields, its
  first line is counted (UNCLOSED) and the lines after it are read again as rows. Multi-line
  quoted notes that are well formed are kept; an unclosed quote on the last line is counted too.
  A one-line record with text after a closing quote (`"ok"x`) is read leniently, as Excel does.
- Values stay bound to their header names. A row with more fields than the header is counted
  and not used (an unquoted comma, e.g. a decimal comma, would otherwise shift or cut a value),
  unless the extra fields are all empty (trailing commas). A row with fewer fields is used when
  every required column is present (missing optional values are empty), else counted.
- Blank and whitespace-only lines are not rows (they count toward the row cap). NUL bytes and
  CR-only line endings are data and line breaks as the csv module reads them.
- A record longer than MAX_RECORD_CHARS is not parsed (the parser would build every field at
  once): a one-line record is counted (LONG); a record that runs past it over several lines is a
  quote left open, counted and its lines after the first read again as rows (UNCLOSED).
Known limit: an unclosed quote closed by a later quote at the end of a field (`...,"` then
`x",`) with the right number of fields reads as one multi-line value.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import pandas as pd

from client.site_data.tables.encodings import OVERLONG
from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.site_data.tables.rows import LINES, LONG, MAX_RECORD_CHARS, Caps, TextColumns

UNCLOSED = "quote opened and never closed (the lines after it were read again as rows)"
EXTRA = "row with more fields than the header (not used)"
SHORT = "row with fewer fields than the header, missing a required value"
REJECTED = "row the CSV parser rejects"


class _TooLong(Exception):
    """The current record's text passed MAX_RECORD_CHARS (raised through the csv reader)."""


class _Lines:
    """The file's lines, with lines put back to be read again, and the lines of the current record."""

    def __init__(self, lines: Iterable[str], name: str, caps: Caps) -> None:
        self._lines: Iterator[str] = iter(lines)
        self._again: deque[str] = deque()
        self.taken: list[str] = []
        self._chars = 0
        self.blank = 0  # blank lines skipped before the current record
        self.counted = 0  # records and blank lines read, for the row cap
        self._name, self._caps = name, caps

    def __iter__(self) -> _Lines:
        return self

    def next_record(self) -> None:
        """Start gathering the lines of the next record."""
        self.taken, self._chars, self.blank = [], 0, 0

    def count(self) -> None:
        """One more record (or blank line) toward the row cap."""
        self.counted += 1
        if self.counted > self._caps.max_rows:
            self._caps.check_rows(self._name, self.counted, LINES)

    def __next__(self) -> str:
        line = self._again.popleft() if self._again else next(self._lines)
        if not self.taken:
            while line.isspace():  # a blank line between records: not a row, skipped here cheaply
                self.blank += 1
                self.count()
                line = self._again.popleft() if self._again else next(self._lines)
        self.taken.append(line)
        self._chars += len(line)
        if line == OVERLONG or self._chars > MAX_RECORD_CHARS:
            raise _TooLong
        return line

    def read_again(self, lines: list[str]) -> None:
        self._again.extendleft(reversed(lines))


def _field_count(fields: Sequence[str]) -> int:
    """Fields up to the last non-empty one (trailing empty fields are harmless)."""
    n = len(fields)
    while n and not fields[n - 1].strip():
        n -= 1
    return n


def read_csv_rows(lines: Iterable[str], name: str, columns: tuple[str, ...], optional: tuple[str, ...],
                  caps: Caps, size: int) -> tuple[pd.DataFrame, Findings]:
    """Rows of `columns` + `optional` (those in the header) and the records counted, by line.

    `size` is the file's size in bytes (no field can be longer). Raises SiteDataError when a
    required column is missing or the table has more records (blank lines included) than the row cap.
    """
    source = _Lines(lines, name, caps)
    found = Findings()
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), min(size, MAX_RECORD_CHARS) + 1))
    try:
        reader = csv.reader(source, strict=True)
        last, header, out, need = 0, None, None, 0
        while True:
            source.next_record()
            try:
                fields, rejected, long = next(reader), False, False
            except StopIteration:
                break
            except csv.Error:
                fields, rejected, long = [], True, False
            except _TooLong:
                fields, rejected, long = [], True, True
            last += source.blank
            taken, start = source.taken, last + 1
            if long and len(taken) == 1:  # one line over the cap, never parsed
                found.add_rows(LONG, name, [start])
                last = start
                source.count()
                continue
            if len(taken) > 1 and (rejected or _runs_on(fields, header)):  # a quote left open
                found.add_rows(UNCLOSED, name, [start])
                source.read_again(taken[1:])
                last = start
                source.count()
                continue
            last += len(taken)
            if rejected and taken[0].count('"') % 2:  # the file ends inside this line's quote
                found.add_rows(UNCLOSED, name, [start])
                source.count()
                continue
            if rejected:  # a quote closed with text after it: one line, read leniently
                fields, rejected = _lenient(taken[0])
            if len(fields) <= 1 and not rejected and not (fields and fields[0].strip()):
                source.count()  # a blank line is not a row, but counts toward the cap
                continue
            if header is None and not rejected:
                header = [f.strip() for f in fields]
                positions = _positions(name, header, columns, optional)
                out = TextColumns([header[p] for p in positions])
                need = 1 + max(positions[: len(columns)])
                continue
            source.count()
            if rejected or out is None:
                found.add_rows(REJECTED, name, [start])
            elif _field_count(fields) > len(header):  # type: ignore[arg-type]
                found.add_rows(EXTRA, name, [start])
            elif len(fields) < need:
                found.add_rows(SHORT, name, [start])
            else:
                out.append(start, [fields[p].strip() if p < len(fields) else "" for p in positions])
    finally:
        csv.field_size_limit(old_limit)
    if out is None:
        raise SiteDataError(f"{name}: no header row; export it with the header {list(columns)}")
    return out.frame(), found


def _runs_on(fields: list[str], header: list[str] | None) -> bool:
    """A multi-line record whose field count is not the header's swallowed rows."""
    return header is not None and (_field_count(fields) > len(header) or len(fields) < len(header))


def _lenient(line: str) -> tuple[list[str], bool]:
    """One line read as Excel does (a stray quote after a closing quote is kept as text)."""
    try:
        return next(csv.reader([line]), []), False
    except csv.Error:
        return [], True


def _positions(name: str, header: list[str], columns: tuple[str, ...], optional: tuple[str, ...]) -> list[int]:
    missing = [c for c in columns if c not in header]
    if missing:
        if any("\x00" in h or "\ufffd" in h for h in header):
            raise SiteDataError(f"{name}: the header is not readable UTF-8 text; export it again as UTF-8 "
                                f"with columns {list(columns)}")
        raise SiteDataError(f"{name}: missing column(s) {missing}; expected {list(columns)}")
    return [header.index(c) for c in columns] + [header.index(c) for c in optional if c in header]
