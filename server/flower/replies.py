"""Reading a site's reply defensively: a malformed reply is recorded with a reason, never a crash.

A site (or anything holding a site's key) chooses every byte of its reply, so every field the
coordinator uses is checked for presence, type and finiteness before use.
"""

from __future__ import annotations

import math

from flwr.app import Message, MetricRecord

from server.evaluation import SiteEvaluation
from server.recorder import SiteTraining

COMPUTE_KEY = "compute-s"
TRAIN_KEYS = ("num-examples", "epsilon", "delta", "lifetime-epsilon")
EVAL_KEYS = ("eval-loss", "auroc", "auroc-defined", "num-examples", "metrics-dp", "auroc-std", "epsilon",
             "lifetime-epsilon")
BINS = 10  # client/validation_release.py
# A count of patients (num-examples, a histogram cell) beyond any hospital's: larger values only
# serve to swamp a weighted average, or to overflow its sums and squares (inf, OverflowError).
MAX_COUNT = 10 ** 9
MAX_LOSS = 1e6  # far above a binary cross-entropy's (~-ln(1e-12) = 27.6); keeps loss x count finite


class MalformedReply(ValueError):
    """A reply without the fields fedclinic's ClientApp sends; the message says which."""


def metrics(msg: Message) -> MetricRecord:
    """The reply's one MetricRecord ('metrics'). Raises MalformedReply."""
    records = msg.content.metric_records
    if len(records) != 1:
        raise MalformedReply(f"expected one MetricRecord, got {len(records)}")
    return next(iter(records.values()))


def number(record: MetricRecord, key: str, *, default: float | None = None) -> float:
    """A finite number from the record. Raises MalformedReply (missing, a list, bool or not finite)."""
    value = record.get(key, default)
    if value is None or isinstance(value, (bool, list)) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise MalformedReply(f"metric {key!r} is missing or not a finite number")
    return float(value)


def bounded(record: MetricRecord, key: str, low: float, high: float) -> float:
    """number(), within [low, high] (its domain). Raises MalformedReply."""
    value = number(record, key)
    if not low <= value <= high:
        raise MalformedReply(f"metric {key!r} is outside [{low:g}, {high:g}]")
    return value


def _histogram(record: MetricRecord, key: str) -> tuple[float, ...]:
    value = record.get(key, [])
    if not isinstance(value, list) or len(value) != BINS or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) <= MAX_COUNT
            for v in value):
        raise MalformedReply(f"metric {key!r} is not {BINS} finite numbers within ±{MAX_COUNT:g}")
    return tuple(float(v) for v in value)


def _optional(record: MetricRecord, key: str) -> float | None:
    return number(record, key) if key in record else None


def site_training(msg: Message, site: str) -> SiteTraining:
    """The training report of a reply without error. Raises MalformedReply."""
    m = metrics(msg)
    n = bounded(m, "num-examples", 1, MAX_COUNT)
    if n != int(n):
        raise MalformedReply("metric 'num-examples' must be a positive whole number")
    return SiteTraining(site, int(n), number(m, "epsilon"), number(m, "delta"), number(m, "lifetime-epsilon"),
                        number(m, COMPUTE_KEY, default=0.0), _optional(m, "epsilon-cap"))


def site_evaluation(msg: Message, site: str) -> SiteEvaluation:
    """The evaluation report of a reply without error: AUROC in [0, 1], loss in [0, MAX_LOSS], counts
    and the AUROC's noise std within MAX_COUNT (a DP count may be noised below 0; on a small held-out
    set the std of a DP AUROC is well above 1). Raises MalformedReply."""
    m = metrics(msg)
    defined = number(m, "auroc-defined") != 0
    return SiteEvaluation(site, bounded(m, "auroc", 0, 1) if defined else None, bounded(m, "eval-loss", 0, MAX_LOSS),
                          max(0, int(bounded(m, "num-examples", -MAX_COUNT, MAX_COUNT))), number(m, "epsilon"),
                          number(m, "metrics-dp") != 0, bounded(m, "auroc-std", 0, MAX_COUNT), number(m, "lifetime-epsilon"),
                          number(m, COMPUTE_KEY, default=0.0), _histogram(m, "histogram-positive"),
                          _histogram(m, "histogram-negative"), _optional(m, "epsilon-cap"))
