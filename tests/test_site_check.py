"""`fedclinic site check`: the readiness report site IT runs before training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bad_inputs import CORPUS
from site_yaml import read_sections, set_sections


def site_check(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", "site", "check", str(folder), *args],
                          capture_output=True, text=True, timeout=120)


def test_a_site_with_broken_files_is_ready_and_every_problem_has_its_reason(small_sites: Path, tmp_path: Path) -> None:
    site = tmp_path / "site-b"  # reports glucose in mmol/L and creatinine in umol/L
    shutil.copytree(small_sites / "site-b", site)
    for bad in CORPUS:
        if bad.joins_the_combined_site:
            bad.mutate(site)
    out, share = tmp_path / "site-it.json", tmp_path / "share.json"
    done = site_check(site, "--json", str(out), "--share", str(share), "--all", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "READY to train" in done.stdout and "quarantined image files, by reason" in done.stdout
    report = json.loads(share.read_text())
    assert report["can_train"] is True and report["reason"] is None
    for bad in CORPUS:
        if bad.joins_the_combined_site:
            field, key = bad.counted  # type: ignore[misc]
            assert report[field].get(key, 0) >= 1, (bad.name, report[field])
    assert report["unit_conversions"]["2345-7: mmol/L -> mg/dL"] > 0 and report["coverage"]["image"] > 0
    ids = set(pd.read_csv(small_sites / "site-b" / "labels.csv", dtype=str)["patient_id"])
    text = share.read_text()
    assert "locations" not in report and not any(pid in text for pid in ids), "shareable: counts only"
    assert str(site) not in text and str(site) not in out.read_text()
    # site IT's report: with --all, every counted file is listed by its path under the site folder
    where = json.loads(out.read_text())["locations"]["quarantined_images"]
    assert where.keys() == {k for k, n in report["quarantined_images"].items() if n}
    for reason, entry in where.items():
        assert entry["more"] == 0 and len(entry["at"]) == entry["count"] == report["quarantined_images"][reason]
        assert all((site / rel).is_file() for rel in entry["at"]), entry
    # ... and every counted table row by its line, which holds what the reason says
    site_it = json.loads(out.read_text())["locations"]
    for group, reasons in site_it.items():
        for reason, entry in reasons.items():
            assert len(entry["at"]) == entry["count"] == report[group][reason], (group, reason, entry)
    lines = (site / "labs.csv").read_text().splitlines()
    non_finite = [f"labs.csv line {i}" for i, line in enumerate(lines, 1) if line.split(",")[2] in ("NaN", "inf")]
    assert site_it["lab_rows_dropped"]["non-finite value (NaN/inf)"]["at"] == non_finite and len(non_finite) == 2
    truncated = where["truncated or corrupt file"]["at"]
    assert truncated == [pd.read_csv(site / "manifest.csv", dtype=str)["image_path"].iloc[17]]  # _truncate's file
    assert truncated[0] in done.stdout  # the console lists them too


def test_a_site_that_cannot_train_exits_non_zero_with_the_reason(tmp_path: Path) -> None:
    site = tmp_path / "empty-site"
    site.mkdir()
    done = site_check(site, "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 1
    assert "CANNOT TRAIN" in done.stdout and "labels.csv: labels file is missing" in done.stdout
    report = json.loads((tmp_path / "state" / "readiness.json").read_text())
    assert report["can_train"] is False and "labels file is missing" in report["reason"]
    assert str(tmp_path) not in report["reason"]


def test_labels_but_no_usable_modality_cannot_train(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "labels.csv").write_text("patient_id,label\nP1,0\nP2,1\n")
    (site / "notes.csv").write_text("patient_id,text\nP1,\nP2,   \n")
    done = site_check(site, "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 1 and "no labelled patient has a usable image, lab result or note" in done.stdout


def test_the_report_shows_the_privacy_account_and_refuses_with_a_damaged_ledger(small_sites: Path,
                                                                                 tmp_path: Path) -> None:
    from privacy.ledger import LEDGER_FILE, Ledger, Spend
    site, state = tmp_path / "site-c", tmp_path / "state"
    shutil.copytree(small_sites / "site-c", site)
    (site / "site.yaml").unlink()  # no policy written: the built-in default applies, with a warning
    ledger = Ledger(state / LEDGER_FILE)
    with ledger.locked():
        ledger.append(Spend("site-c", "run-1", 1, 1.0, 0.05, 100, 1e-5, 3.5, 3.5, 1e-5, 10.0, "prv", "t"))
    done = site_check(site, "--state-dir", str(state), "--json", str(tmp_path / "r.json"))
    assert done.returncode == 0 and "built-in default" in done.stdout
    privacy = json.loads((tmp_path / "r.json").read_text())["privacy"]
    assert privacy["dataset"] == "site-c" and privacy["rounds_recorded"] == 1
    assert 3.4 < privacy["lifetime_epsilon_spent"] < 3.6 and privacy["remaining"] == pytest.approx(
        10.0 - privacy["lifetime_epsilon_spent"])
    (state / LEDGER_FILE).write_text("garbage\n")
    broken = site_check(site, "--state-dir", str(state))
    assert broken.returncode == 1 and "restore the latest copy" in broken.stdout
    assert str(state) not in json.loads((state / "readiness.json").read_text())["reason"]


def test_a_named_site_config_that_does_not_exist_is_refused(small_sites: Path, tmp_path: Path) -> None:
    done = site_check(small_sites / "site-a", "--state-dir", str(tmp_path), "--site-config", str(tmp_path / "typo.yaml"))
    assert done.returncode == 1 and "does not exist" in done.stdout


def test_the_shareable_report_repeats_no_cell_value_that_is_not_of_an_expected_shape(small_sites: Path,
                                                                                      tmp_path: Path) -> None:
    """Unknown codes and units are free text in an export (a patient id in the wrong column, a
    clinician's comment): only LOINC-shaped codes and catalogue units appear, the rest is counted."""
    site = tmp_path / "site-a"
    shutil.copytree(small_sites / "site-a", site)
    pid = pd.read_csv(site / "labels.csv", dtype=str)["patient_id"].iloc[0]
    secrets = ("A00042", "Mrs Smith called back", "per Dr Jones", "2345-8")  # 2345-8: a wrong check digit
    rows = [f"{pid},2093-3,190,mg/dL,2026-01-01T00:00:00", f"{pid},A00042,1,mg/dL,2026-01-01T00:00:00",
            f"{pid},Mrs Smith called back,1,mg/dL,2026-01-01T00:00:00", f"{pid},2345-8,1,mg/dL,2026-01-01T00:00:00",
            f"{pid},2345-7,100,per Dr Jones,2026-01-01T00:00:00", f"{pid},2345-7,100,MG/DL,2026-01-01T00:00:00"]
    with (site / "labs.csv").open("a") as fh:
        fh.write("\n".join(rows) + "\n")
    out = tmp_path / "report.json"
    done = site_check(site, "--json", str(out), "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["unknown_lab_codes"] == {"2093-3": 1, "a code that is not LOINC-shaped": 3}
    assert report["lab_rows_dropped"]["unit not convertible for 2345-7 (a unit that is not in the catalogue)"] == 1
    for text in (out.read_text(), done.stdout):
        assert not any(secret in text for secret in secrets)


def test_the_check_says_when_this_site_would_refuse_the_requested_configuration(small_sites: Path,
                                                                                 tmp_path: Path) -> None:
    """A site whose limits refuse the default recipe cannot join a default run: say so, and why."""
    site = tmp_path / "site-a"
    shutil.copytree(small_sites / "site-a", site)
    set_sections(site, limits={'max_image_size': 16})
    done = site_check(site, "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 1 and "refuses the requested configuration: data.image_size" in done.stdout
    assert site_check(site, "data.image_size=16", "--state-dir", str(tmp_path / "state")).returncode == 0


def test_the_check_warns_when_the_held_out_split_is_too_small_for_the_dp_metrics_noise(site_copy: Path,
                                                                                     tmp_path: Path) -> None:
    """24 held-out patients (7 positive) against noise of std 5 x sqrt(10) = 15.8 patients per class:
    most DP releases would show a class below one patient. Less noise, or exact metrics, silence it."""
    def noise_warnings(name: str) -> list[str]:
        share = tmp_path / f"{name}.json"
        done = site_check(site_copy, "--share", str(share), "--state-dir", str(tmp_path / name))
        assert done.returncode == 0, done.stdout + done.stderr
        return [w for w in json.loads(share.read_text())["warnings"] if "noise of the DP metrics release" in w]

    (warning,) = noise_warnings("default")
    assert "std 15.8 patients per class" in warning and "validation.fraction" in warning
    validation = read_sections(site_copy)["validation"]
    set_sections(site_copy, validation={**validation, "noise_multiplier": 0.5})  # std 1.6: enough patients
    assert noise_warnings("quiet") == []
    set_sections(site_copy, validation={**validation, "release": "exact"})
    assert noise_warnings("exact") == []
