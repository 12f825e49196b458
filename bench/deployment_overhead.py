"""The deployment half of bench/federation_overhead.py: fedclinic and the empty app on loopback.

fedclinic runs exactly as the README's deploy section says (`fedclinic coordinator init|start|
register-site`, `fedclinic site init|start` per hospital, `fedclinic run --federation`): TLS, node
keys, the nginx fence, each site's SuperNode with its gated task runner. The empty app
(bench/empty_flower_app.py, the same message pattern) runs on a second coordinator made the same
way, submitted with `flwr run`, at three sites of one of two kinds:
- "runner": each site exactly as `fedclinic site start` runs it (SuperNode with process
  isolation, the gated runner's polling and allow-list check), answering with the empty
  ClientApp (bench/empty_site_runner.py). Its round time is the floor of fedclinic's own
  deployment: Flower's polling sleeps (a SuperNode polls every 3 s when idle and pushes a reply
  on its next loop; the ServerApp polls for replies every 3 s) and the runner's 1 s poll.
- "process": plain `flower-supernode` processes (Flower's default isolation: a new ClientApp
  process per message, importing flwr): Flower's floor with its process starts, which
  fedclinic's long-lived runner does not pay.

Every SuperNode reaches its fence through a byte-counting TCP relay on 127.0.0.1 (WireRelay), so
the bench sees the TLS bytes each site sends and receives while the run is submitted and runs.
A burst is a run of chunks less than BURST_GAP_S apart (one message's requests: push-messages,
then a push-object per Flower object); a site's train replies are its `rounds` largest upload
bursts (a reply carries the model; nothing else a site sends comes near it). The per-round
totals divide everything over the run by the rounds: polling, heartbeats, the evaluation
replies, and the app bundle each site downloads once per run.

Only processes this bench started are stopped (by PID, each in a session of its own).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
START_WAIT_S = 240.0
BURST_GAP_S = 0.3
SITES = ("site-a", "site-b", "site-c")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WireRelay:
    """127.0.0.1:port -> target, counting (monotonic time, "up" | "down", bytes) per chunk."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.chunks: list[tuple[float, str, int]] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for src, dst, way in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(src, dst, way), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    self.chunks.append((time.monotonic(), way, len(data)))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def between(self, start: float, end: float) -> list[tuple[float, str, int]]:
        with self._lock:
            return [c for c in self.chunks if start <= c[0] < end]

    def close(self) -> None:
        self._server.close()


def bursts(chunks: list[tuple[float, str, int]], way: str) -> list[int]:
    """Bytes of each run of `way` chunks less than BURST_GAP_S apart, in order."""
    out: list[int] = []
    last = None
    for t, w, n in chunks:
        if w != way:
            continue
        if last is not None and t - last < BURST_GAP_S:
            out[-1] += n
        else:
            out.append(n)
        last = t
    return out


@dataclass
class Process:
    """A process this bench started, in a session of its own, output to a file."""

    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


@dataclass
class Stack:
    """What one bench half started: stopped in reverse order."""

    processes: list[Process] = field(default_factory=list)
    relays: list[WireRelay] = field(default_factory=list)

    def start(self, command: list[str], log: Path, env: dict[str, str]) -> Process:
        with log.open("ab") as out:
            popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
        self.processes.append(Process(popen, log))
        return self.processes[-1]

    def close(self) -> None:
        for p in reversed(self.processes):
            p.stop()
        for r in self.relays:
            r.close()


def _wait(process: Process, *needles: str) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while not all(n in process.text() for n in needles):
        if process.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.log.name}: not up ({', '.join(needles)}); see {process.log}")
        time.sleep(0.5)


def _run(args: list[str], env: dict[str, str], log: Path, timeout: float = 3600) -> str:
    with log.open("ab") as out:
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                              timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed (exit {done.returncode}); see {log}")
    return log.read_text(errors="replace")


def _coordinator(stack: Stack, folder: Path, env: dict[str, str], logs: Path) -> int:
    """`fedclinic coordinator init` + `start`; returns the fence port."""
    fence = free_port()
    _run([str(BIN / "fedclinic"), "coordinator", "init", str(folder), "--host", "localhost", "--listen",
          f"127.0.0.1:{fence}", "--superlink-port", str(free_port())], env, logs / f"{folder.name}-init.log")
    _wait(stack.start([str(BIN / "fedclinic"), "coordinator", "start", str(folder)], logs / f"{folder.name}.log", env),
          "coordinator up in")
    return fence


def _site_folder(stack: Stack, node: Path, name: str, fence: int, ca: Path, data: Path, state: Path,
                 coordinator: Path, env: dict[str, str], logs: Path) -> WireRelay:
    """`fedclinic site init` behind a counting relay, and `coordinator register-site` of its key."""
    relay = WireRelay(("127.0.0.1", fence))
    stack.relays.append(relay)
    _run([str(BIN / "fedclinic"), "site", "init", str(node), "--name", name, "--coordinator",
          f"127.0.0.1:{relay.port}", "--ca", str(ca), "--data", str(data), "--state", str(state),
          "--runtime-port", str(free_port())], env, logs / f"{node.parent.name}-{name}-init.log")
    _run([str(BIN / "fedclinic"), "coordinator", "register-site", name, str(node / "keys" / f"{name}.pub"),
          "--dir", str(coordinator)], env, logs / f"{node.parent.name}-{name}-register.log")
    return relay


def _fresh_ledgers(root: Path, work: Path) -> None:
    """The bench's own synthetic sites start the run with empty ledgers and high-water marks
    (their caches stay warm: bench/federation_overhead.py warmed them, in the state folders a
    simulation uses too)."""
    import shutil
    for ledger in (root / ".fedclinic-state").glob("*/privacy-ledger.*"):
        ledger.unlink()
    shutil.rmtree(work / "marks", ignore_errors=True)


@dataclass
class DeployResult:
    fedclinic: list[dict[str, float]]          # per round {wall, compute}
    empty: list[float]                         # per round wall, empty app through fedclinic's site runner
    empty_process: list[float]                 # per round wall, empty app on plain SuperNodes
    wire: dict[str, dict[str, float]]          # per run: bytes per site per round (train reply, up, down)


def _wire(relays: dict[str, WireRelay], start: float, end: float, rounds: int) -> dict[str, float]:
    """Per site per round, mean over sites: the train reply (each site's `rounds` largest upload
    bursts), and all bytes up and down over the run divided by the rounds."""
    reply, up, down = [], [], []
    for relay in relays.values():
        chunks = relay.between(start, end)
        reply.extend(sorted(bursts(chunks, "up"))[-rounds:])
        up.append(sum(n for _, w, n in chunks if w == "up") / rounds)
        down.append(sum(n for _, w, n in chunks if w == "down") / rounds)
    return {"train_reply": sum(reply) / max(len(reply), 1), "up": sum(up) / len(up), "down": sum(down) / len(down)}


def _fedclinic(root: Path, rounds: int, work: Path, env: dict[str, str], logs: Path) -> tuple[list[dict[str, float]], dict[str, float]]:
    stack = Stack()
    folder = work / "deploy" / "coordinator"
    _fresh_ledgers(root, work)
    try:
        fence = _coordinator(stack, folder, env, logs)
        relays = {}
        for name in SITES:
            data, state = root / name, root / ".fedclinic-state" / name
            relays[name] = _site_folder(stack, work / "deploy" / "nodes" / name, name, fence, folder / "certs" / "ca.crt",
                                        data, state, folder, env, logs)
            _wait(stack.start([str(BIN / "fedclinic"), "site", "start", str(work / "deploy" / "nodes" / name / "node.toml")],
                              logs / f"deploy-{name}.log", env), "online at the coordinator", "gated task runner ready")
        submitted = time.monotonic()
        _run([str(BIN / "fedclinic"), "run", "--federation", str(folder), f"rounds={rounds}"], env,
             logs / "deploy-fedclinic-run.log")
        finished = time.monotonic()
        run_dir = max((folder / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
        summary = json.loads((run_dir / "summary.json").read_text())
        fed = [{"wall": r["wall_s"], "compute": r["slowest_compute_s"]} for r in summary["rounds"]]
        return fed, _wire(relays, submitted, finished, rounds)
    finally:
        stack.close()


def _empty_app_folder(folder: Path) -> Path:
    """A Flower app folder holding bench/empty_flower_app.py as emptyapp.app (text files only)."""
    (folder / "emptyapp").mkdir(parents=True, exist_ok=True)
    (folder / "emptyapp" / "__init__.py").write_text("")
    (folder / "emptyapp" / "app.py").write_text((Path(__file__).parent / "empty_flower_app.py").read_text())
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "fedclinic-empty"\nversion = "1.0.0"\n\n[tool.flwr.app]\npublisher = "fedclinic-bench"\n\n'
        '[tool.flwr.app.components]\nserverapp = "emptyapp.app:server_app"\nclientapp = "emptyapp.app:client_app"\n\n'
        '[tool.flwr.app.config]\noverrides = ""\n')
    return folder


def _online(folder: Path, env: dict[str, str], count: int) -> None:
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline:
        done = subprocess.run([str(BIN / "fedclinic"), "coordinator", "list-sites", "--dir", str(folder)],
                              capture_output=True, text=True, env=env, check=False)
        if sum(" online" in line for line in done.stdout.splitlines()) >= count:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the empty app's SuperNodes did not come online at {folder}")


def _empty(root: Path, rounds: int, work: Path, env: dict[str, str], logs: Path, kind: str, layout: str
           ) -> tuple[list[float], dict[str, float]]:
    """The empty app at three sites of `kind` ("runner" | "process"), the model sent `layout`."""
    from bench.empty_flower_app import fab_sha256
    stack = Stack()
    folder = work / "deploy" / f"empty-{kind}-{layout}"
    try:
        fence = _coordinator(stack, folder, env, logs)
        app = _empty_app_folder(folder / "app")
        digest = fab_sha256({p.relative_to(app).as_posix(): p.read_bytes() for p in sorted(app.rglob("*"))
                             if p.is_file()})
        relays = {}
        for name in SITES:
            node = folder / "nodes" / name
            relays[name] = _site_folder(stack, node, name, fence, folder / "certs" / "ca.crt", root / name,
                                        node / "state", folder, env, logs)
            log = logs / f"deploy-empty-{kind}-{layout}-{name}.log"
            if kind == "runner":
                _run([str(BIN / "fedclinic"), "site", "approve", str(node / "node.toml"), digest], env, log)
                _wait(stack.start([sys.executable, str(Path(__file__).parent / "empty_site_runner.py"),
                                   str(node / "node.toml")], log, env), "empty site runner ready")
            else:
                stack.start([str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{relays[name].port}",
                             "--root-certificates", str(folder / "certs" / "ca.crt"), "--auth-supernode-private-key",
                             str(node / "keys" / name), "--host", "127.0.0.1", "--port", str(free_port())],
                            log, {**env, "FLWR_HOME": str(node / "flwr-home")})
        _online(folder, env, len(SITES))
        out = work / f"empty-deployment-{kind}-{layout}.json"
        out.unlink(missing_ok=True)
        settings = f"rounds={rounds} sites={len(SITES)} layout={layout} out={out}"
        submitted = time.monotonic()
        _run([str(BIN / "flwr"), "run", str(app), "fedclinic", "--stream", "-c", f"overrides={json.dumps(settings)}"],
             {**env, "FLWR_HOME": str(folder / "home")}, logs / f"deploy-empty-{kind}-{layout}-run.log")
        finished = time.monotonic()
        walls = [json.loads(out.read_text())["rounds"][str(r)] for r in range(1, rounds + 1)]
        return walls, _wire(relays, submitted, finished, rounds)
    finally:
        stack.close()


def deployment_rounds(root: Path, rounds: int, work: Path, *, wire_before: bool = False) -> DeployResult:
    """fedclinic, then the empty app through fedclinic's site runner (the floor the ratio uses),
    then the empty app on plain SuperNodes (a ClientApp process per message), and with
    `wire_before` the empty app sending the model as one array per tensor (as fedclinic did
    before the flat exchange); each on a fresh loopback deployment under WORK/deploy."""
    import shutil
    shutil.rmtree(work / "deploy", ignore_errors=True)
    logs = work / "deploy" / "logs"  # fresh each time: readiness is read from these files
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **FLOWER_ENV, "FEDCLINIC_LEDGER_MARK_DIR": str(work / "marks"),
           "PYTHONPATH": str(ROOT)}
    fed, fed_wire = _fedclinic(root, rounds, work, env, logs)
    floor, floor_wire = _empty(root, rounds, work, env, logs, "runner", "flat")
    spawned, _ = _empty(root, rounds, work, env, logs, "process", "flat")
    wire = {"fedclinic": fed_wire, "empty app (site runner)": floor_wire}
    if wire_before:
        _, wire["empty app, one array per tensor (before)"] = _empty(root, rounds, work, env, logs, "runner",
                                                                     "per-tensor")
    return DeployResult(fed, floor, spawned, wire)
