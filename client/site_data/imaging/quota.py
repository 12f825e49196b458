"""A size quota for the site's preprocessing cache (client.site_data.imaging.cache): least recently used first.

The cache keys entries by content, image size, window, frame policy and decoder environment and
writes a new set whenever one of them changes (a coordinator may pick a new `data.image_size`
every run), on the volume that also holds the site's privacy ledger. `prune_cache` keeps it
under a byte quota.

Counted (bytes: st_size of each regular file, found by one os.scandir walk, none of them read):
    cache entries  <cache_dir>/<key[:2]>/<key>.entry  evicted first, oldest mtime first;
    memo entries   <cache_dir>/memo/<h[:2]>/<h>.memo  evicted (oldest first) only if the total is
                   still over quota once no evictable cache entry is left: they cost a re-hash.
A cache hit refreshes its entry's mtime, so the oldest mtime is the least recently used entry.
Paths in `keep` (the entries of the current load) are never deleted, even over quota.

Temporary files of storage.atomic (`.<name>.<random>.tmp`, in the same fan-out folders) are not
counted: one older than STALE_TMP_S (an hour) is a crashed writer's leftover and is deleted;
a younger one may be a write in progress and is left alone.

Safety: other processes may read, write and delete entries meanwhile. A file or folder that
vanishes is skipped (FileNotFoundError is never an error). Symlinks are neither followed nor
deleted or counted (the given cache_dir itself is used as given); deletions go through folder
descriptors opened with O_NOFOLLOW, so a folder swapped for a symlink after the walk is not
followed either. Only regular files named as above (entries, memo entries, temporary files)
are ever deleted. Sizes are a snapshot of the walk: a concurrent writer may add bytes the
result does not show.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from client.site_data.imaging.cache import MEMO_DIR

STALE_TMP_S = 3600.0  # a temporary file older than this (by mtime) is a leftover: deleted
_FANOUT = re.compile(r"[0-9a-f]{2}")
_TOP = re.compile(rf"[0-9a-f]{{2}}|{re.escape(MEMO_DIR)}")
_ENTRY = re.compile(r"[0-9a-f]{64}\.entry")
_MEMO = re.compile(r"[0-9a-f]{64}\.memo")


@dataclass(frozen=True)
class PruneResult:
    """What one prune saw and did. Sizes in bytes (cache entries + memo entries)."""

    bytes_before: int  # total when the walk was taken
    bytes_after: int  # total after the deletions (> max_bytes when `keep` alone exceeds it)
    entries_removed: int  # cache entries and memo entries deleted by this call


@dataclass(frozen=True)
class _File:
    parts: tuple[str, ...]  # folder names below cache_dir, then the file name
    size: int  # bytes
    mtime_ns: int


def _scan(folder: str) -> list[os.DirEntry[str]]:
    """The folder's entries; none when it vanished. Raises OSError when it cannot be listed."""
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _regular(entry: os.DirEntry[str]) -> os.stat_result | None:
    """lstat of a regular file; None for anything else (a symlink too) or when it vanished."""
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _real_dirs(folder: str, names: re.Pattern[str]) -> list[os.DirEntry[str]]:
    """Sub-folders whose names fit `names`: real directories, never symlinks."""
    return [e for e in _scan(folder) if names.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]


def _unlink(root: str, parts: tuple[str, ...]) -> bool:
    """Delete root/parts..., following no symlink below root: True when it is gone (by us or
    another process), False when it stays (read-only cache, a folder swapped for a symlink)."""
    fds: list[int] = []
    try:
        fds.append(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
        for name in parts[:-1]:
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        os.unlink(parts[-1], dir_fd=fds[-1])
    except FileNotFoundError:
        return True
    except OSError:
        return False
    finally:
        for fd in fds:
            os.close(fd)
    return True


def _collect(root: str, folder: tuple[str, ...], pattern: re.Pattern[str],
             now_ns: int) -> list[_File]:
    """Counted files of one fan-out folder; its stale temporary files are deleted on the way."""
    found = []
    for entry in _scan(os.path.join(root, *folder)):
        counted = pattern.fullmatch(entry.name) is not None
        if not counted and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        if (st := _regular(entry)) is None:
            continue
        if counted:
            found.append(_File((*folder, entry.name), st.st_size, st.st_mtime_ns))
        elif now_ns - st.st_mtime_ns > STALE_TMP_S * 1e9:
            _unlink(root, (*folder, entry.name))
    return found


def _walk(root: str) -> tuple[list[_File], list[_File]]:
    """(cache entries, memo entries) under root; one scandir pass, no file is read."""
    now_ns = time.time_ns()
    entries, memos = [], []
    for top in _real_dirs(root, _TOP):
        if top.name == MEMO_DIR:
            for sub in _real_dirs(top.path, _FANOUT):
                memos += _collect(root, (MEMO_DIR, sub.name), _MEMO, now_ns)
        else:
            entries += _collect(root, (top.name,), _ENTRY, now_ns)
    return entries, memos


def _evict(root: str, files: list[_File], total: int, max_bytes: int,
           keep: frozenset[str]) -> tuple[int, int]:
    """Delete files not in `keep`, oldest mtime first, until total <= max_bytes (bytes).

    Returns (total left, files deleted by this call).
    """
    removed = 0
    for f in sorted(files, key=lambda f: (f.mtime_ns, f.parts)):
        if total <= max_bytes:
            break
        if os.path.abspath(os.path.join(root, *f.parts)) in keep:
            continue
        if _unlink(root, f.parts):
            total -= f.size
            removed += 1
    return total, removed


def prune_cache(cache_dir: Path, *, max_bytes: int, keep: Collection[Path] = ()) -> PruneResult:
    """Bring the cache at `cache_dir` within `max_bytes` bytes, least recently used first.

    Cache entries not in `keep` go first, oldest mtime first; memo entries only if that is not
    enough. `keep` paths are compared after os.path.abspath (not resolved), and are never deleted:
    if they alone exceed the quota, bytes_after > max_bytes and the caller decides. Stale
    temporary files (older than STALE_TMP_S) are deleted and not counted. A missing cache_dir
    (or one that is not a folder) is an empty cache. A file that cannot be deleted, other than
    one already gone, stays counted (e.g. a read-only cache: bytes_after > max_bytes).
    Raises ValueError for a negative max_bytes; OSError (never FileNotFoundError) when
    cache_dir or one of its sub-folders exists but cannot be listed (e.g. PermissionError).
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    root = os.fspath(cache_dir)
    entries, memos = _walk(root)
    before = sum(f.size for f in entries) + sum(f.size for f in memos)
    kept = frozenset(os.path.abspath(p) for p in keep)
    after, removed = _evict(root, entries, before, max_bytes, kept)
    after, removed_memos = _evict(root, memos, after, max_bytes, kept)
    return PruneResult(bytes_before=before, bytes_after=after,
                       entries_removed=removed + removed_memos)
