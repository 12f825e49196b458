"""A malicious site's replies on real Flower messages: none may end the coordinator's run, move
the global model past the update checks, or make the round's figures non-finite."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from rich.console import Console

from configs.load import load_experiment
from configs.schema import EvaluationConfig
from server.flower.recording import RoundRules
from server.flower.strategies import build_strategy
from server.recorder import RunRecorder
from tests.test_strategy_rounds import GLOBAL, _request

pytestmark = pytest.mark.usefixtures("task_identity")
GOOD_EVAL = {"eval-loss": 0.5, "auroc": 0.7, "auroc-defined": 1, "num-examples": 50, "metrics-dp": 1,
             "noise-std": 5.0, "auroc-std": 0.05, "histogram-positive": [3.0] * 10,
             "histogram-negative": [2.0] * 10, "epsilon": 1.0, "lifetime-epsilon": 1.0, "compute-s": 0.1,
             "epsilon-cap": 8.0}


def _strategy(tmp_path: Path, *overrides: str, console: Console | None = None):
    cfg = load_experiment(["strategy=fedavg", *overrides])
    s = cfg.strategy
    recorder = RunRecorder(cfg.rounds, console or Console(quiet=True))
    strategy = build_strategy(s, EvaluationConfig(), recorder, tmp_path, None,
                              RoundRules(s.min_sites, s.max_update_norm, s.outlier_factor, "run-x", 1))
    strategy.sent = {k: v.copy() for k, v in GLOBAL.items()}
    return strategy


def _train_reply(node: int, name: str, arrays: dict[str, np.ndarray] | None = None, n: float = 100) -> Message:
    arrays = arrays if arrays is not None else {k: v + 0.1 for k, v in GLOBAL.items()}
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n, "epsilon": 1.0, "delta": 1e-5,
                                                   "lifetime-epsilon": 1.0, "epsilon-cap": 8.0}),
                          "site": ConfigRecord({"name": name})})
    reply = Message(content, reply_to=_request(node))
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def _eval_reply(node: int, name: str, **changes: object) -> Message:
    content = RecordDict({"metrics": MetricRecord({**GOOD_EVAL, **changes}), "site": ConfigRecord({"name": name})})
    request = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=node,
                      message_type="evaluate")
    reply = Message(content, reply_to=request)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_a_site_cannot_take_another_sites_name_to_hide_its_outlying_update(tmp_path: Path) -> None:
    """Node 9 names itself as node 5's suffixed name would read; node 10 takes node 5's plain name.
    Node 5's norm then overwrote node 9's under one key, and node 9's +100 update was averaged."""
    strategy = _strategy(tmp_path)
    far = {k: v + 100.0 for k, v in GLOBAL.items()}
    replies = [_train_reply(9, "site-a (node 5)", far), _train_reply(10, "site-a"), _train_reply(5, "site-a"),
               _train_reply(6, "site-b")]
    arrays, _ = strategy.aggregate_train(1, replies)
    names = strategy.recorder.names
    assert len(set(names.values())) == len(names) == 4
    assert "median" in strategy.recorder.rounds[1].rejected[names[9]]
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 0.1, rtol=1e-6)


def test_a_site_name_with_markup_or_control_characters_is_printed_as_text(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    strategy = _strategy(tmp_path, console=console)
    nan = {"w": np.array([0, np.nan, 0, 0], np.float32), "b": np.ones(2, np.float32)}
    strategy.aggregate_train(1, [_train_reply(1, "ok"), _train_reply(2, "[/]\x1b[2J" + "x" * 500, nan)])
    strategy.aggregate_evaluate(1, [_eval_reply(1, "ok")])
    console.print(strategy.recorder.table())
    printed = console.file.getvalue()
    assert "\x1b" not in printed and "left out" in printed
    assert all(len(n) <= 64 for n in strategy.recorder.names.values())


def test_huge_training_counts_neither_zero_nor_capture_the_global_model(tmp_path: Path) -> None:
    """Two counts near the float maximum made Flower's weight total infinite: every weight 0, a zero model."""
    strategy = _strategy(tmp_path)
    replies = [_train_reply(1, "a", n=1.7e308), _train_reply(2, "b", n=1.7e308), _train_reply(3, "c")]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["b"].numpy(), GLOBAL["b"] + 0.1, rtol=1e-6)
    assert set(strategy.recorder.rounds[1].rejected) == {"a", "b"}


@pytest.mark.parametrize("changes", [
    {"auroc": 1e300, "num-examples": 1e300},            # OverflowError in the AUROC's std
    {"histogram-positive": [1e308] * 10},              # OverflowError in the clinical metrics
    {"histogram-positive": [-1e308] * 10, "histogram-negative": [1e308] * 10},
    {"auroc": 1e300, "num-examples": 10 ** 15},         # global AUROC inf, picked as the best model
    {"auroc": -5.0}, {"eval-loss": -1e308, "num-examples": 1e10}, {"auroc-std": -1.0},
], ids=["overflow-std", "overflow-cells", "inf-cells", "inf-auroc", "auroc-range", "loss-range", "std-range"])
def test_an_evaluation_out_of_its_domain_is_a_failed_site_not_a_crash(tmp_path: Path, changes: dict) -> None:
    strategy = _strategy(tmp_path)
    strategy.aggregate_train(1, [_train_reply(1, "a"), _train_reply(2, "b")])
    result = strategy.aggregate_evaluate(1, [_eval_reply(1, "a"), _eval_reply(2, "b", **changes)])
    assert result is not None and result["auroc"] == pytest.approx(0.7) and result["loss"] == pytest.approx(0.5)
    outcome = strategy.recorder.rounds[1].participation["b"]["evaluate"]
    assert outcome.status == "failed" and "malformed reply" in outcome.reason


def test_a_small_sites_wide_auroc_noise_is_an_honest_evaluation(tmp_path: Path) -> None:
    """On ~30 held-out patients the DP AUROC's noise std is well above 1 (seen: 25.1): not malformed."""
    strategy = _strategy(tmp_path)
    strategy.aggregate_train(1, [_train_reply(1, "a"), _train_reply(2, "b")])
    strategy.aggregate_evaluate(1, [_eval_reply(1, "a"), _eval_reply(2, "b", **{"auroc-std": 25.1})])
    assert strategy.recorder.rounds[1].participation["b"]["evaluate"].status == "evaluated"
