"""The site's privacy ledger: every DP release, per dataset, across runs.

A JSON Lines file in the site's state folder, one spend per line, human-readable: a DP-SGD round
(`kind` "train") or a DP release of validation metrics (`kind` "evaluate"). It is append-only: a
write replaces the file with its old bytes plus one new line, through a temporary file that is
fsynced and renamed (storage.atomic), under an exclusive lock, so a crash at any instant leaves
either the old or the new ledger, never a shorter one. An unreadable ledger is an error, never
an empty budget.

Two records say how long the ledger must at least be:
- the watermark beside it (`privacy-ledger.watermark.json`: how many spends, and the SHA-256 of
  those lines), written after every append;
- the high-water mark in the mark store (privacy/ledger_marks.py), outside the state folder,
  keyed by the ledger's random id that every line carries.
Reading is an error (the site declines with 703) when the ledger has fewer spends than either
record, different bytes for them, lines from two ledgers, spends but no high-water mark (restored
or copied onto a store that never saw it), a watermark of 0 entries (never written by fedclinic),
is missing or empty while a record says it held spends, or is another ledger than the one the
mark store last saw at this path. A lost or lowered record therefore
never passes as a smaller spend, including a state folder restored whole from an older backup.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from privacy.ledger_marks import Mark, MarkError, MarkStore, default_mark_dir
from privacy.mechanism import MechanismUse
from storage.atomic import write_atomic

LEDGER_FILE = "privacy-ledger.jsonl"
WATERMARK_SUFFIX = ".watermark.json"
READ_ATTEMPTS = 5  # a writer holds the lock for milliseconds; tampering persists
READ_RETRY_S = 0.05
TRAIN, EVALUATE = "train", "evaluate"
_RESTORE = "restore the latest copy of the state folder, or ask the privacy officer to adopt this ledger " \
           "(`fedclinic privacy adopt`) — the site will not train on a record it cannot trust"


class LedgerError(Exception):
    """The ledger cannot be trusted; the site must not train until a person looks at it."""


@dataclass(frozen=True)
class Spend:
    """One release: the mechanism used and the epsilon it brought the totals to."""

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
    lifetime_cap: float          # the site policy's lifetime epsilon when this was spent
    accountant: str
    recorded_at: str
    kind: str = TRAIN            # train: a DP-SGD round | evaluate: a DP release of validation counts
    ledger_id: str = ""          # the ledger's identity (random, fixed at its first spend)

    @property
    def use(self) -> MechanismUse:
        return MechanismUse(self.noise_multiplier, self.sample_rate, self.steps)


class Ledger:
    """Read and append spends; reading never guesses.

    `mark_dir`: the high-water mark store (default: privacy.ledger_marks.default_mark_dir()).
    """

    def __init__(self, path: Path, mark_dir: Path | None = None) -> None:
        self.path = path
        self.watermark = path.with_name(path.stem + WATERMARK_SUFFIX)
        self.marks = MarkStore(mark_dir if mark_dir is not None else default_mark_dir())
        if self.marks.folder.resolve().is_relative_to(path.parent.resolve()):
            raise LedgerError(f"{self.marks.folder}: the ledger's high-water marks must live outside its state "
                              f"folder {path.parent} (a restore of that folder would roll them back)")

    def spends(self) -> list[Spend]:
        """Every recorded spend, oldest first (LedgerError when the record cannot be trusted)."""
        return _parse(self.path, self._lines())

    def history(self, dataset: str | None = None, run_id: str | None = None) -> list[MechanismUse]:
        """The mechanism history of a dataset (None: every dataset), for all runs or one run."""
        return [s.use for s in self.spends()
                if (dataset is None or s.dataset == dataset) and (run_id is None or s.run_id == run_id)]

    def _lines(self) -> list[str]:
        """The ledger's lines, checked against the watermark and the high-water mark.

        A reader outside `locked()` (site check, the officer's report) can fall between a writer's
        three writes (ledger, watermark, mark) and see records ahead of the lines it read; it
        reads again, READ_ATTEMPTS times in all, before calling the ledger untrustworthy.
        """
        for attempt in range(READ_ATTEMPTS):
            try:
                return self._checked_lines()
            except LedgerError:
                if attempt == READ_ATTEMPTS - 1:
                    raise
                time.sleep(READ_RETRY_S)
        raise AssertionError("unreachable")

    def _checked_lines(self) -> list[str]:
        lines = self._read_lines()
        watermark = self._read_watermark()
        _check_prefix(self.path, lines, watermark, self.watermark.name)
        if not lines:
            for mark in self._marks_for_path():
                if mark.entries > 0:
                    raise LedgerError(f"{self.path}: empty or missing, but its high-water mark in {self.marks.folder} "
                                      f"records {mark.entries} spends; {_RESTORE}")
            return lines
        ledger_id = _ledger_id(self.path, lines)
        for other in self._marks_for_path():
            if other.ledger_id != ledger_id and other.entries > 0:
                raise LedgerError(f"{self.path}: is not the ledger that was kept here ({other.entries} spends, "
                                  f"high-water mark in {self.marks.folder}); it was replaced; {_RESTORE}")
        mark = self._read_mark(ledger_id)
        if mark is None:
            raise LedgerError(f"{self.path}: holds {len(lines)} spends but {self.marks.folder} has no high-water "
                              f"mark for it (the state folder was restored or copied, or the mark store was "
                              f"lost; if the site keeps its marks elsewhere, name that store: --mark-dir, "
                              f"FEDCLINIC_LEDGER_MARK_DIR, or node.toml [site] ledger-marks); {_RESTORE}")
        _check_prefix(self.path, lines, {"entries": mark.entries, "sha256": mark.sha256},
                      f"its high-water mark in {self.marks.folder}")
        return lines

    def _read_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        try:
            return [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise LedgerError(f"{self.path}: cannot be read ({type(exc).__name__}); {_RESTORE}") from exc

    def _read_watermark(self) -> dict | None:
        if not self.watermark.exists():
            return None
        try:
            mark = json.loads(self.watermark.read_text(encoding="utf-8"))
            if not (isinstance(mark.get("entries"), int) and isinstance(mark.get("sha256"), str)):
                raise TypeError("entries/sha256 missing")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise LedgerError(f"{self.watermark}: cannot be read ({type(exc).__name__}); {_RESTORE}") from exc
        if mark["entries"] < 1:  # fedclinic writes a watermark only after an append
            raise LedgerError(f"{self.watermark}: records {mark['entries']} spends, which fedclinic never writes "
                              f"(the ledger was reset); {_RESTORE}")
        return mark

    def _read_mark(self, ledger_id: str) -> Mark | None:
        try:
            return self.marks.read(ledger_id)
        except MarkError as exc:
            raise LedgerError(f"{exc}; {_RESTORE}") from exc

    def _marks_for_path(self) -> list[Mark]:
        return self.marks.for_ledger_path(self.path.resolve())

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

    def append(self, spend: Spend) -> Spend:
        """Old bytes + one line, written atomically, then the watermark and the high-water mark
        (call inside `locked()`). Returns the spend as recorded (with the ledger's id)."""
        lines = self._lines()  # refuses a ledger that disagrees with its records
        old = self.path.read_bytes() if self.path.exists() else b""
        if old and not old.endswith(b"\n"):
            raise LedgerError(f"{self.path}: does not end with a complete line; refusing to append")
        if lines:
            ledger_id = _ledger_id(self.path, lines)
        else:
            ledger_id = secrets.token_hex(16)
            self._write_mark(ledger_id, [])  # before the first line: a crash leaves a consistent pair
        recorded = dataclasses.replace(spend, ledger_id="" if ledger_id.startswith("legacy-") else ledger_id)
        line = json.dumps(dataclasses.asdict(recorded), sort_keys=True)
        write_atomic(self.path, old + (line + "\n").encode("utf-8"), mode=0o600)
        lines.append(line)
        write_atomic(self.watermark, (json.dumps({"entries": len(lines), "sha256": _digest(lines)}) + "\n").encode(),
                     mode=0o600)
        self._write_mark(ledger_id, lines)
        return recorded

    def adopt(self) -> int:
        """Record the ledger as it is now as its high-water mark (a privacy officer's decision,
        e.g. after moving a site to a new machine); returns the number of spends adopted."""
        lines = self._read_lines()
        _parse(self.path, lines)
        if lines:
            self._write_mark(_ledger_id(self.path, lines), lines)
        return len(lines)

    def _write_mark(self, ledger_id: str, lines: list[str]) -> None:
        try:
            self.marks.write(Mark(ledger_id, len(lines), _digest(lines), str(self.path.resolve())))
        except MarkError as exc:
            raise LedgerError(f"{exc}; the site will not release anything it cannot record") from exc


def _parse(path: Path, lines: list[str]) -> list[Spend]:
    try:
        spends = [Spend(**json.loads(line)) for line in lines]
    except (json.JSONDecodeError, TypeError) as exc:
        raise LedgerError(f"{path}: cannot be read ({type(exc).__name__}); {_RESTORE}") from exc
    if any(s.kind not in (TRAIN, EVALUATE) for s in spends):
        raise LedgerError(f"{path}: a spend of unknown kind; {_RESTORE}")
    return spends


def _ledger_id(path: Path, lines: list[str]) -> str:
    """The id every line carries; a ledger written before ids existed gets one from its first line."""
    try:
        ids = {str(json.loads(line).get("ledger_id", "")) for line in lines}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise LedgerError(f"{path}: cannot be read ({type(exc).__name__}); {_RESTORE}") from exc
    if len(ids) != 1:
        raise LedgerError(f"{path}: holds lines of {len(ids)} different ledgers; {_RESTORE}")
    ledger_id = ids.pop()
    return ledger_id or "legacy-" + hashlib.sha256(lines[0].encode("utf-8")).hexdigest()[:32]


def _check_prefix(path: Path, lines: list[str], record: dict | None, what: str) -> None:
    if record is not None and (len(lines) < record["entries"]
                               or _digest(lines[:record["entries"]]) != record["sha256"]):
        raise LedgerError(f"{path}: its first {record['entries']} spends are not the ones {what} recorded (the "
                          f"ledger was truncated, edited or restored from an older copy); {_RESTORE}")


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode("utf-8")).hexdigest()
