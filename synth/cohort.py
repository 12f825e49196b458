"""One site's synthetic cohort: latent factors, labels, availability, times, lab and note rows."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from synth.dicom_writer import render_ct_hu
from synth.notes_text import compose_note, concerning_count
from synth.site_profiles import LAB_SPECS, MissingShares, SiteProfile

SCORE_NOISE_SD = 0.6
LAB_NOISE_SD = 0.6
LAB_PRESENT_PROB = 0.85
LAB_OLDER_PROB = 0.3
BASE_DATE = dt.datetime(2026, 3, 1)
# Independent RNG streams per (seed, site): default_rng([seed, site_index, stream]).
# 0-5: the clean cohort; 7: site_profiles perturbation; 8+: opt-in extras (modalities, messy export).
LATENT, MISSING, IMAGE, LABS, NOTES, DATES = range(6)
MODALITIES, MESSY_PLAN, MESSY_IMAGE, MESSY_LABS, MESSY_NOTES, INDEX_TIME, MESSY_LABELS = range(8, 15)

LabRow = tuple[str, str, str, str, str]  # patient_id, code, value, unit, time


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

    def latest_draw(self, i: int) -> int:
        """Minutes after 06:00 on BASE_DATE of patient i's most recent lab draw."""
        return int(self.minute[i]) + 24 * 60 * int(self.day[i])


def stream(seed: int, k: int, purpose: int) -> np.random.Generator:
    """The generator for one (seed, site, purpose) stream."""
    return np.random.default_rng([seed, k, purpose])


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
    latent = stream(seed, k, LATENT)
    factors = latent.standard_normal((patients, 3))
    score = factors.sum(axis=1) + SCORE_NOISE_SD * latent.standard_normal(patients)
    dates = stream(seed, k, DATES)
    return Cohort(
        ids=tuple(f"{profile.prefix}{i:05d}" for i in range(1, patients + 1)),
        factors=factors,
        labels=exact_labels(score, profile.prevalence),
        has=_draw_missing(stream(seed, k, MISSING), patients, profile.missing),
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


def iso(day: int, minute: int) -> str:
    """ISO-8601 timestamp `minute` minutes after 06:00 on BASE_DATE + `day`."""
    stamp = BASE_DATE + dt.timedelta(days=int(day), hours=6, minutes=int(minute))
    return stamp.strftime("%Y-%m-%dT%H:%M:%S")


def study_date(day: int) -> str:
    """DICOM StudyDate (YYYYMMDD) of admission day `day`."""
    return (BASE_DATE + dt.timedelta(days=int(day))).strftime("%Y%m%d")


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


def lab_rows(cohort: Cohort, profile: SiteProfile, seed: int) -> list[LabRow]:
    """Long-format lab rows (patient_id, code, value, unit, time) in the site's reporting units."""
    rng = stream(seed, profile.index, LABS)
    latest, older, present, has_older = _lab_values(rng, cohort.factors[:, 1])
    rows: list[LabRow] = []
    for i in np.flatnonzero(cohort.has[:, 1]):
        t_new = cohort.latest_draw(i)
        for j in np.flatnonzero(present[i]):
            spec = LAB_SPECS[j]
            report = profile.lab_report(spec)
            rows.append((cohort.ids[i], spec.code, format_value(latest[i, j] * report.factor),
                         report.unit, iso(0, t_new)))
            if has_older[i, j]:
                rows.append((cohort.ids[i], spec.code, format_value(older[i, j] * report.factor),
                             report.unit, iso(0, t_new - int(cohort.older_gap[i]))))
    return sorted(rows, key=lambda r: (r[0], r[1], r[4]))


def note_rows(cohort: Cohort, profile: SiteProfile, seed: int) -> list[tuple[str, str]]:
    """(patient_id, text) rows for patients with a note."""
    rng = stream(seed, profile.index, NOTES)
    rows: list[tuple[str, str]] = []
    for i in np.flatnonzero(cohort.has[:, 2]):
        k = concerning_count(float(cohort.factors[i, 2]))
        rows.append((cohort.ids[i], compose_note(rng, profile.wording, k)))
    return sorted(rows)


def render_images(cohort: Cohort, profile: SiteProfile, seed: int,
                  image_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(patient index, HU slice) for every patient with an image, in cohort order."""
    rng = stream(seed, profile.index, IMAGE)
    for i in np.flatnonzero(cohort.has[:, 0]):
        yield int(i), render_ct_hu(rng, float(cohort.factors[i, 0]), image_size, profile.scanner)
