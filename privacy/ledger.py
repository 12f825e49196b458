"""The site's privacy ledger: every release of a DP update, per dataset, across runs.

A JSON Lines file in the site's state folder, one spend per line, human-readable. It is
append-only: a write replaces the file with its old bytes plus one new line, through a
temporary file that is fsynced and renamed (storage.atomic), under an exclusive lock, so a crash
at any instant leaves either the old or the new ledger, never a shorter one. An unreadable
ledger is an error, never an empty budget.

A watermark beside it (`privacy-ledger.watermark.json`: how many spends, and the SHA-256 of those
lines) is written after every append. A ledger with fewer spends than its watermark, with
different bytes for them, or missing while its watermark exists, was truncated, edited, deleted or
restored from an older backup: reading it is an error, so a lost or lowered record can never
pass as a smaller spend. A crash between the two writes leaves the ledger one spend ahead of the
watermark, which is consistent. Deleting both files is the one loss this cannot see: keep the
state folder on backed-up storage that only the site's service account can write.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from privacy.mechanism import MechanismUse
from storage.atomic import write_atomic

LEDGER_FILE = "privacy-ledger.jsonl"
WATERMARK_SUFFIX = ".watermark.json"


class LedgerError(Exception):
    """The ledger cannot be read; the site must not train until a person looks at it."""


@dataclass(frozen=True)
class Spend:
    """One round's release: the mechanism used and the ε it brought the totals to."""

    dataset: str
    run_id: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    run_epsilon: float
    lifetime_epsilon: float
    lifetime_delta: float
    lifetime_cap: float          # the site policy's lifetime ε when this was spent
    accountant: str
    recorded_at: str

    @property
    def use(self) -> MechanismUse:
        return MechanismUse(self.noise_multiplier, self.sample_rate, self.steps)


class Ledger:
    """Read and append spends; reading never guesses."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.watermark = path.with_name(path.stem + WATERMARK_SUFFIX)

    def spends(self) -> list[Spend]:
        """Every recorded spend, oldest first."""
        lines = self._lines()
        try:
            return [Spend(**json.loads(line)) for line in lines]
        except (json.JSONDecodeError, TypeError) as exc:
            raise LedgerError(f"{self.path}: cannot be read ({type(exc).__name__}); restore it from "
                              "backup — the site will not train without knowing what it spent") from exc

    def _lines(self) -> list[str]:
        """The ledger's lines, checked against the watermark."""
        mark = self._read_watermark()
        if not self.path.exists():
            if mark is not None and mark["entries"] > 0:
                raise LedgerError(f"{self.path}: missing, but {self.watermark.name} records {mark['entries']} "
                                  "spends; restore the ledger from backup — the site will not train as if "
                                  "nothing had been spent")
            return []
        try:
            lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"{self.path}: cannot be read ({type(exc).__name__}); restore it from "
                              "backup — the site will not train without knowing what it spent") from exc
        if mark is not None and (len(lines) < mark["entries"] or _digest(lines[:mark["entries"]]) != mark["sha256"]):
            raise LedgerError(f"{self.path}: its first {mark['entries']} spends are not the ones "
                              f"{self.watermark.name} recorded (the ledger was truncated, edited or restored "
                              "from an older copy); restore it from backup (the latest copy) — the site will not "
                              "train on a lowered record")
        return lines

    def _read_watermark(self) -> dict | None:
        if not self.watermark.exists():
            return None
        try:
            mark = json.loads(self.watermark.read_text(encoding="utf-8"))
            if not (isinstance(mark.get("entries"), int) and isinstance(mark.get("sha256"), str)):
                raise TypeError("entries/sha256 missing")
            return mark
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise LedgerError(f"{self.watermark}: cannot be read ({type(exc).__name__}); restore it with the "
                              "ledger from backup") from exc

    def history(self, dataset: str, run_id: str | None = None) -> list[MechanismUse]:
        """The mechanism history of a dataset (all runs, or one run)."""
        return [s.use for s in self.spends() if s.dataset == dataset and (run_id is None or s.run_id == run_id)]

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock: one read-project-append sequence at a time."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def append(self, spend: Spend) -> None:
        """Old bytes + one line, written atomically, then the watermark (call inside `locked()`)."""
        lines = self._lines()  # refuses a ledger that disagrees with its watermark
        old = self.path.read_bytes() if self.path.exists() else b""
        if old and not old.endswith(b"\n"):
            raise LedgerError(f"{self.path}: does not end with a complete line; refusing to append")
        line = json.dumps(dataclasses.asdict(spend), sort_keys=True)
        write_atomic(self.path, old + (line + "\n").encode("utf-8"), mode=0o600)
        lines.append(line)
        write_atomic(self.watermark, (json.dumps({"entries": len(lines), "sha256": _digest(lines)}) + "\n").encode(),
                     mode=0o600)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()
