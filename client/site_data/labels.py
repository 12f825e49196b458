"""labels.csv: the site's patients, their 0/1 outcome and optional index time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.site_data.tables import find_table, read_table
from configs.schema import SiteLimits

# Counted but still used (the patient's labs are then taken without a time window); every other
# reason is a row not used, so rows in the file = patients + rows counted under those reasons.
UNPARSEABLE_TIME = "unparseable index_time"


@dataclass(frozen=True)
class Labels:
    """Usable patients (sorted ids), labels [N] float32 0/1, index times (NaT: none, indexed by id)
    and the rows not used (or used with a problem) by reason, with their row numbers."""

    patient_ids: list[str]
    label: np.ndarray
    index_time: pd.Series
    problems: Findings


def read_labels(site: Path, *, limits: SiteLimits | None = None) -> Labels:
    """Read and check labels; a site without any usable label cannot train.

    Raises SiteDataError when the file is missing, unreadable, lacks a column, exceeds `limits`
    (tables.read_table) or has no usable row.
    """
    path = find_table(site, "labels")
    if path is None:
        raise SiteDataError(f"{site / 'labels.csv'}: labels file is missing; export patient_id,label "
                            "(0/1) for every patient, optionally with index_time")
    frame, problems = read_table(path, ("patient_id", "label"), optional=("index_time",), limits=limits)
    name = path.name

    def drop(reason: str, rows: pd.Series) -> pd.DataFrame:
        problems.add_rows(reason, name, frame.index[rows.to_numpy()])
        return frame[~rows]

    frame = drop("empty patient id", frame["patient_id"] == "")
    frame = drop("duplicate label row", frame.duplicated(keep="first"))
    frame = drop("label is not 0 or 1", ~frame["label"].isin(["0", "1"]))
    frame = drop("patient with conflicting labels", frame["patient_id"].duplicated(keep=False))
    frame = frame.sort_values("patient_id")
    if frame.empty:
        raise SiteDataError(f"{path}: no patient has a usable 0/1 label in column 'label'")
    if "index_time" in frame:
        times = pd.to_datetime(frame["index_time"], errors="coerce", utc=True, format="ISO8601")
        problems.add_rows(UNPARSEABLE_TIME, name, frame.index[(times.isna() & (frame["index_time"] != "")).to_numpy()])
    else:
        times = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    return Labels(frame["patient_id"].tolist(), frame["label"].astype(np.float32).to_numpy(),
                  times.set_axis(frame["patient_id"].to_numpy()), problems.nonzero())
