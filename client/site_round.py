"""One site's work for one message, in plain Python: config, data, model, DP round, metrics.

The site's privacy ledger, not Flower's per-run state, is the authority on what was spent: the
noise multiplier of a run, its history and the dataset's lifetime history are all read from it.

client/app.py converts Flower records to and from these types; nothing here imports flwr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import logging
from datetime import datetime, timezone

import numpy as np
import torch

from client.site import SiteSettings, site_settings
from client.site_data import SiteArrays, load_site
from client.site_file import read_site_file
from client.trainer import evaluate, pick_device, split_dataset, train_dp
from configs.load import load_experiment, split_overrides
from configs.schema import ExperimentConfig, SiteFileConfig
from model.exchange import load_numpy_state, state_to_numpy
from model.networks import FusionModel, build_model
from privacy.accountant import MechanismUse, epsilon_spent
from privacy.decline import EVAL_TOO_SMALL, LEDGER_UNREADABLE, RoundDeclined
from privacy.engine import DPSettings
from privacy.ledger import LEDGER_FILE, Ledger, LedgerError, Spend
from privacy.planning import plan_noise, steps_per_epoch
from privacy.policy import Terms, admit, tighten


log = logging.getLogger("fedclinic.site")


@dataclass(frozen=True)
class SiteJob:
    """Everything a handler needs, resolved once per message."""

    cfg: ExperimentConfig
    site: SiteSettings
    site_file: SiteFileConfig
    arrays: SiteArrays
    model: FusionModel
    device: torch.device


def prepare(overrides: str, node_config: Mapping[str, object], weights: Mapping[str, np.ndarray]) -> SiteJob:
    """Compose the config, resolve the site, load (cached) data and the global weights."""
    cfg = load_experiment(split_overrides(overrides))
    site = site_settings(node_config, cfg.data.root)
    torch.set_num_threads(cfg.train.num_threads)
    site_file = read_site_file(site.site_file, cfg.data, required=site.site_file_explicit)
    arrays, _ = load_site(site.data_dir, cfg.data, cache_dir=site.cache_dir, site_file=site_file)
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets,
                        seed=cfg.seed)
    load_numpy_state(model, weights)
    return SiteJob(cfg, site, site_file, arrays, model, pick_device(cfg.train.device))


def _round_use(job: SiteJob, num_examples: int, terms: Terms, run: list[MechanismUse]) -> MechanismUse:
    """This round's mechanism: the run's noise multiplier (planned once, on its first round)."""
    t = job.cfg.train
    q = 1.0 / steps_per_epoch(num_examples, t.batch_size)
    steps = steps_per_epoch(num_examples, t.batch_size) * t.local_epochs
    if run:
        return MechanismUse(run[0].noise_multiplier, q, steps)
    plan = plan_noise(num_examples=num_examples, batch_size=t.batch_size, local_epochs=t.local_epochs,
                      rounds=job.cfg.rounds, target_epsilon=terms.run_epsilon, delta=terms.delta,
                      accountant=terms.accountant)
    return MechanismUse(max(plan.noise_multiplier, terms.min_noise_multiplier), q, steps)


def _spends(ledger: Ledger, dataset: str, run_id: str) -> tuple[list[MechanismUse], list[MechanismUse]]:
    try:
        spends = [s for s in ledger.spends() if s.dataset == dataset]
    except LedgerError as exc:
        raise RoundDeclined(LEDGER_UNREADABLE, str(exc)) from exc
    return [s.use for s in spends if s.run_id == run_id], [s.use for s in spends]


def train_round(job: SiteJob, run_id: str, server_round: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One local DP round, admitted by the site policy and recorded in the ledger before release.

    Raises RoundDeclined when the round would overspend; the ledger is then unchanged.
    """
    cfg, data, policy = job.cfg, split_dataset(job.arrays, validation=False), job.site_file.policy
    terms = tighten(cfg.privacy, policy)
    dataset = policy.dataset_id or job.site.name
    ledger = Ledger(job.site.state_dir / LEDGER_FILE)
    with ledger.locked():
        run, lifetime = _spends(ledger, dataset, run_id)
        use = _round_use(job, len(data), terms, run)
        projected = admit(use, run=run, lifetime=lifetime, terms=terms, policy=policy)
        settings = DPSettings(use.noise_multiplier, terms.max_grad_norm, terms.accountant, cfg.privacy.grad_sample_mode)
        outcome = train_dp(job.model, data, cfg=cfg.train, dp=settings, prior=run, device=job.device)
        spent = MechanismUse(use.noise_multiplier, use.sample_rate, outcome.steps)
        run_eps, life_eps = projected.run_epsilon, projected.lifetime_epsilon
        if spent != use:  # Poisson loaders take a fixed number of steps, so this is a safety net
            run_eps = epsilon_spent([*run, spent], terms.delta, terms.accountant)
            life_eps = epsilon_spent([*lifetime, spent], policy.lifetime_delta, terms.accountant)
        ledger.append(Spend(dataset, run_id, server_round, spent.noise_multiplier, spent.sample_rate, spent.steps,
                            terms.delta, run_eps, life_eps, policy.lifetime_delta, policy.lifetime_epsilon,
                            terms.accountant,
                            datetime.now(timezone.utc).isoformat(timespec="seconds")))
    # The training loss is a non-DP statistic of the training data: it stays at the site (log).
    log.info("round %s: mean training loss %.4f over %s steps", server_round, outcome.loss, outcome.steps)
    metrics = {"num-examples": outcome.num_examples, "epsilon": run_eps,
               "delta": terms.delta, "lifetime-epsilon": life_eps, "noise-multiplier": use.noise_multiplier,
               "steps": outcome.steps}
    return state_to_numpy(job.model), metrics


def evaluate_round(job: SiteJob) -> dict[str, float]:
    """Validation metrics of the global model on this site's held-out patients.

    These metrics are not DP; the site reports them only over at least `min_patients` patients.
    """
    data = split_dataset(job.arrays, validation=True)
    if len(data) < job.site_file.validation.min_patients:
        raise RoundDeclined(EVAL_TOO_SMALL, f"{len(data)} held-out patients < {job.site_file.validation.min_patients}")
    outcome = evaluate(job.model, data, device=job.device)
    return {"eval-loss": outcome.loss, "auroc": outcome.auroc if outcome.auroc is not None else 0.0,
            "auroc-defined": int(outcome.auroc is not None), "num-examples": outcome.num_examples}
