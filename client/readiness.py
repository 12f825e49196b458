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
from configs.schema import DataConfig, SiteFileConfig
from privacy.accountant import epsilon_spent
from privacy.ledger import LEDGER_FILE, Ledger, LedgerError

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
    privacy: dict[str, Any] | None = None


def _warnings(arrays: SiteArrays, report: LoadReport, min_validation: int) -> list[str]:
    out = []
    train = int((~arrays.is_val).sum())
    if 0 < train < MIN_TRAIN_PATIENTS:
        out.append(f"only {train} training patients: DP noise will dominate at this size")
    if len(set(arrays.label[~arrays.is_val].tolist())) < 2:
        out.append("the training split has a single outcome class")
    if not (arrays.is_val.any() and len(set(arrays.label[arrays.is_val].tolist())) == 2):
        out.append("the validation split lacks one outcome class: AUROC cannot be computed here")
    if int(arrays.is_val.sum()) < min_validation:
        out.append(f"only {int(arrays.is_val.sum())} held-out patients (< validation.min_patients "
                   f"{min_validation}): the site will not report validation metrics")
    for name, count in report.coverage.items():
        if count == 0:
            out.append(f"no patient has a usable {name}: the site trains without it")
    if report.patients > report.usable_patients:
        out.append(f"{report.patients - report.usable_patients} labelled patients have no usable "
                   "modality and are left out")
    return out


def privacy_status(site: SiteSettings, site_file: SiteFileConfig) -> dict[str, Any]:
    """The dataset's lifetime account from the site's own ledger (LedgerError if unreadable)."""
    policy = site_file.policy
    dataset = policy.dataset_id or site.name
    history = Ledger(site.state_dir / LEDGER_FILE).history(dataset)
    spent = epsilon_spent(history, policy.lifetime_delta, "prv")
    return {"dataset": dataset, "policy": "site.yaml" if site_file.privacy else "built-in default",
            "lifetime_epsilon_cap": policy.lifetime_epsilon, "lifetime_delta": policy.lifetime_delta,
            "lifetime_epsilon_spent": spent, "remaining": max(0.0, policy.lifetime_epsilon - spent),
            "rounds_recorded": len(history)}


def check_site(site: SiteSettings, data: DataConfig) -> Readiness:
    """Load the site exactly as training would (warming the cache) and judge it."""
    try:
        site_file = read_site_file(site.site_file, data, required=site.site_file_explicit)
        arrays, report = load_site(site.data_dir, data, cache_dir=site.cache_dir, site_file=site_file)
        privacy = privacy_status(site, site_file)
    except (SiteDataError, LedgerError) as exc:
        return Readiness(site.name, False, _relative(str(exc), site), (), None)
    train, val = int((~arrays.is_val).sum()), int(arrays.is_val.sum())
    reason = None
    if report.usable_patients == 0:
        reason = "no labelled patient has a usable image, lab result or note"
    elif train == 0:
        reason = "no patient falls in the training split; add patients or lower validation.fraction in site.yaml"
    warnings = _warnings(arrays, report, site_file.validation.min_patients)
    if site_file.privacy is None:
        warnings.append(f"no privacy policy in site.yaml: the built-in default applies (lifetime ε "
                        f"{privacy['lifetime_epsilon_cap']:g}); ask your privacy officer to set one")
    if privacy["remaining"] <= 0:
        warnings.append("the dataset's lifetime privacy budget is spent: the site will decline every round")
    return Readiness(site.name, reason is None, reason, tuple(warnings) if reason is None else (),
                     report, train, val, privacy)


def _relative(message: str, site: SiteSettings) -> str:
    for folder, name in ((site.data_dir, "<site folder>"), (site.state_dir, "<state folder>")):
        message = message.replace(f"{folder}/", f"{name}/").replace(str(folder), name)
    return message


def as_json(r: Readiness) -> dict[str, Any]:
    """JSON-ready dictionary of the verdict and aggregate counts."""
    counts: dict[str, Any] = {}
    if r.report is not None:
        for f in dataclasses.fields(LoadReport):
            value = getattr(r.report, f.name)
            counts[f.name] = dict(sorted(value.items())) if isinstance(value, (Counter, dict)) else value
    return {"site": r.site, "can_train": r.can_train, "reason": r.reason, "warnings": list(r.warnings),
            "train_patients": r.train_patients, "validation_patients": r.validation_patients,
            "privacy": r.privacy, **counts}
