"""A Flower adapter for benchmarks only: an EMPTY app with fedclinic's message pattern.

Its ServerApp runs FedAvg over every site for N rounds, a train and an evaluate message per site
per round, carrying exactly the arrays fedclinic sends (server.app.initial_record); its ClientApp
does no work: a train message is answered with the arrays it received plus a per-site offset (one
vectorised add: new objects of the same size), an evaluate message with a metric. The
round wall time it records is Flower's own floor for this pattern (message polling, process
starts in deployment, serialisation), which bench/federation_overhead.py subtracts from
fedclinic's round time.

Run config `overrides` (a string, as fedclinic's): `rounds=N sites=S out=/abs/result.json
[layout=flat|per-tensor]`; per-tensor sends the model as one array per tensor, as fedclinic did
before its flat exchange (to measure that on the wire). The result JSON is {"rounds": {round:
wall seconds}, "sent_bytes": bytes of the arrays in one message}.
The ClientApp imports only flwr and numpy.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """The global arrays back plus this node's own offset, with the one metric FedAvg needs: new
    arrays of the same size and type at every site in every round (an echo, a change that undoes
    itself, or the same reply from two sites gives objects the SuperLink holds already, and
    Flower does not send those again)."""
    offset = np.float32(1 + context.node_id % 1000)
    arrays = ArrayRecord({k: Array(v.numpy() + offset) for k, v in msg.content.array_records["arrays"].items()})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """No scoring: one metric."""
    return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's last phase (evaluation) was aggregated."""

    def __init__(self, **kwargs: float | int) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.ended: dict[int, float] = {}

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        result = super().aggregate_evaluate(server_round, replies)
        self.ended[server_round] = time.monotonic()
        return result


def _settings(context: Context) -> dict[str, str]:
    words = shlex.split(str(context.run_config.get("overrides", "")))
    return dict(w.split("=", 1) for w in words if "=" in w)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """N rounds of the empty pattern over every connected site; wall time per round to `out`."""
    from configs.load import load_experiment
    from server.app import initial_record
    settings = _settings(context)
    rounds, out = int(settings.get("rounds", "3")), Path(settings["out"])
    sites = int(settings.get("sites", "3"))
    cfg = load_experiment([f"rounds={rounds}"])
    initial, reference = initial_record(cfg)
    if settings.get("layout", "flat") == "per-tensor":
        initial = ArrayRecord({k: Array(v.numpy()) for k, v in reference.items()})
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=sites,
                           min_evaluate_nodes=sites, min_available_nodes=sites)
    started = time.monotonic()
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=rounds, train_config=ConfigRecord(),
                   evaluate_config=ConfigRecord())
    walls, previous = {}, started
    for number in sorted(strategy.ended):
        walls[number] = strategy.ended[number] - previous
        previous = strategy.ended[number]
    sent = sum(a.numpy().nbytes for a in initial.values())
    out.write_text(json.dumps({"rounds": walls, "sent_bytes": sent}))


def wire_size(content: RecordDict) -> tuple[int, int]:
    """(bytes, objects) of a message's content as Flower serialises it: every record, array and
    array chunk is one object (in deployment, one request each); bytes are their deflated sizes."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    objects = get_all_nested_objects(content)
    return sum(len(o.deflate()) for o in objects.values()), len(objects)


def fab_sha256(files: dict[str, bytes]) -> str:
    """SHA-256 of the app bundle `flwr run` builds from these files (Flower's own builder, as
    launcher/release_app.py uses): what a site puts on its allow-list to run the empty app."""
    import hashlib

    from flwr.cli.build import build_fab_from_files
    fab, _ = build_fab_from_files(files)
    return hashlib.sha256(fab).hexdigest()
