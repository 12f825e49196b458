"""The Flower ClientApp adapter: Flower records <-> client.site_round, and the error boundary.

A site never sends exception text, paths or patient identifiers to the coordinator: failures
are logged here, at the site, and the reply carries only a fixed code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import ArrayRecord, Array, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site_data import SiteDataError
from client.site_round import DPState, SiteJob, evaluate_round, prepare, train_round
from configs.parse import ConfigError
from privacy.accountant import MechanismUse
from privacy.planning import NoisePlan

app = ClientApp()
log = logging.getLogger("fedclinic.site")

DP_STATE_KEY = "fedclinic-dp"
ERROR_SITE_DATA, ERROR_CONFIG, ERROR_INTERNAL = 601, 602, 603


def _job(msg: Message, context: Context) -> SiteJob:
    weights = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
    return prepare(str(context.run_config.get("overrides", "")), dict(context.node_config), weights)


def _load_state(context: Context) -> DPState | None:
    if DP_STATE_KEY not in context.state.config_records:
        return None
    rec = context.state.config_records[DP_STATE_KEY]
    plan = NoisePlan(float(rec["sigma"]), float(rec["sample-rate"]), int(rec["steps-per-round"]),
                     int(rec["planned-steps"]))
    history = tuple(MechanismUse(float(s), float(q), int(n)) for s, q, n in
                    zip(rec["hist-sigma"], rec["hist-rate"], rec["hist-steps"]))  # type: ignore[arg-type]
    return DPState(plan, history)


def _save_state(context: Context, state: DPState) -> None:
    p = state.plan
    context.state.config_records[DP_STATE_KEY] = ConfigRecord({
        "sigma": p.noise_multiplier, "sample-rate": p.sample_rate, "steps-per-round": p.steps_per_round,
        "planned-steps": p.planned_steps,
        "hist-sigma": [h.noise_multiplier for h in state.history],
        "hist-rate": [h.sample_rate for h in state.history],
        "hist-steps": [h.steps for h in state.history]})


def _reply(msg: Message, site: str, metrics: dict[str, float], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def _guarded(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
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
    """Local DP training from the global weights; ε/δ reported cover all rounds so far."""
    job = _job(msg, context)
    server_round = int(msg.content.config_records["config"].get("server-round", 0))  # type: ignore[arg-type]
    weights, metrics, state = train_round(job, _load_state(context), server_round)
    _save_state(context, state)
    arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    return _reply(msg, job.site.name, metrics, arrays)


@app.evaluate()
@_guarded
def evaluate(msg: Message, context: Context) -> Message:
    """Validation of the global weights on this site's held-out patients."""
    job = _job(msg, context)
    return _reply(msg, job.site.name, evaluate_round(job))
