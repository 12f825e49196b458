"""Messy-mode labs: mixed units, site-local codes (+ site.yaml), index-time window rows, bad rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.cohort import Cohort, LabRow, format_value, iso
from synth.site_profiles import LAB_SPECS, LabSpec, SiteProfile

MIX_SHARE = 0.3  # share of a code's rows reported in the alternative unit / under the local code
WINDOW_EXTRA_SHARE = 0.05  # of lab patients: one row after index_time; separately one row > 72 h before
INDEX_GAP_MIN = (60, 24 * 60)  # index_time - latest draw; + older_gap (< 48 h) stays < 72 h
AFTER_INDEX_MIN = (60, 24 * 60)
STALE_MIN = (73 * 60, 240 * 60)  # how long before index_time the out-of-window row was drawn
BAD_ROW_DELAY_MIN = 10  # bad rows are drawn 10 min after the latest good draw (still before index)
BAD_TIME = "2026-02-30T25:61:00"
BAD_KINDS: tuple[str, ...] = (
    "pending", "nan", "inf", "empty", "unknown_unit", "unknown_code", "implausible", "duplicate", "bad_time",
)
YAML_HEADER = "# Site-owned configuration (written by site IT, never sent by the coordinator)"


@dataclass(frozen=True)
class UnitMix:
    """A share of `code`'s rows reported in `unit` (reported = canonical * factor)."""

    code: str
    unit: str
    factor: float


@dataclass(frozen=True)
class LocalCode:
    """A share of `feature`'s rows reported as site-local `code` in `unit`, registered in site.yaml."""

    code: str
    feature: str
    unit: str
    factor: float  # reported = canonical * factor
    conversions: tuple[tuple[str, float], ...] = ()  # site.yaml: reported unit -> canonical factor


@dataclass(frozen=True)
class LabMess:
    """One site's lab reporting quirks."""

    mixes: tuple[UnitMix, ...]
    local_codes: tuple[LocalCode, ...]


LAB_MESS: tuple[LabMess, ...] = (  # by site index % 3
    LabMess((UnitMix("2345-7", "mmol/L", 1 / 18.016), UnitMix("2160-0", "umol/L", 88.42)),
            (LocalCode("LAC-POC", "2524-7", "mmol/L", 1.0),)),
    LabMess((UnitMix("2345-7", "mg/dL", 1.0), UnitMix("2160-0", "mg/dL", 1.0)),
            (LocalCode("GLU-BG", "2345-7", "mmol/L", 1 / 18.016, (("mmol/L", 18.016),)),)),
    LabMess((UnitMix("718-7", "g/dL", 1.0), UnitMix("2524-7", "mmol/L", 1.0)),
            (LocalCode("WBC-HEM", "6690-2", "G/L", 1.0, (("G/L", 1.0),)),)),
)
SPECS = {s.code: s for s in LAB_SPECS}


def site_yaml(mess: LabMess) -> str:
    """The site's registration of its local lab codes, in the site.yaml format."""
    lines = [YAML_HEADER, "lab_codes:"]
    for local in mess.local_codes:
        name = SPECS[local.feature].name
        if local.conversions:
            conv = ", ".join(f"{unit}: {factor}" for unit, factor in local.conversions)
            lines.append(f'  - {{code: {local.code}, feature: "{local.feature}", conversions: {{{conv}}}}}'
                         f"   # {name} in {local.unit}; extra unit factors to the canonical unit")
        else:
            lines.append(f'  - {{code: {local.code}, feature: "{local.feature}"}}'
                         f"          # {name} in {local.unit}; maps onto a configured model feature (LOINC)")
    return "\n".join(lines) + "\n"


def index_minutes(cohort: Cohort, rng: np.random.Generator) -> np.ndarray:
    """Per patient, index_time in minutes after 06:00 on BASE_DATE (1-24 h after the latest draw)."""
    latest = np.array([cohort.latest_draw(i) for i in range(len(cohort.ids))], dtype=np.int64)
    return latest + rng.integers(*INDEX_GAP_MIN, size=len(latest))


def remix_units(rows: list[LabRow], profile: SiteProfile, mess: LabMess,
                rng: np.random.Generator) -> list[LabRow]:
    """Report ~30 % of the affected codes' rows under the local code, ~30 % of the rest in the alt unit."""
    draws = rng.random((len(rows), 2))
    local_by = {lc.feature: lc for lc in mess.local_codes}
    mix_by = {m.code: m for m in mess.mixes}
    out: list[LabRow] = []
    for (pid, code, value, unit, time), (u_local, u_mix) in zip(rows, draws):
        canonical = float(value) / profile.lab_report(SPECS[code]).factor
        local, mix = local_by.get(code), mix_by.get(code)
        if local is not None and u_local < MIX_SHARE:
            out.append((pid, local.code, format_value(canonical * local.factor), local.unit, time))
        elif mix is not None and u_mix < MIX_SHARE:
            out.append((pid, code, format_value(canonical * mix.factor), mix.unit, time))
        else:
            out.append((pid, code, value, unit, time))
    return out


def _misleading(spec: LabSpec, f_lab: float) -> float:
    """A canonical value pointing the other way from the patient's signal."""
    return max(spec.mean - 2.0 * spec.sd * spec.loading * f_lab, 0.05 * spec.mean)


def window_rows(cohort: Cohort, profile: SiteProfile, index: np.ndarray, rng: np.random.Generator,
                own_codes: dict[str, list[str]]) -> list[LabRow]:
    """~5 % of lab patients get a row AFTER index_time; another ~5 % a row > 72 h before it."""
    lab_patients = np.flatnonzero(cohort.has[:, 1])
    n = max(1, int(round(WINDOW_EXTRA_SHARE * len(lab_patients)))) if len(lab_patients) else 0
    order = rng.permutation(lab_patients)
    rows: list[LabRow] = []
    for i in order[:n]:
        pid = cohort.ids[i]
        spec = SPECS[str(rng.choice(own_codes[pid]))]
        report = profile.lab_report(spec)
        value = _misleading(spec, float(cohort.factors[i, 1])) * report.factor
        rows.append((pid, spec.code, format_value(value), report.unit,
                     iso(0, int(index[i] + rng.integers(*AFTER_INDEX_MIN)))))
    for i in order[n:2 * n]:
        pid = cohort.ids[i]
        absent = [s.code for s in LAB_SPECS if s.code not in own_codes[pid]] or [s.code for s in LAB_SPECS]
        spec = SPECS[str(rng.choice(absent))]
        report = profile.lab_report(spec)
        value = max(spec.mean + spec.sd * rng.standard_normal(), 0.05 * spec.mean) * report.factor
        rows.append((pid, spec.code, format_value(value), report.unit,
                     iso(0, int(index[i] - rng.integers(*STALE_MIN)))))
    return rows


def _bad_row(kind: str, base: LabRow, time: str) -> LabRow:
    """One defective row derived from the patient's good row `base`."""
    pid, code, value, unit, _ = base
    return {
        "pending": (pid, code, "pending", unit, time),
        "nan": (pid, code, "NaN", unit, time),
        "inf": (pid, code, "inf", unit, time),
        "empty": (pid, code, "", unit, time),
        "unknown_unit": (pid, code, value, "mg/dl%", time),
        "unknown_code": (pid, "XYZ-123", "1.0", "mg/dL", time),
        "implausible": (pid, "2345-7", "99999", "mg/dL", time),
        "duplicate": base,
        "bad_time": (pid, code, value, unit, BAD_TIME),
    }[kind]


def bad_rows(cohort: Cohort, rows: list[LabRow], rng: np.random.Generator) -> list[LabRow]:
    """One row of each BAD_KINDS kind, each for a different lab patient where possible."""
    latest: dict[str, LabRow] = {}
    for row in rows:  # rows are clean-sorted by (patient, code, time): keep each patient's latest
        if row[0] not in latest or row[4] > latest[row[0]][4]:
            latest[row[0]] = row
    pids = sorted(latest)
    if not pids:
        return []
    chosen = [pids[j % len(pids)] for j in rng.permutation(max(len(pids), len(BAD_KINDS)))]
    index = {pid: i for i, pid in enumerate(cohort.ids)}
    out: list[LabRow] = []
    for kind, pid in zip(BAD_KINDS, chosen):
        time = iso(0, cohort.latest_draw(index[pid]) + BAD_ROW_DELAY_MIN)
        out.append(_bad_row(kind, latest[pid], time))
    return out


def messy_lab_rows(rows: list[LabRow], cohort: Cohort, profile: SiteProfile, index: np.ndarray,
                   rng: np.random.Generator) -> list[LabRow]:
    """Clean rows -> messy rows (sorted by patient, code, time; duplicates and bad rows kept)."""
    own: dict[str, list[str]] = {}
    for pid, code, *_ in rows:
        own.setdefault(pid, []).append(code)
    mess = LAB_MESS[profile.index % 3]
    good = remix_units(rows, profile, mess, rng)
    extra = window_rows(cohort, profile, index, rng, {p: sorted(set(c)) for p, c in own.items()})
    return sorted(good + extra + bad_rows(cohort, good, rng), key=lambda r: (r[0], r[1], r[4]))
