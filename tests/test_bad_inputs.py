"""Every entry of the bad-input corpus has its asserted outcome; a site with all of the
non-fatal ones at once still loads, checks as ready, and trains in a federated run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from client.site import site_settings
from client.site_data.loader import SiteDataError, load_site
from client.site_file import read_site_file
from configs.schema import ExperimentConfig
from synth.hospitals import write_hospitals
from bad_inputs import CORPUS, BadInput


@pytest.fixture(scope="module")
def clean_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    (site,) = write_hospitals(root, sites=1, patients=60, seed=11, image_size=32)
    return site


def load(site: Path, cfg: ExperimentConfig, cache: Path):  # noqa: ANN201
    s = site_settings({"data-path": str(site), "state-dir": str(cache)}, None)
    return load_site(s.data_dir, cfg.data, cache_dir=s.cache_dir, site_file=read_site_file(s.site_file, cfg.data))


def test_the_corpus_has_at_least_25_distinct_inputs() -> None:
    assert len({b.name for b in CORPUS}) == len(CORPUS) >= 25


@pytest.mark.parametrize("bad", CORPUS, ids=[b.name for b in CORPUS])
def test_bad_input_has_its_outcome(bad: BadInput, clean_site: Path, tmp_path: Path,
                                   experiment: ExperimentConfig) -> None:
    site = tmp_path / "site"
    shutil.copytree(clean_site, site)
    _, baseline = load(site, experiment, tmp_path / "state0")
    bad.mutate(site)
    if bad.fatal:
        with pytest.raises(SiteDataError) as err:
            load(site, experiment, tmp_path / "state")
        assert bad.fatal in str(err.value)
        return
    arrays, report = load(site, experiment, tmp_path / "state")
    field, key = bad.counted  # type: ignore[misc]
    assert getattr(report, field)[key] >= 1, dict(getattr(report, field))
    assert getattr(baseline, field).get(key, 0) == 0
    assert report.usable_patients >= baseline.usable_patients - 2 and len(arrays.label) >= 50
