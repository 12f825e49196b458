"""The coordinator's run id keys the site's ledger, and a request the site already answered is
answered again from disk without a second spend (a resumed round costs nothing twice).

Real ClientApp (`client.app.app`), real Flower messages, a real synthetic site."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, Array, ConfigRecord, Context, Message, RecordDict

from client.app import ERROR_CONFIG, app
from client.release_replay import RELEASES_DIR
from client.site_data.site_cache import SiteCache
from model.exchange import FLAT_KEY
from privacy.ledger import LEDGER_FILE
from messages import exchanged, initial_weights, metrics, send
from site_yaml import set_sections
from synth.hospitals import write_hospitals

pytestmark = pytest.mark.usefixtures("task_identity")
RUN = "rounds=10 train.local_epochs=1 train.batch_size=32"
RUN_ID = "20261130-153000-ab12"
POLICY_CAP = 5.0  # the site's run ε ceiling, below the coordinator's target (8)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("replay-site")
    write_hospitals(root, sites=1, patients=150, seed=3, image_size=32)
    set_sections(root / "site-a", privacy={"dataset_id": "synthetic-site-a", "lifetime_epsilon": 50.0,
                                           "lifetime_delta": 1.0e-5, "run_epsilon": POLICY_CAP,
                                           "min_noise_multiplier": 0.5, "max_grad_norm": 10.0})
    return root / "site-a"


def _spends(state: Path) -> list[dict]:
    path = state / LEDGER_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _flat(reply: Message) -> np.ndarray:
    return reply.content.array_records["arrays"][FLAT_KEY].numpy()


def _perturbed() -> dict[str, np.ndarray]:
    weights = initial_weights(RUN)
    name = next(iter(weights))
    return {**weights, name: weights[name] + np.float32(0.01)}


def test_the_ledger_keys_the_run_by_the_coordinators_run_id_across_flower_runs(site: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = metrics(send("train", site, state, RUN, run_id=8123, config={"run-id": RUN_ID}))
    resumed = metrics(send("train", site, state, RUN, run_id=99, server_round=2, config={"run-id": RUN_ID}))
    assert [s["run_id"] for s in _spends(state)] == [RUN_ID, RUN_ID]
    assert resumed["noise-multiplier"] == first["noise-multiplier"]  # the run's planned σ, continued
    assert resumed["epsilon"] > first["epsilon"]                      # the same run ε, growing
    metrics(send("train", site, state, RUN, run_id=8123))  # an older coordinator: Flower's run id
    assert _spends(state)[-1]["run_id"] == "8123"


@pytest.mark.parametrize("bad", ["", ".hidden", "..", "a/b", "a b", "x" * 65, "run\n", 7, True, b"run"])
@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_bad_run_id_is_refused_with_602_and_nothing_is_spent(site: Path, tmp_path: Path, bad: object,
                                                               kind: str) -> None:
    state = tmp_path / "state"
    reply = send(kind, site, state, RUN, config={"run-id": bad})
    assert reply.has_error() and reply.error.code == ERROR_CONFIG
    assert "run-id" in reply.error.reason and (not isinstance(bad, str) or not bad or bad not in reply.error.reason)
    assert _spends(state) == [] and not (state / RELEASES_DIR).exists()


def test_the_same_train_request_is_answered_again_without_a_second_spend(site: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    first = send("train", site, state, RUN, run_id=1, config={"run-id": RUN_ID})
    monkeypatch.setattr(app, "cache", SiteCache())  # a new process: the replay is on disk
    again = send("train", site, state, RUN, run_id=2, config={"run-id": RUN_ID})  # resumed: new Flower run
    assert metrics(again) == metrics(first)
    assert _flat(again).tobytes() == _flat(first).tobytes() and _flat(again).dtype == np.float32
    assert len(_spends(state)) == 1
    stored = sorted((state / RELEASES_DIR / RUN_ID).iterdir())
    assert [p.name for p in stored] == ["train.json", "train.npz"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored)

    metrics(send("train", site, state, RUN, weights=_perturbed(), config={"run-id": RUN_ID}))
    assert len(_spends(state)) == 2  # other weights: a new release
    metrics(send("train", site, state, RUN + " train.lr=0.05", config={"run-id": RUN_ID}))
    assert len(_spends(state)) == 3  # other overrides: a new release
    metrics(send("train", site, state, RUN, config={"run-id": RUN_ID}))
    assert len(_spends(state)) == 4  # only the latest release of a (run, phase) is kept
    metrics(send("train", site, state, RUN, config={"run-id": "another-run"}))
    assert len(_spends(state)) == 5  # another run: a new release
    assert [s["round"] for s in _spends(state)] == [1] * 5


def test_the_same_evaluate_request_is_answered_again_without_a_second_spend(site: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = metrics(send("evaluate", site, state, RUN, config={"run-id": RUN_ID}))
    again = metrics(send("evaluate", site, state, RUN, run_id=2, config={"run-id": RUN_ID}))
    assert again == first and len(_spends(state)) == 1 and _spends(state)[0]["kind"] == "evaluate"
    other = metrics(send("evaluate", site, state, RUN, weights=_perturbed(), config={"run-id": RUN_ID}))
    assert len(_spends(state)) == 2 and other["epsilon"] > first["epsilon"]
    metrics(send("evaluate", site, state, RUN, server_round=2, weights=_perturbed(), config={"run-id": RUN_ID}))
    assert len(_spends(state)) == 3  # the same weights in another round: a new release


def test_a_torn_store_is_no_replay_but_a_new_spend(site: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    metrics(send("evaluate", site, state, RUN, config={"run-id": RUN_ID}))
    (state / RELEASES_DIR / RUN_ID / "evaluate.npz").write_bytes(b"torn")  # a crash between the two writes
    metrics(send("evaluate", site, state, RUN, config={"run-id": RUN_ID}))
    assert len(_spends(state)) == 2


def test_the_app_tells_the_task_runner_which_reply_was_a_replay(site: Path, tmp_path: Path) -> None:
    node_config = {"data-path": str(site), "state-dir": str(tmp_path / "state")}

    def message() -> Message:
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in exchanged(initial_weights(RUN)).items()}),
                              "config": ConfigRecord({"server-round": 1, "run-id": RUN_ID})})
        return Message(content, dst_node_id=5, message_type="evaluate")

    ctx = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={"overrides": RUN})
    first, second = message(), message()
    assert not app(first, ctx).has_error() and not app.replayed(first)
    assert not app(second, ctx).has_error() and app.replayed(second)


def test_every_reply_names_the_sites_run_epsilon_cap(site: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    trained = metrics(send("train", site, state, RUN, config={"run-id": RUN_ID}))
    evaluated = metrics(send("evaluate", site, state, RUN, config={"run-id": RUN_ID}))
    assert trained["epsilon-cap"] == evaluated["epsilon-cap"] == POLICY_CAP
    assert trained["epsilon"] <= POLICY_CAP


def test_the_site_audit_log_shows_a_replay_as_such(tmp_path: Path) -> None:
    from client.node.flower_runner import record
    from client.node.flower_task import TaskOutcome
    from client.node.settings import NodeSettings
    from storage.audit_log import read_events

    settings = NodeSettings(tmp_path / "node.toml", "site-a", tmp_path / "data", tmp_path / "state", None,
                            "127.0.0.1:9092", tmp_path / "ca.crt", tmp_path / "key", 9094, tmp_path / "apps")
    for replayed in (False, True):
        record(settings, TaskOutcome(8123, "ab" * 32, True, "train", 1, None, 1.5, 2.0, 1.9, replayed, RUN_ID),
               set())
    tasks = [e for e in read_events(settings.audit_log).events if e["event"] == "task"]
    assert [(e["outcome"], e["run_key"], e["run"]) for e in tasks] == [("replied", RUN_ID, "8123"),
                                                                      ("replayed", RUN_ID, "8123")]


def _crash_before_store(site: Path, state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A train request whose spend is recorded but whose release is never stored (so never sent)."""
    from client.release_replay import ReleaseStore

    def lost(*args: object, **kwargs: object) -> None:
        raise OSError("the process died here")
    with monkeypatch.context() as patch:
        patch.setattr(ReleaseStore, "keep", lost)
        assert send("train", site, state, RUN, config={"run-id": RUN_ID}).has_error()
    assert [s["kind"] for s in _spends(state)] == ["train"]


def test_a_spend_whose_writer_died_before_releasing_is_computed_again_under_it(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys
    state = tmp_path / "state"
    _crash_before_store(site, state, monkeypatch)
    (claim,) = (state / RELEASES_DIR / RUN_ID).glob("train.pending.json")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = json.loads(claim.read_text())
    claim.write_text(json.dumps({**record, "pid": int(dead.stdout)}))  # as if its writer had been killed
    reply = metrics(send("train", site, state, RUN, config={"run-id": RUN_ID}))
    spends = _spends(state)
    assert [s["kind"] for s in spends] == ["train"]  # one release, one spend
    assert reply["epsilon"] == pytest.approx(spends[0]["run_epsilon"])
    assert not claim.exists()


def test_a_claim_whose_writer_still_runs_is_not_taken_over(site: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    _crash_before_store(site, state, monkeypatch)  # the claim names this (live) test process
    metrics(send("train", site, state, RUN, config={"run-id": RUN_ID}))
    assert [s["kind"] for s in _spends(state)] == ["train", "train"]  # a concurrent duplicate is spent anew


def test_an_error_reply_names_its_site(site: Path, tmp_path: Path) -> None:
    named = send("train", site, tmp_path / "state", RUN, config={"run-id": "bad/id"}, node={"site-name": "st-x"})
    assert named.has_error() and named.error.reason.endswith(" [site st-x]")
    unnamed = send("train", site, tmp_path / "state", RUN, config={"run-id": "bad/id"})  # its folder's name: kept
    assert unnamed.has_error() and "[site" not in unnamed.error.reason
