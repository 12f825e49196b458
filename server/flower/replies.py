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


def _histogram(record: MetricRecord, key: str) -> tuple[float, ...]:
    value = record.get(key, [])
    if not isinstance(value, list) or len(value) != BINS or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in value):
        raise MalformedReply(f"metric {key!r} is not {BINS} finite numbers")
    return tuple(float(v) for v in value)


def _optional(record: MetricRecord, key: str) -> float | None:
    return number(record, key) if key in record else None


def site_training(msg: Message, site: str) -> SiteTraining:
    """The training report of a reply without error. Raises MalformedReply."""
    m = metrics(msg)
    n = number(m, "num-examples")
    if n <= 0 or n != int(n):
        raise MalformedReply("metric 'num-examples' must be a positive whole number")
    return SiteTraining(site, int(n), number(m, "epsilon"), number(m, "delta"), number(m, "lifetime-epsilon"),
                        number(m, COMPUTE_KEY, default=0.0), _optional(m, "epsilon-cap"))


def site_evaluation(msg: Message, site: str) -> SiteEvaluation:
    """The evaluation report of a reply without error. Raises MalformedReply."""
    m = metrics(msg)
    defined = number(m, "auroc-defined") != 0
    return SiteEvaluation(site, number(m, "auroc") if defined else None, number(m, "eval-loss"),
                          max(0, int(number(m, "num-examples"))), number(m, "epsilon"),
                          number(m, "metrics-dp") != 0, number(m, "auroc-std"), number(m, "lifetime-epsilon"),
                          number(m, COMPUTE_KEY, default=0.0), _histogram(m, "histogram-positive"),
                          _histogram(m, "histogram-negative"), _optional(m, "epsilon-cap"))
