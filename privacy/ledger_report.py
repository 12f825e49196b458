"""`fedclinic privacy report`: what a site's ledger says was spent, per dataset, run and round.

Declines are not spends, so the ledger does not hold them: they come from the site's audit log
(`task` events with a 7xx error_code, client/node/flower_runner.py), which the site runner writes
in a deployment (a simulation writes none). The audit log names Flower's run id and no dataset,
so a decline is placed on each dataset's chart by time, between the spends recorded around it.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from privacy.decline import REASONS
from privacy.ledger import Spend


@dataclass(frozen=True)
class RunSpend:
    """One run on one dataset: its rounds and the ε the run ended at."""

    run_id: str
    rounds: tuple[int, ...]
    run_epsilon: float
    started: str


@dataclass(frozen=True)
class DatasetSpend:
    """A dataset's lifetime account."""

    dataset: str
    lifetime_epsilon: float
    lifetime_delta: float
    cap: float
    remaining: float
    runs: tuple[RunSpend, ...]
    spends: tuple[Spend, ...]


def summarise(spends: list[Spend]) -> list[DatasetSpend]:
    """Group the ledger by dataset; the latest entry holds the lifetime totals and cap."""
    out = []
    for dataset in dict.fromkeys(s.dataset for s in spends):
        mine = [s for s in spends if s.dataset == dataset]
        runs = []
        for run_id in dict.fromkeys(s.run_id for s in mine):
            of_run = [s for s in mine if s.run_id == run_id]
            runs.append(RunSpend(run_id, tuple(s.round for s in of_run), of_run[-1].run_epsilon, of_run[0].recorded_at))
        last = mine[-1]
        out.append(DatasetSpend(dataset, last.lifetime_epsilon, last.lifetime_delta, last.lifetime_cap,
                                max(0.0, last.lifetime_cap - last.lifetime_epsilon), tuple(runs), tuple(mine)))
    return out


def report_json(datasets: list[DatasetSpend], guarantee: str) -> dict[str, Any]:
    return {"guarantee": guarantee, "datasets": [asdict(d) for d in datasets]}


@dataclass(frozen=True)
class Decline:
    """A round the site declined (audit log `task` event with a 7xx code); `run` is Flower's run id."""

    time: str
    run: str
    round: int | None
    phase: str
    code: int


def read_declines(audit_log: Path) -> list[Decline]:
    """The declines in a site's audit.jsonl, oldest first (none if the file does not exist).

    Raises storage.audit_log.AuditLogError (a ValueError naming the line) for an edited log.
    """
    from storage.audit_log import read_events
    out = []
    for e in read_events(audit_log).events:
        code = e.get("error_code")
        if e.get("event") == "task" and isinstance(code, int) and 700 <= code < 800:
            r = e.get("round")
            out.append(Decline(str(e.get("time")), str(e.get("run")), r if isinstance(r, int) else None,
                               str(e.get("phase")), code))
    return out


def _position(d: DatasetSpend, when: str) -> tuple[float, float]:
    """(x, lifetime ε) of a moment on the dataset's chart: between the spends recorded before and after it."""
    at = datetime.fromisoformat(when)
    before = [i for i, s in enumerate(d.spends) if datetime.fromisoformat(s.recorded_at) <= at]
    if not before:
        return 0.5, 0.0
    return before[-1] + 1.5, d.spends[before[-1]].lifetime_epsilon


def _segments(spends: tuple[Spend, ...]) -> list[tuple[str, int, int]]:
    """(run id, index of its first spend, index of its last) of each stretch of consecutive spends of one run."""
    out: list[tuple[str, int, int]] = []
    for i, s in enumerate(spends):
        if out and out[-1][0] == s.run_id:
            out[-1] = (s.run_id, out[-1][1], i)
        else:
            out.append((s.run_id, i, i))
    return out


def plot_png(d: DatasetSpend, declines: list[Decline]) -> bytes:
    """Lifetime ε after each recorded spend (x: spend number, all runs in order) against the cap.

    Runs are separated by dotted vertical lines and named above the chart; training and evaluation
    spends have their own markers; declines (from the audit log) are red crosses labelled with
    their code. Drawn with matplotlib's object API (Agg, no pyplot state). Returns a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    fig = Figure(figsize=(10, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = list(range(1, len(d.spends) + 1))
    ax.plot(xs, [s.lifetime_epsilon for s in d.spends], color="steelblue", lw=1.5, label="lifetime ε")
    for kind, marker, label in (("train", "o", "training round"), ("evaluate", "s", "DP evaluation")):
        pts = [(x, s.lifetime_epsilon) for x, s in zip(xs, d.spends) if s.kind == kind]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=22, color="steelblue", zorder=3, label=label)
    ax.axhline(d.cap, color="red", ls="--", lw=1.2, label=f"lifetime cap ε = {d.cap:g}")
    for i, (run_id, start, end) in enumerate(_segments(d.spends)):
        if i:
            ax.axvline(start + 0.5, color="grey", ls=":", lw=1)
        ax.annotate(f"run {run_id}", ((start + 1 + end) / 2, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 4), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    seen: dict[float, int] = {}
    right = len(xs) + 0.5
    for i, dec in enumerate(declines):
        x, y = _position(d, dec.time)
        k = seen[x] = seen.get(x, -1) + 1
        x += 0.18 * k  # declines between the same two spends side by side, labels alternately below/above
        right = max(right, x + 0.5)
        ax.scatter([x], [y], marker="x", s=60, color="red", zorder=4, label="declined (audit log)" if i == 0 else None)
        ax.annotate(str(dec.code), (x, y), xytext=(0, 8 if k % 2 else -12), textcoords="offset points", ha="center",
                    fontsize=8, color="red")
    ax.set_xlabel("spends recorded (all runs, in order)")
    ax.set_ylabel("lifetime ε")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, max(right, 1.5))
    ax.set_ylim(0, max([d.cap] + [s.lifetime_epsilon for s in d.spends]) * 1.12)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"dataset {d.dataset}", pad=18)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    return out.getvalue()


def _tables(d: DatasetSpend, declines: list[Decline]) -> str:
    e = html.escape
    runs = "".join(f"<tr><td>{e(r.run_id)}</td><td>{e(', '.join(map(str, dict.fromkeys(r.rounds))))}</td>"
                   f"<td>{r.run_epsilon:.3f}</td><td>{e(r.started)}</td></tr>" for r in d.runs)
    out = ("<table><tr><th>run</th><th>rounds</th><th>run ε</th><th>first spend</th></tr>" + runs + "</table>")
    if declines:
        rows = "".join(f"<tr><td>{e(x.time)}</td><td>{e(x.run)}</td><td>{e(str(x.round))}</td><td>{e(x.phase)}</td>"
                       f"<td>{x.code}</td><td>{e(REASONS.get(x.code, ''))}</td></tr>" for x in declines)
        out += ("<p>declines (site audit log; Flower run ids):</p><table><tr><th>time</th><th>Flower run</th>"
                f"<th>round</th><th>phase</th><th>code</th><th>reason</th></tr>{rows}</table>")
    return out


def report_html(datasets: list[DatasetSpend], guarantee: str, declines: list[Decline] | None = None) -> str:
    """A self-contained HTML page: per dataset, a PNG chart of lifetime ε against the cap and its runs."""
    declines = declines or []
    parts = []
    for d in datasets:
        png = base64.b64encode(plot_png(d, declines)).decode()
        parts.append(f"<h2>Dataset {html.escape(d.dataset)}</h2><p>lifetime ε {d.lifetime_epsilon:.3f} of "
                     f"{d.cap:g} at δ {d.lifetime_delta:g}; remaining {d.remaining:.3f}; {len(d.runs)} run(s)</p>"
                     f'<img alt="lifetime ε of dataset {html.escape(d.dataset)} against the cap {d.cap:g}" '
                     f'src="data:image/png;base64,{png}" style="max-width:100%">' + _tables(d, declines))
    style = "body{font-family:sans-serif;max-width:1100px;margin:1rem auto}td,th{border:1px solid #ccc;padding:2px 6px}" \
            "table{border-collapse:collapse;margin:.5rem 0}"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fedclinic privacy report</title>"
            f"<style>{style}</style></head><body><h1>fedclinic privacy report</h1><p>{html.escape(guarantee)}</p>"
            f"{''.join(parts)}</body></html>")
