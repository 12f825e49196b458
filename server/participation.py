"""Who took part in each round: per site and per phase (training, evaluation), one outcome.

Training outcomes: trained, rejected (its update was left out of the average: server/update_check.py),
declined (the site's privacy policy said no: a 7xx code, privacy/decline.py), failed (an error
code: 6xx, client/app.py), timed_out (no reply within strategy.round_timeout, or the site went
offline), not_sampled (online or known, but not asked this round). Evaluation outcomes: evaluated,
declined, failed, timed_out, not_sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAIN, EVALUATE = "train", "evaluate"
TRAINED, EVALUATED, REJECTED, DECLINED, FAILED, TIMED_OUT, NOT_SAMPLED = (
    "trained", "evaluated", "rejected", "declined", "failed", "timed_out", "not_sampled")
NO_REPLY = "no reply within strategy.round_timeout (offline, or still working)"


@dataclass(frozen=True)
class Outcome:
    """One site's outcome in one phase of one round; `code` for declines and failures."""

    status: str
    code: int | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"status": self.status, "code": self.code, "reason": self.reason}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Outcome:
        code = raw.get("code")
        reason = raw.get("reason")
        return cls(str(raw["status"]), int(code) if isinstance(code, int) else None,
                   str(reason) if reason is not None else None)


def plural(count: int, noun: str) -> str:
    """'1 site', '2 sites'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
