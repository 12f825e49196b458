"""Writers for a site's tabular files: CSV (optionally with raw non-UTF-8 cells), Parquet, JSONL."""

from __future__ import annotations

import csv
import io
import json
import pathlib
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

Cell = str | bytes | int


def write_csv(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a utf-8 CSV with '\\n' line endings."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _csv_line(cells: Sequence[object]) -> bytes:
    """One CSV line, utf-8 encoded, '\\n' terminated."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue().encode("utf-8")


def _raw_line(cells: Sequence[Cell]) -> bytes:
    """A CSV line where `bytes` cells are written verbatim inside quotes (may be invalid UTF-8)."""
    parts = [b'"' + c.replace(b'"', b'""') + b'"' if isinstance(c, bytes)
             else _csv_line([c]).rstrip(b"\n") for c in cells]
    return b",".join(parts) + b"\n"


def write_csv_bytes(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[Cell]]) -> None:
    """Write a CSV in binary so that `bytes` cells (e.g. b'\\xff\\xfe broken') land unchanged."""
    lines = [_csv_line(header)]
    for row in rows:
        lines.append(_raw_line(row) if any(isinstance(c, bytes) for c in row) else _csv_line(row))
    path.write_bytes(b"".join(lines))


def write_parquet(path: pathlib.Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Write a Parquet file whose columns are all strings (bad values survive as text)."""
    columns = {name: pa.array([str(r[j]) for r in rows], type=pa.string()) for j, name in enumerate(header)}
    pq.write_table(pa.table(columns), path)


def write_jsonl(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """One JSON object per line, keys in `header` order, UTF-8, '\\n' line endings."""
    lines = [json.dumps(dict(zip(header, row)), ensure_ascii=False) + "\n" for row in rows]
    path.write_bytes("".join(lines).encode("utf-8"))
