"""Tests for the opt-in messy export (real files in tmp_path, no mocks)."""

from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from synth.dicom_variants import M1_REFLECT_HU, jpeg2000_available
from synth.hospitals import write_hospitals
from synth.site_profiles import LAB_SPECS

SITES, PATIENTS, SEED, SIZE = 3, 150, 5, 32
CONVERSIONS = {  # reported unit -> canonical factor (as in configs/data/clinical.yaml)
    "2345-7": {"mg/dL": 1.0, "mmol/L": 18.016}, "2160-0": {"mg/dL": 1.0, "umol/L": 0.011310},
    "718-7": {"g/dL": 1.0, "g/L": 0.1}, "6690-2": {"10*3/uL": 1.0, "10*9/L": 1.0},
    "1988-5": {"mg/L": 1.0, "mg/dL": 10.0}, "2524-7": {"mmol/L": 1.0, "mg/dL": 0.11101},
    "2951-2": {"mmol/L": 1.0}, "2823-3": {"mmol/L": 1.0},
}
SITE_YAML = {
    "site-a": [{"code": "LAC-POC", "feature": "2524-7"}],
    "site-b": [{"code": "GLU-BG", "feature": "2345-7", "conversions": {"mmol/L": 18.016}}],
    "site-c": [{"code": "WBC-HEM", "feature": "6690-2", "conversions": {"G/L": 1.0}}],
}
VARIANTS = ("monochrome1", "multiframe", "rle", "jpeg2000", "uint8", "series", "voi_window")
BROKEN = ("truncated", "not_dicom", "no_pixels", "sr", "missing")


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> list[pathlib.Path]:
    return write_hospitals(tmp_path_factory.mktemp("messy"), sites=SITES, patients=PATIENTS,
                           seed=SEED, image_size=SIZE, messy=True)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> list[pathlib.Path]:
    return write_hospitals(tmp_path_factory.mktemp("clean"), sites=SITES, patients=PATIENTS,
                           seed=SEED, image_size=SIZE)


def text(path: pathlib.Path) -> pd.DataFrame:
    """A CSV with every column as text (undecodable bytes replaced)."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace")


def labs_of(site: pathlib.Path) -> pd.DataFrame:
    parquet = site / "labs.parquet"
    return pd.read_parquet(parquet).astype(str) if parquet.exists() else text(site / "labs.csv")


def notes_of(site: pathlib.Path) -> pd.DataFrame:
    jsonl = site / "notes.jsonl"
    return pd.read_json(jsonl, lines=True, dtype=str) if jsonl.exists() else text(site / "notes.csv")


def tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_messy_is_deterministic_and_differs_from_clean(messy: list[pathlib.Path], tmp_path: pathlib.Path,
                                                       clean: list[pathlib.Path]) -> None:
    again = write_hospitals(tmp_path, sites=SITES, patients=PATIENTS, seed=SEED, image_size=SIZE, messy=True)
    assert tree(messy[0].parent) == tree(tmp_path)
    assert [d.name for d in again] == ["site-a", "site-b", "site-c"]
    assert (messy[0] / "labels.csv").read_bytes() != (clean[0] / "labels.csv").read_bytes()


def classify(path: pathlib.Path) -> str:
    """Which variant / broken kind a manifest entry is (pydicom only)."""
    if path.is_dir():
        return "series"
    if not path.exists():
        return "missing"
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        return "not_dicom"
    if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.11":
        return "sr" if "PixelData" not in ds else "sr with pixels?"
    if "PixelData" not in ds:
        return "no_pixels"
    try:
        ds.pixel_array
    except ValueError:
        return "truncated"
    ts, frames = ds.file_meta.TransferSyntaxUID, int(ds.get("NumberOfFrames", 1))
    return ("monochrome1" if ds.PhotometricInterpretation == "MONOCHROME1" else "multiframe" if frames == 3
            else "rle" if ts == pydicom.uid.RLELossless else "jpeg2000" if ts == pydicom.uid.JPEG2000Lossless
            else "uint8" if ds.BitsAllocated == 8 else "voi_window" if float(ds.WindowCenter) == 50
            else "clean")


def hu_of(site: pathlib.Path, rel: str) -> np.ndarray:
    """A reference loader: series -> sort by InstanceNumber, frames -> middle, MONOCHROME1 -> invert."""
    path = site / rel
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
    ds = datasets[len(datasets) // 2]
    hu = apply_modality_lut(ds.pixel_array, ds)
    hu = hu[len(hu) // 2] if hu.ndim == 3 else hu
    return M1_REFLECT_HU - hu if ds.PhotometricInterpretation == "MONOCHROME1" else hu


def dicom_window(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """DICOM's linear VOI function (PS3.3 C.11.2.1.2.1) with the file's window, to [0, 1]."""
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def test_monochrome1_windows_like_the_clean_file(messy: list[pathlib.Path], clean: list[pathlib.Path]) -> None:
    checked = 0
    for site, ref in zip(messy, clean):
        manifest = text(site / "manifest.csv")
        for pid, rel in zip(manifest["patient_id"], manifest["image_path"]):
            if classify(site / rel) == "monochrome1":
                ds, clean_ds = pydicom.dcmread(site / rel), pydicom.dcmread(ref / rel)
                inverted = 1.0 - dicom_window(apply_modality_lut(ds.pixel_array, ds), ds)
                expected = dicom_window(apply_modality_lut(clean_ds.pixel_array, clean_ds), clean_ds)
                np.testing.assert_allclose(inverted, expected, atol=1e-9, err_msg=pid)
                checked += 1
    assert checked >= 3


def test_dicom_variants_and_broken_entries(messy: list[pathlib.Path], clean: list[pathlib.Path]) -> None:
    for site, ref in zip(messy, clean):
        manifest = text(site / "manifest.csv")
        kinds = {pid: classify(site / rel) for pid, rel in zip(manifest["patient_id"], manifest["image_path"])}
        counts = collections.Counter(kinds.values())
        for kind in VARIANTS:
            want = round(0.1 * len(manifest)) if kind != "jpeg2000" or jpeg2000_available() else 0
            assert counts[kind] == want, (site.name, kind, counts)
        assert all(counts[kind] == 2 for kind in BROKEN), (site.name, counts)
        assert set(counts) <= {"clean", *VARIANTS, *BROKEN}, counts
        for pid, rel in zip(manifest["patient_id"], manifest["image_path"]):
            if kinds[pid] in BROKEN:
                continue
            clean_ds = pydicom.dcmread(ref / f"images/{pid}.dcm")
            clean_hu = apply_modality_lut(clean_ds.pixel_array, clean_ds)
            tol = 4.0 if kinds[pid] == "uint8" else 0.0  # 8-bit: RescaleSlope / 2 + clean rounding
            assert np.abs(hu_of(site, rel) - clean_hu).max() <= tol, (site.name, pid, kinds[pid])


def test_variant_details(messy: list[pathlib.Path]) -> None:
    site = messy[0]
    manifest = text(site / "manifest.csv")
    by_kind: dict[str, list[pathlib.Path]] = collections.defaultdict(list)
    for pid, rel in zip(manifest["patient_id"], manifest["image_path"]):
        kind = classify(site / rel)
        by_kind[kind].append(site / rel)
        assert rel == (f"images/{pid}/" if kind == "series" else f"images/{pid}.dcm")
    instances = [pydicom.dcmread(f) for f in sorted(by_kind["series"][0].iterdir())]
    assert [int(d.InstanceNumber) for d in instances] == [3, 1, 2]  # file-name order != instance order
    assert len({d.SOPInstanceUID for d in instances}) == 3 and len({d.SeriesInstanceUID for d in instances}) == 1
    frames = pydicom.dcmread(by_kind["multiframe"][0])
    assert frames.pixel_array.shape == (3, SIZE, SIZE) and int(frames.NumberOfFrames) == 3
    with pytest.raises(ValueError):
        pydicom.dcmread(by_kind["truncated"][0]).pixel_array
    small = pydicom.dcmread(by_kind["uint8"][0])
    assert small.pixel_array.dtype == np.uint8 and float(small.RescaleSlope) > 1.0
    voi = pydicom.dcmread(by_kind["voi_window"][0])
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (50.0, 350.0)
    inverted = pydicom.dcmread(by_kind["monochrome1"][0])
    assert inverted.PhotometricInterpretation == "MONOCHROME1" and float(inverted.WindowCenter) == 41.0
    sr = pydicom.dcmread(by_kind["sr"][0])
    assert sr.Modality == "SR" and sr.ContentSequence[0].TextValue


def test_site_yaml(messy: list[pathlib.Path]) -> None:
    for site in messy:
        raw = (site / "site.yaml").read_text(encoding="utf-8")
        assert raw.startswith("# Site-owned configuration (written by site IT, never sent by the coordinator)\n")
        parsed = yaml.safe_load(raw)
        assert parsed["lab_codes"] == SITE_YAML[site.name] and set(parsed) == {"lab_codes", "privacy", "validation"}
        labs = labs_of(site)
        local = SITE_YAML[site.name][0]["code"]
        share = (labs["code"] == local).sum() / labs["code"].isin([local, SITE_YAML[site.name][0]["feature"]]).sum()
        assert 0.15 < share < 0.45, (site.name, share)


def test_labs_mixed_units_and_bad_rows(messy: list[pathlib.Path]) -> None:
    units = {site.name: labs_of(site).groupby("code")["unit"].agg(set).to_dict() for site in messy}
    assert units["site-a"]["2345-7"] == {"mg/dL", "mmol/L"} and units["site-a"]["2160-0"] == {"mg/dL", "umol/L"}
    assert units["site-b"]["2345-7"] == {"mg/dL", "mmol/L"} and units["site-b"]["GLU-BG"] == {"mmol/L"}
    assert units["site-a"]["LAC-POC"] == {"mmol/L"} and units["site-c"]["WBC-HEM"] == {"G/L"}
    assert units["site-c"]["718-7"] == {"g/L", "g/dL"}
    for site in messy:
        labs = labs_of(site)
        assert list(labs.columns) == ["patient_id", "code", "value", "unit", "time"]
        values = set(labs["value"])
        assert {"pending", "NaN", "inf", "", "99999"} <= values
        assert (labs["unit"] == "mg/dl%").sum() == 1 and (labs["code"] == "XYZ-123").sum() == 1
        assert labs.duplicated().sum() == 1
        assert pd.to_datetime(labs["time"], errors="coerce").isna().sum() == 1


def test_index_time_window(messy: list[pathlib.Path]) -> None:
    for site in messy:
        labels = text(site / "labels.csv")
        assert list(labels.columns) == ["patient_id", "label", "index_time"]
        index = pd.to_datetime(labels.drop_duplicates("patient_id").set_index("patient_id")["index_time"])
        labs = labs_of(site)
        labs = labs.assign(time=pd.to_datetime(labs["time"], errors="coerce")).dropna(subset=["time"])
        labs = labs[labs["patient_id"].isin(index.index)]
        hours = (labs["patient_id"].map(index) - labs["time"]).dt.total_seconds() / 3600
        n = round(0.05 * labs["patient_id"].nunique())
        assert 1 <= n and abs((hours < 0).sum() - n) <= 1 and abs((hours > 72).sum() - n) <= 1, site.name
        in_window = hours[(hours >= 0) & (hours <= 72)]
        latest = in_window.groupby(labs["patient_id"]).min()
        assert latest.max() <= 24 and latest.min() > 0


def canonical_latest(site: pathlib.Path, window_h: float | None) -> pd.Series:
    """A reference lab loader: local codes, unit conversion, drop bad rows, latest within the window."""
    labs = labs_of(site)
    conv = {code: dict(units) for code, units in CONVERSIONS.items()}
    if (site / "site.yaml").exists():
        for entry in yaml.safe_load((site / "site.yaml").read_text()).get("lab_codes", []):
            labs.loc[labs["code"] == entry["code"], "code"] = entry["feature"]
            conv[entry["feature"]].update(entry.get("conversions", {}))
    factor = [conv.get(c, {}).get(u, np.nan) for c, u in zip(labs["code"], labs["unit"])]
    value = pd.to_numeric(labs["value"], errors="coerce") * np.array(factor)
    high = labs["code"].map({s.code: s.mean + 20 * s.sd for s in LAB_SPECS})
    labs = labs.assign(value=value, time=pd.to_datetime(labs["time"], errors="coerce"))
    labs = labs[np.isfinite(labs["value"]) & labs["time"].notna() & (labs["value"] <= high)]
    if window_h is not None:
        raw = text(site / "labels.csv").drop_duplicates("patient_id").set_index("patient_id")["index_time"]
        hours = (labs["patient_id"].map(pd.to_datetime(raw)) - labs["time"]).dt.total_seconds() / 3600
        labs = labs[(hours >= 0) & (hours <= window_h)]
    return labs.sort_values("time").groupby(["patient_id", "code"])["value"].last()


def test_correct_loader_recovers_clean_labs(messy: list[pathlib.Path], clean: list[pathlib.Path]) -> None:
    for site, ref in zip(messy, clean):
        got = canonical_latest(site, 72.0)
        want = canonical_latest(ref, None)
        listed = set(text(site / "labels.csv")["patient_id"])
        want = want[want.index.get_level_values(0).isin(listed)]
        assert set(got.index) == set(want.index), site.name
        np.testing.assert_allclose(got[want.index], want, rtol=0.02, atol=2e-3)
        naive = canonical_latest(site, None)
        assert not np.allclose(naive.reindex(want.index), want, rtol=0.02, atol=2e-3)


def test_notes_defects(messy: list[pathlib.Path]) -> None:
    raw_a = (messy[0] / "notes.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw_a.decode("utf-8")
    assert raw_a.count(b"\xff\xfe broken") == 1
    (messy[1] / "notes.csv").read_bytes().decode("utf-8")
    assert not (messy[2] / "notes.csv").exists()
    lines = (messy[2] / "notes.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(list(json.loads(line)) == ["patient_id", "text"] for line in lines)
    for site in messy:
        notes = notes_of(site)
        assert list(notes.columns) == ["patient_id", "text"]
        assert (notes["text"] == "").sum() == 2
        assert ((notes["text"] != "") & (notes["text"].str.strip() == "")).sum() == 2
        assert notes.duplicated().sum() == 1 and notes["patient_id"].duplicated().sum() == 2


def test_labels_defects(messy: list[pathlib.Path], clean: list[pathlib.Path]) -> None:
    for site in messy:
        labels = text(site / "labels.csv")
        assert (labels["label"] == "unknown").sum() == 1
        dup = labels[labels["patient_id"].duplicated(keep=False)]
        assert len(dup) == 2 and set(dup["label"]) == {"0", "1"} and dup["patient_id"].nunique() == 1
        all_ids = {f"{site.name[-1].upper()}{i:05d}" for i in range(1, PATIENTS + 1)}
        (absent,) = all_ids - set(labels["patient_id"])
        for ids in (text(site / "manifest.csv")["patient_id"], labs_of(site)["patient_id"],
                    notes_of(site)["patient_id"]):
            assert absent in set(ids)
        assert all(pd.Timestamp(t).year == 2026 for t in labels["index_time"])


def test_messy_with_modalities_and_tiny_sites(tmp_path: pathlib.Path) -> None:
    dirs = write_hospitals(tmp_path, sites=3, patients=10, seed=1, image_size=16, messy=True,
                           modalities={1: {"labs"}, 2: {"image"}})
    assert sorted(p.name for p in dirs[1].iterdir()) == ["labels.csv", "labs.parquet", "site.yaml"]
    assert sorted(p.name for p in dirs[2].iterdir()) == ["images", "labels.csv", "manifest.csv", "site.yaml"]
    assert (dirs[0] / "notes.csv").exists()
    for site in dirs:
        assert len(text(site / "labels.csv")) == 10
