"""Nothing is released for free: validation metrics are a DP release recorded in the ledger, counts
are rounded to what the sampling rate already reveals, and evaluation requests are capped per run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from client.split import validation_mask
from client.validation_release import BINS, bin_counts, binned_metrics, dp_release, exact_release
from configs.load import load_experiment
from privacy.accountant import epsilon_spent
from privacy.decline import EVAL_LIMIT
from privacy.ledger import EVALUATE, LEDGER_FILE, TRAIN
from privacy.mechanism import MechanismUse
from messages import SMALL_RUN, initial_weights, metrics, send
from site_yaml import set_sections

pytestmark = pytest.mark.usefixtures("task_identity")


def _ledger(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / LEDGER_FILE).read_text().splitlines()]


def test_each_patient_lands_in_exactly_one_cell_whatever_the_model() -> None:
    """Sensitivity 1: a crafted model may put one patient anywhere, including NaN, never in two cells."""
    labels = np.array([1, 0, 1, 0, 1, 0])
    probabilities = np.array([0.0, 1.0, np.nan, np.inf, 0.3, 0.55])
    positives, negatives = bin_counts(labels, probabilities)
    assert positives.sum() == 3 and negatives.sum() == 3 and len(positives) == len(negatives) == BINS
    assert positives.tolist() == [1, 0, 0, 0, 2, 0, 0, 0, 0, 0]   # 0.0; 0.3 and NaN (logit 0's bin)
    assert negatives.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 1]   # inf (not finite: logit 0's bin), 0.55, 1.0


def test_a_crafted_model_cannot_read_one_patients_label_better_than_dp_allows() -> None:
    """sec-auroc-label, against the mechanism itself: one patient scored 1, everyone else 0.5. The
    attacker guesses the label from the released AUROC. With sigma 5 (epsilon 0.74 per release at
    delta 1e-5) a test can reach at most e^eps / (1 + e^eps) = 0.68; the mechanism gives about 0.57."""
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(1)
    by_auroc = by_cells = 0
    trials = 600
    for _ in range(trials):
        labels = rng.integers(0, 2, 26)
        probabilities = np.full(26, 0.5)
        probabilities[0] = 1.0
        release = dp_release(labels, probabilities, noise_multiplier=5.0, generator=generator)
        by_auroc += int((binned_metrics(release).auroc or 0.5) > 0.5) == labels[0]
        # the best test: which of the two top cells holds the extra patient
        by_cells += int(release.positives[-1] > release.negatives[-1]) == labels[0]
    assert by_auroc / trials < 0.64 and by_cells / trials < 0.64
    exact = binned_metrics(exact_release(np.array([1, 0, 0]), np.array([1.0, 0.5, 0.5])))
    assert exact.auroc == 1.0  # without noise the same crafted model reads the label exactly


def test_validation_metrics_are_a_recorded_dp_release(site_copy: Path, tmp_path: Path) -> None:
    """sec-auroc-label through the real ClientApp: each evaluation is admitted and recorded (sigma,
    q = 1, one step) before it is released, it raises the run epsilon, and its noise is fresh."""
    state = tmp_path / "state"
    first = metrics(send("evaluate", site_copy, state))
    second = metrics(send("evaluate", site_copy, state, server_round=2))
    spends = _ledger(state)
    assert [(s["kind"], s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in spends] == \
        [(EVALUATE, 5.0, 1.0, 1)] * 2
    assert first["metrics-dp"] == 1 and first["noise-std"] == 5.0
    assert first["epsilon"] == pytest.approx(epsilon_spent([MechanismUse(5.0, 1.0, 1)], 1e-5, "prv"))
    assert second["epsilon"] > first["epsilon"] and spends[1]["run_epsilon"] == second["epsilon"]
    assert first["histogram-positive"] != second["histogram-positive"]  # the same model, fresh noise
    held_out = int(validation_mask(sorted(pd.read_csv(site_copy / "labels.csv", dtype=str).patient_id), 0.2, 0).sum())
    assert sum(first["histogram-positive"]) + sum(first["histogram-negative"]) != held_out  # noised, not exact


def test_exact_metrics_only_where_the_site_trusts_the_coordinator(site_copy: Path, tmp_path: Path) -> None:
    set_sections(site_copy, validation={'fraction': 0.2, 'seed': 0, 'min_patients': 10, 'release': 'exact'})
    reply = metrics(send("evaluate", site_copy, tmp_path / "state"))
    held_out = int(validation_mask(sorted(pd.read_csv(site_copy / "labels.csv", dtype=str).patient_id), 0.2, 0).sum())
    assert reply["metrics-dp"] == 0 and reply["noise-std"] == 0.0 and reply["num-examples"] == held_out
    assert sum(reply["histogram-positive"]) + sum(reply["histogram-negative"]) == held_out
    assert not (tmp_path / "state" / LEDGER_FILE).exists()  # nothing DP was released, nothing recorded


def test_evaluation_requests_are_capped_per_run(site_copy: Path, tmp_path: Path) -> None:
    set_sections(site_copy, validation={'fraction': 0.2, 'seed': 0, 'min_patients': 10, 'max_per_run': 2})
    state = tmp_path / "state"
    for r in (1, 2):
        metrics(send("evaluate", site_copy, state, server_round=r))
    third = send("evaluate", site_copy, state, server_round=3)
    assert third.has_error() and third.error.code == EVAL_LIMIT
    assert len(_ledger(state)) == 2
    metrics(send("evaluate", site_copy, state, run_id=2))  # the cap is per run


def test_training_plans_its_noise_for_the_runs_evaluations_and_rounds_counts(site_copy: Path, tmp_path: Path) -> None:
    """sigma covers rounds x epochs of training plus one DP evaluation per round, so the run ends
    within its target; num-examples is steps per epoch x expected batch (what q already reveals)."""
    state, cfg = tmp_path / "state", load_experiment(SMALL_RUN.split())
    weights = initial_weights(SMALL_RUN)
    replies = []
    for r in (1, 2, 3):
        replies.append(metrics(send("train", site_copy, state, weights=weights, server_round=r)))
        replies.append(metrics(send("evaluate", site_copy, state, weights=weights, server_round=r)))
    assert replies[-1]["epsilon"] <= cfg.privacy.target_epsilon
    assert replies[-1]["epsilon"] >= cfg.privacy.target_epsilon - 0.1  # the plan used the budget
    steps = replies[0]["steps"]
    assert replies[0]["num-examples"] == steps * cfg.train.batch_size  # a multiple of the expected batch
    kinds = [s["kind"] for s in _ledger(state)]
    assert kinds == [TRAIN, EVALUATE] * 3
