"""Loading real synthetic site folders (real DICOM via pydicom, real CSVs) into arrays."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.site_data.notes import encode, first_tokens, token_id
from client.site import discover_sites, site_settings
from client.site_data.loader import SiteDataError, load_site, validation_mask
from configs.schema import ExperimentConfig
from synth.hospitals import write_hospitals


def test_site_arrays_have_configured_shapes_and_consistent_masks(small_sites: Path, tmp_path: Path,
                                                                 experiment: ExperimentConfig) -> None:
    d = experiment.data
    arrays, report = load_site(small_sites / "site-a", d, cache_dir=tmp_path)
    n, f = report.usable_patients, len(d.labs)
    assert n == report.patients == 120
    assert arrays.image.shape == (n, d.image_size, d.image_size) and arrays.image.dtype == np.float32
    assert arrays.labs.shape == arrays.lab_mask.shape == (n, f)
    assert arrays.tokens.shape == (n, d.note_max_tokens) and arrays.tokens.dtype == np.int64
    assert arrays.modality_mask.shape == (n, 3) and arrays.label.shape == (n,)
    assert 0.0 <= arrays.image.min() and arrays.image.max() <= 1.0
    has_image = arrays.modality_mask[:, 0] > 0
    assert np.all(arrays.image[~has_image] == 0) and np.all(arrays.image[has_image].max(axis=(1, 2)) > 0)
    assert np.array_equal(arrays.modality_mask[:, 1] > 0, arrays.lab_mask.any(axis=1))
    assert np.array_equal(arrays.modality_mask[:, 2] > 0, arrays.tokens.any(axis=1))
    assert np.all(arrays.labs[arrays.lab_mask == 0] == 0)
    assert arrays.tokens.max() < d.note_buckets
    manifest = pd.read_csv(small_sites / "site-a" / "manifest.csv")
    assert report.coverage["image"] == len(manifest) == int(has_image.sum())
    assert report.patients == n and arrays.modality_mask.sum(axis=1).min() >= 1


def test_unit_conventions_are_harmonised_to_canonical_units(small_sites: Path, tmp_path: Path,
                                                            experiment: ExperimentConfig) -> None:
    """site-b reports glucose in mmol/L and creatinine in umol/L; after conversion its
    standardised distribution matches site-a's, which reports canonical units."""
    d = experiment.data
    a, _ = load_site(small_sites / "site-a", d, cache_dir=tmp_path)
    b, report_b = load_site(small_sites / "site-b", d, cache_dir=tmp_path)
    assert report_b.unit_conversions["2345-7: mmol/L -> mg/dL"] > 50
    assert report_b.unit_conversions["2160-0: umol/L -> mg/dL"] > 50
    for j in (0, 1):  # glucose, creatinine
        mean_a = a.labs[a.lab_mask[:, j] > 0, j].mean()
        mean_b = b.labs[b.lab_mask[:, j] > 0, j].mean()
        assert abs(mean_a - mean_b) < 0.5, (j, mean_a, mean_b)


def test_split_is_deterministic_and_stable_when_patients_are_added() -> None:
    ids = [f"P{i:04d}" for i in range(1000)]
    first = validation_mask(ids, 0.2, seed=0)
    assert 0.15 < first.mean() < 0.25
    assert np.array_equal(first, validation_mask(ids, 0.2, seed=0))
    assert np.array_equal(validation_mask(ids + ["NEW"], 0.2, seed=0)[:1000], first)
    assert not np.array_equal(first, validation_mask(ids, 0.2, seed=1))


def test_notes_hash_without_a_vocabulary_and_respect_the_cap() -> None:
    ids = encode("Febrile, febrile and SOB!", buckets=64, max_tokens=3)
    assert list(ids) == [token_id("febrile", 64)] * 2 + [token_id("and", 64)]
    assert encode("", buckets=64, max_tokens=4).tolist() == [0, 0, 0, 0]
    assert all(1 <= token_id(w, 64) < 64 for w in ("a", "b", "tachycardic"))


def test_a_patients_notes_are_tokenised_only_up_to_the_cap() -> None:
    def notes():  # noqa: ANN202
        yield "One two,"
        yield "THREE four five"
        raise AssertionError("tokenised past the cap")
    assert first_tokens(notes(), 4) == ["one", "two", "three", "four"]
    assert np.array_equal(encode(["Febrile,", "SOB and"], buckets=64, max_tokens=8),
                          encode("Febrile,\nSOB and", buckets=64, max_tokens=8))


MANY_LONG_NOTES = """
import resource, sys
import pandas as pd
from client.site_data.notes import note_tokens
notes = pd.DataFrame({"patient_id": ["A1"] * 30, "text": [f"note{i} " + "word " * 800_000 for i in range(30)]})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tokens, problems = note_tokens(notes, ["A1"], buckets=1024, max_tokens=512)
print(int((tokens[0] > 0).sum()), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def test_one_patients_many_long_notes_cost_no_more_than_the_token_cap() -> None:
    """30 notes of 4 MB each (24 million tokens) for one patient: only the first 512 are made."""
    out = subprocess.run([sys.executable, "-c", MANY_LONG_NOTES], capture_output=True, text=True, timeout=300,
                         check=True).stdout.split()
    assert int(out[0]) == 512 and int(out[1]) < 400_000, out  # KB (measured ~180 MB); all tokens would be ~1.5 GB


def test_one_corrupt_dicom_is_counted_not_fatal(small_sites: Path, tmp_path: Path,
                                                experiment: ExperimentConfig) -> None:
    site = tmp_path / "site"
    shutil.copytree(small_sites / "site-a", site)
    victim = site / pd.read_csv(site / "manifest.csv")["image_path"].iloc[0]
    victim.write_bytes(victim.read_bytes()[:300])
    arrays, report = load_site(site, experiment.data, cache_dir=tmp_path / "cache")
    assert sum(report.quarantined_images.values()) == 1
    assert report.coverage["image"] == len(pd.read_csv(site / "manifest.csv")) - 1


def test_missing_labels_file_is_a_clear_site_error(tmp_path: Path, experiment: ExperimentConfig) -> None:
    (tmp_path / "site").mkdir()
    with pytest.raises(SiteDataError, match="labels.csv: labels file is missing"):
        load_site(tmp_path / "site", experiment.data, cache_dir=tmp_path / "cache")


def test_simulation_sites_map_partition_ids_to_sorted_folders(small_sites: Path) -> None:
    names = [p.name for p in discover_sites(small_sites)]
    assert names == ["site-a", "site-b", "site-c"]
    s = site_settings({"partition-id": 1, "num-partitions": 3}, str(small_sites))
    assert s.name == "site-b" and s.data_dir == small_sites / "site-b"
    assert s.state_dir == small_sites / ".fedclinic-state" / "site-b"
    with pytest.raises(SiteDataError, match="2 virtual sites but 3 site folders"):
        site_settings({"partition-id": 0, "num-partitions": 2}, str(small_sites))


def test_deployed_site_uses_its_own_node_config_not_the_coordinators_root(small_sites: Path) -> None:
    s = site_settings({"data-path": str(small_sites / "site-c"), "site-name": "st-marys"}, "/coordinator/says")
    assert (s.name, s.data_dir) == ("st-marys", small_sites / "site-c")
    with pytest.raises(SiteDataError, match="data-path"):
        site_settings({}, None)


@pytest.mark.parametrize("only", [{"labs"}, {"image"}, {"notes"}])
def test_a_single_modality_site_loads(only: set[str], tmp_path: Path, experiment: ExperimentConfig) -> None:
    (site,) = write_hospitals(tmp_path / "sites", sites=1, patients=60, seed=2, image_size=32,
                              modalities={0: only})
    arrays, report = load_site(site, experiment.data, cache_dir=tmp_path / "cache")
    present = {name for name, n in report.coverage.items() if n}
    assert present == only and report.usable_patients == 60 == len(arrays.label)


def test_a_test_split_is_disjoint_and_independent_of_the_validation_fraction() -> None:
    from client.split import split_masks
    ids = [f"P{i:05d}" for i in range(5000)]
    val, test = split_masks(ids, 0.2, 0.2, seed=0)
    assert not (val & test).any() and 0.17 < test.mean() < 0.23 and 0.14 < val.mean() < 0.18
    other_val, same_test = split_masks(ids, 0.3, 0.2, seed=0)
    assert np.array_equal(test, same_test)  # changing validation.fraction moves no patient into or out of test
    plain_val, no_test = split_masks(ids, 0.2, 0.0, seed=0)
    assert not no_test.any() and np.array_equal(plain_val, validation_mask(ids, 0.2, seed=0))


def test_no_training_or_validation_dataset_holds_a_test_patient(tmp_path: Path, experiment: ExperimentConfig) -> None:
    from client.site_file import read_site_file
    from client.trainer import split_dataset
    site = write_hospitals(tmp_path / "sites", sites=1, patients=150, seed=3, image_size=16, test_fraction=0.3)[0]
    site_file = read_site_file(site / "site.yaml", experiment.data)
    assert site_file.validation.test_fraction == 0.3
    arrays, _ = load_site(site, experiment.data, cache_dir=tmp_path / "cache", site_file=site_file)
    assert 30 <= arrays.is_test.sum() <= 60 and not (arrays.is_test & arrays.is_val).any()
    train, val = split_dataset(arrays, validation=False), split_dataset(arrays, validation=True)
    assert len(train) + len(val) + int(arrays.is_test.sum()) == len(arrays.label)
    test_images = {arr.tobytes() for arr in arrays.image[arrays.is_test & (arrays.modality_mask[:, 0] > 0)]}
    assert test_images
    assert not test_images & {t.numpy().tobytes() for t in train.tensors[0][:, 0]}
    assert not test_images & {t.numpy().tobytes() for t in val.tensors[0][:, 0]}
