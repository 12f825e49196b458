"""The per-file preprocessing cache on real DICOM files and a real cache folder: hits, misses,
invalidation, cached quarantine reasons, damaged entries, two processes racing, and the hash
memo (which skips re-hashing unchanged files) on files whose timestamps really are old."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from client.site_data.imaging.dicom import UnusableImage, read_image
from client.site_data.imaging.cache import (
    MEMO_DIR,
    RECENT_S,
    REASON_TAG,
    entry_key,
    entry_path,
    folder_digest,
    image_payload,
    load_image_cached,
    memo_path,
    memo_payload,
    parse_entry,
    parse_memo,
    stat_signature,
)

SIZE = 16
RACE_SIZE = 256  # 256 KiB entries: a non-atomic writer would be caught mid-write
WINDOW = (40.0, 400.0)


def write_ct(path: Path, seed: int, *, side: int = 32, number: int = 1) -> Path:
    """A small CT Image Storage file with random HU values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientID, ds.Modality, ds.InstanceNumber = "TEST", "CT", number
    hu = np.random.default_rng(seed).integers(-1000, 1000, size=(side, side)).astype(np.int16)
    ds.set_pixel_data(hu, "MONOCHROME2", 16)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.save_as(path, enforce_file_format=True)
    return path


def entry_of(path: Path, cache: Path, *, size: int = SIZE, window: Any = WINDOW,
             frame_policy: str = "middle") -> Path:
    digest = folder_digest(path) if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return entry_path(cache, entry_key(digest, size=size, window=window, frame_policy=frame_policy))


def cached(path: Path, cache: Path, **kwargs: Any) -> np.ndarray:
    arguments = {"size": SIZE, "window": WINDOW, "frame_policy": "middle", **kwargs}
    return load_image_cached(path, cache_dir=cache, **arguments)


def cached_reason(path: Path, cache: Path) -> str:
    with pytest.raises(UnusableImage) as info:
        cached(path, cache)
    return info.value.reason


def test_miss_then_hit_serves_the_stored_entry(tmp_path: Path) -> None:
    path, cache = write_ct(tmp_path / "a.dcm", 1), tmp_path / "cache"
    first = cached(path, cache)
    assert np.array_equal(first, read_image(path, size=SIZE, window=WINDOW))
    entry = entry_of(path, cache)
    assert entry.is_file() and entry.stat().st_mode & 0o777 == 0o600
    assert entry.stat().st_size < SIZE * SIZE * 4 + 256  # float32 + .npy header + tag
    marker = np.full((SIZE, SIZE), 0.25, np.float32)
    entry.write_bytes(image_payload(marker))  # only a cache hit can return this
    assert np.array_equal(cached(path, cache), marker)


def test_changed_content_or_parameters_miss(tmp_path: Path) -> None:
    path, cache = write_ct(tmp_path / "a.dcm", 1), tmp_path / "cache"
    cached(path, cache)
    marker = np.full((SIZE, SIZE), 0.25, np.float32)
    entry_of(path, cache).write_bytes(image_payload(marker))
    for kwargs in ({"size": SIZE * 2}, {"window": None}, {"window": (0.0, 100.0)},
                   {"frame_policy": "mean"}):
        got = cached(path, cache, **kwargs)
        want = read_image(path, **{"size": SIZE, "window": WINDOW, **kwargs})
        assert np.array_equal(got, want), kwargs
    write_ct(path, 2)  # same name, new content
    assert np.array_equal(cached(path, cache), read_image(path, size=SIZE, window=WINDOW))
    assert len(list(cache.rglob("*.entry"))) == 6


def test_a_quarantine_reason_is_cached_without_decoding_again(tmp_path: Path) -> None:
    path, cache = write_ct(tmp_path / "bad.dcm", 1), tmp_path / "cache"
    path.write_bytes(path.read_bytes()[:-100])
    assert cached_reason(path, cache) == "truncated or corrupt file"
    entry = entry_of(path, cache)
    assert entry.read_bytes() == REASON_TAG + b"truncated or corrupt file"
    entry.write_bytes(REASON_TAG + b"pixel data cannot be decoded")  # only a hit can say this
    assert cached_reason(path, cache) == "pixel data cannot be decoded"


def test_transient_reasons_are_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert cached_reason(tmp_path / "missing.dcm", cache) == "file not found"
    assert not cache.exists() or not list(cache.rglob("*.entry"))


@pytest.mark.parametrize("damage", [b"", b"IMG\n\x93NUMPY garbage", b"BAD\nPatient Smith, 1970",
                                    b"BAD\n\xff\xfe", b"XYZ\n", "wrong shape"])
def test_a_damaged_entry_is_a_miss_and_is_rewritten(tmp_path: Path, damage: bytes | str) -> None:
    path, cache = write_ct(tmp_path / "a.dcm", 1), tmp_path / "cache"
    want = cached(path, cache)
    entry = entry_of(path, cache)
    good = entry.read_bytes()
    if damage == "wrong shape":
        entry.write_bytes(image_payload(np.zeros((SIZE, SIZE + 1), np.float32)))
    else:
        entry.write_bytes(damage)  # type: ignore[arg-type]
    assert np.array_equal(cached(path, cache), want)
    assert entry.read_bytes() == good


def test_a_series_folder_is_keyed_by_file_names_and_bytes(tmp_path: Path) -> None:
    folder, cache = tmp_path / "series", tmp_path / "cache"
    folder.mkdir()
    for number in (1, 2, 3):
        write_ct(folder / f"{number}.dcm", number, number=number)
    want = read_image(folder, size=SIZE, window=WINDOW)
    assert np.array_equal(cached(folder, cache), want)
    key = entry_of(folder, cache)
    (folder / ".DS_Store").write_bytes(b"finder")  # hidden: ignored
    assert entry_of(folder, cache) == key
    (folder / "3.dcm").rename(folder / "4.dcm")
    assert entry_of(folder, cache) != key
    write_ct(folder / "1.dcm", 9, number=1)
    assert np.array_equal(cached(folder, cache), read_image(folder, size=SIZE, window=WINDOW))


def race(files: list[str], cache: str, barrier: Any, rounds: int, results: Any) -> None:
    """One of two racing processes: drop the entries, reload, and read the entries raw."""
    problems = 0
    expected = []
    for name in files:
        try:
            expected.append(read_image(Path(name), size=RACE_SIZE, window=WINDOW))
        except UnusableImage as bad:
            expected.append(bad.reason)
    entries = [entry_of(Path(name), Path(cache), size=RACE_SIZE) for name in files]
    barrier.wait(timeout=120)
    for _ in range(rounds):
        for name, entry, want in zip(files, entries, expected):
            entry.unlink(missing_ok=True)
            try:
                got: Any = load_image_cached(Path(name), cache_dir=Path(cache), size=RACE_SIZE,
                                             window=WINDOW, frame_policy="middle")
            except UnusableImage as bad:
                got = bad.reason
            problems += not (np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want)
            try:
                payload = entry.read_bytes()
            except FileNotFoundError:
                continue
            problems += parse_entry(payload, RACE_SIZE) is None  # a torn entry would not parse
    results.put(problems)


def test_two_processes_racing_on_the_same_entries_both_succeed(tmp_path: Path) -> None:
    good = write_ct(tmp_path / "good.dcm", 1, side=256)
    bad = write_ct(tmp_path / "bad.dcm", 2)
    bad.write_bytes(bad.read_bytes()[:-10])
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    args = ([str(good), str(bad)], str(cache), barrier, 25, results)
    workers = [context.Process(target=race, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=180) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0] and outcomes == [0, 0]
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]  # no temp files left


# --- hash memo -------------------------------------------------------------------------------
# A file modified (mtime or ctime) within RECENT_S of being hashed is never memoised, and ctime
# cannot be backdated, so the files these tests memoise are written once per module and the
# module waits (once, ~2 s) until they are old enough. Each test owns its own files.


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("settled")
    for name, seed in (("memo", 1), ("in_place", 2), ("replaced", 3), ("grows", 4), ("corrupt", 5)):
        write_ct(root / f"{name}.dcm", seed)
    (root / "series").mkdir()
    for number in (1, 2, 3):
        write_ct(root / "series" / f"{number}.dcm", 10 + number, number=number)
    files = [p for p in root.rglob("*") if p.is_file()]
    newest = max(max(p.stat().st_mtime_ns, p.stat().st_ctime_ns) for p in files) / 1e9
    time.sleep(max(0.0, newest + RECENT_S + 0.2 - time.time()))
    return root


def memo_of(path: Path, cache: Path) -> Path:
    return memo_path(cache / MEMO_DIR, path)


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_unchanged_file_is_not_hashed_again(settled: Path, tmp_path: Path) -> None:
    path, cache = settled / "memo.dcm", tmp_path / "cache"
    want = read_image(path, size=SIZE, window=WINDOW)
    assert np.array_equal(cached(path, cache), want)
    memo = memo_of(path, cache)
    assert memo.is_file() and memo.stat().st_mode & 0o777 == 0o600
    assert memo.read_bytes() == memo_payload(stat_signature(path.stat()), sha256_hex(path))
    assert str(path).encode() not in memo.read_bytes()  # the path is only in the memo's name
    # Point the memo at another digest whose entry holds a marker: only a load that trusts the
    # memo (and neither reads nor hashes the file) can return the marker.
    fake = "ab" * 32
    memo.write_bytes(memo_payload(stat_signature(path.stat()), fake))
    marker = np.full((SIZE, SIZE), 0.25, np.float32)
    fake_entry = entry_path(cache, entry_key(fake, size=SIZE, window=WINDOW, frame_policy="middle"))
    fake_entry.parent.mkdir(parents=True, exist_ok=True)
    fake_entry.write_bytes(image_payload(marker))
    assert np.array_equal(cached(path, cache), marker)
    # Memo hit but entry miss (new parameters): the file is read, and keyed by what was read.
    assert np.array_equal(cached(path, cache, size=SIZE * 2),
                          read_image(path, size=SIZE * 2, window=WINDOW))
    assert memo.read_bytes() == memo_payload(stat_signature(path.stat()), sha256_hex(path))
    assert np.array_equal(cached(path, cache), want)
    # A stale memo whose digest has no entry: the bytes read to decode are hashed, the entry is
    # keyed by them (not by the stale digest) and the memo is corrected.
    stale = "cd" * 32
    memo.write_bytes(memo_payload(stat_signature(path.stat()), stale))
    assert np.array_equal(cached(path, cache, size=SIZE * 3),
                          read_image(path, size=SIZE * 3, window=WINDOW))
    assert not entry_path(cache, entry_key(stale, size=SIZE * 3, window=WINDOW,
                                           frame_policy="middle")).exists()
    assert entry_of(path, cache, size=SIZE * 3).is_file()
    assert memo.read_bytes() == memo_payload(stat_signature(path.stat()), sha256_hex(path))


@pytest.mark.parametrize("how", ["in_place", "replaced"])
def test_same_size_new_content_with_the_old_mtime_is_detected(settled: Path, tmp_path: Path,
                                                               how: str) -> None:
    path, cache = settled / f"{how}.dcm", tmp_path / "cache"
    old_image = cached(path, cache)
    before = path.stat()
    assert memo_of(path, cache).is_file()
    new = write_ct(tmp_path / "new.dcm", 99)
    assert new.stat().st_size == before.st_size and new.read_bytes() != path.read_bytes()
    if how == "in_place":
        path.write_bytes(new.read_bytes())  # same inode: only ctime tells
    else:
        os.replace(new, path)  # new inode, like an editor's save or rsync
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # like cp -p / rsync -t
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert (after.st_ino == before.st_ino) == (how == "in_place")
    want = read_image(path, size=SIZE, window=WINDOW)
    assert not np.array_equal(want, old_image)
    assert np.array_equal(cached(path, cache), want)
    assert np.array_equal(cached(path, cache), want)  # and again: the stale memo is not trusted
    kept = parse_memo(memo_of(path, cache).read_bytes())  # changed just now: not memoised again
    assert kept is not None and kept[0] == stat_signature(before)


def test_a_file_with_a_new_size_is_hashed_again(settled: Path, tmp_path: Path) -> None:
    path, cache = settled / "grows.dcm", tmp_path / "cache"
    cached(path, cache)
    size = path.stat().st_size
    write_ct(path, 4, side=48)
    assert path.stat().st_size != size
    assert np.array_equal(cached(path, cache), read_image(path, size=SIZE, window=WINDOW))


def test_a_just_written_file_is_not_memoised(tmp_path: Path) -> None:
    path, cache = write_ct(tmp_path / "fresh.dcm", 1), tmp_path / "cache"
    want = read_image(path, size=SIZE, window=WINDOW)
    assert np.array_equal(cached(path, cache), want)
    assert not memo_of(path, cache).exists()
    old = time.time() - 3600
    os.utime(path, (old, old))  # an old mtime is not enough: the ctime is now
    assert np.array_equal(cached(path, cache), want)
    assert not memo_of(path, cache).exists()
    assert np.array_equal(cached(path, cache), want)


def test_a_damaged_memo_entry_is_a_miss_and_is_rewritten(settled: Path, tmp_path: Path) -> None:
    path, cache = settled / "corrupt.dcm", tmp_path / "cache"
    want = cached(path, cache)
    memo = memo_of(path, cache)
    good = memo.read_bytes()
    size, mtime, ctime, ino, dev = stat_signature(path.stat())
    fake = "ab" * 32
    marker_entry = entry_path(cache, entry_key(fake, size=SIZE, window=WINDOW,
                                               frame_policy="middle"))
    marker_entry.parent.mkdir(parents=True, exist_ok=True)
    marker_entry.write_bytes(image_payload(np.full((SIZE, SIZE), 0.25, np.float32)))
    damaged = [b"", b"\xff\xfe garbage", good[:-1], good[:-10], good + b"extra\n", good.upper(),
               good.replace(b"HASHMEMO1", b"HASHMEMO9"), good.replace(b" ", b"  ", 1)]
    for signature in ((size + 1, mtime, ctime, ino, dev), (size, mtime + 1, ctime, ino, dev),
                      (size, mtime, ctime - 1, ino, dev), (size, mtime, ctime, ino + 1, dev),
                      (size, mtime, ctime, ino, dev + 1)):
        damaged.append(memo_payload(signature, fake))  # any stat field off: not trusted
    for payload in damaged:
        memo.write_bytes(payload)
        assert np.array_equal(cached(path, cache), want), payload
        assert memo.read_bytes() == good, payload


def test_a_series_folder_is_memoised_per_file(settled: Path, tmp_path: Path) -> None:
    folder, cache = settled / "series", tmp_path / "cache"
    assert np.array_equal(cached(folder, cache), read_image(folder, size=SIZE, window=WINDOW))
    files = sorted(folder.iterdir())
    assert all(memo_of(p, cache).is_file() for p in files)
    assert len(list((cache / MEMO_DIR).rglob("*.memo"))) == len(files)
    assert folder_digest(folder, cache / MEMO_DIR) == folder_digest(folder)
    old_image, middle = cached(folder, cache), files[1]  # "middle" of 3 instances: number 2
    before = middle.stat()
    middle.write_bytes(write_ct(tmp_path / "other.dcm", 77, number=2).read_bytes())
    os.utime(middle, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert middle.stat().st_size == before.st_size
    assert folder_digest(folder, cache / MEMO_DIR) == folder_digest(folder)
    want = read_image(folder, size=SIZE, window=WINDOW)
    assert not np.array_equal(want, old_image)
    assert np.array_equal(cached(folder, cache), want)
