"""The Flower ClientApp adapter: Flower records <-> client.site_round, and the error boundary.

A site never sends exception text, paths or patient identifiers to the coordinator: failures
are logged here, at the site, and the reply carries only a fixed code. A round the site's
privacy policy declines is answered the same way, with the decline code (privacy.decline).
The one exception is a configuration the site refuses (602): its reason names the field and the
rule (a site-owned setting, or a limit), which is built from the coordinator's own request and
the site's limits only, so the central team can fix the request.

The run is keyed in the site's ledger by the `run-id` the message's config carries
(fedclinic's run folder name; client/run_key.py), else by Flower's run id. A request the site
already answered is answered again from its stored release (client/release_replay.py); the app
remembers the last message it answered that way (`replayed`), for the task runner's audit log.

Codes: 601 site data unusable, 602 configuration refused, 603 internal error, 605 global weights
refused (not the model's names/shapes/dtypes, or not finite), 701-705 declines (privacy.decline).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from flwr.app import ArrayRecord, Array, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.site_data.site_cache import SiteCache
from client.site_data.loader import SiteDataError
from client.release_replay import Release
from client.run_key import RUN_ID_FIELD, run_key
from client.site import site_settings
from client.site_round import SiteJob, evaluate_release, prepare, train_release
from configs.load import split_overrides
from configs.parse import ConfigError
from model.exchange import FLAT_KEY, Layout, WeightsRefused, to_exchange
from privacy.decline import REASONS, RoundDeclined



class SiteClientApp(ClientApp):
    """Flower's ClientApp, owning the process's SiteCache (client/site_data/site_cache.py):
    composed configs and the loaded sites, reused by every message this process handles. A deployed site's
    task runner and a simulation's Ray actors keep one process (so one app object) for many
    messages; a process started per message simply starts with an empty cache.

    It pickles as a reference to the receiving process's own `client.app:app` (as a module-level
    function pickles by name): Flower's simulation sends the app to a Ray actor with every
    message, and each actor must keep using its own app, and cache, rather than a fresh copy."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = SiteCache()
        self._replayed: Message | None = None

    def replayed(self, message: Message) -> bool:
        """Whether this app's reply to `message` (the last one it answered) was a stored release
        sent again, without a new spend (client/release_replay.py)."""
        return self._replayed is message

    def note(self, message: Message, release: Release | None) -> None:
        """Remember whether `message` was answered by a replay (None: not answered with a release)."""
        self._replayed = message if release is not None and release.replayed else None

    def __reduce__(self) -> tuple[Callable[[], SiteClientApp], tuple[()]]:
        return _installed_app, ()


def _installed_app() -> SiteClientApp:
    """This process's ClientApp (what a pickled SiteClientApp becomes when unpickled)."""
    return app


app = SiteClientApp()
log = logging.getLogger("fedclinic.site")

ERROR_SITE_DATA, ERROR_CONFIG, ERROR_INTERNAL, ERROR_WEIGHTS = 601, 602, 603, 605
SITE_TAG_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_REASON = 300


def _site_tag(context: Context) -> str:
    """' [site NAME]': an error reply carries no content, so the site's name (which every normal
    reply carries too) rides at the end of the reason. Only a name the site was given (node config
    `site-name`, or a simulation's virtual site): a name taken from the data folder's name could
    say something about the site's disk, and an error reply says nothing of that."""
    if "site-name" not in context.node_config and "partition-id" not in context.node_config:
        return ""
    try:
        name = site_settings(dict(context.node_config), None if "data-path" in context.node_config
                             else _data_root(context)).name
    except Exception:  # a site that cannot even name itself still answers with its code
        return ""
    return f" [site {name}]" if SITE_TAG_NAME.fullmatch(name) else ""


def _data_root(context: Context) -> str | None:
    """data.root of the run's overrides (simulation: the site folders' root), if it can be read."""
    for item in split_overrides(str(context.run_config.get("overrides", ""))):
        key, _, value = item.partition("=")
        if key == "data.root":
            return value
    return None


def _job(msg: Message, context: Context) -> SiteJob:
    exchanged = {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()}
    return prepare(str(context.run_config.get("overrides", "")), dict(context.node_config), exchanged, app.cache)


def _server_round(msg: Message) -> int:
    config = msg.content.config_records.get("config")
    value = config.get("server-round", 0) if config is not None else 0
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def _run_key(msg: Message, context: Context) -> str:
    """The ledger's key of this run: the config's `run-id`, else Flower's run id (ConfigError: 602)."""
    config = msg.content.config_records.get("config")
    return run_key(config.get(RUN_ID_FIELD) if config is not None else None, context.run_id)


def _reply(msg: Message, site: str, metrics: dict[str, float], arrays: ArrayRecord | None = None) -> Message:
    content = RecordDict({"metrics": MetricRecord(metrics), "site": ConfigRecord({"name": site})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


class _ActorShutdownNotice(logging.Filter):
    """Drops Flower's `Manually terminating ClientAppActor` (flwr/simulation/ray_transport/
    ray_actor.py): a simulation's normal end, which otherwise reads as a WARNING on every run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Manually terminating %s"


def _flower_records_once() -> None:
    """Flower's log records, printed once in this site process: Flower's own console handler prints
    them, so they no longer also reach the root handler that importing Opacus installs
    (`logging.basicConfig` in opacus/utils/module_utils.py), which printed each a second time."""
    flower = logging.getLogger("flwr")
    flower.propagate = False
    if not any(isinstance(f, _ActorShutdownNotice) for f in flower.filters):
        flower.addFilter(_ActorShutdownNotice())


def _guarded(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    def run(msg: Message, context: Context) -> Message:
        app.note(msg, None)
        _flower_records_once()
        try:
            return handler(msg, context)
        except RoundDeclined as declined:
            log.warning("round declined by the site policy: %s", declined.detail)
            code, reason = declined.code, REASONS[declined.code]
        except SiteDataError as exc:
            log.error("site data problem: %s", exc)
            code, reason = ERROR_SITE_DATA, "site data unusable; see the site log"
        except ConfigError as exc:
            log.error("configuration refused: %s", exc)
            code, reason = ERROR_CONFIG, f"configuration rejected by the site: {exc}"[:MAX_REASON]
        except WeightsRefused as exc:
            log.error("global weights refused: %s", exc)
            code, reason = ERROR_WEIGHTS, "global weights refused by the site: not the model's, or not finite"
        except Exception:  # the site must never crash or leak; details stay in its log
            log.exception("unexpected failure")
            code, reason = ERROR_INTERNAL, "internal error at the site; see the site log"
        return Message(Error(code=code, reason=reason + _site_tag(context)), reply_to=msg)
    run.__name__ = handler.__name__
    return run


@app.train()
@_guarded
def train(msg: Message, context: Context) -> Message:
    """Local DP training from the global weights, if the site policy admits the round.

    ε reported covers every round of this run so far; the site's ledger records it before release.
    """
    run = _run_key(msg, context)
    job = _job(msg, context)
    release = train_release(job, run, _server_round(msg))
    weights = release.arrays
    if FLAT_KEY in msg.content.array_records["arrays"]:  # reply in the form the coordinator sent
        weights = to_exchange(weights, Layout.of(job.model.state_dict()))  # one flat float32 array
    arrays = ArrayRecord({k: Array(v) for k, v in weights.items()})
    app.note(msg, release)
    return _reply(msg, job.site.name, release.metrics, arrays)


@app.evaluate()
@_guarded
def evaluate(msg: Message, context: Context) -> Message:
    """Validation of the global weights on this site's held-out patients (a DP release by default)."""
    run = _run_key(msg, context)
    job = _job(msg, context)
    release = evaluate_release(job, run, _server_round(msg))
    app.note(msg, release)
    return _reply(msg, job.site.name, release.metrics)
