"""The README's first two commands are what a new user runs and what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bash_blocks() -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)]


def test_first_command_installs_torch_first_then_runs_the_demo() -> None:
    first = bash_blocks()[0]
    assert first.index("pip install torch==2.13.0") < first.index("pip install -e .")
    assert first.endswith("fedclinic demo")


def test_ci_runs_exactly_the_readme_test_command() -> None:
    second = bash_blocks()[1]
    assert "pytest" in second and "pip install torch==2.13.0" in second
    ci_lines = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert second in ci_lines
