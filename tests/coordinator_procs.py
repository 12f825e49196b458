"""Real coordinator and SuperNode processes for tests, on 127.0.0.1 only, stopped by the PIDs we started."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from launcher.child_processes import descendants
from launcher.coordinator.folder import FLOWER_ENV
from server.deployment.certificates import new_key

BIN = Path(sys.executable).parent
START_WAIT_S = 180.0  # a loaded 2-core CI box: the SuperLink alone can take 20 s to import


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Started:
    """A process we started in a session of its own, and the file its output goes to."""

    process: subprocess.Popen[bytes]
    output: Path

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, wait: float = 60.0) -> int:
        """Signal our process (the supervisor stops its own children); SIGKILL its group if it hangs."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        try:
            return self.process.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait(10)


def fedclinic(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the `fedclinic` console command of this environment to completion."""
    return subprocess.run([str(BIN / "fedclinic"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


def init_coordinator(folder: Path) -> tuple[int, int]:
    """`coordinator init` with free loopback ports; (fence port, SuperLink port)."""
    fence, superlink = free_port(), free_port()
    done = fedclinic("coordinator", "init", str(folder), "--host", "localhost", "--listen", f"127.0.0.1:{fence}",
                     "--superlink-port", str(superlink))
    assert done.returncode == 0, done.stdout + done.stderr
    return fence, superlink


def start_coordinator(folder: Path, output: Path) -> Started:
    """`coordinator start` in its own session; returns once it printed that it is up."""
    with output.open("wb") as out:
        process = subprocess.Popen([str(BIN / "fedclinic"), "coordinator", "start", str(folder)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    started = Started(process, output)
    deadline = time.monotonic() + START_WAIT_S
    while "coordinator up in" not in started.text():
        if process.poll() is not None or time.monotonic() > deadline:
            started.stop(signal.SIGTERM, 30)
            raise AssertionError(f"coordinator did not come up:\n{started.text()}")
        time.sleep(0.5)
    return started


def site_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair in OpenSSH format (private 0600), as a site makes it."""
    key = new_key()
    private, public = folder / name, folder / f"{name}.pub"
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public


def start_supernode(fence: str, ca: Path, key: Path, home: Path, output: Path, node_config: str = "",
                    extra: tuple[str, ...] = ()) -> Started:
    """A plain `flower-supernode` connecting through the fence, its runtime API on a free loopback port."""
    home.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "flower-supernode"), "--superlink", fence, "--root-certificates", str(ca),
               "--auth-supernode-private-key", str(key), "--host", "127.0.0.1", "--port", str(free_port()), *extra]
    if node_config:
        command += ["--node-config", node_config]
    with output.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env={**os.environ, **FLOWER_ENV, "FLWR_HOME": str(home)})
    return Started(process, output)


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """(local address, port) of every TCP socket in LISTEN state held by one of `pids` (from /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                address, port = fields[1].split(":")
                found.append((_address(address, width), int(port, 16)))
    return found


def _address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants."""
    return [pid, *descendants(pid)]


def init_site(node: Path, name: str, fence_port: int, ca: Path, data: Path, state: Path) -> Path:
    """`fedclinic site init` as site IT runs it (the key pair is made in `node`); returns node.toml."""
    done = fedclinic("site", "init", str(node), "--name", name, "--coordinator", f"127.0.0.1:{fence_port}",
                     "--ca", str(ca), "--data", str(data), "--state", str(state), "--runtime-port", str(free_port()))
    assert done.returncode == 0, done.stdout + done.stderr
    return node / "node.toml"


def start_site(node_toml: Path, output: Path, *, wait_ready: bool = True) -> Started:
    """`fedclinic site start` in its own session; returns once the SuperNode is online and the
    gated runner ready (or at once with wait_ready=False)."""
    with output.open("ab") as out:
        process = subprocess.Popen([str(BIN / "fedclinic"), "site", "start", str(node_toml)], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                   env={**os.environ, **FLOWER_ENV})
    started = Started(process, output)
    deadline = time.monotonic() + START_WAIT_S
    while wait_ready and not ("online at the coordinator" in started.text()
                              and "gated task runner ready" in started.text()):
        if process.poll() is not None or time.monotonic() > deadline:
            started.stop(signal.SIGTERM, 30)
            raise AssertionError(f"site did not come up:\n{started.text()[-4000:]}")
        time.sleep(0.5)
    return started


def https_status(port: int, ca: Path, method: str, path: str, body: bytes | None = b"") -> int:
    """The HTTP status 127.0.0.1:port answers `method path` with, over TLS verified against `ca`."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=ssl.create_default_context(cafile=str(ca)),
                                             timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/protobuf"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()
