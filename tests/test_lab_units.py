"""Unit spellings: every spelling of a configured unit converts exactly as the unit itself, and
nothing unconfigured or ambiguous converts (client/site_data/lab_units.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from client.labs import lab_matrix
from client.site_data.lab_units import configured_unit, unit_key
from configs.schema import ExperimentConfig, LabFeature

TIME = "2025-01-01T08:00:00"


def frame(*rows: tuple[str, str, str, str]) -> pd.DataFrame:
    return pd.DataFrame([(*r, TIME) for r in rows], columns=["patient_id", "code", "value", "unit", "time"])


def test_micro_sign_greek_mu_and_case_give_one_value_and_the_conversion_is_listed(
        experiment: ExperimentConfig) -> None:
    # case lab-micro-sign-units: 88.4 umol/L creatinine = 88.4 x 0.011310 = 0.99980 mg/dL
    spellings = {"P1": "umol/L", "P2": "umol/l", "P3": "\u00b5mol/L", "P4": "\u03bcmol/L", "P5": "\u00b5mol/l"}
    labs = frame(*((p, "2160-0", "88.4", u) for p, u in spellings.items()))
    features = experiment.data.labs
    j = [f.code for f in features].index("2160-0")
    values, mask, counts = lab_matrix(labs, list(spellings), features)  # the case script's positional call
    assert mask[:, j].tolist() == [1.0] * 5
    assert len(set(values[:, j].tolist())) == 1
    assert values[0, j] == pytest.approx((88.4 * 0.011310 - 1.0) / 0.4, abs=1e-6)
    assert counts.converted == {"2160-0: umol/L -> mg/dL": 5} and not counts.dropped


CREATININE = ["umol/L", "mcmol/L", "micromol/L", "Micromol/L", "\u00b5mol / L", "umol/L ", "\u00a0umol/L",
              "\uff55\uff4d\uff4f\uff4c\uff0f\uff2c", "UMOL/L", "\u03bcmol/l"]
WBC_PER_LITRE = ["10*9/L", "10^9/L", "10**9/L", "x10^9/L", "X10E9/L", "10E9/L", "10e9/l", "\u00d710\u2079/L",
                 "10\u2079/L", "G/L", "10^9 / L"]
WBC_PER_MICROLITRE = ["10*3/uL", "10^3/\u00b5L", "10\u00b3/\u03bcL", "K/uL", "k/\u00b5l", "10E3/UL"]


@pytest.mark.parametrize("code, spellings, canonical_value", [
    ("2160-0", CREATININE, 88.4 * 0.011310),
    ("2345-7", ["mg/dL", "mg/dl", "MG/DL", "mg / dL", "\uff4d\uff47\uff0f\uff44\uff2c"], 126.0),
    ("2345-7", ["mmol/L", "mmol/l", "MMOL/L", "mmol / l"], 7.0 * 18.016),
    ("6690-2", WBC_PER_LITRE, 8.1),
    ("6690-2", WBC_PER_MICROLITRE, 8.1),
    ("718-7", ["g/L", "g/l", "G/L"], 13.1),    # hemoglobin: G/L is grams (an all-capitals system)
    ("718-7", ["g/dL", "g/dl", "G/DL"], 13.1),
    ("2951-2", ["mEq/L", "meq/l", "MEQ/L"], 141.0),
])
def test_every_spelling_of_a_unit_converts_identically(experiment: ExperimentConfig, code: str,
                                                       spellings: list[str], canonical_value: float) -> None:
    feature = next(f for f in experiment.data.labs if f.code == code)
    reported = canonical_value / next(factor for unit, factor in feature.conversions.items()
                                      if configured_unit(spellings[0], feature.conversions) == unit)
    ids = [f"P{i}" for i in range(len(spellings))]
    labs = frame(*((pid, code, repr(reported), unit) for pid, unit in zip(ids, spellings)))
    values, mask, counts = lab_matrix(labs, ids, (feature,))
    assert mask[:, 0].tolist() == [1.0] * len(spellings), dict(counts.dropped)
    assert values[:, 0] == pytest.approx([(canonical_value - feature.ref_mean) / feature.ref_sd] * len(spellings),
                                         abs=1e-4)


def test_case_stays_significant_where_it_tells_units_apart() -> None:
    milli_mega = LabFeature("X", "x", "mU/L", 1.0, 1.0, 0.0, 1e12, {"mU/L": 1.0, "MU/L": 1e9})
    labs = frame(("p1", "X", "3", "mU/l"), ("p2", "X", "3", "MU / l"), ("p3", "X", "3", "mu/l"), ("p4", "X", "3", "MU/L"))
    values, mask, counts = lab_matrix(labs, ["p1", "p2", "p3", "p4"], (milli_mega,))
    assert mask[:, 0].tolist() == [1, 1, 0, 1]
    assert counts.converted == {"X: MU/L -> mU/L": 2}
    assert counts.dropped == {"unit not convertible for X (a spelling of several catalogue units)": 1}


def test_no_factor_is_ever_derived_from_a_spelling(experiment: ExperimentConfig) -> None:
    creatinine = next(f for f in experiment.data.labs if f.code == "2160-0")
    labs = frame(("p1", "2160-0", "0.09", "mmol/L"), ("p2", "2160-0", "88", "\u00b5mol/dL"), ("p3", "2160-0", "1", "mg%"))
    _, mask, counts = lab_matrix(labs, ["p1", "p2", "p3"], experiment.data.labs)
    assert mask.sum() == 0
    # a unit the catalogue has for another feature is named by its catalogue spelling; others generically
    assert counts.dropped == {"unit not convertible for 2160-0 (mmol/L)": 1,
                              "unit not convertible for 2160-0 (a unit that is not in the catalogue)": 2}
    assert "mmol/L" not in creatinine.conversions


def test_unit_keys() -> None:
    assert unit_key("\u00b5mol / l") == unit_key("\u03bcmol/L") == unit_key("mcmol/L") == "umol/L"
    assert unit_key("x10^9/L") == unit_key("G/L") == "10*9/L"
    assert unit_key("mU/L") != unit_key("MU/L")
    assert configured_unit("mol/L", {"mmol/L": 1.0, "umol/L": 1.0}) is None
