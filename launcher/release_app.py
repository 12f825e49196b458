"""The installed fedclinic release as a Flower app bundle (FAB), reproducibly.

A site approves code by the SHA-256 of the bundle a coordinator submits. For that hash to mean
"this fedclinic release", the bundle must be the same bytes wherever the same release is
installed: at the coordinator that submits it and at every site that approves it. So the bundle
is built from the installed packages only (never from a working folder with stray files), with a
generated, fixed `pyproject.toml`, by Flower's own builder (`flwr.cli.build.build_fab_from_files`,
which sorts the files and stamps every zip entry with one fixed date).

`flwr run FOLDER` on a folder written by `write_release_app` builds the same bytes, so
`fedclinic run --federation` submits exactly the bundle whose hash the sites approved.
"""

from __future__ import annotations

import hashlib
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# What the ServerApp and the ClientApp import. Launcher, synth and tests never run inside an app.
APP_PACKAGES = ("client", "configs", "model", "privacy", "server", "storage")
APP_SUFFIXES = (".py", ".yaml")

PYPROJECT = """\
[project]
name = "fedclinic"
version = "{version}"
description = "fedclinic release app bundle (built by fedclinic.launcher.release_app)"

[tool.flwr.app]
publisher = "fedclinic"

[tool.flwr.app.components]
serverapp = "server.app:app"
clientapp = "client.app:app"

[tool.flwr.app.config]
overrides = ""
resume = false
"""


def release_version() -> str:
    """The installed fedclinic version (`0.0.0` when run from an uninstalled source tree)."""
    try:
        return version("fedclinic")
    except PackageNotFoundError:
        return "0.0.0"


def release_files() -> dict[str, bytes]:
    """{posix path inside the bundle: content} for the installed release.

    Holds `pyproject.toml` (generated) and every `*.py` / `*.yaml` file of APP_PACKAGES, as
    installed (caches excluded).
    """
    files = {"pyproject.toml": PYPROJECT.format(version=release_version()).encode()}
    for name in APP_PACKAGES:
        package_file = import_module(name).__file__
        if package_file is None:
            raise RuntimeError(f"package {name!r} has no __file__; install fedclinic as a regular package")
        root = Path(package_file).resolve().parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in APP_SUFFIXES and "__pycache__" not in path.parts:
                files[f"{name}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return files


def release_fab() -> tuple[bytes, str]:
    """(the bundle's bytes, its SHA-256 in hex): the hash sites put on their allow-list."""
    from flwr.cli.build import build_fab_from_files

    fab, _ = build_fab_from_files(release_files())
    return fab, hashlib.sha256(fab).hexdigest()


def write_release_app(folder: Path) -> str:
    """Write the release's files into the empty or missing `folder`; returns the bundle's SHA-256.

    Raises FileExistsError if `folder` holds anything already (a stray file would change the hash).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty; the release app needs an empty folder")
    for relative, content in release_files().items():
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return release_fab()[1]
