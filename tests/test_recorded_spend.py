"""Recorded spend never goes down: a high-water mark outside the state folder, one accountant that
is the site's own, and a lifetime budget that follows the data rather than the site's name."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from client.site_data.readiness.check import check_site
from client.site import site_settings
from configs.load import load_experiment
from privacy.decline import LEDGER_UNREADABLE
from privacy.ledger import LEDGER_FILE, Ledger, LedgerError
from messages import metrics, send

pytestmark = pytest.mark.usefixtures("task_identity")
RUN = "rounds=20 train.local_epochs=1 train.batch_size=128"
MARK = "privacy-ledger.watermark.json"


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


@pytest.fixture
def spent_state(site_copy: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A state folder with three recorded rounds, and a backup of it taken after the first."""
    base, backup = tmp_path / "base", tmp_path / "backup"
    metrics(send("train", site_copy, base, RUN, run_id=11))
    shutil.copytree(base, backup)
    for r in (2, 3):
        metrics(send("train", site_copy, base, RUN, run_id=11, server_round=r))
    return site_copy, base, backup


def _restore(state: Path, backup: Path, lines: list[str]) -> None:
    shutil.rmtree(state)
    shutil.copytree(backup, state)


def _unmark_and_drop_last(state: Path, backup: Path, lines: list[str]) -> None:
    (state / MARK).unlink()
    (state / LEDGER_FILE).write_text("\n".join(lines[:-1]) + "\n")


def _zero_watermark_and_empty(state: Path, backup: Path, lines: list[str]) -> None:
    (state / MARK).write_text(json.dumps({"entries": 0, "sha256": _digest([])}))
    (state / LEDGER_FILE).write_text("")


def _truncate_and_recompute(state: Path, backup: Path, lines: list[str]) -> None:
    (state / LEDGER_FILE).write_text(lines[0] + "\n")
    (state / MARK).write_text(json.dumps({"entries": 1, "sha256": _digest(lines[:1])}))


def _delete_both(state: Path, backup: Path, lines: list[str]) -> None:
    (state / MARK).unlink()
    (state / LEDGER_FILE).unlink()


@pytest.mark.parametrize("tamper", [_restore, _unmark_and_drop_last, _zero_watermark_and_empty,
                                    _truncate_and_recompute, _delete_both])
@pytest.mark.parametrize("where", ["same folder", "copied elsewhere"])
def test_a_rolled_back_ledger_is_refused_with_703(spent_state: tuple[Path, Path, Path], tmp_path: Path,
                                                  tamper, where: str) -> None:
    """sec-ledger-rollback: whole-folder restores, deleted or zeroed watermarks, recomputed
    watermarks, deleted ledgers: each is refused, in place or in a copy of the state folder."""
    site, base, backup = spent_state
    state = base if where == "same folder" else tmp_path / "copy"
    if where != "same folder":
        shutil.copytree(base, state)
    if tamper is _delete_both and where != "same folder":
        pytest.skip("deleting both files of a copy leaves a fresh, unrelated folder: nothing links it to the data")
    tamper(state, backup, (base / LEDGER_FILE).read_text().splitlines())
    before = (state / LEDGER_FILE).read_bytes() if (state / LEDGER_FILE).exists() else None
    reply = send("train", site, state, RUN, run_id=12)
    assert reply.has_error() and reply.error.code == LEDGER_UNREADABLE
    after = (state / LEDGER_FILE).read_bytes() if (state / LEDGER_FILE).exists() else None
    assert after == before  # nothing appended to a record the site cannot trust


def test_an_intact_copy_of_the_state_folder_is_not_refused(spent_state: tuple[Path, Path, Path],
                                                           tmp_path: Path) -> None:
    site, base, _ = spent_state
    shutil.copytree(base, tmp_path / "moved")
    lifetime = metrics(send("train", site, tmp_path / "moved", RUN, run_id=12))["lifetime-epsilon"]
    assert lifetime > max(json.loads(line)["lifetime_epsilon"] for line in (base / LEDGER_FILE).read_text().splitlines())


def test_a_ledger_without_its_mark_needs_a_privacy_officer_to_adopt_it(spent_state: tuple[Path, Path, Path],
                                                                       tmp_path: Path) -> None:
    site, base, _ = spent_state
    fresh_marks = tmp_path / "new-mark-store"   # e.g. the site moved to a new machine
    ledger = Ledger(base / LEDGER_FILE, fresh_marks)
    with pytest.raises(LedgerError, match="no high-water mark"):
        ledger.spends()
    assert ledger.adopt() == 3
    assert len(ledger.spends()) == 3
    with pytest.raises(LedgerError, match="outside its state folder"):
        Ledger(base / LEDGER_FILE, base / "marks")


def test_the_accountant_is_the_sites_and_the_lifetime_never_decreases(site_copy: Path, tmp_path: Path) -> None:
    """sec-accountant-switch: the coordinator cannot pick the accountant; when the site itself
    changes it, the recorded lifetime epsilon still never goes down."""
    state = tmp_path / "state"
    policy = site_copy / "site.yaml"
    policy.write_text(policy.read_text().replace("lifetime_epsilon: 50.0", "lifetime_epsilon: 6.0\n  accountant: rdp"))
    refused = send("train", site_copy, state, f"{RUN} privacy.accountant=rdp")  # even the site's own value:
    assert refused.has_error() and refused.error.code == 602   # accepting it would reveal site.yaml
    for r in (1, 2, 3):  # restating the release's default is harmless; the site still uses its rdp
        metrics(send("train", site_copy, state, f"{RUN} privacy.accountant=prv", run_id=1, server_round=r))
    policy.write_text(policy.read_text().replace("accountant: rdp", "accountant: prv"))
    for r in (1, 2, 3):
        metrics(send("train", site_copy, state, RUN, run_id=2, server_round=r))
    lifetime = [json.loads(line)["lifetime_epsilon"] for line in (state / LEDGER_FILE).read_text().splitlines()]
    assert lifetime == sorted(lifetime) and len(lifetime) == 6
    assert [json.loads(line)["accountant"] for line in (state / LEDGER_FILE).read_text().splitlines()] == \
        ["rdp"] * 3 + ["prv"] * 3


def test_renaming_a_site_does_not_start_a_fresh_budget(site_copy: Path, tmp_path: Path) -> None:
    """site-rename-budget-reset: every key in the ledger counts unless site.yaml says the patients differ."""
    policy = site_copy / "site.yaml"
    policy.write_text(policy.read_text().replace("  dataset_id: synthetic-site-a\n", ""))  # key = the site name
    state = tmp_path / "state"
    lifetime = []
    for run_id, name in ((1, "st-example"), (2, "st-example"), (3, "st-example-icu")):
        reply = send("train", site_copy, state, "rounds=3 train.local_epochs=1 train.batch_size=32",
                     run_id=run_id, node={"site-name": name})
        lifetime.append(metrics(reply)["lifetime-epsilon"])
    assert lifetime[0] < lifetime[1] < lifetime[2]
    check = check_site(site_settings({"data-path": str(site_copy), "state-dir": str(state),
                                      "site-name": "st-example-icu"}, None), load_experiment([]).data)
    assert check.privacy["rounds_recorded"] == 3 and check.privacy["other_keys_counted"] == ["st-example"]
    assert check.privacy["lifetime_epsilon_spent"] >= lifetime[2] - 1e-9
    assert any("other dataset key" in w for w in check.warnings)
    policy.write_text(policy.read_text().replace("privacy:", "privacy:\n  unrelated_datasets: [st-example]"))
    separate = check_site(site_settings({"data-path": str(site_copy), "state-dir": str(state),
                                         "site-name": "st-example-icu"}, None), load_experiment([]).data)
    assert separate.privacy["rounds_recorded"] == 1 and separate.privacy["other_keys_counted"] == []
    assert separate.privacy["lifetime_epsilon_spent"] == pytest.approx(lifetime[2])  # recorded values never go down


def test_a_ledger_swapped_for_another_with_less_spend_is_refused(spent_state: tuple[Path, Path, Path],
                                                                  tmp_path: Path) -> None:
    """Another state folder's ledger (here one with a single spend) put in place of this one is
    consistent with its own marks, but not with what the mark store last saw at this path."""
    site, base, _ = spent_state
    other = tmp_path / "other"
    metrics(send("train", site, other, RUN, run_id=21))
    for name in (LEDGER_FILE, MARK):
        shutil.copy(other / name, base / name)
    reply = send("train", site, base, RUN, run_id=12)
    assert reply.has_error() and reply.error.code == LEDGER_UNREADABLE
    with pytest.raises(LedgerError, match="replaced"):
        Ledger(base / LEDGER_FILE).spends()
