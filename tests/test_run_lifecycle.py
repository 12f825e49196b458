"""`fedclinic run` end to end, as the central team uses it: each strategy, the exit statuses, a
site that cannot train, a deadline nobody meets, Ctrl-C, and resume after the coordinator was
killed. Real Flower simulation, real DP training, real site ledgers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.child_processes import descendants
from server.run_folder import load_checkpoint
from site_yaml import release_exact_metrics

SMALL = ("train.batch_size=32", "privacy.target_epsilon=5")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedtrimmedavg", "fedmedian", "multikrum")


def fedclinic(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lifecycle")
    done = fedclinic("synth", "--sites", "2", "--patients", "150", "--image-size", "32", "--seed", "3",
                     "--out", str(root / "sites"), cwd=root)
    assert done.returncode == 0, done.stderr
    release_exact_metrics(root / "sites" / "site-b")  # a defined AUROC in every round (tests/site_yaml.py)
    return root / "sites"


def _fresh_sites(two_sites: Path, tmp_path: Path) -> Path:
    """A private copy (own ledgers) of the two sites."""
    import shutil
    sites = tmp_path / "sites"
    shutil.copytree(two_sites, sites, ignore=shutil.ignore_patterns(".fedclinic-state"))
    return sites


def _summary(runs: Path) -> tuple[Path, dict]:
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def _spends(sites: Path, site: str, run_id: str) -> list[dict]:
    ledger = sites / ".fedclinic-state" / site / "privacy-ledger.jsonl"
    if not ledger.exists():
        return []
    return [s for s in map(json.loads, ledger.read_text().splitlines()) if s["run_id"] == run_id]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_runs_two_sites_two_rounds(two_sites: Path, tmp_path: Path, strategy: str) -> None:
    sites = _fresh_sites(two_sites, tmp_path)
    done = fedclinic("run", f"data.root={sites}", "rounds=2", f"strategy={strategy}", *SMALL,
                     f"output.root={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir, summary = _summary(tmp_path / "runs")
    assert summary["status"] == "completed" and summary["strategy"] == strategy
    assert [r["aggregated"] for r in summary["rounds"]] == [True, True]
    for rnd in ("1", "2"):
        assert {s: p["train"]["status"] for s, p in summary["participation"][rnd].items()} == {
            "site-a": "trained", "site-b": "trained"}
    assert load_checkpoint(run_dir / "global_model.pt")[0] == 2
    for site in ("site-a", "site-b"):  # the sites' ledgers know the run by the run folder's name
        spends = _spends(sites, site, summary["run_id"])
        assert sorted(s["round"] for s in spends if s["kind"] == "train") == [1, 2]
        assert [summary["participation"][r][site]["evaluate"]["status"] for r in ("1", "2")] == ["evaluated"] * 2
    assert summary["sites"]["site-a"]["validation_metrics"] == "dp"  # site-b: exact (the fixture)
    if strategy == "fedadam":  # the server optimiser's moments are in the resume point
        import torch
        state = torch.load(run_dir / "resume.pt", weights_only=True)["strategy_state"]
        assert any(k.startswith("m_t/") for k in state) and any(k.startswith("v_t/") for k in state)


def test_a_site_that_cannot_train_stops_the_run_before_ray_with_its_reason(two_sites: Path, tmp_path: Path) -> None:
    sites = _fresh_sites(two_sites, tmp_path)
    for name in ("manifest.csv", "labs.csv", "notes.csv"):
        (sites / "site-b" / name).unlink()
    done = fedclinic("run", f"data.root={sites}", "rounds=1", *SMALL, f"output.root={tmp_path / 'runs'}",
                     cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    assert "site-b" in done.stdout and "cannot train" in done.stdout and "site check" in done.stdout
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_min_sites_never_online_skips_rounds_within_the_deadline_and_fails(two_sites: Path, tmp_path: Path) -> None:
    sites = _fresh_sites(two_sites, tmp_path)
    done = fedclinic("run", f"data.root={sites}", "rounds=2", "strategy.min_sites=3", "strategy.round_timeout=2",
                     *SMALL, f"output.root={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:]
    run_dir, summary = _summary(tmp_path / "runs")
    assert summary["status"] == "failed" and "no round aggregated" in summary["reason"]
    assert all(not r["aggregated"] and "strategy.min_sites is 3" in r["skipped"] for r in summary["rounds"])
    assert not (run_dir / "global_model.pt").exists()  # no untrained model labelled as a round
    assert _spends(sites, "site-a", summary["run_id"]) == []  # nobody was asked, nothing spent


@pytest.mark.slow
def test_every_site_declining_for_budget_stops_early(two_sites: Path, tmp_path: Path) -> None:
    sites = _fresh_sites(two_sites, tmp_path)
    done = fedclinic("run", f"data.root={sites}", "rounds=3", "train.batch_size=32", "privacy.target_epsilon=0.001",
                     f"output.root={tmp_path / 'runs'}", cwd=tmp_path)
    assert done.returncode == 3, done.stdout[-3000:]
    _, summary = _summary(tmp_path / "runs")
    assert summary["status"] == "budget_exhausted" and "privacy report" in summary["reason"]
    assert [r["round"] for r in summary["rounds"]] == [1]  # stopped early, not 3 empty rounds
    assert {p["train"]["status"] for p in summary["participation"]["1"].values()} == {"declined"}


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_round(runs: Path, number: int, process: subprocess.Popen[str]) -> Path:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        for summary in runs.glob("*/summary.json"):
            try:
                if json.loads(summary.read_text()).get("last_completed_round", 0) >= number:
                    return summary.parent
            except ValueError:
                pass
        time.sleep(0.5)
    raise AssertionError(f"round {number} never completed: {process.communicate()[0][-3000:]}")


def _kill_tree(pid: int, pids: list[int]) -> None:
    for p in [pid, *pids]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_ctrl_c_stops_once_marks_the_run_interrupted_and_leaves_no_process(two_sites: Path, tmp_path: Path) -> None:
    sites = _fresh_sites(two_sites, tmp_path)
    run = _start(["run", f"data.root={sites}", "rounds=3", *SMALL, f"output.root={tmp_path / 'runs'}"], tmp_path)
    run_dir = _wait_for_round(tmp_path / "runs", 1, run)
    tree = descendants(run.pid)
    try:
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=60)
    finally:
        _kill_tree(run.pid, tree)
    assert run.returncode == 130, out[-3000:]
    assert "Traceback" not in out and out.count("stopping the run") == 1
    assert f"resume={run_dir}" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["last_completed_round"] >= 1
    time.sleep(1)
    alive = [p for p in tree if Path(f"/proc/{p}").exists()
             and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert alive == [], "processes of the stopped run are still running"


@pytest.mark.slow
def test_resume_after_the_coordinator_is_killed_covers_every_round_once(two_sites: Path, tmp_path: Path) -> None:
    sites = _fresh_sites(two_sites, tmp_path)
    run = _start(["run", f"data.root={sites}", "rounds=3", *SMALL, f"output.root={tmp_path / 'runs'}"], tmp_path)
    run_dir = _wait_for_round(tmp_path / "runs", 1, run)
    _kill_tree(run.pid, descendants(run.pid))  # SIGKILL: no handler runs, nothing is marked
    run.communicate(timeout=60)
    listed = fedclinic("runs", str(tmp_path / "runs"), cwd=tmp_path)
    assert "coordinator died" in listed.stdout, listed.stdout  # "running" in its summary, but nobody runs it
    done = fedclinic("run", f"resume={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert len(summary["flower_run_ids"]) == 2 and load_checkpoint(run_dir / "global_model.pt")[0] == 3
    for site in ("site-a", "site-b"):
        spends = _spends(sites, site, summary["run_id"])
        kinds = [(s["round"], s["kind"]) for s in spends]
        # each round trained and evaluated once: a round the kill cut short was re-sent the same
        # request and answered from the site's stored reply (or, never released, computed again
        # under its one recorded spend); so the run ε is an uninterrupted run's
        released = ("train", "evaluate") if site == "site-a" else ("train",)  # site-b's exact metrics spend nothing
        assert sorted(kinds) == sorted({(r, k) for r in (1, 2, 3) for k in released})
        assert len({s["noise_multiplier"] for s in spends if s["kind"] == "train"}) == 1
        assert summary["sites"][site]["epsilon"] == pytest.approx(spends[-1]["run_epsilon"], abs=1e-3)
        assert [summary["participation"][r][site]["evaluate"]["status"] for r in ("1", "2", "3")] == ["evaluated"] * 3


def test_a_run_folder_is_run_by_one_process_at_a_time(tmp_path: Path) -> None:
    from server.run_state import RunFolderBusy, hold_run_lock, run_is_live
    assert not run_is_live(tmp_path)
    lock = hold_run_lock(tmp_path)
    assert run_is_live(tmp_path)
    with pytest.raises(RunFolderBusy):
        hold_run_lock(tmp_path)
    lock.close()
    assert not run_is_live(tmp_path)
