"""One site's work for one message, in plain Python: config, data, model, a DP release, metrics.

The site's privacy ledger is the authority on what was spent: the noise multiplier of a run, its
history and the dataset's lifetime history are all read from it. Every release (a DP-SGD round,
a DP release of validation metrics) is admitted against the ledger and recorded in it, under its
lock, BEFORE the computation whose result leaves the site; the noise is planned outside the lock.

A request the site already answered (same run key, round, phase, overrides and weights:
client/release_replay.py) is answered with the stored release, without training and without a
new spend. The order is: ledger record -> compute -> store the release -> reply. A crash between
the record and the store makes the resumed round spend again: the ledger never forgets budget,
at worst it counts a round twice.

client/app.py converts Flower records to and from these types; nothing here imports flwr.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from client.site_data.labels import read_labels
from client.recipe import check_data_limits, site_experiment
from client.release_replay import PendingClaim, Release, ReleaseStore, fingerprint, request_digest
from client.site import SiteSettings, site_settings
from client.site_data.site_cache import SiteCache, SiteKey
from client.site_data.fingerprint import folder_fingerprint
from client.site_data.loader import SiteArrays, SiteDataError, load_site
from client.site_file import read_site_file
from client.trainer import evaluate, pick_device, split_dataset, train_dp
from client.validation_release import binned_metrics, dp_release, exact_release
from configs.load import load_experiment, released_experiment, split_overrides
from configs.parse import ConfigError
from configs.schema import ExperimentConfig, SiteFileConfig
from model.exchange import from_exchange, load_numpy_state, state_to_numpy
from model.networks import FusionModel, activation_bytes, build_model
from privacy.accountant import MechanismUse
from privacy.accounting_cache import AccountingCache
from privacy.decline import (EVAL_LIMIT, EVAL_TOO_SMALL, LEDGER_UNREADABLE, LIFETIME_BUDGET, RUN_BUDGET,
                             RoundDeclined)
from privacy.dpsgd.settings import DPSettings, os_seeded_generator
from privacy.ledger import EVALUATE, LEDGER_FILE, TRAIN, Ledger, LedgerError, Spend
from privacy.planning import BudgetExhausted, LifetimeBudget, plan_noise, poisson_schedule
from privacy.policy import Account, Projection, Terms, account, admit, project, tighten

log = logging.getLogger("fedclinic.site")
COMPUTE_KEY = "compute-s"  # seconds of the site's own work on a message (training, or scoring), to 0.1 s
EPSILON_CAP_KEY = "epsilon-cap"  # the run ε ceiling the site applies (a policy value, docs/threat-model.md)


def coarse_seconds(seconds: float) -> float:
    """Seconds rounded to 0.1 s: how long the site computed, released as coarsely as the
    coordinator already observes it from reply times (docs/threat-model.md, "Compute time")."""
    return round(max(seconds, 0.0), 1)


@dataclass(frozen=True)
class SiteJob:
    """Everything a handler needs, resolved once per message."""

    cfg: ExperimentConfig       # what the site runs: the recipe within its limits, its own data meaning
    site: SiteSettings
    site_file: SiteFileConfig
    arrays: SiteArrays
    model: FusionModel
    device: torch.device
    accounting: AccountingCache | None = None  # the process's (client/site_data/site_cache.py), if any
    request: str = ""           # release_replay.request_digest of the message ("": never replayed)

    @property
    def terms(self) -> Terms:
        return tighten(self.cfg.privacy, self.site_file.policy)

    @property
    def dataset(self) -> str:
        return self.site_file.policy.dataset_id or self.site.name

    def ledger(self) -> Ledger:
        return Ledger(self.site.state_dir / LEDGER_FILE, self.site.mark_dir)


def prepare(overrides: str, node_config: Mapping[str, object], exchanged: Mapping[str, np.ndarray],
            cache: SiteCache | None = None) -> SiteJob:
    """Check the request against the site's ownership and limits (before allocating anything),
    then load the site data (through the per-file preprocessing cache, and through `cache`, the
    process's SiteCache, when given: a site whose files and settings are unchanged is not loaded
    again) and the global weights, `exchanged` as they travel (model.exchange: one flat vector).

    Raises ConfigError (602), SiteDataError (601) or model.exchange.WeightsRefused.
    """
    requested = cache.experiment(overrides) if cache is not None else load_experiment(split_overrides(overrides))
    released = released_experiment()
    site = site_settings(node_config, requested.data.root)
    site_file = read_site_file(site.site_file, released.data, required=site.site_file_explicit)
    cfg = site_experiment(requested, released, site_file)
    weights = from_exchange(exchanged, _model(cfg, device="meta").state_dict())
    key = SiteKey(site.data_dir, site.cache_dir, cfg.data, site_file)
    fingerprint = folder_fingerprint(site.data_dir, exclude=(site.state_dir,)) if cache is not None else ""
    cached = cache.site(key, fingerprint) if cache is not None else None
    patients = cached.patients if cached else len(read_labels(site.data_dir).patient_ids)
    check_data_limits(cfg, site_file.limits, patients=patients)
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested, but this site has no CUDA device", field="train.device")
    torch.set_num_threads(cfg.train.num_threads)
    torch.set_flush_denormal(True)  # no slow path a crafted model could trigger for one patient's values
    if cached is not None:
        arrays = cached.arrays
    else:
        arrays, _ = load_site(site.data_dir, cfg.data, cache_dir=site.cache_dir, site_file=site_file)
        if cache is not None:
            cache.keep(key, fingerprint, patients, arrays)
    model = _model(cfg)
    load_numpy_state(model, weights)
    return SiteJob(cfg, site, site_file, arrays, model, pick_device(cfg.train.device),
                   cache.accounting if cache is not None else None, request_digest(overrides, exchanged))


def _model(cfg: ExperimentConfig, device: str | None = None) -> FusionModel:
    if device is None:
        return build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=cfg.seed)
    with torch.device(device):
        return FusionModel(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets)


def _account(job: SiteJob, ledger: Ledger, run_id: str) -> Account:
    try:
        spends = ledger.spends()
    except LedgerError as exc:
        raise RoundDeclined(LEDGER_UNREADABLE, str(exc)) from exc
    return account(spends, dataset=job.dataset, run_id=run_id, policy=job.site_file.policy)


def _planned_evaluations(job: SiteJob, acct: Account) -> list[MechanismUse]:
    """The DP validation releases still to come in this run (one per round, within the site's cap)."""
    v = job.site_file.validation
    if v.release != "dp" or job.cfg.strategy.fraction_evaluate <= 0:
        return []
    done = sum(1 for s in acct.run if s.kind == EVALUATE)
    remaining = min(job.cfg.rounds, v.max_per_run) - done
    return [MechanismUse(v.noise_multiplier, 1.0, remaining)] if remaining > 0 else []


def _run_noise(job: SiteJob, acct: Account, num_examples: int) -> float:
    """The run's noise multiplier: recorded at its first round, else planned now for the whole run
    (its rounds, its planned evaluations, and what the lifetime budget still allows)."""
    planned = next((s.noise_multiplier for s in acct.run if s.kind == TRAIN), None)
    if planned is not None:
        return planned
    t, terms, policy = job.cfg.train, job.terms, job.site_file.policy
    try:
        plan = plan_noise(num_examples=num_examples, batch_size=t.batch_size, local_epochs=t.local_epochs,
                          rounds=job.cfg.rounds, target_epsilon=terms.run_epsilon, delta=terms.delta,
                          accountant=terms.accountant, prior=[s.use for s in acct.run],
                          extra=_planned_evaluations(job, acct),
                          lifetime=LifetimeBudget([s.use for s in acct.lifetime], policy.lifetime_delta,
                                                  policy.lifetime_epsilon),
                          min_noise_multiplier=terms.min_noise_multiplier, cache=job.accounting)
    except BudgetExhausted as exc:
        raise RoundDeclined(LIFETIME_BUDGET if exc.lifetime else RUN_BUDGET, str(exc)) from exc
    return plan.noise_multiplier


def _record(job: SiteJob, ledger: Ledger, run_id: str, server_round: int, kind: str, use: MechanismUse,
            admitted: Projection) -> None:
    policy, terms = job.site_file.policy, job.terms
    ledger.append(Spend(job.dataset, run_id, server_round, use.noise_multiplier, use.sample_rate, use.steps,
                        terms.delta, admitted.run_epsilon, admitted.lifetime_epsilon, policy.lifetime_delta,
                        policy.lifetime_epsilon, terms.accountant,
                        datetime.now(timezone.utc).isoformat(timespec="seconds"), kind=kind))


def _admit_and_record(job: SiteJob, ledger: Ledger, run_id: str, server_round: int, kind: str,
                      use: MechanismUse, claim: PendingClaim | None = None) -> tuple[Projection, MechanismUse]:
    """Under the ledger's lock: re-read, admit (or decline), record, claim. Nothing has left the
    site yet. Returns the projection and the mechanism recorded (a run's first round fixes its
    noise). A request whose spend was recorded by a process that died before releasing anything
    takes that spend over instead (`claim`, release_replay.PendingClaim): no second record."""
    with ledger.locked():
        acct = _account(job, ledger, run_id)
        if kind == TRAIN:  # a concurrent message of this run may have fixed its noise meanwhile
            recorded = next((s.noise_multiplier for s in acct.run if s.kind == TRAIN), use.noise_multiplier)
            use = MechanismUse(recorded, use.sample_rate, use.steps)
        orphan = _orphaned_spend(acct, kind, server_round, use, claim)
        if orphan is not None and claim is not None:
            claim.mark()
            log.info("round %s: %s spend recorded by a process that released nothing; computed again under "
                     "it (no new spend)", server_round, kind)
            return Projection(orphan.run_epsilon, orphan.lifetime_epsilon), orphan.use
        if kind == EVALUATE and sum(1 for s in acct.run if s.kind == EVALUATE) >= job.site_file.validation.max_per_run:
            raise RoundDeclined(EVAL_LIMIT, f"{job.site_file.validation.max_per_run} evaluations already released")
        admitted = admit(use, acct, terms=job.terms, policy=job.site_file.policy,
                         max_mechanisms=job.site_file.limits.max_ledger_mechanisms, cache=job.accounting)
        _record(job, ledger, run_id, server_round, kind, use, admitted)
        if claim is not None:
            claim.mark()
    return admitted, use


def train_round(job: SiteJob, run_id: str, server_round: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """train_release()'s named weights and metrics."""
    release = train_release(job, run_id, server_round)
    return release.arrays, release.metrics  # type: ignore[return-value]


def train_release(job: SiteJob, run_id: str, server_round: int) -> Release:
    """One local DP round, admitted by the site policy and recorded in the ledger before it runs,
    stored before it is returned; or, for a request answered before, that stored release again.

    Raises RoundDeclined when the round would overspend (the ledger is then unchanged), OSError
    if the release cannot be stored (nothing is released).
    """
    return _replayed_or(job, run_id, server_round, TRAIN, lambda claim: _train(job, run_id, server_round, claim))


def _replayed_or(job: SiteJob, run_id: str, server_round: int, phase: str,
                 release: Callable[[PendingClaim | None], Release]) -> Release:
    """The stored release for this exact request, else `release(claim)` stored (job.request "":
    no store, no claim). `claim` lets _admit_and_record reuse the spend of a request recorded by a
    process that died before storing its release (release_replay.PendingClaim)."""
    if not job.request:
        return release(None)
    store = ReleaseStore(job.site.state_dir, run_id)
    request = fingerprint(phase, server_round, run_id, job.request)
    stored = store.find(phase, request)
    if stored is not None:
        log.info("round %s: %s request answered before in this run; its release is sent again (no spend)",
                 server_round, phase)
        return stored
    claim = PendingClaim(store, phase, request, server_round)
    fresh = release(claim)
    store.keep(phase, request, server_round, fresh)
    claim.release()
    return fresh


def _orphaned_spend(acct: Account, kind: str, server_round: int, use: MechanismUse,
                    claim: PendingClaim | None) -> Spend | None:
    """The spend recorded for this request by a process that died before releasing anything, if
    any (its mechanism must be the one planned now)."""
    if claim is None or not claim.orphaned():
        return None
    recorded = [s for s in acct.run if s.kind == kind and s.round == server_round]
    if not recorded:
        return None
    return recorded[-1] if recorded[-1].use == use else None


def _train(job: SiteJob, run_id: str, server_round: int, claim: PendingClaim | None = None) -> Release:
    cfg, data = job.cfg, split_dataset(job.arrays, validation=False)
    if len(data) == 0:
        raise SiteDataError("no patient falls in the training split; add patients or lower "
                            "validation.fraction in site.yaml")
    schedule = poisson_schedule(len(data), cfg.train.batch_size)
    use = MechanismUse(0.0, schedule.sample_rate, schedule.steps * cfg.train.local_epochs)
    ledger = job.ledger()
    sigma = _run_noise(job, _account(job, ledger, run_id), len(data))  # planned outside the lock
    admitted, use = _admit_and_record(job, ledger, run_id, server_round, TRAIN,
                                      MechanismUse(sigma, use.sample_rate, use.steps), claim)
    sigma = use.noise_multiplier
    settings = DPSettings(sigma, job.terms.max_grad_norm, job.terms.accountant, cfg.privacy.grad_sample_mode)
    started = time.perf_counter()
    outcome = train_dp(job.model, data, cfg=cfg.train, dp=settings, prior=[], device=job.device,
                       proximal_mu=cfg.strategy.proximal_mu)  # FedProx; 0 for the other strategies
    compute = time.perf_counter() - started
    if outcome.steps != use.steps:  # the recorded spend covers exactly the planned steps
        raise RuntimeError(f"took {outcome.steps} DP steps, {use.steps} were recorded; nothing is released")
    # The training loss is a non-DP statistic of the training data: it stays at the site (log).
    log.info("round %s: mean training loss %.4f over %s steps", server_round, outcome.loss, outcome.steps)
    metrics = {"num-examples": schedule.batches * cfg.train.batch_size, "epsilon": admitted.run_epsilon,
               "delta": job.terms.delta, "lifetime-epsilon": admitted.lifetime_epsilon,
               "noise-multiplier": sigma, "steps": outcome.steps, COMPUTE_KEY: coarse_seconds(compute),
               EPSILON_CAP_KEY: job.terms.run_epsilon}
    return Release(state_to_numpy(job.model), metrics)


def _evaluation_batch(job: SiteJob) -> int:
    """Patients per evaluation forward pass: at most 256, and within the site's batch memory limit."""
    per_patient = activation_bytes(job.cfg.model, image_size=job.cfg.data.image_size,
                                   note_tokens=job.cfg.data.note_max_tokens)
    return max(1, min(256, (job.site_file.limits.max_batch_memory_mb << 20) // per_patient))


def evaluate_round(job: SiteJob, run_id: str, server_round: int) -> dict[str, float | list[float]]:
    """evaluate_release()'s metrics."""
    return evaluate_release(job, run_id, server_round).metrics  # type: ignore[return-value]


def evaluate_release(job: SiteJob, run_id: str, server_round: int) -> Release:
    """Validation of the global weights on the site's held-out patients, released as a histogram
    of scores per outcome class: with DP (noised, admitted and recorded first, then stored, and
    sent again for the same request without a new spend) unless the site's policy trusts the
    coordinator with exact metrics (validation.release: exact; nothing spent, nothing stored).
    Metrics only (no arrays). Raises RoundDeclined (704, 705, budget), OSError (not stored)."""
    if job.site_file.validation.release != "dp":
        return _evaluate(job, run_id, server_round)
    return _replayed_or(job, run_id, server_round, EVALUATE,
                        lambda claim: _evaluate(job, run_id, server_round, claim))


def _evaluate(job: SiteJob, run_id: str, server_round: int, claim: PendingClaim | None = None) -> Release:
    v = job.site_file.validation
    data = split_dataset(job.arrays, validation=True)
    if len(data) < v.min_patients:
        raise RoundDeclined(EVAL_TOO_SMALL, f"{len(data)} held-out patients < {v.min_patients}")
    ledger = job.ledger()
    if v.release == "dp":
        admitted, _ = _admit_and_record(job, ledger, run_id, server_round, EVALUATE,
                                        MechanismUse(v.noise_multiplier, 1.0, 1), claim)
    else:
        admitted = project(MechanismUse(1.0, 0.0, 0), _account(job, ledger, run_id), terms=job.terms,
                           policy=job.site_file.policy, cache=job.accounting)
    # A DP release scores one patient at a time: in a batch, another patient's presence can move a
    # score by a rounding error, which a crafted model could place on a bin edge (sensitivity > 1).
    batch = 1 if v.release == "dp" else _evaluation_batch(job)
    started = time.perf_counter()
    outcome = evaluate(job.model, data, device=job.device, batch_size=batch)
    if v.release == "dp":
        release = dp_release(outcome.labels, outcome.probabilities, noise_multiplier=v.noise_multiplier,
                             generator=os_seeded_generator(torch.device("cpu")))
        binned = binned_metrics(release)
        auroc, loss, patients, auroc_std = binned.auroc, binned.loss, binned.patients, binned.auroc_std
    else:
        release = exact_release(outcome.labels, outcome.probabilities)
        auroc, loss, patients, auroc_std = outcome.auroc, outcome.loss, outcome.num_examples, 0.0
    compute = time.perf_counter() - started
    metrics = {"eval-loss": float(loss) if loss is not None and np.isfinite(loss) else 0.0,
               "auroc": auroc if auroc is not None else 0.0, "auroc-defined": int(auroc is not None),
               "num-examples": patients, "metrics-dp": int(v.release == "dp"), "noise-std": release.noise_std,
               "auroc-std": auroc_std, "histogram-positive": list(release.positives),
               "histogram-negative": list(release.negatives), "epsilon": admitted.run_epsilon,
               "lifetime-epsilon": admitted.lifetime_epsilon, COMPUTE_KEY: coarse_seconds(compute),
               EPSILON_CAP_KEY: job.terms.run_epsilon}
    return Release({}, metrics)
