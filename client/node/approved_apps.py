"""The site's allow-list of app bundles (approved-apps.txt): which FAB hashes it will answer.

Format, one entry per line:

    # comment lines and blank lines are ignored
    <64 lowercase hex digits: the SHA-256 of a FAB>  [# optional comment]

Anything else is an error naming the file and the line, and the whole list is refused: a site
whose list cannot be read answers no run (fail closed). Approving a hash never makes the site
run the bundle's code: the gated runner always runs the site's installed ClientApp; the list
only says which coordinator submissions the site takes part in (client/node/flower_runner.py).
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class AllowListError(ValueError):
    """approved-apps.txt (or a hash meant for it) is not what the format above allows."""


def parse_allow_list(text: str, source: Path) -> frozenset[str]:
    """The approved SHA-256 hashes (lowercase hex) in `text`; errors name `source` and the line."""
    approved = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        entry = raw.partition("#")[0].strip()
        if not entry:
            continue
        if not SHA256_HEX.fullmatch(entry):
            shown = entry if len(entry) <= 80 else entry[:77] + "..."
            raise AllowListError(f"{source} line {number}: {shown!r} is not a SHA-256 hash (64 lowercase hex "
                                 "digits, then optionally '# comment'); fix or delete the line")
        approved.add(entry)
    return frozenset(approved)


def read_allow_list(path: Path) -> frozenset[str]:
    """Parse the allow-list file. Raises AllowListError if it is missing, unreadable or malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AllowListError(f"{path}: no allow-list (`fedclinic site init` writes one; "
                             "`fedclinic site approve CONFIG HASH` adds to it)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AllowListError(f"{path}: cannot be read: {exc}") from None
    return parse_allow_list(text, path)


def normalise_hash(value: str) -> str:
    """`value` as lowercase hex if it is a SHA-256 hash (64 hex digits); else AllowListError."""
    digest = value.strip().lower()
    if not SHA256_HEX.fullmatch(digest):
        raise AllowListError(f"{value!r} is not a SHA-256 hash: expected 64 hex digits "
                             "(the coordinator's announcement of a release gives it)")
    return digest


def entry_line(digest: str, note: str) -> str:
    """One allow-list line: the hash, then a comment with `note` and today's date (UTC)."""
    day = datetime.now(timezone.utc).date().isoformat()
    comment = " ".join(note.split())  # one line, whatever the note held
    return f"{normalise_hash(digest)}  # {comment} (approved {day})\n"


def append_entry(path: Path, digest: str, note: str) -> bool:
    """Add `digest` to the allow-list at `path` (which must parse); False if it was there already."""
    digest = normalise_hash(digest)
    existing = read_allow_list(path)
    if digest in existing:
        return False
    text = path.read_bytes()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (b"\n" if text and not text.endswith(b"\n") else b"") + entry_line(digest, note).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
