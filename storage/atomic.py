"""Crash-safe file replacement: a reader sees the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, payload: bytes, *, mode: int = 0o600) -> None:
    """Write to a temp file in the same folder, fsync it, rename over `path`, fsync the folder.

    `mode` defaults to owner-only: site files hold derived patient data.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: object, *, mode: int = 0o644) -> None:
    """Pretty JSON written atomically (readable by default: reports and summaries are shared)."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), mode=mode)
