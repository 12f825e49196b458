"""Regression (red team, issue 12): the runner gives up a task on "content unavailable" + "a newer task waits",
checked one after the other (client/node/flower_task_input.py::pull_or_give_up), never both at once.

Flower's SuperNode creates the next task only after the current message's objects are all stored
(start_client_internal.py: pull, put, confirm, then _push_messages). In lock-step that is after
the site's reply, but with one reply already waiting in the node state (a task whose run was
stopped at ConfirmMessageReceived is complete, gets answered, and its reply waits: the SuperNode
is then one reply ahead and returns from _push_messages at once), the next task is created as
soon as the current message's objects are stored. If that happens between the runner's
PullObject answer ("unavailable") and its AcquireTask call, the runner gives up a message whose
content is there: no reply, no audit record. Here the SuperNode's two steps run inside moved_on,
i.e. exactly in that window.
"""

from __future__ import annotations

from pathlib import Path

from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor

from client.node.flower_task import run_task, runtime_client
from client.node.flower_runner import ACQUIRE_METHODS, _Tasks
from tests.test_runner_stopped_run import SuperNode, supernode  # noqa: F401  (fixture)


def test_a_message_whose_content_lands_while_the_runner_checks_for_a_newer_task_is_answered(
        supernode: SuperNode, tmp_path: Path) -> None:  # noqa: F811
    address = f"127.0.0.1:{supernode.port}"
    poller = runtime_client(address, [RuntimeVersionHttpInterceptor(component_name="SuperExec"),
                                      SuperExecAuthHttpInterceptor(master_secret=supernode.secret.read_bytes(),
                                                                   protected_methods=ACQUIRE_METHODS)], retry=False)
    tasks = _Tasks(poller)
    first = supernode.deliver(1, complete=False)  # the SuperNode is still pulling its objects
    res = poller.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    assert res.token
    (tmp_path / "approved.txt").write_text("")
    calls = []

    def moved_on() -> bool:
        if not calls:  # the SuperNode's pull ends, and (one reply ahead) it takes the next message
            supernode.complete(first)
            supernode.deliver(2, complete=True)
        calls.append(1)
        return tasks.newer_waiting()

    outcome = run_task(address, res.token, tmp_path / "approved.txt", app=None, moved_on=moved_on)  # type: ignore[arg-type]
    replies = supernode.state.get_messages_legacy(is_reply=True)
    assert [m for m in replies if m.metadata.reply_to_message_id == first.metadata.message_id], (
        "the first message's content was there, yet the runner gave it up without a reply")
    assert outcome is not None
