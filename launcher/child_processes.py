"""Child processes a supervisor owns: each the leader of its own process group, stopped by PID.

Nothing here finds a process by name: a supervisor stops the groups it started and the
descendants of its own children (read from /proc; Linux).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STOP_WAIT_S = 15.0  # after SIGTERM, before SIGKILL


@dataclass
class Child:
    """A started child process: the leader of its own process group."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, wait_s: float = STOP_WAIT_S) -> None:
        """SIGTERM to the group; SIGKILL to what is left after `wait_s` (0: SIGKILL at once). Descendants that left
        the group (Flower starts flower-superexec in a session of its own) get the same, by PID."""
        strays = descendants(self.process.pid)
        steps = ((signal.SIGTERM, wait_s), (signal.SIGKILL, 5.0)) if wait_s > 0 else ((signal.SIGKILL, 5.0),)
        for sig, wait in steps:
            _signal_all(self.process.pid, strays, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (_group_alive(self.process.pid) or _any_alive(strays)):
                self.process.poll()
                time.sleep(0.1)
            self.process.poll()
            if not _group_alive(self.process.pid) and not _any_alive(strays):
                break
        self.process.wait()


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of `pid` (from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_all(pgid: int, pids: list[int], sig: signal.Signals) -> None:
    for send, target in ((os.killpg, pgid), *((os.kill, p) for p in pids)):
        try:
            send(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def _any_alive(pids: list[int]) -> bool:
    alive = False
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)  # only succeeds for our own children; else ChildProcessError
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
            alive = alive or not _is_zombie(pid)
        except ProcessLookupError:
            pass
    return alive


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def tool(name: str) -> str:
    """A console script of this Python environment (flower-superlink, flwr), else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def spawn(name: str, command: list[str], log: Path, cwd: Path, env: dict[str, str]) -> Child:
    """Start `command` as the leader of a new session (own process group), stdin closed, stdout and
    stderr appended to `log` after a line saying when it started."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n--- fedclinic: starting {name} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        out.flush()
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=cwd, env=env, start_new_session=True)
    return Child(name, process, log)


def log_tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a log (empty if it cannot be read)."""
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
