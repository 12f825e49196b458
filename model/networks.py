"""Encoders for each modality and the masked fusion model.

Every layer here has an exact per-sample gradient in Opacus 1.6 (Conv2d, GroupNorm, Linear,
Embedding); there is no BatchNorm, and notes use nn.Embedding with a masked mean rather than a
bag-of-embeddings layer (Opacus' sampler for that one is wrong for repeated token ids, which
hashed clinical notes always contain).
"""

from __future__ import annotations

import torch
from torch import nn

from configs.schema import ModelConfig
from model.batch import ClinicalBatch


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ImageEncoder(nn.Module):
    """Strided conv + GroupNorm + ReLU blocks, then global average and max pooling."""

    def __init__(self, channels: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       nn.GroupNorm(_groups(c_out), c_out), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(2 * c_in, out_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.features(image)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return torch.relu(self.project(pooled))


class LabEncoder(nn.Module):
    """MLP over standardised lab values concatenated with their measured mask."""

    def __init__(self, num_features: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * num_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim), nn.ReLU())

    def forward(self, labs: torch.Tensor, lab_mask: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([labs * lab_mask, lab_mask], dim=1))


class NoteEncoder(nn.Module):
    """nn.Embedding over hashed token ids, mean over non-padding tokens, then a projection."""

    def __init__(self, buckets: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(buckets, dim)
        self.project = nn.Linear(dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        present = (tokens > 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(tokens) * present).sum(dim=1)
        mean = summed / present.sum(dim=1).clamp(min=1.0)
        return torch.relu(self.project(mean))


class FusionModel(nn.Module):
    """Image + labs + notes; a missing modality contributes exactly nothing but its mask bit."""

    def __init__(self, cfg: ModelConfig, *, num_labs: int, note_buckets: int) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.image = ImageEncoder(cfg.image_channels, d)
        self.labs = LabEncoder(num_labs, cfg.lab_hidden, d)
        self.notes = NoteEncoder(note_buckets, cfg.note_dim, d)
        # fusion_hidden 0: a linear head (logistic regression on the three embeddings and masks)
        self.head = nn.Sequential(nn.Linear(3 * d + 3, cfg.fusion_hidden), nn.ReLU(),
                                  nn.Linear(cfg.fusion_hidden, 1)) if cfg.fusion_hidden else nn.Linear(3 * d + 3, 1)

    def forward(self, batch: ClinicalBatch) -> torch.Tensor:
        """Logits of shape [B]."""
        m = batch.modality_mask
        parts = [self.image(batch.image) * m[:, 0:1],
                 self.labs(batch.labs, batch.lab_mask) * m[:, 1:2],
                 self.notes(batch.tokens) * m[:, 2:3]]
        return self.head(torch.cat([*parts, m], dim=1)).squeeze(1)


def build_model(cfg: ModelConfig, *, num_labs: int, note_buckets: int, seed: int) -> FusionModel:
    """A freshly initialised model; the same seed gives the same weights at every site."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FusionModel(cfg, num_labs=num_labs, note_buckets=note_buckets)


def count_parameters(cfg: ModelConfig, *, num_labs: int, note_buckets: int) -> int:
    """The number of parameters `build_model` would create, computed without allocating them
    (the model is built on PyTorch's "meta" device, which holds shapes only)."""
    with torch.device("meta"):
        model = FusionModel(cfg, num_labs=num_labs, note_buckets=note_buckets)
    return sum(p.numel() for p in model.parameters())


def activation_bytes(cfg: ModelConfig, *, image_size: int, note_tokens: int) -> int:
    """An estimate of the float32 bytes one patient's forward and backward pass keeps alive
    during DP training: the image, each conv block's output (stride 2; conv, GroupNorm and ReLU
    outputs plus their gradients) and the note embeddings (with gradients). Used to refuse a
    recipe whose expected batch would not fit the site's memory, before anything is allocated."""
    floats, side = image_size * image_size, image_size
    for channels in cfg.image_channels:
        side = (side + 1) // 2
        floats += 6 * channels * side * side
    floats += 2 * note_tokens * cfg.note_dim
    return 4 * floats
