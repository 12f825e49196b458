"""The coordinator's PKI and settings: `coordinator init`, `renew-cert`, `certs inspect`, coordinator.toml."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from launcher.cli import main
from launcher.coordinator.folder import CoordinatorFolder
from server.deployment import certificates as pki
from server.deployment.coordinator_settings import SettingsError, load_settings


def _init(folder: Path, *extra: str) -> int:
    return main(["coordinator", "init", str(folder), "--host", "coord.example.org", "--host", "10.20.30.40",
                 "--listen", "127.0.0.1:19092", "--superlink-port", "19093", *extra])


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_init_writes_a_ca_and_a_server_certificate_for_the_hosts_with_private_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _init(tmp_path / "coord") == 0
    printed = capsys.readouterr().out
    folder = CoordinatorFolder.at(tmp_path / "coord")
    ca, server = pki.load_cert(folder.ca_cert), pki.load_cert(folder.server_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"coord.example.org", "localhost"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("10.20.30.40"),
                                                             ipaddress.ip_address("127.0.0.1")}
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    days = (server.not_valid_after_utc - server.not_valid_before_utc).days
    assert days == pki.SERVER_DAYS and (ca.not_valid_after_utc - ca.not_valid_before_utc).days == pki.CA_DAYS
    for key in (folder.ca_key, folder.server_key):
        assert _mode(key) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
        assert pki.load_private_key(key).curve.name == "secp384r1"
    assert _mode(folder.ca_cert) == 0o644
    assert "PRIVATE" not in printed and pki.fingerprint(ca) in printed
    settings = load_settings(folder.settings_file)
    assert str(settings.fence) == "127.0.0.1:19092" and str(settings.superlink) == "127.0.0.1:19093"
    assert settings.round_timeout == 600
    connection = (folder.home / "config.toml").read_text()
    assert 'address = "127.0.0.1:19093"' in connection and str(folder.ca_cert) in connection


@pytest.mark.parametrize("existing", ["coordinator.toml", "certs/ca.key", "certs/server.pem"])
def test_init_refuses_to_overwrite_any_file_of_a_coordinator_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str) -> None:
    target = tmp_path / "coord" / existing
    target.parent.mkdir(parents=True)
    target.write_text("kept")
    assert _init(tmp_path / "coord") == 2
    assert str(target) in capsys.readouterr().out
    assert target.read_text() == "kept"
    assert not (tmp_path / "coord" / "certs" / "server.key").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--host", "http://coord"], "expected a DNS name"), (["--host", "a b"], "expected a DNS name"),
    (["--host", "x", "--listen", "coord"], "--listen: expected HOST:PORT"),
    (["--host", "x", "--listen", "0.0.0.0:70000"], "--listen: expected HOST:PORT"),
])
def test_init_refuses_bad_hosts_and_addresses(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              args: list[str], message: str) -> None:
    assert main(["coordinator", "init", str(tmp_path / "c"), *args]) == 2
    assert message in capsys.readouterr().out
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("old", "new", "message"), [
    ('listen = "127.0.0.1:19092"', 'listen = "nonsense"', "[fence] listen: expected HOST:PORT"),
    ('address = "127.0.0.1:19093"', 'address = "0.0.0.0:19093"', "[superlink] address: must be a loopback address"),
    ("round_timeout = 600", "round_timeout = 0", "[runs] round_timeout: must be in [1, 86400]"),
    ("round_timeout = 600", 'round_timeout = "10"', "[runs] round_timeout: expected a number"),
    ("[runs]", "[run]", "[runs] is missing"),
    ("round_timeout = 600", "round_timeout = 600\nroundtimeout = 5", "[runs] roundtimeout: unknown key"),
])
def test_coordinator_toml_errors_name_the_file_and_the_field(tmp_path: Path, old: str, new: str,
                                                             message: str) -> None:
    _init(tmp_path / "coord")
    path = tmp_path / "coord" / "coordinator.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    with pytest.raises(SettingsError) as caught:
        load_settings(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def test_renew_cert_reissues_the_server_certificate_for_the_same_hosts_from_the_ca(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _init(tmp_path / "coord")
    folder = CoordinatorFolder.at(tmp_path / "coord")
    before, old_key = pki.load_cert(folder.server_cert), folder.server_key.read_bytes()
    assert main(["coordinator", "renew-cert", str(folder.root)]) == 0
    after = pki.load_cert(folder.server_cert)
    after.verify_directly_issued_by(pki.load_cert(folder.ca_cert))
    assert pki.san_hosts(after) == pki.san_hosts(before) and pki.fingerprint(after) != pki.fingerprint(before)
    assert folder.server_key.read_bytes() != old_key and _mode(folder.server_key) == 0o600
    assert after.public_key() == pki.load_private_key(folder.server_key).public_key()
    assert "PRIVATE" not in capsys.readouterr().out


def _short_lived(path: Path, days: float) -> x509.Certificate:
    ca_key, key = pki.new_key(), pki.new_key()
    ca = pki.make_ca(ca_key)
    cert = pki.make_server_cert(key, ("soon.example.org",), ca, ca_key, days=1)
    if days < 0:  # already expired: re-sign with a validity window in the past
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=10)).not_valid_after(now + dt.timedelta(days=days))
                .sign(ca_key, pki.hashes.SHA384()))
    pki.write_new_cert(path, cert)
    return cert


def test_inspect_prints_the_fingerprint_and_warns_within_30_days(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cert = _short_lived(tmp_path / "soon.pem", days=1)
    assert main(["certs", "inspect", str(tmp_path / "soon.pem")]) == 0
    out = capsys.readouterr().out
    assert pki.fingerprint(cert) in out and "DNS:soon.example.org" in out and "CA:          no" in out
    assert "WARNING: expires in" in out


def test_inspect_of_a_ca_does_not_warn_and_an_expired_certificate_fails(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    _init(tmp_path / "coord")
    assert main(["certs", "inspect", str(tmp_path / "coord" / "certs" / "ca.crt")]) == 0
    out = capsys.readouterr().out
    assert "CA:          yes" in out and "WARNING" not in out and "EXPIRED" not in out
    _short_lived(tmp_path / "old.pem", days=-2)
    assert main(["certs", "inspect", str(tmp_path / "old.pem")]) == 1
    assert "EXPIRED" in capsys.readouterr().out
    (tmp_path / "junk.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    assert main(["certs", "inspect", str(tmp_path / "junk.pem")]) == 2
    assert "not a PEM or DER X.509 certificate" in capsys.readouterr().out
