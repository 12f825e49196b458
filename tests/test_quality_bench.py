"""bench/quality.py --quick end to end: every row trains and is measured, and the verdicts print.

A smoke test only: at --quick's size the numbers mean nothing, so no threshold is asserted on
them (the targets live in the benchmark's printed verdicts, measured at full size)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_quick_quality_bench_prints_every_row_with_finite_metrics_and_the_four_verdicts(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(BENCH / "quality.py"), "--quick", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| row")]
    labels = [line.split(" | ")[0][2:] for line in table]
    assert labels[:3] == ["pooled, non-DP", "pooled, DP ε 8", "FedAvg, non-DP"] and len(labels) == 11, labels
    assert {"FedProx, DP ε 8", "FedAdam, DP ε 8", "FedAvg, DP ε 8, image only"} <= set(labels)
    for line in table:
        auroc = re.match(r"\| [^|]+ \| (\d\.\d{3}) ± (\d\.\d{3}) \|", line)
        assert auroc is not None and 0.0 <= float(auroc.group(1)) <= 1.0, line
    verdicts = [line for line in lines if line.startswith(("MET", "MISSED"))]
    assert len(verdicts) == 4, done.stdout[-2000:]
    # the test split was set aside at every site and no training split holds it
    assert re.search(r"train/validation/test patients (\d+/\d+/\d+, ){2}\d+/\d+/\d+", done.stdout)
