"""Weight exchange: plain numpy state dicts in and out of a torch module."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


def state_to_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state as float/int numpy arrays on the CPU (what travels)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def load_numpy_state(module: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load exchanged arrays into `module`; key or shape mismatches raise ValueError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(arrays))
    extra = sorted(set(arrays) - set(own))
    if missing or extra:
        raise ValueError(f"weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    state = {}
    for key, ref in own.items():
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(ref.shape):
            raise ValueError(f"weight {key!r}: shape {value.shape} != model {tuple(ref.shape)}")
        state[key] = torch.as_tensor(value, dtype=ref.dtype)
    module.load_state_dict(state)
