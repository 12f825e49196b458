"""Flower adapter: one ClientApp task of the SuperNode, answered by the site's installed ClientApp.

What `flwr/supernode/runtime/run_clientapp.py::run_clientapp` does for a task, with Flower's own
functions (`push_message`, `push_task_output`, the task heartbeat, the task token; the input is
pulled by client/node/flower_task_input.py, which gives up on a message of a stopped run),
except that the run's app bundle (FAB) is never installed and none of its code is ever imported:
the bundle's SHA-256 is computed here from its bytes (a hash the coordinator claims is never
used) and checked against the site's allow-list first. An unapproved bundle is answered
with error 606; an approved one is answered by `client.app.app`, as installed at the site.

Nothing the coordinator sent is echoed back and no exception text leaves the site: failures
are logged here and the reply carries a fixed code (client/app.py's 603).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import SubStatus
from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry.retry_invoker import RetryInvoker, exponential
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from client.node.approved_apps import AllowListError, read_allow_list
from client.node.flower_task_input import TaskAbandoned, pull_task_input
from client.run_key import RUN_ID_FIELD, run_key
from configs.parse import ConfigError

ERROR_NOT_APPROVED = 606
NOT_APPROVED = "app bundle not approved by the site"
ERROR_INTERNAL = 603  # client/app.py's code and text for a failure the site keeps to itself
INTERNAL = "internal error at the site; see the site log"
RUNTIME_RETRY_SECONDS = 60.0  # a task gives up on an unreachable SuperNode after this long
TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError,
                    httpx.ConnectTimeout, httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)

log = logging.getLogger("fedclinic.site.runner")


@dataclass(frozen=True)
class TaskOutcome:
    """What the site did with one task (for the audit log and the runner log; no patient data).

    `error_code` is None when the ClientApp replied with content; `replayed` True when that
    content was a stored release sent again without a new spend (client/release_replay.py);
    `seconds` is the whole task, `app_seconds` the ClientApp call alone (0 when it was not called).
    """

    run_id: int
    app_sha256: str
    approved: bool
    message_type: str
    server_round: int | None
    error_code: int | None
    epsilon: float | None
    seconds: float
    app_seconds: float
    replayed: bool = False
    run_key: str | None = None  # the run-id the coordinator sent (fedclinic's run), if valid


def runtime_client(address: str, interceptors: list[object], retry: bool) -> RuntimeHttpClient:
    """A plain-HTTP client of the SuperNode's loopback runtime API.

    With `retry`, transport errors are retried for up to RUNTIME_RETRY_SECONDS; HTTP error
    statuses are raised at once (Flower's own retry invoker sends SIGINT to the process on a 401,
    which would stop the long-lived runner).
    """
    invoker = RetryInvoker(lambda: exponential(max_delay=10), TRANSPORT_ERRORS, max_tries=None,
                           max_time=RUNTIME_RETRY_SECONDS) if retry else None
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,  # type: ignore[arg-type]
                                                 retry_invoker=invoker)


def _heartbeat(client: RuntimeHttpClient) -> HeartbeatSender:
    """Flower's task heartbeat, minus its SIGINT to the process when the SuperNode drops the task."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            if not client.SendTaskHeartbeat(request).success:
                log.warning("the SuperNode no longer holds this task (it expired); its reply will be dropped")
        except httpx.HTTPError:
            return False
        return True

    return HeartbeatSender(beat)


def _server_round(message: Message) -> int | None:
    config = message.content.config_records.get("config")
    value = config.get("server-round") if config is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _run_key(message: Message) -> str | None:
    """The message config's `run-id` when it is a valid run key (client/run_key.py), else None."""
    config = message.content.config_records.get("config")
    sent = config.get(RUN_ID_FIELD) if config is not None else None
    try:
        return run_key(sent, 0) if isinstance(sent, str) else None
    except ConfigError:
        return None


def _epsilon(reply: Message) -> float | None:
    if reply.has_error():
        return None
    metrics = reply.content.metric_records.get("metrics")
    value = metrics.get("epsilon") if metrics is not None else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return None
    return float(value)


def _replayed(app: ClientApp, message: Message, reply: Message) -> bool:
    """Whether the site's ClientApp answered `message` with a stored release (client.app.SiteClientApp)."""
    replayed = getattr(app, "replayed", None)
    return not reply.has_error() and callable(replayed) and bool(replayed(message))


def approved_hashes(allow_list: Path) -> frozenset[str]:
    """The allow-list as it is now (re-read for every task, so `site approve` needs no restart);
    an unreadable list approves nothing (fail closed) and is logged with its file and line."""
    try:
        return read_allow_list(allow_list)
    except AllowListError as exc:
        log.error("refusing every app bundle until the allow-list is fixed: %s", exc)
        return frozenset()


def _answer(app: ClientApp, message: Message, context: Context) -> tuple[Message, float]:
    """The installed ClientApp's reply, or a fixed 603 if it raised (details only in this log)."""
    started = time.perf_counter()
    try:
        reply = app(message=message, context=context)
    except Exception:  # the runner never crashes and never sends exception text
        log.exception("the ClientApp failed on a %r message", message.metadata.message_type[:40])
        reply = Message(Error(code=ERROR_INTERNAL, reason=INTERNAL), reply_to=message)
    return reply, time.perf_counter() - started


def _finish(client: RuntimeHttpClient, heartbeat: HeartbeatSender, context: Context | None, status: str,
            details: str) -> None:
    """Mark the task finished at the SuperNode (with the context to keep), stop its heartbeat."""
    try:
        push_task_output(client, context, status, details)
    except Exception:  # the SuperNode will expire the task; the runner goes on
        log.exception("could not mark the task finished at the SuperNode")
    finally:
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()


def _never() -> bool:
    return False


def run_task(address: str, token: str, allow_list: Path, app: ClientApp,
             moved_on: Callable[[], bool] = _never) -> TaskOutcome | None:
    """Answer the task that `token` was issued for; None if its input could not be pulled.

    `moved_on()`: whether the SuperNode has a newer task (see client/node/flower_task_input.py);
    a task whose message the SuperNode dropped is then given up. Never raises for a failure of
    the task itself (logged here); the task is always marked finished at the SuperNode when it
    can be reached.
    """
    started = time.perf_counter()
    client = runtime_client(address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                      RuntimeTokenHttpInterceptor(token)], retry=True)
    heartbeat = _heartbeat(client)
    kept: Context | None = None  # the context written back: only an approved run's
    status, details, outcome = SubStatus.FAILED, "the site could not process the task", None
    try:
        heartbeat.start()
        message, context, _run, fab = pull_task_input(client, moved_on)
        digest = hashlib.sha256(fab.content).hexdigest()  # never the hash the coordinator claims
        approved = digest in approved_hashes(allow_list)
        if approved:
            reply, app_seconds = _answer(app, message, context)
            kept, status, details = context, SubStatus.COMPLETED, ""
        else:
            reply, app_seconds = Message(Error(code=ERROR_NOT_APPROVED, reason=NOT_APPROVED), reply_to=message), 0.0
            details = NOT_APPROVED
        push_message(client, reply, context)
        outcome = TaskOutcome(message.metadata.run_id, digest, approved, message.metadata.message_type[:40],
                              _server_round(message), reply.error.code if reply.has_error() else None,
                              _epsilon(reply), time.perf_counter() - started, app_seconds,
                              approved and _replayed(app, message, reply), _run_key(message))
    except TaskAbandoned as exc:
        # no reply: the SuperNode does not wait for one, and a stray reply would hold back the next
        # run's reply (its loop sends the replies it has, then pulls the next message first)
        log.warning("task given up: %s; taking the next task", exc)
        status, details = SubStatus.FAILED, "the SuperNode dropped the task's message"
    except Exception:  # a broken task must not stop the runner
        log.exception("task failed before its reply was sent")
        status = SubStatus.FAILED
    finally:
        _finish(client, heartbeat, kept, status, details)
    return outcome
