"""The fused network: every subset of modalities, masking, Opacus validity, weight exchange."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator

from configs.schema import ExperimentConfig
from model.batch import ClinicalBatch
from model.exchange import load_numpy_state, state_to_numpy
from model.networks import FusionModel, build_model


def make_model(cfg: ExperimentConfig, seed: int = 0) -> FusionModel:
    return build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=seed)


def random_batch(cfg: ExperimentConfig, n: int, mask: tuple[int, int, int], seed: int = 0) -> ClinicalBatch:
    g = torch.Generator().manual_seed(seed)
    d, f = cfg.data, len(cfg.data.labs)
    tokens = torch.randint(1, d.note_buckets, (n, d.note_max_tokens), generator=g)
    tokens[:, d.note_max_tokens // 2:] = 0
    return ClinicalBatch(torch.rand(n, 1, d.image_size, d.image_size, generator=g),
                         torch.randn(n, f, generator=g), (torch.rand(n, f, generator=g) > 0.3).float(),
                         tokens, torch.tensor([mask] * n, dtype=torch.float32), torch.ones(n))


@pytest.mark.parametrize("mask", list(itertools.product((0, 1), repeat=3)))
def test_forward_with_every_subset_of_modalities(experiment: ExperimentConfig, mask: tuple[int, int, int]) -> None:
    model = make_model(experiment).eval()
    batch = random_batch(experiment, 5, mask)
    logits = model(batch)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    # A missing modality is ignored: replacing its input with other values changes nothing.
    other = random_batch(experiment, 5, mask, seed=1)
    swapped = batch._replace(
        image=batch.image if mask[0] else other.image,
        labs=batch.labs if mask[1] else other.labs,
        lab_mask=batch.lab_mask if mask[1] else other.lab_mask,
        tokens=batch.tokens if mask[2] else other.tokens)
    torch.testing.assert_close(model(swapped), logits)
    if any(mask):  # a present modality does change the output
        present = batch._replace(image=other.image, labs=other.labs, lab_mask=other.lab_mask, tokens=other.tokens)
        assert not torch.allclose(model(present), logits)


def test_opacus_finds_no_problem_with_the_model(experiment: ExperimentConfig) -> None:
    assert ModuleValidator.validate(make_model(experiment), strict=False) == []
    assert not any(isinstance(m, torch.nn.EmbeddingBag) for m in make_model(experiment).modules())


def test_same_seed_same_initial_weights_everywhere(experiment: ExperimentConfig) -> None:
    a, b, c = (state_to_numpy(make_model(experiment, s)) for s in (3, 3, 4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not all(np.array_equal(a[k], c[k]) for k in a)


def test_weight_exchange_round_trips_and_rejects_mismatches(experiment: ExperimentConfig) -> None:
    src, dst = make_model(experiment, 1), make_model(experiment, 2)
    load_numpy_state(dst, state_to_numpy(src))
    batch = random_batch(experiment, 3, (1, 1, 1))
    torch.testing.assert_close(dst.eval()(batch), src.eval()(batch))
    arrays = state_to_numpy(src)
    arrays.pop(next(iter(arrays)))
    with pytest.raises(ValueError, match="missing"):
        load_numpy_state(dst, arrays)
    wrong = state_to_numpy(src)
    key = next(iter(wrong))
    wrong[key] = np.zeros((1, 1), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        load_numpy_state(dst, wrong)
