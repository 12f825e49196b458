"""The coordinator's PKI: a CA and the SuperLink/fence server certificate, made with `cryptography`.

Keys are EC P-384 (NIST SP 800-57 level 192; the curve Flower's SuperNode keys use too). The CA
has BasicConstraints CA:TRUE (path length 0) and KeyUsage keyCertSign + cRLSign; the server
certificate has the SANs given (DNS names and IP addresses), BasicConstraints CA:FALSE, KeyUsage
digitalSignature and EKU serverAuth. Validity: the CA CA_DAYS (10 years), the server certificate
SERVER_DAYS (825 days, the CA/Browser Forum's former ceiling for TLS server certificates).

Private keys are written once, owner-only (0600), with O_CREAT|O_EXCL: an existing file is never
overwritten, and a key is never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from storage.atomic import write_atomic

CA_DAYS = 3650
SERVER_DAYS = 825
WARN_DAYS = 30  # `certs inspect` warns when a certificate expires sooner than this
KEY_MODE = 0o600
CERT_MODE = 0o644
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")  # RFC 1123 host names

SubjectName = x509.DNSName | x509.IPAddress


class CertificateError(ValueError):
    """A host name, certificate or key that cannot be used (the message names it)."""


@dataclass(frozen=True)
class CertificateInfo:
    """What `fedclinic certs inspect` shows about one certificate."""

    subject: str
    issuer: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime  # UTC
    not_after: dt.datetime   # UTC
    sha256: str              # colon-separated upper-case hex of the DER encoding
    is_ca: bool

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Days until not_after (negative once expired)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        return (self.not_after - now).total_seconds() / 86400


def subject_name(host: str) -> SubjectName:
    """`host` as a SAN entry: an IP address (v4 or v6) or a DNS name (RFC 1123 labels).

    Raises CertificateError for anything else (a URL, a port, spaces, a wildcard)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(host) or host.replace(".", "").isdigit():
        raise CertificateError(f"--host {host!r}: expected a DNS name (e.g. coord.example.org) or an IP address")
    return x509.DNSName(host.lower())


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-384 private key."""
    return ec.generate_private_key(ec.SECP384R1())


def make_ca(key: ec.EllipticCurvePrivateKey, common_name: str = "fedclinic coordinator CA",
            days: int = CA_DAYS) -> x509.Certificate:
    """A self-signed CA certificate for `key`, valid from now (minus 5 minutes of clock skew)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA384()))


def make_server_cert(key: ec.EllipticCurvePrivateKey, hosts: tuple[str, ...], ca_cert: x509.Certificate,
                     ca_key: ec.EllipticCurvePrivateKey, days: int = SERVER_DAYS) -> x509.Certificate:
    """A TLS server certificate for `key` with SANs `hosts`, signed by the CA.

    Raises CertificateError if `hosts` is empty or holds a name that is not a host name or IP."""
    if not hosts:
        raise CertificateError("a server certificate needs at least one --host")
    sans = [subject_name(h) for h in hosts]
    now = dt.datetime.now(dt.timezone.utc)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))


def write_new_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write `key` as unencrypted PKCS#8 PEM to a NEW file, mode 0600.

    Raises FileExistsError if `path` exists (a key is never overwritten)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())


def write_new_cert(path: Path, cert: x509.Certificate) -> None:
    """Write `cert` as PEM to a NEW file (0644). Raises FileExistsError if `path` exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CERT_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))


def replace_cert_and_key(cert_path: Path, key_path: Path, cert: x509.Certificate,
                         key: ec.EllipticCurvePrivateKey) -> None:
    """Replace a certificate and its key, each by an atomic rename (the key first, 0600).

    Between the two renames a reader may see the new key with the old certificate; the
    coordinator reads both only when it starts, so renew while it is stopped (or restart it)."""
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    for path, payload, mode in ((key_path, pem_key, KEY_MODE),
                                (cert_path, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)):
        write_atomic(path, payload, mode=mode)


def load_cert(path: Path) -> x509.Certificate:
    """The first certificate of a PEM (or DER) file. Raises CertificateError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM or DER X.509 certificate") from exc


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An unencrypted EC private key from PEM. Raises CertificateError naming the file (never its content)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read ({exc.strerror})") from exc
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: not an EC private key")
    return key


def san_hosts(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's SANs as host strings (DNS names first, then IPs, in certificate order)."""
    info = describe(cert)
    return (*info.dns_names, *info.ip_addresses)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, as AA:BB:... (what `openssl x509 -fingerprint -sha256` prints)."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def describe(cert: x509.Certificate) -> CertificateInfo:
    """Subject, issuer, SANs, validity, fingerprint and CA flag of `cert`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertificateInfo(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
                           dns_names=dns, ip_addresses=ips, not_before=cert.not_valid_before_utc,
                           not_after=cert.not_valid_after_utc, sha256=fingerprint(cert), is_ca=is_ca)
