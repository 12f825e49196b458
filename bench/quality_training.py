"""The training behind bench/quality.py: pooled, federated and local-only, with and without DP.

Every DP row trains with the site's own code: `client.trainer.train_dp` (Opacus, Poisson sampling,
per-sample clipping at C) with the noise multiplier σ that `privacy.planning.plan_noise` calibrates
once for the whole run (the same accountant, δ, planned DP validation releases and minimum σ as a
synthetic site's site.yaml), exactly as client/site_round.py does. Non-DP rows call the same
model and loss with plain minibatch SGD: baselines, never a site setting (no site can train
without DP). Federated rows run the rounds in this process (no Flower, no Ray): FedAvg is the
weighted mean of the sites' weights (weights: each site's Poisson schedule, batches x batch
size, as a site reports `num-examples`); FedProx is FedAvg with the site's proximal term;
FedAdam applies Adam (torch.optim.Adam) to the pseudo-gradient w_global - mean(w_site)
(Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2), with the server learning
rate, betas and tau of configs/strategy/fedadam.yaml.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.trainer import batch_loss, make_optimizer, train_dp
from configs.schema import ExperimentConfig, SiteFileConfig, TrainConfig
from model.batch import ClinicalBatch
from model.networks import build_model
from privacy.dpsgd.settings import DPSettings
from privacy.mechanism import MechanismUse
from privacy.planning import plan_noise, poisson_schedule

CPU = torch.device("cpu")


@dataclass(frozen=True)
class SiteSplits:
    """One site's patients as tensors (ClinicalBatch field order): train, validation and test."""

    name: str
    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset


@dataclass(frozen=True)
class Privacy:
    """A DP row's target (ε at δ) and the site policy that shapes its σ (site.yaml)."""

    epsilon: float
    site: SiteFileConfig


def fresh_model(cfg: ExperimentConfig) -> nn.Module:
    """The model every row starts from (the experiment's seed: the same weights at every site)."""
    return build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=cfg.seed)


def noise_multiplier(cfg: ExperimentConfig, privacy: Privacy, num_examples: int, rounds: int) -> float:
    """σ for `rounds` x cfg.train.local_epochs epochs over `num_examples` patients at privacy.epsilon,
    with the DP validation releases a synthetic site answers each round (as client/site_round.py)."""
    v, policy = privacy.site.validation, privacy.site.policy
    evaluations = [MechanismUse(v.noise_multiplier, 1.0, rounds)] if v.release == "dp" else []
    plan = plan_noise(num_examples=num_examples, batch_size=cfg.train.batch_size,
                      local_epochs=cfg.train.local_epochs, rounds=rounds, target_epsilon=privacy.epsilon,
                      delta=policy.lifetime_delta, accountant=policy.accountant, extra=evaluations,
                      min_noise_multiplier=policy.min_noise_multiplier)
    return plan.noise_multiplier


def train_plain(model: nn.Module, data: TensorDataset, cfg: ExperimentConfig, epochs: int,
                generator: torch.Generator) -> None:
    """`epochs` of non-private minibatch training (shuffled, batch_size, the recipe's optimiser)."""
    model.to(CPU).train()
    optimizer = make_optimizer(model, cfg.train)
    loader = DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, generator=generator)
    for _ in range(epochs):
        for tensors in loader:
            optimizer.zero_grad(set_to_none=True)
            batch_loss(model, ClinicalBatch(*tensors)).backward()
            optimizer.step()


def train_private(model: nn.Module, data: TensorDataset, cfg: ExperimentConfig, sigma: float, epochs: int,
                  privacy: Privacy, proximal_mu: float = 0.0) -> None:
    """`epochs` of DP-SGD with the site's trainer (σ given: calibrated once for the whole row)."""
    settings = DPSettings(sigma, cfg.privacy.max_grad_norm, privacy.site.policy.accountant,
                          cfg.privacy.grad_sample_mode)
    train_dp(model, data, cfg=_epochs(cfg, epochs), dp=settings, prior=[], device=CPU, proximal_mu=proximal_mu)


def _epochs(cfg: ExperimentConfig, epochs: int) -> TrainConfig:
    return replace(cfg.train, local_epochs=epochs)


def centralised(cfg: ExperimentConfig, data: TensorDataset, privacy: Privacy | None, draw: int) -> nn.Module:
    """One model trained on `data` for rounds x local_epochs epochs (pooled, or one site alone)."""
    model, epochs = fresh_model(cfg), cfg.rounds * cfg.train.local_epochs
    if privacy is None:
        train_plain(model, data, cfg, epochs, torch.Generator().manual_seed(draw))
    else:
        sigma = noise_multiplier(cfg, privacy, len(data), cfg.rounds)
        train_private(model, data, cfg, sigma, epochs, privacy)
    return model


def _weighted_mean(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    return {k: sum(w / total * s[k] for s, w in zip(states, weights)) for k in states[0]}


def federated(cfg: ExperimentConfig, sites: list[SiteSplits], privacy: Privacy | None, draw: int) -> nn.Module:
    """cfg.rounds of cfg.strategy.name (fedavg | fedprox | fedadam) over `sites`, every site every round."""
    model = fresh_model(cfg)
    sigmas = [noise_multiplier(cfg, privacy, len(s.train), cfg.rounds) if privacy else 0.0 for s in sites]
    weights = [poisson_schedule(len(s.train), cfg.train.batch_size).batches * cfg.train.batch_size for s in sites]
    s = cfg.strategy
    server = torch.optim.Adam(model.parameters(), lr=s.server_lr, betas=(s.beta_1, s.beta_2), eps=s.tau) \
        if s.name == "fedadam" else None
    generator = torch.Generator().manual_seed(draw)
    for _ in range(cfg.rounds):
        states = []
        for site, sigma in zip(sites, sigmas):
            local = copy.deepcopy(model)
            if privacy is None:
                train_plain(local, site.train, cfg, cfg.train.local_epochs, generator)
            else:
                train_private(local, site.train, cfg, sigma, cfg.train.local_epochs, privacy,
                              proximal_mu=s.proximal_mu if s.name == "fedprox" else 0.0)
            states.append({k: v.detach().clone() for k, v in local.state_dict().items()})
        mean = _weighted_mean(states, [float(w) for w in weights])
        if server is None:
            model.load_state_dict(mean)
            continue
        server.zero_grad(set_to_none=True)
        for name, p in model.named_parameters():
            p.grad = p.detach() - mean[name]  # the pseudo-gradient: a step towards the sites' mean
        server.step()
    return model


@torch.no_grad()
def logits(model: nn.Module, data: TensorDataset) -> tuple[np.ndarray, np.ndarray]:
    """([N] labels 0/1, [N] float64 logits) of `model` on `data`."""
    model.to(CPU).eval()
    ys, zs = [], []
    for tensors in DataLoader(data, batch_size=512):
        batch = ClinicalBatch(*tensors)
        zs.append(model(batch).double().numpy())
        ys.append(batch.label.numpy())
    return np.concatenate(ys), np.concatenate(zs)
