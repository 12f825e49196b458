"""Tests for the synthetic hospital generator (real files in tmp_path, no mocks)."""

from __future__ import annotations

import datetime as dt
import pathlib
import re

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from synth.hospitals import write_hospitals
from synth.site_profiles import site_profile

CSV_COLUMNS = {
    "manifest.csv": ["patient_id", "image_path"],
    "labs.csv": ["patient_id", "code", "value", "unit", "time"],
    "notes.csv": ["patient_id", "text"],
    "labels.csv": ["patient_id", "label"],
}
SITE_A_CONCERNING = ("dyspnea", "febrile", "tachycardic", "hypotensive", "confused")
SITE_B_CONCERNING = ("short of breath", "fever", "heart racing", "low blood pressure", "disoriented")
CONFIG = {  # name: (prevalence, missing image/labs/notes, PixelRepresentation, expected tissue HU)
    "site-a": (0.30, (0.10, 0.05, 0.10), 0, 40 * 1.00 + 0),
    "site-b": (0.45, (0.30, 0.10, 0.05), 1, 40 * 1.05 + 20),
    "site-c": (0.20, (0.05, 0.35, 0.20), 0, 40 * 0.95 - 15),
}


def read(site: pathlib.Path, name: str) -> pd.DataFrame:
    """Read one site CSV with every column as text."""
    return pd.read_csv(site / name, dtype=str, keep_default_na=False)


def count_phrases(text: str, phrases: tuple[str, ...]) -> int:
    """Occurrences of whole-word `phrases` in `text` (case-insensitive)."""
    return sum(len(re.findall(rf"\b{re.escape(p.lower())}\b", text.lower())) for p in phrases)


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank formula (average ranks for ties)."""
    ranks = pd.Series(score).rank().to_numpy()
    n1, n0 = int(label.sum()), int((1 - label).sum())
    return float((ranks[label == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


@pytest.fixture(scope="module")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> list[pathlib.Path]:
    """Three sites with 300 patients each."""
    return write_hospitals(tmp_path_factory.mktemp("three"), sites=3, patients=300, seed=11)


@pytest.fixture(scope="module")
def big_site(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One site with 1500 patients, for the signal tests."""
    return write_hospitals(tmp_path_factory.mktemp("big"), sites=1, patients=1500, seed=5)[0]


def test_layout_columns_and_ids(three_sites: list[pathlib.Path]) -> None:
    assert [d.name for d in three_sites] == ["site-a", "site-b", "site-c"]
    all_ids: list[str] = []
    for site in three_sites:
        for name, columns in CSV_COLUMNS.items():
            raw = (site / name).read_bytes()
            assert b"\r\n" not in raw
            df = read(site, name)
            assert list(df.columns) == columns
            assert list(df["patient_id"]) == sorted(df["patient_id"])
        labels = read(site, "labels.csv")
        prefix = site.name[-1].upper()
        assert list(labels["patient_id"]) == [f"{prefix}{i:05d}" for i in range(1, 301)]
        assert set(labels["label"]) == {"0", "1"}
        all_ids += list(labels["patient_id"])
        for name in ("manifest.csv", "notes.csv"):
            assert read(site, name)["patient_id"].is_unique
    assert len(set(all_ids)) == len(all_ids) == 900


def test_dicom_roundtrip_and_rescale_conventions(three_sites: list[pathlib.Path]) -> None:
    sop_uids: set[str] = set()
    n_files = 0
    for site in three_sites:
        _, _, pixel_rep, tissue_hu = CONFIG[site.name]
        manifest = read(site, "manifest.csv")
        assert sorted(p.name for p in (site / "images").iterdir()) == sorted(
            pathlib.PurePosixPath(p).name for p in manifest["image_path"])
        for pid, rel in zip(manifest["patient_id"], manifest["image_path"]):
            assert rel == f"images/{pid}.dcm"
            ds = pydicom.dcmread(site / rel)
            assert ds.PatientID == pid and str(ds.PatientName) == f"SYNTH^{pid}"
            assert ds.Modality == "CT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert (ds.Rows, ds.Columns, ds.PixelRepresentation) == (64, 64, pixel_rep)
            assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)
            sop_uids.add(ds.SOPInstanceUID)
            n_files += 1
            hu = apply_modality_lut(ds.pixel_array, ds)
            assert hu.min() >= -1024 and np.median(hu[:2, :2]) < -900  # air in the corners
            assert abs(np.median(hu[hu > -500]) - tissue_hu) <= 40
    assert len(sop_uids) == n_files > 600


def test_prevalence_is_exact(three_sites: list[pathlib.Path]) -> None:
    for site in three_sites:
        labels = read(site, "labels.csv")["label"].astype(int)
        assert labels.sum() == round(CONFIG[site.name][0] * 300)


def test_missingness(three_sites: list[pathlib.Path]) -> None:
    for site in three_sites:
        ids = set(read(site, "labels.csv")["patient_id"])
        present = [set(read(site, name)["patient_id"])
                   for name in ("manifest.csv", "labs.csv", "notes.csv")]
        assert all(any(pid in p for p in present) for pid in ids)
        for have, share in zip(present, CONFIG[site.name][1]):
            assert have <= ids
            assert abs((1 - len(have) / len(ids)) - share) < 0.08


def test_lab_units_and_times(three_sites: list[pathlib.Path]) -> None:
    labs = {site.name: read(site, "labs.csv") for site in three_sites}
    for df in labs.values():
        df["value"] = df["value"].astype(float)
        assert df.groupby(["patient_id", "code"]).size().max() <= 2
        assert all(dt.datetime.fromisoformat(t).year == 2026 for t in df["time"])
        assert list(df.itertuples(index=False)) == sorted(df.itertuples(index=False),
                                                          key=lambda r: (r.patient_id, r.code, r.time))
    units = {name: df.groupby("code")["unit"].unique().map(tuple).to_dict() for name, df in labs.items()}
    assert units["site-a"]["2345-7"] == ("mg/dL",) and units["site-b"]["2345-7"] == ("mmol/L",)
    assert units["site-b"]["2160-0"] == ("umol/L",) and units["site-c"]["718-7"] == ("g/L",)
    assert units["site-c"]["6690-2"] == ("10*9/L",) and units["site-c"]["1988-5"] == ("mg/dL",)

    def median(site: str, code: str) -> float:
        df = labs[site]
        return float(df.loc[df["code"] == code, "value"].median())

    assert 4.0 < median("site-b", "2345-7") < 9.0 and 90 < median("site-a", "2345-7") < 140
    assert 100 < median("site-c", "718-7") < 160 and 11 < median("site-a", "718-7") < 15
    assert 60 < median("site-b", "2160-0") < 120


def test_notes_use_site_wording(three_sites: list[pathlib.Path]) -> None:
    notes_b = read(three_sites[1], "notes.csv")["text"]
    assert all(count_phrases(t, SITE_A_CONCERNING) == 0 for t in notes_b)
    assert sum(count_phrases(t, SITE_B_CONCERNING) for t in notes_b) > len(notes_b)
    notes_a = read(three_sites[0], "notes.csv")["text"]
    assert all(count_phrases(t, SITE_B_CONCERNING) == 0 for t in notes_a)


def test_deterministic_and_seed_sensitive(tmp_path: pathlib.Path) -> None:
    runs = [write_hospitals(tmp_path / name, sites=4, patients=20, seed=seed, image_size=16)
            for name, seed in (("r1", 3), ("r2", 3), ("r3", 4))]
    for a, b, c in zip(*runs):
        for name in CSV_COLUMNS:
            assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / "labs.csv").read_bytes() != (c / "labs.csv").read_bytes()
        for rel in read(a, "manifest.csv")["image_path"]:
            da, db = pydicom.dcmread(a / rel), pydicom.dcmread(b / rel)
            assert da.SOPInstanceUID == db.SOPInstanceUID
            assert np.array_equal(da.pixel_array, db.pixel_array)
            assert (a / rel).read_bytes() == (b / rel).read_bytes()
    site_d = read(runs[0][3], "labels.csv")["label"].astype(int)
    assert site_d.sum() == round(site_profile(3, 3).prevalence * 20)
    first = read(runs[0][0], "manifest.csv")["image_path"].iloc[0]
    uid_seed3 = pydicom.dcmread(runs[0][0] / first).SOPInstanceUID
    assert uid_seed3 != pydicom.dcmread(runs[2][0] / first).SOPInstanceUID


def image_proxy(site: pathlib.Path, manifest: pd.DataFrame) -> pd.Series:
    """Signed peak lesion contrast: extreme of the Gaussian-smoothed tissue deviation from its median."""
    datasets = [pydicom.dcmread(site / rel) for rel in manifest["image_path"]]
    stack = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets]).astype(float)
    n = stack.shape[-1]
    k = np.exp(-((np.arange(n)[:, None] - np.arange(n)[None, :]) ** 2) / (2 * (n / 10) ** 2))
    k /= k.sum(axis=1, keepdims=True)

    def smooth(x: np.ndarray) -> np.ndarray:
        return k @ x @ k.T

    body = stack > -500
    med = np.array([np.median(img[m]) for img, m in zip(stack, body)])
    dev = np.where(body, stack - med[:, None, None], 0.0)
    inner = smooth(body.astype(float)) > 0.99
    sm = np.where(inner, smooth(dev), 0.0).reshape(len(stack), -1)
    hi, lo = sm.max(axis=1), sm.min(axis=1)
    return pd.Series(np.where(hi >= -lo, hi, lo), index=manifest["patient_id"])


def lab_proxy(labs: pd.DataFrame) -> pd.Series:
    """Mean signed z-score of each patient's latest lab values (sodium dropped, haemoglobin flipped)."""
    labs = labs.assign(value=labs["value"].astype(float)).sort_values("time")
    latest = labs.groupby(["patient_id", "code"])["value"].last().unstack()
    z = (latest - latest.mean()) / latest.std()
    signs = pd.Series(1.0, index=z.columns).drop("2951-2")
    signs["718-7"] = -1.0
    return (z[signs.index] * signs).mean(axis=1)


def test_label_depends_on_every_modality(big_site: pathlib.Path) -> None:
    labels = read(big_site, "labels.csv").set_index("patient_id")["label"].astype(int)
    notes = read(big_site, "notes.csv").set_index("patient_id")["text"]
    proxies = {
        "image": image_proxy(big_site, read(big_site, "manifest.csv")),
        "labs": lab_proxy(read(big_site, "labs.csv")),
        "notes": notes.map(lambda t: count_phrases(t, SITE_A_CONCERNING)).astype(float),
    }
    combined = pd.Series(0.0, index=labels.index)
    aucs = {}
    for name, proxy in proxies.items():
        corr = np.corrcoef(proxy, labels[proxy.index])[0, 1]
        assert corr > 0.2, (name, corr)
        z = ((proxy - proxy.mean()) / proxy.std()).reindex(labels.index, fill_value=0.0)
        aucs[name] = auroc(z.to_numpy(), labels.to_numpy())
        combined += z
    auc_all = auroc(combined.to_numpy(), labels.to_numpy())
    assert auc_all > max(aucs.values()) + 0.05, (aucs, auc_all)
    assert max(aucs.values()) < 0.85


@pytest.mark.parametrize("kwargs", [
    {"sites": 0, "patients": 50, "seed": 0},
    {"sites": 1, "patients": 9, "seed": 0},
    {"sites": 1, "patients": 50, "seed": 0, "image_size": 15},
    {"sites": 1, "patients": 50, "seed": -1},
])
def test_bad_arguments(tmp_path: pathlib.Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        write_hospitals(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_refuses_non_empty_site_folder(tmp_path: pathlib.Path) -> None:
    (tmp_path / "site-a").mkdir()  # empty: accepted
    (tmp_path / "site-b").mkdir()
    (tmp_path / "site-b" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="site-b"):
        write_hospitals(tmp_path, sites=2, patients=10, seed=0, image_size=16)
    assert not any((tmp_path / "site-a").iterdir())
    done = write_hospitals(tmp_path, sites=1, patients=10, seed=0, image_size=16)
    assert done == [tmp_path / "site-a"]


def test_default_keywords_keep_clean_output(tmp_path: pathlib.Path) -> None:
    plain = write_hospitals(tmp_path / "plain", sites=2, patients=12, seed=9, image_size=16)
    spelled = write_hospitals(tmp_path / "spelled", sites=2, patients=12, seed=9, image_size=16,
                              messy=False, modalities=None)
    for a, b in zip(plain, spelled):
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_modalities_restrict_whole_sites(tmp_path: pathlib.Path) -> None:
    full = write_hospitals(tmp_path / "full", sites=3, patients=40, seed=2, image_size=16)
    dirs = write_hospitals(tmp_path / "some", sites=3, patients=40, seed=2, image_size=16,
                           modalities={1: {"labs"}, 2: ["image"]})
    assert sorted(p.name for p in dirs[1].iterdir()) == ["labels.csv", "labs.csv", "site.yaml"]
    assert sorted(p.name for p in dirs[2].iterdir()) == ["images", "labels.csv", "manifest.csv", "site.yaml"]
    ids_b, ids_c = (set(read(d, "labels.csv")["patient_id"]) for d in dirs[1:])
    assert set(read(dirs[1], "labs.csv")["patient_id"]) == ids_b
    assert set(read(dirs[2], "manifest.csv")["patient_id"]) == ids_c
    for a, b in zip(full, dirs):
        assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert all((full[0] / f).read_bytes() == (dirs[0] / f).read_bytes()
               for f in ("manifest.csv", "labs.csv", "notes.csv"))


def test_modalities_two_of_three(tmp_path: pathlib.Path) -> None:
    (site,) = write_hospitals(tmp_path, sites=1, patients=60, seed=4, image_size=16,
                              modalities={0: {"image", "notes"}})
    assert not (site / "labs.csv").exists()
    covered = set(read(site, "manifest.csv")["patient_id"]) | set(read(site, "notes.csv")["patient_id"])
    assert covered == set(read(site, "labels.csv")["patient_id"])


@pytest.mark.parametrize("modalities", [
    {3: {"labs"}}, {-1: {"labs"}}, {0: set()}, {0: {"xray"}}, {0: "labs"}, {"site-a": {"labs"}},
])
def test_bad_modalities(tmp_path: pathlib.Path, modalities: dict[object, object]) -> None:
    with pytest.raises(ValueError):
        write_hospitals(tmp_path, sites=3, patients=10, seed=0, image_size=16, modalities=modalities)
    assert not any(tmp_path.iterdir())


def test_every_synthetic_site_owns_a_privacy_policy(tmp_path: pathlib.Path) -> None:
    import yaml
    for site in write_hospitals(tmp_path, sites=2, patients=12, seed=9, image_size=16):
        policy = yaml.safe_load((site / "site.yaml").read_text())["privacy"]
        assert policy["dataset_id"] == f"synthetic-{site.name}" and policy["lifetime_epsilon"] > 0
