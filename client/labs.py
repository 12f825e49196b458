"""Long-format labs -> a fixed feature vector per patient plus a measured mask."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from configs.schema import LabFeature

LAB_COLUMNS = ("patient_id", "code", "value", "unit", "time")


@dataclass
class LabCounts:
    """Aggregate counts of what happened to lab rows (no values, no patient ids)."""

    used: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    converted: Counter[str] = field(default_factory=Counter)


def _canonical(rows: pd.DataFrame, feature: LabFeature, counts: LabCounts) -> pd.DataFrame:
    values = pd.to_numeric(rows["value"], errors="coerce")
    bad_value = values.isna() | ~np.isfinite(values.fillna(0.0))
    counts.dropped["non-numeric value"] += int(bad_value.sum())
    factor = rows["unit"].astype(str).str.strip().map(feature.conversions)
    bad_unit = factor.isna() & ~bad_value
    counts.dropped[f"unknown unit for {feature.code}"] += int(bad_unit.sum())
    canonical = values * factor
    implausible = ~bad_value & ~bad_unit & ((canonical < feature.low) | (canonical > feature.high))
    counts.dropped[f"implausible {feature.code}"] += int(implausible.sum())
    keep = ~(bad_value | bad_unit | implausible)
    for unit, n in rows.loc[keep & (rows["unit"] != feature.unit), "unit"].value_counts().items():
        counts.converted[f"{feature.code}: {unit} -> {feature.unit}"] += int(n)
    out = rows.loc[keep, ["patient_id", "time"]].copy()
    out["value"] = canonical[keep]
    return out


def lab_matrix(labs: pd.DataFrame, patient_ids: list[str], features: tuple[LabFeature, ...]
               ) -> tuple[np.ndarray, np.ndarray, LabCounts]:
    """Most recent plausible value of each feature, standardised; mask 1 where measured."""
    counts = LabCounts()
    index = {pid: i for i, pid in enumerate(patient_ids)}
    values = np.zeros((len(patient_ids), len(features)), dtype=np.float32)
    mask = np.zeros_like(values)
    labs = labs.assign(patient_id=labs["patient_id"].astype(str), code=labs["code"].astype(str).str.strip())
    labs = labs[labs["patient_id"].isin(index)]
    known = {f.code for f in features}
    counts.dropped["code not configured"] += int((~labs["code"].isin(known)).sum())
    labs = labs.assign(time=pd.to_datetime(labs["time"], errors="coerce", utc=True))
    counts.dropped["unparseable time"] += int(labs["time"].isna().sum())
    labs = labs[labs["time"].notna()]
    for j, feature in enumerate(features):
        rows = _canonical(labs[labs["code"] == feature.code], feature, counts)
        latest = rows.sort_values("time").groupby("patient_id", sort=False).tail(1)
        counts.used += len(latest)
        for pid, value in zip(latest["patient_id"], latest["value"]):
            i = index[pid]
            values[i, j] = np.clip((value - feature.ref_mean) / feature.ref_sd, -5.0, 5.0)
            mask[i, j] = 1.0
    counts.dropped = Counter({k: v for k, v in counts.dropped.items() if v})
    return values, mask, counts
