"""The bad-input corpus: each entry breaks a clean site in one way and states the outcome.

Entries touch different rows and files (labels rows 0-4, manifest/DICOM rows 10-21, notes of
patients 20-21) so that all non-fatal entries can be applied to one site at once.

An entry's `expect` is either the reason it must be counted under in the LoadReport (a
(report field, key) pair) or, for inputs that leave nothing to train on, the start of the
SiteDataError message that must name the file and the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import yaml
from pydicom.uid import generate_uid

from bad_inputs_dicom import ALL as DICOM_FILES
from bad_inputs_dicom import native_sparse

Mutation = Callable[[Path], None]


@dataclass(frozen=True)
class BadInput:
    """One broken input: how to make it and what must happen."""

    name: str
    mutate: Mutation
    counted: tuple[str, str] | None = None  # (LoadReport field, reason key)
    fatal: str | None = None                # expected SiteDataError message fragment
    combinable: bool = True                 # False: it replaces a whole file other entries use

    @property
    def joins_the_combined_site(self) -> bool:
        """Applied together with every other such entry to one site (site check, federated run)."""
        return self.counted is not None and self.combinable


def table(site: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(site / name, dtype=str, keep_default_na=False)


def save(site: Path, name: str, frame: pd.DataFrame) -> None:
    frame.to_csv(site / name, index=False)


def patient(site: Path, k: int = 0) -> str:
    return table(site, "labels.csv")["patient_id"].iloc[k]


def append(site: Path, name: str, *rows: dict[str, str]) -> None:
    save(site, name, pd.concat([table(site, name), pd.DataFrame(list(rows))], ignore_index=True))


def lab(site: Path, **changes: str) -> dict[str, str]:
    row = dict(table(site, "labs.csv").iloc[0])
    row.update(changes)
    return row


def image_of(site: Path, k: int) -> Path:
    return site / table(site, "manifest.csv")["image_path"].iloc[k]


def with_index_time(site: Path) -> None:
    """Give every patient without one an index time one hour after their latest lab."""
    labs = table(site, "labs.csv")
    times = pd.to_datetime(labs["time"], errors="coerce", format="ISO8601")
    latest = times.groupby(labs["patient_id"]).max() + pd.Timedelta(hours=1)
    labels = table(site, "labels.csv")
    filled = labels["patient_id"].map(latest.dt.strftime("%Y-%m-%dT%H:%M:%S")).fillna("")
    existing = labels["index_time"] if "index_time" in labels else pd.Series("", index=labels.index)
    labels["index_time"] = existing.where(existing != "", filled)  # keep a deliberately bad one
    save(site, "labels.csv", labels)


def lab_patient(site: Path, k: int) -> str:
    """The k-th patient with labs, past the label rows that other entries break (0-24)."""
    ids = table(site, "labels.csv")["patient_id"]
    untouched = set(ids.iloc[25:]) - set(ids.iloc[:25])  # appended duplicates stay excluded
    with_labs = table(site, "labs.csv")["patient_id"].drop_duplicates()
    return with_labs[with_labs.isin(untouched)].iloc[k]


def _lab_after_index(site: Path) -> None:
    with_index_time(site)
    pid = lab_patient(site, 0)
    append(site, "labs.csv", lab(site, patient_id=pid, time="2030-01-01T00:00:00"))


def _lab_too_old(site: Path) -> None:
    with_index_time(site)
    pid = lab_patient(site, 1)
    append(site, "labs.csv", lab(site, patient_id=pid, time="2000-01-01T00:00:00"))


def _non_utf8_note(site: Path) -> None:
    with (site / "notes.csv").open("ab") as fh:
        fh.write(f'{patient(site, 20)},"\xff\xfe broken bytes"\n'.encode("latin-1"))


def _symlink_out(site: Path) -> None:
    outside = site.parent / "outside.dcm"
    outside.write_bytes(image_of(site, 13).read_bytes())
    os.symlink(outside, site / "images" / "link.dcm")
    frame = table(site, "manifest.csv")
    frame.loc[13, "image_path"] = "images/link.dcm"
    save(site, "manifest.csv", frame)


def _append_raw(name: str, text: str) -> Mutation:
    def mutate(site: Path) -> None:
        with (site / name).open("a", encoding="utf-8") as fh:
            fh.write(text)
    return mutate


def _series_with_escaping_member(site: Path) -> None:
    series = site / "images" / "series-x"
    series.mkdir()
    outside = site.parent / "outside-member.dcm"
    outside.write_bytes(image_of(site, 20).read_bytes())
    os.symlink(outside, series / "1.dcm")
    frame = table(site, "manifest.csv")
    frame.loc[20, "image_path"] = "images/series-x"
    save(site, "manifest.csv", frame)


def _fifo_image(site: Path) -> None:
    os.mkfifo(site / "images" / "pipe.dcm")
    frame = table(site, "manifest.csv")
    frame.loc[21, "image_path"] = "images/pipe.dcm"
    save(site, "manifest.csv", frame)


def _manifest_path(value: str, row: int) -> Mutation:
    def mutate(site: Path) -> None:
        frame = table(site, "manifest.csv")
        frame.loc[row, "image_path"] = value
        save(site, "manifest.csv", frame)
    return mutate


def _dicom(change: Callable[[pydicom.Dataset], None], row: int) -> Mutation:
    def mutate(site: Path) -> None:
        path = image_of(site, row)
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)
    return mutate


def _no_pixels(ds: pydicom.Dataset) -> None:
    del ds.PixelData


def _zero_rows(ds: pydicom.Dataset) -> None:
    ds.Rows, ds.PixelData = 0, b""


def _structured_report(ds: pydicom.Dataset) -> None:
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "SR"


def _truncate(site: Path) -> None:
    path = image_of(site, 17)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 6 // 10])


def _not_dicom(site: Path) -> None:
    image_of(site, 18).write_bytes(b"this is a PDF pretending to be DICOM" * 20)


def _labels(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Mutation:
    def mutate(site: Path) -> None:
        save(site, "labels.csv", change(table(site, "labels.csv")))
    return mutate


def _labs_row(**changes: str) -> Mutation:
    def mutate(site: Path) -> None:
        append(site, "labs.csv", lab(site, **changes))
    return mutate


def _write(name: str, text: str) -> Mutation:
    def mutate(site: Path) -> None:
        (site / name).write_text(text, encoding="utf-8")
    return mutate


def _unlink(name: str) -> Mutation:
    def mutate(site: Path) -> None:
        (site / name).unlink()
    return mutate


def _dupe_row(name: str, row: int) -> Mutation:
    def mutate(site: Path) -> None:
        frame = table(site, name)
        save(site, name, pd.concat([frame, frame.iloc[row:row + 1]], ignore_index=True))
    return mutate


def _conflicting_label(frame: pd.DataFrame) -> pd.DataFrame:
    extra = frame.iloc[1:2].copy()
    extra["label"] = "1" if frame["label"].iloc[1] == "0" else "0"
    return pd.concat([frame, extra], ignore_index=True)


def _set_row(column: str, value: str, row: int) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame
    return change


def _note(text: str) -> Mutation:
    def mutate(site: Path) -> None:
        append(site, "notes.csv", {"patient_id": patient(site, 21), "text": text})
    return mutate


def _parquet_beside_csv(site: Path) -> None:
    table(site, "labels.csv").to_parquet(site / "labels.parquet")


def _local_code_to_unknown_feature(site: Path) -> None:
    (site / "site.yaml").write_text('lab_codes:\n  - {code: LOCAL-1, feature: "9999-9"}\n')


def _site_yaml(text: str) -> Mutation:
    """Append `text` (top-level keys) to the site's site.yaml."""
    def mutate(site: Path) -> None:
        with (site / "site.yaml").open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return mutate


_GENERAL: tuple[BadInput, ...] = (
    # labels
    BadInput("labels file missing", _unlink("labels.csv"), fatal="labels.csv: labels file is missing"),
    BadInput("labels without a label column", _write("labels.csv", "patient_id,outcome\nA1,1\n"),
             fatal="labels.csv: missing column(s) ['label']"),
    BadInput("labels header only", _write("labels.csv", "patient_id,label\n"),
             fatal="no patient has a usable 0/1 label"),
    BadInput("labels in two formats", _parquet_beside_csv, fatal="both labels.csv and labels.parquet exist"),
    BadInput("label value not 0/1", _labels(_set_row("label", "unknown", 4)),
             counted=("label_problems", "label is not 0 or 1")),
    BadInput("conflicting duplicate label", _labels(_conflicting_label),
             counted=("label_problems", "patient with conflicting labels")),
    BadInput("exact duplicate label row", _dupe_row("labels.csv", 2), counted=("label_problems", "duplicate label row")),
    BadInput("empty patient id", _labels(_set_row("patient_id", "", 3)), counted=("label_problems", "empty patient id")),
    BadInput("unparseable index time", _labels(lambda f: f.assign(index_time=["yesterday"] + [""] * (len(f) - 1))),
             counted=("label_problems", "unparseable index_time")),
    # labs
    BadInput("lab value NaN", _labs_row(value="NaN"), counted=("lab_rows_dropped", "non-finite value (NaN/inf)")),
    BadInput("lab value inf", _labs_row(value="inf"), counted=("lab_rows_dropped", "non-finite value (NaN/inf)")),
    BadInput("lab value text", _labs_row(value="pending"), counted=("lab_rows_dropped", "non-numeric value")),
    BadInput("lab value empty", _labs_row(value=""), counted=("lab_rows_dropped", "non-numeric value")),
    BadInput("lab unknown unit", _labs_row(code="2345-7", unit="mg/dl%", value="100"),
             counted=("lab_rows_dropped", "unit not convertible for 2345-7 (a unit that is not in the catalogue)")),
    BadInput("lab unknown code", _labs_row(code="XYZ-123"),
             counted=("unknown_lab_codes", "a code that is not LOINC-shaped")),  # free text is never repeated
    BadInput("lab unknown LOINC code", _labs_row(code="2093-3"), counted=("unknown_lab_codes", "2093-3")),
    BadInput("lab implausible value", _labs_row(code="2345-7", unit="mg/dL", value="99999"),
             counted=("lab_rows_dropped", "implausible value for 2345-7")),
    BadInput("lab duplicate row", _dupe_row("labs.csv", 0), counted=("lab_rows_dropped", "duplicate row")),
    BadInput("lab unparseable time", _labs_row(time="31/31/2026 25:99"), counted=("lab_rows_dropped", "unparseable time")),
    BadInput("lab after index time", _lab_after_index, counted=("lab_rows_dropped", "measured after the index time")),
    BadInput("lab outside the window", _lab_too_old, counted=("lab_rows_dropped", "older than the lab window")),
    BadInput("lab for an unlabelled patient", _labs_row(patient_id="NOBODY"),
             counted=("lab_rows_dropped", "row for a patient without a label")),
    BadInput("labs missing a column", _write("labs.csv", "patient_id,code,value,time\nA1,2345-7,5,2026-01-01\n"),
             counted=("table_problems", "labs.csv: missing column(s) ['unit']; expected "
                                        "['patient_id', 'code', 'value', 'unit', 'time'] (table ignored)"),
             combinable=False),
    BadInput("site.yaml with a key given twice", _site_yaml("limits: {max_rounds: 5}\nlimits: {max_rounds: 6}\n"),
             fatal="site.yaml: limits: given twice"),
    BadInput("site.yaml with a NaN budget", _write("site.yaml", "privacy:\n  lifetime_epsilon: .nan\n"),
             fatal="site.yaml: privacy.lifetime_epsilon must be in (0, 100]"),
    BadInput("site.yaml maps to an unconfigured feature", _local_code_to_unknown_feature,
             fatal="site.yaml: lab_codes[0].feature '9999-9' is not a configured lab feature"),
    # notes
    BadInput("empty note", _note(""), counted=("note_problems", "empty note")),
    BadInput("whitespace-only note", _note("   \t "), counted=("note_problems", "empty note")),
    BadInput("non-UTF-8 note", _non_utf8_note, counted=("note_problems", "undecodable note (not UTF-8)")),
    # manifest paths
    BadInput("manifest path with ..", _manifest_path("../other-site/images/x.dcm", 10),
             counted=("manifest_problems", "path outside the site folder")),
    BadInput("manifest absolute path", _manifest_path("/etc/passwd", 11),
             counted=("manifest_problems", "path outside the site folder")),
    BadInput("manifest symlink escaping the site", _symlink_out,
             counted=("manifest_problems", "path outside the site folder")),
    BadInput("manifest row for an unlabelled patient", lambda s: append(s, "manifest.csv", {"patient_id": "NOBODY", "image_path": "images/x.dcm"}),
             counted=("manifest_problems", "manifest row for a patient without a label")),
    BadInput("manifest path with a NUL byte", _manifest_path("images/a\x00b.dcm", 19),
             counted=("manifest_problems", "invalid image path")),
    BadInput("series folder member escaping the site", _series_with_escaping_member,
             counted=("manifest_problems", "path outside the site folder")),
    BadInput("manifest path to a named pipe", _fifo_image, counted=("manifest_problems",
                                                                    "not a regular file (device, pipe or socket)")),
    BadInput("manifest file missing", _manifest_path("images/nope.dcm", 12),
             counted=("manifest_problems", "file listed in the manifest is missing")),
    # DICOM
    BadInput("truncated DICOM", _truncate, counted=("quarantined_images", "truncated or corrupt file")),
    BadInput("not DICOM at all", _not_dicom, counted=("quarantined_images", "not a DICOM file")),
    BadInput("DICOM without PixelData", _dicom(_no_pixels, 14), counted=("quarantined_images", "no pixel data")),
    BadInput("zero-sized image", _dicom(_zero_rows, 15), counted=("quarantined_images", "empty image")),
    BadInput("wrong SOP class (SR)", _dicom(_structured_report, 16),
             counted=("quarantined_images", "non-image object: Basic Text SR Storage")),
    # last: later entries would re-read notes.csv with a strict parser
    BadInput("ragged CSV row in notes", _append_raw("notes.csv", 'X1,an unquoted, comma,and more\n'),
             counted=("table_problems", "notes.csv: row with more fields than the header (not used)")),
)


# Tables as hospitals export them: quotes, ragged rows, encodings, JSON lines and caps. Each
# replaces or rewrites a whole file, so none is combinable.

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


_TABLES: tuple[BadInput, ...] = (
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


# Labs: unit spellings, site.yaml lab_units and lab_features, values beyond the reference range.
# Rows go to lab patients 5-9 (lab_patient), each one minute after that patient's latest lab, so
# that an index time set by another entry (one hour after the latest lab) keeps them in the window.

def _after_latest(site: Path, pid: str) -> str:
    labs = table(site, "labs.csv")
    times = pd.to_datetime(labs.loc[labs["patient_id"] == pid, "time"], errors="coerce", format="ISO8601")
    return (times.max() + pd.Timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")


def _lab_for(k: int, **changes: str) -> Mutation:
    """Append one lab row for lab patient `k`, in the window."""
    def mutate(site: Path) -> None:
        pid = lab_patient(site, k)
        append(site, "labs.csv", lab(site, patient_id=pid, time=_after_latest(site, pid), **changes))
    return mutate


def _site_unit_and_row(site: Path) -> None:
    _site_yaml('lab_units:\n  - {feature: "2345-7", unit: "mg%", factor: 1.0}\n')(site)
    _lab_for(9, code="2345-7", value="100", unit="mg%")(site)


UNITS = "unit_conversions"
_LABS: tuple[BadInput, ...] = (
    # spellings of catalogue units convert as the catalogue unit (client/site_data/lab_units.py)
    BadInput("lab unit with the micro sign", _lab_for(5, code="2160-0", value="88.4", unit="\u00b5mol/L"),
             counted=(UNITS, "2160-0: umol/L -> mg/dL")),
    BadInput("lab unit with Greek mu, spaces and a small l", _lab_for(6, code="2160-0", value="88.4", unit=" \u03bcmol / l "),
             counted=(UNITS, "2160-0: umol/L -> mg/dL")),
    BadInput("lab count unit written 10^9/L", _lab_for(7, code="6690-2", value="8.1", unit="10^9/L"),
             counted=(UNITS, "6690-2: 10*9/L -> 10*3/uL")),
    BadInput("lab unit in fullwidth characters", _lab_for(8, code="718-7", value="131", unit="\uff47\uff0f\uff2c"),
             counted=(UNITS, "718-7: g/L -> g/dL")),
    BadInput("lab value far beyond the reference range", _lab_for(5, code="2345-7", value="1400", unit="mg/dL"),
             counted=("lab_values_clipped", "value beyond ±5 reference SD (clipped) for 2345-7")),
    BadInput("lab unit added in site.yaml lab_units", _site_unit_and_row,
             counted=(UNITS, "2345-7: site.yaml lab_units[0] -> mg/dL"), combinable=False),
    # site.yaml mistakes stop the site with the field named
    BadInput("site.yaml lab_units NaN factor", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "mmol/L", factor: .nan}\n'),
             fatal="site.yaml: lab_units[0].factor must be a finite number > 0 (got nan)"),
    BadInput("site.yaml lab_units negative factor", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "mmol/L", factor: -11.31}\n'),
             fatal="site.yaml: lab_units[0].factor must be a finite number > 0 (got -11.31)"),
    BadInput("site.yaml lab_units for an unconfigured feature", _site_yaml('lab_units:\n  - {feature: "2093-3", unit: "mg/dL", factor: 1.0}\n'),
             fatal="site.yaml: lab_units[0].feature '2093-3' is not a configured lab feature"),
    BadInput("site.yaml lab_units changes a released factor", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "\u00b5mol/L", factor: 0.0113}\n'),
             fatal="site.yaml: lab_units[0].unit '\u00b5mol/L' is the catalogue's 'umol/L' for 2160-0"),
    BadInput("site.yaml lab_units same_as an unknown unit", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "mM", same_as: "mmol/L"}\n'),
             fatal="site.yaml: lab_units[0].same_as 'mmol/L' is not a unit of 2160-0 in the catalogue"),
    BadInput("site.yaml lab_codes zero factor", _site_yaml('lab_codes:\n  - {code: GLU-BG, feature: "2345-7", conversions: {mmol/L: 0}}\n'),
             fatal="site.yaml: lab_codes[0].conversions.mmol/L: the factor must be a finite number > 0"),
    BadInput("site.yaml lab_codes changes a released factor",
             _site_yaml('lab_codes:\n  - {code: CREA-L, feature: "2160-0", conversions: {mg/dl: 88.4}}\n'),
             fatal="site.yaml: lab_codes[0].conversions.mg/dl: 'mg/dl' is the catalogue's 'mg/dL' for 2160-0"),
    BadInput("site.yaml with YAML aliases (billion laughs)",
             _site_yaml("limits_note: &a [x, x]\nother: [*a, *a]\n"),
             fatal="YAML aliases (*a) are not accepted in site.yaml"),
    BadInput("site.yaml lab_features not released", _site_yaml("lab_features: ../../elsewhere/labs\n"),
             fatal="site.yaml: lab_features: '../../elsewhere/labs' is not a released lab feature file"),
)


# DICOM in bounded memory: one file of each kind in tests/bad_inputs_dicom.py (which holds them all,
# with the memory test) put in place of a patient's image; quarantined, never decoded.

def _image_file(make: Mutation, k: int = 13) -> Mutation:
    def mutate(site: Path) -> None:
        make(image_of(site, k))
    return mutate


def _over_the_sites_pixel_cap(site: Path) -> None:
    """A 2 MiB native image, which the default caps admit, at a site whose limits admit 1 MiB."""
    native_sparse(1024, 1024, bits=16)(image_of(site, 13))
    path = site / "site.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    raw.setdefault("limits", {})["max_dicom_pixel_data_mb"] = 1
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")


_DICOM_KINDS = ("rle_rgb_65535", "rle_really_encoded_65535", "jpeg_coded_65535", "j2k_declared_65535",
                "native_frames_1e5", "bits_allocated_65535", "deflate_30000", "deflate_header_64mib",
                "sparse_2gib", "header_1e6_items", "fragment_100mib", "sr_no_preamble_meta", "sr_bare_implicit")
_DICOM: tuple[BadInput, ...] = (
    *(BadInput(f"DICOM {d.name}", _image_file(d.make), counted=("quarantined_images", d.reason), combinable=False)
      for d in DICOM_FILES if d.name in _DICOM_KINDS),
    BadInput("DICOM over the site's own pixel data cap", _over_the_sites_pixel_cap,
             counted=("quarantined_images", "image too large"), combinable=False),
)


CORPUS: tuple[BadInput, ...] = (*_GENERAL, *_TABLES, *_LABS, *_DICOM)
