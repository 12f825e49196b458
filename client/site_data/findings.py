"""What was found unusable, by reason: counts to share, and where, for site IT only.

A `Findings` is a Counter of reason -> how many (rows, files or tables); that part holds no
value, identifier or path and goes into the shareable readiness report. Beside the counts it
keeps *where* each one was found, for `fedclinic site check` at the site:
- table rows as (file name, row numbers): for CSV and JSON Lines the 1-based line number in
  the file where the row starts (a CSV header is line 1), for Parquet the 1-based data row;
- files as paths relative to the site folder.

Row numbers are kept in compact integer arrays (8 bytes a row), so even a table at its row cap
can be listed in full with `--all`.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable


def row_word(source: str) -> str:
    """'line' for text tables (what an editor shows), 'row' for Parquet."""
    return "row" if source.endswith(".parquet") else "line"


class Findings(Counter[str]):
    """Counts by reason (shareable), with the rows and files behind each (local only)."""

    def __init__(self, *args: object, **kwargs: int) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rows: dict[str, dict[str, array]] = {}
        self.files: dict[str, list[str]] = {}

    def add(self, reason: str, n: int = 1) -> None:
        """Count `n` under `reason` with no location (e.g. a whole table)."""
        if n:
            self[reason] += n

    def add_rows(self, reason: str, source: str, rows: Iterable[int]) -> None:
        """Count each of `rows` (numbers as described in the module docstring) of table file `source`."""
        numbers = array("q", (int(r) for r in rows))
        if numbers:
            self[reason] += len(numbers)
            self.rows.setdefault(reason, {}).setdefault(source, array("q")).extend(numbers)

    def add_file(self, reason: str, relative_path: str) -> None:
        """Count one file, by its path relative to the site folder."""
        self[reason] += 1
        self.files.setdefault(reason, []).append(relative_path)

    def merge(self, other: Findings) -> None:
        """Add `other`'s counts and locations to these."""
        self.update(other)
        for reason, by_source in other.rows.items():
            for source, numbers in by_source.items():
                self.rows.setdefault(reason, {}).setdefault(source, array("q")).extend(numbers)
        for reason, paths in other.files.items():
            self.files.setdefault(reason, []).extend(paths)

    def nonzero(self) -> Findings:
        """A copy without zero counts."""
        out = Findings({k: v for k, v in self.items() if v})
        out.rows = {k: v for k, v in self.rows.items() if self.get(k)}
        out.files = {k: v for k, v in self.files.items() if self.get(k)}
        return out

    def locations(self, reason: str, limit: int | None) -> tuple[list[str], int]:
        """Up to `limit` (None: all) locations of `reason` as text, and how many more were found.

        Files come first, then rows as '<file> line N' ('row N' for Parquet), in file order.
        """
        files = self.files.get(reason, [])
        by_source = self.rows.get(reason, {})
        total = len(files) + sum(len(n) for n in by_source.values())
        cap = total if limit is None else min(limit, total)
        found = list(files[:cap])
        for source, numbers in by_source.items():
            if len(found) >= cap:
                break
            word = row_word(source)
            found.extend(f"{source} {word} {n}" for n in sorted(numbers)[:cap - len(found)])
        return found, total - len(found)
