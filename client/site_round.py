"""One site's work for one message, in plain Python: config, data, model, DP round, metrics.

client/app.py converts Flower records to and from these types; nothing here imports flwr.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from client.site import SiteSettings, site_settings
from client.site_data import SiteArrays, load_site
from client.site_file import read_site_file
from client.trainer import evaluate, pick_device, split_dataset, train_dp
from configs.load import load_experiment, split_overrides
from configs.schema import ExperimentConfig
from model.exchange import load_numpy_state, state_to_numpy
from model.networks import FusionModel, build_model
from privacy.accountant import MechanismUse, epsilon_spent
from privacy.engine import DPSettings
from privacy.planning import NoisePlan, plan_noise


@dataclass(frozen=True)
class DPState:
    """What a site remembers between rounds of one run: its noise plan and its spend so far."""

    plan: NoisePlan
    history: tuple[MechanismUse, ...]


@dataclass(frozen=True)
class SiteJob:
    """Everything a handler needs, resolved once per message."""

    cfg: ExperimentConfig
    site: SiteSettings
    arrays: SiteArrays
    model: FusionModel
    device: torch.device


def prepare(overrides: str, node_config: Mapping[str, object], weights: Mapping[str, np.ndarray]) -> SiteJob:
    """Compose the config, resolve the site, load (cached) data and the global weights."""
    cfg = load_experiment(split_overrides(overrides))
    site = site_settings(node_config, cfg.data.root)
    torch.set_num_threads(cfg.train.num_threads)
    arrays, _ = load_site(site.data_dir, cfg.data, cache_dir=site.cache_dir,
                          site_file=read_site_file(site.site_file, cfg.data))
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets,
                        seed=cfg.seed)
    load_numpy_state(model, weights)
    return SiteJob(cfg, site, arrays, model, pick_device(cfg.train.device))


def train_round(job: SiteJob, state: DPState | None, server_round: int
                ) -> tuple[dict[str, np.ndarray], dict[str, float], DPState]:
    """One local DP round: updated weights, metrics for the coordinator, the new DP state."""
    cfg, data = job.cfg, split_dataset(job.arrays, validation=False)
    p = cfg.privacy
    if state is None:
        plan = plan_noise(num_examples=len(data), batch_size=cfg.train.batch_size,
                          local_epochs=cfg.train.local_epochs, rounds=cfg.rounds,
                          target_epsilon=p.target_epsilon, delta=p.target_delta, accountant=p.accountant)
        state = DPState(plan, ())
    settings = DPSettings(state.plan.noise_multiplier, p.max_grad_norm, p.accountant, p.grad_sample_mode)
    torch.manual_seed(cfg.seed * 100_003 + server_round)
    outcome = train_dp(job.model, data, cfg=cfg.train, dp=settings, prior=state.history, device=job.device)
    epsilon = epsilon_spent(outcome.history, p.target_delta, p.accountant)
    metrics = {"train-loss": outcome.loss, "num-examples": outcome.num_examples,
               "epsilon": epsilon, "delta": p.target_delta,
               "noise-multiplier": state.plan.noise_multiplier, "steps": outcome.steps}
    return state_to_numpy(job.model), metrics, DPState(state.plan, tuple(outcome.history))


def evaluate_round(job: SiteJob) -> dict[str, float]:
    """Validation metrics of the global model on this site's held-out patients."""
    outcome = evaluate(job.model, split_dataset(job.arrays, validation=True), device=job.device)
    return {"eval-loss": outcome.loss, "auroc": outcome.auroc if outcome.auroc is not None else 0.0,
            "auroc-defined": int(outcome.auroc is not None), "num-examples": outcome.num_examples}
