"""The fence, for real: `coordinator init` + `coordinator start` (flower-superlink + nginx) on 127.0.0.1.

Through the site-facing address only the Fleet API passes (a real SuperNode activates through it
with its signed headers); the Control and Runtime APIs, the docs and everything else are refused,
as `sec-fab-code-exec/control_api_probe.py` probes them. The Control API still answers on the
loopback SuperLink port, where `register-site` and `list-sites` use it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.superlink.routers.fleet.router import router as fleet_router

from launcher.coordinator.folder import CoordinatorFolder
from launcher.coordinator.fence import fence_command, render_fence, template_path
from launcher.release_app import release_fab
from storage.audit_log import read_events
from tests.coordinator_procs import (Started, alive, fedclinic, https_status, init_coordinator,
                                     listening_addresses, process_tree, site_key, start_coordinator,
                                     start_supernode)
from tests.site_yaml import release_exact_metrics

NGINX_NEEDED = "the fence needs nginx (Debian: apt-get install -y nginx)"


@dataclass
class Coordinator:
    folder: CoordinatorFolder
    fence_port: int
    superlink_port: int
    process: Started


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists(), NGINX_NEEDED
    root = tmp_path_factory.mktemp("coordinator")
    fence_port, superlink_port = init_coordinator(root / "coord")
    started = start_coordinator(root / "coord", root / "coordinator.out")
    tree = process_tree(started.process.pid)
    yield Coordinator(CoordinatorFolder.at(root / "coord"), fence_port, superlink_port, started)
    assert started.stop() == 0, started.text()
    assert not any(alive(p) for p in tree[1:]), "children left running"
    assert not (root / "coord" / "state" / "coordinator.pid").exists()
    assert read_events(root / "coord" / "audit.jsonl").events[-1]["event"] == "coordinator-stopped"


ACQUIRE = AcquireTaskRequest(supported_task_types=["serverapp"]).SerializeToString()


@pytest.mark.slow
def test_only_the_fleet_api_passes_the_fence(coordinator: Coordinator) -> None:
    ca, port = coordinator.folder.ca_cert, coordinator.fence_port
    refused = {path: https_status(port, ca, method, path, body) for method, path, body in (
        ("POST", "/v1/control/list-runs", b""), ("POST", "/v1/control/start-run", b""),
        ("POST", "/v1/control/register-node", b""), ("POST", "/v1/runtime/acquire-task", ACQUIRE),
        ("GET", "/openapi.json", None), ("GET", "/docs", None), ("GET", "/", None),
        ("POST", "/v1/fleet/..%2fcontrol/list-runs", b""), ("GET", "/v1/fleet/get-run", None),
        ("POST", "/v1/fleet/get-run%0A", b""))}  # a newline never reaches the SuperLink's request line
    assert all(status in (403, 404) for status in refused.values()), refused
    assert refused["/v1/control/list-runs"] == 403 and refused["/v1/runtime/acquire-task"] == 403
    # Flower's own answer without a node key: the request reached the SuperLink through the fence
    assert https_status(port, ca, "POST", "/v1/fleet/get-run") == 401
    # a path that nginx normalises into the Fleet API is forwarded as the normalised path only
    assert https_status(port, ca, "POST", "/v1/control/list-runs/../../fleet/get-run") == 401
    # the same calls straight to the loopback SuperLink succeed: the fence is what refuses them
    assert https_status(coordinator.superlink_port, ca, "POST", "/v1/control/list-runs") == 200


@pytest.fixture(scope="module")
def site_a(coordinator: Coordinator, small_sites: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Started]:
    """site-a registered with `register-site` and its SuperNode connected through the fence."""
    work = tmp_path_factory.mktemp("site-a")
    key, public = site_key(work / "keys", "site-a")
    folder = str(coordinator.folder.root)
    done = fedclinic("coordinator", "register-site", "site-a", str(public), "--dir", folder)
    assert done.returncode == 0 and "registered site site-a as node" in done.stdout, done.stdout + done.stderr
    # exact validation metrics (this site trusts the coordinator): ~24 held-out patients give a DP
    # release too noisy to define an AUROC, and a run with no defined evaluation ends `failed`
    policy = work / "site.yaml"
    shutil.copyfile(small_sites / "site-a" / "site.yaml", policy)
    release_exact_metrics(work)
    node = (f'data-path="{small_sites / "site-a"}" site-name="site-a" state-dir="{work / "state"}" '
            f'site-config="{policy}"')
    supernode = start_supernode(f"127.0.0.1:{coordinator.fence_port}", coordinator.folder.ca_cert, key,
                                work / "home", work / "supernode.log", node)
    yield supernode
    supernode.stop(signal.SIGTERM, 30)


def _wait_for(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


def _online(coordinator: Coordinator, site: str) -> bool:
    listed = fedclinic("coordinator", "list-sites", "--dir", str(coordinator.folder.root))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return any(site in line and "online" in line for line in listed.stdout.splitlines())


@pytest.mark.slow
def test_a_registered_supernode_comes_online_through_the_fence_and_an_unknown_key_is_refused(
        coordinator: Coordinator, site_a: Started, tmp_path: Path) -> None:
    assert _wait_for(lambda: _online(coordinator, "site-a"), 90), site_a.text()
    intruder_key, _ = site_key(tmp_path / "keys", "intruder")
    intruder = start_supernode(f"127.0.0.1:{coordinator.fence_port}", coordinator.folder.ca_cert, intruder_key,
                               tmp_path / "home", tmp_path / "intruder.log", extra=("--max-retries", "1"))
    try:
        assert intruder.process.wait(120) != 0
    finally:
        intruder.stop(signal.SIGTERM, 30)
    assert "Failed to activate SuperNode" in intruder.text()
    events = read_events(coordinator.folder.audit_log).events
    assert [e["name"] for e in events if e["event"] == "site-registered"] == ["site-a"]


@pytest.mark.slow
def test_a_federation_run_submits_the_bundle_sites_approve_and_audits_each_round(
        coordinator: Coordinator, site_a: Started) -> None:
    assert _wait_for(lambda: _online(coordinator, "site-a"), 90), site_a.text()
    done = fedclinic("run", "--federation", str(coordinator.folder.root), "rounds=1", "train.local_epochs=1",
                     timeout=900)
    assert done.returncode == 0 and "final AUROC" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    events = read_events(coordinator.folder.audit_log).events
    kinds = [e["event"] for e in events]
    submitted, started = events[kinds.index("run-submitted")], events[kinds.index("run-started")]
    assert submitted["app_sha256"] == release_fab()[1] == started["app_sha256"]
    assert "strategy.round_timeout=600" in submitted["overrides"]  # type: ignore[operator]
    trained = events[kinds.index("round-trained")]
    assert trained["trained"] == ["site-a"] and trained["declined"] == {} and trained["failed"] == {}
    assert kinds.index("round-evaluated") < kinds.index("run-finished")
    run_dir = coordinator.folder.runs / str(submitted["run_folder"])
    assert (run_dir / "summary.json").is_file() and (run_dir / "global_model.pt").is_file()


@pytest.mark.slow
def test_nothing_listens_beyond_loopback(coordinator: Coordinator, site_a: Started) -> None:
    addresses = listening_addresses(process_tree(coordinator.process.process.pid))
    ports = {port for _, port in addresses}
    assert {coordinator.fence_port, coordinator.superlink_port} <= ports, addresses
    assert all(address in ("127.0.0.1", "::1") for address, _ in addresses), addresses


@pytest.mark.slow
def test_a_second_start_of_the_same_folder_is_refused(coordinator: Coordinator) -> None:
    done = fedclinic("coordinator", "start", str(coordinator.folder.root), timeout=120)
    assert done.returncode != 0 and "running already" in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_when_a_child_dies_the_supervisor_stops_the_other_and_names_it(tmp_path: Path) -> None:
    init_coordinator(tmp_path / "coord")
    started = start_coordinator(tmp_path / "coord", tmp_path / "coordinator.out")
    tree = process_tree(started.process.pid)
    nginx = next(p for p in tree if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"nginx: master"))
    os.kill(nginx, signal.SIGKILL)
    assert started.process.wait(60) == 1
    assert "nginx (fence) exited" in started.text() and "fence-error.log" in started.text()
    assert not any(alive(p) for p in tree[1:]), "children left running"


def test_the_fence_passes_exactly_flowers_fleet_routes_and_nginx_accepts_the_rendered_file(tmp_path: Path) -> None:
    text = template_path().read_text()
    allowed = re.search(r"location ~ \^/v1/fleet/\(([a-z|-]+)\)\\z", text)
    assert allowed is not None  # \z, not $: `$` also matches before a trailing newline
    assert {f"/v1/fleet/{name}" for name in allowed.group(1).split("|")} == {r.path for r in fleet_router.routes}
    assert shutil.which("nginx") or Path("/usr/sbin/nginx").exists(), NGINX_NEEDED
    init_coordinator(tmp_path / "coord")
    folder = CoordinatorFolder.at(tmp_path / "coord")
    conf = render_fence(folder, folder.settings())
    check = subprocess.run(fence_command(folder, conf, test=True), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "@@" not in conf.read_text() and str(folder.server_key) in conf.read_text()
