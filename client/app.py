"""The Flower ClientApp adapter: Flower records <-> client.site_round, and the error boundary.

A site never sends exception text, paths or patient identifiers to the coordinator: failures
are logged here, at the site, and the reply carries only a fixed code. A round the site's
privacy policy declines is answered the same way, with the decline code (privacy.decline).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ArrayRecord, Array, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site_data import SiteDataError
from client.site_round import SiteJob, evaluate_round, prepare, train_round
from configs.parse import ConfigError
from privacy.decline import REASONS, RoundDeclined

app = ClientApp()
log = logging.getLogger("fedclinic.site")

ERROR_SITE_DATA, ERROR_CONFIG, ERROR_INTERNAL = 601, 602, 603


def _job(msg: Message, context: Context) -> SiteJob:
    weights = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
    return prepare(str(context.run_config.get("overrides", "")), dict(context.node_config), weights)


def _reply(msg: Message, site: str, metrics: dict[str, float], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def _guarded(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except RoundDeclined as declined:
            log.warning("round declined by the site policy: %s", declined.detail)
            code, reason = declined.code, REASONS[declined.code]
        except SiteDataError as exc:
            log.error("site data problem: %s", exc)
            code, reason = ERROR_SITE_DATA, "site data unusable; see the site log"
        except ConfigError as exc:
            log.error("configuration problem: %s", exc)
            code, reason = ERROR_CONFIG, "configuration rejected by the site; see the site log"
        except Exception:  # the site must never crash or leak; details stay in its log
            log.exception("unexpected failure")
            code, reason = ERROR_INTERNAL, "internal error at the site; see the site log"
        return Message(Error(code=code, reason=reason), reply_to=msg)
    run.__name__ = handler.__name__
    return run


@app.train()
@_guarded
def train(msg: Message, context: Context) -> Message:
    """Local DP training from the global weights, if the site policy admits the round.

    ε reported covers every round of this run so far; the site's ledger records it before release.
    """
    job = _job(msg, context)
    server_round = int(msg.content.config_records["config"].get("server-round", 0))  # type: ignore[arg-type]
    weights, metrics = train_round(job, str(context.run_id), server_round)
    arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    return _reply(msg, job.site.name, metrics, arrays)


@app.evaluate()
@_guarded
def evaluate(msg: Message, context: Context) -> Message:
    """Validation of the global weights on this site's held-out patients."""
    job = _job(msg, context)
    return _reply(msg, job.site.name, evaluate_round(job))
