"""Tables as hospitals export them: every row used or counted by line, encodings, caps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from client.site_data.errors import SiteDataError
from client.site_data.labels import UNPARSEABLE_TIME, read_labels
from client.site_data.loader import load_site
from client.site_data.notes import encode
from client.site_data.tables import read_table
from configs.schema import ExperimentConfig, SiteFileConfig, SiteLimits
from synth.hospitals import write_hospitals

COLS = ("patient_id", "text")


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def rows_of(found) -> dict[str, list[int]]:  # noqa: ANN001
    return {reason.split(": ", 1)[1]: sorted(n for nums in by.values() for n in nums)
            for reason, by in found.rows.items()}


def test_unclosed_quote_costs_one_row_and_the_rows_after_it_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.csv", 'patient_id,text\nA1,fine\nA2,"Sats 94% on air\nA3,ok\nA4,"multi\nline",\nA5,end\n')
    frame, found = read_table(path, COLS)
    assert frame.index.tolist() == [2, 4, 5, 7] and frame["patient_id"].tolist() == ["A1", "A3", "A4", "A5"]
    assert frame.loc[5, "text"] == "multi\nline"  # a closed multi-line note is one row
    assert rows_of(found) == {"quote opened and never closed (the lines after it were read again as rows)": [3]}


@pytest.mark.parametrize("ending", ["\r", "\r\n", "\n"])
def test_line_numbers_follow_the_file_with_any_line_ending_and_blank_lines(tmp_path: Path, ending: str) -> None:
    lines = ["patient_id,label", "A1,1", "", "   ", "A2,0", "A3,1,extra", "A4", 'A5,"0"', "A6,1,,"]
    frame, found = read_table(write(tmp_path, "labels.csv", ending.join(lines) + ending), ("patient_id", "label"))
    assert dict(zip(frame.index, frame["label"])) == {2: "1", 5: "0", 8: "0", 9: "1"}
    assert rows_of(found) == {"row with more fields than the header (not used)": [6],
                              "row with fewer fields than the header, missing a required value": [7]}


def test_short_row_is_used_when_only_an_optional_column_is_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "labels.csv", "patient_id,label,index_time\nA1,1\nA2,0,2026-01-01\n")
    frame, found = read_table(path, ("patient_id", "label"), optional=("index_time",))
    assert frame["index_time"].tolist() == ["", "2026-01-01"] and not found


def test_long_fields_nul_bytes_and_mid_field_quotes_are_data(tmp_path: Path) -> None:
    long = "word " * 60_000  # 300 000 characters: past the csv module's default 131 072 limit
    text = f'patient_id,text\nA1,{long}\nA2,he said "no" twice\nA3,a\x00b\n'
    frame, found = read_table(write(tmp_path, "notes.csv", text), COLS)
    assert frame["text"].tolist() == [long.strip(), 'he said "no" twice', "a\x00b"] and not found


@pytest.mark.parametrize("codec", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_unicode_encodings_are_decoded(tmp_path: Path, codec: str) -> None:
    text = "patient_id,text\nA1,Fièvre 38°C, µmol\nA2,ok\n".replace(", µ", " µ")
    frame, found = read_table(write(tmp_path, "notes.csv", text.encode(codec)), COLS)
    assert frame["text"].tolist() == ["Fièvre 38°C µmol", "ok"] and not found


def test_windows_1252_is_refused_by_name_and_a_stray_byte_is_counted_by_the_caller(tmp_path: Path) -> None:
    cp1252 = "patient_id,text\n" + "".join(f"A{i},Température {i}°C, état stable\n".replace(", é", " é")
                                             for i in range(5))
    with pytest.raises(SiteDataError, match=r"notes.csv: 5 of 6 lines are not valid UTF-8.*Windows-1252.*UTF-8"):
        read_table(write(tmp_path, "notes.csv", cp1252.encode("cp1252")), COLS)
    one = ("patient_id,text\nA1,café\nA2,ok\n").encode("utf-8") + "A3,d\xe9j\xe0\n".encode("cp1252")
    frame, _ = read_table(write(tmp_path, "notes.csv", one), COLS)
    assert frame["text"].tolist() == ["café", "ok", "d\ufffdj\ufffd"]


def test_excel_workbook_and_unreadable_header_name_the_problem_not_the_columns(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match="labels.csv: is a ZIP or Excel workbook, not text; save it as 'CSV UTF-8'"):
        read_table(write(tmp_path, "labels.csv", b"PK\x03\x04" + bytes(200)), ("patient_id", "label"))
    with pytest.raises(SiteDataError, match="header is not readable UTF-8"):
        read_table(write(tmp_path, "labels.csv", b"\xff\xfd\x00x,y\nA,1\n"), ("patient_id", "label"))


def test_any_failure_on_one_json_line_counts_that_line(tmp_path: Path) -> None:
    lines = [json.dumps({"patient_id": "A1", "text": "ok"}), "{broken", "[" * 100_000 + "]" * 100_000,
             '{"patient_id": "A2", "text": ' + "9" * 5000 + "}", '["not", "an object"]', "",
             json.dumps({"patient_id": "A3"}), json.dumps({"patient_id": "A4", "text": None, "x": [1]})]
    frame, found = read_table(write(tmp_path, "notes.jsonl", "\n".join(lines) + "\n"), COLS)
    assert dict(zip(frame.index, frame["patient_id"])) == {1: "A1", 8: "A4"} and frame.loc[8, "text"] == ""
    assert rows_of(found) == {"line that is not valid JSON": [2, 3, 4], "JSON line that is not an object": [5],
                              "JSON line without a required field": [7]}


def test_parquet_rows_are_numbered_from_one_and_values_become_text(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"patient_id": ["A1", None, " A3 "], "label": [1.0, 0.0, None]}), path)
    frame, found = read_table(path, ("patient_id", "label"))
    assert frame.index.tolist() == [1, 2, 3] and not found
    assert frame["patient_id"].tolist() == ["A1", "", "A3"] and frame["label"].tolist() == ["1", "0", ""]


def test_caps_refuse_a_table_by_name_and_say_what_to_do(tmp_path: Path) -> None:
    small = SiteLimits(max_table_rows=3, max_table_mb=1)
    csv_path = write(tmp_path, "labs.csv", "patient_id,text\n" + "A,b\n" * 4)
    with pytest.raises(SiteDataError, match=r"labs.csv: more than 3 rows \(blank lines included\), the site's limits.max_table_rows; "
                                               r"export"):
        read_table(csv_path, COLS, limits=small)
    big = write(tmp_path, "notes.csv", "patient_id,text\nA," + "x" * (1 << 20) + "\n")
    with pytest.raises(SiteDataError, match=r"notes.csv: the file holds more than 1 MiB, the site's limits.max_table_mb"):
        read_table(big, COLS, limits=small)
    bomb = tmp_path / "notes.parquet"  # 20 rows sharing one 100 kB value: tiny on disk, 2 MB as text
    pq.write_table(pa.table({"patient_id": ["A"] * 20, "text": ["y" * 100_000] * 20}), bomb)
    assert bomb.stat().st_size < 20_000
    with pytest.raises(SiteDataError, match=r"notes.parquet: its columns expand to more than 1 MiB"):
        read_table(bomb, COLS, limits=SiteLimits(max_table_mb=1))


def _measure(script: str, tmp_path: Path, *args: str) -> tuple[str, int, int]:
    """Run a child `script` (which ends by printing "size N grew_kb M"): its output, the size of the
    file it wrote (bytes) and how much its peak RSS grew while reading it (KB)."""
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path), *args], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    size, grew = (int(w) for w in out.split()[-3::2])
    return out, size, grew


BOMB = """
import resource, sys
import pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
from client.site_data.errors import SiteDataError
from client.site_data.tables import read_table
path = Path(sys.argv[1]) / "labels.parquet"
ids = pa.DictionaryArray.from_arrays(pa.array([0, 1] * 15_000_000, pa.int32()), pa.array(["junk-id", "junk2"]))
pq.write_table(pa.table({"patient_id": ids, "label": ids}), path, row_group_size=1 << 22)
del ids
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_table(path, ("patient_id", "label"))
except SiteDataError as exc:
    print("refused", exc)
print("size", path.stat().st_size, "grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_a_parquet_row_bomb_is_refused_from_its_footer_without_growing_memory(tmp_path: Path) -> None:
    out, size, grew = _measure(BOMB, tmp_path)
    assert "refused labels.parquet: more than 5000000 rows" in out
    assert size < 2_000_000 and grew < 50_000, out  # < 50 MB more than after writing it


def test_labels_count_every_row_they_do_not_use_by_line(tmp_path: Path) -> None:
    text = ("patient_id,label,index_time\nA1,1,\nA1,1,\n,0,\nA2,maybe,\nA3,1,\nA3,0,\nA4,0,soon\nA5,1,x,y\n"
            'A6,"0\n')
    write(tmp_path, "labels.csv", text)
    labels = read_labels(tmp_path)
    assert labels.patient_ids == ["A1", "A4"]
    where = {reason: [n for nums in by.values() for n in nums] for reason, by in labels.problems.rows.items()}
    assert where == {"duplicate label row": [3], "empty patient id": [4], "label is not 0 or 1": [5],
                     "patient with conflicting labels": [6, 7], UNPARSEABLE_TIME: [8],
                     "labels.csv: row with more fields than the header (not used)": [9],
                     "labels.csv: quote opened and never closed (the lines after it were read again as rows)": [10]}
    dropped = sum(v for k, v in labels.problems.items() if k != UNPARSEABLE_TIME)
    assert len(labels.patient_ids) + dropped == 9  # data rows in the file


@pytest.fixture(scope="module")
def one_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (site,) = write_hospitals(tmp_path_factory.mktemp("one"), sites=1, patients=150, seed=3, image_size=32)
    return site


def _load(site: Path, experiment: ExperimentConfig, cache: Path):  # noqa: ANN202
    return load_site(site, experiment.data, cache_dir=cache, site_file=SiteFileConfig())


def test_csv_silent_row_loss_case(one_site: Path, tmp_path: Path, experiment: ExperimentConfig) -> None:
    """/work/shared/cases/csv-silent-row-loss: note rows in = patients with notes + rows counted."""
    import shutil
    site = tmp_path / "site"
    shutil.copytree(one_site, site)
    notes = pd.read_csv(site / "notes.csv", dtype=str, keep_default_na=False)
    long_text = "Admitted with chest pain. " + "pasted report line. " * 8000
    notes.loc[0, "text"] = long_text
    (site / "notes.csv").write_text(notes.to_csv(index=False), encoding="utf-8")
    arrays, report = _load(site, experiment, tmp_path / "c1")
    assert int(arrays.modality_mask[:, 2].sum()) == len(notes) and not report.note_problems
    assert not report.table_problems
    cap = experiment.data.note_max_tokens
    row = arrays.tokens[arrays.modality_mask[:, 2] > 0][0]  # patients keep label order; A00001 first
    assert np.array_equal(row, encode(long_text, buckets=experiment.data.note_buckets, max_tokens=cap))
    assert np.count_nonzero(row) == cap
    rows = [("A00001", "Stable overnight."), ("A00002", '"Sats 94% on air. Plan: repeat CXR'),
            ("A00003", "Chest pain resolved."), ("A00004", "Wound clean."), ("A00005", "Home."), ("A00006", "Physio.")]
    (site / "notes.csv").write_text("patient_id,text\n" + "".join(f"{p},{t}\n" for p, t in rows), encoding="utf-8")
    arrays, report = _load(site, experiment, tmp_path / "c2")
    assert int(arrays.modality_mask[:, 2].sum()) == 5 and not report.note_problems
    reason = "notes.csv: quote opened and never closed (the lines after it were read again as rows)"
    assert dict(report.table_problems) == {reason: 1}
    assert report.table_problems.locations(reason, None) == (["notes.csv line 3"], 0)


def test_labs_rows_are_counted_by_line_through_the_loader(one_site: Path, tmp_path: Path,
                                                          experiment: ExperimentConfig) -> None:
    import shutil
    site = tmp_path / "site"
    shutil.copytree(one_site, site)
    text = (site / "labs.csv").read_text()
    lines = text.splitlines()
    lines.insert(3, 'A00001,2345-7,"5,mg/dL,2026-01-01T00:00:00')
    lines.insert(5, "A00002,2345-7,1,5,mg/dL,2026-01-01T00:00:00")  # a decimal comma: not used
    (site / "labs.csv").write_text("\n".join(lines) + "\n")
    _, report = _load(site, experiment, tmp_path / "cache")
    assert report.table_problems.locations(
        "labs.csv: quote opened and never closed (the lines after it were read again as rows)", None)[0] == \
        ["labs.csv line 4"]
    assert report.table_problems.locations("labs.csv: row with more fields than the header (not used)",
                                           None)[0] == ["labs.csv line 6"]
    assert report.lab_rows_used > 0



# --- sec-table-bounds: nested Parquet, records over the cap, blank lines, JSON Lines line ends ---

LONG_ROW = "row longer than 4 MiB (not used)"


@pytest.mark.parametrize(("nested", "kind"), [
    (pa.array([[True, False]]), "list"), (pa.array([[None]], pa.list_(pa.null())), "list"),
    (pa.array([{"DOE_JOHN_MRN_8812345": 1}]), "struct"),
    (pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())), "map")])
def test_a_parquet_column_that_is_not_flat_is_refused_by_file_and_column(tmp_path: Path, nested: pa.Array,
                                                                         kind: str) -> None:
    """...by its kind only: a struct's field names come from the export and the message may be shared."""
    path = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"patient_id": ["A1"], "text": nested}), path)
    with pytest.raises(SiteDataError, match=rf"^notes.parquet: column 'text' holds {kind} values, not one plain "
                                            r"value per row; export it as text \(a plain column\)$"):
        read_table(path, COLS)


def test_flat_parquet_columns_are_capped_by_the_text_they_become(tmp_path: Path) -> None:
    path = tmp_path / "labels.parquet"
    n = 100_000  # 12 kB of bits, 0 bytes of nulls; ~1.3 MB and ~0.8 MB as text with offsets
    for column in (pa.array([False] * n), pa.nulls(n)):
        pq.write_table(pa.table({"patient_id": pa.nulls(n), "label": column}), path)
        with pytest.raises(SiteDataError, match=r"labels.parquet: its columns expand to more than 1 MiB"):
            read_table(path, ("patient_id", "label"), limits=SiteLimits(max_table_mb=1))
    pq.write_table(pa.table({"patient_id": pa.nulls(2), "label": [True, None]}), path)
    frame, found = read_table(path, ("patient_id", "label"))
    assert frame["patient_id"].tolist() == ["", ""] and frame["label"].tolist() == ["true", ""] and not found


def test_a_record_over_4_mib_is_counted_by_line_and_the_rows_after_it_are_read(tmp_path: Path) -> None:
    huge = "ab," * (2 << 20)  # 6 MiB on one line: never parsed
    frame, found = read_table(write(tmp_path, "notes.csv", f"patient_id,text\nA1,ok\n{huge}\nA2,fine\n"), COLS)
    assert dict(zip(frame.index, frame["patient_id"])) == {2: "A1", 4: "A2"}
    assert rows_of(found) == {LONG_ROW: [3]}
    objects = "[" + "{}," * (2 << 20) + "{}]"
    lines = [json.dumps({"patient_id": "A1", "text": "ok"}), objects, "", json.dumps({"patient_id": "A2", "text": "x"})]
    frame, found = read_table(write(tmp_path, "notes.jsonl", "\r\n".join(lines) + "\r\n"), COLS)
    assert dict(zip(frame.index, frame["patient_id"])) == {1: "A1", 4: "A2"} and rows_of(found) == {LONG_ROW: [2]}
    # A quote left open with 5 MiB of rows after it: counted at its line, the rows after it kept.
    rows = "".join(f"B{i},{'w' * 1000}\n" for i in range(5200))
    frame, found = read_table(write(tmp_path, "notes.csv", f'patient_id,text\nA1,"open\n{rows}A2,end\n'), COLS)
    assert frame.index.tolist() == list(range(3, 5204)) and frame["patient_id"].iloc[-1] == "A2"
    assert rows_of(found) == {"quote opened and never closed (the lines after it were read again as rows)": [2]}


def test_lines_are_cut_at_the_limit_without_splitting_a_crlf(tmp_path: Path) -> None:
    import io

    from client.site_data.tables.encodings import OVERLONG, Utf8Tally

    def split(data: bytes, cr: bool) -> list[str]:
        stream = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="" if cr else "\n")
        return list(Utf8Tally(stream, "utf-8", limit=3, cr_ends=cr))

    data = b"abc\r\nxy\nabcd\r\nq\rabcde\nz"
    assert split(data, cr=True) == ["abc\r\n", "xy\n", OVERLONG, "q\r", OVERLONG, "z"]
    assert split(data, cr=False) == ["abc\r\n", "xy\n", OVERLONG, OVERLONG, "z"]  # 'q\rabcde' is one line
    assert split(b"abcdefgh\r\r\nabc", cr=True) == [OVERLONG, "\r\n", "abc"]
    assert split(b"abcd", cr=True) == [OVERLONG]


AMPLIFY = """
import resource, sys, time
from pathlib import Path
from client.site_data.tables import read_table
site = Path(sys.argv[1])
def write(name, head, at_cap, tail, huge):  # a record just under 4 MiB, then a 120 MiB one, a MiB at a time
    with open(site / name, "wb") as out:
        out.write(head + at_cap * ((4 << 20) // len(at_cap) - 8) + tail)
        for _ in range(120):
            out.write(huge * ((1 << 20) // len(huge)))
        out.write(b"\\n")
write("notes.csv", b"patient_id,text\\nA1,ok\\n", b"a,", b"a\\n", b"ab,")
write("notes.jsonl", b'{"patient_id":"A1","text":"ok"}\\n[', b"{},", b"{}]\\n", b"[],")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in ("notes.csv", "notes.jsonl"):
    t = time.time()
    frame, found = read_table(site / name, ("patient_id", "text"))
    print(name, len(frame), sorted(found.items()), round(time.time() - t, 1))
print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_one_huge_record_does_not_grow_memory(tmp_path: Path) -> None:
    """4 MiB of `a,` (2 million fields) is parsed, 120 MiB of `ab,` or `[],` on one line is not."""
    out = subprocess.run([sys.executable, "-c", AMPLIFY, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert ("notes.csv 1 [('notes.csv: row longer than 4 MiB (not used)', 1), "
            "('notes.csv: row with more fields than the header (not used)', 1)]") in out
    assert ("notes.jsonl 1 [('notes.jsonl: JSON line that is not an object', 1), "
            "('notes.jsonl: row longer than 4 MiB (not used)', 1)]") in out
    grew = int(out.split()[-1])
    assert grew < 300_000, out  # < 300 MB for the record at the cap; the 120 MiB line is never held


def test_blank_lines_count_toward_the_row_cap(tmp_path: Path) -> None:
    small = SiteLimits(max_table_rows=1000)
    for name, head in (("labels.csv", "patient_id,label\nA1,1\n"), ("labels.jsonl", '{"patient_id":"A1","label":1}\n')):
        path = write(tmp_path, name, head + "\n" * 999)
        frame, found = read_table(path, ("patient_id", "label"), limits=small)
        assert len(frame) == 1 and not found
        path = write(tmp_path, name, head + " \r\n" * 1000)
        with pytest.raises(SiteDataError, match=rf"{name}: more than 1000 rows \(blank lines included\)"):
            read_table(path, ("patient_id", "label"), limits=small)


@pytest.mark.slow
def test_64_mib_of_blank_lines_meet_the_default_row_cap(tmp_path: Path) -> None:
    """The default cap (5 million lines) stops a file of blank lines long before its byte cap."""
    for name, head in (("labs.csv", b"patient_id,text\nA1,x\n"), ("labs.jsonl", b'{"patient_id":"A1","text":"x"}\n')):
        path = write(tmp_path, name, head + b"\n" * (64 << 20))
        with pytest.raises(SiteDataError, match=r"more than 5000000 rows \(blank lines included\)"):
            read_table(path, COLS)


def test_json_lines_end_at_lf_only_and_a_cr_inside_a_record_is_whitespace(tmp_path: Path) -> None:
    data = b'{"patient_id":"A1","label":"0"}\r\n{"patient_id":"A2",\r"label":"1"}\n\r\n{"patient_id":"A3","label":"1"}'
    frame, found = read_table(write(tmp_path, "labels.jsonl", data), ("patient_id", "label"))
    assert dict(zip(frame.index, frame["patient_id"])) == {1: "A1", 2: "A2", 4: "A3"} and not found
    frame, found = read_table(write(tmp_path, "labels.csv", b"patient_id,label\rA1,0\rA2,1\r"), ("patient_id", "label"))
    assert frame.index.tolist() == [2, 3] and not found  # CSV still accepts CR-only line ends


NESTED = """
import resource, sys
import pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
from client.site_data.errors import SiteDataError
from client.site_data.tables import read_table
path = Path(sys.argv[1]) / "notes.parquet"
bits = pa.concat_arrays([pa.array([False] * 1_000_000)] * 100)  # 100 million bools in one row: 12 MB
pq.write_table(pa.table({"patient_id": ["A1", "A2"], "text": pa.ListArray.from_arrays([0, 0, len(bits)], bits)}), path)
del bits
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_table(path, ("patient_id", "text"))
except SiteDataError as exc:
    print("refused", exc)
print("size", path.stat().st_size, "grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_a_nested_parquet_bomb_is_refused_before_reading(tmp_path: Path) -> None:
    out, size, grew = _measure(NESTED, tmp_path)
    assert "refused notes.parquet: column 'text' holds list values" in out
    assert size < 1_000_000 and grew < 20_000, out  # as text it would be 1.3 GB ("false" + offsets)


# --- issue 9 (third pass): one huge Parquet value repeated through a dictionary ---

EXPAND = """
import resource, sys
import pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
from client.site_data.errors import SiteDataError
from client.site_data.tables import read_table
path = Path(sys.argv[1]) / "notes.parquet"
def write(rows, value, kind, short=()):  # one value in every row but `short` (1-based), dictionary-encoded
    ok = b"ok" if kind == pa.binary() else "ok"
    indices = pa.array([1 if i + 1 in short else 0 for i in range(rows)], pa.int32())
    text = pa.DictionaryArray.from_arrays(indices, pa.array([value, ok], type=kind))
    pq.write_table(pa.table({"patient_id": [f"A{i % 60 + 1:05d}" for i in range(rows)], "text": text}), path,
                   compression="zstd", row_group_size=rows)
def write_plain(rows, value, kind):  # as pa.array([value] * rows) writes it: plain pages after the first
    with pq.ParquetWriter(path, pa.schema({"patient_id": pa.string(), "text": kind}), compression="zstd") as out:
        for start in range(0, rows, 50):
            out.write_table(pa.table({"patient_id": [f"A{i % 60 + 1:05d}" for i in range(start, start + 50)],
                                      "text": pa.array([value] * 50, type=kind)}))
cases = {"A": (900, b"\\xff" * (1 << 20), pa.binary(), ()),  # 900 MiB, 2.7 GiB as U+FFFD text
         "B": (1500, "x" * (1 << 20), pa.string(), ()),  # 1.5 GiB of valid text
         "long-binary": (300, b"\\xff" * (5 << 20), pa.binary(), (2, 300)),  # values over 4 MiB
         "long-text": (300, "y" * (5 << 20), pa.string(), (1, 150))}
if sys.argv[2].endswith("-plain"):
    write_plain(*cases[sys.argv[2][:-6]][:3])
else:
    write(*cases[sys.argv[2]])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    frame, found = read_table(path, ("patient_id", "text"))
    for reason, by in found.rows.items():
        numbers = sorted(n for nums in by.values() for n in nums)
        print("counted", reason, len(numbers), numbers[:3], numbers[-1])
    print("read", frame.index.tolist(), frame["text"].tolist())
except SiteDataError as exc:
    print("refused", exc)
print("size", path.stat().st_size, "grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""




@pytest.mark.parametrize("case", ["A", "B", "A-plain", "B-plain"])
def test_one_mib_repeated_past_the_default_cap_is_refused_before_it_is_expanded(tmp_path: Path, case: str) -> None:
    """The red team's notes.parquet (933 B / 24 kB; '-plain': a writer's plain pages, as theirs were):
    refused by the 512 MiB default from the values' lengths alone, before any is expanded."""
    out, size, grew = _measure(EXPAND, tmp_path, case)
    assert "refused notes.parquet: its columns expand to more than 512 MiB, the site's limits.max_table_mb" in out
    assert size < 30_000 and grew < 300_000, out  # < 300 MB; expanded it is 0.9 to 2.7 GB


@pytest.mark.parametrize("case", ["long-binary", "long-text"])
def test_values_over_4_mib_are_counted_by_row_and_never_expanded(tmp_path: Path, case: str) -> None:
    """298 rows of one 5 MiB value (1.5 GiB as text, 4.4 GiB as U+FFFD): counted, the other rows read."""
    out, size, grew = _measure(EXPAND, tmp_path, case)
    kept = (2, 300) if case == "long-binary" else (1, 150)
    longs = [n for n in range(1, 301) if n not in kept]
    assert f"counted notes.parquet: {LONG_ROW} 298 {longs[:3]} {longs[-1]}" in out, out
    assert f"read {list(kept)} ['ok', 'ok']" in out, out
    assert grew < 300_000, out


def test_a_large_parquet_table_under_the_caps_is_read_in_bounded_steps(tmp_path: Path) -> None:
    """40 MiB of 1 MiB values (more than one step of text), invalid UTF-8 as U+FFFD, row numbers kept."""
    from client.site_data.tables import parquet_rows

    path = tmp_path / "notes.parquet"
    texts = [(f" note {i} " + "z" * (1 << 20)).encode() for i in range(40)] + [b"d\xe9j\xe0 ", None, b"\xff" * 100]
    pq.write_table(pa.table({"patient_id": [f"A{i}" for i in range(43)], "text": pa.array(texts, pa.binary())}),
                   path, row_group_size=10)
    frame, found = read_table(path, COLS)
    assert not found and frame.index.tolist() == list(range(1, 44))
    assert frame["text"].tolist() == [t.decode().strip() for t in texts[:40]] + ["d\ufffdj\ufffd", "", "\ufffd" * 100]
    assert parquet_rows._steps(np.array([6 << 20] * 6 + [1] * 3)) == [(0, 2), (2, 4), (4, 9)]
    with pytest.raises(SiteDataError, match=r"notes.parquet: its columns hold more than 40 MiB"):
        read_table(path, COLS, limits=SiteLimits(max_table_mb=40))


def test_the_default_table_cap_keeps_a_site_load_within_memory() -> None:
    assert SiteLimits().max_table_mb == 512
