"""The real ClientApp called with real Flower messages: replies, persisted DP state, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import ERROR_CONFIG, ERROR_SITE_DATA, app
from configs.load import load_experiment
from model.exchange import FLAT_KEY
from server.app import initial_record
from site_yaml import set_sections

OVERRIDES = "rounds=3 train.local_epochs=1 train.batch_size=32"


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages are stamped with the running task's identity, as inside a SuperNode."""
    for name, value in (("run_id", 1), ("task_id", 1), ("node_id", 1)):
        monkeypatch.setattr(TaskIdentity, f"_{name}", value)


def request(kind: str, server_round: int = 1) -> Message:
    """The coordinator's message: the global model as one flat float32 array (server.app)."""
    arrays, _ = initial_record(load_experiment(OVERRIDES.split()))
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=5, message_type=kind)


def context(node_config: dict[str, str], overrides: str = OVERRIDES) -> Context:
    return Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(),
                   run_config={"overrides": overrides})


def test_train_replies_with_weights_metrics_and_keeps_dp_state(small_sites: Path, tmp_path: Path) -> None:
    ctx = context({"data-path": str(small_sites / "site-b"), "state-dir": str(tmp_path / "state")})
    first = app(request("train", 1), ctx)
    assert not first.has_error()
    metrics = first.content.metric_records["metrics"]
    # no training loss: it would be a non-DP statistic of the training data
    assert set(metrics) == {"num-examples", "epsilon", "delta", "lifetime-epsilon", "noise-multiplier", "steps",
                            "compute-s", "epsilon-cap"}
    assert metrics["compute-s"] >= 0 and round(metrics["compute-s"], 1) == metrics["compute-s"]  # 0.1 s
    assert first.content.config_records["site"]["name"] == "site-b"
    sent, back = request("train").content.array_records["arrays"], first.content.array_records["arrays"]
    assert set(back) == set(sent) == {FLAT_KEY}  # one array each way, the model's size and type
    assert back[FLAT_KEY].numpy().shape == sent[FLAT_KEY].numpy().shape and back[FLAT_KEY].numpy().dtype == np.float32
    second = app(request("train", 2), ctx)  # the site's ledger carries the run's spend between messages
    assert second.content.metric_records["metrics"]["epsilon"] > metrics["epsilon"]
    assert second.content.metric_records["metrics"]["noise-multiplier"] == metrics["noise-multiplier"]
    ev = app(request("evaluate"), ctx)
    assert set(ev.content.metric_records["metrics"]) == {
        "eval-loss", "auroc", "auroc-defined", "auroc-std", "num-examples", "metrics-dp", "noise-std", "histogram-positive",
        "histogram-negative", "epsilon", "lifetime-epsilon", "compute-s", "epsilon-cap"}  # the same keys from every site (Flower needs that)
    assert not ev.content.array_records


def test_a_broken_site_answers_with_a_code_and_no_details(tmp_path: Path) -> None:
    secret = tmp_path / "st-elsewhere-oncology"
    secret.mkdir()
    reply = app(request("train"), context({"data-path": str(secret)}))
    assert reply.has_error() and reply.error.code == ERROR_SITE_DATA
    assert "oncology" not in reply.error.reason and "labels" not in reply.error.reason


def test_a_config_the_site_rejects_is_reported_as_such(small_sites: Path, tmp_path: Path) -> None:
    ctx = context({"data-path": str(small_sites / "site-a"), "state-dir": str(tmp_path)}, "rounds=0")
    reply = app(request("evaluate"), ctx)
    assert reply.has_error() and reply.error.code == ERROR_CONFIG


def test_the_site_will_not_report_metrics_over_too_few_held_out_patients(small_sites: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    import shutil
    shutil.copytree(small_sites / "site-a", site)
    set_sections(site, validation={'fraction': 0.2, 'seed': 0, 'min_patients': 1000})
    reply = app(request("evaluate"), context({"data-path": str(site), "state-dir": str(tmp_path / "state")}))
    assert reply.has_error() and reply.error.code == 704 and "too few held-out patients" in reply.error.reason
