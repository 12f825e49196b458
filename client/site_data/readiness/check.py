"""`fedclinic site check`: can this site train, and what in its export is unusable and why.

The report holds aggregate counts only (no patient identifiers, values or absolute paths), so
site IT can share it with the central team.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from client.site import SiteSettings
from client.site_data.loader import LoadReport, SiteArrays, SiteDataError, load_site
from client.site_data.labels import read_labels
from client.site_data.readiness.lab_advice import lab_warnings
from client.recipe import check_data_limits, site_experiment
from client.score_bins import BINS
from client.site_file import read_site_file
from configs.load import released_experiment
from configs.parse import ConfigError
from configs.schema import DataConfig, ExperimentConfig, SiteFileConfig, ValidationSplit
from privacy.accountant import epsilon_spent
from privacy.ledger import LEDGER_FILE, Ledger, LedgerError
from privacy.policy import account

PRV_MIN_DELTA = 1e-12  # below this, Opacus' PRV accountant often cannot compute: RDP reports instead

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


def _count(n: int, noun: str) -> str:
    """'1 held-out patient', '3 held-out patients'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _release_warning(arrays: SiteArrays, validation: ValidationSplit) -> str | None:
    """A warning when the held-out split's smaller outcome class (n >= 1 patients) is under twice
    the release's noise std s: its noisy total then falls below one patient (no AUROC) in
    Phi((1 - n) / s) of releases, from ~3% just under the threshold up to half at n = 1, and the
    AUROC that is defined is mostly noise. The class size is not named (the report is shareable)."""
    held_out = arrays.label[arrays.is_val]
    smaller = int(min((held_out > 0.5).sum(), (held_out <= 0.5).sum()))
    noise = validation.noise_multiplier * math.sqrt(BINS)  # each of a class's BINS cells gets N(0, sigma^2)
    if validation.release != "dp" or smaller == 0 or smaller >= 2 * noise:
        return None
    return (f"the held-out split has fewer patients of one outcome class than twice the noise of the DP metrics "
            f"release (std {noise:.1f} patients per class: validation.noise_multiplier "
            f"{validation.noise_multiplier:g} on each of {BINS} score bins): some rounds (up to half) will report "
            "no AUROC and the rest a noisy one; hold out more patients (validation.fraction) if the site has them")


def _warnings(arrays: SiteArrays, report: LoadReport, validation: ValidationSplit) -> list[str]:
    out = []
    min_validation = validation.min_patients
    train = int(arrays.is_train.sum())
    if 0 < train < MIN_TRAIN_PATIENTS:
        out.append(f"only {_count(train, 'training patient')}: DP noise will dominate at this size")
    if len(set(arrays.label[arrays.is_train].tolist())) < 2:
        out.append("the training split has a single outcome class")
    if not (arrays.is_val.any() and len(set(arrays.label[arrays.is_val].tolist())) == 2):
        out.append("the validation split lacks one outcome class: AUROC cannot be computed here"
                   + (" (a DP release's noise may still show both classes: any AUROC it defines is noise only)"
                      if validation.release == "dp" else ""))
    if int(arrays.is_val.sum()) < min_validation:
        out.append(f"only {_count(int(arrays.is_val.sum()), 'held-out patient')} (< validation.min_patients "
                   f"{min_validation}): the site will not report validation metrics")
    elif (noisy := _release_warning(arrays, validation)) is not None:
        out.append(noisy)
    for name, count in report.coverage.items():
        if count == 0:
            out.append(f"no patient has a usable {name}: the site trains without it")
    if report.patients > report.usable_patients:
        unusable = report.patients - report.usable_patients
        out.append(f"{_count(unusable, 'labelled patient')} {'has' if unusable == 1 else 'have'} no usable "
                   f"modality and {'is' if unusable == 1 else 'are'} left out")
    out.extend(lab_warnings(report.lab_rows_dropped, report.lab_values_clipped, report.lab_values_used))
    return out


def privacy_status(site: SiteSettings, site_file: SiteFileConfig) -> dict[str, Any]:
    """The dataset's lifetime account from the site's own ledger (LedgerError if it cannot be trusted).

    Every spend in the ledger counts, whatever key it was recorded under, unless site.yaml's
    privacy.unrelated_datasets says those were other patients; the keys counted are listed.
    """
    policy = site_file.policy
    dataset = policy.dataset_id or site.name
    acct = account(Ledger(site.state_dir / LEDGER_FILE, site.mark_dir).spends(), dataset=dataset, run_id="",
                   policy=policy)
    history = [s.use for s in acct.lifetime]
    spent = max(epsilon_spent(history, policy.lifetime_delta, policy.accountant, magnitude=acct.recorded_lifetime),
                acct.recorded_lifetime)
    return {"dataset": dataset, "policy": "site.yaml" if site_file.privacy else "built-in default",
            "accountant": policy.accountant, "lifetime_epsilon_cap": policy.lifetime_epsilon,
            "lifetime_delta": policy.lifetime_delta, "lifetime_epsilon_spent": spent,
            "remaining": max(0.0, policy.lifetime_epsilon - spent), "rounds_recorded": len(acct.lifetime),
            "other_keys_counted": acct.others, "validation_release": site_file.validation.release}


def _privacy_warnings(site_file: SiteFileConfig, privacy: dict[str, Any]) -> list[str]:
    out = []
    if site_file.privacy is None:
        out.append(f"no privacy policy in site.yaml: the built-in default applies (lifetime ε "
                   f"{privacy['lifetime_epsilon_cap']:g}); ask your privacy officer to set one")
    if privacy["remaining"] <= 0:
        out.append("the dataset's lifetime privacy budget is spent: the site will decline every round")
    if privacy["other_keys_counted"]:
        keys = len(privacy["other_keys_counted"])
        out.append(f"the ledger also holds spends under {_count(keys, 'other dataset key')}; "
                   f"{'it counts' if keys == 1 else 'they count'} toward this dataset's lifetime budget (list "
                   "keys of other patients in site.yaml privacy.unrelated_datasets)")
    if site_file.validation.release == "exact":
        out.append("validation.release is exact: the site sends exact validation metrics, which are not DP; "
                   "keep it only if you trust the coordinator with them")
    if site_file.policy.accountant == "prv" and site_file.policy.lifetime_delta < PRV_MIN_DELTA:
        out.append(f"privacy.lifetime_delta {site_file.policy.lifetime_delta:g} is below what the PRV accountant "
                   f"computes reliably ({PRV_MIN_DELTA:g}); ε is then reported with RDP, a valid but looser bound")
    return out


def check_site(site: SiteSettings, data: DataConfig, recipe: ExperimentConfig | None = None) -> Readiness:
    """Load the site exactly as training would (warming the cache) and judge it.

    `data`: the requested data configuration (the released catalogue plus the recipe's image size
    and note settings); what the data means comes from the site's own site.yaml. `recipe` (the
    whole requested configuration): also checked against the site's limits and ownership, as a
    coordinator's request would be, before anything is loaded.
    """
    try:
        site_file = read_site_file(site.site_file, data, required=site.site_file_explicit)
        if recipe is not None:
            refused = _refusal(site, site_file, recipe)
            if refused:
                return Readiness(site.name, False, refused, (), None)
        own = dataclasses.replace(site_file.data or data, image_size=data.image_size,
                                  note_buckets=data.note_buckets, note_max_tokens=data.note_max_tokens)
        arrays, report = load_site(site.data_dir, own, cache_dir=site.cache_dir, site_file=site_file)
        privacy = privacy_status(site, site_file)
    except (SiteDataError, LedgerError) as exc:
        return Readiness(site.name, False, _relative(str(exc), site), (), None)
    train, val = int(arrays.is_train.sum()), int(arrays.is_val.sum())
    reason = None
    if report.usable_patients == 0:
        reason = "no labelled patient has a usable image, lab result or note"
    elif train == 0:
        reason = "no patient falls in the training split; add patients or lower validation.fraction in site.yaml"
    warnings = [*_warnings(arrays, report, site_file.validation), *_privacy_warnings(site_file, privacy)]
    return Readiness(site.name, reason is None, reason, tuple(warnings) if reason is None else (),
                     report, train, val, privacy)


def _refusal(site: SiteSettings, site_file: SiteFileConfig, recipe: ExperimentConfig) -> str | None:
    """Why this site would refuse `recipe` (602), or None."""
    try:
        cfg = site_experiment(recipe, released_experiment(), site_file)
        check_data_limits(cfg, site_file.limits, patients=len(read_labels(site.data_dir).patient_ids))
    except ConfigError as exc:
        return f"this site refuses the requested configuration: {exc}"
    return None


def _relative(message: str, site: SiteSettings) -> str:
    for folder, name in ((site.data_dir, "<site folder>"), (site.state_dir, "<state folder>")):
        message = message.replace(f"{folder}/", f"{name}/").replace(str(folder), name)
    return message


def as_json(r: Readiness) -> dict[str, Any]:
    """The shareable report: the verdict and aggregate counts (no identifiers, values or paths)."""
    counts: dict[str, Any] = {}
    if r.report is not None:
        for f in dataclasses.fields(LoadReport):
            value = getattr(r.report, f.name)
            counts[f.name] = dict(sorted(value.items())) if isinstance(value, (Counter, dict)) else value
    return {"site": r.site, "can_train": r.can_train, "reason": r.reason, "warnings": list(r.warnings),
            "train_patients": r.train_patients, "validation_patients": r.validation_patients,
            "privacy": r.privacy, **counts}


def locations(r: Readiness, limit: int | None) -> dict[str, dict[str, dict[str, Any]]]:
    """For site IT only: per problem group and reason, the count, the first `limit` (None: every)
    file (relative to the site folder) or table row, and how many more there are."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, found in (r.report.findings() if r.report is not None else {}).items():
        group = {}
        for reason, count in sorted(found.items()):
            if count:
                at, more = found.locations(reason, limit)
                group[reason] = {"count": count, "at": at, "more": more}
        if group:
            out[name] = group
    return out


def site_it_json(r: Readiness, limit: int | None) -> dict[str, Any]:
    """The shareable report plus `locations` (file names and row numbers): keep it at the site."""
    return {**as_json(r), "locations": locations(r, limit),
            "note": "for site IT only: lists file names and row numbers; share readiness.json instead"}
