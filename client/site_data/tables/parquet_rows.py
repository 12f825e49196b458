"""Parquet -> rows by 1-based data row, read in batches within the site's caps.

Parquet compresses repeated values to almost nothing (a 1 MB file can hold 30 million rows, or a
few rows of one huge repeated string), so the caps are checked on what the file will become:
first the footer's row count and the needed columns' uncompressed size, then, batch by batch
with text columns kept dictionary-encoded, the length of every needed value before any value is
materialised (for a dictionary, its values' lengths taken through the row indices):
- a row whose needed text value is longer than MAX_RECORD_CHARS bytes (4 MiB, the CSV / JSON Lines
  per-record cap) is counted as LONG by its row number and never expanded;
- the text the other rows expand to counts toward the byte cap before it is built;
- the rows are then turned into text in slices of at most STEP_BYTES of values, so the memory of
  one step is bounded whatever the values (one 4 MiB value repeated 65,536 times in a batch is
  never expanded at once).
Binary that is not valid UTF-8 becomes text with U+FFFD for each undecodable byte sequence (as in
CSV; the caller counts the notes holding it), one bounded slice at a time; as replacement text can
be longer than the bytes, the text actually built is what counts toward the byte cap after each
slice. Only flat columns are read: a list, struct or map column is refused before reading (one row
of a list can hold 400 million values that RLE stores in a few bytes). Values become text through
Arrow's casts (floats without a trailing '.0', timestamps as ISO 8601); nulls become empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.site_data.tables.rows import LONG, MAX_RECORD_CHARS, Caps, TextColumns

BATCH_ROWS = 65_536
# The most of the needed columns' stored (uncompressed) bytes read in one batch, as the footer gives
# them per row group: a batch holds its pages' values (all of them where the writer fell back from a
# dictionary to plain pages, as it does for values over 1 MiB), so fewer rows are read at once where
# rows are large. Only a single row larger than this (stored bytes are capped at max_table_mb) is
# read larger.
READ_BYTES = 64 << 20
# The most value bytes turned into text in one step. Invalid UTF-8 grows up to 3x as U+FFFD, and a
# cast, a trim and a fill each copy it once, so one step costs at most a few times this.
STEP_BYTES = 16 << 20
_T = pa.types
_BYTES = (_T.is_string, _T.is_large_string, _T.is_binary, _T.is_large_binary, _T.is_fixed_size_binary)
_FLAT = (*_BYTES, _T.is_integer, _T.is_floating, _T.is_decimal, _T.is_boolean, _T.is_date, _T.is_time,
         _T.is_timestamp, _T.is_null)


def _is_bytes(kind: pa.DataType) -> bool:
    return any(test(kind) for test in _BYTES)


def _is_flat(kind: pa.DataType) -> bool:
    """A primitive Arrow type (or a dictionary of one) whose values each become one short text."""
    if _T.is_dictionary(kind):
        kind = kind.value_type
    return any(test(kind) for test in _FLAT)


def _text_length(value: bytes) -> int:
    return len(value.decode("utf-8", "replace").encode("utf-8"))


def _value_lengths(column: pa.Array) -> np.ndarray | None:
    """Bytes of text each row's value becomes (null: 0) in a text or binary column, without
    materialising any row's value: a dictionary's value lengths are taken through its indices, and
    a dictionary value that is not valid UTF-8 (at most MAX_RECORD_CHARS bytes; a longer one is
    never used) is measured as the text with U+FFFD it becomes. None for other columns."""
    if _T.is_dictionary(column.type) and _is_bytes(column.type.value_type):
        values = column.dictionary
        raw = pc.fill_null(pc.binary_length(values), 0)
        try:
            pc.cast(values, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # one value at a time, each at most 4 MiB
            raw = pa.array([n if n > MAX_RECORD_CHARS or not n else _text_length(values[i].as_py())
                            for i, n in enumerate(raw.to_pylist())], type=pa.int64())
        lengths = pc.take(raw, column.indices)
    elif _is_bytes(column.type):
        lengths = pc.binary_length(column)
        if not _T.is_string(column.type) and not _T.is_large_string(column.type):
            lengths = pc.multiply(lengths, 3)  # at most 3 bytes of U+FFFD for each undecodable byte
    else:
        return None
    return pc.fill_null(lengths, 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _decode_replacing(column: pa.Array) -> pa.Array:
    """Binary (at most one step of bytes) as text, undecodable bytes as U+FFFD (a CSV's reading)."""
    return pa.array([None if v is None else v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                     for v in column.to_pylist()], type=pa.string())


def _as_text(column: pa.Array) -> pa.Array:
    """A slice of one column (at most STEP_BYTES of values) as stripped text, nulls empty."""
    if _T.is_dictionary(column.type):
        column = column.dictionary_decode()  # the slice's rows only
    try:
        text = pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # binary that is not UTF-8
        text = _decode_replacing(column)
    return pc.utf8_trim_whitespace(pc.fill_null(text, ""))


def _kind_word(kind: pa.DataType) -> str:
    """A nested type by its kind only: struct and map field names come from the file (they could
    be anything an export wrote), so they are never repeated in a message that may be shared."""
    for test, word in ((pa.types.is_struct, "struct"), (pa.types.is_map, "map"), (pa.types.is_union, "union")):
        if test(kind):
            return word
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return "list"
    return "non-plain"


def _steps(lengths: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) row ranges whose values total at most STEP_BYTES (a longer value alone)."""
    ends = np.cumsum(lengths)
    steps, start, done = [], 0, 0
    while start < len(lengths):
        end = max(int(np.searchsorted(ends, done + STEP_BYTES, side="right")), start + 1)
        steps.append((start, end))
        start, done = end, int(ends[end - 1])
    return steps


def read_parquet_rows(path: Path, columns: tuple[str, ...], optional: tuple[str, ...], caps: Caps
                      ) -> tuple[pd.DataFrame, Findings]:
    """Rows of `columns` + `optional` (those present), indexed 1..N, and the rows counted as LONG.

    Raises SiteDataError for a missing column or a table over either cap; pyarrow's own errors
    (a damaged file) propagate for the caller to report.
    """
    footer = pq.ParquetFile(path)
    names = footer.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise SiteDataError(f"{path.name}: missing column(s) {missing}; expected {list(columns)}")
    keep = list(columns) + [c for c in optional if c in names]
    for c in keep:
        kind = footer.schema_arrow.field(c).type
        if not _is_flat(kind):
            raise SiteDataError(f"{path.name}: column {c!r} holds {_kind_word(kind)} values, not one plain value "
                                "per row; export it as text (a plain column)")
    meta = footer.metadata
    caps.check_rows(path.name, meta.num_rows)
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    sizes = [(group.num_rows, sum(group.column(j).total_uncompressed_size for j in range(group.num_columns)
                                  if group.column(j).path_in_schema.split(".")[0] in keep)) for group in groups]
    caps.check_bytes(path.name, sum(size for _, size in sizes), "its columns hold")
    batch_rows = min([BATCH_ROWS] + [max(1, READ_BYTES * rows // size) for rows, size in sizes if size])
    textual = [c for c in keep if _is_bytes(footer.schema_arrow.field(c).type)]
    reader = pq.ParquetFile(path, read_dictionary=textual)
    # First pass: every row's length, before any value is materialised; refuses the table over a cap.
    found, predicted, total = Findings(), 0, 0
    for batch, numbers, lengths, long in _measured(reader, keep, batch_rows):
        total += len(numbers)
        caps.check_rows(path.name, total)
        if long.any():  # counted by row number; their values are never expanded
            found.add_rows(LONG, path.name, numbers[long])
        # Text columns as the text they become, with 8 bytes of offsets a value.
        predicted += int(lengths[~long].sum()) + 8 * int((~long).sum()) * len(textual)
        caps.check_bytes(path.name, predicted, "its columns expand to")
    # Second pass: the rows as text, at most STEP_BYTES of values at a time.
    out, expanded = TextColumns(keep), 0
    for batch, numbers, lengths, long in _measured(reader, keep, batch_rows):
        if long.any():
            batch, numbers, lengths = batch.filter(pa.array(~long)), numbers[~long], lengths[~long]
        for start, end in _steps(lengths):
            part = batch.slice(start, end - start)
            texts = [_as_text(part.column(c)) for c in keep]
            # The text built ("False" for a bit, 8 bytes of offset a value): non-text columns count here.
            expanded += sum(t.nbytes + 4 * len(t) for t in texts)
            caps.check_bytes(path.name, expanded, "its columns expand to")
            out.extend(numbers[start:end].tolist(), texts)
    return out.frame(), found


def _measured(reader: pq.ParquetFile, keep: list[str], batch_rows: int
              ) -> Iterator[tuple[pa.RecordBatch, np.ndarray, np.ndarray, np.ndarray]]:
    """Each batch with its rows' numbers, text bytes (all needed text columns) and which are LONG."""
    first = 1
    for batch in reader.iter_batches(batch_size=batch_rows, columns=keep):
        rows = batch.num_rows
        numbers = np.arange(first, first + rows, dtype=np.int64)
        first += rows
        lengths = np.zeros(rows, dtype=np.int64)
        long = np.zeros(rows, dtype=bool)
        for column in batch.columns:
            measured = _value_lengths(column)
            if measured is not None:
                lengths += measured
                long |= measured > MAX_RECORD_CHARS
        yield batch, numbers, lengths, long
