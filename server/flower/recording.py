"""The mixin in front of every Flower strategy: k-of-n rounds with a deadline, updates checked
before aggregation, every site's outcome recorded per phase, checkpoints, and resume.

Put it first in the bases (`class X(RecordingStrategy, FedAvg)`): it calls Flower's own
configure/aggregate methods through super(). Rounds are numbered for the run: a resumed run's
Flower loop counts from 1 again, and `rules.first_round` shifts it (the sites and the records see
the run's round numbers).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from configs.schema import EvaluationConfig
from model.exchange import from_exchange
from privacy.decline import REASONS as DECLINE_REASONS
from server.clinical_metrics import histogram_metrics, pooled_metrics
from server.evaluation import SiteEvaluation
from server.flower.deadline_grid import DeadlineGrid
from server.flower.replies import MalformedReply, site_evaluation, site_training
from server.participation import (DECLINED, EVALUATE, EVALUATED, FAILED, NO_REPLY, NOT_SAMPLED, REJECTED, TIMED_OUT,
                                  TRAIN, TRAINED, Outcome, plural)
from server.recorder import RunRecorder, SiteTraining
from server.run_folder import save_checkpoint
from server.run_state import BEST_CHECKPOINT, BUDGET_CODES, BUDGET_EXHAUSTED, RunStopped
from server.update_check import capped_counts, norm_outliers, update_norm, update_problem


@dataclass(frozen=True)
class RoundRules:
    """What makes a round: k of n sites, a deadline, bounds on updates (configs/schema.py StrategyConfig)."""

    min_sites: int = 1
    max_update_norm: float | None = None
    outlier_factor: float = 10.0
    run_id: str = ""        # fedclinic's run id (the run folder's name): the sites' ledger key
    first_round: int = 1    # the run's number of the Flower loop's round 1 (resume)


def _no_metrics(contents: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """fedclinic reads each site's metrics itself (server/flower/replies.py), not Flower's average."""
    return MetricRecord()


SITE_TAG = re.compile(r" \[site ([A-Za-z0-9._-]{1,64})\]$")  # client/app.py _site_tag


class RecordingStrategy:
    """Mixin for a Flower strategy; see the module docstring."""

    def __init__(self, recorder: RunRecorder, run_dir: Path, reference: Mapping[str, torch.Tensor] | None = None,
                 *, rules: RoundRules = RoundRules(), evaluation: EvaluationConfig = EvaluationConfig(),
                 **kwargs: Any) -> None:
        """`reference`: the model's state dict when the model travels flat (model.exchange); None
        when it travels as named arrays (checkpoints then take the arrays as they are)."""
        kwargs.setdefault("train_metrics_aggr_fn", _no_metrics)
        kwargs.setdefault("evaluate_metrics_aggr_fn", _no_metrics)
        super().__init__(**kwargs)
        self.recorder, self.run_dir, self.reference = recorder, run_dir, reference
        self.rules, self.evaluation = rules, evaluation
        self.sent: dict[str, np.ndarray] | None = None  # the global model of the current round
        self.global_arrays: ArrayRecord | None = None   # the newest global model (what a resume restarts from)
        self.asked: list[int] = []     # node ids this phase's messages went to
        self.online: list[int] = []    # node ids online when this phase sampled
        self.last_aggregated: int | None = None
        self.best: tuple[int, float] | None = None       # (round, AUROC) of best_model.pt
        self.on_round_end: Callable[[int], None] | None = None
        self.idle_reason: str | None = None  # why no site was asked in this phase
        self.krum_keep_all = False           # MultiKrum with krum_keep 0 (strategies.build_strategy)

    # -- rounds -------------------------------------------------------------------------------
    def _run_round(self, flower_round: int) -> int:
        return flower_round + self.rules.first_round - 1

    def _sample(self, grid: Grid, minimum: int, number: int) -> tuple[Grid | None, str | None]:
        """The grid to sample from (a fixed snapshot), or None and why when too few sites are online."""
        if not isinstance(grid, DeadlineGrid):
            self.online = list(grid.get_node_ids())
            return grid, None
        nodes, enough = grid.wait_for_nodes(minimum)
        self.online = nodes
        if not enough:
            return None, (f"{plural(len(nodes), 'site')} online, strategy.min_sites is {minimum} "
                          f"(waited strategy.round_timeout, {grid.round_timeout:g} s)")
        return grid.snapshot(nodes), None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        number = self._run_round(server_round)
        self.sent = {k: v.numpy() for k, v in arrays.items()}
        self.global_arrays = arrays
        config["run-id"] = self.rules.run_id
        self.idle_reason = None
        sampled, why = self._sample(grid, self.rules.min_sites, number)
        if sampled is None:
            self.asked, self.idle_reason = [], "too few sites online"
            self.recorder.skip(number, f"not started: {why}")
            return []
        messages = list(super().configure_train(number, arrays, config, sampled))  # type: ignore[misc]
        self.asked = [m.metadata.dst_node_id for m in messages]
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        number = self._run_round(server_round)
        config["run-id"] = self.rules.run_id
        self.asked, self.idle_reason = [], None
        if not self.recorder.round_record(number).aggregated:
            self.idle_reason = "the round did not aggregate a new model"  # evaluating it again would spend ε
            return []
        if getattr(self, "fraction_evaluate", 1.0) == 0.0:
            self.idle_reason = "strategy.fraction_evaluate is 0"
            return []
        sampled, _ = self._sample(grid, 1, number)
        if sampled is None:
            return []
        messages = list(super().configure_evaluate(number, arrays, config, sampled))  # type: ignore[misc]
        self.asked = [m.metadata.dst_node_id for m in messages]
        return messages

    def _check_and_log_replies(self, replies: Iterable[Message], is_train: bool, validate: bool = True
                               ) -> tuple[list[Message], list[Message]]:
        """Flower's check without its consistency validation, which raises on one odd reply and
        ends the run: every reply that reaches Flower's aggregation was checked here already."""
        return super()._check_and_log_replies(replies, is_train, validate=False)  # type: ignore[misc]

    # -- who answered -------------------------------------------------------------------------
    def _site(self, msg: Message) -> str:
        """The name a site gives itself in its replies (remembered for its later error replies).

        The site chooses it, so it is made plain text (no control characters, which a terminal
        would obey, and no '[', ']', which rich reads as markup: '[/]' raised MarkupError and
        ended the run) of at most 64 characters, and unique: a name another node already uses
        (even one chosen to read like another's 'name (node N)') becomes 'name (node N)', then
        'name (node N, k)'. Per-site figures are keyed by this name."""
        node = msg.metadata.src_node_id
        sent = None
        if msg.has_error():  # an error reply carries no content: the site names itself in a tag
            tagged = SITE_TAG.search(str(msg.error.reason))
            sent = tagged.group(1) if tagged else None
        elif "site" in msg.content.config_records:
            sent = str(msg.content.config_records["site"].get("name", ""))[:64]
        if sent is not None and node not in self.recorder.names:
            name = "".join(c if c.isprintable() else "?" for c in sent).replace("[", "(").replace("]", ")")
            taken = {n for other, n in self.recorder.names.items() if other != node}
            candidates = [name or f"node-{node}", f"{name} (node {node})",
                          *(f"{name} (node {node}, {k})" for k in range(2, len(taken) + 3))]
            self.recorder.names[node] = next(c for c in candidates if c not in taken)
        return self.recorder.site_name(node)

    def _outcomes(self, number: int, phase: str, replies: list[Message], done: Mapping[int, Outcome]) -> None:
        """Record every known site's outcome in this phase; `done` holds the answered ones by node."""
        answered = {m.metadata.src_node_id: m for m in replies}
        for node in dict.fromkeys([*self.asked, *answered]):  # asked first; an unasked reply is recorded too
            reply = answered.get(node)
            if node in done:
                outcome = done[node]
            elif reply is None:
                outcome = Outcome(TIMED_OUT, None, NO_REPLY)
            elif reply.has_error() and reply.error.code in DECLINE_REASONS:
                outcome = Outcome(DECLINED, reply.error.code, DECLINE_REASONS[reply.error.code])
            elif reply.has_error():
                outcome = Outcome(FAILED, reply.error.code, str(reply.error.reason)[:300])
            else:
                outcome = Outcome(FAILED, None, "malformed reply")
            site = self._site(reply) if reply is not None else self.recorder.site_name(node)
            self.recorder.participated(number, phase, site, outcome)
        asked = set(self.asked) | set(answered)
        answered_names = {self.recorder.site_name(n) for n in asked}
        known = {self.recorder.site_name(n) for n in self.online if n not in asked}
        known |= {name for n, name in self.recorder.names.items() if n not in asked}
        known |= set(self.recorder.known_sites())  # sites recorded in earlier rounds (also before a resume)
        drawn_from = {self.recorder.site_name(n) for n in self.online}
        for site in sorted(known - answered_names):
            why = self.idle_reason or ("not drawn this round" if site in drawn_from else "offline")
            self.recorder.participated(number, phase, site, Outcome(NOT_SAMPLED, None, why))

    @staticmethod
    def _why(outcome: Outcome) -> str:
        if outcome.status == TIMED_OUT:
            return "no reply (offline, or past strategy.round_timeout)"
        return f"error {outcome.code}" if outcome.code is not None else str(outcome.reason)

    # -- training -----------------------------------------------------------------------------
    def _checked(self, number: int, replies: list[Message]) -> tuple[list[tuple[Message, SiteTraining]], dict[int, Outcome]]:
        """Replies whose update can be averaged, with their reports; the others as outcomes by node."""
        kept: list[tuple[Message, SiteTraining, dict[str, np.ndarray]]] = []
        outcomes: dict[int, Outcome] = {}
        for m in replies:
            if m.has_error():
                continue
            site = self._site(m)
            try:
                report = site_training(m, site)
                if list(m.content.array_records) != ["arrays"]:
                    raise MalformedReply("expected one ArrayRecord named 'arrays'")
                arrays = {k: v.numpy() for k, v in m.content.array_records["arrays"].items()}
            except (MalformedReply, ValueError, TypeError) as exc:
                outcomes[m.metadata.src_node_id] = Outcome(REJECTED, None, f"malformed reply: {exc}")
                continue
            problem = update_problem(arrays, self.sent)
            if problem is not None:
                outcomes[m.metadata.src_node_id] = Outcome(REJECTED, None, problem)
                continue
            kept.append((m, report, arrays))
        if self.sent is not None and kept:  # by node: one norm per reply, whatever the sites call themselves
            norms = {m.metadata.src_node_id: update_norm(a, self.sent) for m, _, a in kept}
            outliers = norm_outliers(norms, max_norm=self.rules.max_update_norm, factor=self.rules.outlier_factor)
            for node, why in outliers.items():
                outcomes[node] = Outcome(REJECTED, None, why)
            kept = [k for k in kept if k[0].metadata.src_node_id not in outliers]
        counts = {m.metadata.src_node_id: r.num_examples for m, r, _ in kept}
        weights = capped_counts(counts, factor=self.rules.outlier_factor)
        for m, r, _ in kept:
            node = m.metadata.src_node_id
            if weights[node] < counts[node]:  # Flower averages by the reply's count: it gets the capped one
                m.content.metric_records[next(iter(m.content.metric_records))]["num-examples"] = weights[node]
                outcomes[node] = Outcome(TRAINED, None, f"weight capped at {weights[node]} examples (reported "
                                                        f"{counts[node]}; strategy.outlier_factor x the median)")
            else:
                outcomes[node] = Outcome(TRAINED)
        for node, o in outcomes.items():
            if o.status == REJECTED:
                self.recorder.rejected(number, self.recorder.site_name(node), str(o.reason))
        return [(m, r) for m, r, _ in kept], outcomes

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        number = self._run_round(server_round)
        replies = list(replies)
        kept, outcomes = self._checked(number, replies)
        self._outcomes(number, TRAIN, replies, outcomes)
        record = self.recorder.rounds[number]
        failed = {site: self._why(p[TRAIN]) for site, p in record.participation.items()
                  if TRAIN in p and p[TRAIN].status in (FAILED, TIMED_OUT)}
        declined = {m.metadata.src_node_id: m.error.code for m in replies
                    if m.has_error() and m.error.code in DECLINE_REASONS}
        self.recorder.trained(number, [r for _, r in kept], failed=failed, declined=declined)
        arrays, metrics = None, None
        if len(kept) >= self.rules.min_sites:
            if getattr(self, "krum_keep_all", False):  # MultiKrum with krum_keep 0: keep n - f
                self.num_nodes_to_select = max(1, len(kept) - self.num_malicious_nodes)
            arrays, metrics = super().aggregate_train(number, [m for m, _ in kept])  # type: ignore[misc]
        elif self.asked:
            self.recorder.skip(number, f"fewer sites trained than strategy.min_sites ({self.rules.min_sites})")
        if arrays is not None:
            self.recorder.aggregated(number)
            self.global_arrays, self.last_aggregated = arrays, number
            save_checkpoint(self.run_dir, self.named(arrays), number)
        elif not kept and declined and not failed and all(c in BUDGET_CODES for c in declined.values()):
            self.recorder.round_line(number)
            why = "; ".join(sorted({DECLINE_REASONS[c].removeprefix("declined: ") for c in declined.values()}))
            raise RunStopped(BUDGET_EXHAUSTED, f"round {number}: every site declined ({why}). Each site's "
                             "ledger says what it spent: `fedclinic privacy report LEDGER` at the site; "
                             "`fedclinic privacy plan` shows what a budget allows")
        return arrays, metrics

    def named(self, arrays: ArrayRecord) -> dict[str, np.ndarray]:
        """An aggregated (flat) model as the named state dict a checkpoint holds."""
        flat = {k: v.numpy() for k, v in arrays.items()}
        return flat if self.reference is None else from_exchange(flat, self.reference)

    # -- evaluation ---------------------------------------------------------------------------
    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        number = self._run_round(server_round)
        replies = list(replies)
        evals: list[SiteEvaluation] = []
        outcomes: dict[int, Outcome] = {}
        for m in replies:
            if m.has_error():
                continue
            try:
                evals.append(site_evaluation(m, self._site(m)))
                outcomes[m.metadata.src_node_id] = Outcome(EVALUATED)
            except (MalformedReply, ValueError, TypeError) as exc:
                outcomes[m.metadata.src_node_id] = Outcome(FAILED, None, f"malformed reply: {exc}")
        self._outcomes(number, EVALUATE, replies, outcomes)
        record = self.recorder.round_record(number)
        failed = {site: self._why(p[EVALUATE]) for site, p in record.participation.items()
                  if EVALUATE in p and p[EVALUATE].status in (FAILED, TIMED_OUT)}
        record.metrics = self._clinical(evals)
        weights = capped_counts({i: e.num_examples for i, e in enumerate(evals)}, factor=self.rules.outlier_factor)
        evals = [dataclasses.replace(e, num_examples=weights[i]) for i, e in enumerate(evals)]  # AUROC weights
        result = self.recorder.evaluated(number, evals, failed=failed)
        if result.auroc is not None and self.global_arrays is not None and self.last_aggregated is not None \
                and (self.best is None or result.auroc > self.best[1]):
            self.best = (number, result.auroc)
            save_checkpoint(self.run_dir, self.named(self.global_arrays), self.last_aggregated, name=BEST_CHECKPOINT)
        if self.on_round_end is not None:
            self.on_round_end(number)
        values = {"auroc": result.auroc, "loss": result.loss}
        return MetricRecord({k: float(v) for k, v in values.items() if v is not None}) if evals else None

    def _clinical(self, evals: list[SiteEvaluation]) -> dict[str, Any]:
        """Clinician metrics per site and pooled, from the released histograms (post-processing)."""
        e = self.evaluation
        pairs = [(s.histogram_positive, s.histogram_negative) for s in evals if s.histogram_positive]
        if not pairs:
            return {}
        return {"pooled": pooled_metrics(pairs, threshold=e.threshold, min_cell=e.min_cell).as_dict(),
                "sites": {s.site: histogram_metrics(s.histogram_positive, s.histogram_negative,
                                                    threshold=e.threshold, min_cell=e.min_cell).as_dict()
                          for s in evals if s.histogram_positive}}

    # -- server optimiser state (FedAdam, FedYogi, FedAdagrad keep moments m_t, v_t) ------------
    def strategy_state(self) -> dict[str, dict[str, np.ndarray] | None]:
        return {part: getattr(self, part) for part in ("m_t", "v_t") if getattr(self, part, None)}

    def load_strategy_state(self, state: Mapping[str, dict[str, np.ndarray]]) -> None:
        for part, arrays in state.items():
            if part in ("m_t", "v_t") and hasattr(self, part):
                setattr(self, part, {k: np.array(v) for k, v in arrays.items()})
