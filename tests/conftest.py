"""Shared fixtures: real configs composed from configs/, real synthetic sites on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs.load import load_experiment
from configs.schema import ExperimentConfig
from privacy.ledger_marks import MARK_DIR_ENV
from synth.hospitals import write_hospitals


@pytest.fixture(scope="session", autouse=True)
def ledger_mark_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ledgers' high-water marks go to a test folder, never the user's ~/.local/state
    (the environment variable reaches simulated sites and subprocesses too)."""
    folder = tmp_path_factory.mktemp("ledger-marks")
    before = os.environ.get(MARK_DIR_ENV)
    os.environ[MARK_DIR_ENV] = str(folder)
    yield folder
    if before is None:
        os.environ.pop(MARK_DIR_ENV, None)
    else:
        os.environ[MARK_DIR_ENV] = before


@pytest.fixture(scope="session")
def small_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic hospitals of 120 patients each, 32x32 DICOM (read-only for tests)."""
    root = tmp_path_factory.mktemp("sites")
    write_hospitals(root, sites=3, patients=120, seed=7, image_size=32)
    return root


@pytest.fixture(scope="session")
def experiment() -> ExperimentConfig:
    """The default experiment as composed from configs/."""
    return load_experiment([])


@pytest.fixture
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the running task's identity, as inside a SuperNode."""
    from flwr.supercore.task_identity import TaskIdentity
    for name, value in (("run_id", 1), ("task_id", 1), ("node_id", 1)):
        monkeypatch.setattr(TaskIdentity, f"_{name}", value)


@pytest.fixture
def site_copy(small_sites: Path, tmp_path: Path) -> Path:
    """A private, writable copy of synthetic site-a (tests may edit its site.yaml and tables)."""
    import shutil
    site = tmp_path / "site-a"
    shutil.copytree(small_sites / "site-a", site)
    return site
