"""Shared fixtures: real configs composed from configs/, real synthetic sites on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs.load import load_experiment
from configs.schema import ExperimentConfig
from synth.hospitals import write_hospitals


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
