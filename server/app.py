"""The Flower ServerApp adapter: FedAvg over the sites, recorded into a run folder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from configs.load import load_experiment, split_overrides, to_yaml
from configs.schema import ExperimentConfig
from model.exchange import Layout, from_exchange, state_to_numpy, to_exchange
from model.networks import build_model
from privacy.decline import REASONS as DECLINE_REASONS
from server.audit_events import run_recorder
from server.evaluation import SiteEvaluation
from server.recorder import RunRecorder, SiteTraining
from server.run_folder import CONFIG, SHARED, SUMMARY, create_run_folder, save_checkpoint
from server.summary import build_summary
from server.update_check import update_problem
from storage.atomic import write_atomic, write_json

app = ServerApp()


def _site(msg: Message, recorder: RunRecorder) -> str:
    """The name a site gives itself in its replies (remembered for its later error replies)."""
    records = msg.content.config_records if msg.has_content() else {}  # an error reply has no content
    if "site" in records:
        recorder.names[msg.metadata.src_node_id] = str(records["site"]["name"])
    return recorder.site_name(msg.metadata.src_node_id)


def _metrics(msg: Message) -> MetricRecord:
    return next(iter(msg.content.metric_records.values()))


def _compute_s(msg: Message) -> float:
    """The site's reported compute seconds for this message (0.0 when it reports none)."""
    value = _metrics(msg).get("compute-s", 0.0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class RecordingFedAvg(FedAvg):
    """FedAvg that also records each site's metrics and checkpoints every aggregated model."""

    def __init__(self, recorder: RunRecorder, run_dir: Path, reference: Mapping[str, torch.Tensor] | None = None,
                 **kwargs: float | int) -> None:
        """`reference`: the model's state dict when the model travels flat (model.exchange); None
        when it travels as named arrays (checkpoints then take the arrays as they are)."""
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.recorder, self.run_dir, self.reference = recorder, run_dir, reference
        self.sent: dict[str, np.ndarray] | None = None  # the global model of the current round
        self.asked: list[int] = []  # the node ids this phase's messages went to

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self.sent = {k: v.numpy() for k, v in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.asked = [m.metadata.dst_node_id for m in messages]
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self.asked = [m.metadata.dst_node_id for m in messages]
        return messages

    def _failed(self, replies: list[Message]) -> dict[str, str]:
        """The sites asked in this phase that neither answered nor declined: {site: why}.

        A site with no reply of its own (Flower's "node unavailable" comes from the SuperLink, not
        the site) is one that went offline or did not answer within strategy.round_timeout."""
        answered = {m.metadata.src_node_id: m for m in replies}
        failed = {}
        for node in self.asked:
            reply = answered.get(node)
            if reply is None:
                failed[self.recorder.site_name(node)] = "no reply (offline, or past strategy.round_timeout)"
            elif reply.has_error() and reply.error.code not in DECLINE_REASONS:
                failed[self.recorder.site_name(node)] = f"error {reply.error.code}"  # an error has no content
        return failed

    def _valid(self, server_round: int, replies: list[Message]) -> list[Message]:
        """Replies whose update can be averaged; the others are recorded as rejected, with why."""
        valid = []
        for m in replies:
            problem = None if m.has_error() or "arrays" not in m.content.array_records else update_problem(
                {k: v.numpy() for k, v in m.content.array_records["arrays"].items()}, self.sent)
            if problem is None:
                valid.append(m)
            else:
                self.recorder.rejected(server_round, _site(m, self.recorder), problem)
        return valid

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = self._failed(replies)
        replies = self._valid(server_round, replies)
        arrays, metrics = super().aggregate_train(server_round, replies) if replies else (None, None)
        ok = [m for m in replies if not m.has_error()]
        declined = {m.metadata.src_node_id: m.error.code for m in replies
                    if m.has_error() and m.error.code in DECLINE_REASONS}
        self.recorder.trained(server_round, [SiteTraining(
            _site(m, self.recorder), int(_metrics(m)["num-examples"]),
            float(_metrics(m)["epsilon"]), float(_metrics(m)["delta"]), float(_metrics(m)["lifetime-epsilon"]),
            _compute_s(m)) for m in ok], failed=failed, declined=declined)
        if arrays is not None:
            save_checkpoint(self.run_dir, _named(arrays, self.reference), server_round)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        ok, _ = self._check_and_log_replies(replies, is_train=False)
        evals = [SiteEvaluation(_site(m, self.recorder), float(_metrics(m)["auroc"]) if _metrics(m)["auroc-defined"] else None,
                                float(_metrics(m)["eval-loss"]), int(_metrics(m)["num-examples"]),
                                float(_metrics(m)["epsilon"]), bool(_metrics(m)["metrics-dp"]),
                                float(_metrics(m)["auroc-std"]), float(_metrics(m)["lifetime-epsilon"]),
                                _compute_s(m))
                 for m in ok]
        result = self.recorder.evaluated(server_round, evals, failed=self._failed(replies))
        values = {"auroc": result.auroc, "loss": result.loss}
        return MetricRecord({k: float(v) for k, v in values.items() if v is not None}) if ok else None


def initial_record(cfg: ExperimentConfig) -> tuple[ArrayRecord, dict[str, torch.Tensor]]:
    """The initial global model as it travels to the sites, one flat float32 array
    (model.exchange; also what bench/empty_flower_app.py sends, so its messages have fedclinic's
    size and pattern), and the model's state dict (names, shapes: the layout replies are cut by)."""
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets,
                        seed=cfg.seed)
    exchanged = to_exchange(state_to_numpy(model), Layout.of(model.state_dict()))
    return ArrayRecord({k: Array(v) for k, v in exchanged.items()}), model.state_dict()


def _named(arrays: ArrayRecord, reference: Mapping[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
    """An aggregated (flat) model as the named state dict a checkpoint holds ({} for no model:
    a run in which no round aggregated; the arrays as they are when they travel named)."""
    if not arrays:
        return {}
    if reference is None:
        return {k: v.numpy() for k, v in arrays.items()}
    return from_exchange({k: v.numpy() for k, v in arrays.items()}, reference)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Compose the config, run FedAvg for cfg.rounds, write the run folder."""
    overrides = split_overrides(str(context.run_config.get("overrides", "")))
    cfg = load_experiment(overrides)
    run_dir = Path(cfg.output.run_dir) if cfg.output.run_dir else create_run_folder(Path(cfg.output.root))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CONFIG).exists():
        write_atomic(run_dir / CONFIG, to_yaml(overrides).encode(), mode=SHARED)
    initial, reference = initial_record(cfg)
    recorder = run_recorder(cfg, run_dir, context.run_id, grid)  # + audit log events when output.audit_log
    s = cfg.strategy
    strategy = RecordingFedAvg(recorder, run_dir, reference, fraction_train=s.fraction,
                               fraction_evaluate=s.fraction_evaluate, min_train_nodes=s.min_sites,
                               min_evaluate_nodes=s.min_sites, min_available_nodes=s.min_sites)
    with recorder.live():
        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.rounds,
                                timeout=s.round_timeout, train_config=ConfigRecord(),
                                evaluate_config=ConfigRecord())
    save_checkpoint(run_dir, _named(result.arrays, reference), cfg.rounds)
    write_json(run_dir / SUMMARY, build_summary(cfg, recorder, run_dir.name, context.run_id))
    recorder.console.print(recorder.table())
    recorder.console.print(f"run folder: {run_dir.resolve()} (Flower run id {context.run_id}, as in the sites' "
                           "privacy ledgers)", soft_wrap=True, highlight=False)
