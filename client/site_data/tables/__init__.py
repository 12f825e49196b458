"""Site tables (labels, manifest, labs, notes) read as text, every row used or counted.

Parts: `read` (find_table, read_table: the entry points), one reader per format (`csv_rows`,
`jsonl_rows`, `parquet_rows`), text `encodings`, and `rows` (the per-table caps and the text
columns rows are collected in). `find_table`, `read_table` and `undecodable` are importable from
here.
"""

from client.site_data.tables.read import find_table, read_table, undecodable

__all__ = ["find_table", "read_table", "undecodable"]
