"""The site keeps its promise: an append-only crash-safe ledger and a policy that only tightens."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.site_round import train_round
from configs.load import load_experiment
from configs.schema import PrivacyConfig, PrivacyPolicy, ValidationSplit
from privacy.accountant import MechanismUse, epsilon_spent
from privacy.decline import LEDGER_UNREADABLE, LIFETIME_BUDGET, RUN_BUDGET, RoundDeclined
from privacy.ledger import LEDGER_FILE, Ledger, LedgerError, Spend
from privacy.policy import Account, admit, tighten
from test_privacy import _job

WRITER = """
import sys
from pathlib import Path
from privacy.ledger import Ledger, Spend
ledger = Ledger(Path(sys.argv[1]))
i = len(ledger.spends())
while True:
    with ledger.locked():
        ledger.append(Spend("ds", "run", i, 1.0, 0.01, 100, 1e-5, 0.1 * i, 0.1 * i, 1e-5, 10.0, "prv", "t" * 2000))
    i += 1
"""


def spend(i: int, dataset: str = "ds", run: str = "r1") -> Spend:
    return Spend(dataset, run, i, 1.0, 0.05, 20, 1e-5, 1.0, 1.0, 1e-5, 10.0, "prv", "2026-11-23T00:00:00+00:00")


def test_ledger_is_human_readable_append_only_and_survives_restarts(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    first = Ledger(path)
    with first.locked():
        first.append(spend(1))
        first.append(spend(2, run="r2"))
    lines = path.read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]
    again = Ledger(path)  # a restarted site
    recorded = again.spends()
    assert [dataclasses.replace(s, ledger_id="") for s in recorded] == [spend(1), spend(2, run="r2")]
    assert len({s.ledger_id for s in recorded}) == 1 and len(recorded[0].ledger_id) == 32  # one ledger's id
    assert again.history("ds") == [MechanismUse(1.0, 0.05, 20)] * 2 and again.history("ds", "r2") == [
        MechanismUse(1.0, 0.05, 20)]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_killing_a_writer_at_any_instant_never_lowers_the_recorded_spend(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    seen = 0
    rng = random.Random(4)
    for _ in range(12):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=Path(__file__).parent.parent)
        started = len(Ledger(path).spends()) if path.exists() else 0
        while writer.poll() is None and (len(Ledger(path).spends()) if path.exists() else 0) == started:
            time.sleep(0.01)  # wait for its first write, then kill at a random instant
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        spends = Ledger(path).spends()  # parses: never a torn file
        assert len(spends) >= seen and [s.round for s in spends] == list(range(len(spends)))
        seen = len(spends)
    assert seen > 12  # the writers did get work done between kills


def test_an_unreadable_ledger_is_an_error_not_an_empty_budget(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    path.write_text('{"dataset": "ds", "run_id": "r1"')
    with pytest.raises(LedgerError, match="cannot be read"):
        Ledger(path).spends()


@pytest.mark.parametrize(("requested", "policy", "expected"), [
    ((8.0, 1e-5, 1.0), PrivacyPolicy(), (8.0, 1e-5, 1.0)),
    ((8.0, 1e-5, 1.0), PrivacyPolicy(run_epsilon=3.0), (3.0, 1e-5, 1.0)),
    ((8.0, 1e-3, 4.0), PrivacyPolicy(lifetime_delta=1e-6, max_grad_norm=2.0), (8.0, 1e-6, 2.0)),
    ((2.0, 1e-6, 0.5), PrivacyPolicy(run_epsilon=5.0, lifetime_delta=1e-5, max_grad_norm=2.0), (2.0, 1e-6, 0.5)),
    ((80.0, 1e-5, 1.0), PrivacyPolicy(lifetime_epsilon=10.0), (10.0, 1e-5, 1.0)),
])
def test_the_policy_only_ever_tightens_the_request(requested: tuple[float, float, float], policy: PrivacyPolicy,
                                                   expected: tuple[float, float, float]) -> None:
    eps, delta, norm = requested
    terms = tighten(PrivacyConfig(eps, delta, norm, "prv", "hooks"), policy)
    assert (terms.run_epsilon, terms.delta, terms.max_grad_norm) == expected
    assert terms.run_epsilon <= eps and terms.delta <= delta and terms.max_grad_norm <= norm


def _account(run: int, lifetime: int, use: MechanismUse, recorded: float = 0.0) -> Account:
    def spent(i: int, run_id: str) -> Spend:
        return Spend("ds", run_id, i, use.noise_multiplier, use.sample_rate, use.steps, 1e-5, 0.0, recorded, 1e-5,
                     10.0, "prv", "t")
    return Account([spent(i, "r") for i in range(run)],
                   [spent(i, "r") for i in range(run)] + [spent(i, "old") for i in range(lifetime - run)], [])


def test_admission_projects_the_round_and_declines_with_the_reason() -> None:
    use = MechanismUse(1.0, 0.05, 30)  # ε ≈ 2.3 alone, ≈ 3.8 four times, ≈ 4.9 seven times
    policy = PrivacyPolicy(lifetime_epsilon=4.0)
    terms = tighten(PrivacyConfig(3.0, 1e-5, 1.0, "prv", "hooks"), policy)
    first = admit(use, _account(0, 0, use), terms=terms, policy=policy)
    assert first.run_epsilon == pytest.approx(epsilon_spent([use], 1e-5, "prv"))
    with pytest.raises(RoundDeclined) as run_cap:
        admit(use, _account(3, 3, use), terms=terms, policy=PrivacyPolicy(lifetime_epsilon=100))
    assert run_cap.value.code == RUN_BUDGET
    with pytest.raises(RoundDeclined) as life_cap:
        admit(use, _account(0, 6, use), terms=terms, policy=policy)
    assert life_cap.value.code == LIFETIME_BUDGET


def test_the_recorded_lifetime_never_decreases_whatever_the_accountant() -> None:
    """A history recorded at lifetime ε 3.9 (say, under RDP) stays at least 3.9 when recomputed
    with a tighter accountant: the larger of two valid upper bounds is one too."""
    use = MechanismUse(1.0, 0.05, 30)
    policy = PrivacyPolicy(lifetime_epsilon=100.0, accountant="prv")
    terms = tighten(PrivacyConfig(50.0, 1e-5, 1.0, "prv", "hooks"), policy)
    tight = epsilon_spent([use] * 3, 1e-5, "prv")
    projected = admit(use, _account(0, 2, use, recorded=tight + 5.0), terms=terms, policy=policy)
    assert projected.lifetime_epsilon == pytest.approx(tight + 5.0)


def test_budget_composes_across_runs_and_the_site_plans_or_declines_rather_than_overspend(small_sites: Path,
                                                                                           tmp_path: Path) -> None:
    cfg = load_experiment(["rounds=4", "train.local_epochs=1", "train.batch_size=32", "privacy.target_epsilon=3"])
    policy = PrivacyPolicy(lifetime_epsilon=4.0)  # run 1 spends 3.0 of it; run 2 must fit in the rest
    exact = ValidationSplit(release="exact")      # training only: no evaluation releases planned
    ledger = Ledger(tmp_path / LEDGER_FILE)
    run1 = [train_round(_job(small_sites, cfg, tmp_path, policy, exact), "run-1", r)[1] for r in (1, 2, 3, 4)]
    assert 2.9 <= run1[-1]["epsilon"] <= 3.0 and run1[-1]["lifetime-epsilon"] == pytest.approx(run1[-1]["epsilon"])
    run2 = [train_round(_job(small_sites, cfg, tmp_path, policy, exact), "run-2", r)[1] for r in (1, 2, 3, 4)]
    # sigma is planned for what the lifetime budget still allows: more noise, and the whole run fits
    assert run2[0]["noise-multiplier"] > run1[0]["noise-multiplier"]
    assert run2[0]["lifetime-epsilon"] > run1[-1]["lifetime-epsilon"] > run2[0]["epsilon"]  # starts from run 1
    assert policy.lifetime_epsilon - 0.1 <= run2[-1]["lifetime-epsilon"] <= policy.lifetime_epsilon
    spent_up = PrivacyPolicy(lifetime_epsilon=run2[-1]["lifetime-epsilon"] - 0.01)  # a cap the history passed
    before = ledger.path.read_bytes()
    with pytest.raises(RoundDeclined) as declined:  # no noise level fits: declined before anything is spent
        train_round(_job(small_sites, cfg, tmp_path, spent_up, exact), "run-4", 1)
    assert declined.value.code == LIFETIME_BUDGET and ledger.path.read_bytes() == before
    assert max(s.lifetime_epsilon for s in ledger.spends()) <= policy.lifetime_epsilon


@pytest.mark.parametrize("damage", ["not json", "truncated"])
def test_a_damaged_ledger_makes_the_site_decline_instead_of_training(small_sites: Path, tmp_path: Path,
                                                                     damage: str) -> None:
    path = tmp_path / LEDGER_FILE
    if damage == "not json":
        path.write_text("not json\n")
    else:
        ledger = Ledger(path)
        for i in range(2):
            ledger.append(spend(i))
        path.write_text(path.read_text().splitlines(keepends=True)[0])
    cfg = load_experiment(["rounds=2", "train.local_epochs=1"])
    with pytest.raises(RoundDeclined) as declined:
        train_round(_job(small_sites, cfg, tmp_path), "run-1", 1)
    assert declined.value.code == LEDGER_UNREADABLE


def _three_spends(tmp_path: Path) -> tuple[Ledger, list[str]]:
    ledger = Ledger(tmp_path / LEDGER_FILE)
    copies = []
    for i in range(3):
        ledger.append(spend(i))
        copies.append(ledger.path.read_text())
    return ledger, copies


def test_a_truncated_edited_deleted_or_older_ledger_is_refused(tmp_path: Path) -> None:
    """The watermark beside the ledger: no lost or lowered record passes as a smaller spend."""
    ledger, copies = _three_spends(tmp_path)
    assert json.loads(ledger.watermark.read_text())["entries"] == 3
    lines = copies[-1].splitlines(keepends=True)
    damaged = {
        "truncated": "".join(lines[:2]),
        "older backup": copies[0],
        "edited": copies[-1].replace('"run_epsilon": 1.0', '"run_epsilon": 0.1', 1),
        "emptied": "",
    }
    for name, text in damaged.items():
        ledger.path.write_text(text)
        with pytest.raises(LedgerError, match="not the ones .* recorded"):
            ledger.spends()
        with pytest.raises(LedgerError):
            ledger.append(spend(9))  # nothing is appended to a ledger that disagrees
        assert ledger.path.read_text() == text, name
    ledger.path.unlink()
    with pytest.raises(LedgerError, match="first 3 spends are not the ones"):
        ledger.spends()
    ledger.path.write_text(copies[-1])
    assert [s.round for s in ledger.spends()] == [0, 1, 2]  # the true ledger, restored, reads again
    ledger.watermark.write_text("{")
    with pytest.raises(LedgerError, match="watermark.json: cannot be read"):
        ledger.spends()


def test_a_crash_between_the_ledger_and_its_watermark_loses_nothing(tmp_path: Path) -> None:
    ledger, copies = _three_spends(tmp_path)
    mark = ledger.watermark.read_text()
    ledger.append(spend(3))
    ledger.watermark.write_text(mark)  # as if killed after the ledger's rename, before the watermark's
    assert [s.round for s in ledger.spends()] == [0, 1, 2, 3]  # one spend ahead: consistent
    ledger.append(spend(4))
    assert json.loads(ledger.watermark.read_text())["entries"] == 5
