"""Lab harmonisation on hand-made long-format tables: conversions, local codes, time window."""

from __future__ import annotations

import pandas as pd
import pytest

from client.site_data.labs import lab_matrix
from configs.schema import ExperimentConfig, LabFeature, LocalLabCode

GLUCOSE = LabFeature("2345-7", "glucose", "mg/dL", 110.0, 30.0, 5.0, 1500.0, {"mg/dL": 1.0, "mmol/L": 18.016})
CREAT = LabFeature("2160-0", "creatinine", "mg/dL", 1.0, 0.4, 0.05, 25.0, {"mg/dL": 1.0, "umol/L": 0.01131})


def frame(*rows: tuple[str, str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["patient_id", "code", "value", "unit", "time"])


def standardised(value_mg_dl: float, feature: LabFeature = GLUCOSE) -> float:
    return (value_mg_dl - feature.ref_mean) / feature.ref_sd


def test_conversions_to_canonical_units_are_numerically_right() -> None:
    labs = frame(("p1", "2345-7", "5.55", "mmol/L", "2026-01-01T08:00"),
                 ("p2", "2345-7", "100", "mg/dL", "2026-01-01T08:00"),
                 ("p1", "2160-0", "88.4", "umol/L", "2026-01-01T08:00"))
    values, mask, counts = lab_matrix(labs, ["p1", "p2"], (GLUCOSE, CREAT))
    assert values[0, 0] == pytest.approx(standardised(5.55 * 18.016), abs=1e-4)
    assert values[1, 0] == pytest.approx(standardised(100), abs=1e-4)
    assert values[0, 1] == pytest.approx(standardised(88.4 * 0.01131, CREAT), abs=1e-4)
    assert mask.tolist() == [[1, 1], [1, 0]]
    assert counts.converted == {"2345-7: mmol/L -> mg/dL": 1, "2160-0: umol/L -> mg/dL": 1}


def test_real_catalogue_covers_the_common_conventions(experiment: ExperimentConfig) -> None:
    catalogue = {f.name: f for f in experiment.data.labs}
    assert catalogue["glucose"].conversions["mmol/L"] == pytest.approx(18.016)
    assert catalogue["creatinine"].conversions["umol/L"] == pytest.approx(1 / 88.42, rel=1e-3)
    assert catalogue["hemoglobin"].conversions["g/L"] == pytest.approx(0.1)


def test_site_local_code_with_its_own_unit_maps_onto_the_feature() -> None:
    local = (LocalLabCode("GLU-BG", "2345-7", {"mmol/l (bg)": 18.016}),)
    labs = frame(("p1", "GLU-BG", "5.55", "mmol/l (bg)", "2026-01-01T08:00"),
                 ("p2", "GLU-BG", "101", "mg/dL", "2026-01-01T08:00"))
    values, mask, counts = lab_matrix(labs, ["p1", "p2"], (GLUCOSE,), local=local)
    assert mask[:, 0].tolist() == [1, 1]
    assert values[0, 0] == pytest.approx(standardised(5.55 * 18.016), abs=1e-4)
    assert not counts.unknown_codes


def test_most_recent_value_inside_the_window_before_index_time_wins() -> None:
    labs = frame(("p1", "2345-7", "90", "mg/dL", "2026-01-01T08:00"),    # in window, older
                 ("p1", "2345-7", "140", "mg/dL", "2026-01-02T08:00"),   # in window, latest -> used
                 ("p1", "2345-7", "400", "mg/dL", "2026-01-03T09:00"),   # after index time
                 ("p2", "2345-7", "80", "mg/dL", "2025-12-01T08:00"))    # older than 72 h
    index_time = pd.Series(pd.to_datetime(["2026-01-03T08:00", "2026-01-03T08:00"], utc=True), index=["p1", "p2"])
    values, mask, counts = lab_matrix(labs, ["p1", "p2"], (GLUCOSE,), index_time=index_time, window_hours=72)
    assert values[0, 0] == pytest.approx(standardised(140), abs=1e-4) and mask[:, 0].tolist() == [1, 0]
    assert counts.dropped == {"measured after the index time": 1, "older than the lab window": 1,
                              "older value of the feature (the most recent one is used)": 1}  # the 90
    assert counts.used + sum(counts.dropped.values()) == len(labs)  # every row used or counted


def test_unit_case_is_forgiven_only_when_unambiguous() -> None:
    milli_mega = LabFeature("X", "x", "mU/L", 1.0, 1.0, 0.0, 1e9, {"mU/L": 1.0, "MU/L": 1e9})
    labs = frame(("p1", "2345-7", "100", "MG/DL", "2026-01-01"), ("p2", "X", "3", "mu/l", "2026-01-01"))
    _, mask, counts = lab_matrix(labs, ["p1", "p2"], (GLUCOSE, milli_mega))
    assert mask.tolist() == [[1, 0], [0, 0]]
    assert counts.dropped == {"unit not convertible for X (a spelling of several catalogue units)": 1}
