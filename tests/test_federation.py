"""A federation of three hospitals on loopback, started the way the README's deploy section does.

The coordinator (`fedclinic coordinator init|start`: SuperLink + nginx fence) and three sites
(`fedclinic site init|start`: each its own key made at the site, its own data, state folder and
processes) run the release app end to end with `fedclinic run --federation`. Then, on the same
federation: a site killed with SIGKILL mid-round, restarted with the same key; the refusals
(unregistered key, no TLS, another CA, the Control API through the site-facing address, an app
bundle no site approved: the `sec-fab-code-exec` case); and no listener beyond 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest

from launcher.child_processes import log_tail
from launcher.coordinator.folder import FLOWER_ENV, CoordinatorFolder
from launcher.release_app import release_fab
from privacy.ledger import LEDGER_FILE, Ledger, Spend
from storage.audit_log import read_events
from synth.hospitals import write_hospitals
from tests.coordinator_procs import (BIN, Started, fedclinic, free_port, https_status, init_coordinator,
                                     init_site, listening_addresses, process_tree, start_coordinator,
                                     start_site)
from tests.pki import make_pki
from tests.site_yaml import release_exact_metrics

pytestmark = pytest.mark.slow

SITES = ("site-a", "site-b", "site-c")
EXACT = "site-a"  # trusts the coordinator with exact metrics: every round's AUROC is defined (tests/site_yaml.py)
EVILAPP = Path(__file__).parent / "fixtures" / "evilapp"
FAST = ("train.local_epochs=1", "train.batch_size=32")


@dataclass
class Federation:
    root: Path
    folder: CoordinatorFolder
    fence_port: int
    coordinator: Started
    data: dict[str, Path]
    sites: dict[str, Started] = field(default_factory=dict)
    starts: int = 0

    def node(self, name: str) -> Path:
        return self.root / "nodes" / name / "node.toml"

    def state(self, name: str) -> Path:
        return self.root / "state" / name

    def start(self, name: str, *, wait_ready: bool = True) -> Started:
        self.starts += 1
        self.sites[name] = start_site(self.node(name), self.root / "out" / f"{name}.{self.starts}.out",
                                      wait_ready=wait_ready)
        return self.sites[name]

    def spends(self, name: str) -> list[Spend]:
        return Ledger(self.state(name) / LEDGER_FILE).spends()

    def site_files(self) -> dict[str, bytes]:
        """Every site's ledger files and site.yaml, byte for byte."""
        files = {}
        for name in SITES:
            for path in [*self.state(name).glob("privacy-ledger*"), self.data[name] / "site.yaml"]:
                files[f"{name}/{path.name}"] = path.read_bytes()
        return files

    def run(self, *overrides: str, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        try:
            return fedclinic("run", "--federation", str(self.folder.root), *overrides, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            raise AssertionError(f"`fedclinic run {' '.join(overrides)}` did not end within {timeout:.0f} s; its "
                                 f"output:\n{output[-3000:]}\n{self.site_logs()}") from None

    def site_logs(self, lines: int = 30) -> str:
        """The last `lines` of each site's runner.log and supernode.log, for failure messages."""
        parts = []
        for name in SITES:
            for log in ("runner.log", "supernode.log"):
                path = self.state(name) / "logs" / log
                parts.append(f"---- {name} {log} ({path}), last {lines} lines:\n{log_tail(path, lines)}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("federation")
    (root / "out").mkdir()
    data = {f.name: f for f in write_hospitals(root / "data", sites=3, patients=80, seed=11, image_size=32)}
    release_exact_metrics(data[EXACT])
    fence_port, _ = init_coordinator(root / "coordinator")
    coordinator = start_coordinator(root / "coordinator", root / "out" / "coordinator.out")
    fed = Federation(root, CoordinatorFolder.at(root / "coordinator"), fence_port, coordinator, data)
    try:
        for name in SITES:  # at the site: its own key; the central team registers the public key
            node = init_site(root / "nodes" / name, name, fence_port, fed.folder.ca_cert, data[name],
                             fed.state(name))
            done = fedclinic("coordinator", "register-site", name, str(node.parent / "keys" / f"{name}.pub"),
                             "--dir", str(fed.folder.root))
            assert done.returncode == 0, done.stdout + done.stderr
            fed.start(name)
        yield fed
    finally:
        for site in fed.sites.values():
            site.stop()
        coordinator.stop()


def test_three_hospitals_train_end_to_end_and_each_ledger_holds_what_the_summary_reports(
        federation: Federation) -> None:
    done = federation.run("rounds=2", *FAST)
    assert done.returncode == 0 and "final AUROC" in done.stdout, (done.stdout[-4000:] + done.stderr[-3000:]
                                                                   + federation.site_logs())
    run_dir = max(federation.folder.runs.iterdir(), key=lambda p: p.stat().st_mtime)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [r["sites_trained"] for r in summary["rounds"]] == [3, 3], federation.site_logs()
    assert set(summary["sites"]) == set(SITES)
    for name in SITES:
        spends = [s for s in federation.spends(name) if s.run_id == summary["run_id"]]
        # a DP metrics release is a spend; exact metrics are not
        assert {s.kind for s in spends} == ({"train"} if name == EXACT else {"train", "evaluate"}), f"{name}: {spends}"
        assert spends[-1].run_epsilon == pytest.approx(summary["sites"][name]["epsilon"], abs=1e-3)
        assert summary["sites"][name]["validation_metrics"].startswith("exact" if name == EXACT else "dp")
        assert [summary["participation"][r][name]["evaluate"]["status"] for r in ("1", "2")] == ["evaluated"] * 2
        joined = [e for e in read_events(federation.state(name) / "audit.jsonl").events if e["event"] == "run-joined"]
        assert joined[-1]["app_sha256"] == release_fab()[1]


def _newest_run(federation: Federation, after: set[Path]) -> Path | None:
    made = [p for p in federation.folder.runs.iterdir() if p not in after]
    return max(made, key=lambda p: p.stat().st_mtime) if made else None


def test_ctrl_c_stops_the_run_at_the_superlink_and_resume_completes_it_without_spending_twice(
        federation: Federation) -> None:
    before = set(federation.folder.runs.iterdir())
    with subprocess.Popen([str(BIN / "fedclinic"), "run", "--federation", str(federation.folder.root), "rounds=3",
                           *FAST], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **FLOWER_ENV}, start_new_session=True) as run:
        deadline, run_dir = time.monotonic() + 600, None
        while run_dir is None or json.loads((run_dir / "summary.json").read_text()).get("last_completed_round", 0) < 1:
            assert run.poll() is None and time.monotonic() < deadline, _output(run) + federation.site_logs()
            time.sleep(0.5)
            found = _newest_run(federation, before)
            run_dir = found if found is not None and (found / "summary.json").exists() else None
        run.send_signal(signal.SIGINT)
        output, _ = run.communicate(timeout=120)
    assert run.returncode == 130 and f"resume={run_dir}" in output and "Traceback" not in output, output[-4000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    done = federation.run(f"resume={run_dir}")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:] + federation.site_logs()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert len(summary["flower_run_ids"]) == 2
    for name in SITES:  # the interrupted round's repeated request was answered from the site's stored release
        spends = [(s.round, s.kind) for s in federation.spends(name) if s.run_id == summary["run_id"]]
        kinds = ("train",) if name == EXACT else ("train", "evaluate")
        assert sorted(spends) == sorted((r, k) for r in (1, 2, 3) for k in kinds), \
            (name, spends, federation.site_logs())


def _output(run: subprocess.Popen[str]) -> str:
    """What a `fedclinic run` started with Popen printed (it is stopped first if it still runs)."""
    if run.poll() is None:
        run.kill()
    return (run.communicate(timeout=60)[0] or "")[-4000:] + "\n"


def _acquired(log: Path) -> int:
    return log.read_text(errors="replace").count(" acquired") if log.exists() else 0


def test_a_site_killed_mid_round_is_named_the_round_ends_at_its_timeout_and_it_trains_again_after_restart(
        federation: Federation) -> None:
    runner_log = federation.state("site-c") / "logs" / "runner.log"
    before = _acquired(runner_log)
    with subprocess.Popen([str(BIN / "fedclinic"), "run", "--federation", str(federation.folder.root), "rounds=4",
                           "strategy.round_timeout=90", *FAST], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env={**os.environ, **FLOWER_ENV}) as run:
        # round 1 trains and evaluates at site-c (2 tasks); kill it once round 2's task has arrived
        deadline = time.monotonic() + 600
        while _acquired(runner_log) < before + 3:
            assert run.poll() is None and time.monotonic() < deadline, _output(run) + federation.site_logs()
            time.sleep(0.2)
        os.killpg(federation.sites["site-c"].process.pid, signal.SIGKILL)
        federation.sites["site-c"].process.wait(30)
        federation.start("site-c", wait_ready=False)  # the same key: the same node, back for a later round
        output, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, output[-5000:] + federation.site_logs()
    run_dir = max(federation.folder.runs.iterdir(), key=lambda p: p.stat().st_mtime)
    rounds = json.loads((run_dir / "summary.json").read_text())["rounds"]
    assert rounds[1]["sites_trained"] == 2 and "site-c" in rounds[1]["failed_sites"], (rounds[1],
                                                                                        federation.site_logs())
    assert "site-c" not in rounds[0]["failed_sites"], (rounds[0], federation.site_logs())
    # back online with the same key within the coordinator's minute of holding the old node, it is
    # sampled and trains again in a later round
    assert any(r["sites_trained"] == 3 for r in rounds[2:]), (rounds, federation.sites["site-c"].text()[-3000:],
                                                              federation.site_logs())
    assert "site-c" in output  # the console names the site that did not train


def test_an_unregistered_key_is_told_at_the_site_to_send_its_public_key(federation: Federation) -> None:
    node = init_site(federation.root / "nodes" / "site-x", "site-x", federation.fence_port,
                     federation.folder.ca_cert, federation.data["site-a"], federation.root / "state" / "site-x")
    done = fedclinic("site", "start", str(node), timeout=300)
    assert done.returncode != 0
    assert "not registered" in done.stdout and "site-x.pub" in done.stdout, done.stdout[-3000:]


def test_a_site_that_trusts_another_ca_is_told_the_certificate_is_not_signed_by_it(
        federation: Federation) -> None:
    other = make_pki(federation.root / "other-pki", "another CA")
    node = init_site(federation.root / "nodes" / "site-y", "site-y", federation.fence_port, other["ca.crt"],
                     federation.data["site-a"], federation.root / "state" / "site-y")
    done = fedclinic("site", "start", str(node), timeout=300)
    assert done.returncode != 0
    assert "not signed by" in done.stdout, done.stdout[-3000:]


def test_a_site_without_tls_never_joins(federation: Federation, tmp_path: Path) -> None:
    """Flower's own SuperNode with --insecure against the TLS-only fence: it fails, and never joins."""
    log = tmp_path / "insecure.log"
    with log.open("wb") as out:
        insecure = subprocess.run(
            [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{federation.fence_port}", "--insecure",
             "--host", "127.0.0.1", "--port", str(free_port()), "--max-retries", "1"],
            stdout=out, stderr=subprocess.STDOUT, timeout=300,
            env={**os.environ, **FLOWER_ENV, "FLWR_HOME": str(tmp_path / "home")})
    assert insecure.returncode != 0, log.read_text()[-3000:]
    listed = fedclinic("coordinator", "list-sites", "--dir", str(federation.folder.root)).stdout
    assert sum("online" in line for line in listed.splitlines()) <= len(SITES), listed


def _through_the_fence(federation: Federation, method: str, path: str, body: bytes | None) -> int:
    return https_status(federation.fence_port, federation.folder.ca_cert, method, path, body)


def _flwr_run_as(federation: Federation, address: str, app: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """`flwr run APP` by someone who holds only the public CA certificate and an address."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "x"\n[superlink.x]\naddress = "{address}"\n'
                                      f'root-certificates = "{federation.folder.ca_cert}"\n')
    return subprocess.run([str(BIN / "flwr"), "run", str(app), "x", "--stream"], capture_output=True, text=True,
                          timeout=600, cwd=home, env={**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home)})


def test_sec_fab_code_exec_the_attack_app_reaches_no_site_data_and_the_control_plane_is_fenced(
        federation: Federation, tmp_path: Path) -> None:
    """../shared/cases/sec-fab-code-exec with the deployment started by fedclinic's own commands."""
    for site in SITES:
        if federation.sites[site].process.poll() is not None:
            federation.start(site)
    before = federation.site_files()
    app = tmp_path / "evilapp"
    shutil.copytree(EVILAPP, app)
    # from the site network: the Control API is not there
    fenced = _flwr_run_as(federation, f"127.0.0.1:{federation.fence_port}", app, tmp_path / "outsider")
    assert fenced.returncode != 0
    # from the coordinator host itself: the run starts, and every site refuses the bundle
    inside = _flwr_run_as(federation, str(federation.folder.settings().superlink), app, tmp_path / "insider")
    output = fenced.stdout + fenced.stderr + inside.stdout + inside.stderr
    assert "[node" not in output and "patient_id" not in output and "labels.csv" not in output, output[-4000:]
    assert federation.site_files() == before, "a site's ledger or site.yaml changed"
    for site in SITES:
        refused = [e for e in read_events(federation.state(site) / "audit.jsonl").events
                   if e["event"] == "app-refused"]
        assert refused, f"{site} did not record the refused bundle\n{federation.site_logs()}"
    # the probe of the case: nothing but the Fleet API answers through the site-facing address
    acquire = AcquireTaskRequest(supported_task_types=["serverapp"]).SerializeToString()
    probe = {path: _through_the_fence(federation, method, path, body) for method, path, body in (
        ("POST", "/v1/control/list-runs", b""), ("POST", "/v1/runtime/acquire-task", acquire),
        ("GET", "/openapi.json", None))}
    assert set(probe.values()) <= {403, 404}, probe
    assert _through_the_fence(federation, "POST", "/v1/fleet/get-run", b"") == 401


def test_nothing_listens_beyond_loopback(federation: Federation) -> None:
    pids = process_tree(federation.coordinator.process.pid)
    for site in federation.sites.values():
        pids += process_tree(site.process.pid)
    addresses = listening_addresses(pids)
    assert addresses, "no listener found: the check itself is broken"
    assert all(address in ("127.0.0.1", "::1") for address, _ in addresses), addresses
