"""High-water marks of site ledgers, kept where a restore of the state folder does not reach.

A ledger's watermark beside it (privacy-ledger.watermark.json) rolls back with it when the whole
state folder is restored from an older backup, and anyone who can write the folder can recompute
it. The mark store is a second folder, named by the site's node config (`ledger-mark-dir`) or the
FEDCLINIC_LEDGER_MARK_DIR environment variable, else $XDG_STATE_HOME/fedclinic/ledger-marks
(~/.local/state/fedclinic/ledger-marks). Put it on a volume that state-folder backups do not
restore (docker/site.compose.yaml mounts one per site).

One file per ledger, `<ledger id>.json`, mode 0600, written atomically:
    {"ledger_id": ..., "entries": n, "sha256": SHA-256 of the ledger's first n lines, "ledger": path}
A ledger id is random, fixed at the ledger's first spend and written on every spend line, so a
copy of the state folder moved elsewhere still meets its mark. The mark is written before a new
ledger's first line (entries 0) and after every append, so a crash between the two writes leaves
the ledger at most one spend ahead of its mark, which is consistent.

What this cannot see: an attacker who can also write the mark store (root at the site). That is
out of any software's reach on the site's own machine; the README says so.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from storage.atomic import write_atomic

MARK_DIR_ENV = "FEDCLINIC_LEDGER_MARK_DIR"
_ID = re.compile(r"(legacy-)?[0-9a-f]{32}")


class MarkError(Exception):
    """The mark store cannot be read or written."""


@dataclass(frozen=True)
class Mark:
    """How many spends a ledger held at its last append, and the digest of those lines."""

    ledger_id: str
    entries: int
    sha256: str
    ledger: str


def default_mark_dir() -> Path:
    """FEDCLINIC_LEDGER_MARK_DIR, else $XDG_STATE_HOME/fedclinic/ledger-marks (~/.local/state/...)."""
    if os.environ.get(MARK_DIR_ENV):
        return Path(os.environ[MARK_DIR_ENV]).expanduser().resolve()
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home).expanduser().resolve() / "fedclinic" / "ledger-marks"


class MarkStore:
    """The folder of marks; reading a damaged mark is an error, never a missing mark."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, ledger_id: str) -> Path:
        if not _ID.fullmatch(ledger_id):
            raise MarkError(f"malformed ledger id {ledger_id!r}")
        return self.folder / f"{ledger_id}.json"

    def read(self, ledger_id: str) -> Mark | None:
        """The ledger's mark, or None when it has none."""
        path = self._path(ledger_id)
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MarkError(f"{path}: cannot be read ({type(exc).__name__})") from exc
        return _parse(path, raw)

    def write(self, mark: Mark) -> None:
        """Record `mark` atomically (raises MarkError when the store cannot be written)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self._path(mark.ledger_id), (json.dumps(asdict(mark), sort_keys=True) + "\n").encode(),
                         mode=0o600)
        except OSError as exc:
            raise MarkError(f"{self.folder}: cannot record the ledger's high-water mark ({exc})") from exc

    def for_ledger_path(self, ledger: Path) -> list[Mark]:
        """Every mark recorded for a ledger at this path (any id)."""
        if not self.folder.is_dir():
            return []
        marks = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                mark = _parse(path, path.read_text(encoding="utf-8"))
            except (OSError, MarkError):
                continue
            if mark.ledger == str(ledger):
                marks.append(mark)
        return marks


def _parse(path: Path, raw: str) -> Mark:
    try:
        data = json.loads(raw)
        mark = Mark(str(data["ledger_id"]), data["entries"], str(data["sha256"]), str(data["ledger"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MarkError(f"{path}: damaged high-water mark ({type(exc).__name__})") from exc
    if not isinstance(mark.entries, int) or mark.entries < 0:
        raise MarkError(f"{path}: damaged high-water mark (entries)")
    return mark
