"""`fedclinic site check`: the readiness report site IT runs before training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from bad_inputs import CORPUS


def site_check(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", "site", "check", str(folder), *args],
                          capture_output=True, text=True, timeout=120)


def test_a_site_with_broken_files_is_ready_and_every_problem_has_its_reason(small_sites: Path, tmp_path: Path) -> None:
    site = tmp_path / "site-b"  # reports glucose in mmol/L and creatinine in umol/L
    shutil.copytree(small_sites / "site-b", site)
    for bad in CORPUS:
        if bad.counted and bad.name not in ("manifest symlink escaping the site",):
            bad.mutate(site)
    out = tmp_path / "report.json"
    done = site_check(site, "--json", str(out), "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "READY to train" in done.stdout and "quarantined image files, by reason" in done.stdout
    report = json.loads(out.read_text())
    assert report["can_train"] is True and report["reason"] is None
    for bad in CORPUS:
        if bad.counted and bad.name != "manifest symlink escaping the site":
            field, key = bad.counted
            assert report[field].get(key, 0) >= 1, (bad.name, report[field])
    assert report["unit_conversions"]["2345-7: mmol/L -> mg/dL"] > 0 and report["coverage"]["image"] > 0
    ids = set(pd.read_csv(small_sites / "site-b" / "labels.csv", dtype=str)["patient_id"])
    text = out.read_text()
    assert not any(pid in text for pid in ids), "the shareable report must not contain patient ids"
    assert str(site) not in text


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
