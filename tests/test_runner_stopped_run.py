"""The gated task runner against Flower's real SuperNode runtime API, in the state a stopped run
leaves there (client/node/flower_task_input.py).

Flower 1.41's SuperNode creates a task and stores its message before it pulls the message's
objects from the coordinator; when `flwr stop` (a Ctrl-C of `fedclinic run`) lands during that
pull, the task stays pending with content that never arrives. The runner took that task and
waited for it for up to two hours, answering no later run: the site silently stopped training
(CI: after test_federation's Ctrl-C test, site-c never replied again). Here the SuperNode's
state is built with its own calls, in the order its main loop makes them, and served by its
own runtime API app; the runner is the real one, in its own process.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message import remove_content_from_message
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_object import (get_all_nested_objects, get_object_tree,
                                                         no_object_id_recompute)
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.main import create_app
from flwr.supernode.nodestate import NodeState, NodeStateFactory

from launcher.coordinator.folder import FLOWER_ENV
from tests.coordinator_procs import free_port

NODE_ID = 7
WAIT_S = 180.0  # a deadline for a reply on a loaded 2-core box, not a speed target


@dataclass
class SuperNode:
    """Flower's SuperNode runtime API on loopback, and the node state behind it."""

    state: NodeState
    port: int
    secret: Path
    seen: list[Message] = field(default_factory=list)

    def deliver(self, run_id: int, *, complete: bool) -> Message:
        """What _pull_and_store_message does for a message of `run_id`: store the run, its bundle and
        context, create the task, preregister the message's objects and store it without content;
        then, if `complete`, the objects (else the pull was cut short: `flwr stop`)."""
        fab = Fab(hashlib.sha256(b"bundle %d" % run_id).hexdigest(), b"bundle %d" % run_id, {})
        run = Run.create_empty(run_id)
        run.fab_hash, run.series_id = fab.hash_str, run_id
        self.state.store_run(run)
        self.state.store_fab(fab)
        self.state.set_run_series_context(run_id, Context(run_id=run_id, node_id=NODE_ID, node_config={},
                                                          state=RecordDict(), run_config={}))
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, 1, 0
        message = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(64, np.float32))}),
                                      "config": ConfigRecord({"server-round": 2})}),
                          dst_node_id=NODE_ID, message_type="train")
        with no_object_id_recompute():
            message.metadata.__dict__["_message_id"] = message.object_id
        assert self.state.create_task(task_type=TaskType.CLIENT_APP, run_id=run_id, fab_hash=fab.hash_str)
        self.state.object_store.preregister(run_id, get_object_tree(message))
        self.state.store_message(remove_content_from_message(message))
        if complete:
            self.complete(message)
        return message

    def complete(self, message: Message) -> None:
        """The SuperNode's pull of `message`'s objects finishes."""
        for object_id, obj in get_all_nested_objects(message).items():
            self.state.object_store.put(object_id, obj.deflate())

    def reply_to(self, message: Message, runner: Runner) -> Message | None:
        """The runner's reply to `message` (None if none came within WAIT_S), as the SuperNode's
        loop reads replies."""
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and runner.process.poll() is None:
            self.seen += self.state.get_messages_legacy(is_reply=True)
            found = [m for m in self.seen if m.metadata.reply_to_message_id == message.metadata.message_id]
            if found:
                return found[0]
            time.sleep(0.2)
        return None


@dataclass
class Runner:
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def supernode(tmp_path: Path) -> Iterator[SuperNode]:
    secret = tmp_path / "runtime-secret"
    secret.write_bytes(os.urandom(32).hex().encode())
    factory = NodeStateFactory(objectstore_factory=ObjectStoreFactory())
    state, port = factory.state(), free_port()
    state.set_node_id(NODE_ID)
    server = uvicorn.Server(uvicorn.Config(create_app(state_factory=factory, superexec_auth_secret=secret.read_bytes()),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the runtime API did not start"
        time.sleep(0.05)
    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    try:
        yield SuperNode(state, port, secret)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def runner(supernode: SuperNode, tmp_path: Path) -> Iterator[Runner]:
    """`python -P -m client.node.flower_runner` as `site start` runs it; no bundle is approved,
    so each task it answers gets error 606 (a reply all the same)."""
    node = tmp_path / "node"
    node.mkdir()
    (node / "approved-apps.txt").write_text("")
    (node / "node.toml").write_text(
        f'[site]\nname = "site-z"\ndata = "data"\nstate = "{tmp_path / "state"}"\n'
        f'[coordinator]\naddress = "127.0.0.1:1"\nca = "ca.crt"\n'
        f'[node]\nkey = "keys/site-z"\nruntime-port = {supernode.port}\napproved-apps = "approved-apps.txt"\n')
    log = tmp_path / "runner.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-P", "-m", "client.node.flower_runner", str(node / "node.toml"),
                                    "--secret-file", str(supernode.secret)], stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env={**os.environ, **FLOWER_ENV}, start_new_session=True)
    try:
        yield Runner(process, log)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_a_task_of_a_run_stopped_while_the_supernode_received_it_does_not_keep_the_site_from_the_next_run(
        supernode: SuperNode, runner: Runner) -> None:
    stopped = supernode.deliver(1, complete=False)
    following = supernode.deliver(2, complete=True)
    reply = supernode.reply_to(following, runner)
    assert reply is not None, f"the next run's task was never answered; runner log:\n{runner.text()[-3000:]}"
    assert reply.has_error() and reply.error.code == 606  # the test's bundle is not approved: refused, but answered
    assert "task given up" in runner.text()
    # no stray reply to the dropped message: the SuperNode does not wait for one, and it would hold
    # back the next run's reply (Flower's loop sends the replies it has, then pulls the next message)
    assert not [m for m in supernode.seen if m.metadata.reply_to_message_id == stopped.metadata.message_id]


def test_a_message_whose_content_arrives_late_is_still_answered(supernode: SuperNode, runner: Runner) -> None:
    """A slow pull from the coordinator is no stopped run: without a newer task the runner waits."""
    late = supernode.deliver(1, complete=False)
    deadline = time.monotonic() + WAIT_S
    while " acquired" not in runner.text():
        assert runner.process.poll() is None and time.monotonic() < deadline, runner.text()[-3000:]
        time.sleep(0.2)
    time.sleep(3)  # the runner is now waiting for the message's objects
    supernode.complete(late)
    reply = supernode.reply_to(late, runner)
    assert reply is not None and reply.error.code == 606, runner.text()[-3000:]
    assert "task given up" not in runner.text()
