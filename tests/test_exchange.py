"""The model travels as one flat float32 vector: exact round trip, FedAvg unchanged, refusals kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from configs.schema import ExperimentConfig
from model.exchange import FLAT_KEY, Layout, WeightsRefused, from_exchange, state_to_numpy, to_exchange
from model.networks import FusionModel, build_model
from server.update_check import update_problem


def make_model(cfg: ExperimentConfig, seed: int) -> FusionModel:
    return build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=seed)


def test_one_flat_array_round_trips_exactly(experiment: ExperimentConfig) -> None:
    model = make_model(experiment, 1)
    state, layout = state_to_numpy(model), Layout.of(model.state_dict())
    sent = to_exchange(state, layout)
    assert list(sent) == [FLAT_KEY] and sent[FLAT_KEY].dtype == np.float32 and sent[FLAT_KEY].ndim == 1
    assert sent[FLAT_KEY].nbytes == sum(v.nbytes for v in state.values()) == 4 * layout.size
    back = from_exchange(sent, make_model(experiment, 2).state_dict())
    assert list(back) == list(state)
    assert all(np.array_equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)


def test_fedavg_of_flat_vectors_is_fedavg_of_the_arrays(experiment: ExperimentConfig) -> None:
    """Flower's own weighted average, once per tensor and once over the flat vector: bit-identical."""
    states = [state_to_numpy(make_model(experiment, s)) for s in (1, 2, 3)]
    layout = Layout.of(make_model(experiment, 0).state_dict())
    examples = [96, 160, 64]

    def replies(arrays: list[dict[str, np.ndarray]]) -> list[RecordDict]:
        return [RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in a.items()}),
                            "metrics": MetricRecord({"num-examples": n})}) for a, n in zip(arrays, examples)]

    per_tensor = aggregate_arrayrecords(replies(states), "num-examples")
    flat = aggregate_arrayrecords(replies([to_exchange(s, layout) for s in states]), "num-examples")
    named = from_exchange({k: v.numpy() for k, v in flat.items()}, make_model(experiment, 0).state_dict())
    for key, value in per_tensor.items():
        assert np.array_equal(named[key], value.numpy()) and value.numpy().dtype == np.float32


@pytest.mark.parametrize("damage", ["key", "2-D", "short", "int", "nan", "wide-inf", "long-double"])
def test_weights_not_the_models_or_not_finite_are_refused(experiment: ExperimentConfig, damage: str) -> None:
    model = make_model(experiment, 1)
    flat = to_exchange(state_to_numpy(model), Layout.of(model.state_dict()))[FLAT_KEY]
    wide = flat.astype(np.float64)
    wide[0] = 1e300  # finite as float64, infinite as the model's float32
    nan = flat.copy()
    nan[5] = np.nan
    sent = {"key": {"weights": flat}, "2-D": {FLAT_KEY: flat[None]}, "short": {FLAT_KEY: flat[:-1]},
            "int": {FLAT_KEY: flat.astype(np.int32)}, "nan": {FLAT_KEY: nan}, "wide-inf": {FLAT_KEY: wide},
            "long-double": {FLAT_KEY: flat.astype(np.longdouble)}}[damage]
    with pytest.raises(WeightsRefused):
        from_exchange(sent, model.state_dict())


def test_state_that_is_not_float32_does_not_travel_flat() -> None:
    """An integer buffer (a counter, say) would be averaged and cast: refused, not approximated."""
    module = torch.nn.Linear(2, 2)
    module.register_buffer("seen", torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="float32"):
        Layout.of(module.state_dict())


def test_the_coordinator_still_refuses_a_flat_update_of_another_shape_or_not_finite(experiment: ExperimentConfig) -> None:
    model = make_model(experiment, 1)
    sent = to_exchange(state_to_numpy(model), Layout.of(model.state_dict()))
    assert update_problem(sent, sent) is None
    assert update_problem({FLAT_KEY: sent[FLAT_KEY][:-1]}, sent) is not None
    assert update_problem({FLAT_KEY: sent[FLAT_KEY].astype(np.int64)}, sent) is not None
    assert update_problem({"other": sent[FLAT_KEY]}, sent) is not None
    broken = sent[FLAT_KEY].copy()
    broken[7] = np.inf
    assert update_problem({FLAT_KEY: broken}, sent) is not None
