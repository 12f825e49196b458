"""A site's node.toml, parsed once into a frozen NodeSettings (see docs/deployment.md).

    [site]
    name = "site-a"                     # letters, digits and '-'
    data = "/abs/data/site-a"           # the read-only data export
    state = "/abs/state/site-a"         # ledger, cache, logs, audit.jsonl
    site-config = ""                    # optional; "" = <data>/site.yaml
    ledger-marks = ""                   # optional; the ledger's high-water marks ("" = the default store)
    [coordinator]
    address = "coord.example.org:9092"  # HOST:PORT of the coordinator's fence
    ca = "ca.crt"
    [node]
    key = "keys/site-a"
    runtime-port = 9094                 # loopback port of the SuperNode's runtime API
    approved-apps = "approved-apps.txt"

Relative paths resolve against the folder of node.toml. Unknown tables or keys are errors.
Every error is a NodeSettingsError naming the file and the field.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

SITE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
NODE_TOML = "node.toml"
KEYS: Mapping[str, Mapping[str, type]] = MappingProxyType({
    "site": MappingProxyType({"name": str, "data": str, "state": str, "site-config": str,
                              "ledger-marks": str}),
    "coordinator": MappingProxyType({"address": str, "ca": str}),
    "node": MappingProxyType({"key": str, "runtime-port": int, "approved-apps": str}),
})
OPTIONAL = frozenset({("site", "site-config"), ("site", "ledger-marks")})


class NodeSettingsError(ValueError):
    """node.toml (or a value meant for it) is missing, malformed or names something that is not there."""


@dataclass(frozen=True)
class NodeSettings:
    """Who the site is, where its files are, and how it reaches the coordinator (absolute paths)."""

    file: Path
    name: str
    data: Path
    state: Path
    site_config: Path | None
    coordinator: str
    ca: Path
    key: Path
    runtime_port: int
    approved_apps: Path
    ledger_marks: Path | None = None  # None: FEDCLINIC_LEDGER_MARK_DIR, else ~/.local/state/fedclinic/ledger-marks

    @property
    def audit_log(self) -> Path:
        return self.state / "audit.jsonl"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def flwr_home(self) -> Path:
        """FLWR_HOME of this site's SuperNode and runner (Flower's own files only)."""
        return self.state / "flwr-home"

    @property
    def pid_file(self) -> Path:
        return self.state / "site.pid"

    @property
    def runtime_address(self) -> str:
        return f"127.0.0.1:{self.runtime_port}"

    def node_config(self) -> dict[str, str]:
        """The SuperNode's node config, as client/site.py `site_settings` reads it."""
        config = {"data-path": str(self.data), "site-name": self.name, "state-dir": str(self.state)}
        if self.site_config is not None:
            config["site-config"] = str(self.site_config)
        if self.ledger_marks is not None:
            config["ledger-mark-dir"] = str(self.ledger_marks)
        return config


def check_site_name(name: str, where: str) -> str:
    """`name` if it is 1-63 letters, digits and '-' (not at either end); else NodeSettingsError."""
    if not SITE_NAME.fullmatch(name):
        raise NodeSettingsError(f"{where}: {name!r} is not a site name: use 1-63 letters, digits and '-' "
                                "(not at the start or end), e.g. site-a")
    return name


def check_address(address: str, where: str) -> str:
    """`address` if it is HOST:PORT (a DNS name, IPv4, or [IPv6]) with a port 1-65535."""
    host, sep, port = address.rpartition(":")
    if not sep or not HOST.fullmatch(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise NodeSettingsError(f"{where}: {address!r} is not HOST:PORT (e.g. coord.example.org:9092 "
                                "or [2001:db8::1]:9092), with a port from 1 to 65535")
    return address


def check_port(port: object, where: str) -> int:
    """`port` if it is an int from 1 to 65535."""
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise NodeSettingsError(f"{where}: {port!r} is not a port number (1-65535)")
    return port


def node_toml_path(config: Path) -> Path:
    """CONFIG as given on the command line: node.toml itself, or the folder that holds it."""
    return config / NODE_TOML if config.is_dir() else config


def load_node_settings(config: Path) -> NodeSettings:
    """Parse `config` (node.toml, or its folder). Raises NodeSettingsError naming file and field."""
    path = node_toml_path(config).expanduser().absolute()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NodeSettingsError(f"{path}: not found (`fedclinic site init DIR ...` writes DIR/{NODE_TOML})") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NodeSettingsError(f"{path}: not readable TOML: {exc}") from None
    values = _checked_values(raw, path)
    folder = path.parent

    def resolve(key: str) -> Path:
        return (folder / Path(str(values[key])).expanduser()).resolve()

    return NodeSettings(
        file=path,
        name=check_site_name(str(values["site.name"]), f"{path}: [site] name"),
        data=resolve("site.data"), state=resolve("site.state"),
        site_config=resolve("site.site-config") if values.get("site.site-config") else None,
        coordinator=check_address(str(values["coordinator.address"]), f"{path}: [coordinator] address"),
        ca=resolve("coordinator.ca"), key=resolve("node.key"),
        runtime_port=check_port(values["node.runtime-port"], f"{path}: [node] runtime-port"),
        approved_apps=resolve("node.approved-apps"),
        ledger_marks=resolve("site.ledger-marks") if values.get("site.ledger-marks") else None)


def _checked_values(raw: dict[str, object], path: Path) -> dict[str, object]:
    """{"table.key": value} with every table and key known, present (unless optional) and typed."""
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise NodeSettingsError(f"{path}: unknown table [{unknown[0]}]; the tables are "
                                + ", ".join(f"[{t}]" for t in KEYS))
    values: dict[str, object] = {}
    for table, keys in KEYS.items():
        section = raw.get(table)
        if not isinstance(section, dict):
            raise NodeSettingsError(f"{path}: [{table}] is missing; it needs " + ", ".join(keys))
        for key in sorted(set(section) - set(keys)):
            raise NodeSettingsError(f"{path}: [{table}] {key}: unknown key; the keys are " + ", ".join(keys))
        for key, kind in keys.items():
            if key not in section:
                if (table, key) in OPTIONAL:
                    continue
                raise NodeSettingsError(f"{path}: [{table}] {key} is missing")
            value = section[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise NodeSettingsError(f"{path}: [{table}] {key}: expected a {kind.__name__}, got {value!r}")
            if kind is str and not value and (table, key) not in OPTIONAL:
                raise NodeSettingsError(f"{path}: [{table}] {key} is empty")
            values[f"{table}.{key}"] = value
    return values


def require_files(settings: NodeSettings) -> None:
    """Raise NodeSettingsError naming the field of the first file or folder that is not there."""
    where = settings.file
    checks = [("[site] data", settings.data, True), ("[coordinator] ca", settings.ca, False),
              ("[node] key", settings.key, False), ("[node] approved-apps", settings.approved_apps, False)]
    if settings.site_config is not None:
        checks.append(("[site] site-config", settings.site_config, False))
    for field, target, folder in checks:
        if not (target.is_dir() if folder else target.is_file()):
            kind = "folder" if folder else "file"
            raise NodeSettingsError(f"{where}: {field}: {target} is not a {kind}")


def render_node_toml(settings: NodeSettings, relative_to: Path) -> str:
    """node.toml text for `settings`; paths under `relative_to` are written relative to it."""
    def text(path: Path | None) -> str:
        if path is None:
            return toml_string("")
        return toml_string(path.relative_to(relative_to).as_posix() if path.is_relative_to(relative_to)
                           else str(path))

    return (f"# fedclinic site node: written by `fedclinic site init`; see docs/deployment.md\n"
            f"[site]\nname = {toml_string(settings.name)}\ndata = {toml_string(str(settings.data))}\n"
            f"state = {toml_string(str(settings.state))}\nsite-config = {text(settings.site_config)}\n"
            f"# the privacy ledger's high-water marks: a folder that restoring the state folder does not reach\n"
            f"# (\"\" = FEDCLINIC_LEDGER_MARK_DIR, else ~/.local/state/fedclinic/ledger-marks of the service user)\n"
            f"ledger-marks = {text(settings.ledger_marks)}\n\n"
            f"[coordinator]\naddress = {toml_string(settings.coordinator)}\nca = {text(settings.ca)}\n\n"
            f"[node]\nkey = {text(settings.key)}\nruntime-port = {settings.runtime_port}\n"
            f"approved-apps = {text(settings.approved_apps)}\n")


def toml_string(value: str) -> str:
    """`value` as a TOML basic string (JSON's escapes are a subset of TOML's; DEL is escaped too)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def render_flat_toml(values: dict[str, str]) -> str:
    """`key = "value"` lines (keys are Flower node-config names: letters, digits, '-')."""
    return "".join(f"{key} = {toml_string(value)}\n" for key, value in values.items())
