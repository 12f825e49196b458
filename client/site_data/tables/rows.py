"""A table's rows as text columns keyed by row number, within the site's caps.

Values are gathered a chunk at a time into Arrow string arrays, so a table costs about its text
plus 8 bytes per value (Arrow offsets) and 8 bytes per row number, not a Python object per value.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from client.site_data.errors import SiteDataError
from configs.schema import SiteLimits

CHUNK = 65_536  # rows per Arrow chunk: bounds the Python objects alive at once
# The most text one CSV or JSON Lines record may hold, checked on the raw text before it is parsed
# (a parser builds every field or object of a record at once: 4 MiB of `a,` is 2 million fields).
# A note is cut to data.note_max_tokens (at most 4096) tokens, so a longer record is never needed.
MAX_RECORD_CHARS = 4 << 20
LONG = f"row longer than {MAX_RECORD_CHARS >> 20} MiB (not used)"
LINES = "rows (blank lines included)"  # what the row cap counts in a CSV or JSON Lines file


@dataclass(frozen=True)
class Caps:
    """The most one table may hold (site.yaml `limits.max_table_rows`, `limits.max_table_mb`).

    `max_bytes` bounds the file's size for CSV and JSON Lines and the text the needed columns
    expand to for Parquet (a small compressed file can hold gigabytes of repeated values).
    `max_rows` bounds the records read, blank lines included for CSV and JSON Lines (a file of
    line breaks would otherwise be walked to the byte cap), and Parquet's rows.
    """

    max_rows: int
    max_bytes: int

    @classmethod
    def of(cls, limits: SiteLimits | None) -> Caps:
        """The caps of a site's limits (None: the defaults of SiteLimits)."""
        limits = limits or SiteLimits()
        return cls(limits.max_table_rows, limits.max_table_mb << 20)

    def check_rows(self, name: str, rows: int, what: str = "rows") -> None:
        """Raise SiteDataError naming the table and the cap when `rows` (described by `what`) exceeds it."""
        if rows > self.max_rows:
            raise SiteDataError(f"{name}: more than {self.max_rows} {what}, the site's limits.max_table_rows; "
                                "export only the rows of the study's patients, or raise the limit in site.yaml")

    def check_bytes(self, name: str, size: int, what: str) -> None:
        """Raise SiteDataError when `size` bytes (described by `what`) exceed the byte cap."""
        if size > self.max_bytes:
            raise SiteDataError(f"{name}: {what} more than {self.max_bytes >> 20} MiB, the site's "
                                "limits.max_table_mb; export only the rows and columns the study needs, "
                                "or raise the limit in site.yaml")


class TextColumns:
    """Stripped text values of `names`, one row at a time or an Arrow chunk at a time."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self.numbers = array("q")
        self._chunks: list[list[pa.Array]] = [[] for _ in self.names]
        self._pending: list[list[str]] = [[] for _ in self.names]

    def __len__(self) -> int:
        return len(self.numbers)

    def append(self, number: int, values: Sequence[str]) -> None:
        """One row (values in the order of `names`) found at row `number`."""
        self.numbers.append(number)
        for column, value in zip(self._pending, values):
            column.append(value)
        if len(self._pending[0]) >= CHUNK:
            self._flush()

    def extend(self, numbers: Sequence[int], arrays: Sequence[pa.Array]) -> None:
        """Rows already in Arrow string arrays (one per name, equal lengths)."""
        self._flush()
        self.numbers.extend(numbers)
        for chunks, values in zip(self._chunks, arrays):
            chunks.append(values)

    def _flush(self) -> None:
        for chunks, pending in zip(self._chunks, self._pending):
            if pending:
                chunks.append(pa.array(pending, type=pa.string()))
                pending.clear()

    def frame(self, keep: Sequence[str] | None = None) -> pd.DataFrame:
        """The rows as a DataFrame of str columns (`keep`: a subset of names), indexed by row number."""
        self._flush()
        wanted = [n for n in self.names if keep is None or n in keep]
        table = pa.table({n: pa.chunked_array(self._chunks[self.names.index(n)], type=pa.string())
                          for n in wanted})
        frame = table.to_pandas() if wanted else pd.DataFrame(index=range(len(self.numbers)))
        frame.index = pd.Index(self.numbers, dtype="int64")
        return frame
