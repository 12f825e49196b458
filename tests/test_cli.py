"""The `fedclinic` command's own surface: --version, and the configuration in run/demo --help."""

from __future__ import annotations

from importlib.metadata import version

import pytest

import configs.describe
from configs.load import CONFIG_DIR
from configs.overrides import GROUPS
from launcher.cli import _parser, main


def test_version_prints_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedclinic {version('fedclinic')}"


@pytest.mark.parametrize("command", ["run", "demo"])
def test_help_lists_every_group_option_and_key_with_default_and_comment(
        command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per key
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: fedclinic {command}" in text
    lines = [line.strip() for line in text.splitlines()]
    for group in GROUPS:
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        assert any(line.startswith(f"{group}=") and line.endswith(", ".join(options)) for line in lines), group
    assert any(line.startswith("strategy=fedavg ") for line in lines)

    def entry(head: str) -> str:
        (line,) = [line for line in lines if line.startswith(head + " ") or line == head]
        return line
    assert "a round aggregates only when at least this many sites trained" in entry("strategy.min_sites=1")
    assert "per-sample clipping norm C" in entry("privacy.max_grad_norm=1.0")
    assert "[set by strategy=fedprox 0.01]" in entry("strategy.proximal_mu=0.0")  # a key only fedprox sets
    for head in ("rounds=5", "train.lr=1.0", "data.root=null", "output.root=runs", "evaluation.min_cell=10",
                 "simulation.cpus_per_site=1", "model.image_channels=[8, 16, 32]"):
        assert entry(head)


def test_parsing_a_run_does_not_compose_the_help(monkeypatch: pytest.MonkeyPatch) -> None:
    def composed(*_: object, **__: object) -> str:
        raise AssertionError("the configuration help was built without --help")
    monkeypatch.setattr(configs.describe, "describe_config", composed)
    args = _parser().parse_args(["run", "rounds=2"])
    assert args.overrides == ["rounds=2"]
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--no-such-flag"])  # the usage line of an error composes nothing either
