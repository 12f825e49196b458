"""Parquet -> rows by 1-based data row, read in batches within the site's caps.

Parquet compresses repeated values to almost nothing (a 1 MB file can hold 30 million rows, or a
few rows of one huge repeated string), so the caps are checked on what the file will become:
first the footer's row count and the needed columns' uncompressed size, then, batch by batch
with text columns kept dictionary-encoded, the length of the text they expand to, before any
value is materialised; other columns are cast to text a batch at a time (a batch of flat values
is small) and the text measured. Only flat columns are read: a list, struct or map column is
refused before reading (one row of a list can hold 400 million values that RLE stores in a few
bytes). Values become text through Arrow's casts (floats without a trailing '.0', timestamps as
ISO 8601); nulls become empty.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.site_data.rows import Caps, TextColumns

BATCH_ROWS = 65_536
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


def _dictionary_bytes(column: pa.Array) -> int | None:
    """Bytes of text a dictionary of strings holds once its values are repeated for every row."""
    if _T.is_dictionary(column.type) and _is_bytes(column.type.value_type):
        lengths = pc.binary_length(column.dictionary)
        return int(pc.sum(pc.take(lengths, column.indices)).as_py() or 0) + 8 * len(column)
    return None


def _as_text(column: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        text = pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # binary that is not UTF-8
        text = pa.array([None if v is None else v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in column.to_pylist()], type=pa.string())
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


def read_parquet_rows(path: Path, columns: tuple[str, ...], optional: tuple[str, ...], caps: Caps
                      ) -> tuple[pd.DataFrame, Findings]:
    """Rows of `columns` + `optional` (those present), indexed 1..N; Parquet has no malformed rows.

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
    stored = sum(group.column(j).total_uncompressed_size
                 for group in (meta.row_group(i) for i in range(meta.num_row_groups))
                 for j in range(group.num_columns) if group.column(j).path_in_schema.split(".")[0] in keep)
    caps.check_bytes(path.name, stored, "its columns hold")
    textual = [c for c in keep if _is_bytes(footer.schema_arrow.field(c).type)]
    reader = pq.ParquetFile(path, read_dictionary=textual)
    out, expanded = TextColumns(keep), 0
    for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=keep):
        caps.check_rows(path.name, len(out) + batch.num_rows)
        sizes = [_dictionary_bytes(batch.column(c)) for c in keep]
        expanded += sum(n for n in sizes if n is not None)
        caps.check_bytes(path.name, expanded, "its columns expand to")  # before any dictionary is expanded
        texts = [_as_text(batch.column(c)) for c in keep]
        # Other columns as the text they became ("False" for a bit, 8 bytes of offset for a null).
        expanded += sum(t.nbytes + 4 * len(t) for t, n in zip(texts, sizes) if n is None)
        caps.check_bytes(path.name, expanded, "its columns expand to")
        first = len(out) + 1
        out.extend(range(first, first + batch.num_rows), texts)
    return out.frame(), Findings()
