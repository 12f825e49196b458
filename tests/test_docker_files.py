"""Static checks of docker/: the hardening a site relies on must not erode in an edit.

The images themselves are built and checked by docker/build-images.sh (buildah, in CI).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
COMPOSE_FILES = ("site.compose.yaml", "demo.compose.yaml")


def _services(name: str) -> dict[str, dict]:
    return yaml.safe_load((DOCKER / name).read_text())["services"]


def _all_services() -> list[tuple[str, str, dict]]:
    return [(f, s, spec) for f in COMPOSE_FILES for s, spec in _services(f).items()]


def _mounts(spec: dict) -> dict[str, dict]:
    """Mount target -> {"source", "read_only"}, from the short and the long syntax."""
    found = {}
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            found[target] = {"source": source, "read_only": mode == ["ro"]}
        else:
            found[volume["target"]] = {"source": volume["source"], "read_only": bool(volume.get("read_only"))}
    return found


def _runs_a_site(spec: dict) -> bool:
    return spec.get("command", [])[:2] == ["site", "start"]


@pytest.mark.parametrize(("file", "service", "spec"), _all_services(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_container_is_non_root_read_only_and_without_privileges(file: str, service: str, spec: dict) -> None:
    uid = str(spec.get("user", "")).split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"{file}: {service} must run as a numeric non-root user"
    assert spec.get("read_only") is True, f"{file}: {service} needs read_only: true"
    assert spec.get("cap_drop") == ["ALL"], f"{file}: {service} must drop all capabilities"
    assert "no-new-privileges:true" in spec.get("security_opt", []), f"{file}: {service}"
    assert not spec.get("privileged") and spec.get("network_mode") != "host", f"{file}: {service}"
    assert any(t.split(":")[0] == "/tmp" for t in spec.get("tmpfs", [])), f"{file}: {service} needs a /tmp tmpfs"
    assert all(m["read_only"] for target, m in _mounts(spec).items() if target == "/data"), (
        f"{file}: {service} must mount the site's data read-only"
    )


@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_nothing_is_published_on_the_host(file: str) -> None:
    """Sites only dial out; the demo's coordinator is reached on an internal network."""
    assert {s: spec["ports"] for s, spec in _services(file).items() if spec.get("ports")} == {}


def test_a_running_site_gets_its_keys_read_only_limits_and_a_separate_ledger_mark_volume() -> None:
    sites = [(f, s, spec) for f, s, spec in _all_services() if _runs_a_site(spec)]
    assert {s for _, s, _ in sites} == {"site", "site-a", "site-b", "site-c"}
    for file, service, spec in sites:
        mounts = _mounts(spec)
        assert mounts["/site"]["read_only"], f"{file}: {service}: node.toml and keys read-only"
        assert mounts["/data"]["read_only"], f"{file}: {service}: data read-only"
        assert spec["environment"]["FEDCLINIC_LEDGER_MARK_DIR"] == "/ledger-marks"
        assert mounts["/ledger-marks"]["source"] != mounts["/state"]["source"]
        assert not mounts["/state"]["read_only"] and not mounts["/ledger-marks"]["read_only"]
        assert {"mem_limit", "memswap_limit", "pids_limit", "cpus"} <= spec.keys(), f"{file}: {service}"
        assert any(t.split(":")[0] == "/home/fedclinic" for t in spec["tmpfs"]), "FLWR_HOME on a tmpfs"


def test_the_demo_sites_get_the_ca_certificate_and_never_the_coordinator_folder() -> None:
    services = _services("demo.compose.yaml")
    for name, spec in services.items():
        if name.startswith("site-"):
            assert "coordinator" not in {m["source"] for m in _mounts(spec).values()}, name
    assert yaml.safe_load((DOCKER / "demo.compose.yaml").read_text())["networks"]["fleet"]["internal"] is True


def test_the_dockerfile_has_both_targets_non_root_and_the_contract_commands() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    by_name = {stage.split("\n", 1)[0].split(" AS ")[-1].strip(): stage for stage in stages}
    assert {"site", "coordinator"} <= by_name.keys()
    for target in ("site", "coordinator"):
        user = re.findall(r"^USER (\S+)", by_name[target], flags=re.M)
        assert user and user[-1].split(":")[0] not in ("0", "root"), target
    assert 'CMD ["site", "start", "/site/node.toml"]' in by_name["site"]
    assert 'CMD ["coordinator", "start", "/coordinator"]' in by_name["coordinator"]
    assert "apt-get install -y --no-install-recommends nginx" in by_name["coordinator"]
    assert not re.search(r"^(ADD|COPY) .*\.(key|pem)\b", text, flags=re.M), "no key or certificate in an image"


def test_the_build_context_leaves_out_environments_data_and_secrets_but_not_the_packages() -> None:
    ignored = {line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()}
    assert {".venv", ".git", "data", "runs", "keys", "certs", "**/*.key", "**/*.pem"} <= ignored
    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert not packages & ignored and "docker" not in ignored and "pyproject.toml" not in ignored


def test_the_old_shared_dev_certificate_script_is_gone() -> None:
    """Every key is made where it is used (`coordinator init`, `site init`), never in one place."""
    assert not (DOCKER / "make-dev-certs.sh").exists() and not (DOCKER / "compose.yaml").exists()
    texts = [p for p in DOCKER.rglob("*") if p.is_file()] + [DOCKER.parent / "README.md"]
    assert [p.name for p in texts if "make-dev-certs" in p.read_text(errors="replace")] == []
