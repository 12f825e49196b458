"""Write synthetic multi-modal hospital sites (CT DICOM, labs, notes, labels) to disk."""

from __future__ import annotations

import csv
import datetime as dt
import math
import pathlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from synth.dicom_writer import make_uids, render_ct_hu, write_ct
from synth.notes_text import compose_note, concerning_count
from synth.site_profiles import LAB_SPECS, MAX_SITES, MissingShares, SiteProfile, site_name, site_profile

MIN_PATIENTS, MAX_PATIENTS = 10, 99_999
MIN_IMAGE_SIZE = 16
SCORE_NOISE_SD = 0.6
LAB_NOISE_SD = 0.6
LAB_PRESENT_PROB = 0.85
LAB_OLDER_PROB = 0.3
BASE_DATE = dt.datetime(2026, 3, 1)
# Independent RNG streams per (seed, site): default_rng([seed, site_index, stream]).
_LATENT, _MISSING, _IMAGE, _LABS, _NOTES, _DATES = range(6)


@dataclass(frozen=True)
class Cohort:
    """Latent factors, labels, modality availability and timing of one site's patients."""

    ids: tuple[str, ...]
    factors: np.ndarray  # (n, 3): f_img, f_lab, f_note
    labels: np.ndarray  # (n,) int 0/1
    has: np.ndarray  # (n, 3) bool: image, labs, notes present
    day: np.ndarray  # (n,) admission day offset from BASE_DATE
    minute: np.ndarray  # (n,) minutes after 06:00 of the most recent lab draw
    older_gap: np.ndarray  # (n,) minutes between older and most recent lab draw


def _rng(seed: int, k: int, stream: int) -> np.random.Generator:
    """The generator for one (seed, site, purpose) stream."""
    return np.random.default_rng([seed, k, stream])


def _validate(sites: int, patients: int, seed: int, image_size: int) -> None:
    """Raise ValueError for arguments outside the supported ranges."""
    if not 1 <= sites <= MAX_SITES:
        raise ValueError(f"sites must be between 1 and {MAX_SITES}, got {sites}")
    if not MIN_PATIENTS <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be between {MIN_PATIENTS} and {MAX_PATIENTS}, got {patients}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")


def _check_targets(dirs: Sequence[pathlib.Path]) -> None:
    """Refuse to write into an existing non-empty site folder (or over a file)."""
    for d in dirs:
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise FileExistsError(f"refusing to overwrite existing non-empty site folder: {d}")


def exact_labels(score: np.ndarray, prevalence: float) -> np.ndarray:
    """Label 1 for exactly round(prevalence * n) highest scores (half rounds up), else 0."""
    n_pos = int(math.floor(prevalence * len(score) + 0.5))
    labels = np.zeros(len(score), dtype=np.int64)
    labels[np.argsort(-score, kind="stable")[:n_pos]] = 1
    return labels


def _draw_missing(rng: np.random.Generator, n: int, shares: MissingShares) -> np.ndarray:
    """Independent per-modality availability; patients missing everything keep one random modality."""
    has = rng.random((n, 3)) >= np.array([shares.image, shares.labs, shares.notes])
    keep = rng.integers(0, 3, size=n)
    none = ~has.any(axis=1)
    has[none, keep[none]] = True
    return has


def draw_cohort(profile: SiteProfile, patients: int, seed: int) -> Cohort:
    """Draw latent factors, exact-prevalence labels, availability and times for one site."""
    k = profile.index
    latent = _rng(seed, k, _LATENT)
    factors = latent.standard_normal((patients, 3))
    score = factors.sum(axis=1) + SCORE_NOISE_SD * latent.standard_normal(patients)
    dates = _rng(seed, k, _DATES)
    return Cohort(
        ids=tuple(f"{profile.prefix}{i:05d}" for i in range(1, patients + 1)),
        factors=factors,
        labels=exact_labels(score, profile.prevalence),
        has=_draw_missing(_rng(seed, k, _MISSING), patients, profile.missing),
        day=dates.integers(0, 28, size=patients),
        minute=dates.integers(0, 240, size=patients),
        older_gap=dates.integers(6 * 60, 48 * 60, size=patients),
    )


def format_value(value: float) -> str:
    """Round to 3 significant figures, but never coarser than integers nor finer than 3 decimals."""
    if value == 0:
        return "0"
    decimals = min(max(2 - math.floor(math.log10(abs(value))), 0), 3)
    return f"{value:.{decimals}f}"


def _iso(day: int, minute: int) -> str:
    """ISO-8601 timestamp `minute` minutes after 06:00 on BASE_DATE + `day`."""
    stamp = BASE_DATE + dt.timedelta(days=int(day), hours=6, minutes=int(minute))
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


def _lab_values(
    rng: np.random.Generator, f_lab: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Canonical (latest, older) values and (present, has_older) masks, shape (n, n_labs)."""
    n, m = len(f_lab), len(LAB_SPECS)
    mean = np.array([s.mean for s in LAB_SPECS])
    sd = np.array([s.sd for s in LAB_SPECS])
    loading = np.array([s.loading for s in LAB_SPECS])
    present = rng.random((n, m)) < LAB_PRESENT_PROB
    forced = rng.integers(0, m, size=n)
    empty = ~present.any(axis=1)
    present[empty, forced[empty]] = True
    latest = mean + sd * (loading * f_lab[:, None] + LAB_NOISE_SD * rng.standard_normal((n, m)))
    older = latest + sd * rng.standard_normal((n, m))
    has_older = rng.random((n, m)) < LAB_OLDER_PROB
    floor = 0.05 * mean
    return np.maximum(latest, floor), np.maximum(older, floor), present, has_older


def lab_rows(cohort: Cohort, profile: SiteProfile, seed: int) -> list[tuple[str, str, str, str, str]]:
    """Long-format lab rows (patient_id, code, value, unit, time) in the site's reporting units."""
    rng = _rng(seed, profile.index, _LABS)
    latest, older, present, has_older = _lab_values(rng, cohort.factors[:, 1])
    rows: list[tuple[str, str, str, str, str]] = []
    for i in np.flatnonzero(cohort.has[:, 1]):
        t_new = int(cohort.minute[i]) + 24 * 60 * int(cohort.day[i])
        for j in np.flatnonzero(present[i]):
            spec = LAB_SPECS[j]
            report = profile.lab_report(spec)
            rows.append((cohort.ids[i], spec.code, format_value(latest[i, j] * report.factor),
                         report.unit, _iso(0, t_new)))
            if has_older[i, j]:
                rows.append((cohort.ids[i], spec.code, format_value(older[i, j] * report.factor),
                             report.unit, _iso(0, t_new - int(cohort.older_gap[i]))))
    return sorted(rows, key=lambda r: (r[0], r[1], r[4]))


def note_rows(cohort: Cohort, profile: SiteProfile, seed: int) -> list[tuple[str, str]]:
    """(patient_id, text) rows for patients with a note."""
    rng = _rng(seed, profile.index, _NOTES)
    rows: list[tuple[str, str]] = []
    for i in np.flatnonzero(cohort.has[:, 2]):
        k = concerning_count(float(cohort.factors[i, 2]))
        rows.append((cohort.ids[i], compose_note(rng, profile.wording, k)))
    return sorted(rows)


def _write_images(site_dir: pathlib.Path, cohort: Cohort, profile: SiteProfile, seed: int,
                  image_size: int) -> list[tuple[str, str]]:
    """Render and write one CT per patient with an image; return manifest rows."""
    rng = _rng(seed, profile.index, _IMAGE)
    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for i in np.flatnonzero(cohort.has[:, 0]):
        pid = cohort.ids[i]
        hu = render_ct_hu(rng, float(cohort.factors[i, 0]), image_size, profile.scanner)
        rel = f"images/{pid}.dcm"
        study_date = (BASE_DATE + dt.timedelta(days=int(cohort.day[i]))).strftime("%Y%m%d")
        write_ct(site_dir / rel, hu, patient_id=pid, uids=make_uids(seed, profile.name, pid),
                 profile=profile, study_date=study_date)
        rows.append((pid, rel))
    return sorted(rows)


def _write_csv(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write a utf-8 CSV with '\\n' line endings."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_site(site_dir: pathlib.Path, profile: SiteProfile, patients: int, seed: int,
                image_size: int) -> None:
    """Generate and write all files of one site."""
    cohort = draw_cohort(profile, patients, seed)
    site_dir.mkdir(parents=True, exist_ok=True)
    manifest = _write_images(site_dir, cohort, profile, seed, image_size)
    _write_csv(site_dir / "manifest.csv", ("patient_id", "image_path"), manifest)
    _write_csv(site_dir / "labs.csv", ("patient_id", "code", "value", "unit", "time"),
               lab_rows(cohort, profile, seed))
    _write_csv(site_dir / "notes.csv", ("patient_id", "text"), note_rows(cohort, profile, seed))
    _write_csv(site_dir / "labels.csv", ("patient_id", "label"),
               zip(cohort.ids, (int(v) for v in cohort.labels)))


def write_hospitals(out: pathlib.Path, *, sites: int, patients: int, seed: int,
                    image_size: int = 64) -> list[pathlib.Path]:
    """Write `sites` site folders under `out` (named site-a, site-b, site-c, ...), each with `patients` patients; return the folders in order."""
    _validate(sites, patients, seed, image_size)
    out = pathlib.Path(out)
    dirs = [out / site_name(k) for k in range(sites)]
    _check_targets(dirs)
    for k, site_dir in enumerate(dirs):
        _write_site(site_dir, site_profile(k, seed), patients, seed, image_size)
    return dirs
