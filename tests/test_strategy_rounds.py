"""The coordinator's strategies on real Flower messages: each of Flower's eight strategies
aggregates, every bad update kind is left out with its reason, k-of-n, budget exhaustion, the
deadline on sampling, and the server optimiser's state surviving a resume point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (FedAdagrad, FedAdam, FedAvg, FedMedian, FedProx, FedTrimmedAvg, FedYogi,
                                     MultiKrum)
from rich.console import Console

from configs.load import load_experiment
from configs.schema import EvaluationConfig
from server.flower.deadline_grid import DeadlineGrid
from server.flower.recording import RoundRules
from server.flower.strategies import build_strategy
from server.recorder import RunRecorder
from server.run_folder import CHECKPOINT, load_checkpoint
from server.run_state import (BUDGET_EXHAUSTED, COMPLETED, FAILED, ResumePoint, RunStopped, final_status,
                              load_resume_point, save_resume_point, split_strategy_state, strategy_state_arrays)

pytestmark = pytest.mark.usefixtures("task_identity")

FLOWER = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
          "fedtrimmedavg": FedTrimmedAvg, "fedmedian": FedMedian, "multikrum": MultiKrum}
GLOBAL = {"w": np.zeros(4, np.float32), "b": np.ones(2, np.float32)}


def _strategy(tmp_path: Path, name: str = "fedavg", *overrides: str, first_round: int = 1):
    cfg = load_experiment([f"strategy={name}", *overrides])
    s = cfg.strategy
    rules = RoundRules(s.min_sites, s.max_update_norm, s.outlier_factor, "run-x", first_round)
    strategy = build_strategy(s, EvaluationConfig(), RunRecorder(cfg.rounds, Console(quiet=True)), tmp_path, None,
                              rules)
    strategy.sent = {k: v.copy() for k, v in GLOBAL.items()}
    return strategy


def _request(node: int, server_round: int = 1) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"server-round": server_round})}), dst_node_id=node,
                   message_type="train")


def _reply(node: int, arrays: dict[str, np.ndarray] | None = None, metrics: dict | None = None) -> Message:
    arrays = arrays if arrays is not None else {k: v + 0.1 * node for k, v in GLOBAL.items()}
    metrics = metrics if metrics is not None else {"num-examples": 100, "epsilon": 1.0, "delta": 1e-5,
                                                   "lifetime-epsilon": 1.0, "epsilon-cap": 8.0}
    content = RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord(metrics), "site": ConfigRecord({"name": f"site-{node}"})})
    reply = Message(content, reply_to=_request(node))
    reply.metadata.__dict__["_src_node_id"] = node  # as if it came from SuperNode `node`
    return reply


def _error(node: int, code: int) -> Message:
    reply = Message(Error(code=code, reason="x"), reply_to=_request(node))
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


@pytest.mark.parametrize("name", sorted(FLOWER))
def test_each_strategy_is_flowers_own_and_aggregates_good_updates(tmp_path: Path, name: str) -> None:
    strategy = _strategy(tmp_path, name)
    assert isinstance(strategy, FLOWER[name])
    strategy.configure_train  # noqa: B018 (the mixin's, in front of Flower's)
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        strategy.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}  # set by Flower's configure_train
    arrays, _ = strategy.aggregate_train(1, [_reply(1), _reply(2), _reply(3)])
    assert arrays is not None
    out = {k: v.numpy() for k, v in arrays.items()}
    assert set(out) == set(GLOBAL) and all(np.isfinite(v).all() for v in out.values())
    assert all(not np.array_equal(out[k], GLOBAL[k]) for k in GLOBAL)  # moved towards the sites' updates
    assert load_checkpoint(tmp_path / CHECKPOINT)[0] == 1
    record = strategy.recorder.rounds[1]
    assert record.aggregated and len(record.training) == 3


BAD = {
    "names differ": ({"w": np.zeros(4, np.float32)}, "names differ"),
    "shape differs": ({"w": np.zeros(5, np.float32), "b": np.ones(2, np.float32)}, "shape or type"),
    "dtype differs": ({"w": np.zeros(4, np.int64), "b": np.ones(2, np.float32)}, "shape or type"),
    "NaN": ({"w": np.array([0, np.nan, 0, 0], np.float32), "b": np.ones(2, np.float32)}, "NaN or infinite"),
    "Inf": ({"w": np.array([0, np.inf, 0, 0], np.float32), "b": np.ones(2, np.float32)}, "NaN or infinite"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_update_is_left_out_and_named_with_its_reason(tmp_path: Path, kind: str) -> None:
    strategy = _strategy(tmp_path)
    bad, reason = BAD[kind]
    arrays, _ = strategy.aggregate_train(1, [_reply(1), _reply(2, bad)])
    out = {k: v.numpy() for k, v in arrays.items()}
    np.testing.assert_allclose(out["w"], GLOBAL["w"] + 0.1)  # site-1's update alone
    record = strategy.recorder.rounds[1]
    assert reason in record.rejected["site-2"]
    outcome = record.participation["site-2"]["train"]
    assert outcome.status == "rejected" and reason in outcome.reason
    assert record.participation["site-1"]["train"].status == "trained"


def test_malformed_metrics_and_outlying_norms_are_left_out(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, "fedavg", "strategy.outlier_factor=5")
    far = {k: v + 100.0 for k, v in GLOBAL.items()}
    no_count = {"epsilon": 1.0, "delta": 1e-5, "lifetime-epsilon": 1.0}
    replies = [_reply(1), _reply(2), _reply(3), _reply(4, far), _reply(5, metrics=no_count)]
    strategy.aggregate_train(1, replies)
    record = strategy.recorder.rounds[1]
    assert "median" in record.rejected["site-4"] and "num-examples" in record.rejected["site-5"]
    assert [t.site for t in record.training] == ["site-1", "site-2", "site-3"]

    capped = _strategy(tmp_path, "fedavg", "strategy.max_update_norm=0.1")
    capped.aggregate_train(1, [_reply(1), _reply(2)])  # norms 0.245 and 0.49
    assert set(capped.recorder.rounds[1].rejected) == {"site-1", "site-2"}
    assert not capped.recorder.rounds[1].aggregated


def test_fewer_than_min_sites_skip_the_round_without_a_checkpoint(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path, "fedavg", "strategy.min_sites=3")
    strategy.recorder.names[3] = "site-3"  # an error reply carries no name: the coordinator's registry gives it
    strategy.asked = [1, 2, 3]
    arrays, _ = strategy.aggregate_train(1, [_reply(1), _reply(2), _error(3, 601)])
    assert arrays is None and not (tmp_path / CHECKPOINT).exists()
    record = strategy.recorder.rounds[1]
    assert not record.aggregated and "strategy.min_sites (3)" in record.skipped
    assert record.participation["site-3"]["train"].status == "failed"
    assert record.participation["site-3"]["train"].code == 601


def test_every_site_declining_for_budget_stops_the_run(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    strategy.recorder.names.update({1: "site-1", 2: "site-2"})
    strategy.asked = [1, 2]
    with pytest.raises(RunStopped) as stopped:
        strategy.aggregate_train(1, [_error(1, 701), _error(2, 702)])
    assert stopped.value.status == BUDGET_EXHAUSTED and "privacy report" in stopped.value.reason
    outcome = strategy.recorder.rounds[1].participation["site-1"]["train"]
    assert (outcome.status, outcome.code) == ("declined", 701)


def test_the_final_status_says_why_a_run_measured_nothing() -> None:
    # final_status(planned, last completed, aggregated, with a defined AUROC, stopped, with released metrics)
    assert final_status(2, 2, [1, 2], [2], None, [1, 2]) == (COMPLETED, "all 2 rounds ran and aggregated")
    assert final_status(2, 2, [2], [2], None, [2])[0] == COMPLETED
    assert final_status(2, 2, [], [], None, [])[0] == FAILED
    nothing_released = final_status(2, 2, [1, 2], [], None, [])
    assert nothing_released[0] == FAILED and "no site released validation metrics" in nothing_released[1]
    # metrics came back, but every site's noisy counts hid a class: the reason names the noise and the fix
    too_noisy = final_status(2, 2, [1, 2], [], None, [1, 2])
    assert too_noisy[0] == FAILED and "validation.noise_multiplier" in too_noisy[1]
    assert "more held-out patients" in too_noisy[1]
    assert final_status(3, 2, [1, 2], [2], None, [1, 2]) == (FAILED, "only 2 of 3 rounds completed")
    stopped = RunStopped(BUDGET_EXHAUSTED, "every site declined")
    assert final_status(3, 1, [1], [], stopped, []) == (BUDGET_EXHAUSTED, "every site declined")


def test_a_site_that_does_not_answer_is_timed_out_and_named(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    strategy.recorder.names.update({1: "site-1", 2: "site-2", 3: "site-3"})
    strategy.asked, strategy.online = [1, 2], [1, 2, 3]
    strategy.aggregate_train(1, [_reply(1)])
    p = strategy.recorder.rounds[1].participation
    assert p["site-2"]["train"].status == "timed_out"
    assert p["site-3"]["train"].status == "not_sampled"
    assert "site-2" in strategy.recorder.rounds[1].failed_sites


class _Nodes:
    """A grid whose sites never come online (the SuperLink side of a federation that is down)."""

    def get_node_ids(self) -> list[int]:
        return [7]

    def send_and_receive(self, messages, timeout):  # pragma: no cover - never reached
        raise AssertionError("no message may be sent")


def test_sampling_waits_at_most_round_timeout(tmp_path: Path) -> None:
    now = [0.0]
    grid = DeadlineGrid(_Nodes(), 30.0, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    strategy = _strategy(tmp_path, "fedavg", "strategy.min_sites=2")
    messages = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                                             ConfigRecord(), grid))
    assert messages == [] and now[0] == pytest.approx(30.0)
    assert "1 site online, strategy.min_sites is 2" in strategy.recorder.rounds[1].skipped
    assert grid.send_and_receive(messages) == []


def test_messages_carry_the_run_id_and_run_round_numbers(tmp_path: Path) -> None:
    grid = DeadlineGrid(_Nodes(), 30.0)
    strategy = _strategy(tmp_path, "fedavg", first_round=4)
    (message,) = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(),
                                          grid)
    config = message.content.config_records["config"]
    assert config["run-id"] == "run-x" and config["server-round"] == 4


def test_fedadam_moments_survive_a_resume_point(tmp_path: Path) -> None:
    def two_rounds(strategy, replies_round_2):
        strategy.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}
        strategy.aggregate_train(1, [_reply(1), _reply(2)])
        return strategy

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = two_rounds(_strategy(tmp_path / "a", "fedadam"), None)
    save_resume_point(tmp_path, ResumePoint(1, dict(GLOBAL), strategy_state_arrays(first.strategy_state())))
    point = load_resume_point(tmp_path)
    resumed = _strategy(tmp_path / "b", "fedadam", first_round=2)
    resumed.load_strategy_state(split_strategy_state(point.strategy_state))
    for part in ("m_t", "v_t"):
        for k in GLOBAL:
            np.testing.assert_array_equal(getattr(resumed, part)[k], getattr(first, part)[k])
    # round 2 from the resumed state equals round 2 of the uninterrupted strategy
    for s in (first, resumed):
        s.current_arrays = {k: v.copy() for k, v in GLOBAL.items()}
    a, _ = first.aggregate_train(2, [_reply(1), _reply(2)])
    b, _ = resumed.aggregate_train(1, [_reply(1), _reply(2)])  # Flower's round 1 of the resumed loop = round 2
    for k in GLOBAL:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
    assert resumed.recorder.rounds[2].aggregated


def test_a_site_reporting_a_huge_count_does_not_dominate_the_average(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    loud = {"num-examples": 10**9, "epsilon": 1.0, "delta": 1e-5, "lifetime-epsilon": 1.0, "epsilon-cap": 8.0}
    arrays, _ = strategy.aggregate_train(1, [_reply(1), _reply(2), _reply(3, metrics=loud)])
    # counts 100, 100, 1e9 -> weights 100, 100, 1000 (10 x the median): site-3 weighs 1000/1200
    expected = (100 * 0.1 + 100 * 0.2 + 1000 * 0.3) / 1200
    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + expected, rtol=1e-5)
    outcome = strategy.recorder.rounds[1].participation["site-3"]["train"]
    assert outcome.status == "trained" and "capped at 1000" in outcome.reason


def test_a_site_that_only_ever_declines_is_named_from_its_error_reply(tmp_path: Path) -> None:
    strategy = _strategy(tmp_path)
    strategy.asked = [1, 2]
    reply = Message(Error(code=702, reason="declined: ... [site site-b]"), reply_to=_request(2))
    reply.metadata.__dict__["_src_node_id"] = 2
    strategy.aggregate_train(1, [_reply(1), reply])
    outcome = strategy.recorder.rounds[1].participation["site-b"]["train"]
    assert (outcome.status, outcome.code) == ("declined", 702)
