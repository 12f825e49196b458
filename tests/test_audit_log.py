"""Audit logs: append-only JSON Lines that survive a crash mid-write and refuse an edit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from storage.audit_log import AuditLogError, append_event, read_events


def test_events_come_back_in_order_with_time_and_the_file_is_private(tmp_path: Path) -> None:
    log = tmp_path / "state" / "audit.jsonl"
    append_event(log, "run-joined", {"run": "r1", "app_sha256": "ab" * 32})
    append_event(log, "round", {"run": "r1", "round": 1, "status": "trained", "epsilon": 1.5})
    events = read_events(log)
    assert [e["event"] for e in events.events] == ["run-joined", "round"]
    assert events.events[1]["epsilon"] == 1.5 and str(events.events[0]["time"]).endswith("+00:00")
    assert events.torn_lines == 0
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600


def test_a_line_torn_by_a_crash_is_skipped_and_the_next_event_starts_a_new_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    append_event(log, "first")
    with log.open("ab") as fh:  # a crash after part of a write
        fh.write(b'{"event": "rou')
    append_event(log, "after-crash")
    events = read_events(log)
    assert [e["event"] for e in events.events] == ["first", "after-crash"]
    assert events.torn_lines == 1


def test_an_edited_log_is_refused_with_the_line_named(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    append_event(log, "first")
    with log.open("ab") as fh:
        fh.write(b"deleted the rest\n")
    with pytest.raises(AuditLogError, match="line 2"):
        read_events(log)


def test_an_event_that_is_not_plain_json_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with pytest.raises(AuditLogError, match="not plain JSON"):
        append_event(log, "bad", {"epsilon": float("nan")})
    assert not log.exists()
