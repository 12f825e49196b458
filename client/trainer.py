"""Local DP training and validation of the fused model at one site (knows nothing of Flower)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from client.metrics import auroc
from client.site_data.loader import SiteArrays
from configs.schema import TrainConfig
from model.batch import ClinicalBatch
from privacy.mechanism import MechanismUse

if TYPE_CHECKING:
    from privacy.dpsgd.settings import DPSettings


@dataclass(frozen=True)
class TrainOutcome:
    """One local round: mean loss, examples, steps taken and the accountant's full history."""

    loss: float
    num_examples: int
    steps: int
    history: list[MechanismUse]


@dataclass(frozen=True)
class EvalOutcome:
    """Validation of a global model on the site's held-out split (exact: never released as such
    unless the site's policy trusts the coordinator; see client/validation_release.py)."""

    loss: float
    auroc: float | None
    num_examples: int
    labels: np.ndarray          # [N] 0/1
    probabilities: np.ndarray   # [N] predicted probability of the outcome (NaN where the logit is NaN)


def split_dataset(arrays: SiteArrays, *, validation: bool) -> TensorDataset:
    """Tensors of the train (or validation) patients, in ClinicalBatch field order. The test split
    (validation.test_fraction) is in neither: nothing a federation runs ever reads it."""
    return rows_dataset(arrays, arrays.is_val if validation else arrays.is_train)


def rows_dataset(arrays: SiteArrays, rows: np.ndarray) -> TensorDataset:
    """Tensors of the patients selected by the [N] bool mask `rows`, in ClinicalBatch field order."""
    return TensorDataset(
        torch.from_numpy(arrays.image[rows][:, None]), torch.from_numpy(arrays.labs[rows]),
        torch.from_numpy(arrays.lab_mask[rows]), torch.from_numpy(arrays.tokens[rows]),
        torch.from_numpy(arrays.modality_mask[rows]), torch.from_numpy(arrays.label[rows]))


def pick_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def batch_loss(model: nn.Module, batch: ClinicalBatch) -> torch.Tensor:
    """Mean BCE over the batch; an empty Poisson batch gives 0 (its step is still noised)."""
    logits = model(batch)
    return F.binary_cross_entropy_with_logits(logits, batch.label, reduction="sum") / max(len(batch.label), 1)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's local optimiser over `model`'s parameters (a fresh one every round)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)


def train_dp(model: nn.Module, data: TensorDataset, *, cfg: TrainConfig, dp: DPSettings,
             prior: Sequence[MechanismUse], device: torch.device, proximal_mu: float = 0.0) -> TrainOutcome:
    """cfg.local_epochs of DP-SGD (Poisson sampling); the accountant resumes from `prior`.

    proximal_mu > 0 (FedProx): each step's DP gradient gets proximal_mu * (w - w_global), w_global
    being `model`'s weights as given (the global model received this round), copied on `device`;
    added after clipping and noise, so it changes neither the sensitivity nor the accounting.

    Opacus (privacy.dpsgd.engine) is imported here, on the first training message, not when the
    ClientApp starts: evaluation never needs it (several seconds of imports)."""
    from privacy.dpsgd.engine import make_private
    model.to(device).train()
    loader = DataLoader(data, batch_size=cfg.batch_size)
    private = make_private(model, make_optimizer(model, cfg), loader, settings=dp, prior=prior,
                           criterion=nn.BCEWithLogitsLoss(),  # = batch_loss, per-sample decomposable
                           proximal_mu=proximal_mu)
    losses: list[float] = []
    steps = 0
    try:
        for _ in range(cfg.local_epochs):
            for tensors in private.loader:
                batch = ClinicalBatch(*tensors).to(device)
                loss = private.step(batch, batch.label)  # empty batch: noisy step, None
                steps += 1
                if loss is not None:
                    losses.append(loss)
    finally:
        private.close()
    mean_loss = float(np.mean(losses)) if losses else float("nan")
    return TrainOutcome(mean_loss, len(data), steps, private.history())


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, *, device: torch.device, batch_size: int = 256
             ) -> EvalOutcome:
    """Loss and AUROC of `model` on `data` (AUROC is None when only one class is present)."""
    model.to(device).eval()
    labels, scores, total = [], [], 0.0
    for tensors in DataLoader(data, batch_size=batch_size):
        batch = ClinicalBatch(*tensors).to(device)
        logits = model(batch)
        total += float(F.binary_cross_entropy_with_logits(logits, batch.label, reduction="sum"))
        labels.append(batch.label.cpu().numpy())
        scores.append(logits.cpu().numpy())
    n = len(data)
    if n == 0:
        return EvalOutcome(float("nan"), None, 0, np.zeros(0, np.float32), np.zeros(0, np.float32))
    y, logits = np.concatenate(labels), np.concatenate(scores)
    probabilities = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -700, 700)))
    probabilities[np.isnan(logits)] = np.nan
    return EvalOutcome(total / n, auroc(y, np.nan_to_num(logits, nan=0.0)), n, y, probabilities)


