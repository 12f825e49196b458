"""What the coordinator records and submits: the ServerApp's per-round audit events, the overrides of
`fedclinic run --federation`, the site key checks and `coordinator audit`."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from configs.load import load_experiment
from configs.parse import ConfigError
from launcher.cli import main
from launcher.coordinator.folder import CoordinatorFolder, init_folder
from launcher.coordinator.sites import check_site_name, read_site_key
from launcher.coordinator.submit import run_overrides
from server.audit_events import AuditedRecorder, run_recorder
from server.evaluation import SiteEvaluation
from server.recorder import RunRecorder, SiteTraining
from storage.audit_log import append_event, read_events
from tests.coordinator_procs import site_key


@pytest.fixture
def folder(tmp_path: Path) -> CoordinatorFolder:
    coordinator = CoordinatorFolder.at(tmp_path / "coord")
    init_folder(coordinator, ["coord.example.org"], "127.0.0.1:19092", 19093)
    return coordinator


@dataclass(frozen=True)
class _Run:
    fab_hash: str


@dataclass(frozen=True)
class _Grid:
    run: _Run


def test_the_serverapp_records_who_trained_declined_failed_and_evaluated_per_round(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    cfg = load_experiment(["rounds=2", f"output.audit_log={log}"])
    recorder = run_recorder(cfg, tmp_path / "runs" / "r1", 77, _Grid(_Run("ab" * 32)))
    assert isinstance(recorder, AuditedRecorder)
    recorder.names[12] = "site-b"
    recorder.rejected(1, "site-c", "non-finite values")
    recorder.trained(1, [SiteTraining("site-a", 120, 1.5, 1e-5, 1.5)],
                     failed={"site-b": "error 603", "site-c": "no reply"}, declined={12: 701})
    recorder.evaluated(1, [SiteEvaluation("site-a", 0.7, 0.5, 40, 0.1, True, 0.01, 1.6)], failed={})
    events = read_events(log).events
    assert [e["event"] for e in events] == ["run-started", "round-trained", "round-evaluated"]
    assert events[0]["app_sha256"] == "ab" * 32 and events[0]["flower_run_id"] == "77"
    assert events[0]["run_folder"] == "r1" and events[0]["rounds"] == 2
    trained = events[1]
    assert trained["trained"] == ["site-a"] and trained["failed"] == {"site-b": "error 603", "site-c": "no reply"} and trained["round"] == 1
    assert list(trained["declined"]) == ["site-b"]  # type: ignore[call-overload]
    assert trained["rejected"] == {"site-c": "non-finite values"}
    assert events[2]["evaluated"] == ["site-a"] and events[2]["auroc"] == pytest.approx(0.7)


def test_without_an_audit_log_the_serverapp_writes_nothing(tmp_path: Path) -> None:
    recorder = run_recorder(load_experiment(["rounds=1"]), tmp_path / "r1", 1, _Grid(_Run("")))
    assert type(recorder) is RunRecorder


def test_federation_overrides_name_the_run_folder_the_audit_log_and_the_round_timeout(
        folder: CoordinatorFolder) -> None:
    run_dir = folder.runs / "r1"
    final = run_overrides(folder, ["rounds=2"], run_dir)
    assert final == ["strategy.round_timeout=600", "rounds=2", f"output.run_dir={run_dir}",
                     f"output.audit_log={folder.audit_log}"]
    cfg = load_experiment(final)
    assert cfg.strategy.round_timeout == 600 and cfg.output.audit_log == str(folder.audit_log)
    assert run_overrides(folder, ["strategy.round_timeout=30"], run_dir)[0] == "strategy.round_timeout=30"


@pytest.mark.parametrize(("override", "error"), [
    ("output.run_dir=/elsewhere", "output.run_dir: set by `fedclinic run --federation`"),
    ("output.audit_log=/tmp/x", "output.audit_log: set by"),
    ("strategy.round_timeout=100000", "strategy.round_timeout: must be in [1, 86400]"),
    ("rounds=0", "rounds: must be in"),
])
def test_federation_overrides_refused_before_anything_is_submitted(
        folder: CoordinatorFolder, capsys: pytest.CaptureFixture[str], override: str, error: str) -> None:
    with pytest.raises((ValueError, ConfigError)) as caught:
        run_overrides(folder, [override], folder.runs / "r1")
    assert error in str(caught.value)
    assert main(["run", "--federation", str(folder.root), override]) == 2
    assert error in capsys.readouterr().out.replace("\n", "")
    assert not any(folder.runs.iterdir()) and not folder.audit_log.exists()


def test_site_keys_must_be_openssh_ecdsa_public_keys(tmp_path: Path) -> None:
    private, public = site_key(tmp_path, "site-a")
    key = read_site_key(public)
    assert key.line.startswith("ecdsa-sha2-nistp384 ") and key.fingerprint.startswith("SHA256:")
    done = subprocess.run(["ssh-keygen", "-lf", str(public)], capture_output=True, text=True, check=False)
    if done.returncode == 0:  # OpenSSH's own fingerprint, where ssh-keygen is installed
        assert done.stdout.split()[1] == key.fingerprint
    assert key.public_key_sha256 == hashlib.sha256(key.line.split()[1].encode()).hexdigest()  # as the site logs it
    with pytest.raises(ValueError, match="never the private key"):
        read_site_key(private)
    (tmp_path / "ed.pub").write_text("ssh-ed25519 "
                                     "AAAAC3NzaC1lZDI1NTE5AAAAIHhJ4Y2mKeqTO5mDq7uDqXHnLzpu3OzGI1Czb0y8aMJQ x\n")
    with pytest.raises(ValueError, match="needs an ECDSA key"):
        read_site_key(tmp_path / "ed.pub")
    with pytest.raises(ValueError, match="cannot read"):
        read_site_key(tmp_path / "missing.pub")
    for bad in ("", "site a", "-a", "a/b", "x" * 64, "site.a"):
        with pytest.raises(ValueError, match="site name"):
            check_site_name(bad)
    assert check_site_name("St_Mary-2") == "St_Mary-2"


def test_audit_prints_every_event_readably(folder: CoordinatorFolder, capsys: pytest.CaptureFixture[str]) -> None:
    append_event(folder.audit_log, "site-registered", {"name": "site-a", "node_id": 42,
                                                       "key_fingerprint": "SHA256:abc"})
    append_event(folder.audit_log, "run-submitted", {"run_folder": "r1", "app_sha256": "ab:cd"})
    assert main(["coordinator", "audit", "--dir", str(folder.root)]) == 0
    out = capsys.readouterr().out
    assert "site-registered" in out and 'name="site-a"' in out and "node_id=42" in out
    assert 'app_sha256="ab:cd"' in out and "2 events in" in out
