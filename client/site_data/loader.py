"""A site folder (labels, manifest + DICOM, labs, notes, site.yaml) -> arrays ready for training.

Every problem with an individual file, row or value is counted by reason in the LoadReport and
never stops the site; only a site that cannot train at all raises SiteDataError. The report holds
aggregate counts only (no patient identifiers, values or paths), so it can be shared.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from client.site_data.imaging.quota import prune_cache
from client.site_data.imaging.dicom import UnusableImage
from client.site_data.imaging.cache import load_image_cached
from client.site_data.imaging.limits import DicomLimits
from client.site_data.labels import read_labels
from client.site_data.labs import LAB_COLUMNS, lab_matrix
from client.site_data.manifest import image_paths
from client.site_data.notes import note_tokens
from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.split import split_masks, validation_mask
from client.site_data.tables import find_table, read_table
from configs.schema import DataConfig, SiteFileConfig, SiteLimits

__all__ = ["LoadReport", "SiteArrays", "SiteDataError", "load_site", "validation_mask"]
MODALITIES = ("image", "labs", "notes")


@dataclass
class SiteArrays:
    """Labelled patients with at least one usable modality, as arrays (no identifiers), and the split."""

    image: np.ndarray          # [N, S, S] float32 in [0, 1], zeros where missing
    labs: np.ndarray           # [N, F] float32 standardised
    lab_mask: np.ndarray       # [N, F] float32
    tokens: np.ndarray         # [N, L] int64, 0 = padding
    modality_mask: np.ndarray  # [N, 3] float32: image, labs, notes
    label: np.ndarray          # [N] float32
    is_val: np.ndarray         # [N] bool: the validation split
    is_test: np.ndarray        # [N] bool: the test split (validation.test_fraction), never trained or validated on

    @property
    def is_train(self) -> np.ndarray:
        """[N] bool: the patients local training may use (neither validation nor test)."""
        return ~(self.is_val | self.is_test)


@dataclass
class LoadReport:
    """Counts by reason, safe to show to the central team; the Findings fields also keep, for
    site IT only, the rows and files behind each count (see client/site_data/findings.py)."""

    patients: int = 0
    positives: int = 0
    usable_patients: int = 0
    coverage: dict[str, int] = field(default_factory=dict)
    tables: dict[str, str | None] = field(default_factory=dict)
    label_problems: Findings = field(default_factory=Findings)
    manifest_problems: Findings = field(default_factory=Findings)
    quarantined_images: Findings = field(default_factory=Findings)
    lab_rows_used: int = 0
    lab_rows_dropped: Findings = field(default_factory=Findings)
    unit_conversions: Counter[str] = field(default_factory=Counter)
    unknown_lab_codes: Counter[str] = field(default_factory=Counter)
    lab_values_clipped: Findings = field(default_factory=Findings)  # "value beyond ±5 reference SD (clipped) for <code>"
    lab_values_used: Counter[str] = field(default_factory=Counter)  # feature code -> values used (its denominator)
    note_problems: Findings = field(default_factory=Findings)
    table_problems: Findings = field(default_factory=Findings)

    def findings(self) -> dict[str, Findings]:
        """Every group of problems that knows where its rows and files are, by field name."""
        return {f.name: value for f in fields(self) if isinstance(value := getattr(self, f.name), Findings)}


def _images(site: Path, ids: list[str], cfg: DataConfig, cache_dir: Path, report: LoadReport,
            cache_bytes: int, limits: SiteLimits) -> tuple[np.ndarray, np.ndarray]:
    """Every patient's preprocessed image (through the cache), then the cache pruned to its quota,
    least recently used entries first and never those of this load."""
    out = np.zeros((len(ids), cfg.image_size, cfg.image_size), dtype=np.float32)
    present = np.zeros(len(ids), dtype=bool)
    paths, report.manifest_problems, table = image_paths(site, set(ids), limits=limits)
    caps = DicomLimits(max_file_mb=limits.max_dicom_file_mb, max_frame_mb=limits.max_dicom_frame_mb,
                       max_pixel_data_mb=limits.max_dicom_pixel_data_mb)
    report.tables["manifest"] = table.name if table else None
    window = None if cfg.window_center is None else (cfg.window_center, cfg.window_width or 1.0)
    used: set[Path] = set()
    written: set[Path] = set()
    for i, pid in enumerate(ids):
        if pid not in paths:
            continue
        try:
            out[i] = load_image_cached(paths[pid], cache_dir=cache_dir, size=cfg.image_size,
                                       window=window, frame_policy=cfg.frame_policy, used=used, written=written,
                                       limits=caps)
            present[i] = True
        except UnusableImage as bad:
            report.quarantined_images.add_file(bad.reason, _relative(paths[pid], site))
    if written:  # only new entries can have taken the cache over its quota
        try:
            prune_cache(cache_dir, max_bytes=cache_bytes, keep=used)
        except OSError:
            pass  # a cache that cannot be pruned only costs disk; the limits check bounds one load's entries
    return out, present


def _relative(path: Path, site: Path) -> str:
    """`path` as site IT finds it under the site folder (resolved paths stay inside it)."""
    try:
        return path.relative_to(site.resolve()).as_posix()
    except ValueError:
        return path.name


def _table(site: Path, stem: str, columns: tuple[str, ...], report: LoadReport, limits: SiteLimits
           ) -> pd.DataFrame:
    """An optional table indexed by row number; unreadable means that modality is missing, never a
    stopped site. Rows it could not parse go to table_problems with their row numbers."""
    path = find_table(site, stem)
    report.tables[stem] = path.name if path else None
    empty = pd.DataFrame(columns=list(columns), dtype=str)
    if path is None:
        return empty
    try:
        frame, found = read_table(path, columns, limits=limits)
    except SiteDataError as exc:
        report.table_problems.add(f"{exc} (table ignored)")
        return empty
    report.table_problems.merge(found)
    return frame


def load_site(site: Path, cfg: DataConfig, *, cache_dir: Path, site_file: SiteFileConfig | None = None
              ) -> tuple[SiteArrays, LoadReport]:
    """Decode (through the per-file cache, kept within site.yaml's limits.cache_mb) and preprocess a whole site."""
    if not site.is_dir():
        raise SiteDataError(f"{site}: site folder does not exist or is not a folder")
    limits = (site_file or SiteFileConfig()).limits
    labels = read_labels(site, limits=limits)
    ids = labels.patient_ids
    report = LoadReport(patients=len(ids), positives=int(labels.label.sum()), label_problems=labels.problems)
    quota = (site_file or SiteFileConfig()).limits.cache_mb << 20
    image, has_image = _images(site, ids, cfg, cache_dir, report, quota, limits)
    labs_frame = _table(site, "labs", LAB_COLUMNS, report, limits)
    own = site_file or SiteFileConfig()
    labs, lab_mask, counts = lab_matrix(labs_frame, ids, cfg.labs, local=own.lab_codes, site_units=own.lab_units,
                                        index_time=labels.index_time, window_hours=cfg.lab_window_hours,
                                        source=report.tables["labs"] or "labs")
    report.lab_rows_used, report.lab_rows_dropped = counts.used, counts.dropped
    report.lab_values_clipped, report.lab_values_used = counts.clipped, counts.used_by_feature
    report.unit_conversions = counts.converted
    report.unknown_lab_codes = Counter(dict(counts.unknown_codes.most_common(20)))
    notes_frame = _table(site, "notes", ("patient_id", "text"), report, limits)
    tokens, report.note_problems = note_tokens(notes_frame, ids, buckets=cfg.note_buckets,
                                               max_tokens=cfg.note_max_tokens,
                                               source=report.tables["notes"] or "notes.csv")
    modality = np.stack([has_image, lab_mask.any(axis=1), tokens.any(axis=1)], axis=1).astype(np.float32)
    report.coverage = {name: int(modality[:, k].sum()) for k, name in enumerate(MODALITIES)}
    usable = modality.any(axis=1)
    report.usable_patients = int(usable.sum())
    split = (site_file or SiteFileConfig()).validation
    is_val, is_test = split_masks(ids, split.fraction, split.test_fraction, split.seed)
    arrays = SiteArrays(image[usable], labs[usable], lab_mask[usable], tokens[usable], modality[usable],
                        labels.label[usable], is_val[usable], is_test[usable])
    return arrays, report
