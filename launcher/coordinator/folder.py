"""The coordinator folder (docs/deployment.md): its layout, `coordinator init` and `renew-cert`.

    DIR/coordinator.toml   settings (server.deployment.coordinator_settings)
    DIR/certs/             ca.crt, ca.key (0600), server.pem, server.key (0600)
    DIR/state/             superlink.db, coordinator.pid, fence/ (nginx.conf, pid, temp)
    DIR/runs/              run folders written by the ServerApp
    DIR/logs/              superlink.log, fence-error.log, fence-access.log
    DIR/home/              FLWR_HOME of the SuperLink and of the `flwr` CLI (config.toml)
    DIR/audit.jsonl        the coordinator's audit log (storage.audit_log)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from server.deployment import certificates as pki
from server.deployment.coordinator_settings import FILE_NAME, CoordinatorSettings, load_settings, make_settings
from storage.atomic import write_atomic

CONNECTION = "fedclinic"  # the `flwr` CLI connection in DIR/home/config.toml
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}


@dataclass(frozen=True)
class CoordinatorFolder:
    """Paths inside one coordinator folder (absolute)."""

    root: Path

    @classmethod
    def at(cls, root: Path) -> CoordinatorFolder:
        return cls(root.expanduser().resolve())

    @property
    def settings_file(self) -> Path:
        return self.root / FILE_NAME

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.certs / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.certs / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.certs / "server.key"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def database(self) -> Path:
        return self.state / "superlink.db"

    @property
    def pid_file(self) -> Path:
        return self.state / "coordinator.pid"

    @property
    def fence(self) -> Path:
        return self.state / "fence"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def superlink_log(self) -> Path:
        return self.logs / "superlink.log"

    @property
    def fence_error_log(self) -> Path:
        return self.logs / "fence-error.log"

    @property
    def fence_access_log(self) -> Path:
        return self.logs / "fence-access.log"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    def settings(self) -> CoordinatorSettings:
        """coordinator.toml, checked (SettingsError names the file and field)."""
        return load_settings(self.settings_file)

    def flower_env(self) -> dict[str, str]:
        """The environment of every Flower process and `flwr` call of this coordinator (own FLWR_HOME,
        no telemetry, no update check, no runtime dependency installation)."""
        return {**os.environ, **FLOWER_ENV, "FLWR_HOME": str(self.home)}

    def make_dirs(self) -> None:
        """Create the folders the coordinator writes into (owner-only where keys or state live)."""
        for path, mode in ((self.root, 0o755), (self.certs, 0o700), (self.state, 0o700), (self.fence, 0o700),
                           (self.runs, 0o755), (self.logs, 0o750), (self.home, 0o700)):
            path.mkdir(mode=mode, parents=True, exist_ok=True)

    def write_flwr_connection(self, settings: CoordinatorSettings) -> Path:
        """(Re)write DIR/home/config.toml: the `flwr` connection CONNECTION to the loopback SuperLink,
        trusting only DIR/certs/ca.crt. Returns its path."""
        path = self.home / "config.toml"
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = (f'# written by fedclinic from {FILE_NAME}; rewritten before every fedclinic coordinator command\n'
                f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                f'address = "{settings.superlink}"\nroot-certificates = "{self.ca_cert}"\n')
        write_atomic(path, text.encode(), mode=0o600)
        return path


def init_folder(folder: CoordinatorFolder, hosts: list[str], listen: str, superlink_port: int) -> CoordinatorSettings:
    """`coordinator init`: settings, CA, server certificate and keys, the `flwr` connection.

    Raises FileExistsError naming the first file that exists already (nothing is written then),
    SettingsError / CertificateError for a bad host, address or port."""
    settings = make_settings(hosts, listen, superlink_port)
    for path in (folder.settings_file, folder.ca_cert, folder.ca_key, folder.server_cert, folder.server_key):
        if path.exists():
            raise FileExistsError(f"{path} exists; `coordinator init` never overwrites a coordinator folder "
                                  "(use another folder, or `coordinator renew-cert` for a new server certificate)")
    folder.make_dirs()
    ca_key, server_key = pki.new_key(), pki.new_key()
    ca_cert = pki.make_ca(ca_key)
    server_cert = pki.make_server_cert(server_key, settings.hosts, ca_cert, ca_key)
    pki.write_new_key(folder.ca_key, ca_key)
    pki.write_new_key(folder.server_key, server_key)
    pki.write_new_cert(folder.ca_cert, ca_cert)
    pki.write_new_cert(folder.server_cert, server_cert)
    fd = os.open(folder.settings_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(settings.to_toml())
    folder.write_flwr_connection(settings)
    return settings


def renew_server_cert(folder: CoordinatorFolder) -> pki.CertificateInfo:
    """Re-issue server.pem (and a new server.key) from ca.key for coordinator.toml's hosts, atomically.

    Raises CertificateError if the CA files cannot be read, SettingsError for a bad coordinator.toml."""
    settings = folder.settings()
    ca_cert, ca_key = pki.load_cert(folder.ca_cert), pki.load_private_key(folder.ca_key)
    key = pki.new_key()
    cert = pki.make_server_cert(key, settings.hosts, ca_cert, ca_key)
    pki.replace_cert_and_key(folder.server_cert, folder.server_key, cert, key)
    return pki.describe(cert)
