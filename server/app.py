"""The Flower ServerApp adapter: the configured strategy over the sites, recorded into a run folder.

The run folder (runs/<run-id>/) gets, after every round: summary.json (status "running"),
resume.pt, global_model.pt (the last round that aggregated) and best_model.pt (the best validation
AUROC); at the end the final summary, report.html and TensorBoard events.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from configs.load import load_experiment, split_overrides, to_yaml
from configs.schema import ExperimentConfig
from model.exchange import Layout, from_exchange, state_to_numpy, to_exchange
from model.networks import build_model
from server.audit_events import registered_names, run_recorder
from server.flower.deadline_grid import DeadlineGrid
from server.flower.recording import RecordingStrategy, RoundRules
from server.flower.strategies import build_strategy
from server.recorder import RoundRecord, RunRecorder
from server.run_folder import CONFIG, SHARED, SUMMARY, create_run_folder
from server.run_state import (RUNNING, ResumePoint, RunStopped, final_status, hold_run_lock, load_resume_point,
                              save_resume_point, split_strategy_state, strategy_state_arrays)
from server.summary import RunOutcome, build_summary
from storage.atomic import write_atomic, write_json

app = ServerApp()


class RecordingFedAvg(RecordingStrategy, FedAvg):
    """Flower's FedAvg with fedclinic's recording (server/flower/recording.py)."""


def initial_record(cfg: ExperimentConfig) -> tuple[ArrayRecord, dict[str, torch.Tensor]]:
    """The initial global model as it travels to the sites, one flat float32 array
    (model.exchange; also what bench/empty_flower_app.py sends, so its messages have fedclinic's
    size and pattern), and the model's state dict (names, shapes: the layout replies are cut by)."""
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets,
                        seed=cfg.seed)
    exchanged = to_exchange(state_to_numpy(model), Layout.of(model.state_dict()))
    return ArrayRecord({k: Array(v) for k, v in exchanged.items()}), model.state_dict()


def _named(arrays: ArrayRecord, reference: Mapping[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
    """An aggregated (flat) model as the named state dict a checkpoint holds ({} for no model)."""
    if not arrays:
        return {}
    if reference is None:
        return {k: v.numpy() for k, v in arrays.items()}
    return from_exchange({k: v.numpy() for k, v in arrays.items()}, reference)


class RunBook:
    """The run folder as the rounds go: the resume point and the running summary after each round."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, recorder: RunRecorder, strategy: RecordingStrategy,
                 flower_run_ids: list[str]) -> None:
        self.cfg, self.run_dir, self.recorder, self.strategy = cfg, run_dir, recorder, strategy
        self.flower_run_ids = flower_run_ids
        self.last_completed = strategy.rules.first_round - 1

    def round_ended(self, number: int) -> None:
        self.last_completed = number
        s = self.strategy
        arrays = {k: v.numpy() for k, v in (s.global_arrays or ArrayRecord()).items()}
        save_resume_point(self.run_dir, ResumePoint(
            number, arrays, strategy_state_arrays(s.strategy_state()),
            [r.as_json() for r in sorted(self.recorder.rounds.values(), key=lambda r: r.round)],
            dict(self.recorder.names), s.best[0] if s.best else None, s.best[1] if s.best else None,
            s.last_aggregated, self.flower_run_ids))
        self.write(RUNNING, f"round {number} of {self.cfg.rounds} completed")

    def write(self, status: str, reason: str) -> dict[str, object]:
        s = self.strategy
        outcome = RunOutcome(status, reason, self.last_completed, s.last_aggregated, s.best,
                             tuple(self.flower_run_ids))
        summary = build_summary(self.cfg, self.recorder, self.run_dir.name, outcome)
        write_json(self.run_dir / SUMMARY, summary)
        return summary


def _resume(resume: bool, run_dir: Path, initial: ArrayRecord, recorder: RunRecorder
            ) -> tuple[ArrayRecord, ResumePoint | None]:
    """The arrays the run (re)starts from, and its resume point (None: a fresh start)."""
    point = load_resume_point(run_dir) if resume else None
    if point is None:
        return initial, None
    recorder.restore([RoundRecord.from_json(r) for r in point.rounds])
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in point.arrays.items()}) if point.arrays \
        else initial
    return arrays, point


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Compose the config, run the configured strategy for cfg.rounds (or what a resumed run has
    left), write the run folder."""
    overrides = split_overrides(str(context.run_config.get("overrides", "")))
    cfg = load_experiment(overrides)
    run_dir = Path(cfg.output.run_dir) if cfg.output.run_dir else create_run_folder(Path(cfg.output.root))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CONFIG).exists():
        write_atomic(run_dir / CONFIG, to_yaml(overrides).encode(), mode=SHARED)
    lock = hold_run_lock(run_dir)  # held until this process ends
    initial, reference = initial_record(cfg)
    recorder = run_recorder(cfg, run_dir, context.run_id, grid)  # + audit log events when output.audit_log
    if cfg.output.audit_log:
        recorder.names.update(registered_names(Path(cfg.output.audit_log)))
    # the run config's `resume` (not an override: the overrides travel in every site request, and a
    # resumed round must be the same request to be answered from the site's stored release)
    arrays, point = _resume(str(context.run_config.get("resume", "false")).lower() == "true", run_dir, initial,
                            recorder)
    first = point.round + 1 if point else 1
    s = cfg.strategy
    rules = RoundRules(s.min_sites, s.max_update_norm, s.outlier_factor, run_dir.name, first)
    strategy = build_strategy(s, cfg.evaluation, recorder, run_dir, reference, rules)
    if point is not None:
        strategy.load_strategy_state(split_strategy_state(point.strategy_state))
        strategy.last_aggregated = point.last_aggregated
        strategy.best = (point.best_round, point.best_auroc) if point.best_round is not None else None
        strategy.global_arrays = arrays
    book = RunBook(cfg, run_dir, recorder, strategy, [*(point.flower_run_ids if point else []), str(context.run_id)])
    strategy.on_round_end = book.round_ended
    stopped = None
    if first > 1:
        recorder.console.print(f"resuming {run_dir.name} after round {first - 1}", highlight=False)
    try:
        with recorder.live():
            if first <= cfg.rounds:
                strategy.start(grid=DeadlineGrid(grid, s.round_timeout), initial_arrays=arrays,
                               num_rounds=cfg.rounds - first + 1, timeout=s.round_timeout,
                               train_config=ConfigRecord(), evaluate_config=ConfigRecord())
    except RunStopped as exc:
        stopped = exc
    aggregated = [r.round for r in recorder.rounds.values() if r.aggregated]
    evaluated = [r.round for r in recorder.rounds.values() if r.evaluation and r.evaluation.auroc is not None]
    released = [r.round for r in recorder.rounds.values() if r.evaluation and r.evaluation.sites > 0]
    status, reason = final_status(cfg.rounds, book.last_completed, aggregated, evaluated, stopped, released)
    _write_report(run_dir, book.write(status, reason))
    lock.close()
    recorder.console.print(recorder.table())


def _write_report(run_dir: Path, summary: dict[str, object]) -> None:
    """report.html and TensorBoard events from the summary (server/report/)."""
    from server.report.events import write_events
    from server.report.page import write_report
    write_report(run_dir)
    write_events(run_dir, summary)
