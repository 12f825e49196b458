"""The ServerApp's entries in the coordinator's audit log: which run started, and per round who
trained, declined, failed or had an update left out, and who evaluated.

The log is named by the run config (`output.audit_log`, set by `fedclinic run --federation`; sites
ignore it). Without it (simulation) nothing is written. Entries hold site names, node ids, decline
reasons and counts, never data. Events (storage.audit_log adds `time` and `event`):

    run-started     run_folder, flower_run_id, app_sha256 (Flower's hash of the submitted bundle), rounds
    round-trained   run_folder, flower_run_id, round, trained [names], declined {name: reason},
                    failed {name: why: an error code, or no reply}, rejected {name: why}
    round-evaluated run_folder, flower_run_id, round, evaluated [names], failed {name: why}, auroc
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from configs.schema import ExperimentConfig
from privacy.decline import REASONS as DECLINE_REASONS
from server.evaluation import GlobalEvaluation, SiteEvaluation
from server.recorder import RunRecorder, SiteTraining
from storage.audit_log import append_event, read_events


class _RunInfo(Protocol):
    @property
    def fab_hash(self) -> str: ...


class _GridWithRun(Protocol):
    @property
    def run(self) -> _RunInfo: ...


class AuditedRecorder(RunRecorder):
    """A RunRecorder that also appends each round's outcome to an audit log as it happens."""

    def __init__(self, total_rounds: int, audit_log: Path, run_folder: str, flower_run_id: int) -> None:
        super().__init__(total_rounds)
        self.audit_log = audit_log
        self.run_fields: dict[str, object] = {"run_folder": run_folder, "flower_run_id": str(flower_run_id)}

    def trained(self, number: int, sites: Sequence[SiteTraining], failed: Mapping[str, str],
                declined: Mapping[int, int] | None = None) -> None:
        super().trained(number, sites, failed, declined)
        record = self.rounds[number]
        append_event(self.audit_log, "round-trained", {
            **self.run_fields, "round": number, "trained": [s.site for s in sites],
            "declined": {self.site_name(node): DECLINE_REASONS.get(code, f"code {code}")
                         for node, code in record.declined.items()},
            "failed": dict(failed), "rejected": dict(record.rejected)})

    def evaluated(self, number: int, sites: Sequence[SiteEvaluation], failed: Mapping[str, str]
                  ) -> GlobalEvaluation:
        result = super().evaluated(number, sites, failed)
        append_event(self.audit_log, "round-evaluated", {
            **self.run_fields, "round": number, "evaluated": [s.site for s in sites], "failed": dict(failed),
            "auroc": result.auroc})
        return result


def run_recorder(cfg: ExperimentConfig, run_dir: Path, flower_run_id: int, grid: _GridWithRun) -> RunRecorder:
    """The run's recorder: audited (after a `run-started` event) when cfg.output.audit_log is set."""
    if not cfg.output.audit_log:
        return RunRecorder(cfg.rounds)
    recorder = AuditedRecorder(cfg.rounds, Path(cfg.output.audit_log), run_dir.name, flower_run_id)
    append_event(recorder.audit_log, "run-started", {**recorder.run_fields, "app_sha256": grid.run.fab_hash,
                                                     "rounds": cfg.rounds})
    return recorder


def registered_names(audit_log: Path) -> dict[int, str]:
    """{node id: site name} of the registrations in a coordinator's audit log, minus unregistrations
    (`fedclinic coordinator register-site`); {} when the log does not exist yet."""
    names: dict[int, str] = {}
    if not audit_log.exists():
        return names
    for event in read_events(audit_log).events:
        if event.get("event") == "site-registered":
            names[int(str(event["node_id"]))] = str(event["name"])
        elif event.get("event") == "site-unregistered":
            names.pop(int(str(event["node_id"])), None)
    return names
