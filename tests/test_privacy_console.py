"""`fedclinic privacy plan | report`, as a privacy officer runs them."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from privacy.accountant import MechanismUse, epsilon_spent
from privacy.ledger import LEDGER_FILE, Ledger, Spend
from storage.audit_log import append_event


def fedclinic(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, timeout=120)


def test_plan_for_a_target_gives_sigma_and_epsilon_per_round_within_target() -> None:
    done = fedclinic("privacy", "plan", "--dataset-size", "1600", "--batch-size", "128", "--local-epochs", "2",
                     "--rounds", "4", "--target-epsilon", "6", "--json")
    plan = json.loads(done.stdout)
    eps = [r["epsilon"] for r in plan["rounds"]]
    assert eps == sorted(eps) and 5.8 < eps[-1] <= 6.0  # σ is rounded up to a 1 % grid (privacy.planning.on_grid)
    assert plan["sample_rate"] == pytest.approx(1 / 13) and plan["steps_per_round"] == 26
    # as the site plans and records it: training plus one DP evaluation (q = 1, σ 5) per round
    assert plan["evaluation_noise_multiplier"] == 5.0
    assert eps[1] == pytest.approx(epsilon_spent([MechanismUse(plan["noise_multiplier"], 1 / 13, 52),
                                                  MechanismUse(5.0, 1.0, 2)], 1e-5, "prv"))
    assert "sample-level" in plan["guarantee"]
    training_only = json.loads(fedclinic("privacy", "plan", "--dataset-size", "1600", "--batch-size", "128",
                                         "--local-epochs", "2", "--rounds", "4", "--target-epsilon", "6",
                                         "--no-evaluation", "--json").stdout)
    assert training_only["evaluation_noise_multiplier"] is None
    assert training_only["noise_multiplier"] < plan["noise_multiplier"]  # evaluations cost budget too
    assert training_only["rounds"][1]["epsilon"] == pytest.approx(epsilon_spent(
        [MechanismUse(training_only["noise_multiplier"], 1 / 13, 52)], 1e-5, "prv"))


def test_plan_for_a_given_sigma_and_input_errors() -> None:
    table = fedclinic("privacy", "plan", "--dataset-size", "500", "--rounds", "2", "--sigma", "1.2")
    assert table.returncode == 0 and "σ = 1.2000" in table.stdout and "ε after each round" in table.stdout
    both = fedclinic("privacy", "plan", "--dataset-size", "500", "--sigma", "1", "--target-epsilon", "3")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_report_shows_spend_per_run_and_round_remaining_budget_and_a_plot(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / LEDGER_FILE)
    with ledger.locked():
        for run, rounds, base in (("101", (1, 2, 3), 0.0), ("202", (1, 2), 3.0)):
            for r in rounds:
                ledger.append(Spend("synthetic-site-a", run, r, 0.9, 0.08, 26, 1e-5, float(r), base + r, 1e-5, 10.0,
                                    "prv", f"2026-11-23T0{r}:00:00+00:00"))
    # the site runner's audit log beside the ledger: a declined round (701) and a task that replied
    append_event(tmp_path / "audit.jsonl", "task", {"run": "9001", "phase": "train", "outcome": "error",
                                                    "seconds": 0.2, "round": 3, "error_code": 701})
    append_event(tmp_path / "audit.jsonl", "task", {"run": "9001", "phase": "train", "outcome": "replied",
                                                    "seconds": 3.0, "round": 2, "epsilon": 2.0})
    done = fedclinic("privacy", "report", str(ledger.path), "--json", "--plot", str(tmp_path / "report.html"))
    report = json.loads(done.stdout[: done.stdout.rindex("}") + 1])
    (dataset,) = report["datasets"]
    assert dataset["lifetime_epsilon"] == 5.0 and dataset["remaining"] == 5.0 and dataset["cap"] == 10.0
    assert [(r["run_id"], r["rounds"], r["run_epsilon"]) for r in dataset["runs"]] == [
        ("101", [1, 2, 3], 3.0), ("202", [1, 2], 2.0)]
    assert "1 declines from" in done.stdout
    page = (tmp_path / "report.html").read_text()
    (png,) = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    image = base64.b64decode(png)
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 10_000  # a real chart, not a stub
    width, height = struct.unpack(">II", image[16:24])
    assert width > 600 and height > 300
    assert "against the cap 10" in page and "sample-level" in page
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", page)  # self-contained
    runs = re.findall(r"<tr><td>(\d+)</td><td>([\d, ]+)</td>", page)
    assert runs == [("101", "1, 2, 3"), ("202", "1, 2")]
    assert "<td>9001</td><td>3</td><td>train</td><td>701</td>" in page and "lifetime privacy budget" in page
    table = fedclinic("privacy", "report", str(ledger.path))
    assert "remaining 5.000" in table.stdout and "202" in table.stdout


def test_report_of_a_missing_or_damaged_ledger_says_so(tmp_path: Path) -> None:
    missing = fedclinic("privacy", "report", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "no such ledger" in missing.stdout
    (tmp_path / LEDGER_FILE).write_text("{broken\n")
    damaged = fedclinic("privacy", "report", str(tmp_path / LEDGER_FILE))
    assert damaged.returncode == 2 and "cannot be read" in damaged.stdout and "restore" in damaged.stdout
