"""The site runs only code it approved (issue 10), with real Flower processes on 127.0.0.1.

A TLS SuperLink with SuperNode authentication, one synthetic hospital started with
`fedclinic site start` (flower-supernode --isolation process + the gated task runner), and
`flwr run` of (b) the release bundle, (a) the case's evil bundle, (c) the evil bundle after the
site approved its hash. Tests run in file order on one deployment (module fixture).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.runtime import RuntimeHttpClient

from client.node.settings import load_node_settings
from launcher.release_app import write_release_app
from pki import make_pki
from storage.audit_log import read_events
from synth.hospitals import write_hospitals

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
EVILAPP = Path(__file__).parent / "fixtures" / "evilapp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(path: Path, text: str, seconds: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        assert process.poll() is None, f"exited early:\n{path.read_text(errors='replace')[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in {path} after {seconds} s:\n{path.read_text(errors='replace')[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group this test started, SIGKILL it if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Deployment:
    tmp: Path
    node: Path
    data: Path
    state: Path
    admin_env: dict[str, str]
    site: subprocess.Popen[bytes]
    site_out: Path
    unregistered: subprocess.CompletedProcess[str]

    def fedclinic(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True,
                              timeout=180, cwd=self.tmp)

    def flwr_run(self, app: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "flwr"), "run", str(app), "local", "--stream", *extra], env=self.admin_env,
                              capture_output=True, text=True, timeout=400, cwd=self.tmp)

    def audit(self, event: str) -> list[dict[str, object]]:
        return [e for e in read_events(self.state / "audit.jsonl").events if e["event"] == event]

    def site_files(self) -> dict[str, bytes]:
        """The privacy ledger, its watermark and site.yaml, as they are now."""
        files = [*self.state.glob("privacy-ledger*"), self.data / "site.yaml"]
        return {p.name: p.read_bytes() for p in files if p.is_file()}

    def children(self) -> list[int]:
        return [int(p) for p in Path(f"/proc/{self.site.pid}/task/{self.site.pid}/children").read_text().split()]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, ledger_mark_store: Path) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("gate")
    pki = make_pki(tmp / "pki")
    (data,) = write_hospitals(tmp / "sites", sites=1, patients=60, seed=5)
    port = free_port()
    env = {**os.environ, **FLOWER_ENV}
    link_log = tmp / "superlink.log"
    with link_log.open("wb") as out:
        superlink = subprocess.Popen(
            [str(BIN / "flower-superlink"), "--ssl-ca-certfile", str(pki["ca.crt"]), "--ssl-certfile",
             str(pki["server.pem"]), "--ssl-keyfile", str(pki["server.key"]), "--enable-supernode-auth",
             "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port),
             "--database", str(tmp / "superlink.db")],
            env={**env, "FLWR_HOME": str(tmp / "home-link")}, stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp, start_new_session=True)
    site: subprocess.Popen[bytes] | None = None
    try:
        wait_for(link_log, "Uvicorn running on", 120, superlink)
        (tmp / "home-admin").mkdir()
        (tmp / "home-admin" / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n[superlink.local]\naddress = "127.0.0.1:{port}"\n'
            f'root-certificates = "{pki["ca.crt"]}"\n')
        admin_env = {**env, "FLWR_HOME": str(tmp / "home-admin")}
        dep = Deployment(tmp, tmp / "node", data, tmp / "state", admin_env, superlink, tmp / "site.out",
                         subprocess.CompletedProcess([], 0))
        made = dep.fedclinic("site", "init", str(dep.node), "--name", "site-a", "--coordinator", f"127.0.0.1:{port}",
                             "--ca", str(pki["ca.crt"]), "--data", str(data), "--state", str(dep.state),
                             "--runtime-port", str(free_port()))
        assert made.returncode == 0, made.stdout + made.stderr
        dep.unregistered = dep.fedclinic("site", "start", str(dep.node))
        registered = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(dep.node / "keys" / "site-a.pub"),
                                     "local", "--name", "site-a"], env=admin_env, capture_output=True, text=True,
                                    timeout=120, cwd=tmp)
        assert "registered successfully" in registered.stdout, registered.stdout + registered.stderr
        with dep.site_out.open("wb") as out:
            site = subprocess.Popen([sys.executable, "-m", "launcher.cli", "site", "start",
                                     str(dep.node / "node.toml")],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
        dep.site = site
        wait_for(dep.site_out, "online at the coordinator", 180, site)
        wait_for(dep.site_out, "gated task runner ready", 180, site)
        yield dep
    finally:
        if site is not None:
            stop(site)
        stop(superlink)


def test_an_unregistered_site_is_told_to_send_its_public_key(deployment: Deployment) -> None:
    done = deployment.unregistered
    assert done.returncode == 1, done.stdout + done.stderr
    assert "this site's key is not registered at the coordinator: send site-a and the public key in" in done.stdout
    assert str(deployment.node / "keys" / "site-a.pub") in done.stdout
    (refused,) = deployment.audit("connection-refused")
    assert refused["reason"] == "activation-refused"


def test_a_site_whose_ca_did_not_sign_the_coordinator_says_so(deployment: Deployment) -> None:
    other = make_pki(deployment.tmp / "other-pki", "another CA")
    node, address = deployment.tmp / "node-other-ca", load_node_settings(deployment.node).coordinator
    assert deployment.fedclinic("site", "init", str(node), "--name", "site-x", "--coordinator", address, "--ca",
                                str(other["ca.crt"]), "--data", str(deployment.data), "--runtime-port",
                                str(free_port())).returncode == 0
    (node / "approved-apps.txt").write_text("# nothing approved\n")
    done = deployment.fedclinic("site", "start", str(node))
    assert f"is not on the allow-list {node / 'approved-apps.txt'}: runs of it will be refused" in done.stdout
    assert done.returncode == 1 and "the supernode exited" in done.stdout, done.stdout + done.stderr
    assert f"the coordinator's certificate is not signed by {node / 'ca.crt'}" in done.stdout
    events = read_events(node / "state" / "audit.jsonl").events
    assert [e["reason"] for e in events if e["event"] == "connection-refused"] == ["tls-verify-failed"]


def test_the_release_bundle_trains_and_the_site_records_the_run(deployment: Deployment) -> None:
    digest = write_release_app(deployment.tmp / "release")
    done = deployment.flwr_run(deployment.tmp / "release", "-c", 'overrides="rounds=1 train.local_epochs=1 '
                               f'train.batch_size=32 output.root={deployment.tmp / "runs"}"')
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (deployment.tmp / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"][0]["sites_trained"] == 1 and summary["sites"]["site-a"]["epsilon"] > 0
    run = str(summary["flower_run_ids"][0])
    spends = [json.loads(line) for line in (deployment.state / "privacy-ledger.jsonl").read_text().splitlines()]
    assert "train" in [s["kind"] for s in spends if s["run_id"] == summary["run_id"]]  # recorded at the site
    assert [e["app_sha256"] for e in deployment.audit("run-joined") if e["run"] == run] == [digest]
    tasks = {e["phase"]: e for e in deployment.audit("task") if e["run"] == run}
    assert tasks["train"]["outcome"] == "replied" and tasks["train"]["round"] == 1
    assert float(tasks["train"]["epsilon"]) > 0 and "evaluate" in tasks  # type: ignore[arg-type]
    assert f"task done: run {run} train round 1: replied" in deployment.site_out.read_text()


def evil_copy(deployment: Deployment, name: str) -> tuple[Path, str]:
    app = deployment.tmp / name
    shutil.copytree(EVILAPP, app)
    return app, hashlib.sha256(build_fab_from_disk(app)).hexdigest()


def assert_nothing_left_the_site(deployment: Deployment, output: str) -> None:
    patients = pd.read_csv(deployment.data / "labels.csv", dtype=str)["patient_id"]
    assert "[node" not in output and "patient_id" not in output and "site.yaml" not in output
    assert not [p for p in patients if p in output]
    assert str(deployment.data) not in output and str(deployment.state) not in output


def test_an_unapproved_bundle_is_refused_before_any_of_its_code_runs(deployment: Deployment) -> None:
    before = deployment.site_files()
    app, digest = evil_copy(deployment, "evilapp-a")
    done = deployment.flwr_run(app)
    output = done.stdout + done.stderr
    assert "Error(code=606, reason='app bundle not approved by the site')" in output, output[-3000:]
    assert_nothing_left_the_site(deployment, output)
    assert deployment.site_files() == before  # ledger and site.yaml untouched (not deleted)
    assert digest in [e["app_sha256"] for e in deployment.audit("app-refused")]
    runner_log = (deployment.state / "logs" / "runner.log").read_text()
    assert f"fedclinic site approve {deployment.node / 'node.toml'} {digest}" in runner_log
    assert f"REFUSED run" in deployment.site_out.read_text()  # on the site's console too


def test_an_approved_foreign_bundle_still_runs_only_the_installed_clientapp(deployment: Deployment) -> None:
    before, runner = deployment.site_files(), deployment.children()
    app, digest = evil_copy(deployment, "evilapp-c")
    approved = deployment.fedclinic("site", "approve", str(deployment.node), digest, "--note", "test: evil app")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    for _ in range(2):  # the installed ClientApp has no `query` handler: it raises; the runner goes on
        done = deployment.flwr_run(app)
        output = done.stdout + done.stderr
        assert "Error(code=603, reason='internal error at the site; see the site log')" in output, output[-3000:]
        assert_nothing_left_the_site(deployment, output)
    assert deployment.site_files() == before
    assert not (deployment.state / "flwr-home" / "apps").exists()  # no bundle was ever installed at the site
    assert deployment.children() == runner and len(deployment.audit("runner-started")) == 1
    assert digest in [e["app_sha256"] for e in deployment.audit("run-joined")]
    assert [e["error_code"] for e in deployment.audit("task") if e["phase"] == "query"] == [603, 603]
    assert deployment.audit("app-approved")[-1]["app_sha256"] == digest


def test_only_the_sites_runner_may_take_tasks_and_only_from_loopback(deployment: Deployment) -> None:
    port = load_node_settings(deployment.node).runtime_port
    listening = {line.split()[1] for table in ("/proc/net/tcp", "/proc/net/tcp6")
                 for line in Path(table).read_text().splitlines()[1:] if line.split()[3] == "0A"}
    assert {a for a in listening if a.endswith(f":{port:04X}")} == {f"0100007F:{port:04X}"}
    stranger = RuntimeHttpClient.from_server_address(server_address=f"127.0.0.1:{port}", insecure=True,
                                                     root_certificates=None, interceptors=[])
    with pytest.raises(httpx.HTTPStatusError) as refused:  # no runtime secret: no task
        stranger.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    assert refused.value.response.status_code == 401


def test_a_supernode_that_dies_while_running_is_started_again_not_the_end_of_the_site(
        deployment: Deployment) -> None:
    """Flower's SuperNode exits on some coordinator answers it cannot handle (a bundle that is not a
    zip, an invalid message type): the supervisor starts it again instead of stopping the site."""
    supernode = deployment.children()[0]
    assert "flower-supernode" in Path(f"/proc/{supernode}/cmdline").read_text()
    online_before = deployment.site_out.read_text().count("online at the coordinator")
    os.kill(supernode, signal.SIGKILL)
    deadline = time.monotonic() + 240
    while deployment.site_out.read_text().count("online at the coordinator") == online_before:
        assert deployment.site.poll() is None, deployment.site_out.read_text()[-3000:]
        assert time.monotonic() < deadline, deployment.site_out.read_text()[-3000:]
        time.sleep(1)
    restarted = deployment.audit("process-restarted")
    assert restarted[-1]["process"] == "supernode" and restarted[-1]["exit_code"] == -signal.SIGKILL


def test_a_killed_supervisor_takes_its_supernode_and_runner_with_it(deployment: Deployment) -> None:
    children = deployment.children()
    assert len(children) == 2
    os.kill(deployment.site.pid, signal.SIGKILL)
    deployment.site.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for init to reap it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
