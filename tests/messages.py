"""Real Flower messages for the real ClientApp, as a coordinator (honest or not) would send them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import app
from configs.load import load_experiment, split_overrides
from model.exchange import Layout, state_to_numpy, to_exchange
from model.networks import build_model

SMALL_RUN = "rounds=3 train.local_epochs=1 train.batch_size=32"


def initial_weights(overrides: str = "") -> dict[str, np.ndarray]:
    """The coordinator's initial global model for these overrides."""
    cfg = load_experiment(split_overrides(overrides))
    return state_to_numpy(build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets,
                                      seed=cfg.seed))


def exchanged(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Named weights as a coordinator sends them (model.exchange: one flat float32 array), cut by
    their own names and shapes (those of a state dict: the model's order)."""
    layout = Layout(tuple(weights), tuple(tuple(np.shape(v)) for v in weights.values()))
    return to_exchange(weights, layout)


def send(kind: str, site: Path, state: Path, overrides: str = SMALL_RUN, *, weights: Mapping[str, np.ndarray] | None = None,
         server_round: int = 1, run_id: int = 1, node: Mapping[str, str] | None = None,
         arrays: Mapping[str, np.ndarray] | None = None, config: Mapping[str, object] | None = None) -> Message:
    """One `kind` ("train" | "evaluate") message to the site's ClientApp; returns its reply.

    `weights`: named weights, sent flat (default: the initial model); `arrays`: the message's
    arrays exactly as given (a coordinator's crafted record); `config`: more message config
    entries besides `server-round` (e.g. the coordinator's `run-id`)."""
    if arrays is None:
        arrays = exchanged(weights if weights is not None else initial_weights(overrides))
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "config": ConfigRecord({"server-round": server_round, **(config or {})})})
    node_config = {"data-path": str(site), "state-dir": str(state), **(node or {})}
    ctx = Context(run_id=run_id, node_id=5, node_config=node_config, state=RecordDict(),
                  run_config={"overrides": overrides})
    return app(Message(content, dst_node_id=5, message_type=kind), ctx)


def metrics(reply: Message) -> dict[str, object]:
    """The reply's metrics (the reply must not be an error)."""
    assert not reply.has_error(), (reply.error.code, reply.error.reason)
    return dict(reply.content.metric_records["metrics"])
