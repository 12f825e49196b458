"""`fedclinic coordinator start DIR`: a foreground supervisor for flower-superlink and the nginx fence.

Order: the SuperLink (loopback only, TLS, SuperNode auth, persistent database) is started and
waited for (a TLS request on loopback, at most SUPERLINK_WAIT_S); then nginx, whose readiness is
checked through the fence itself: the Control API must be refused (403) and the Fleet API must
reach Flower (401 without a node key). Each child runs in a process group of its own, owned by
this process; SIGINT/SIGTERM stop both (SIGTERM to each group, SIGKILL after STOP_WAIT_S). If one
child dies, the other is stopped and the supervisor exits 1, naming it and its log.
"""

from __future__ import annotations

import fcntl
import http.client
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from launcher.child_processes import Child, log_tail, spawn, tool
from launcher.coordinator.folder import CONNECTION, CoordinatorFolder
from launcher.coordinator.fence import fence_command, render_fence
from server.deployment.certificates import describe, load_cert
from server.deployment.coordinator_settings import CoordinatorSettings, is_loopback
from storage.audit_log import append_event

SUPERLINK_WAIT_S = 90.0  # flower-superlink imports FastAPI and Flower first: ~6 s on 2 idle cores
FENCE_WAIT_S = 20.0


class StartError(RuntimeError):
    """A child did not come up (the message names it and quotes its log)."""


def superlink_command(folder: CoordinatorFolder, settings: CoordinatorSettings) -> list[str]:
    return [tool("flower-superlink"), "--ssl-ca-certfile", str(folder.ca_cert), "--ssl-certfile",
            str(folder.server_cert), "--ssl-keyfile", str(folder.server_key), "--enable-supernode-auth",
            "--database", str(folder.database), "--disable-runtime-dependency-installation",
            "--isolation", "subprocess", "--host", settings.superlink.host, "--port", str(settings.superlink.port)]


def _https(host: str, port: int, ca: Path, path: str, *, timeout: float = 5.0) -> int:
    """POST `path` over TLS (chain checked against `ca`, host name not: readiness only); the status."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        connection.request("POST", path, body=b"", headers={"Content-Type": "application/protobuf"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _wait_until(child: Child, probe: str, host: str, port: int, ca: Path, limit: float, stop: threading.Event
                ) -> int:
    """Poll `probe` until it answers; the HTTP status. Raises StartError if the child exits or
    `limit` seconds pass, and InterruptedError if `stop` is set."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if stop.is_set():
            raise InterruptedError
        if child.process.poll() is not None:
            raise StartError(f"{child.name} exited with code {child.process.returncode} before it answered. "
                             f"Last lines of {child.log}:\n{log_tail(child.log)}")
        try:
            return _https(host, port, ca, probe)
        except (OSError, http.client.HTTPException):
            stop.wait(0.25)
    raise StartError(f"{child.name} did not answer on {host}:{port} within {limit:.0f} s. "
                     f"Last lines of {child.log}:\n{log_tail(child.log)}")


def _probe_host(settings: CoordinatorSettings) -> str:
    host = settings.fence.host
    return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host


@contextmanager
def _pid_file(folder: CoordinatorFolder) -> Iterator[None]:
    """DIR/state/coordinator.pid, locked while this supervisor runs. Raises StartError if another
    supervisor holds it."""
    folder.state.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(folder.pid_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise StartError(f"this coordinator is running already (pid {other or '?'}, {folder.pid_file}); "
                             "stop it first (Ctrl-C in its terminal, or kill -TERM that pid)") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.unlink(folder.pid_file)
    finally:
        os.close(fd)


@contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start_children(folder: CoordinatorFolder, settings: CoordinatorSettings, children: list[Child],
                    stop: threading.Event) -> None:
    superlink = spawn("flower-superlink", superlink_command(folder, settings), folder.superlink_log, folder.root,
                      folder.flower_env())
    children.append(superlink)
    _wait_until(superlink, "/", settings.superlink.host, settings.superlink.port, folder.ca_cert,
                SUPERLINK_WAIT_S, stop)
    conf = render_fence(folder, settings)
    check = subprocess.run(fence_command(folder, conf, test=True), capture_output=True, text=True, cwd=folder.root)
    if check.returncode != 0:
        raise StartError(f"nginx refused {conf}:\n{check.stderr.strip() or log_tail(folder.fence_error_log)}")
    fence = spawn("nginx (fence)", fence_command(folder, conf), folder.fence_error_log, folder.root,
                  folder.flower_env())
    children.append(fence)
    host = _probe_host(settings)
    status = _wait_until(fence, "/v1/control/list-runs", host, settings.fence.port, folder.ca_cert, FENCE_WAIT_S, stop)
    fleet = _https(host, settings.fence.port, folder.ca_cert, "/v1/fleet/get-run")
    if status != 403 or fleet != 401:
        raise StartError(f"the fence at {settings.fence} answered {status} for the Control API (expected 403) and "
                         f"{fleet} for the Fleet API without a node key (expected Flower's 401); "
                         f"see {folder.fence_error_log}")


def _announce(console: Console, folder: CoordinatorFolder, settings: CoordinatorSettings, seconds: float) -> None:
    ca = describe(load_cert(folder.ca_cert))
    port = settings.fence.port
    wildcard = settings.fence.host in ("0.0.0.0", "::")
    public = [h for h in settings.hosts if not is_loopback(h)] if wildcard else [settings.fence.host]
    site_facing = ", ".join(f"{h}:{port}" if ":" not in h else f"[{h}]:{port}" for h in public) or str(settings.fence)
    console.print(f"fedclinic coordinator up in {seconds:.1f} s (pid {os.getpid()})\n"
                  f"  sites connect to:   {site_facing}  (fence listening on {settings.fence}; TLS; "
                  f"only the Fleet API passes)\n"
                  f"  control (this host): {settings.superlink}  (flwr connection \"{CONNECTION}\" in "
                  f"{folder.home / 'config.toml'})\n"
                  f"  CA fingerprint (SHA-256): {ca.sha256}\n"
                  f"  logs: {folder.superlink_log}, {folder.fence_error_log}, {folder.fence_access_log}\n"
                  f"  stop: Ctrl-C, or kill -TERM {os.getpid()}", soft_wrap=True, highlight=False, markup=False,
                  emoji=False)


def _supervise(children: list[Child], stop: threading.Event) -> Child | None:
    """Block until a stop signal (None) or until a child exits (that child)."""
    while not stop.wait(0.5):
        for child in children:
            if child.process.poll() is not None:
                return child
    return None


def run_coordinator(folder: CoordinatorFolder, console: Console) -> int:
    """Start, supervise and stop the SuperLink and the fence; the exit code (0 after a stop signal).

    Raises SettingsError / FenceError / StartError (children stopped first) when it cannot start."""
    settings = folder.settings()
    folder.make_dirs()
    folder.write_flwr_connection(settings)
    children: list[Child] = []
    with _pid_file(folder), _stop_signals() as stop:
        started = time.monotonic()
        died: Child | None = None
        try:
            _start_children(folder, settings, children, stop)
            _announce(console, folder, settings, time.monotonic() - started)
            append_event(folder.audit_log, "coordinator-started", {"fence": str(settings.fence),
                         "superlink": str(settings.superlink), "pid": os.getpid()})
            died = _supervise(children, stop)
            append_event(folder.audit_log, "coordinator-stopped",
                         {"reason": f"{died.name} exited" if died else "stop signal"})
        except InterruptedError:
            pass
        finally:
            for child in reversed(children):
                child.stop()
    if died is not None:
        console.print(f"[red]{died.name} exited with code {died.process.returncode}; stopped the rest. "
                      f"See {escape(str(died.log))}:[/red]\n{escape(log_tail(died.log))}", soft_wrap=True,
                      highlight=False)
        return 1
    console.print("fedclinic coordinator stopped", highlight=False)
    return 0
