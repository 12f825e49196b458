"""Long-format labs -> a fixed feature vector per patient plus a measured mask.

Per configured feature: rows of its code or of a site-local code mapped onto it (site.yaml
`lab_codes`) are converted to the canonical unit (every spelling of a configured unit matches:
client/site_data/lab_units.py; site.yaml `lab_units` adds units), implausible values are dropped,
and the most recent value within `window` before the patient's index time is standardised with
the catalogue's reference mean and sd, then clipped to ±CLIP_SD. Every dropped row, and every
used value that was clipped, is counted by reason with its row number in the table file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from client.site_data.findings import Findings
from client.site_data.lab_units import configured_unit, shareable_unit_name
from client.site_data.readiness.shapes import shareable_code
from configs.schema import LabFeature, LabUnit, LocalLabCode

# A usable row of a patient's feature that a later one replaces: the model takes one value per
# feature, the most recent before the index time. Counted, so rows in = rows used + rows counted.
SUPERSEDED = "older value of the feature (the most recent one is used)"
LAB_COLUMNS = ("patient_id", "code", "value", "unit", "time")
# Standardised values are clipped to ±CLIP_SD for the network's numerical safety (a bound on its
# input, not a clinical one); each clipped value is counted, since many of them mean the
# catalogue's reference mean/sd do not fit this site's data.
CLIP_SD = 5.0
UNCONFIGURED_CODE = "code not configured (site.yaml lab_codes or lab_features)"
_ROW = "__row__"  # the frame's index (the row number in the table file), kept through filtering


def clipped_reason(code: str) -> str:
    """The Findings reason for used values of feature `code` beyond ±CLIP_SD reference sd."""
    return f"value beyond ±{CLIP_SD:g} reference SD (clipped) for {code}"


@dataclass
class LabCounts:
    """Aggregate counts of what happened to lab rows (no values, no patient ids; codes and units
    only where they have the expected shape: client/site_data/readiness/shapes.py). `dropped` and
    `clipped` also keep the row numbers behind each count (local only)."""

    used: int = 0
    dropped: Findings = field(default_factory=Findings)
    converted: Counter[str] = field(default_factory=Counter)
    unknown_codes: Counter[str] = field(default_factory=Counter)
    clipped: Findings = field(default_factory=Findings)           # clipped_reason(code) -> used values
    used_by_feature: Counter[str] = field(default_factory=Counter)  # feature code -> values used


@dataclass(frozen=True)
class _Unit:
    factor: float
    label: str  # what the conversion report names: a catalogue unit or a site.yaml entry


def _units_for(feature: LabFeature, site_units: tuple[LabUnit, ...], local: Mapping[str, float]
               ) -> dict[str, _Unit]:
    """Every unit a row of `feature` may be in: the catalogue's, site.yaml lab_units (validated by
    client.site_file), then a local code's own conversions."""
    units = {u: _Unit(f, u) for u, f in feature.conversions.items()}
    for i, entry in enumerate(site_units):
        if entry.feature != feature.code:
            continue
        if entry.same_as is not None:
            units[entry.unit] = _Unit(feature.conversions[entry.same_as], entry.same_as)
        elif entry.factor is not None:
            units[entry.unit] = _Unit(entry.factor, f"site.yaml lab_units[{i}]")
    units.update({u: _Unit(f, u) for u, f in local.items()})
    return units


def _within_window(rows: pd.DataFrame, index_time: pd.Series, hours: float | None, counts: LabCounts,
                   source: str) -> pd.DataFrame:
    anchor = rows["patient_id"].map(index_time)
    has_anchor = anchor.notna()
    after = has_anchor & (rows["time"] > anchor)
    counts.dropped.add_rows("measured after the index time", source, rows.loc[after, _ROW])
    too_old = pd.Series(False, index=rows.index)
    if hours is not None:
        too_old = has_anchor & ~after & (rows["time"] < anchor - pd.Timedelta(hours=hours))
        counts.dropped.add_rows("older than the lab window", source, rows.loc[too_old, _ROW])
    return rows[~after & ~too_old]


def _canonical(rows: pd.DataFrame, feature: LabFeature, units_of: Mapping[str, Mapping[str, _Unit]],
               counts: LabCounts, catalogue: frozenset[str], source: str) -> pd.DataFrame:
    values = pd.to_numeric(rows["value"], errors="coerce")
    text_bad = values.isna() & ~rows["value"].str.lower().isin(["nan", "inf", "-inf", "infinity"])
    counts.dropped.add_rows("non-numeric value", source, rows.loc[text_bad, _ROW])
    non_finite = ~text_bad & ~np.isfinite(values.fillna(np.inf))
    counts.dropped.add_rows("non-finite value (NaN/inf)", source, rows.loc[non_finite, _ROW])
    ok = ~(text_bad | non_finite)
    factors = pd.Series(np.nan, index=rows.index)
    for (code, unit), idx in rows[ok].groupby(["code", "unit"]).groups.items():
        units = units_of[code]
        spelling = configured_unit(unit, units)
        if spelling is None:
            counts.dropped.add_rows(f"unit not convertible for {code} ({shareable_unit_name(unit, catalogue)})",
                                    source, rows.loc[idx, _ROW])
            continue
        factors[idx] = units[spelling].factor
        if units[spelling].label != feature.unit:
            counts.converted[f"{code}: {units[spelling].label} -> {feature.unit}"] += len(idx)
    canonical = values * factors
    ok &= factors.notna()
    implausible = ok & ((canonical < feature.low) | (canonical > feature.high))
    counts.dropped.add_rows(f"implausible value for {feature.code}", source, rows.loc[implausible, _ROW])
    out = rows.loc[ok & ~implausible, ["patient_id", "time", _ROW]].copy()
    out["value"] = canonical[ok & ~implausible]
    return out


def _prepare(labs: pd.DataFrame, index: Mapping[str, int], feature_of: Mapping[str, str], counts: LabCounts,
             source: str) -> pd.DataFrame:
    columns = [c for c in labs.columns if c != _ROW]
    unlabelled = ~labs["patient_id"].isin(index)
    counts.dropped.add_rows("row for a patient without a label", source, labs.loc[unlabelled, _ROW])
    labs = labs[~unlabelled]
    dupes = labs.duplicated(subset=columns, keep="first")
    counts.dropped.add_rows("duplicate row", source, labs.loc[dupes, _ROW])
    labs = labs[~dupes]
    known = labs["code"].isin(feature_of)
    counts.unknown_codes.update(shareable_code(code) for code in labs.loc[~known, "code"].tolist())
    counts.dropped.add_rows(UNCONFIGURED_CODE, source, labs.loc[~known, _ROW])
    labs = labs[known].assign(feature=lambda f: f["code"].map(feature_of),
                              time=lambda f: pd.to_datetime(f["time"], errors="coerce", utc=True, format="ISO8601"))
    counts.dropped.add_rows("unparseable time", source, labs.loc[labs["time"].isna(), _ROW])
    return labs[labs["time"].notna()]


def _numbered(labs: pd.DataFrame) -> pd.DataFrame:
    """`labs` on a fresh 0..n-1 index, its own index kept as the row-number column (positions when
    that index is not made of integers)."""
    numbers = labs.index.to_numpy() if pd.api.types.is_integer_dtype(labs.index) else np.arange(len(labs))
    return labs.assign(**{_ROW: numbers}).reset_index(drop=True)


def lab_matrix(labs: pd.DataFrame, patient_ids: list[str], features: tuple[LabFeature, ...], *,
               local: tuple[LocalLabCode, ...] = (), site_units: tuple[LabUnit, ...] = (),
               index_time: pd.Series | None = None, window_hours: float | None = None,
               source: str = "labs") -> tuple[np.ndarray, np.ndarray, LabCounts]:
    """Most recent plausible value per feature, standardised; mask 1 where measured.

    `labs`: text columns LAB_COLUMNS, indexed by row number in the table file `source` (the name
    the findings give). `local`, `site_units`: site.yaml lab_codes and lab_units, already
    validated (client.site_file). `index_time`: patient id -> UTC time (labs after it, or more than
    `window_hours` before it, are dropped). Returns values [N, F] float32 ((canonical -
    ref_mean) / ref_sd clipped to ±CLIP_SD, 0 where unmeasured), mask [N, F] float32 and the counts.
    Never raises on a row's content: each unusable row is counted under a reason.
    """
    counts = LabCounts()
    index = {pid: i for i, pid in enumerate(patient_ids)}
    values = np.zeros((len(patient_ids), len(features)), dtype=np.float32)
    mask = np.zeros_like(values)
    feature_of = {f.code: f.code for f in features} | {c.code: c.feature for c in local}
    rows = _prepare(_numbered(labs), index, feature_of, counts, source)
    if index_time is not None:
        rows = _within_window(rows, index_time, window_hours, counts, source)
    catalogue = frozenset(u for f in features for u in f.conversions) | frozenset(
        u for c in local for u in c.conversions)
    for j, feature in enumerate(features):
        units_of = {code: _units_for(feature, site_units, next((c.conversions for c in local if c.code == code), {}))
                    for code, target in feature_of.items() if target == feature.code}
        usable = _canonical(rows[rows["feature"] == feature.code], feature, units_of, counts, catalogue, source)
        latest = usable.sort_values("time", kind="stable").groupby("patient_id", sort=False).tail(1)
        counts.dropped.add_rows(SUPERSEDED, source, usable[_ROW][~usable.index.isin(latest.index)].to_numpy())
        counts.used += len(latest)
        counts.used_by_feature[feature.code] += len(latest)
        z = (latest["value"].to_numpy() - feature.ref_mean) / feature.ref_sd
        counts.clipped.add_rows(clipped_reason(feature.code), source, latest[_ROW].to_numpy()[np.abs(z) > CLIP_SD])
        rows_idx = latest["patient_id"].map(index).to_numpy(dtype=np.int64)
        values[rows_idx, j] = np.clip(z, -CLIP_SD, CLIP_SD)
        mask[rows_idx, j] = 1.0
    counts.dropped = counts.dropped.nonzero()
    counts.used_by_feature = Counter({k: v for k, v in counts.used_by_feature.items() if v})
    return values, mask, counts
