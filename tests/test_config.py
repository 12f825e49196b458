"""The real configs/ compose into typed objects; bad overrides name the field."""

from __future__ import annotations

import dataclasses

import pytest

from configs.load import load_experiment, split_overrides, to_yaml
from configs.parse import ConfigError
from configs.schema import ExperimentConfig, LabFeature


def test_defaults_compose_into_frozen_typed_config(experiment: ExperimentConfig) -> None:
    assert experiment.rounds >= 1 and experiment.privacy.accountant == "prv"
    assert all(isinstance(f, LabFeature) for f in experiment.data.labs)
    assert isinstance(experiment.model.image_channels, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        experiment.rounds = 9  # type: ignore[misc]


def test_command_line_overrides_reach_the_typed_config() -> None:
    cfg = load_experiment(["rounds=7", "privacy.target_epsilon=3", "data.root=/x/y", "train.optimizer=adam"])
    assert (cfg.rounds, cfg.privacy.target_epsilon, cfg.data.root, cfg.train.optimizer) == (7, 3.0, "/x/y", "adam")


@pytest.mark.parametrize(("override", "field"), [
    ("rounds=zero", "rounds"),
    ("rounds=0", "rounds"),
    ("privacy.target_delta=2", "privacy.target_delta"),
    ("train.optimizer=lbfgs", "train.optimizer"),
    ("privacy.accountant=gdp", "privacy.accountant"),
    ("data.window_center=40", "data.window_width"),
    ("+data._target_=os.system", "data._target_"),
    ("+surprise=1", "surprise"),
])
def test_bad_values_are_rejected_naming_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field.replace('.', '[.]')}"):
        load_experiment([override])


def test_unknown_group_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot compose"):
        load_experiment(["model=enormous"])


def test_override_string_round_trips_like_a_shell() -> None:
    assert split_overrides('rounds=2 "data.root=/a b/c"') == ["rounds=2", "data.root=/a b/c"]


def test_resolved_yaml_reflects_overrides() -> None:
    text = to_yaml(["rounds=4"])
    assert "rounds: 4" in text and "target_epsilon:" in text


def test_the_coordinator_cannot_interpolate_or_choose_the_validation_split() -> None:
    with pytest.raises(ConfigError, match="interpolations"):
        load_experiment(["train.local_epochs=${oc.env:HOME}"])
    for override in ("data.val_fraction=0.000001", "data.split_seed=1157529"):
        with pytest.raises(ConfigError, match="unknown key"):  # the split is the site's (site.yaml)
            load_experiment([f"+{override}"])


def test_a_bad_value_is_shown_bounded_whatever_its_size() -> None:
    """A value of 10^9 shared leaves (YAML aliases build one from a few hundred bytes) is named in
    the error, cut short, without walking it."""
    from configs.parse import parse_dataclass
    from configs.schema import PrivacyPolicy
    leaf: list = ["x"] * 10
    for _ in range(9):
        leaf = [leaf] * 10
    with pytest.raises(ConfigError, match="lifetime_epsilon: expected float, got list") as err:
        parse_dataclass(PrivacyPolicy, {"lifetime_epsilon": leaf})
    assert len(str(err.value)) < 200


@pytest.mark.parametrize(("override", "suggestion"), [
    ("strategy.min_site=2", "did you mean strategy.min_sites?"),
    ("round=3", "did you mean rounds?"),
    ("privacy.target_epsillon=3", "did you mean privacy.target_epsilon?"),
    ("stratgy=fedprox", "did you mean strategy?"),
    ("+rond=3", "did you mean rounds?"),
    ("train.learning_rate=0.1", "train has: local_epochs, batch_size, optimizer, lr,"),
])
def test_an_unknown_key_names_the_closest_known_one(override: str, suggestion: str) -> None:
    key = override.lstrip("+").partition("=")[0]
    with pytest.raises(ConfigError, match="unknown key") as err:
        load_experiment([override])
    assert str(err.value).startswith(f"{key}: ") and suggestion in str(err.value)


@pytest.mark.parametrize(("override", "advice"), [
    ("data.labs.9.code=x", "no such entry in the configuration"),  # a list item that does not exist
    ("model.image_channels.5=3", "list items count from 0"),
    ("data.labs.0.conversions.xx=3", "cannot add one"),  # a mapping entry that does not exist
    ("data.root=/a/b#c", "\"data.root='/a/b#c'\""),  # Hydra's grammar: quote the value
    ("data.root=[a", "quote it as a string"),
    ("rounds=1,2", "write a list as rounds=[a,b]"),  # a sweep: fedclinic runs one experiment
    ("rounds=abc", "expected int"),
    ("strategy=fedavgg", "the options are fedadagrad, fedadam, fedavg"),
])
def test_no_override_gets_hydras_plus_advice(override: str, advice: str) -> None:
    key = override.partition("=")[0]
    with pytest.raises(ConfigError) as err:
        load_experiment([override])
    message = str(err.value)
    assert message.startswith(f"{key}: ") and advice in message
    assert f"+{key}" not in message and "--multirun" not in message


def test_a_quoted_value_reads_as_the_string() -> None:
    assert load_experiment(["data.root='/a/b#c'"]).data.root == "/a/b#c"
