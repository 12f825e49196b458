"""`fedclinic site init`: a site's node folder, made AT the site (its private key never leaves it).

    DIR/node.toml              settings (client/node/settings.py)
    DIR/keys/NAME              the SuperNode's EC P-384 private key, OpenSSH format, 0600 (O_EXCL)
    DIR/keys/NAME.pub          `ecdsa-sha2-nistp384 AAAA... NAME`: what the central team registers
    DIR/ca.crt                 the coordinator's CA certificate (checked to be a CA)
    DIR/approved-apps.txt      the SHA-256 of the installed release's app bundle

Nothing is overwritten: if any of these files exists, nothing is written.
Flower loads the key with `load_ssh_private_key` and requires a NIST EC curve
(flwr/cli/supernode/register.py, flwr/supernode/cli/flower_supernode.py).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.node.approved_apps import entry_line
from client.node.settings import (NODE_TOML, NodeSettings, NodeSettingsError, check_address, check_port,
                                  check_site_name, render_node_toml)
from launcher.release_app import release_fab, release_version

CA_FILE, APPROVED_FILE = "ca.crt", "approved-apps.txt"


@dataclass(frozen=True)
class SiteFolder:
    """What `init_site` wrote: the settings, the public key line and the approved release hash."""

    settings: NodeSettings
    public_key_file: Path
    public_key_line: str
    approved_hash: str


def read_ca_certificate(path: Path) -> bytes:
    """The PEM bytes of `path` if it is a currently valid CA certificate; else NodeSettingsError."""
    try:
        pem = path.read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
    except OSError as exc:
        raise NodeSettingsError(f"--ca {path}: cannot be read ({exc.strerror})") from None
    except ValueError:
        raise NodeSettingsError(f"--ca {path}: not a PEM certificate (the coordinator's ca.crt, "
                                "'-----BEGIN CERTIFICATE-----')") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise NodeSettingsError(f"--ca {path}: not a CA certificate (no BasicConstraints CA:TRUE); "
                                "ask the central team for their ca.crt, not the server certificate")
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
        raise NodeSettingsError(f"--ca {path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                                "ask the central team for their current ca.crt")
    return pem


def node_key_pair(name: str) -> tuple[bytes, str]:
    """(the private key in OpenSSH PEM, the public key line `ecdsa-sha2-nistp384 AAAA... NAME`)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} {name}"


def _write_new(path: Path, payload: bytes, mode: int) -> None:
    """Create `path` with `mode`; never replaces an existing file (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _settings(folder: Path, name: str, coordinator: str, data: Path, state: Path | None,
              site_config: Path | None, runtime_port: int) -> NodeSettings:
    check_site_name(name, "--name")
    check_address(coordinator, "--coordinator")
    check_port(runtime_port, "--runtime-port")
    data = data.expanduser().resolve()
    if not data.is_dir():
        raise NodeSettingsError(f"--data {data}: not a folder (the site's data export: labels.csv, ...)")
    if site_config is not None and not site_config.expanduser().is_file():
        raise NodeSettingsError(f"--site-config {site_config}: not a file")
    return NodeSettings(file=folder / NODE_TOML, name=name, data=data,
                        state=(state or folder / "state").expanduser().resolve(),
                        site_config=site_config.expanduser().resolve() if site_config else None,
                        coordinator=coordinator, ca=folder / CA_FILE, key=folder / "keys" / name,
                        runtime_port=runtime_port, approved_apps=folder / APPROVED_FILE)


def init_site(folder: Path, *, name: str, coordinator: str, ca: Path, data: Path, state: Path | None = None,
              site_config: Path | None = None, runtime_port: int = 9094) -> SiteFolder:
    """Write the node folder (see the module docstring). Raises NodeSettingsError for a bad
    argument and FileExistsError, before writing anything, if any of the files exists."""
    folder = folder.expanduser().resolve()
    settings = _settings(folder, name, coordinator, data, state, site_config, runtime_port)
    ca_pem = read_ca_certificate(ca.expanduser())
    public_file = settings.key.with_name(f"{name}.pub")
    for path in (settings.file, settings.key, public_file, settings.ca, settings.approved_apps):
        if path.exists():
            raise FileExistsError(f"{path} exists; `site init` never overwrites a site's files "
                                  "(use a new folder, or delete the old one deliberately)")
    settings.key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.state.mkdir(mode=0o700, parents=True, exist_ok=True)  # ledger, cache, logs: the site's only
    private, public_line = node_key_pair(name)
    _write_new(settings.key, private, 0o600)
    _write_new(public_file, (public_line + "\n").encode(), 0o644)
    _write_new(settings.ca, ca_pem, 0o644)
    digest = release_fab()[1]
    _write_new(settings.approved_apps, (
        "# App bundles (FAB) this site answers: one SHA-256 per line, '#' starts a comment.\n"
        "# The site always runs its INSTALLED fedclinic ClientApp; this list says which submitted\n"
        "# bundles it takes part in. Add one with `fedclinic site approve NODE_TOML HASH`.\n"
        + entry_line(digest, f"fedclinic {release_version()}, the release installed at site init")).encode(), 0o644)
    _write_new(settings.file, render_node_toml(settings, folder).encode(), 0o644)
    return SiteFolder(settings, public_file, public_line, digest)
