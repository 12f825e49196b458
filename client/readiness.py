"""`fedclinic site check`: can this site train, and what in its export is unusable and why.

The report holds aggregate counts only (no patient identifiers, values or absolute paths), so
site IT can share it with the central team.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from client.site import SiteSettings
from client.site_data import LoadReport, SiteArrays, SiteDataError, load_site
from client.site_file import read_site_file
from configs.schema import DataConfig

MIN_TRAIN_PATIENTS = 50


@dataclass(frozen=True)
class Readiness:
    """The verdict and the counts behind it."""

    site: str
    can_train: bool
    reason: str | None
    warnings: tuple[str, ...]
    report: LoadReport | None
    train_patients: int = 0
    validation_patients: int = 0


def _warnings(arrays: SiteArrays, report: LoadReport) -> list[str]:
    out = []
    train = int((~arrays.is_val).sum())
    if 0 < train < MIN_TRAIN_PATIENTS:
        out.append(f"only {train} training patients: DP noise will dominate at this size")
    if len(set(arrays.label[~arrays.is_val].tolist())) < 2:
        out.append("the training split has a single outcome class")
    if not (arrays.is_val.any() and len(set(arrays.label[arrays.is_val].tolist())) == 2):
        out.append("the validation split lacks one outcome class: AUROC cannot be computed here")
    for name, count in report.coverage.items():
        if count == 0:
            out.append(f"no patient has a usable {name}: the site trains without it")
    if report.patients > report.usable_patients:
        out.append(f"{report.patients - report.usable_patients} labelled patients have no usable "
                   "modality and are left out")
    return out


def check_site(site: SiteSettings, data: DataConfig) -> Readiness:
    """Load the site exactly as training would (warming the cache) and judge it."""
    try:
        arrays, report = load_site(site.data_dir, data, cache_dir=site.cache_dir,
                                   site_file=read_site_file(site.site_file, data))
    except SiteDataError as exc:
        return Readiness(site.name, False, _relative(str(exc), site), (), None)
    train, val = int((~arrays.is_val).sum()), int(arrays.is_val.sum())
    reason = None
    if report.usable_patients == 0:
        reason = "no labelled patient has a usable image, lab result or note"
    elif train == 0:
        reason = "no patient falls in the training split; add patients or lower data.val_fraction"
    return Readiness(site.name, reason is None, reason, tuple(_warnings(arrays, report)) if reason is None else (),
                     report, train, val)


def _relative(message: str, site: SiteSettings) -> str:
    return message.replace(f"{site.data_dir}/", "").replace(str(site.data_dir), "<site folder>")


def as_json(r: Readiness) -> dict[str, Any]:
    """JSON-ready dictionary of the verdict and aggregate counts."""
    counts: dict[str, Any] = {}
    if r.report is not None:
        for f in dataclasses.fields(LoadReport):
            value = getattr(r.report, f.name)
            counts[f.name] = dict(sorted(value.items())) if isinstance(value, (Counter, dict)) else value
    return {"site": r.site, "can_train": r.can_train, "reason": r.reason, "warnings": list(r.warnings),
            "train_patients": r.train_patients, "validation_patients": r.validation_patients, **counts}
