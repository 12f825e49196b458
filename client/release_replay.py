"""A site's last release per (run, phase), kept so that the same request is answered again
without a second spend.

A resumed run re-sends its interrupted round: the same run key, round and overrides and the same
global weights (from the checkpoint of the last completed round). If the site already answered
that request, it sends its stored reply again, arrays and metrics as they were: re-sending an
output already released is post-processing (no new information, no ε). Any difference in the
request (its fingerprint, `fingerprint()`) makes a new release, admitted and recorded as usual.

Layout (in the site's state folder, mode 0600, written crash-safely by storage.atomic):
`releases/<run key>/<phase>.npz` (the arrays; empty for an evaluation) and `<phase>.json` (the
request's fingerprint, the round, the metrics and the SHA-256 of the .npz). Only the latest
release per (run, phase) is kept, and only for the MAX_RUNS most recently written runs: a
forgotten release only means that a repeated request is spent again (conservative). A release is
stored only after a ledger spend, so what a coordinator can make a site store is bounded by the
dataset's lifetime budget. A pair whose .npz does not match its .json (a crash between the two
writes), or that cannot be read, is no replay: the request is admitted and spent again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.atomic import write_atomic

RELEASES_DIR = "releases"
MAX_RUNS = 16          # run folders kept; the oldest (by its last write) goes first
Metrics = dict[str, float | int | list[float] | list[int]]


@dataclass(frozen=True)
class Release:
    """What leaves the site for one request: named arrays (none for an evaluation), metrics,
    and whether it is a stored release sent again (`replayed`, no spend)."""

    arrays: dict[str, np.ndarray]
    metrics: Metrics
    replayed: bool = False


def request_digest(overrides: str, arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 (hex) over the overrides string and the arrays as they arrived: each array's
    name, dtype, shape and bytes, in name order. "" means "no request" (no replay)."""
    h = hashlib.sha256()
    h.update(json.dumps(overrides).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint(phase: str, server_round: int, run_key: str, request: str) -> str:
    """The request's fingerprint: SHA-256 (hex) over phase, round, run key and request_digest()."""
    return hashlib.sha256(json.dumps([phase, server_round, run_key, request]).encode()).hexdigest()


class ReleaseStore:
    """The stored releases of one run at one site (`state_dir`: the site's state folder)."""

    def __init__(self, state_dir: Path, run_key: str) -> None:
        self.root = state_dir / RELEASES_DIR
        self.folder = self.root / run_key

    def find(self, phase: str, request_fingerprint: str) -> Release | None:
        """The release stored for this (run, phase) if it answered exactly this request, else None."""
        record, npz = self.folder / f"{phase}.json", self.folder / f"{phase}.npz"
        try:
            stored = json.loads(record.read_text(encoding="utf-8"))
            if stored.get("fingerprint") != request_fingerprint:
                return None
            payload = npz.read_bytes()
            if hashlib.sha256(payload).hexdigest() != stored.get("npz_sha256"):
                return None
            with np.load(io.BytesIO(payload), allow_pickle=False) as loaded:
                arrays = {name: loaded[name] for name in stored["arrays"]}
            return Release(arrays, dict(stored["metrics"]), replayed=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # absent or unreadable: a new release (spent again)

    def keep(self, phase: str, request_fingerprint: str, server_round: int, release: Release) -> None:
        """Store `release` as this (run, phase)'s latest, replacing the one before: the .npz first,
        then the .json naming its hash, so a crash in between leaves no replay, never a wrong one.
        Raises OSError if the state folder cannot be written (the reply is then not sent)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        buffer = io.BytesIO()
        np.savez(buffer, **release.arrays)
        payload = buffer.getvalue()
        write_atomic(self.folder / f"{phase}.npz", payload, mode=0o600)
        record = {"fingerprint": request_fingerprint, "round": server_round, "arrays": list(release.arrays),
                  "npz_sha256": hashlib.sha256(payload).hexdigest(), "metrics": release.metrics}
        write_atomic(self.folder / f"{phase}.json", (json.dumps(record, default=_plain) + "\n").encode(), mode=0o600)
        self._prune()

    def _prune(self) -> None:
        """Keep the MAX_RUNS run folders written last (this one included)."""
        runs = sorted((p for p in self.root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in runs[:-MAX_RUNS]:
            if old != self.folder:
                shutil.rmtree(old, ignore_errors=True)


def _process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot, /proc/PID/stat field 22) of a live process; None
    when no such process runs (or it is a zombie). Pairs with the boot id against PID reuse."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


class PendingClaim:
    """A spend recorded for a request whose release was never stored, so never sent.

    Written under the ledger's lock right after the spend is recorded, removed once the release
    is stored (`<phase>.pending.json`: the request's fingerprint, the round, and the writer's
    PID, process start time and boot id). The order is record -> claim -> compute -> store ->
    reply, so a claim whose writer is no longer running (a coordinator killed in simulation
    takes the sites' processes with it) proves that nothing was released for that request: the
    same request may then be computed again under the spend already recorded. That is still one
    release of the mechanism the ledger holds. A claim whose writer still runs (a concurrent
    duplicate) is not taken over: that request is admitted and spent anew."""

    def __init__(self, store: ReleaseStore, phase: str, request_fingerprint: str, server_round: int) -> None:
        self.store, self.phase, self.request, self.round = store, phase, request_fingerprint, server_round
        self.path = store.folder / f"{phase}.pending.json"

    def orphaned(self) -> bool:
        """True when this exact request was claimed by a process that no longer runs."""
        try:
            claim = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if claim.get("fingerprint") != self.request or claim.get("round") != self.round:
            return False
        alive = claim.get("boot") == _boot_id() and _process_start(int(claim.get("pid", -1))) == claim.get("start")
        return not alive

    def mark(self) -> None:
        """Claim the request for this process (call under the ledger's lock)."""
        self.store.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        pid = os.getpid()
        record = {"fingerprint": self.request, "round": self.round, "pid": pid, "start": _process_start(pid),
                  "boot": _boot_id()}
        write_atomic(self.path, (json.dumps(record) + "\n").encode(), mode=0o600)

    def release(self) -> None:
        """The release is stored: the claim is over."""
        self.path.unlink(missing_ok=True)


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it holds (for the metrics' JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a metric value")
