"""The `fedclinic` command end to end: Flower's simulation engine, real DP training, run folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bad_inputs import CORPUS
from client.site_data.loader import validation_mask
from configs.load import load_experiment
from model.networks import build_model
from server.run_folder import load_checkpoint
from server.run_state import load_resume_point
from site_yaml import release_exact_metrics


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def fedclinic(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def exposed_listeners() -> set[str]:
    """Listening TCP sockets not bound to loopback, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and local.split(":")[0] not in LOOPBACK:
                found.add(f"{table[-4:]} {local}")
    return found


def fedclinic_watching_listeners(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the CLI and collect every non-loopback listener that appears while it runs."""
    before = exposed_listeners()
    with subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        opened: set[str] = set()
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            opened |= exposed_listeners() - before
            time.sleep(0.2)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), opened


def train_count(site: Path, fraction: float = 0.2) -> int:
    ids = sorted(pd.read_csv(site / "labels.csv", dtype=str)["patient_id"])
    return int((~validation_mask(ids, fraction, 0)).sum())


@pytest.mark.slow
def test_two_sites_two_rounds_write_a_complete_run_folder(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    assert fedclinic("synth", "--sites", "2", "--patients", "150", "--image-size", "32", "--seed", "3",
                     "--out", str(sites), cwd=tmp_path).returncode == 0
    release_exact_metrics(sites / "site-b")  # site-a releases DP metrics, site-b exact ones
    done, opened = fedclinic_watching_listeners(
        "run", f"data.root={sites}", "rounds=2", "train.batch_size=32", "privacy.target_epsilon=5",
        f"output.root={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert opened == set(), "the simulation listened beyond loopback"
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"run folder: {run_dir}" in done.stdout and "max ε" in done.stdout
    console = done.stdout + done.stderr
    assert "Manually terminating" not in console  # Ray actors' normal end, not a warning for the user
    # each Flower record once: not again through the root handler Opacus' import installs
    root_format = re.findall(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d:[A-Z]+:(.*)", console)
    assert not [m for m in root_format if re.search(rf"(INFO|WARNING|ERROR) :\s+{re.escape(m)}", console)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    # site-b's exact metrics define every round's AUROC; site-a's DP ones over ~30 held-out
    # patients are noisy, and undefined when its noisy counts show a class below one patient
    assert all(0 <= r["auroc"] <= 1 for r in summary["rounds"])
    assert summary["final_auroc"] == summary["rounds"][-1]["auroc"]
    point = load_resume_point(run_dir)
    assert point is not None
    recorded = point.rounds  # what each site released, as the coordinator received it
    for r, kept in zip(summary["rounds"], recorded, strict=True):
        evals = {e["site"]: e for e in kept["site_evals"]}
        dp, exact = evals["site-a"], evals["site-b"]
        assert dp["dp"] and not exact["dp"] and exact["auroc_std"] == 0
        cells = [*dp["histogram_positive"], *dp["histogram_negative"]]  # 20 noisy counts, none whole
        assert len(cells) == 20 and not any(float(c).is_integer() for c in cells)
        assert all(float(c).is_integer() for c in [*exact["histogram_positive"], *exact["histogram_negative"]])
        # the round's AUROC carries site-a's noise exactly when site-a's counts defined its AUROC
        assert (r["auroc_std"] > 0) == (dp["auroc"] is not None), (r, dp)
    assert summary["target_epsilon"] == 5.0 and "sample-level" in summary["privacy_guarantee"]
    assert set(summary["sites"]) == {"site-a", "site-b"}
    assert summary["sites"]["site-a"]["validation_metrics"] == "dp"
    assert summary["sites"]["site-b"]["validation_metrics"].startswith("exact")
    assert summary["sites"]["site-b"]["auroc"] is not None
    for name, site in summary["sites"].items():
        assert 0 < site["epsilon"] <= 5.0 and site["delta"] == 1e-5
        assert site["num_train"] == -(-train_count(sites / name) // 32) * 32  # rounded up to the batch size
        assert site["auroc"] is None or 0 <= site["auroc"] <= 1
        ledger = sites / ".fedclinic-state" / name / "privacy-ledger.jsonl"
        spends = [json.loads(line) for line in ledger.read_text().splitlines()]
        # every release recorded, DP metrics included (exact metrics spend nothing)
        assert [s["kind"] for s in spends] == (["train", "evaluate"] if name == "site-a" else ["train"]) * 2
        assert {s["run_id"] for s in spends} == {summary["run_id"]}  # the summary names the ledgers' run
        # a first run on this dataset: its lifetime ε is the run's, after the last evaluation too
        assert site["lifetime_epsilon"] == pytest.approx(site["epsilon"]) == pytest.approx(spends[-1]["run_epsilon"])
    assert summary["rounds"][-1]["max_epsilon"] == max(s["epsilon"] for s in summary["sites"].values())
    cfg = load_experiment(["rounds=2"])
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    rnd, state = load_checkpoint(run_dir / "global_model.pt")
    model.load_state_dict(state)  # strict: every key and shape of the real model
    assert rnd == 2 and any(not torch.equal(initial[k], state[k]) for k in initial)
    assert "train:" in (run_dir / "config.yaml").read_text() and "rounds: 2" in (run_dir / "config.yaml").read_text()


def test_run_without_a_data_root_says_what_to_do(tmp_path: Path) -> None:
    done = fedclinic("run", "rounds=1", cwd=tmp_path)
    assert done.returncode == 2 and "data.root is not set" in done.stdout
    done = fedclinic("run", f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert done.returncode == 2 and "is not a folder" in done.stdout
    done = fedclinic("run", "data.root=.", "privacy.target_epsilon=-1", cwd=tmp_path)
    assert done.returncode == 2 and "privacy.target_epsilon" in done.stdout


@pytest.mark.slow
def test_labs_only_images_only_and_broken_sites_train_beside_a_full_site(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    assert fedclinic("synth", "--sites", "3", "--patients", "150", "--image-size", "32", "--seed", "5",
                     "--only", "site-b=labs", "site-c=image", "--out", str(sites), cwd=tmp_path).returncode == 0
    assert not (sites / "site-b" / "manifest.csv").exists() and not (sites / "site-c" / "labs.csv").exists()
    release_exact_metrics(sites / "site-b")  # a defined AUROC in every round (tests/site_yaml.py)
    for bad in CORPUS:  # every non-fatal broken input, all at once, at the full site
        if bad.joins_the_combined_site:
            bad.mutate(sites / "site-a")
    done = fedclinic("run", f"data.root={sites}", "rounds=2", "train.batch_size=32",
                     f"output.root={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["sites"]) == {"site-a", "site-b", "site-c"}
    assert all(r["site_failures"] == 0 and r["sites_trained"] == 3 for r in summary["rounds"])


@pytest.mark.slow
def test_budgets_carry_over_between_runs_and_a_site_declines_rounds_that_would_overspend(tmp_path: Path) -> None:
    sites = tmp_path / "sites"
    assert fedclinic("synth", "--sites", "3", "--patients", "150", "--image-size", "32", "--seed", "8",
                     "--out", str(sites), cwd=tmp_path).returncode == 0
    policy = sites / "site-b" / "site.yaml"
    policy.write_text(policy.read_text().replace("lifetime_epsilon: 50.0", "lifetime_epsilon: 8.5"))
    for name in ("site-a", "site-c"):  # exact metrics: these two only need a defined AUROC
        release_exact_metrics(sites / name)
    common = ("run", f"data.root={sites}", "rounds=4", "train.batch_size=32", f"output.root={tmp_path / 'runs'}")
    summaries = []
    for target in (5, 8, 8):
        done = fedclinic(*common, f"privacy.target_epsilon={target}", cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        latest = max((tmp_path / "runs").iterdir(), key=lambda p: (p / "summary.json").stat().st_mtime)
        summaries.append(json.loads((latest / "summary.json").read_text()))
    one, two, three = summaries
    assert all("declined_rounds" not in site for site in one["sites"].values())
    # run 2 would take site-b past 8.5 at the requested noise: it is planned with more noise instead
    b = two["sites"]["site-b"]
    assert "declined_rounds" not in b and 8.0 <= b["lifetime_epsilon"] <= 8.5 and b["epsilon"] < 8.0
    # run 3 finds nothing useful left: site-b declines every round, the others go on (a site that
    # never replied successfully in a run is known by its node id only)
    (b,) = [site for name, site in three["sites"].items() if name not in ("site-a", "site-c")]
    assert b["declined_rounds"] == [1, 2, 3, 4] and "lifetime privacy budget" in b["decline_reason"]
    assert all("declined_rounds" not in three["sites"][s] for s in ("site-a", "site-c"))
    assert three["rounds"][-1]["sites_trained"] == 2 and three["rounds"][-1]["sites_declined"] == 1
    assert three["final_auroc"] is not None
    a1, a2 = one["sites"]["site-a"], two["sites"]["site-a"]  # the second run starts from the first's spend
    assert a2["lifetime_epsilon"] > a2["epsilon"] and a2["lifetime_epsilon"] > a1["lifetime_epsilon"]
