"""`fedclinic site start`: the foreground supervisor of a site's two processes.

1. `flower-supernode --isolation process`: TLS to the coordinator with the site's key; it never
   launches app processes itself. Its runtime API listens on 127.0.0.1 only, and only a holder
   of the per-start secret (`--superexec-auth-secret-file`, 0600) may acquire tasks from it.
2. the gated task runner (`python -P -m client.node.flower_runner`): it answers the SuperNode's
   ClientApp tasks with the site's installed ClientApp, for approved app bundles only.

SIGINT/SIGTERM stops both. A child that exits before it came up (a key the coordinator does not
know, a CA that does not sign it, a port in use) stops the site: the other is stopped and `site
start` exits 1, naming which, why and its log file. A child that exits after it came up is started
again after a backoff (5 s, doubling to 60 s; back to 5 s after 10 stable minutes), and the
restart goes into the audit log: Flower's SuperNode ends on some coordinator answers it cannot
handle (a bundle that is not a zip, an invalid message type), and a coordinator must not be able
to take a site offline with one such message. Both children get PR_SET_PDEATHSIG=SIGKILL, so a SIGKILLed
supervisor leaves nothing behind. Logs: <state>/logs/supernode.log and runner.log.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, MappingProxyType

from rich.console import Console

from client.node.approved_apps import read_allow_list
from client.node.settings import NodeSettings, render_flat_toml, require_files
from launcher.release_app import release_fab, release_version
from launcher.site.diagnosis import CONSOLE_MARKS, ONLINE, RETRYING, diagnose_supernode, node_id
from storage.atomic import write_atomic
from storage.audit_log import append_event

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_SECONDS = 10.0
RECLAIM_SECONDS = 90.0  # Flower: a node is online until 2 heartbeats (2 x 30 s) are missed
WATCH_SECONDS = 0.5
RESTART_FIRST_S, RESTART_MAX_S, STABLE_S = 5.0, 60.0, 600.0  # backoff of a child that died after it came up
OUTPUT_KEPT = 64 * 1024  # characters of each child's recent output kept for milestones and diagnosis
MILESTONES = MappingProxyType({"supernode": (("online", ONLINE), ("retrying", RETRYING)),
                               "runner": (("ready", "gated task runner ready"),)})
FLOWER_ENV = MappingProxyType({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"})


@dataclass
class Child:
    """One supervised process and the log file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    seen: int = 0  # bytes of the log already scanned (what earlier starts wrote is skipped)
    output: str = ""  # what this process wrote recently (OUTPUT_KEPT)
    partial: str = ""  # an unfinished last line
    events: set[str] = field(default_factory=set)


def _die_with_parent(parent: int) -> None:
    """preexec_fn: SIGKILL this child when the supervisor dies (even by SIGKILL)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def flower_command(name: str) -> str:
    """Flower's console script `name`, next to this Python first (the same install), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; install fedclinic "
                                "(it brings Flower) into this environment")
    return found


def _spawn(name: str, command: list[str], log: Path, settings: NodeSettings) -> Child:
    env = {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(settings.flwr_home), "PYTHONUNBUFFERED": "1"}
    parent = os.getpid()
    with log.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} fedclinic site start: {name}\n".encode())
        out.flush()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=settings.state, env=env, start_new_session=True,
                                   preexec_fn=lambda: _die_with_parent(parent))
    return Child(name, process, log, seen=log.stat().st_size)


def supernode_command(settings: NodeSettings, secret: Path, node_config: Path) -> list[str]:
    """flower-supernode with TLS (never --insecure), the site's key, process isolation, loopback runtime API."""
    return [flower_command("flower-supernode"), "--superlink", settings.coordinator,
            "--root-certificates", str(settings.ca), "--auth-supernode-private-key", str(settings.key),
            "--isolation", "process", "--host", "127.0.0.1", "--port", str(settings.runtime_port),
            "--superexec-auth-secret-file", str(secret), "--node-config", str(node_config)]


def _prepare_state(settings: NodeSettings) -> tuple[Path, Path]:
    """State folders, a fresh runtime secret and the node config file; returns (secret, node config)."""
    for folder in (settings.state, settings.logs, settings.flwr_home):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = settings.flwr_home / "runtime-secret"
    write_atomic(secret, secrets.token_hex(32).encode(), mode=0o600)
    # a .toml file: Flower's --node-config reads it with a TOML parser (no shell or regex quoting)
    node_config = settings.flwr_home / "node-config.toml"
    write_atomic(node_config, render_flat_toml(settings.node_config()).encode(), mode=0o600)
    return secret, node_config


def _claim_pid_file(settings: NodeSettings) -> bool:
    """Write <state>/site.pid; True if an old one was left by a start that did not stop cleanly.

    Raises RuntimeError if the file names a live process (the site is running already).
    """
    try:
        other = int(settings.pid_file.read_text().strip())
        os.kill(other, 0)
    except FileNotFoundError:
        unclean = False
    except (ValueError, ProcessLookupError):
        unclean = True
    except PermissionError:
        raise RuntimeError(f"{settings.pid_file}: process {other} is running; is this site started already?") from None
    else:
        raise RuntimeError(f"{settings.pid_file}: this site is running already (process {other}); "
                           "stop it first, or delete the file if that process is not fedclinic")
    write_atomic(settings.pid_file, f"{os.getpid()}\n".encode(), mode=0o644)
    return unclean


def _stop(children: list[Child]) -> None:
    """SIGTERM each running child, SIGKILL what is left after STOP_GRACE_SECONDS."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def _new_output(child: Child) -> str:
    with child.log.open("rb") as fh:
        fh.seek(child.seen)
        data = fh.read()
    child.seen += len(data)
    return data.decode("utf-8", "replace")


class _Stopped(Exception):
    """SIGINT or SIGTERM reached the supervisor."""


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    raise _Stopped


def start_site(settings: NodeSettings, console: Console) -> int:
    """Run the site until a signal (exit 0) or until a child exits (exit 1). Raises
    NodeSettingsError / AllowListError / RuntimeError before anything starts if the site cannot."""
    require_files(settings)
    approved = read_allow_list(settings.approved_apps)
    settings.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    unclean = _claim_pid_file(settings)
    secret, node_config = _prepare_state(settings)
    site = _Site(settings, console, time.monotonic(), supernode_command(settings, secret, node_config),
                 [sys.executable, "-P", "-m", "client.node.flower_runner", str(settings.file),
                  "--secret-file", str(secret)],
                 retry_until=time.monotonic() + (RECLAIM_SECONDS if unclean else 0))
    site.say(f"fedclinic site {settings.name}: coordinator {settings.coordinator} (CA {settings.ca}), "
             f"runtime API {settings.runtime_address}, {len(approved)} approved app bundle(s); logs in {settings.logs}")
    installed = release_fab()[1]
    if installed not in approved:
        site.say(f"the installed fedclinic {release_version()} (app bundle sha256 {installed}) is not on the "
                 f"allow-list {settings.approved_apps}: runs of it will be refused. To take part in them: "
                 f"fedclinic site approve {settings.file} {installed}", "yellow")
    if unclean:
        site.say("the previous `site start` did not stop cleanly: the coordinator may hold this node online for "
                 f"up to a minute, so a refused activation is retried for {RECLAIM_SECONDS:.0f} s")
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return site.run()
    except _Stopped:
        site.say(f"fedclinic site {settings.name}: stopping")
        return 0
    finally:
        _stop(site.children)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        settings.pid_file.unlink(missing_ok=True)


@dataclass
class _Site:
    """The supervisor's view of the running site."""

    settings: NodeSettings
    console: Console
    started: float
    supernode_argv: list[str]
    runner_argv: list[str]
    retry_until: float
    children: list[Child] = field(default_factory=list)
    backoff: float = 0.0
    last_restart: float = float("-inf")

    def say(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)

    def run(self) -> int:
        """Start both children; report milestones; return 1 (with the reason) once one exits."""
        logs = self.settings.logs
        self.children = [_spawn("supernode", self.supernode_argv, logs / "supernode.log", self.settings),
                         _spawn("runner", self.runner_argv, logs / "runner.log", self.settings)]
        while True:
            for child in self.children:
                text = _new_output(child)
                child.output = (child.output + text)[-OUTPUT_KEPT:]
                self._echo(child, text)
                for event, needle in MILESTONES[child.name]:
                    if needle in child.output and event not in child.events:
                        child.events.add(event)
                        self.say(self._milestone(event, child.output))
            for index, child in enumerate(self.children):
                code = child.process.poll()
                if code is None:
                    continue
                if not (self._restarted(index, child) or self._recovered(index, child, code)):
                    return self._exited(child, code)
            time.sleep(WATCH_SECONDS)

    def _echo(self, child: Child, text: str) -> None:
        """Show the runner's task lines (answered, refused) on the console too."""
        lines = (child.partial + text).split("\n")
        child.partial = lines.pop()[-OUTPUT_KEPT:]
        for line in lines:
            if child.name == "runner" and any(mark in line for mark in CONSOLE_MARKS):
                self.say(line, "yellow" if "REFUSED" in line else None)

    def _milestone(self, event: str, output: str) -> str:
        after = f"{time.monotonic() - self.started:.1f} s after start"
        if event == "online":
            return f"site {self.settings.name} online at the coordinator (node id {node_id(output)}), {after}"
        if event == "retrying":
            return (f"the coordinator {self.settings.coordinator} is not reachable yet; the SuperNode keeps trying "
                    f"(see {self.settings.logs / 'supernode.log'})")
        return f"gated task runner ready, {after}: it answers approved runs with the installed fedclinic"

    def _restarted(self, index: int, child: Child) -> bool:
        """Start the SuperNode again if the coordinator still holds this node online (see start_site)."""
        diagnosis = diagnose_supernode(child.output, self.settings) if child.name == "supernode" else None
        if diagnosis is None or diagnosis.reason != "activation-refused" or time.monotonic() > self.retry_until:
            return False
        self.say("the coordinator did not activate this node yet; trying again in 10 s")
        time.sleep(10)
        self.children[index] = _spawn(child.name, self.supernode_argv, child.log, self.settings)
        return True

    def _recovered(self, index: int, child: Child, code: int) -> bool:
        """Start a child again, after the backoff, if it had come up before it exited (see the module
        docstring); False for a child that never came up (a setup problem _exited reports)."""
        if not child.events:
            return False
        now = time.monotonic()
        self.backoff = (RESTART_FIRST_S if now - self.last_restart > STABLE_S
                        else min(max(self.backoff, RESTART_FIRST_S) * 2, RESTART_MAX_S))
        self.last_restart = now
        self.say(f"fedclinic site {self.settings.name}: the {child.name} exited (code {code}) while running; "
                 f"starting it again in {self.backoff:.0f} s. Log: {child.log}", "yellow")
        append_event(self.settings.audit_log, "process-restarted",
                     {"process": child.name, "exit_code": code, "backoff_s": self.backoff})
        time.sleep(self.backoff)
        argv = self.supernode_argv if child.name == "supernode" else self.runner_argv
        self.children[index] = _spawn(child.name, argv, child.log, self.settings)
        if child.name == "supernode":  # the coordinator may hold the node online for a minute
            self.retry_until = time.monotonic() + RECLAIM_SECONDS
        return True

    def _exited(self, child: Child, code: int) -> int:
        """Say why the site stops; record a refused connection in the audit log."""
        self.say(f"fedclinic site {self.settings.name}: the {child.name} exited (code {code}); stopping the "
                 f"site. Log: {child.log}", "red")
        diagnosis = diagnose_supernode(child.output, self.settings) if child.name == "supernode" else None
        if diagnosis is not None:
            self.say(diagnosis.message, "red")
            append_event(self.settings.audit_log, "connection-refused",
                         {"reason": diagnosis.reason, "coordinator": self.settings.coordinator})
        return 1
