"""Long-format labs -> a fixed feature vector per patient plus a measured mask.

Per configured feature: rows of its LOINC code or of a site-local code mapped onto it (site.yaml)
are converted to the canonical unit, implausible values are dropped, and the most recent value
within `window` before the patient's index time is standardised. Every dropped row is counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from client.site_data.readiness.shapes import shareable_code, shareable_unit
from configs.schema import LabFeature, LocalLabCode

LAB_COLUMNS = ("patient_id", "code", "value", "unit", "time")


@dataclass
class LabCounts:
    """Aggregate counts of what happened to lab rows (no values, no patient ids; codes and units
    only where they have the expected shape: client/site_data/readiness/shapes.py)."""

    used: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)
    unknown_codes: Counter[str] = field(default_factory=Counter)


def _unit_factor(unit: str, conversions: Mapping[str, float]) -> tuple[str, float] | None:
    """(catalogue spelling, factor): an exact unit match, else a case-insensitive match if it is
    unambiguous (UCUM is case-sensitive)."""
    if unit in conversions:
        return unit, conversions[unit]
    folded = [u for u in conversions if u.lower() == unit.lower()]
    return (folded[0], conversions[folded[0]]) if len(folded) == 1 else None


def _within_window(rows: pd.DataFrame, index_time: pd.Series, hours: float | None, counts: LabCounts
                   ) -> pd.DataFrame:
    anchor = rows["patient_id"].map(index_time)
    has_anchor = anchor.notna()
    after = has_anchor & (rows["time"] > anchor)
    counts.dropped["measured after the index time"] += int(after.sum())
    too_old = pd.Series(False, index=rows.index)
    if hours is not None:
        too_old = has_anchor & ~after & (rows["time"] < anchor - pd.Timedelta(hours=hours))
        counts.dropped["older than the lab window"] += int(too_old.sum())
    return rows[~after & ~too_old]


def _canonical(rows: pd.DataFrame, feature: LabFeature, extra: Mapping[str, Mapping[str, float]],
               counts: LabCounts, units: frozenset[str]) -> pd.DataFrame:
    values = pd.to_numeric(rows["value"], errors="coerce")
    text_bad = values.isna() & ~rows["value"].str.lower().isin(["nan", "inf", "-inf", "infinity"])
    counts.dropped["non-numeric value"] += int(text_bad.sum())
    non_finite = ~text_bad & ~np.isfinite(values.fillna(np.inf))
    counts.dropped["non-finite value (NaN/inf)"] += int(non_finite.sum())
    ok = ~(text_bad | non_finite)
    factors = pd.Series(np.nan, index=rows.index)
    for (code, unit), idx in rows[ok].groupby(["code", "unit"]).groups.items():
        match = _unit_factor(unit, {**feature.conversions, **extra.get(code, {})})
        if match is None:
            counts.dropped[f"unit not convertible for {code} ({shareable_unit(unit, units)})"] += len(idx)
        else:
            spelling, factors[idx] = match
            if spelling != feature.unit:
                counts.converted[f"{code}: {spelling} -> {feature.unit}"] += len(idx)
    canonical = values * factors
    ok &= factors.notna()
    implausible = ok & ((canonical < feature.low) | (canonical > feature.high))
    counts.dropped[f"implausible value for {feature.code}"] += int(implausible.sum())
    out = rows.loc[ok & ~implausible, ["patient_id", "time"]].copy()
    out["value"] = canonical[ok & ~implausible]
    return out


def _prepare(labs: pd.DataFrame, index: Mapping[str, int], features: tuple[LabFeature, ...],
             local: tuple[LocalLabCode, ...], counts: LabCounts) -> pd.DataFrame:
    counts.dropped["row for a patient without a label"] += int((~labs["patient_id"].isin(index)).sum())
    labs = labs[labs["patient_id"].isin(index)]
    dupes = labs.duplicated(keep="first")
    counts.dropped["duplicate row"] += int(dupes.sum())
    labs = labs[~dupes]
    feature_of = {f.code: f.code for f in features} | {c.code: c.feature for c in local}
    known = labs["code"].isin(feature_of)
    counts.unknown_codes.update(shareable_code(code) for code in labs.loc[~known, "code"].tolist())
    counts.dropped["code not configured (register site codes in site.yaml)"] += int((~known).sum())
    labs = labs[known].assign(feature=lambda f: f["code"].map(feature_of),
                              time=lambda f: pd.to_datetime(f["time"], errors="coerce", utc=True, format="ISO8601"))
    counts.dropped["unparseable time"] += int(labs["time"].isna().sum())
    return labs[labs["time"].notna()]


def lab_matrix(labs: pd.DataFrame, patient_ids: list[str], features: tuple[LabFeature, ...], *,
               local: tuple[LocalLabCode, ...] = (), index_time: pd.Series | None = None,
               window_hours: float | None = None) -> tuple[np.ndarray, np.ndarray, LabCounts]:
    """Most recent plausible value per feature, standardised; mask 1 where measured."""
    counts = LabCounts()
    index = {pid: i for i, pid in enumerate(patient_ids)}
    values = np.zeros((len(patient_ids), len(features)), dtype=np.float32)
    mask = np.zeros_like(values)
    rows = _prepare(labs, index, features, local, counts)
    if index_time is not None:
        rows = _within_window(rows, index_time, window_hours, counts)
    extra = {c.code: c.conversions for c in local}
    units = frozenset(u for f in features for u in f.conversions) | frozenset(u for c in local for u in c.conversions)
    for j, feature in enumerate(features):
        usable = _canonical(rows[rows["feature"] == feature.code], feature, extra, counts, units)
        latest = usable.sort_values("time", kind="stable").groupby("patient_id", sort=False).tail(1)
        counts.used += len(latest)
        rows_idx = latest["patient_id"].map(index).to_numpy(dtype=np.int64)
        values[rows_idx, j] = np.clip((latest["value"].to_numpy() - feature.ref_mean) / feature.ref_sd, -5, 5)
        mask[rows_idx, j] = 1.0
    counts.dropped = Counter({k: v for k, v in counts.dropped.items() if v})
    return values, mask, counts
