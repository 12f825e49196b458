"""Flower adapter: the site's gated task runner, a long-lived process beside `flower-supernode
--isolation process`. It replaces Flower's `flower-superexec` + `flwr-clientapp` pair.

It polls the SuperNode's loopback runtime API for ClientApp tasks, as
`flwr/supercore/superexec/run_superexec.py` does (AcquireTask, then the task's token), and
answers each with client/node/flower_task.py: the bundle's hash is checked against the site's
allow-list, and the site's installed `client.app.app` (imported once, here) answers approved
runs in this process. Bundle code is never installed or imported.

Audit events (`<state>/audit.jsonl`): runner-started, run-joined, task, app-refused. They hold
run ids (Flower's `run`; a task's `run_key`, fedclinic's run id, when the coordinator sent one),
hashes, rounds, phases, outcomes (replied, replayed: a stored release sent again without a spend,
error), codes and ε only: no data paths and no exception text.

Run by `fedclinic site start` as `python -P -m client.node.flower_runner NODE_TOML
--secret-file FILE` (the SuperNode's --superexec-auth-secret-file: only this runner may acquire
tasks). Exit codes: 0 stopped by SIGTERM/SIGINT, 2 bad settings, 3 refused by the runtime API.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType

import httpx
from flwr.clientapp import ClientApp
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
from flwr.supercore.runtime import RuntimeHttpClient

from client.node.approved_apps import AllowListError, read_allow_list
from client.node.flower_task import TaskOutcome, run_task, runtime_client
from client.node.settings import NodeSettings, NodeSettingsError, load_node_settings
from storage.audit_log import AuditLogError, append_event, read_events

POLL_SECONDS = 1.0  # as flower-superexec's default task poll interval
ACQUIRE_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask"})

log = logging.getLogger("fedclinic.site.runner")


class RunnerRefused(RuntimeError):
    """The SuperNode's runtime API refused this runner (wrong or missing shared secret)."""


def _stop(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _joined_runs(settings: NodeSettings) -> set[int]:
    """Runs this site already joined (from its audit log), so `run-joined` is written once per run."""
    try:
        events = read_events(settings.audit_log).events
    except (AuditLogError, OSError) as exc:
        log.warning("audit log not readable (%s); runs will be announced again", exc)
        return set()
    return {int(str(e["run"])) for e in events if e.get("event") == "run-joined" and str(e.get("run")).isdigit()}


def _outcome(outcome: TaskOutcome) -> str:
    """A task's audit outcome: replied, replayed (a stored release sent again, no spend) or error."""
    if outcome.error_code is not None:
        return "error"
    return "replayed" if outcome.replayed else "replied"


def record(settings: NodeSettings, outcome: TaskOutcome, joined: set[int]) -> None:
    """Write the task's audit events and its line in the runner log."""
    run = str(outcome.run_id)
    if not outcome.approved:
        append_event(settings.audit_log, "app-refused", {"run": run, "app_sha256": outcome.app_sha256,
                                                         "phase": outcome.message_type})
        log.warning("REFUSED run %s: its app bundle sha256 %s is not on the allow-list %s. If the central team "
                    "announced this bundle for a fedclinic release you accept, approve it with: "
                    "fedclinic site approve %s %s", run, outcome.app_sha256, settings.approved_apps,
                    settings.file, outcome.app_sha256)
        return
    if outcome.run_id not in joined:
        append_event(settings.audit_log, "run-joined", {"run": run, "app_sha256": outcome.app_sha256})
        joined.add(outcome.run_id)
    fields: dict[str, object] = {"run": run, "phase": outcome.message_type, "outcome": _outcome(outcome),
                                 "seconds": round(outcome.seconds, 3)}
    fields |= {"round": outcome.server_round} if outcome.server_round is not None else {}
    fields |= {"run_key": outcome.run_key} if outcome.run_key is not None else {}
    fields |= {"error_code": outcome.error_code} if outcome.error_code is not None else {}
    fields |= {"epsilon": outcome.epsilon} if outcome.epsilon is not None else {}
    append_event(settings.audit_log, "task", fields)
    log.info("task done: run %s %s round %s: %s in %.2f s (ClientApp %.2f s, runner overhead %.3f s)", run,
             outcome.message_type, outcome.server_round, _outcome(outcome) if outcome.error_code is None
             else f"error {outcome.error_code}", outcome.seconds, outcome.app_seconds,
             outcome.seconds - outcome.app_seconds)


def _acquire(poller: RuntimeHttpClient) -> tuple[str, int] | None:
    """(token, task id) of a pending ClientApp task, or None. Raises RunnerRefused on 401/403."""
    try:
        res = poller.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code in (401, 403):
            raise RunnerRefused(f"the SuperNode's runtime API refused the runner (HTTP "
                                f"{exc.response.status_code}): the shared secret does not match") from None
        log.warning("runtime API answered HTTP %s; retrying", exc.response.status_code)
        return None
    return (res.token, res.task.task_id) if res.HasField("task") and res.token else None


class _Tasks:
    """The runtime API's pending tasks, one at a time; `newer_waiting` claims the next one early
    (the runner answers it next), for client/node/flower_task_input.py's stopped-run check."""

    def __init__(self, poller: RuntimeHttpClient) -> None:
        self.poller = poller
        self.held: tuple[str, int] | None = None
        self.lock = threading.Lock()

    def newer_waiting(self) -> bool:
        """Whether the SuperNode has another pending task (claimed here, kept for `next`); never raises."""
        with self.lock:
            if self.held is None:
                try:
                    self.held = _acquire(self.poller)
                except Exception:  # RunnerRefused too: the poll loop reports it
                    return False
                if self.held is not None:
                    log.info("task %s is waiting", self.held[1])
            return self.held is not None

    def next(self) -> tuple[str, int] | None:
        """A task claimed by `newer_waiting`, else a newly acquired one (see _acquire), else None."""
        with self.lock:
            held, self.held = self.held, None
        return held if held is not None else _acquire(self.poller)


def serve(settings: NodeSettings, secret: bytes, app: ClientApp) -> None:
    """Poll and answer tasks until stopped by a signal. Raises RunnerRefused (see _acquire)."""
    poller = runtime_client(settings.runtime_address, [
        RuntimeVersionHttpInterceptor(component_name="SuperExec"),
        SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=ACQUIRE_METHODS)], retry=False)
    tasks, joined, unreachable = _Tasks(poller), _joined_runs(settings), False
    try:
        while True:
            try:
                acquired = tasks.next()
            except httpx.TransportError:
                if not unreachable:
                    log.info("waiting for the SuperNode's runtime API at %s", settings.runtime_address)
                unreachable, acquired = True, None
            except RunnerRefused:
                raise
            except Exception:  # an odd answer from the SuperNode must not stop the site
                log.exception("asking the SuperNode for a task failed; trying again")
                acquired = None
            else:
                if unreachable:
                    log.info("connected to the SuperNode's runtime API at %s", settings.runtime_address)
                unreachable = False
            if acquired is None:
                time.sleep(POLL_SECONDS)
                continue
            token, task_id = acquired
            log.info("task %s acquired", task_id)
            outcome = run_task(settings.runtime_address, token, settings.approved_apps, app, tasks.newer_waiting)
            if outcome is not None:
                _record_safely(settings, outcome, joined)
    finally:
        poller.close()


def _record_safely(settings: NodeSettings, outcome: TaskOutcome, joined: set[int]) -> None:
    try:
        record(settings, outcome, joined)
    except (AuditLogError, OSError):
        log.exception("could not write the audit log %s", settings.audit_log)


def _installed_version() -> str:
    try:
        return version("fedclinic")
    except PackageNotFoundError:
        return "0.0.0"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: `python -P -m client.node.flower_runner NODE_TOML --secret-file FILE`."""
    parser = argparse.ArgumentParser(prog="python -m client.node.flower_runner", description=__doc__)
    parser.add_argument("config", type=Path, help="the site's node.toml (or its folder)")
    parser.add_argument("--secret-file", type=Path, required=True,
                        help="the SuperNode's --superexec-auth-secret-file")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    site_log = logging.getLogger("fedclinic")  # the runner's and the ClientApp's own messages
    site_log.addHandler(handler)
    site_log.setLevel(logging.INFO)
    site_log.propagate = False  # some imports configure the root logger; one line per message
    signal.signal(signal.SIGTERM, _stop)
    try:
        settings = load_node_settings(args.config)
        secret = args.secret_file.read_bytes()
        approved = read_allow_list(settings.approved_apps)
    except (NodeSettingsError, AllowListError, OSError) as exc:
        log.error("%s", exc)
        return 2
    started = time.perf_counter()
    from client.app import app  # the site's installed ClientApp, imported once per runner process
    release = _installed_version()
    log.info("gated task runner ready: installed fedclinic %s imported in %.1f s; %d approved app bundle(s) in %s",
             release, time.perf_counter() - started, len(approved), settings.approved_apps)
    append_event(settings.audit_log, "runner-started", {"release": release, "approved_apps": len(approved)})
    try:
        serve(settings, secret, app)
    except RunnerRefused as exc:
        log.error("%s", exc)
        return 3
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
