"""Write one site as a "messy export": the defects a real site loader must survive.

Per site (seeded, deterministic), on top of the clean cohort:
- images (synth/messy_images.py): ~10 % of image patients each as MONOCHROME1, 3-frame,
  RLE Lossless, JPEG 2000 Lossless, 8-bit with rescale, a 3-instance series folder and a
  50/350 VOI window; 1-2 each of truncated, non-DICOM, no-PixelData, Basic Text SR and
  missing-file manifest entries;
- labs (synth/messy_labs.py): mixed units, a site-local code registered in site.yaml,
  rows after index_time and > 72 h before it, and one row of each bad kind;
  site-b writes labs.parquet instead of labs.csv;
- notes (synth/messy_tables.py): 2 empty, 2 whitespace-only, a duplicate row, a patient with
  two different notes and (one site) a non-UTF-8 row; site-c writes notes.jsonl;
- labels: an index_time column, one 'unknown' label, one conflicting duplicate, one patient absent.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import numpy as np

from synth.cohort import (
    INDEX_TIME, MESSY_LABELS, MESSY_LABS, MESSY_NOTES, Cohort, lab_rows, note_rows, stream,
)
from synth.messy_images import broken_patients, plan_images, write_messy_images
from synth.messy_labs import LAB_MESS, index_minutes, messy_lab_rows, site_yaml
from synth.messy_tables import messy_label_rows, messy_note_rows
from synth.modalities import allowed_mask
from synth.site_files import write_csv, write_csv_bytes, write_jsonl, write_parquet
from synth.site_profiles import SiteProfile

PARQUET_LABS_SITE = 1  # site-b: labs.parquet
JSONL_NOTES_SITE = 2  # site-c: notes.jsonl
LAB_HEADER = ("patient_id", "code", "value", "unit", "time")
NOTE_HEADER = ("patient_id", "text")
LABEL_HEADER = ("patient_id", "label", "index_time")


@dataclass(frozen=True)
class MessyOptions:
    """Per-site switches: the site's modalities, and whether its notes.csv gets a non-UTF-8 row."""

    allowed: frozenset[str]
    broken_utf8: bool


def _write_labs(site_dir: pathlib.Path, cohort: Cohort, profile: SiteProfile, seed: int,
                index: np.ndarray) -> None:
    """labs.csv (labs.parquet at site-b) and site.yaml."""
    rng = stream(seed, profile.index, MESSY_LABS)
    rows = messy_lab_rows(lab_rows(cohort, profile, seed), cohort, profile, index, rng)
    if profile.index == PARQUET_LABS_SITE:
        write_parquet(site_dir / "labs.parquet", LAB_HEADER, rows)
    else:
        write_csv(site_dir / "labs.csv", LAB_HEADER, rows)
    (site_dir / "site.yaml").write_text(site_yaml(LAB_MESS[profile.index % 3]), encoding="utf-8")


def _write_notes(site_dir: pathlib.Path, cohort: Cohort, profile: SiteProfile, seed: int,
                 broken_utf8: bool) -> None:
    """notes.csv (written in binary; may hold one non-UTF-8 row), or notes.jsonl at site-c."""
    rng = stream(seed, profile.index, MESSY_NOTES)
    jsonl = profile.index == JSONL_NOTES_SITE
    rows = messy_note_rows(note_rows(cohort, profile, seed), cohort, profile, rng,
                           broken_utf8=broken_utf8 and not jsonl)
    if jsonl:
        write_jsonl(site_dir / "notes.jsonl", NOTE_HEADER, [(p, str(t)) for p, t in rows])
    else:
        write_csv_bytes(site_dir / "notes.csv", NOTE_HEADER, rows)


def _label_candidates(cohort: Cohort, allowed: frozenset[str], broken: set[int]) -> list[int]:
    """Patients with every modality of the site and a usable image entry (if the site has images)."""
    full = np.flatnonzero((cohort.has == allowed_mask(allowed)).all(axis=1))
    return [int(i) for i in full if int(i) not in broken]


def write_messy_site(site_dir: pathlib.Path, cohort: Cohort, profile: SiteProfile, seed: int,
                     image_size: int, options: MessyOptions) -> None:
    """Write all files of one messy site (only the files of its modalities, plus labels.csv)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    k = profile.index
    plan = plan_images(cohort, seed, k) if "image" in options.allowed else {}
    if "image" in options.allowed:
        manifest = write_messy_images(site_dir, cohort, profile, seed, image_size, plan)
        write_csv(site_dir / "manifest.csv", ("patient_id", "image_path"), manifest)
    index = index_minutes(cohort, stream(seed, k, INDEX_TIME))
    if "labs" in options.allowed:
        _write_labs(site_dir, cohort, profile, seed, index)
    if "notes" in options.allowed:
        _write_notes(site_dir, cohort, profile, seed, options.broken_utf8)
    candidates = _label_candidates(cohort, options.allowed, broken_patients(plan))
    labels = messy_label_rows(cohort, index, candidates, stream(seed, k, MESSY_LABELS))
    write_csv(site_dir / "labels.csv", LABEL_HEADER, labels)
