"""Messy-mode images: which patients get which DICOM variant or broken entry, and writing them."""

from __future__ import annotations

import pathlib
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from synth import dicom_broken, dicom_variants
from synth.cohort import MESSY_IMAGE, MESSY_PLAN, Cohort, render_images, stream, study_date
from synth.dicom_variants import ImageJob
from synth.dicom_writer import make_uids
from synth.site_profiles import SiteProfile

Writer = Callable[[ImageJob, np.ndarray, np.random.Generator], str]

VARIANT_WRITERS: Mapping[str, Writer] = MappingProxyType({
    "monochrome1": dicom_variants.monochrome1,
    "multiframe": dicom_variants.multiframe,
    "rle": dicom_variants.rle,
    "jpeg2000": dicom_variants.jpeg2000,
    "uint8": dicom_variants.uint8,
    "series": dicom_variants.series,
    "voi_window": dicom_variants.voi_window,
})
BROKEN_WRITERS: Mapping[str, Writer] = MappingProxyType({
    "truncated": dicom_broken.truncated,
    "not_dicom": dicom_broken.not_dicom,
    "no_pixels": dicom_broken.no_pixels,
    "sr": dicom_broken.structured_report,
    "missing": dicom_broken.missing,
})
VARIANT_SHARE = 0.10  # of the site's patients with an image, per variant
MIN_PATIENTS_FOR_ONE_EACH = 50
BROKEN_TWO_EACH_FROM = 80  # image patients needed for 2 (not 1) entries of each broken kind


def image_kind_counts(n_images: int, patients: int) -> dict[str, int]:
    """How many patients get each variant / broken kind (before running out of image patients)."""
    per_variant = int(round(VARIANT_SHARE * n_images))
    if patients >= MIN_PATIENTS_FOR_ONE_EACH:
        per_variant = max(per_variant, 1)
    per_broken = 2 if n_images >= BROKEN_TWO_EACH_FROM else 1
    counts = {kind: per_variant for kind in VARIANT_WRITERS}
    counts.update({kind: per_broken for kind in BROKEN_WRITERS})
    return counts


def plan_images(cohort: Cohort, seed: int, k: int) -> dict[int, str]:
    """Patient index -> variant or broken kind; patients not in the map get a clean file.

    Kinds are dealt one of each first, so every kind appears while image patients last.
    """
    with_image = np.flatnonzero(cohort.has[:, 0])
    order = [int(i) for i in stream(seed, k, MESSY_PLAN).permutation(with_image)]
    counts = image_kind_counts(len(with_image), len(cohort.ids))
    kinds = [kind for kind, n in counts.items() if n >= 1]
    kinds += [kind for kind, n in counts.items() for _ in range(n - 1)]
    return dict(zip(order, kinds))


def write_messy_images(site_dir: pathlib.Path, cohort: Cohort, profile: SiteProfile, seed: int,
                       image_size: int, plan: Mapping[int, str]) -> list[tuple[str, str]]:
    """Write every patient's image per `plan`; return sorted manifest rows (patient_id, image_path)."""
    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = stream(seed, profile.index, MESSY_IMAGE)
    rows: list[tuple[str, str]] = []
    for i, hu in render_images(cohort, profile, seed, image_size):
        pid = cohort.ids[i]
        job = ImageJob(site_dir, pid, make_uids(seed, profile.name, pid), profile,
                       study_date(int(cohort.day[i])))
        kind = plan.get(i, "clean")
        writer = VARIANT_WRITERS.get(kind) or BROKEN_WRITERS.get(kind) or dicom_variants.clean
        rows.append((pid, writer(job, hu, rng)))
    return sorted(rows)


def broken_patients(plan: Mapping[int, str]) -> set[int]:
    """Indices of patients whose manifest entry is broken."""
    return {i for i, kind in plan.items() if kind in BROKEN_WRITERS}
