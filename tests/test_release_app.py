"""The release app bundle: the hash a site approves is the hash `flwr run` submits."""

from __future__ import annotations

import hashlib
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from launcher.release_app import release_fab, write_release_app


def test_the_bundle_is_the_same_bytes_every_time_and_from_its_folder(tmp_path: Path) -> None:
    fab, digest = release_fab()
    assert hashlib.sha256(fab).hexdigest() == digest
    assert release_fab()[1] == digest
    assert write_release_app(tmp_path / "app") == digest
    assert hashlib.sha256(build_fab_from_disk(tmp_path / "app")).hexdigest() == digest


def test_the_bundle_holds_the_app_packages_and_no_tests_data_or_launcher() -> None:
    names = zipfile.ZipFile(BytesIO(release_fab()[0])).namelist()
    assert "client/app.py" in names and "server/app.py" in names and "configs/config.yaml" in names
    assert not [n for n in names if n.startswith(("launcher/", "tests/", "synth/")) or n.endswith((".csv", ".pt"))]


def test_a_stray_file_would_change_the_hash_so_the_folder_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "extra.py").write_text("print('not the release')\n")
    with pytest.raises(FileExistsError, match="not empty"):
        write_release_app(tmp_path / "app")
