"""The cache quota on real DICOM and real entries written by load_image_cached: what counts, LRU
eviction, keep, a hit's mtime refresh, `used`, symlinks, temp files, memo entries, races."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from client.site_data.imaging.quota import STALE_TMP_S, PruneResult, _unlink, prune_cache
from client.site_data.imaging.dicom import UnusableImage, read_image
from client.site_data.imaging.cache import MEMO_DIR, RECENT_S, load_image_cached

SIZE = 16
WINDOW = (40.0, 400.0)


def write_ct(path: Path, seed: int, *, side: int = 32) -> Path:
    """A small CT Image Storage file with random HU values (as in test_image_cache)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientID, ds.Modality, ds.InstanceNumber = "TEST", "CT", 1
    hu = np.random.default_rng(seed).integers(-1000, 1000, size=(side, side)).astype(np.int16)
    ds.set_pixel_data(hu, "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.save_as(path, enforce_file_format=True)
    return path


def load(path: Path, cache: Path, *, size: int = SIZE, used: set[Path] | None = None) -> Any:
    """load_image_cached with the test's window; a quarantine reason is returned, not raised."""
    try:
        return load_image_cached(path, cache_dir=cache, size=size, window=WINDOW, used=used)
    except UnusableImage as bad:
        return bad.reason


def load_one(path: Path, cache: Path, *, size: int = SIZE) -> Path:
    """Load `path` and return the one entry the load used."""
    used: set[Path] = set()
    load(path, cache, size=size, used=used)
    (entry,) = used
    return entry


def entries(cache: Path) -> set[Path]:
    return set(cache.rglob("*.entry"))


def nbytes(paths: Any) -> int:
    return sum(p.stat().st_size for p in paths)


def age(path: Path, seconds: float) -> None:
    """Set the mtime `seconds` in the past (the LRU clock)."""
    when = time.time() - seconds
    os.utime(path, (when, when), follow_symlinks=False)


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    return [write_ct(folder / f"{i}.dcm", i) for i in range(3)]


def test_under_quota_nothing_is_deleted(images: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for path in images:
        load(path, cache)
    total = nbytes(before := entries(cache))
    assert len(before) == 3 and total > 3 * SIZE * SIZE * 4
    assert prune_cache(cache, max_bytes=total) == PruneResult(total, total, 0)
    assert prune_cache(cache, max_bytes=10 * total) == PruneResult(total, total, 0)
    assert entries(cache) == before


def test_over_quota_least_recently_used_go_first_and_keep_never(images: list[Path],
                                                                 tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    # Three "runs" with a coordinator-chosen image size each; the third is the current load.
    runs = {size: [load_one(p, cache, size=size) for p in images] for size in (16, 24, 32)}
    current = set(runs[32])
    for entry in current:
        age(entry, 10_000)  # the oldest of all, but kept
    for i in range(3):
        age(runs[16][i], 3000 - 100 * i)
        age(runs[24][i], 2000 - 100 * i)
    total = nbytes(entries(cache))
    limit = nbytes(runs[24]) + nbytes(current) - 1  # all of run 16 and the oldest of run 24 go
    result = prune_cache(cache, max_bytes=limit, keep=current)
    survivors = current | set(runs[24][1:])
    assert entries(cache) == survivors
    assert result == PruneResult(total, nbytes(survivors), 4) and result.bytes_after <= limit
    for size, path in ((24, images[1]), (32, images[0])):  # survivors still serve hits
        assert np.array_equal(load(path, cache, size=size),
                              read_image(path, size=size, window=WINDOW))


def test_a_hit_refreshes_the_mtime_so_a_just_read_entry_survives(images: list[Path],
                                                                 tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bad = images[2]
    bad.write_bytes(bad.read_bytes()[:-100])
    read, unused, reason = (load_one(p, cache) for p in images)
    assert reason.read_bytes().startswith(b"BAD\n")
    for entry, seconds in ((read, 2000), (unused, 1000), (reason, 3000)):
        age(entry, seconds)
    inodes = {e: e.stat().st_ino for e in (read, reason)}
    started = time.time_ns()
    load(images[0], cache)
    assert load(bad, cache) == "truncated or corrupt file"  # a cached reason is a hit too
    for entry in (read, reason):
        assert entry.stat().st_ino == inodes[entry]  # a hit: not rewritten (os.replace)
        assert entry.stat().st_mtime_ns >= started - 10**9  # mtime granularity: allow 1 s
    assert unused.stat().st_mtime_ns < started - 900 * 10**9
    result = prune_cache(cache, max_bytes=nbytes([read, reason]))
    assert entries(cache) == {read, reason} and result.entries_removed == 1


def test_used_collects_exactly_the_entries_of_a_load(images: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bad = images[2]
    bad.write_bytes(bad.read_bytes()[:-100])
    first: set[Path] = set()
    for path in [*images, tmp_path / "missing.dcm"]:  # missing: transient, never cached
        load(path, cache, used=first)
    assert len(first) == 3 and first == entries(cache)
    load(images[0], cache, size=24)  # another run's entry, not part of the next load
    second: set[Path] = set()
    load(images[0], cache, used=second)  # a hit
    load(bad, cache, used=second)  # a cached reason
    assert second == first - {load_one(images[1], cache)}
    assert len(entries(cache)) == 4


def test_symlinks_are_not_followed_and_their_targets_survive(images: list[Path],
                                                            tmp_path: Path) -> None:
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    entry = load_one(images[0], cache)
    outside.mkdir()
    victim = outside / entry.name
    victim.write_bytes(b"x" * 100_000)
    (outside / "ab").mkdir()
    deep_victim = outside / "ab" / ("ab" * 32 + ".entry")
    deep_victim.write_bytes(b"y" * 100_000)
    link = entry.parent / ("0" * 64 + ".entry")
    link.symlink_to(victim)
    (cache / "ab").symlink_to(outside / "ab", target_is_directory=True)
    size = entry.stat().st_size
    assert prune_cache(cache, max_bytes=0) == PruneResult(size, 0, 1)  # targets not counted
    assert not entry.exists()
    assert link.is_symlink() and (cache / "ab").is_symlink()  # not regular files: left alone
    assert victim.read_bytes() == b"x" * 100_000 and deep_victim.read_bytes() == b"y" * 100_000


def test_a_deletion_follows_no_symlink_and_a_vanished_file_is_gone(tmp_path: Path) -> None:
    """What a prune does when a fan-out folder was swapped for a symlink after its walk, or a
    file it listed was deleted by another process meanwhile."""
    cache, outside = tmp_path / "cache", tmp_path / "outside"
    outside.mkdir()
    victim = outside / ("ab" * 32 + ".entry")
    victim.write_bytes(b"x")
    cache.mkdir()
    (cache / "ab").symlink_to(outside, target_is_directory=True)
    assert _unlink(str(cache), ("ab", victim.name)) is False  # not deleted: stays counted
    assert victim.read_bytes() == b"x"
    (cache / "cd").mkdir()
    assert _unlink(str(cache), ("cd", "cd" * 32 + ".entry")) is True  # gone is gone
    assert _unlink(str(cache), ("ef", "ef" * 32 + ".entry")) is True


def test_stale_temporary_files_go_and_fresh_ones_stay(images: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    entry = load_one(images[0], cache)
    folder = entry.parent
    memo_folder = cache / MEMO_DIR / "ab"
    memo_folder.mkdir(parents=True)
    tmp = {name: (where / name) for name, where in (
        (f".{entry.name}.fresh1.tmp", folder), (f".{entry.name}.half_h.tmp", folder),
        (f".{entry.name}.stale1.tmp", folder), (f".{'ab' * 32}.memo.stale2.tmp", memo_folder),
        ("notdotted.tmp", folder))}
    for path in tmp.values():
        path.write_bytes(b"t" * 50_000)
    for name, seconds in ((f".{entry.name}.half_h.tmp", STALE_TMP_S / 2),
                          (f".{entry.name}.stale1.tmp", STALE_TMP_S + 60),
                          (f".{'ab' * 32}.memo.stale2.tmp", STALE_TMP_S + 60),
                          ("notdotted.tmp", 10 * STALE_TMP_S)):
        age(tmp[name], seconds)
    size = entry.stat().st_size
    assert prune_cache(cache, max_bytes=size) == PruneResult(size, size, 0)  # tmp not counted
    left = {name for name, path in tmp.items() if path.exists()}
    assert left == {f".{entry.name}.fresh1.tmp", f".{entry.name}.half_h.tmp", "notdotted.tmp"}
    assert entry.is_file()


def test_a_keep_set_over_quota_is_left_intact(images: list[Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cache = Path("cache")  # relative: `used` holds relative paths, compared after abspath
    other = load_one(images[2], cache, size=24)
    age(other, 100)
    keep: set[Path] = set()
    for path in images:
        load(path, cache, used=keep)
    for entry in keep:
        age(entry, 5000)  # the kept entries are the oldest
    kept_bytes, other_bytes = nbytes(keep), other.stat().st_size
    result = prune_cache(tmp_path / "cache", max_bytes=1, keep=keep)
    assert result == PruneResult(kept_bytes + other_bytes, kept_bytes, 1)
    assert result.bytes_after > 1  # over quota: the caller decides
    assert entries(tmp_path / "cache") == {tmp_path / e for e in keep}


def test_a_missing_cache_and_a_negative_quota(tmp_path: Path) -> None:
    assert prune_cache(tmp_path / "none", max_bytes=0) == PruneResult(0, 0, 0)
    assert not (tmp_path / "none").exists()
    with pytest.raises(ValueError, match="max_bytes"):
        prune_cache(tmp_path, max_bytes=-1)


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Files old enough (mtime and ctime) to be memoised: the module waits once, ~2 s."""
    root = tmp_path_factory.mktemp("settled")
    files = [write_ct(root / f"{i}.dcm", 20 + i) for i in range(3)]
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in files) / 1e9
    time.sleep(max(0.0, newest + RECENT_S + 0.2 - time.time()))
    return files


def test_memo_entries_count_and_go_only_after_every_evictable_entry(settled: list[Path],
                                                                   tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    keep: set[Path] = set()
    load(settled[0], cache, used=keep)
    for path in settled[1:]:
        load(path, cache)
    memos = sorted((cache / MEMO_DIR).rglob("*.memo"))
    assert len(memos) == 3
    for i, memo in enumerate(memos):
        age(memo, 10_000 + i)  # older than every entry
    memo_bytes, kept_bytes = nbytes(memos), nbytes(keep)
    total = nbytes(entries(cache)) + memo_bytes
    result = prune_cache(cache, max_bytes=kept_bytes + memo_bytes, keep=keep)
    assert result == PruneResult(total, kept_bytes + memo_bytes, 2)
    assert entries(cache) == keep and all(m.is_file() for m in memos)
    result = prune_cache(cache, max_bytes=kept_bytes + memo_bytes - 1, keep=keep)
    assert result.entries_removed == 1 and result.bytes_after <= kept_bytes + memo_bytes - 1
    assert [m.exists() for m in memos] == [True, True, False]  # the oldest memo entry
    assert entries(cache) == keep
    # A memo hit with the entry gone: re-read, decoded, and the new entry is reported as used.
    used: set[Path] = set()
    assert np.array_equal(load(settled[1], cache, used=used),
                          read_image(settled[1], size=SIZE, window=WINDOW))
    assert len(used) == 1 and used <= entries(cache)


def test_prunes_racing_a_loader_and_each_other(images: list[Path], tmp_path: Path) -> None:
    """Entries and temporary files appear and vanish under the pruners (FileNotFoundError),
    two pruners delete the same entries, and the loader still gets the right image each time."""
    cache, stop = tmp_path / "cache", threading.Event()
    want = {(p, s): read_image(p, size=s, window=WINDOW) for p in images for s in (16, 20, 24)}
    limit = 2 * 24 * 24 * 4  # bytes: about two entries

    def loader() -> int:
        loads = 0
        while not stop.is_set():
            for (path, size), image in want.items():
                assert np.array_equal(load(path, cache, size=size), image), (path, size)
                loads += 1
        return loads

    def pruner() -> int:
        removed, deadline = 0, time.monotonic() + 1.5
        while time.monotonic() < deadline:
            result = prune_cache(cache, max_bytes=limit)
            assert result.bytes_after <= limit, result
            removed += result.entries_removed
        return removed

    with ThreadPoolExecutor(3) as pool:  # .result() re-raises a thread's exception
        loading = pool.submit(loader)
        try:
            removed = sum(f.result(timeout=60) for f in [pool.submit(pruner) for _ in range(2)])
        finally:
            stop.set()
        loads = loading.result(timeout=60)
    assert loads > len(want) and removed > len(want)
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]
