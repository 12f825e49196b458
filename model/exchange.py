"""Weight exchange: plain numpy state dicts in and out of a torch module, checked on the way in."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn


class WeightsRefused(ValueError):
    """Incoming weights do not fit the model (names, shapes, dtypes) or are not all finite."""


def state_to_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state as float/int numpy arrays on the CPU (what travels)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def check_weights(arrays: Mapping[str, np.ndarray], reference: Mapping[str, torch.Tensor]) -> None:
    """Refuse weights that are not exactly the reference's names, shapes and dtypes, or that hold
    NaN or infinity (a site must never spend budget training a model that cannot be a model).

    `reference` may live on the "meta" device (shapes and dtypes only). Raises WeightsRefused.
    """
    missing, extra = sorted(set(reference) - set(arrays)), sorted(set(arrays) - set(reference))
    if missing or extra:
        raise WeightsRefused(f"weights do not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, ref in reference.items():
        value = np.asarray(arrays[key])
        if tuple(value.shape) != tuple(ref.shape):
            raise WeightsRefused(f"weight {key!r}: shape {value.shape} != model {tuple(ref.shape)}")
        expected = torch.empty(0, dtype=ref.dtype).numpy().dtype  # aggregation may widen floats: same kind
        if value.dtype.kind != expected.kind or value.dtype.itemsize > 8:
            raise WeightsRefused(f"weight {key!r}: dtype {value.dtype} is not the model's kind ({ref.dtype})")
        # finite in the model's own precision: 1e300 as float64 is finite, as float32 it is inf
        with np.errstate(over="ignore", invalid="ignore"):
            if value.dtype.kind == "f" and not np.isfinite(value.astype(expected, copy=False)).all():
                raise WeightsRefused(f"weight {key!r}: holds NaN or infinite values (in {ref.dtype})")


def load_numpy_state(module: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load exchanged arrays into `module`; mismatched or non-finite weights raise WeightsRefused."""
    check_weights(arrays, module.state_dict())
    own = module.state_dict()
    module.load_state_dict({k: torch.as_tensor(np.asarray(arrays[k]), dtype=v.dtype) for k, v in own.items()})
