"""Bad-input corpus entries for tables as hospitals export them (issue 9): quotes, ragged rows,
encodings, JSON lines and caps. Each replaces or rewrites a whole file, so none is combinable.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bad_inputs import BadInput, Mutation, patient, table

UNCLOSED = "quote opened and never closed (the lines after it were read again as rows)"


def _insert_line(name: str, at: int, line: str) -> Mutation:
    """Put a raw line before data row `at` (0-based), keeping every other line as it is."""
    def mutate(site: Path) -> None:
        lines = (site / name).read_text(encoding="utf-8").splitlines()
        lines.insert(1 + at, line)
        (site / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return mutate


def _labels_unclosed_quote(site: Path) -> None:
    _insert_line("labels.csv", 30, 'X-UNCLOSED,"1')(site)


def _labs_unclosed_quote(site: Path) -> None:
    pid = patient(site, 40)
    _insert_line("labs.csv", 3, f'{pid},2345-7,"5,mg/dL,2026-01-01T00:00:00')(site)


def _labs_decimal_comma(site: Path) -> None:
    pid = patient(site, 41)
    _insert_line("labs.csv", 5, f"{pid},2345-7,1,5,mg/dL,2026-01-01T00:00:00")(site)


def _labs_long_code(site: Path) -> None:
    pid = patient(site, 42)
    _insert_line("labs.csv", 7, f"{pid},{'X' * 200_000},5,mg/dL,2026-01-01T00:00:00")(site)


def _manifest_short_row(site: Path) -> None:
    _insert_line("manifest.csv", 2, patient(site, 43))(site)


def _reencode(name: str, codec: str, newline: str = "\n") -> Mutation:
    def mutate(site: Path) -> None:
        text = (site / name).read_text(encoding="utf-8")
        (site / name).write_bytes(newline.join(text.splitlines()).encode(codec) + newline.encode(codec))
    return mutate


def _bad_label_then(then: Mutation) -> Mutation:
    def mutate(site: Path) -> None:
        frame = table(site, "labels.csv")
        frame.loc[4, "label"] = "unknown"
        frame.to_csv(site / "labels.csv", index=False)
        then(site)
    return mutate


def _notes_cp1252(site: Path) -> None:
    rows = "".join(f"{patient(site, k)},Fièvre {k}°C, état stable\n".replace(", é", " é") for k in range(3))
    (site / "notes.csv").write_bytes(("patient_id,text\n" + rows).encode("cp1252"))


def _notes_jsonl_with_unparseable_lines(site: Path) -> None:
    lines = [json.dumps(r) for r in table(site, "notes.csv").to_dict("records")]
    lines += ["[" * 100_000 + "]" * 100_000, '{"patient_id": "A", "text": ' + "9" * 5000 + "}"]
    (site / "notes.csv").unlink()
    (site / "notes.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _notes_parquet_bomb(site: Path) -> None:
    (site / "notes.csv").unlink()
    rows = 40  # one 100 kB value repeated: a few kB on disk, 4 MB once expanded
    pq.write_table(pa.table({"patient_id": [patient(site, 0)] * rows, "text": ["y" * 100_000] * rows}),
                   site / "notes.parquet")
    with (site / "site.yaml").open("a", encoding="utf-8") as fh:
        fh.write("\nlimits:\n  max_table_mb: 2\n")


ENTRIES: tuple[BadInput, ...] = (
    BadInput("labels row with an unclosed quote", _labels_unclosed_quote,
             counted=("label_problems", f"labels.csv: {UNCLOSED}"), combinable=False),
    BadInput("labs row with an unclosed quote", _labs_unclosed_quote,
             counted=("table_problems", f"labs.csv: {UNCLOSED}"), combinable=False),
    BadInput("labs value with a decimal comma", _labs_decimal_comma,
             counted=("table_problems", "labs.csv: row with more fields than the header (not used)"),
             combinable=False),
    BadInput("labs code over the csv module's field limit", _labs_long_code,
             counted=("unknown_lab_codes", "a code that is not LOINC-shaped"), combinable=False),
    BadInput("manifest row missing its image path", _manifest_short_row,
             counted=("manifest_problems", "manifest.csv: row with fewer fields than the header, missing a "
                                           "required value"), combinable=False),
    BadInput("labels in UTF-16 with a BOM", _bad_label_then(_reencode("labels.csv", "utf-16")),
             counted=("label_problems", "label is not 0 or 1"), combinable=False),
    BadInput("labels in UTF-16-LE without a BOM, CR line endings",
             _bad_label_then(_reencode("labels.csv", "utf-16-le", "\r")),
             counted=("label_problems", "label is not 0 or 1"), combinable=False),
    BadInput("notes in Windows-1252", _notes_cp1252,
             counted=("table_problems", "notes.csv: 3 of 4 lines are not valid UTF-8; the file looks like "
                                        "Windows-1252 or Latin-1 text. Export it again as UTF-8 (in Excel: "
                                        "'CSV UTF-8') (table ignored)"), combinable=False),
    BadInput("notes JSON lines too deep or with a huge integer", _notes_jsonl_with_unparseable_lines,
             counted=("table_problems", "notes.jsonl: line that is not valid JSON"), combinable=False),
    BadInput("notes Parquet expanding past the site's byte cap", _notes_parquet_bomb,
             counted=("table_problems", "notes.parquet: its columns expand to more than 2 MiB, the site's "
                                        "limits.max_table_mb; export only the rows and columns the study "
                                        "needs, or raise the limit in site.yaml (table ignored)"),
             combinable=False),
)
