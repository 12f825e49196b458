"""Flower adapter: pull one ClientApp task's input from the SuperNode, and give up on a message
the SuperNode will never complete.

Flower 1.41's `pull_task_input` (flwr/supernode/runtime/run_clientapp.py) with one change. The
SuperNode (flwr/supernode/start_client_internal.py::_pull_and_store_message) creates the task and
stores the message *before* it pulls the message's objects from the coordinator. When the run is
stopped at the coordinator (`flwr stop`, a Ctrl-C of `fedclinic run`) during that pull, the pull
raises `RunNotRunningException`, a BaseException that skips the cleanup meant for failed pulls:
the task stays pending and its message's objects stay "not yet available" for good. A task
runner that takes that task then waits for them for up to Flower's PULL_MAX_TIME (7200 s, 500
tries), and a one-at-a-time runner answers no later run meanwhile.

The SuperNode handles one message at a time (pull it, wait for its reply, send it), so it creates
no new task while it is still pulling a message: a newer task waiting at the SuperNode while this
message's objects are unavailable proves they will never come. `moved_on()` asks that (the runner
claims the newer task and answers it next); this pull then raises TaskAbandoned. Without a newer
task the wait goes on as in Flower (a slow link to the coordinator is no reason to give up).
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.app import Context, Message
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
from flwr.supercore.fab import Fab
from flwr.supercore.inflatable.inflatable_protobuf_utils import (make_confirm_message_received_fn_protobuf,
                                                                  make_pull_object_fn_protobuf)
from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError, pull_and_inflate_object_from_tree
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity


class TaskAbandoned(RuntimeError):
    """The SuperNode dropped this task's message (its run was stopped while the SuperNode received it)."""


def pull_task_input(client: RuntimeHttpClient, moved_on: Callable[[], bool]) -> tuple[Message, Context, Run, Fab]:
    """(message, context, run, bundle) of the task `client`'s token is for, as Flower's own
    pull_task_input. Raises TaskAbandoned when the message's content is unavailable, `moved_on()`
    says the SuperNode has a newer task, and one more pull still finds it unavailable; RuntimeError when the SuperNode holds no
    message for the task; httpx errors as the runtime API answers them."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    pull_object = make_pull_object_fn_protobuf(client.PullObject, node, context.run_id)

    def pull_or_give_up(object_id: str) -> bytes:
        try:
            return pull_object(object_id)
        except ObjectUnavailableError:
            if not moved_on():
                raise
            try:  # a newer task means every older message's objects that will ever come are stored
                return pull_object(object_id)  # (they may have landed just before it was created)
            except ObjectUnavailableError:
                raise TaskAbandoned(f"the SuperNode moved on to a newer task; the content of run "
                                    f"{context.run_id}'s message will never arrive (the run was stopped)") from None

    message = pull_and_inflate_object_from_tree(  # a TaskAbandoned stops every pull and comes out here
        tree, pull_or_give_up,
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower: the deflated message lacks its id
    return message, context, run, fab
