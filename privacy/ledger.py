"""The site's privacy ledger: every release of a DP update, per dataset, across runs.

A JSON Lines file in the site's state folder, one spend per line, human-readable. It is
append-only: a write replaces the file with its old bytes plus one new line, through a
temporary file that is fsynced and renamed (storage.atomic), under an exclusive lock, so a crash
at any instant leaves either the old or the new ledger, never a shorter one. An unreadable
ledger is an error, never an empty budget.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from privacy.mechanism import MechanismUse
from storage.atomic import write_atomic

LEDGER_FILE = "privacy-ledger.jsonl"


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

    def spends(self) -> list[Spend]:
        """Every recorded spend, oldest first."""
        if not self.path.exists():
            return []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
            return [Spend(**json.loads(line)) for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise LedgerError(f"{self.path}: cannot be read ({type(exc).__name__}); restore it from "
                              "backup — the site will not train without knowing what it spent") from exc

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
        """Old bytes + one line, written atomically (call inside `locked()`)."""
        old = self.path.read_bytes() if self.path.exists() else b""
        if old and not old.endswith(b"\n"):
            raise LedgerError(f"{self.path}: does not end with a complete line; refusing to append")
        line = json.dumps(dataclasses.asdict(spend), sort_keys=True) + "\n"
        write_atomic(self.path, old + line.encode("utf-8"), mode=0o600)
