"""runs/<id>/report.html: one self-contained page (inline CSS, PNG charts as data: URIs, no scripts)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from server.report import plots
from server.report.run_data import MISSING, REPORT, RunData, as_dict, fmt, load_run, started_at
from server.report.tables import esc, metrics_table, participation_grid, rounds_table, sites_table, table

STATUS_WORDS = {
    "completed": "Completed",
    "failed": "Failed",
    "interrupted": "Interrupted (resume it with `fedclinic run resume=RUN_DIR`)",
    "budget_exhausted": "Stopped: a site's privacy budget is exhausted",
    "running": "Running (this report is rebuilt after each round)",
}
VERSION_KEYS = ("fedclinic", "flwr", "torch", "opacus", "python", "git_commit")
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1200px;
 color:#1b1b1b;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
.status{padding:.7rem 1rem;border-radius:6px;font-size:1.1rem;margin:1rem 0}
.st-completed{background:#e6f4ea;border-left:6px solid #1e8e3e}
.st-running{background:#e8f0fe;border-left:6px solid #1a73e8}
.st-failed,.st-budget_exhausted{background:#fce8e6;border-left:6px solid #d93025}
.st-interrupted,.st-unknown{background:#fef7e0;border-left:6px solid #f9ab00}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.2rem 1.2rem;margin:0}
dl.facts dt{font-weight:600}dl.facts dd{margin:0}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #d0d0d0;padding:.3rem .5rem;vertical-align:top;text-align:left}
thead th{background:#f2f2f2}
table.numbers td{font-variant-numeric:tabular-nums}td.n,table.grid th{white-space:nowrap}
table.grid td{min-width:9rem}table.grid td div{padding:.1rem .3rem;margin:.1rem 0;border-radius:3px}
.p-ok{background:#d7f0dd}.p-bad{background:#f9d3cf;font-weight:600}.p-idle{background:#eeeeee;color:#555}
img.plot{max-width:100%;height:auto;display:block;margin:.5rem 0}
pre{background:#f6f8fa;border:1px solid #ddd;padding:.8rem;overflow:auto;font-size:.8rem}
.note{color:#555;font-size:.85rem}ul.reasons{font-size:.85rem;color:#333}
footer{margin-top:3rem;color:#777;font-size:.8rem}
"""


def write_report(run_dir: Path) -> Path:
    """Read run_dir/summary.json (+ config.yaml) and write run_dir/report.html atomically (0644).

    Returns the report's path. Raises run_data.NotARunFolder (a ValueError naming the folder) when
    run_dir holds no readable summary.json. Keys missing from an older summary show as '-'.
    """
    from storage.atomic import write_atomic
    run = load_run(Path(run_dir))
    path = run.folder / REPORT
    write_atomic(path, render(run).encode("utf-8"), mode=0o644)
    return path


def render(run: RunData) -> str:
    """The whole page as a string."""
    s = run.summary
    title = f"fedclinic run {fmt(s.get('run_id') or run.folder.name)}"
    body = "".join((
        f"<h1>{esc(title)}</h1>", _status(s), _facts(run),
        "<h2>Model quality per round</h2>", _img(plots.model_plot(run.rounds), "AUROC and loss per round"),
        rounds_table(run), _metrics(run),
        "<h2>Privacy</h2>", _img(plots.epsilon_plot(run.rounds, run.sites, run.site_names()),
                                 "run epsilon per site per round against each site's cap"),
        f"<p>{esc(fmt(s.get('privacy_guarantee')))}</p>", sites_table(run),
        "<h2>Participation</h2><p class='note'>what each site did in each round: training, then evaluation "
        "(green: done; red: declined, failed, timed out or left out; grey: not asked)</p>", participation_grid(run),
        "<h2>Configuration (config.yaml, resolved)</h2>",
        f"<pre>{esc(run.config_text) if run.config_text is not None else MISSING + ' (no config.yaml)'}</pre>",
        "<h2>Versions</h2>", table(("package", "version"), [(k, as_dict(s.get("versions")).get(k))
                                                          for k in VERSION_KEYS]),
        f"<footer>written {esc(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC'))} from "
        f"{esc(run.folder.name)}/summary.json (schema {esc(fmt(s.get('schema', 1)))}); rebuild it with "
        "<code>fedclinic report RUN_DIR</code> on this folder</footer>",
    ))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def _status(s: dict[str, Any]) -> str:
    status = s.get("status")
    words = STATUS_WORDS.get(str(status), str(status)) if status else "Status not recorded (older summary)"
    css = f"st-{status}" if status in STATUS_WORDS else "st-unknown"
    reason = f": {esc(s['reason'])}" if s.get("reason") else ""
    return f'<div class="status {css}"><strong>{esc(words)}</strong>{reason}</div>'


def _facts(run: RunData) -> str:
    s = run.summary
    run_id = str(s.get("run_id") or run.folder.name)
    ids = run.flower_run_ids()
    started = started_at(run_id)
    facts = [
        ("run id", run_id),
        ("Flower run ids", ", ".join(ids) + (f" (started {len(ids)} times: resumed)" if len(ids) > 1 else "")),
        ("started", started.strftime("%Y-%m-%d %H:%M:%S UTC") if started else None),
        ("strategy", s.get("strategy")),
        ("rounds", f"{fmt(s.get('last_completed_round'))} completed of {fmt(s.get('rounds_planned'))} planned; "
                   f"model from round {fmt(s.get('last_aggregated_round'))}"),
        ("final AUROC", s.get("final_auroc")),
        ("best AUROC", f"{fmt(s.get('best_auroc'))} in round {fmt(s.get('best_round'))}"),
        ("privacy target", f"ε {fmt(s.get('target_epsilon'), 2)}, δ {fmt(s.get('target_delta'))}"),
        ("accountant", s.get("accountant")),
        ("checkpoints", f"{fmt(s.get('checkpoint'))} (last aggregated), {fmt(s.get('best_checkpoint'))} (best)"),
    ]
    return "<dl class='facts'>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(fmt(v))}</dd>" for k, v in facts) + "</dl>"


def _metrics(run: RunData) -> str:
    evaluated = [r for r in run.rounds if as_dict(r.get("metrics"))]
    if not evaluated:
        return "<h3>Clinical metrics</h3><p>- (no per-site metrics in this summary)</p>"
    last = evaluated[-1]
    parts = [f"<h3>Clinical metrics, last evaluated round ({esc(fmt(last.get('round')))})</h3>", metrics_table(last)]
    best = next((r for r in evaluated if r.get("round") == run.summary.get("best_round")), None)
    if best is not None and best is not last:
        parts += [f"<h3>Clinical metrics, best round ({esc(fmt(best.get('round')))})</h3>", metrics_table(best)]
    return "".join(parts)


def _img(png: bytes, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
