"""What the site runs: the coordinator's training recipe, within the site's limits, on the site's data.

Configuration has owners. The coordinator proposes a recipe: rounds, local epochs, expected batch
size, optimiser and learning rate, strategy knobs, model widths, image size, note buckets and
tokens, target epsilon and delta, clipping norm and clipping mode. Each value is checked against
the site's limits (site.yaml `limits:`) before anything is allocated, and a request beyond one is
refused (602) with the field named. What the data means belongs to the site, or to the released
catalogue (configs/data): lab features with their units, conversions and plausible ranges, the
lab window, the image window and frame policy, the accountant (and, in site.yaml only, the
validation split). A coordinator value for one of those that differs from the site's own is
refused (602) unless it merely restates the release's own value, which says nothing: otherwise
the coordinator could choose which patients exist and turn every released count into a free
counting query, or learn the site's settings from which values it accepts. The site always uses
its own value. The model's input definition (the lab feature codes,
in order) must match the site's, or the site refuses (602).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from typing import Any

from configs.parse import ConfigError
from configs.schema import DataConfig, ExperimentConfig, SiteFileConfig, SiteLimits
from model.networks import activation_bytes, count_parameters

SITE_OWNED = ("data.window_center", "data.window_width", "data.frame_policy", "data.lab_window_hours",
              "data.labs", "privacy.accountant")
MIB = 1 << 20


def site_experiment(requested: ExperimentConfig, released: ExperimentConfig, site_file: SiteFileConfig
                    ) -> ExperimentConfig:
    """The configuration this site runs. `released` is the released configs/ without overrides.

    Raises ConfigError (field named) for a site-owned value the coordinator set to anything but
    the release's own, a feature list that is not the site's, or a recipe value beyond the limits.
    """
    own = site_file.data or released.data
    if site_file.lab_features is not None:  # the site's labs follow another released feature file
        released = dataclasses.replace(released, data=dataclasses.replace(released.data, labs=own.labs))
    _refuse_site_owned_changes(requested, released, own)
    check_recipe(requested, site_file.limits, num_labs=len(own.labs))
    data = dataclasses.replace(own, root=requested.data.root, image_size=requested.data.image_size,
                               note_buckets=requested.data.note_buckets,
                               note_max_tokens=requested.data.note_max_tokens)
    privacy = dataclasses.replace(requested.privacy, accountant=site_file.policy.accountant)
    return dataclasses.replace(requested, data=data, privacy=privacy)


def _refuse_site_owned_changes(requested: ExperimentConfig, released: ExperimentConfig, own: DataConfig) -> None:
    asked_codes = tuple(f.code for f in requested.data.labs)
    if asked_codes != tuple(f.code for f in own.labs):
        raise ConfigError("data.labs: the coordinator's model expects lab features "
                          f"{', '.join(asked_codes)}; this site defines a different list (or order)",
                          field="data.labs")
    for path in SITE_OWNED:
        asked = operator.attrgetter(path)(requested)
        # Only the release's own value may be restated: accepting the site's value too would tell
        # the coordinator what the site's settings are, one yes/no question at a time.
        if asked != operator.attrgetter(path)(released):
            where = _first_difference(asked, operator.attrgetter(path)(released), path)
            raise ConfigError(f"{where}: set by each site (site.yaml or the released catalogue), not by the "
                              "coordinator; remove this override", field=where)


def _first_difference(a: Any, b: Any, path: str) -> str:
    """The dotted path of the first leaf where `a` and `b` differ."""
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                return _first_difference(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{path}.{i}")
    return path


def _limit(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}", field=field)


def check_recipe(cfg: ExperimentConfig, limits: SiteLimits, *, num_labs: int) -> None:
    """Limits that need no data: raise ConfigError naming the field beyond a limit."""
    t, d = cfg.train, cfg.data
    _limit(cfg.rounds <= limits.max_rounds, "rounds", "above this site's limit")
    _limit(t.local_epochs <= limits.max_local_epochs, "train.local_epochs",
           "above this site's limit")
    _limit(cfg.rounds * t.local_epochs <= limits.max_steps_per_run, "rounds",
           "rounds x train.local_epochs is above this site's limit of DP steps per run")
    _limit(d.image_size <= limits.max_image_size, "data.image_size",
           "above this site's limit")
    _limit(d.note_buckets <= limits.max_note_buckets, "data.note_buckets",
           "above this site's limit")
    _limit(d.note_max_tokens <= limits.max_note_tokens, "data.note_max_tokens",
           "above this site's limit")
    _limit(cfg.strategy.proximal_mu <= limits.max_proximal_mu, "strategy.proximal_mu",
           "above this site's limit")
    threads = limits.max_threads or os.cpu_count() or 1
    _limit(t.num_threads <= threads, "train.num_threads", "above this site's limit")
    params = count_parameters(cfg.model, num_labs=num_labs, note_buckets=d.note_buckets)
    _limit(params <= limits.max_model_parameters, "model",
           f"{params} parameters, above this site's limit")


def check_data_limits(cfg: ExperimentConfig, limits: SiteLimits, *, patients: int) -> None:
    """Limits that depend on the number of labelled patients (an upper bound on the training
    split), checked before any image is decoded. Messages name the field and the rule, never the
    site's limit values or counts (site.yaml is not the coordinator's to read)."""
    d, t = cfg.data, cfg.train
    steps = cfg.rounds * t.local_epochs * math.ceil(max(patients, 1) / t.batch_size)
    _limit(steps <= limits.max_steps_per_run, "rounds",
           "rounds x train.local_epochs x steps per epoch is above this site's limit of DP steps per run; "
           "lower rounds or local epochs, or raise train.batch_size")
    image = d.image_size * d.image_size * 4
    _limit(2 * patients * image <= limits.max_data_memory_mb * MIB, "data.image_size",
           "this site's images at this size need more than its memory limit")
    _limit(patients * (image + 256) <= limits.cache_mb * MIB, "data.image_size",
           "this site's preprocessed images at this size exceed its cache quota")
    batch = min(t.batch_size, max(patients, 1)) * training_bytes_per_patient(cfg)
    _limit(batch <= limits.max_batch_memory_mb * MIB, "train.batch_size",
           "an expected batch of this model at this image size needs more than this site's memory limit")


def training_bytes_per_patient(cfg: ExperimentConfig) -> int:
    """Memory one patient of a Poisson batch costs in DP training (an estimate): its activations,
    in float64 under "ghost" (privacy/dpsgd/engine.py), plus a per-sample gradient of every
    parameter (float32, and a copy) where the mode materialises them ("hooks", "ew", "ghost")."""
    d, mode = cfg.data, cfg.privacy.grad_sample_mode
    per_patient = activation_bytes(cfg.model, image_size=d.image_size, note_tokens=d.note_max_tokens)
    if mode == "ghost":
        per_patient *= 2
    if mode in ("hooks", "ew", "ghost"):
        per_patient += 8 * count_parameters(cfg.model, num_labs=len(d.labs), note_buckets=d.note_buckets)
    return per_patient
