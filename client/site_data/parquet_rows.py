"""Parquet -> rows by 1-based data row, read in batches within the site's caps.

Parquet compresses repeated values to almost nothing (a 1 MB file can hold 30 million rows, or a
few rows of one huge repeated string), so the caps are checked on what the file will become:
first the footer's row count and the needed columns' uncompressed size, then, batch by batch
with text columns kept dictionary-encoded, the length of the text they expand to, before any
value is materialised. Values become text through Arrow's casts (floats without a trailing
'.0', timestamps as ISO 8601); nulls become empty.
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


def _expanded_bytes(column: pa.Array) -> int:
    """Bytes of text `column` holds once dictionary values are repeated for every row."""
    if pa.types.is_dictionary(column.type) and len(column):
        lengths = pc.binary_length(column.dictionary) if (pa.types.is_string(column.dictionary.type)
                                                          or pa.types.is_binary(column.dictionary.type)) else None
        if lengths is not None:
            return int(pc.sum(pc.take(lengths, column.indices)).as_py() or 0) + 8 * len(column)
    return column.nbytes


def _as_text(column: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        text = pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # nested values, binary that is not UTF-8
        text = pa.array([None if v is None else v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                         for v in column.to_pylist()], type=pa.string())
    return pc.utf8_trim_whitespace(pc.fill_null(text, ""))


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
    meta = footer.metadata
    caps.check_rows(path.name, meta.num_rows)
    stored = sum(group.column(j).total_uncompressed_size
                 for group in (meta.row_group(i) for i in range(meta.num_row_groups))
                 for j in range(group.num_columns) if group.column(j).path_in_schema.split(".")[0] in keep)
    caps.check_bytes(path.name, stored, "its columns hold")
    textual = [c for c in keep if pa.types.is_string(footer.schema_arrow.field(c).type)
               or pa.types.is_binary(footer.schema_arrow.field(c).type)]
    reader = pq.ParquetFile(path, read_dictionary=textual)
    out, expanded = TextColumns(keep), 0
    for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=keep):
        expanded += sum(_expanded_bytes(batch.column(c)) for c in keep)
        caps.check_bytes(path.name, expanded, "its columns expand to")
        caps.check_rows(path.name, len(out) + batch.num_rows)
        first = len(out) + 1
        out.extend(range(first, first + batch.num_rows), [_as_text(batch.column(c)) for c in keep])
    return out.frame(), Findings()
