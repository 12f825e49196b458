"""The coordinator sends a recipe, not the site's configuration: an allow-list of override forms,
site-owned settings it cannot change, limits checked before anything is allocated, and global
weights refused unless they are the model's and finite. Each case answers 602 (or 605) with the
field named, and nothing is spent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from client.app import ERROR_CONFIG, ERROR_WEIGHTS
from configs.load import CONFIG_DIR, load_experiment
from configs.parse import ConfigError
from model.exchange import FLAT_KEY
from privacy.ledger import LEDGER_FILE
from messages import SMALL_RUN, exchanged, initial_weights, metrics, send
from site_yaml import set_sections

pytestmark = pytest.mark.usefixtures("task_identity")


def test_overrides_cannot_reach_files_outside_configs(tmp_path: Path) -> None:
    """sec-hydra-path: a search path or a group option with a path would compose any YAML on the site."""
    outside = tmp_path / "data"
    outside.mkdir()
    (outside / "evil.yaml").write_text((CONFIG_DIR / "data" / "clinical.yaml").read_text()
                                       .replace("image_size: 32", "image_size: 77"))
    relative = os.path.relpath(outside / "evil", CONFIG_DIR / "data")
    for overrides, field in (([f"hydra.searchpath=[file://{tmp_path}]", "data=evil"], "hydra.searchpath"),
                             ([f"data={relative}"], "data"), (["data=evil"], "data")):
        with pytest.raises(ConfigError) as refused:
            load_experiment(overrides)
        assert refused.value.field == field


@pytest.mark.parametrize(("override", "field"), [
    ("+data.extra=1", "data.extra"), ("++rounds=3", "rounds"), ("~rounds", "rounds"),
    ("data@foo=clinical", "data@foo"), ("hydra.run.dir=/tmp", "hydra.run.dir"), ("nonsense=1", "nonsense"),
    ("data.labs.0.nonsense=1", "data.labs.0.nonsense"), ("rounds=${oc.env:HOME}", "rounds"),
])
def test_only_plain_key_value_on_schema_keys_is_accepted(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_experiment([override])
    assert refused.value.field == field


@pytest.mark.parametrize(("override", "field"), [
    ("rounds=100000", "rounds"),                             # a PRV plan over 200 000 steps
    ("train.local_epochs=100000 rounds=1", "train.local_epochs"),
    ("data.image_size=4096", "data.image_size"),            # N x 4096^2 floats and a cache entry each
    ("data.note_buckets=500000000", "data.note_buckets"),   # a 16 GB embedding
    ("data.note_max_tokens=5000000", "data.note_max_tokens"),
    ("model.image_channels=[1024,1024,1024,1024]", "model"),  # 29 M parameters > 20 M
    ("train.num_threads=1000", "train.num_threads"),
])
def test_requests_beyond_the_sites_limits_are_refused_with_the_field_named(site_copy: Path, tmp_path: Path,
                                                                         override: str, field: str) -> None:
    """sec-config-dos: refused before any allocation (the weights sent are the default model's)."""
    reply = send("train", site_copy, tmp_path / "state", f"{SMALL_RUN} {override}", weights=initial_weights(SMALL_RUN))
    assert reply.has_error() and reply.error.code == ERROR_CONFIG
    assert f"configuration rejected by the site: {field}" in reply.error.reason
    assert not (tmp_path / "state" / LEDGER_FILE).exists()


def test_site_yaml_limits_are_the_sites_own_and_only_lower_the_release_maxima(site_copy: Path, tmp_path: Path) -> None:
    set_sections(site_copy, limits={'max_image_size': 48, 'max_rounds': 4, 'max_steps_per_run': 20})
    state = tmp_path / "state"
    for override, field in (("data.image_size=64", "data.image_size"), ("rounds=5", "rounds"),
                            ("train.batch_size=8", "rounds")):  # 3 x 1 x ceil(120 / 8) = 45 steps > 20
        reply = send("evaluate", site_copy, state, f"{SMALL_RUN} {override}")
        assert reply.has_error() and reply.error.code == ERROR_CONFIG, override
        assert f"rejected by the site: {field}" in reply.error.reason
    assert metrics(send("evaluate", site_copy, state, f"{SMALL_RUN} data.image_size=48"))["num-examples"] >= 0


@pytest.mark.parametrize("override", [
    "data.labs.0.low=5 data.labs.0.high=120",        # sec-count-query: the coordinator picks who exists
    "data.labs.1.high=2e9",
    "data.labs.0.unit=mmol/L",
    "data.lab_window_hours=1",
    "data.window_center=40 data.window_width=400",
    "data.frame_policy=first",
    "privacy.accountant=rdp",                         # sec-accountant-switch
])
def test_what_the_data_means_is_the_sites_and_a_coordinator_value_is_refused(site_copy: Path, tmp_path: Path,
                                                                          override: str) -> None:
    reply = send("evaluate", site_copy, tmp_path / "state", f"{SMALL_RUN} {override}")
    assert reply.has_error() and reply.error.code == ERROR_CONFIG
    assert "set by each site" in reply.error.reason and override.split("=")[0].split(".")[1] in reply.error.reason


def test_counts_do_not_depend_on_coordinator_ranges(site_copy: Path, tmp_path: Path) -> None:
    """sec-count-query: whatever ranges are asked for, the site counts the same patients, and
    restating the catalogue's own value (or the site's accountant) is not an error."""
    restated = f"{SMALL_RUN} data.labs.0.low=5.0 data.labs.0.high=1500.0 privacy.accountant=prv"
    plain = metrics(send("train", site_copy, tmp_path / "a", SMALL_RUN))
    same = metrics(send("train", site_copy, tmp_path / "b", restated))
    assert plain["num-examples"] == same["num-examples"] and plain["steps"] == same["steps"]


def test_the_model_input_definition_must_be_the_sites(site_copy: Path, tmp_path: Path) -> None:
    """The coordinator proposes the lab feature list; a different list (or order) is refused."""
    reply = send("evaluate", site_copy, tmp_path / "state",
                 f"{SMALL_RUN} data.labs.0.code=9999-9 data.labs.0.name=other")
    assert reply.has_error() and reply.error.code == ERROR_CONFIG and "data.labs" in reply.error.reason


@pytest.mark.parametrize("damage", ["nan", "inf", "shape", "2-D", "missing", "extra", "named-nan", "dtype"])
def test_global_weights_that_are_not_the_models_or_not_finite_are_refused_before_any_spend(
        site_copy: Path, tmp_path: Path, damage: str) -> None:
    """nan-global-model (site side): refused before anything is planned, loaded or spent. The
    model travels as one flat float32 vector (model.exchange), cut by the site's own model."""
    flat = exchanged(initial_weights(SMALL_RUN))[FLAT_KEY]
    arrays: dict[str, np.ndarray] = {FLAT_KEY: flat.copy()}
    if damage in ("nan", "inf"):
        arrays[FLAT_KEY][3] = np.nan if damage == "nan" else np.inf
    elif damage == "shape":
        arrays[FLAT_KEY] = flat[:-32]  # 32 values short
    elif damage == "2-D":
        arrays[FLAT_KEY] = flat.reshape(1, -1)
    elif damage == "missing":
        arrays = {}
    elif damage == "extra":
        arrays["head.0.weight"] = np.zeros((32, 99), dtype=np.float32)
    elif damage == "named-nan":  # the named form (one array per state entry) is checked the same way
        arrays = {name: value.copy() for name, value in initial_weights(SMALL_RUN).items()}
        next(v for v in arrays.values() if v.dtype.kind == "f" and v.size)[...] = np.nan
    else:
        arrays[FLAT_KEY] = flat.astype(np.int64)
    for kind in ("train", "evaluate"):
        reply = send(kind, site_copy, tmp_path / "state", arrays=arrays)
        assert reply.has_error() and reply.error.code == ERROR_WEIGHTS
    assert not (tmp_path / "state" / LEDGER_FILE).exists()


def test_the_preprocessing_cache_stays_within_the_sites_quota(site_copy: Path, tmp_path: Path) -> None:
    """A coordinator that varies data.image_size each run must not fill the volume of the ledger:
    the site's cache keeps the current load's entries and drops the least recently used others."""
    set_sections(site_copy, limits={'cache_mb': 1})
    state = tmp_path / "state"
    for size in (16, 24, 32, 40):
        metrics(send("evaluate", site_copy, state, f"{SMALL_RUN} data.image_size={size}"))
        entries = [p for p in (state / "cache").rglob("*.entry")]
        assert sum(p.stat().st_size for p in entries) <= 1 << 20
    too_big = send("evaluate", site_copy, state, f"{SMALL_RUN} data.image_size=64")  # 120 x 16 KiB > 1 MiB
    assert too_big.has_error() and too_big.error.code == ERROR_CONFIG and "cache quota" in too_big.error.reason


def test_weights_finite_only_in_a_wider_type_or_of_an_odd_type_are_refused(site_copy: Path, tmp_path: Path) -> None:
    """1e300 is finite as float64 and infinite in the model's float32; long doubles are no model's."""
    flat = exchanged(initial_weights(SMALL_RUN))[FLAT_KEY]
    wide = flat.astype(np.float64)
    wide[-33:-1] = 1e300  # head.2.weight
    for odd in (wide, flat.astype(np.longdouble)):
        reply = send("train", site_copy, tmp_path / "state", arrays={FLAT_KEY: odd})
        assert reply.has_error() and reply.error.code == ERROR_WEIGHTS
    assert not (tmp_path / "state" / LEDGER_FILE).exists()


def test_the_site_s_own_settings_cannot_be_probed_by_restating_them(site_copy: Path, tmp_path: Path) -> None:
    """Only the release's own value may be restated; the site's own (here a 36 h lab window and
    the first frame) is refused like any other, so replies do not reveal site.yaml."""
    set_sections(site_copy, data={'lab_window_hours': 36, 'frame_policy': 'first'})
    state = tmp_path / "state"
    for probe in ("data.lab_window_hours=36", "data.lab_window_hours=48", "data.frame_policy=first"):
        reply = send("evaluate", site_copy, state, f"{SMALL_RUN} {probe}")
        assert reply.has_error() and reply.error.code == ERROR_CONFIG, probe
        assert "36" not in reply.error.reason and "first" not in reply.error.reason.replace(probe, "")
    metrics(send("evaluate", site_copy, state, f"{SMALL_RUN} data.lab_window_hours=72"))  # the release's value


@pytest.mark.parametrize("overrides", ['rounds=2 data.root="', "seed=99999999999999999999999"])
def test_malformed_overrides_are_refused_not_internal_errors(site_copy: Path, tmp_path: Path, overrides: str) -> None:
    reply = send("evaluate", site_copy, tmp_path / "state", overrides, weights=initial_weights(SMALL_RUN))
    assert reply.has_error() and reply.error.code == ERROR_CONFIG


def test_memory_of_per_sample_gradients_and_of_evaluation_is_bounded(site_copy: Path, tmp_path: Path) -> None:
    """hooks/ew/ghost keep a per-sample gradient of every parameter: counted in the batch memory
    limit. Evaluation works in chunks that fit the same limit."""
    set_sections(site_copy, limits={'max_batch_memory_mb': 256})
    big = "data.note_buckets=65536 model.note_dim=32 train.batch_size=10000"
    for mode, code in (("hooks", ERROR_CONFIG), ("ew", ERROR_CONFIG)):
        reply = send("train", site_copy, tmp_path / mode, f"{SMALL_RUN} {big} privacy.grad_sample_mode={mode}",
                     weights=initial_weights(f"{SMALL_RUN} {big}"))
        assert reply.has_error() and reply.error.code == code and "train.batch_size" in reply.error.reason
    from client.site_round import _evaluation_batch, prepare
    job = prepare(f"{SMALL_RUN} data.image_size=256 model.image_channels=[64] train.batch_size=1",
                  {"data-path": str(site_copy), "state-dir": str(tmp_path / "eval")},
                  exchanged(initial_weights(f"{SMALL_RUN} data.image_size=256 model.image_channels=[64] train.batch_size=1")))
    from model.networks import activation_bytes
    per_patient = activation_bytes(job.cfg.model, image_size=256, note_tokens=job.cfg.data.note_max_tokens)
    assert 1 <= _evaluation_batch(job) * per_patient <= 256 << 20 and _evaluation_batch(job) < 256


def test_concurrent_messages_in_one_process_are_not_internal_errors(site_copy: Path, tmp_path: Path) -> None:
    """Hydra's compose API is process-global: the site composes one request at a time."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda i: send("evaluate", site_copy, tmp_path / f"state-{i}"), range(3)))
    assert all(not r.has_error() for r in replies), [r.error.code for r in replies if r.has_error()]
