"""A cheap fingerprint of a site folder's files, to tell whether anything a load read has changed.

It is a digest of every entry under the folder (recursively; symbolic links are stat'ed through
but not descended, their targets inside the site are walked where they are): the relative path,
type, size, modification and change times in nanoseconds, inode and device. A file rewritten in
place changes its mtime and ctime; one replaced by rename changes its inode; `touch -d` can reset
an mtime, never a ctime. So any change to a file the loader reads (tables, DICOM files, series
folders) changes the fingerprint, with one stat per entry and no file contents read: about 10 ms
for the 3,676 entries of a 2,000-patient synthetic site.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path


def folder_fingerprint(folder: Path, *, exclude: Iterable[Path] = ()) -> str:
    """Hex digest (40 characters) of every entry's metadata under `folder`; entries whose
    resolved path is in `exclude` (e.g. a state folder kept inside the site folder, which the
    site writes on every message) are left out, with everything under them. Never raises: an
    unreadable folder or entry is part of the digest as such."""
    root = folder.resolve()
    skip = {Path(p).resolve() for p in exclude}
    digest = hashlib.blake2b(digest_size=20)
    pending = [root]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            digest.update(_line(current, root, f"unreadable {exc.errno}"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if path in skip:
                continue
            try:
                st = entry.stat(follow_symlinks=True)
                facts = f"{st.st_mode} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {st.st_dev}"
            except OSError as exc:
                facts = f"missing {exc.errno}"
            digest.update(_line(path, root, facts))
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
    return digest.hexdigest()


def _line(path: Path, root: Path, facts: str) -> bytes:
    relative = os.path.relpath(path, root)
    return f"{relative}\0{facts}\n".encode("utf-8", "surrogateescape")
