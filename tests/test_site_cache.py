"""The per-process SiteCache: a site is loaded once while its files and settings stay the same,
and loaded again as soon as anything it reads changes."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from client.site_data.site_cache import SiteCache
from client.site_data.fingerprint import folder_fingerprint
from client.site_data.loader import load_site
from client.site_data.snapshot import SNAPSHOT_FILE
from client.site_round import SiteJob, prepare
from configs.parse import ConfigError
from messages import SMALL_RUN, exchanged, initial_weights
from site_yaml import set_sections


def job(site: Path, state: Path, cache: SiteCache | None) -> SiteJob:
    node = {"data-path": str(site), "state-dir": str(state)}
    return prepare(SMALL_RUN, node, exchanged(initial_weights(SMALL_RUN)), cache)


def same_arrays(a: object, b: object) -> bool:
    return all(np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))  # type: ignore[arg-type]


def test_fingerprint_sees_every_kind_of_change_and_ignores_the_excluded_state(site_copy: Path) -> None:
    state = site_copy / "state-inside"
    state.mkdir()
    before = folder_fingerprint(site_copy, exclude=[state])
    assert folder_fingerprint(site_copy, exclude=[state]) == before
    (state / "ledger").write_text("x")  # the site writes its state folder every message
    assert folder_fingerprint(site_copy, exclude=[state]) == before
    image = next((site_copy / "images").rglob("*.dcm"))
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF
    image.write_bytes(bytes(data))  # same size, and the modification time put back
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.stat().st_mtime_ns == st.st_mtime_ns and image.stat().st_size == st.st_size
    changed = folder_fingerprint(site_copy, exclude=[state])
    assert changed != before
    (site_copy / "images" / "new.dcm").write_bytes(b"")
    assert folder_fingerprint(site_copy, exclude=[state]) != changed


def test_a_site_is_loaded_once_and_again_when_a_file_changes(site_copy: Path, tmp_path: Path) -> None:
    cache = SiteCache()
    first = job(site_copy, tmp_path / "state", cache)
    assert job(site_copy, tmp_path / "state", cache).arrays is first.arrays  # not loaded again
    assert not first.arrays.image.flags.writeable  # no message can change what the next one sees
    labels = site_copy / "labels.csv"
    rows = labels.read_text().splitlines()
    flipped = [rows[0]] + [r[:-1] + ("1" if r.endswith("0") else "0") if i < 10 else r
                           for i, r in enumerate(rows[1:])]
    labels.write_text("\n".join(flipped) + "\n")
    after = job(site_copy, tmp_path / "state", cache)
    assert after.arrays is not first.arrays and not np.array_equal(after.arrays.label, first.arrays.label)
    fresh, _ = load_site(site_copy, after.cfg.data, cache_dir=tmp_path / "state" / "cache", site_file=after.site_file)
    assert same_arrays(after.arrays, fresh)


def test_a_changed_site_yaml_is_a_new_load(site_copy: Path, tmp_path: Path) -> None:
    cache = SiteCache()
    first = job(site_copy, tmp_path / "state", cache)
    set_sections(site_copy, validation={"fraction": 0.5, "seed": 3, "min_patients": 1})
    second = job(site_copy, tmp_path / "state", cache)
    assert second.arrays is not first.arrays and second.arrays.is_val.sum() > first.arrays.is_val.sum()


def test_sites_beyond_the_count_or_the_bytes_are_dropped_least_recently_used_first(small_sites: Path,
                                                                                    tmp_path: Path) -> None:
    cache = SiteCache(sites=2)
    a = job(small_sites / "site-a", tmp_path / "a", cache)
    job(small_sites / "site-b", tmp_path / "b", cache)
    assert job(small_sites / "site-a", tmp_path / "a", cache).arrays is a.arrays
    job(small_sites / "site-c", tmp_path / "c", cache)  # drops site-b, the least recently used
    assert job(small_sites / "site-a", tmp_path / "a", cache).arrays is a.arrays
    assert cache.loaded_sites == 2
    one_site = sum(getattr(a.arrays, f.name).nbytes for f in fields(a.arrays))
    small = SiteCache(max_bytes=one_site + one_site // 2)  # room for one of these sites only
    job(small_sites / "site-a", tmp_path / "a", small)
    job(small_sites / "site-b", tmp_path / "b", small)
    assert small.loaded_sites == 1
    empty = SiteCache(max_bytes=0)
    assert empty.keep(*_entry(a)).arrays is a.arrays and empty.loaded_sites == 0  # handed out, not kept


def _entry(j: SiteJob) -> tuple[object, ...]:
    from client.site_data.site_cache import SiteKey
    return SiteKey(j.site.data_dir, j.site.cache_dir, j.cfg.data, j.site_file), "fp", 1, j.arrays


def test_configs_are_composed_once_per_override_string_and_errors_are_not_kept() -> None:
    cache = SiteCache()
    assert cache.experiment(SMALL_RUN) is cache.experiment(SMALL_RUN)
    for _ in range(2):
        with pytest.raises(ConfigError):
            cache.experiment("rounds=0")


def test_the_client_app_travels_by_reference_so_a_ray_actor_keeps_its_cache() -> None:
    """Flower's simulation pickles the ClientApp for every message it sends to a Ray actor."""
    import pickle

    from ray import cloudpickle  # what Flower's Ray backend uses

    from client.app import app
    assert pickle.loads(pickle.dumps(app)) is app
    assert cloudpickle.loads(cloudpickle.dumps(app)) is app


def test_another_process_reuses_the_snapshot_only_for_the_same_files(site_copy: Path, tmp_path: Path) -> None:
    """A fresh SiteCache stands for another process of the site (a Ray actor, a restarted runner)."""
    first = job(site_copy, tmp_path / "state", SiteCache())
    snapshot = tmp_path / "state" / "cache" / SNAPSHOT_FILE
    assert snapshot.is_file() and snapshot.stat().st_mode & 0o077 == 0
    other = job(site_copy, tmp_path / "state", SiteCache())
    assert other.arrays is not first.arrays and same_arrays(other.arrays, first.arrays)
    notes = site_copy / "notes.csv"
    notes.write_text(notes.read_text().replace("a", "b"))  # a change the loader sees
    changed = job(site_copy, tmp_path / "state", SiteCache())
    fresh, _ = load_site(site_copy, changed.cfg.data, cache_dir=tmp_path / "fresh", site_file=changed.site_file)
    assert same_arrays(changed.arrays, fresh) and not np.array_equal(changed.arrays.tokens, first.arrays.tokens)
    snapshot.write_bytes(snapshot.read_bytes()[:1000])  # damaged: loaded from the files again
    assert same_arrays(job(site_copy, tmp_path / "state", SiteCache()).arrays, fresh)
