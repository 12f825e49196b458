"""coordinator.toml, parsed once into a frozen CoordinatorSettings (errors name the file and field).

    [coordinator]
    hosts = ["coord.example.org", "localhost", "127.0.0.1"]   # SANs of certs/server.pem
    [superlink]
    address = "127.0.0.1:9093"    # every Flower API (Fleet, Control, Runtime): loopback only
    [fence]
    listen = "0.0.0.0:9092"       # the only site-facing listener (nginx; only /v1/fleet/* passes)
    [runs]
    round_timeout = 600           # seconds a round waits for replies (strategy.round_timeout)
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.validate import RELEASE_MAXIMA

FILE_NAME = "coordinator.toml"
DEFAULT_LISTEN = "0.0.0.0:9092"
DEFAULT_SUPERLINK_PORT = 9093
DEFAULT_ROUND_TIMEOUT = 600
LOOPBACK_NAMES = ("localhost", "127.0.0.1")  # always SANs: the fence and `flwr` reach the SuperLink by them
_SECTIONS = {"coordinator": ("hosts",), "superlink": ("address",), "fence": ("listen",), "runs": ("round_timeout",)}


class SettingsError(ValueError):
    """coordinator.toml (or a command-line value meant for it) is missing, malformed or out of range."""


@dataclass(frozen=True)
class Address:
    """A TCP address: host (name or IP, no brackets) and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class CoordinatorSettings:
    """The coordinator's settings (see the module docstring for the file they come from)."""

    hosts: tuple[str, ...]
    superlink: Address
    fence: Address
    round_timeout: float  # seconds

    def to_toml(self) -> str:
        """The settings as coordinator.toml text (what `coordinator init` writes)."""
        return (f"# fedclinic coordinator settings; see docs/deployment.md\n"
                f"[coordinator]\n# SANs of certs/server.pem (re-issue it after a change: fedclinic coordinator "
                f"renew-cert)\nhosts = [{', '.join(json.dumps(h) for h in self.hosts)}]\n\n"
                f"[superlink]\n# every Flower API (Fleet, Control, Runtime); loopback only\n"
                f"address = {json.dumps(str(self.superlink))}\n\n"
                f"[fence]\n# the only site-facing listener: nginx passes /v1/fleet/* and refuses the rest\n"
                f"listen = {json.dumps(str(self.fence))}\n\n"
                f"[runs]\n# seconds a round waits for the sites' replies\n"
                f"round_timeout = {self.round_timeout:g}\n")


def parse_address(text: object, where: str) -> Address:
    """'HOST:PORT' or '[IPv6]:PORT' -> Address. Raises SettingsError naming `where`."""
    if not isinstance(text, str):
        raise SettingsError(f"{where}: expected HOST:PORT as a string")
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c in host for c in " /[]"):
        raise SettingsError(f"{where}: expected HOST:PORT with a port in 1-65535 (got {text!r})")
    return Address(host, int(port))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IPs (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_settings(hosts: list[str], listen: str, superlink_port: int,
                  round_timeout: float = DEFAULT_ROUND_TIMEOUT) -> CoordinatorSettings:
    """Settings from `coordinator init` arguments; the loopback names are always added to hosts."""
    unique = list(dict.fromkeys([*hosts, *LOOPBACK_NAMES]))
    return _checked(CoordinatorSettings(tuple(unique), parse_address(f"127.0.0.1:{superlink_port}", "--superlink-port"),
                                        parse_address(listen, "--listen"), float(round_timeout)), "coordinator init")


def load_settings(path: Path) -> CoordinatorSettings:
    """Read and check coordinator.toml. Raises SettingsError naming the file and the field."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SettingsError(f"{path}: not found. Run the command in the coordinator folder or name it with "
                            "--dir DIR; to make one: `fedclinic coordinator init DIR --host NAME`") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from exc
    for section, keys in _SECTIONS.items():
        table = raw.get(section)
        if not isinstance(table, dict):
            raise SettingsError(f"{path}: [{section}] is missing")
        for key in set(table) - set(keys):
            raise SettingsError(f"{path}: [{section}] {key}: unknown key (known: {', '.join(keys)})")
    for section in set(raw) - set(_SECTIONS):
        raise SettingsError(f"{path}: [{section}]: unknown section (known: {', '.join(_SECTIONS)})")
    hosts = _value(raw, "coordinator", "hosts", path)
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise SettingsError(f"{path}: [coordinator] hosts: expected a non-empty list of host names or IPs")
    timeout = _value(raw, "runs", "round_timeout", path)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise SettingsError(f"{path}: [runs] round_timeout: expected a number of seconds")
    settings = CoordinatorSettings(
        tuple(hosts), parse_address(_value(raw, "superlink", "address", path), f"{path}: [superlink] address"),
        parse_address(_value(raw, "fence", "listen", path), f"{path}: [fence] listen"), float(timeout))
    return _checked(settings, str(path))


def _value(raw: dict[str, Any], section: str, key: str, path: Path) -> Any:
    if key not in raw[section]:
        raise SettingsError(f"{path}: [{section}] {key}: missing")
    return raw[section][key]


def _checked(s: CoordinatorSettings, where: str) -> CoordinatorSettings:
    from server.deployment.certificates import CertificateError, subject_name
    for host in s.hosts:
        try:
            subject_name(host)
        except CertificateError as exc:
            raise SettingsError(f"{where}: [coordinator] hosts: {exc}".replace("--host ", "")) from exc
    if not is_loopback(s.superlink.host):
        raise SettingsError(f"{where}: [superlink] address: must be a loopback address such as 127.0.0.1 "
                            f"(got {s.superlink.host!r}); sites reach the coordinator through [fence] listen only")
    if s.superlink.port == s.fence.port and (is_loopback(s.fence.host) or s.fence.host in ("0.0.0.0", "::")):
        raise SettingsError(f"{where}: [fence] listen: port {s.fence.port} is the SuperLink's; choose another")
    high = RELEASE_MAXIMA["strategy.round_timeout"]
    if not 1 <= s.round_timeout <= high:
        raise SettingsError(f"{where}: [runs] round_timeout: must be in [1, {high:g}] seconds "
                            f"(got {s.round_timeout:g})")
    return s
