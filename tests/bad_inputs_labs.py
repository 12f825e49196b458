"""Bad-input corpus entries for labs (issue 9): unit spellings, site.yaml lab_units / lab_features,
values clipped at ±5 reference SD. Same contract as bad_inputs.CORPUS (folded in there).

Rows go to lab patients 5-9 (bad_inputs.lab_patient), each one minute after that patient's latest
lab, so that an index time set by another entry (one hour after the latest lab) keeps them in the
window and the entries combine.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bad_inputs import BadInput, Mutation, append, lab, lab_patient, table


def _after_latest(site: Path, pid: str) -> str:
    labs = table(site, "labs.csv")
    times = pd.to_datetime(labs.loc[labs["patient_id"] == pid, "time"], errors="coerce", format="ISO8601")
    return (times.max() + pd.Timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")


def _lab_for(k: int, **changes: str) -> Mutation:
    """Append one lab row for lab patient `k`, in the window."""
    def mutate(site: Path) -> None:
        pid = lab_patient(site, k)
        append(site, "labs.csv", lab(site, patient_id=pid, time=_after_latest(site, pid), **changes))
    return mutate


def _site_yaml(text: str) -> Mutation:
    """Append `text` (top-level keys) to the site's site.yaml."""
    def mutate(site: Path) -> None:
        with (site / "site.yaml").open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return mutate


def _site_unit_and_row(site: Path) -> None:
    _site_yaml('lab_units:\n  - {feature: "2345-7", unit: "mg%", factor: 1.0}\n')(site)
    _lab_for(9, code="2345-7", value="100", unit="mg%")(site)


UNITS = "unit_conversions"
ENTRIES: list[BadInput] = [
    # spellings of catalogue units convert as the catalogue unit (client/site_data/lab_units.py)
    BadInput("lab unit with the micro sign", _lab_for(5, code="2160-0", value="88.4", unit="\u00b5mol/L"),
             counted=(UNITS, "2160-0: umol/L -> mg/dL")),
    BadInput("lab unit with Greek mu, spaces and a small l", _lab_for(6, code="2160-0", value="88.4", unit=" \u03bcmol / l "),
             counted=(UNITS, "2160-0: umol/L -> mg/dL")),
    BadInput("lab count unit written 10^9/L", _lab_for(7, code="6690-2", value="8.1", unit="10^9/L"),
             counted=(UNITS, "6690-2: 10*9/L -> 10*3/uL")),
    BadInput("lab unit in fullwidth characters", _lab_for(8, code="718-7", value="131", unit="\uff47\uff0f\uff2c"),
             counted=(UNITS, "718-7: g/L -> g/dL")),
    BadInput("lab value far beyond the reference range", _lab_for(5, code="2345-7", value="1400", unit="mg/dL"),
             counted=("lab_values_clipped", "value beyond ±5 reference SD (clipped) for 2345-7")),
    BadInput("lab unit added in site.yaml lab_units", _site_unit_and_row,
             counted=(UNITS, "2345-7: site.yaml lab_units[0] -> mg/dL"), combinable=False),
    # site.yaml mistakes stop the site with the field named
    BadInput("site.yaml lab_units NaN factor", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "mmol/L", factor: .nan}\n'),
             fatal="site.yaml: lab_units[0].factor must be a finite number > 0 (got nan)"),
    BadInput("site.yaml lab_units negative factor", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "mmol/L", factor: -11.31}\n'),
             fatal="site.yaml: lab_units[0].factor must be a finite number > 0 (got -11.31)"),
    BadInput("site.yaml lab_units for an unconfigured feature", _site_yaml('lab_units:\n  - {feature: "2093-3", unit: "mg/dL", factor: 1.0}\n'),
             fatal="site.yaml: lab_units[0].feature '2093-3' is not a configured lab feature"),
    BadInput("site.yaml lab_units changes a released factor", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "\u00b5mol/L", factor: 0.0113}\n'),
             fatal="site.yaml: lab_units[0].unit '\u00b5mol/L' is the catalogue's 'umol/L' for 2160-0"),
    BadInput("site.yaml lab_units same_as an unknown unit", _site_yaml('lab_units:\n  - {feature: "2160-0", unit: "mM", same_as: "mmol/L"}\n'),
             fatal="site.yaml: lab_units[0].same_as 'mmol/L' is not a unit of 2160-0 in the catalogue"),
    BadInput("site.yaml lab_codes zero factor", _site_yaml('lab_codes:\n  - {code: GLU-BG, feature: "2345-7", conversions: {mmol/L: 0}}\n'),
             fatal="site.yaml: lab_codes[0].conversions.mmol/L: the factor must be a finite number > 0"),
    BadInput("site.yaml lab_features not released", _site_yaml("lab_features: ../../elsewhere/labs\n"),
             fatal="site.yaml: lab_features: '../../elsewhere/labs' is not a released lab feature file"),
]
