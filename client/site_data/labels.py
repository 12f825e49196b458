"""labels.csv: the site's patients, their 0/1 outcome and optional index time."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from client.site_data.errors import SiteDataError
from client.site_data.tables import MALFORMED, find_table, read_table


@dataclass(frozen=True)
class Labels:
    """Usable patients (sorted ids), labels, index times (NaT: none) and what was dropped."""

    patient_ids: list[str]
    label: np.ndarray
    index_time: pd.Series
    problems: Counter[str]


def read_labels(site: Path) -> Labels:
    """Read and check labels; a site without any usable label cannot train."""
    path = find_table(site, "labels")
    if path is None:
        raise SiteDataError(f"{site / 'labels.csv'}: labels file is missing; export patient_id,label "
                            "(0/1) for every patient, optionally with index_time")
    frame = read_table(path, ("patient_id", "label"), optional=("index_time",))
    problems: Counter[str] = Counter()
    problems["malformed label row"] = frame.attrs.get(MALFORMED, 0)
    problems["empty patient id"] = int((frame["patient_id"] == "").sum())
    frame = frame[frame["patient_id"] != ""]
    exact_dupes = frame.duplicated(keep="first")
    problems["duplicate label row"] = int(exact_dupes.sum())
    frame = frame[~exact_dupes]
    valid = frame["label"].isin(["0", "1"])
    problems["label is not 0 or 1"] = int((~valid).sum())
    frame = frame[valid]
    conflicted = frame["patient_id"].duplicated(keep=False)
    problems["patient with conflicting labels"] = int(frame.loc[conflicted, "patient_id"].nunique())
    frame = frame[~conflicted].sort_values("patient_id")
    if frame.empty:
        raise SiteDataError(f"{path}: no patient has a usable 0/1 label in column 'label'")
    if "index_time" in frame:
        times = pd.to_datetime(frame["index_time"], errors="coerce", utc=True, format="ISO8601")
        problems["unparseable index_time"] = int((times.isna() & (frame["index_time"] != "")).sum())
    else:
        times = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    return Labels(frame["patient_id"].tolist(), frame["label"].astype(np.float32).to_numpy(),
                  times.set_axis(frame["patient_id"].to_numpy()),
                  Counter({k: v for k, v in problems.items() if v}))
