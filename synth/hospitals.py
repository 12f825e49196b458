"""Write synthetic multi-modal hospital sites (CT DICOM, labs, notes, labels) to disk."""

from __future__ import annotations

import pathlib
from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from synth.cohort import MODALITIES, Cohort, draw_cohort, lab_rows, note_rows, render_images, stream, study_date
from synth.dicom_writer import make_uids, write_ct
from synth.messy_site import JSONL_NOTES_SITE, MessyOptions, write_messy_site
from synth.modalities import ALL_MODALITIES, check_modalities, restrict
from synth.site_files import write_csv
from synth.site_policy import add_policy
from synth.site_profiles import MAX_SITES, SiteProfile, site_name, site_profile

MIN_PATIENTS, MAX_PATIENTS = 10, 99_999
MIN_IMAGE_SIZE = 16


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


def site_cohort(profile: SiteProfile, patients: int, seed: int, allowed: frozenset[str]) -> Cohort:
    """The site's cohort, with modalities outside `allowed` removed for every patient."""
    cohort = draw_cohort(profile, patients, seed)
    if allowed == ALL_MODALITIES:
        return cohort
    return replace(cohort, has=restrict(cohort.has, allowed, stream(seed, profile.index, MODALITIES)))


def _write_images(site_dir: pathlib.Path, cohort: Cohort, profile: SiteProfile, seed: int,
                  image_size: int) -> list[tuple[str, str]]:
    """Render and write one CT per patient with an image; return manifest rows."""
    (site_dir / "images").mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    for i, hu in render_images(cohort, profile, seed, image_size):
        pid = cohort.ids[i]
        rel = f"images/{pid}.dcm"
        write_ct(site_dir / rel, hu, patient_id=pid, uids=make_uids(seed, profile.name, pid),
                 profile=profile, study_date=study_date(int(cohort.day[i])))
        rows.append((pid, rel))
    return sorted(rows)


def _write_site(site_dir: pathlib.Path, cohort: Cohort, profile: SiteProfile, seed: int,
                image_size: int, allowed: frozenset[str]) -> None:
    """Write the clean files of one site (only the files of the site's modalities, plus labels)."""
    site_dir.mkdir(parents=True, exist_ok=True)
    if "image" in allowed:
        manifest = _write_images(site_dir, cohort, profile, seed, image_size)
        write_csv(site_dir / "manifest.csv", ("patient_id", "image_path"), manifest)
    if "labs" in allowed:
        write_csv(site_dir / "labs.csv", ("patient_id", "code", "value", "unit", "time"),
                  lab_rows(cohort, profile, seed))
    if "notes" in allowed:
        write_csv(site_dir / "notes.csv", ("patient_id", "text"), note_rows(cohort, profile, seed))
    write_csv(site_dir / "labels.csv", ("patient_id", "label"),
              zip(cohort.ids, (int(v) for v in cohort.labels)))


def _broken_utf8_site(sites: int, allowed: Mapping[int, frozenset[str]]) -> int | None:
    """The one site whose notes.csv gets a non-UTF-8 row: the first CSV-notes site that has notes."""
    for k in range(sites):
        if k != JSONL_NOTES_SITE and "notes" in allowed.get(k, ALL_MODALITIES):
            return k
    return None


def write_hospitals(out: pathlib.Path, *, sites: int, patients: int, seed: int, image_size: int = 64,
                    messy: bool = False,
                    modalities: Mapping[int, Iterable[str]] | None = None,
                    test_fraction: float = 0.0) -> list[pathlib.Path]:
    """Write `sites` site folders under `out` (site-a, site-b, ...), each with `patients` patients.

    `modalities` maps a site index to the subset of {"image", "labs", "notes"} that whole site
    exports (labels.csv is always written). `test_fraction` > 0 writes a site.yaml that sets that
    share of patients aside as a test split (validation.test_fraction). `messy=True` adds the seeded "messy export" defects
    described in synth/messy_site.py. Defaults reproduce the clean output byte for byte.
    Returns the site folders in order.
    """
    _validate(sites, patients, seed, image_size)
    allowed = check_modalities(modalities, sites)
    out = pathlib.Path(out)
    dirs = [out / site_name(k) for k in range(sites)]
    _check_targets(dirs)
    utf8_site = _broken_utf8_site(sites, allowed)
    for k, site_dir in enumerate(dirs):
        profile = site_profile(k, seed)
        mods = allowed.get(k, ALL_MODALITIES)
        cohort = site_cohort(profile, patients, seed, mods)
        if messy:
            options = MessyOptions(allowed=mods, broken_utf8=k == utf8_site)
            write_messy_site(site_dir, cohort, profile, seed, image_size, options)
        else:
            _write_site(site_dir, cohort, profile, seed, image_size, mods)
        add_policy(site_dir, test_fraction)
    return dirs
