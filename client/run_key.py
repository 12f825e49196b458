"""The key of a run in the site's ledger and release store: fedclinic's run id, or Flower's.

The coordinator names its run (the run folder's name, e.g. `20261130-153000-ab12`) in every
train and evaluate message's config (`run-id`), so a run resumed under a new Flower run id keeps
its ledger run: the same run ε ceiling, the same planned σ. A coordinator that sends no `run-id`
(older coordinators) is keyed by Flower's run id, as before. Either way the coordinator chooses
the key, as it always chose Flower's run id; what bounds a coordinator that invents new run ids
is the dataset's lifetime budget (docs/threat-model.md, "Budgets that never go down").
"""

from __future__ import annotations

import re

from configs.parse import ConfigError

RUN_ID_FIELD = "run-id"
MAX_RUN_ID = 64
_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")


def run_key(sent: object | None, flower_run_id: int) -> str:
    """The ledger's run key for a message: `sent` (the config's `run-id`, None when absent)
    if it is a str of 1-64 characters of [A-Za-z0-9._-] not starting with '.', else Flower's
    numeric run id when nothing was sent. It is also a folder name under the state folder
    (client/release_replay.py), which the rule keeps safe (no '/', no '..', no hidden name).

    Raises ConfigError (field `run-id`, the site's 602) for any other value; the text does not
    echo the value.
    """
    if sent is None:
        return str(flower_run_id)
    if not isinstance(sent, str) or _RUN_ID.fullmatch(sent) is None:
        raise ConfigError(f"{RUN_ID_FIELD}: must be a string of 1-{MAX_RUN_ID} characters of A-Z a-z 0-9 . _ -, "
                          f"not starting with '.'; send the run folder's name", field=RUN_ID_FIELD)
    return sent
