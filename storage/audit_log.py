"""Append-only audit logs in JSON Lines, crash-safe, at the coordinator and at each site.

One event is one line: `{"time": ISO-8601 UTC, "event": NAME, ...fields}`. A line is written
with a single `write()` on a file opened with O_APPEND, then fsynced, under an exclusive
`flock`, so concurrent writers never interleave and a crash leaves at most the last line torn.
`read_events` skips a torn line (and counts it); the next event always starts on a line of its
own. A line that is not the start of an event means the log was edited, and is refused.

What goes into an audit log is chosen by its writer: never raw patient data, paths of patient
files or exception text from a site's data (see docs/threat-model.md).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MAX_LINE_BYTES = 64 * 1024  # one event; a longer one is refused rather than split


class AuditLogError(ValueError):
    """An audit log that cannot be written or read (names the file and the line)."""


@dataclass(frozen=True)
class AuditEvents:
    """The events of one log, oldest first, and the number of lines torn by a crash."""

    events: tuple[dict[str, object], ...]
    torn_lines: int


def append_event(path: Path, event: str, fields: Mapping[str, object] | None = None) -> dict[str, object]:
    """Append one event to `path` (created 0600 with its folder if missing); returns the event.

    Raises AuditLogError if the event does not serialise to one JSON line of at most
    MAX_LINE_BYTES, and OSError if the file cannot be written.
    """
    record: dict[str, object] = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                                 "event": event, **(fields or {})}
    try:
        line = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise AuditLogError(f"{path}: event {event!r} is not plain JSON: {exc}") from exc
    if len(line) > MAX_LINE_BYTES:
        raise AuditLogError(f"{path}: event {event!r} is {len(line)} bytes; the limit is {MAX_LINE_BYTES}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _finish_torn_line(fd, path)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return record


def _finish_torn_line(fd: int, path: Path) -> None:
    """After a crash mid-line, start the next event on a line of its own."""
    size = os.fstat(fd).st_size
    if size:
        with path.open("rb") as fh:
            fh.seek(size - 1)
            if fh.read(1) != b"\n":
                os.write(fd, b"\n")


def read_events(path: Path) -> AuditEvents:
    """All events of `path` (none if it does not exist), and how many lines a crash tore.

    Raises AuditLogError naming the line if a line is neither an event nor the torn start of one.
    """
    if not path.exists():
        return AuditEvents((), 0)
    events: list[dict[str, object]] = []
    torn = 0
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        if isinstance(value, dict):
            events.append(value)
        elif raw.startswith(b'{"') and value is None:
            torn += 1  # a write cut short by a crash; the next event starts on its own line
        else:
            raise AuditLogError(f"{path}: line {number} is not an audit event; the log was edited")
    return AuditEvents(tuple(events), torn)
