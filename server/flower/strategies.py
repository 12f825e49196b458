"""The `strategy/` config group -> one of Flower 1.41's strategies, with fedclinic's recording.

Each is Flower's own class (flwr.serverapp.strategy) with server/flower/recording.py's mixin in
front: the averaging, median, trimming, Krum selection and adaptive server optimisers are
Flower's. Sources: FedAvg (McMahan et al. 2017), FedProx (Li et al. 2020; Flower only sends mu,
the proximal term is added by each site to its noised DP gradient), FedAdam/FedYogi/FedAdagrad
(Reddi et al. 2021), FedTrimmedAvg and FedMedian (Yin et al. 2018), MultiKrum (Blanchard et al.
2017).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flwr.serverapp.strategy import (FedAdagrad, FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, FedYogi,
                                     MultiKrum)

from configs.schema import EvaluationConfig, StrategyConfig
from server.flower.recording import RecordingStrategy, RoundRules
from server.recorder import RunRecorder

FLOWER_CLASSES: dict[str, type[Any]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
    "fedtrimmedavg": FedTrimmedAvg, "fedmedian": FedMedian, "multikrum": MultiKrum,
}


def flower_kwargs(s: StrategyConfig) -> dict[str, Any]:
    """The Flower constructor arguments of strategy `s.name`.

    Sampling: Flower draws max(fraction x online, min_train_nodes) sites; min_train_nodes is
    strategy.min_sites. Flower's own wait (min_available_nodes) is 1: server/flower/deadline_grid.py
    does the waiting, with a deadline."""
    kwargs: dict[str, Any] = {"fraction_train": s.fraction, "fraction_evaluate": s.fraction_evaluate,
                              "min_train_nodes": s.min_sites, "min_evaluate_nodes": 1, "min_available_nodes": 1}
    if s.name == "fedprox":
        kwargs["proximal_mu"] = s.proximal_mu
    elif s.name in ("fedadam", "fedyogi"):
        kwargs |= {"eta": s.server_lr, "beta_1": s.beta_1, "beta_2": s.beta_2, "tau": s.tau}
    elif s.name == "fedadagrad":
        kwargs |= {"eta": s.server_lr, "tau": s.tau}
    elif s.name == "fedtrimmedavg":
        kwargs["beta"] = s.trim_beta
    elif s.name == "multikrum":
        kwargs |= {"num_malicious_nodes": s.byzantine_sites, "num_nodes_to_select": s.krum_keep}
    return kwargs


def strategy_class(name: str) -> type[RecordingStrategy]:
    """RecordingStrategy in front of Flower's class `name` (a class per call; cheap)."""
    flower = FLOWER_CLASSES[name]
    return type(f"Recording{flower.__name__}", (RecordingStrategy, flower), {})


def build_strategy(s: StrategyConfig, evaluation: EvaluationConfig, recorder: RunRecorder, run_dir: Path,
                   reference: dict[str, torch.Tensor] | None, rules: RoundRules) -> RecordingStrategy:
    """The run's strategy. MultiKrum's krum_keep 0 means every site Krum keeps (n - f), decided per
    round by the mixin, since n is the number of updates that arrived."""
    kwargs = flower_kwargs(s)
    keep_all = s.name == "multikrum" and s.krum_keep == 0
    if keep_all:
        kwargs["num_nodes_to_select"] = 1  # replaced each round (RecordingStrategy.aggregate_train)
    strategy = strategy_class(s.name)(recorder, run_dir, reference, rules=rules, evaluation=evaluation, **kwargs)
    strategy.krum_keep_all = keep_all
    return strategy
