"""The tensor batch every network in fedclinic consumes."""

from __future__ import annotations

from typing import NamedTuple

import torch

MODALITIES = ("image", "labs", "notes")


class ClinicalBatch(NamedTuple):
    """A batch of patients; `modality_mask[:, k]` is 1 where MODALITIES[k] is present.

    image: [B, 1, S, S] float in [0, 1]; labs: [B, F] standardised values (0 where missing);
    lab_mask: [B, F] 1 where measured; tokens: [B, L] hashed ids, 0 = padding;
    modality_mask: [B, 3] float; label: [B] float 0/1.
    """

    image: torch.Tensor
    labs: torch.Tensor
    lab_mask: torch.Tensor
    tokens: torch.Tensor
    modality_mask: torch.Tensor
    label: torch.Tensor

    def to(self, device: torch.device | str) -> ClinicalBatch:
        """The same batch on `device`."""
        return ClinicalBatch(*(t.to(device) for t in self))
