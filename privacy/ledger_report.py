"""`fedclinic privacy report`: what a site's ledger says was spent, per dataset, run and round."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass
from typing import Any

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


def _svg(d: DatasetSpend, width: int = 640, height: int = 300, pad: int = 40) -> str:
    top = max(d.cap, max(s.lifetime_epsilon for s in d.spends)) * 1.1
    n = len(d.spends)

    def xy(i: int, eps: float) -> tuple[float, float]:
        return (pad + (width - 2 * pad) * (i / max(n - 1, 1)), height - pad - (height - 2 * pad) * eps / top)

    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(i, s.lifetime_epsilon) for i, s in enumerate(d.spends)))
    _, cap_y = xy(0, d.cap)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"><title>run {html.escape(s.run_id)} round {s.round}: '
        f'lifetime ε {s.lifetime_epsilon:.3f}, run ε {s.run_epsilon:.3f}</title></circle>'
        for s, (x, y) in ((s, xy(i, s.lifetime_epsilon)) for i, s in enumerate(d.spends)))
    return (f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="12">'
            f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>'
            f'<line x1="{pad}" y1="{pad / 2}" x2="{pad}" y2="{height - pad}" stroke="black"/>'
            f'<line x1="{pad}" y1="{cap_y:.1f}" x2="{width - pad}" y2="{cap_y:.1f}" stroke="red" '
            f'stroke-dasharray="6 4"/><text x="{width - pad}" y="{cap_y - 4:.1f}" text-anchor="end" fill="red">'
            f'lifetime cap ε = {d.cap:g}</text>'
            f'<polyline points="{points}" fill="none" stroke="steelblue" stroke-width="2"/>{dots}'
            f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">rounds recorded (all runs, in order)</text>'
            f'<text x="12" y="{height / 2}" transform="rotate(-90 12 {height / 2})" text-anchor="middle">'
            f'lifetime ε</text></svg>')


def report_html(datasets: list[DatasetSpend], guarantee: str) -> str:
    """A self-contained HTML page: one chart of lifetime ε against the cap per dataset."""
    parts = [f"<h2>Dataset {html.escape(d.dataset)}</h2><p>lifetime ε {d.lifetime_epsilon:.3f} of "
             f"{d.cap:g} at δ {d.lifetime_delta:g}; remaining {d.remaining:.3f}; {len(d.runs)} run(s)</p>"
             + _svg(d) for d in datasets]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>fedclinic privacy report</title></head>"
            f"<body><h1>fedclinic privacy report</h1><p>{html.escape(guarantee)}</p>{''.join(parts)}</body></html>")
