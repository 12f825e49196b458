"""A site's node folder: `site init` (key pair made here, CA, node.toml, allow-list), node.toml
parsing, the allow-list, `site approve` and `site audit`. The processes are in test_site_gate.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.node.approved_apps import AllowListError, append_entry, parse_allow_list, read_allow_list
from client.node.settings import NodeSettingsError, load_node_settings
from launcher.release_app import release_fab
from launcher.site.initialize import init_site
from pki import make_pki
from storage.audit_log import read_events

HASH_A, HASH_B = "a" * 64, "0123456789abcdef" * 4


def fedclinic(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def node(tmp_path: Path, pki: dict[str, Path]) -> Path:
    """A node folder made by `site init` (data: an empty folder; nothing here reads it)."""
    (tmp_path / "data").mkdir()
    init_site(tmp_path / "node", name="site-a", coordinator="coord.example.org:9092", ca=pki["ca.crt"],
              data=tmp_path / "data")
    return tmp_path / "node"


def test_the_allow_list_takes_hashes_and_comments_and_names_the_file_and_line_of_a_bad_entry(tmp_path: Path) -> None:
    source = tmp_path / "approved-apps.txt"
    text = f"# releases\n\n{HASH_A}\n  {HASH_B}   # fedclinic 0.2 (approved 2026-01-01)\n"
    assert parse_allow_list(text, source) == {HASH_A, HASH_B}
    for bad in (HASH_A.upper(), HASH_A[:-1], HASH_A + "0", f"{HASH_A} {HASH_B}", "sha256:" + HASH_A, "fedclinic"):
        with pytest.raises(AllowListError, match=rf"approved-apps.txt line 3: .*not a SHA-256"):
            parse_allow_list(f"# ok\n{HASH_A}\n{bad}\n{HASH_B}\n", source)
    with pytest.raises(AllowListError, match="no allow-list"):
        read_allow_list(tmp_path / "missing.txt")


def test_approving_appends_a_dated_comment_once_and_refuses_what_is_not_a_hash(tmp_path: Path) -> None:
    path = tmp_path / "approved-apps.txt"
    path.write_text(f"{HASH_A}")  # no final newline: the entry goes on a line of its own
    assert append_entry(path, HASH_B.upper(), "fedclinic 0.2\nfrom the announcement") is True
    assert append_entry(path, HASH_B, "again") is False
    lines = path.read_text().splitlines()
    assert lines[0] == HASH_A and lines[1].startswith(f"{HASH_B}  # fedclinic 0.2 from the announcement (approved ")
    assert read_allow_list(path) == {HASH_A, HASH_B}
    with pytest.raises(AllowListError, match="64 hex digits"):
        append_entry(path, "abc", "short")


def test_init_writes_a_node_folder_whose_key_is_private_and_whose_allow_list_holds_the_installed_release(
        node: Path, tmp_path: Path) -> None:
    settings = load_node_settings(node)  # the folder or node.toml itself
    assert settings == load_node_settings(node / "node.toml")
    assert (settings.name, settings.coordinator, settings.runtime_port) == ("site-a", "coord.example.org:9092", 9094)
    assert settings.key == node / "keys" / "site-a" and settings.ca == node / "ca.crt"
    assert settings.data == (tmp_path / "data").resolve() and settings.state == node / "state"
    assert settings.site_config is None and "site-config" not in settings.node_config()
    assert read_allow_list(settings.approved_apps) == {release_fab()[1]}
    assert "fedclinic" in settings.approved_apps.read_text().splitlines()[-1]  # which release it is
    assert stat.S_IMODE(os.stat(settings.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(settings.key.parent).st_mode) == 0o700
    private = serialization.load_ssh_private_key(settings.key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(private.curve, ec.SECP384R1)
    kind, blob, comment = (node / "keys" / "site-a.pub").read_text().split()
    assert (kind, comment) == ("ecdsa-sha2-nistp384", "site-a")
    public = serialization.load_ssh_public_key(f"{kind} {blob}".encode())
    assert public == private.public_key()
    (event,) = read_events(settings.audit_log).events if settings.audit_log.exists() else (None,)
    assert event is None  # init_site itself writes no event; the CLI does (below)


def test_init_never_overwrites_a_site_and_checks_what_it_is_given(node: Path, tmp_path: Path,
                                                                  pki: dict[str, Path]) -> None:
    before = {p: p.read_bytes() for p in node.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="never overwrites"):
        init_site(node, name="site-a", coordinator="coord:9092", ca=pki["ca.crt"], data=tmp_path / "data")
    assert {p: p.read_bytes() for p in node.rglob("*") if p.is_file()} == before
    fresh = tmp_path / "fresh"
    cases = [({"name": "site_a"}, "--name"), ({"name": "-a"}, "--name"), ({"coordinator": "coord"}, "--coordinator"),
             ({"coordinator": "coord:99999"}, "--coordinator"), ({"coordinator": "http://c:1"}, "--coordinator"),
             ({"data": tmp_path / "nowhere"}, "--data"), ({"ca": pki["server.pem"]}, "not a CA"),
             ({"ca": pki["server.key"]}, "not a PEM certificate")]
    for change, message in cases:
        args = {"name": "site-b", "coordinator": "[::1]:9092", "ca": pki["ca.crt"], "data": tmp_path / "data", **change}
        with pytest.raises(NodeSettingsError, match=message):
            init_site(fresh, **args)  # type: ignore[arg-type]
        assert not fresh.exists()


NODE_TOML = """[site]
name = "site-a"
data = "../data"
state = "state"
[coordinator]
address = "coord.example.org:9092"
ca = "ca.crt"
[node]
key = "keys/site-a"
runtime-port = 9094
approved-apps = "approved-apps.txt"
"""


@pytest.mark.parametrize(("edit", "message"), [
    (("[site]\n", "[site]\ncolour = \"red\"\n"), r"\[site\] colour: unknown key"),
    (("[node]\n", "[nodes]\nkey = 1\n[node]\n"), r"unknown table \[nodes\]"),
    (("name = \"site-a\"\n", ""), r"\[site\] name is missing"),
    (("runtime-port = 9094", "runtime-port = \"9094\""), r"\[node\] runtime-port: expected a int"),
    (("runtime-port = 9094", "runtime-port = 0"), r"\[node\] runtime-port: 0 is not a port"),
    (("coord.example.org:9092", "coord.example.org"), r"\[coordinator\] address: 'coord.example.org' is not HOST:PORT"),
    (("name = \"site-a\"", "name = \"site a\""), r"\[site\] name: 'site a' is not a site name"),
    (("ca = \"ca.crt\"", "ca = \"\""), r"\[coordinator\] ca is empty"),
    (("[coordinator]", "[coordinator"), "not readable TOML"),
])
def test_node_toml_errors_name_the_file_and_the_field(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE_TOML.replace(*edit))
    with pytest.raises(NodeSettingsError, match=message) as caught:
        load_node_settings(path)
    assert str(caught.value).startswith(str(path))


def test_node_toml_paths_resolve_against_its_folder(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "node.toml").write_text(NODE_TOML.replace('site-config', 'x'))
    settings = load_node_settings(tmp_path / "etc")
    assert settings.data == tmp_path / "data" and settings.state == tmp_path / "etc" / "state"
    assert settings.key == tmp_path / "etc" / "keys" / "site-a"
    assert settings.node_config() == {"data-path": str(tmp_path / "data"), "site-name": "site-a",
                                      "state-dir": str(tmp_path / "etc" / "state")}
    with pytest.raises(NodeSettingsError, match=r"node.toml: not found"):
        load_node_settings(tmp_path / "elsewhere" / "node.toml")


def test_the_cli_prints_the_public_key_to_send_and_approve_and_audit_record_what_was_done(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    (tmp_path / "data").mkdir()
    made = fedclinic("site", "init", str(tmp_path / "node"), "--name", "site-c", "--coordinator", "localhost:9092",
                     "--ca", str(pki["ca.crt"]), "--data", str(tmp_path / "data"))
    assert made.returncode == 0, made.stdout + made.stderr
    public = (tmp_path / "node" / "keys" / "site-c.pub").read_text().strip()
    assert public in made.stdout.splitlines() and "send site-c and this public key to the central team" in made.stdout
    assert "PRIVATE KEY" not in made.stdout + made.stderr
    again = fedclinic("site", "init", str(tmp_path / "node"), "--name", "site-c", "--coordinator", "localhost:9092",
                      "--ca", str(pki["ca.crt"]), "--data", str(tmp_path / "data"))
    assert again.returncode == 2 and "never overwrites" in again.stdout
    bad = fedclinic("site", "approve", str(tmp_path / "node"), "xyz")
    assert bad.returncode == 2 and "not a SHA-256 hash" in bad.stdout
    assert fedclinic("site", "approve", str(tmp_path / "node"), HASH_B, "--note", "fedclinic 0.2").returncode == 0
    audit = fedclinic("site", "audit", str(tmp_path / "node"))
    assert audit.returncode == 0 and "site-initialized" in audit.stdout and f"app-approved" in audit.stdout
    assert HASH_B in audit.stdout and release_fab()[1] in audit.stdout
    broken = tmp_path / "node" / "approved-apps.txt"
    broken.write_text(broken.read_text() + "not-a-hash\n")
    started = fedclinic("site", "start", str(tmp_path / "node"))
    assert started.returncode == 2 and f"{broken} line 6" in started.stdout  # 3 comments, 2 hashes
