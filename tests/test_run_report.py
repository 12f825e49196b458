"""runs/<id>/report.html, runs/<id>/events/, `fedclinic runs` and `fedclinic report`, from fixture run folders."""

from __future__ import annotations

import base64
import re
import shutil
import struct
from pathlib import Path

import pytest

from launcher.cli import main
from server.report.events import write_events
from server.report.page import write_report
from server.report.run_data import load_run
from server.report.runs_list import list_runs

FIXTURES = Path(__file__).parent / "fixtures"
RUN_ID, OLD_RUN_ID = "20261130-153000-ab12", "20261130-083240-8c25"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A runs/ root with the schema-2 fixture run and a schema-1 run from an older fedclinic."""
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES / "run_summary_v2", root / RUN_ID)
    shutil.copytree(FIXTURES / "run_summary_v1", root / OLD_RUN_ID)
    return root


def pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_holds_every_section_with_real_charts_and_nothing_external(runs: Path) -> None:
    path = write_report(runs / RUN_ID)
    assert path == runs / RUN_ID / "report.html" and path.stat().st_mode & 0o777 == 0o644
    page = path.read_text(encoding="utf-8")
    assert "Completed</strong>: all 4 rounds ran; round 3 did not aggregate" in page
    assert "8123417769, 991022315 (started 2 times: resumed)" in page
    for heading in ("Model quality per round", "Clinical metrics, last evaluated round (4)",
                    "Clinical metrics, best round (2)", "Privacy", "Participation",
                    "Configuration (config.yaml, resolved)", "Versions"):
        assert f">{heading}</h" in page, heading
    charts = pngs(page)
    assert len(charts) == 2  # AUROC/loss per round, ε per site per round
    for png in charts:
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
        assert png.startswith(PNG_SIGNATURE) and width > 800 and height > 300 and len(png) > 20_000
    # the participation grid says each outcome in words, not by colour alone
    assert "train: timed out" in page and "eval: declined (705)" in page and "train: failed (601)" in page
    assert "round 2, site-c, train: no reply within strategy.round_timeout" in page
    # suppressed cells, the sites' caps, the resolved config and versions
    assert "positives below evaluation.min_cell (10)" in page and "update norm 41.2" in page
    assert "min_sites: 2" in page and ">1.41.0</td>" in page and "ffeffec0d1a2b3c4" in page
    assert "<script" not in page and not re.search(r"(src|href)=[\"']?(https?:|//)", page)
    assert "url(" not in page and "@import" not in page


def test_every_string_from_the_summary_is_escaped(runs: Path) -> None:
    hostile = '<script>alert("x")</script>'
    summary = runs / RUN_ID / "summary.json"
    summary.write_text(summary.read_text().replace("site-a", hostile.replace('"', '\\"')))
    page = write_report(runs / RUN_ID).read_text()
    assert "<script" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page


def test_an_older_summary_shows_dashes_rather_than_failing(runs: Path) -> None:
    page = write_report(runs / OLD_RUN_ID).read_text()
    assert "Status not recorded (older summary)" in page and "this summary has no participation record" in page
    assert len(pngs(page)) == 2 and ">Versions</h2>" in page
    (tmp_round := runs / OLD_RUN_ID / "summary.json").write_text('{"rounds": [{"round": "x"}, 3], "sites": []}')
    assert "Status not recorded" in write_report(tmp_round.parent).read_text()


def test_runs_lists_each_run_with_status_rounds_and_final_auroc(runs: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (runs / "20261201-090000-dead").mkdir()
    (runs / "20261201-090000-dead" / "config.yaml").write_text("rounds: 2\n")  # stopped before its first round
    (runs / "notes").mkdir()  # not a run folder: left out
    rows = {r.run_id: r for r in list_runs(runs)}
    assert list(rows) == [OLD_RUN_ID, RUN_ID, "20261201-090000-dead"]
    new, old, dead = rows[RUN_ID], rows[OLD_RUN_ID], rows["20261201-090000-dead"]
    assert (new.status, new.rounds_completed, new.rounds_planned, new.final_auroc, new.strategy) == (
        "completed", 4, 4, 0.774, "fedavg")
    assert new.started is not None and new.started.isoformat() == "2026-11-30T15:30:00+00:00"
    assert (old.status, old.rounds_completed, old.rounds_planned) == (None, 5, None)
    assert dead.status == "no summary"
    monkeypatch.setenv("COLUMNS", "160")
    assert main(["runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{RUN_ID} .* completed .* 4/4 .* 0\.774 .* fedavg", out)
    assert re.search(rf"{OLD_RUN_ID} .* - .* 5/- .* 0\.857", out)


def test_report_and_runs_refuse_a_folder_that_is_not_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a run folder (no summary.json" in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().out


def read_scalars(events: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in an events folder (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event
    out = []
    for file in sorted(events.iterdir()):
        data, at = file.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            out += [(v.tag, event.step, round(v.simple_value, 6)) for v in event.summary.value]
    return out


def test_report_command_rebuilds_report_and_events_without_duplicating_points(
        runs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    run_dir = runs / RUN_ID
    assert main(["report", str(run_dir)]) == 0
    assert str(run_dir / "report.html") in capsys.readouterr().out and (run_dir / "report.html").is_file()
    first = read_scalars(run_dir / "events")
    assert ("pooled/auroc", 4, 0.774) in first and ("pooled/ece", 1, 0.062) in first
    assert ("epsilon/site-a", 3, 3.81) in first and ("sites/sites_trained", 3, 1.0) in first
    assert not any(tag == "pooled/auroc" and step == 3 for tag, step, _ in first)  # round 3 did not aggregate
    assert len(first) == len(set(first))
    write_events(run_dir, load_run(run_dir).summary)  # as the coordinator does after each round
    assert main(["report", str(run_dir)]) == 0
    assert len(list((run_dir / "events").iterdir())) == 1 and sorted(read_scalars(run_dir / "events")) == sorted(first)
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".events")]  # no leftovers of the swap
