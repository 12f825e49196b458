"""Weight exchange: plain numpy state dicts in and out of a torch module, checked on the way in,
and the form they travel in: ONE flat float32 vector.

A message carries the model as a single array under FLAT_KEY: every state entry raveled (C
order) and concatenated in the model's own state_dict order. The receiver rebuilds names and
shapes from the model it builds itself from the same configuration (`Layout`), never from the
message. One array is one Flower object on the wire instead of one per tensor (25 for the
default model, each its own request in deployment). FedAvg over the flat vector is the same
arithmetic as FedAvg per array: a weighted sum taken element by element.

Only float32 state travels this way (the model has no integer buffers and no other float type);
a model with any other state is refused by `Layout.of` rather than averaged or cast silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

FLAT_KEY = "model-fp32"  # the one array of an exchanged model
WIRE_DTYPE = np.float32


class WeightsRefused(ValueError):
    """Incoming weights do not fit the model (names, shapes, dtypes) or are not all finite."""


@dataclass(frozen=True)
class Layout:
    """Names and shapes of a model's state, in state_dict order: how a flat vector is cut."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, reference: Mapping[str, torch.Tensor]) -> Layout:
        """The layout of a state dict (it may live on the "meta" device). Raises ValueError when
        an entry is not float32 (an integer buffer or another float type could not travel as
        float32 unchanged)."""
        odd = [k for k, v in reference.items() if v.dtype != torch.float32]
        if odd:
            raise ValueError(f"the flat exchange carries float32 state only; not float32: {odd[:3]}")
        return cls(tuple(reference), tuple(tuple(v.shape) for v in reference.values()))

    @property
    def size(self) -> int:
        """Elements of the flat vector."""
        return sum(math.prod(s) for s in self.shapes)


def state_to_numpy(module: nn.Module) -> dict[str, np.ndarray]:
    """The module's state as float/int numpy arrays on the CPU."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def flatten(arrays: Mapping[str, np.ndarray], layout: Layout) -> np.ndarray:
    """[layout.size] float32: the arrays raveled in layout order. ValueError if they are not
    exactly the layout's names and shapes."""
    if set(arrays) != set(layout.names):
        raise ValueError("arrays to flatten are not the model's (names differ)")
    for name, shape in zip(layout.names, layout.shapes):
        if tuple(np.shape(arrays[name])) != shape:
            raise ValueError(f"array {name!r}: shape {np.shape(arrays[name])} != model {shape}")
    if not layout.names:
        return np.zeros(0, dtype=WIRE_DTYPE)
    return np.concatenate([np.asarray(arrays[n], dtype=WIRE_DTYPE).ravel() for n in layout.names])


def to_exchange(arrays: Mapping[str, np.ndarray], layout: Layout) -> dict[str, np.ndarray]:
    """What a message carries for a model: {FLAT_KEY: flat float32 vector}."""
    return {FLAT_KEY: flatten(arrays, layout)}


def from_exchange(exchanged: Mapping[str, np.ndarray], reference: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The named arrays a message carries, cut by the reference model's layout (the receiver's own).

    The named form (exactly the model's state names) is accepted too and checked by check_weights.
    Refused (WeightsRefused): any other set of arrays; a flat vector that is not 1-D,
    not floating point of at most 8 bytes, not exactly the model's size; any value that is NaN or
    infinite in the model's precision (1e300 as float64 is finite, as float32 it is not). Returns
    arrays in the model's dtypes (views of one converted copy)."""
    if set(exchanged) == set(reference):  # the named form (one array per state entry): checked as such
        named = {name: np.asarray(array) for name, array in exchanged.items()}
        check_weights(named, reference)
        return named
    if set(exchanged) != {FLAT_KEY}:
        raise WeightsRefused(f"weights must travel as one array {FLAT_KEY!r} or as the model's named "
                             f"arrays; got {sorted(exchanged)[:3]}")
    layout = Layout.of(reference)
    flat = np.asarray(exchanged[FLAT_KEY])
    if flat.ndim != 1 or flat.size != layout.size:
        raise WeightsRefused(f"weights: shape {flat.shape} is not the model's ({layout.size},)")
    if flat.dtype.kind != "f" or flat.dtype.itemsize > 8:  # aggregation may widen floats: same kind
        raise WeightsRefused(f"weights: dtype {flat.dtype} is not the model's kind (float32)")
    with np.errstate(over="ignore", invalid="ignore"):
        values = flat.astype(WIRE_DTYPE)
    if not np.isfinite(values).all():
        raise WeightsRefused("weights hold NaN or infinite values (in float32)")
    out, start = {}, 0
    for name, shape in zip(layout.names, layout.shapes):
        count = math.prod(shape)
        out[name] = values[start:start + count].reshape(shape)
        start += count
    check_weights(out, reference)
    return out


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
