"""DP training with the default clipping mode learns: exact clipping is worth nothing if the
update it builds does not train the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from client.site_data.loader import load_site
from client.trainer import evaluate, split_dataset, train_dp
from configs.schema import ExperimentConfig
from model.networks import build_model
from privacy.dpsgd.engine import DPSettings
from synth.hospitals import write_hospitals


def test_default_mode_dp_training_learns_the_synthetic_task(experiment: ExperimentConfig, tmp_path: Path) -> None:
    """One synthetic site (1500 patients), 8 epochs of DP-SGD (sigma 1, C 1) in the configured
    mode, with the default recipe (SGD lr 1, momentum 0.9). Over 6 fresh noise draws the validation
    AUROC was 0.68-0.80 (before: 0.38); a model whose update were wrong would sit near 0.5."""
    assert experiment.privacy.grad_sample_mode == "bk"
    write_hospitals(tmp_path / "sites", sites=1, patients=1500, seed=3, image_size=32)
    arrays, _ = load_site(tmp_path / "sites" / "site-a", experiment.data, cache_dir=tmp_path / "cache")
    model = build_model(experiment.model, num_labs=len(experiment.data.labs),
                        note_buckets=experiment.data.note_buckets, seed=0)
    device = torch.device("cpu")
    before = evaluate(model, split_dataset(arrays, validation=True), device=device).auroc
    out = train_dp(model, split_dataset(arrays, validation=False),
                   cfg=dataclasses.replace(experiment.train, local_epochs=8),
                   dp=DPSettings(1.0, 1.0, "prv", experiment.privacy.grad_sample_mode), prior=[], device=device)
    after = evaluate(model, split_dataset(arrays, validation=True), device=device).auroc
    assert out.steps == 80 and before is not None and after is not None
    assert after > 0.6 and after > before + 0.1, (before, after)
