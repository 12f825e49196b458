"""site.yaml lab_units and lab_features, values clipped at ±5 reference SD, and the row numbers
behind every dropped or clipped lab row."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from client.recipe import site_experiment
from client.site import site_settings
from client.site_data.errors import SiteDataError
from client.site_data.labs import SUPERSEDED, UNCONFIGURED_CODE, clipped_reason, lab_matrix
from client.site_data.loader import load_site
from client.site_data.readiness.check import check_site
from client.site_data.readiness.lab_advice import lab_warnings
from client.site_file import read_site_file
from configs.load import load_experiment, released_experiment
from configs.parse import ConfigError
from configs.schema import ExperimentConfig, LabFeature, LabUnit

GLUCOSE = LabFeature("2345-7", "glucose", "mg/dL", 110.0, 30.0, 5.0, 1500.0, {"mg/dL": 1.0, "mmol/L": 18.016})
CREAT = LabFeature("2160-0", "creatinine", "mg/dL", 1.0, 0.4, 0.05, 25.0, {"mg/dL": 1.0, "umol/L": 0.01131})
LOCAL = {"2345-7": "GLU", "2160-0": "CREA", "718-7": "HB", "2524-7": "LACT"}  # configs/data/example_local_codes.yaml


def frame(rows: list[tuple[str, str, str, str]], index: list[int] | None = None) -> pd.DataFrame:
    out = pd.DataFrame([(*r, "2026-01-01T08:00") for r in rows], columns=["patient_id", "code", "value", "unit", "time"])
    return out.set_axis(index, axis=0) if index is not None else out


def write_site_yaml(site: Path, text: str) -> Path:
    path = site / "site.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_site_units_convert_with_the_catalogue_factor_or_their_own() -> None:
    units = (LabUnit("2160-0", "umol/litre", same_as="umol/L"), LabUnit("2160-0", "mmol/L", factor=11.31))
    labs = frame([("p1", "2160-0", "88.4", "umol/litre"), ("p2", "2160-0", "0.0884", "mmol/L")])
    values, mask, counts = lab_matrix(labs, ["p1", "p2"], (CREAT,), site_units=units, source="labs.csv")
    assert mask[:, 0].tolist() == [1, 1]
    assert values[0, 0] == pytest.approx((88.4 * 0.01131 - 1.0) / 0.4, abs=1e-5)
    assert values[1, 0] == pytest.approx((0.0884 * 11.31 - 1.0) / 0.4, abs=1e-5)
    assert counts.converted == {"2160-0: umol/L -> mg/dL": 1, "2160-0: site.yaml lab_units[1] -> mg/dL": 1}


def test_site_yaml_lab_units_are_read_and_apply_at_load(site_copy: Path, experiment: ExperimentConfig,
                                                        tmp_path: Path) -> None:
    labs = pd.read_csv(site_copy / "labs.csv", dtype=str, keep_default_na=False)
    creat = labs["code"] == "2160-0"
    labs.loc[creat, "value"] = (labs.loc[creat, "value"].astype(float) / 0.01131).round(1).astype(str)
    labs.loc[creat, "unit"] = "umol per L"  # a spelling no normaliser guesses
    labs.to_csv(site_copy / "labs.csv", index=False)
    path = write_site_yaml(site_copy, 'lab_units:\n  - {feature: "2160-0", unit: umol per L, same_as: umol/L}\n')
    site_file = read_site_file(path, experiment.data)
    assert site_file.lab_units == (LabUnit("2160-0", "umol per L", same_as="umol/L"),)
    _, report = load_site(site_copy, experiment.data, cache_dir=tmp_path / "cache", site_file=site_file)
    assert report.unit_conversions["2160-0: umol/L -> mg/dL"] == int(creat.sum())
    assert not any("unit not convertible" in reason for reason in report.lab_rows_dropped)


@pytest.mark.parametrize("entry, message", [
    ('{feature: "2160-0", unit: mmol/L, factor: .nan}', "lab_units[0].factor must be a finite number > 0 (got nan)"),
    ('{feature: "2160-0", unit: mmol/L, factor: .inf}', "lab_units[0].factor must be a finite number > 0 (got inf)"),
    ('{feature: "2160-0", unit: mmol/L, factor: 0}', "lab_units[0].factor must be a finite number > 0 (got 0.0)"),
    ('{feature: "2160-0", unit: mmol/L, factor: -11.31}', "lab_units[0].factor must be a finite number > 0"),
    ('{feature: "9999-9", unit: mmol/L, factor: 11.31}', "lab_units[0].feature '9999-9' is not a configured lab feature"),
    ('{feature: "2160-0", unit: mmol/L}', "lab_units[0]: give exactly one of same_as"),
    ('{feature: "2160-0", unit: mmol/L, factor: 11.31, same_as: umol/L}', "lab_units[0]: give exactly one of same_as"),
    ('{feature: "2160-0", unit: mM, same_as: mmol/L}', "lab_units[0].same_as 'mmol/L' is not a unit of 2160-0"),
    ('{feature: "2160-0", unit: "µmol/L", factor: 0.0113}', "lab_units[0].unit 'µmol/L' is the catalogue's 'umol/L'"),
    ('{feature: "2160-0", unit: " ", factor: 1.0}', "lab_units[0].unit must not be empty"),
    ('{feature: "2160-0", unit: mmol/L, factor: "x"}', "lab_units[0].factor: expected float"),
])
def test_a_wrong_lab_unit_stops_the_site_naming_the_field(tmp_path: Path, experiment: ExperimentConfig,
                                                          entry: str, message: str) -> None:
    path = write_site_yaml(tmp_path, f"lab_units:\n  - {entry}\n")
    with pytest.raises(SiteDataError, match="site.yaml") as err:
        read_site_file(path, experiment.data)
    assert message in str(err.value)


def test_repeating_a_released_unit_with_its_factor_is_harmless_but_a_unit_twice_is_refused(
        tmp_path: Path, experiment: ExperimentConfig) -> None:
    ok = write_site_yaml(tmp_path, 'lab_units:\n  - {feature: "2160-0", unit: "µmol/L", factor: 0.011310}\n')
    assert len(read_site_file(ok, experiment.data).lab_units) == 1
    twice = write_site_yaml(tmp_path, 'lab_units:\n  - {feature: "2160-0", unit: "mmol/L", factor: 11.31}\n'
                                      '  - {feature: "2160-0", unit: "mmol / l", factor: 11.0}\n')
    with pytest.raises(SiteDataError, match=r"lab_units\[1\].unit 'mmol / l': 2160-0 already has this unit at lab_units\[0\]"):
        read_site_file(twice, experiment.data)


def test_lab_codes_factors_are_checked_and_a_configured_code_points_to_lab_units(
        tmp_path: Path, experiment: ExperimentConfig) -> None:
    bad = write_site_yaml(tmp_path, 'lab_codes:\n  - {code: GLU-BG, feature: "2345-7", conversions: {mmol/L: -18}}\n')
    with pytest.raises(SiteDataError, match="lab_codes\\[0\\].conversions.mmol/L: the factor must be a finite number > 0"):
        read_site_file(bad, experiment.data)
    configured = write_site_yaml(tmp_path, 'lab_codes:\n  - {code: "2160-0", feature: "2160-0"}\n')
    with pytest.raises(SiteDataError, match="already a configured code \\(a unit of a configured code goes in lab_units\\)"):
        read_site_file(configured, experiment.data)


def test_clipped_values_are_counted_with_their_rows_and_site_check_warns() -> None:
    wrong_sd = LabFeature("2345-7", "glucose", "mg/dL", 110.0, 3.0, 5.0, 1500.0, {"mg/dL": 1.0})  # sd 3, not 30
    values_mg = [110 + 10 * k for k in range(10)]  # 110..200 mg/dL: z = 0, 3.3, 6.7, ... beyond 5 from 130 up
    rows = [(f"p{k}", "2345-7", str(v), "mg/dL") for k, v in enumerate(values_mg)]
    ids = [f"p{k}" for k in range(10)]
    lines = list(range(2, 12))  # the table's index: line numbers in labs.csv (header = line 1)
    values, mask, counts = lab_matrix(frame(rows, lines), ids, (wrong_sd,), source="labs.csv")
    assert mask.sum() == 10 and values[:, 0].max() == 5.0
    reason = clipped_reason("2345-7")
    assert reason == "value beyond ±5 reference SD (clipped) for 2345-7"
    assert counts.clipped == {reason: 8} and counts.used_by_feature == {"2345-7": 10}
    assert sorted(counts.clipped.rows[reason]["labs.csv"]) == list(range(4, 12))
    (warning,) = lab_warnings(counts.dropped, counts.clipped, counts.used_by_feature)
    assert warning.startswith("8 of 10 2345-7 values (80.0 %) lie beyond ±5 reference SD")
    assert "reference mean/sd for 2345-7 look wrong" in warning
    _, _, fitting = lab_matrix(frame(rows, lines), ids, (GLUCOSE,), source="labs.csv")
    assert not fitting.clipped and lab_warnings(fitting.dropped, fitting.clipped, fitting.used_by_feature) == []


def test_every_dropped_lab_row_is_recorded_with_its_line_number() -> None:
    rows = [("p1", "2345-7", "100", "mg/dL"), ("p1", "2345-7", "100", "mg/dL"),  # duplicate: line 3
            ("p1", "2345-7", "pending", "mg/dL"), ("p2", "2345-7", "99999", "mg/dL"),
            ("p2", "2345-7", "5", "mg%"), ("nobody", "2345-7", "5", "mg/dL"), ("p2", "XYZ", "1", "mg/dL")]
    _, _, counts = lab_matrix(frame(rows, list(range(2, 9))), ["p1", "p2"], (GLUCOSE,), source="labs.csv")
    where = {reason: sorted(by_file["labs.csv"]) for reason, by_file in counts.dropped.rows.items()}
    assert where == {"duplicate row": [3], "non-numeric value": [4], "implausible value for 2345-7": [5],
                     "unit not convertible for 2345-7 (a unit that is not in the catalogue)": [6],
                     "row for a patient without a label": [7], UNCONFIGURED_CODE: [8]}
    assert dict(counts.dropped) == {reason: 1 for reason in where}


def local_code_site(small_sites: Path, tmp_path: Path) -> Path:
    """site-a with its labs coded in the example feature file's local codes (other labs left out)."""
    site = tmp_path / "site-local"
    shutil.copytree(small_sites / "site-a", site)
    labs = pd.read_csv(site / "labs.csv", dtype=str, keep_default_na=False)
    labs = labs[labs["code"].isin(LOCAL)].assign(code=lambda f: f["code"].map(LOCAL))
    labs.to_csv(site / "labs.csv", index=False)
    return site


def test_a_site_with_local_codes_follows_a_released_feature_file(small_sites: Path, tmp_path: Path) -> None:
    site = local_code_site(small_sites, tmp_path)
    node = {"data-path": str(site), "state-dir": str(tmp_path / "state")}
    released = released_experiment()
    # before: every lab row is an unknown code, and the advice names the route that works
    before = check_site(site_settings(node, None), released.data, released)
    assert before.report is not None and before.report.lab_rows_dropped[UNCONFIGURED_CODE] > 100
    (advice,) = [w for w in before.warnings if "not the model's lab features" in w]
    assert "site.yaml lab_features" in advice and "data=<name>" in advice
    assert "configs/data/example_local_codes.yaml" in advice
    # following it: site.yaml names the feature file, the coordinator selects data=example_local_codes
    with (site / "site.yaml").open("a", encoding="utf-8") as fh:
        fh.write("\nlab_features: example_local_codes\n")
    site_file = read_site_file(site / "site.yaml", released.data)
    assert [f.code for f in site_file.data.labs] == ["GLU", "CREA", "HB", "LACT"]
    requested = load_experiment(["data=example_local_codes"])
    cfg = site_experiment(requested, released, site_file)
    assert [f.code for f in cfg.data.labs] == ["GLU", "CREA", "HB", "LACT"]
    arrays, report = load_site(site, cfg.data, cache_dir=tmp_path / "cache", site_file=site_file)
    assert arrays.labs.shape[1] == 4 and arrays.lab_mask.sum(axis=0).min() > 50
    assert not report.unknown_lab_codes and UNCONFIGURED_CODE not in report.lab_rows_dropped
    after = check_site(site_settings(node, None), requested.data, requested)
    assert after.can_train, after.reason
    assert not [w for w in after.warnings if "lab" in w]
    # `fedclinic site check` with no data= checks the configuration the site's runs will use
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "site", "check", str(site), "--state-dir",
                           str(tmp_path / "state2")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "READY to train" in done.stdout, done.stdout + done.stderr
    assert "checking the configuration data=example_local_codes" in done.stdout
    # the model's input definition must match: a coordinator that does not select the file is refused
    with pytest.raises(ConfigError, match="data.labs: the coordinator's model expects lab features 2345-7"):
        site_experiment(released, released, site_file)


def test_a_site_without_the_feature_file_refuses_a_coordinator_that_selects_it(
        tmp_path: Path, experiment: ExperimentConfig) -> None:
    site_file = read_site_file(None, experiment.data)
    with pytest.raises(ConfigError, match="data.labs: the coordinator's model expects lab features GLU, CREA"):
        site_experiment(load_experiment(["data=example_local_codes"]), released_experiment(), site_file)


def test_the_example_feature_file_changes_only_the_lab_features(experiment: ExperimentConfig) -> None:
    example = load_experiment(["data=example_local_codes"]).data
    assert {k: v for k, v in vars(example).items() if k != "labs"} == \
        {k: v for k, v in vars(experiment.data).items() if k != "labs"}
    by_name = {f.name: f for f in experiment.data.labs}
    for f in example.labs:  # same meaning as the LOINC catalogue, under local codes
        assert (f.unit, f.ref_mean, f.ref_sd, f.low, f.high, f.conversions) == \
            (by_name[f.name].unit, by_name[f.name].ref_mean, by_name[f.name].ref_sd, by_name[f.name].low,
             by_name[f.name].high, by_name[f.name].conversions)
    assert math.isclose(example.labs[1].conversions["umol/L"], 1 / 88.42, rel_tol=1e-3)


def test_every_lab_row_of_a_clean_site_is_used_or_counted(small_sites: Path, tmp_path: Path,
                                                          experiment: ExperimentConfig) -> None:
    """The model takes one value per patient and feature; every older one is counted with its line."""
    site = small_sites / "site-a"
    _, report = load_site(site, experiment.data, cache_dir=tmp_path / "cache",
                          site_file=read_site_file(site / "site.yaml", experiment.data))
    rows = len((site / "labs.csv").read_text().splitlines()) - 1
    assert rows == report.lab_rows_used + sum(report.lab_rows_dropped.values()) > 0
    older = report.lab_rows_dropped[SUPERSEDED]
    assert older > 0 and len(report.lab_rows_dropped.locations(SUPERSEDED, None)[0]) == older
