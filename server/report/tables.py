"""HTML tables of the report. Every value from the summary passes through html.escape here."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from server.report.run_data import MISSING, RunData, as_dict, fmt

METRIC_COLUMNS = (("patients", "patients"), ("positives", "positives"), ("negatives", "negatives"),
                  ("auroc", "AUROC"), ("auprc", "AUPRC"), ("brier", "Brier"), ("ece", "ECE"),
                  ("sensitivity", "sensitivity"), ("specificity", "specificity"))
PHASES = (("train", "train"), ("evaluate", "eval"))
GOOD = {"trained", "evaluated"}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], css: str = "") -> str:
    """A plain table; every header and cell is formatted (run_data.fmt) and escaped."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(fmt(c)) for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(css)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell(text: str) -> str:
    """A cell; short values (numbers, site names) never wrap."""
    return f'<td class="n">{esc(text)}</td>' if len(text) <= 14 else f"<td>{esc(text)}</td>"


def seconds(value: object) -> str:
    return fmt(value, 1)


def rounds_table(run: RunData) -> str:
    headers = ("round", "aggregated", "AUROC", "AUROC std", "loss", "max ε", "sites trained", "declined",
               "failures", "wall s", "slowest compute s", "not aggregated because")
    rows = [(r.get("round"), r.get("aggregated"), r.get("auroc"), r.get("auroc_std"), r.get("loss"),
             r.get("max_epsilon"), r.get("sites_trained"), r.get("sites_declined"), r.get("site_failures"),
             seconds(r.get("wall_s")), seconds(r.get("slowest_compute_s")), r.get("skipped")) for r in run.rounds]
    return table(headers, rows, "numbers")


def sites_table(run: RunData) -> str:
    headers = ("site", "training records", "run ε", "δ", "lifetime ε", "cap ε (site's)", "AUROC",
               "validation metrics", "declined rounds", "decline reason", "updates left out")
    rows = []
    for name in run.site_names():
        s = as_dict(run.sites.get(name))
        rejected = [f"round {fmt(as_dict(x).get('round'))}: {fmt(as_dict(x).get('reason'))}"
                    for x in s.get("rejected_updates") or [] if isinstance(x, dict)]
        rows.append((name, s.get("num_train"), s.get("epsilon"), s.get("delta"), s.get("lifetime_epsilon"),
                     s.get("epsilon_cap"), s.get("auroc"), s.get("validation_metrics"), s.get("declined_rounds"),
                     s.get("decline_reason"), "; ".join(rejected) or None))
    return table(headers, rows, "numbers")


def metrics_table(round_entry: dict[str, Any]) -> str:
    """Clinical metrics M of one round: the pooled row first, then each site; suppressed values '-'."""
    metrics = as_dict(round_entry.get("metrics"))
    rows = []
    for who, m in [("pooled", metrics.get("pooled"))] + sorted(as_dict(metrics.get("sites")).items()):
        m = as_dict(m)
        suppressed = m.get("suppressed")
        rows.append([who] + [m.get(key) for key, _ in METRIC_COLUMNS]
                    + ["; ".join(map(str, suppressed)) if isinstance(suppressed, list) and suppressed else None])
    threshold = next((as_dict(m).get("threshold") for m in [metrics.get("pooled")] if as_dict(m)), None)
    note = (f"<p class='note'>sensitivity and specificity at threshold {esc(fmt(threshold))}; '-' marks a value "
            "not reported (suppressed below evaluation.min_cell, or not computed)</p>")
    return table(["", *(label for _, label in METRIC_COLUMNS), "suppressed"], rows, "numbers") + note


def participation_grid(run: RunData) -> str:
    """Sites x rounds; each cell says what the site did in training and evaluation (text, plus a colour)."""
    grid = as_dict(run.summary.get("participation"))
    if not grid:
        return f"<p>{MISSING} (this summary has no participation record)</p>"
    rounds = sorted(grid, key=lambda k: (not str(k).isdigit(), int(k) if str(k).isdigit() else 0, str(k)))
    head = "<th>site</th>" + "".join(f"<th>round {esc(r)}</th>" for r in rounds)
    body, reasons = [], []  # reasons: (round, site, html)
    for site in run.site_names():
        cells = []
        for r in rounds:
            phases = as_dict(as_dict(grid[r]).get(site))
            lines = []
            for key, label in PHASES:
                o = as_dict(phases.get(key))
                status = str(o.get("status") or MISSING)
                code = f" ({esc(o['code'])})" if o.get("code") is not None else ""
                css = "ok" if status in GOOD else "idle" if status in ("not_sampled", MISSING) else "bad"
                lines.append(f'<div class="p-{css} s-{esc(status)}">{label}: {esc(status.replace("_", " "))}{code}'
                             "</div>")
                if o.get("reason"):
                    reasons.append((rounds.index(r), site, f"<li>round {esc(r)}, {esc(site)}, {label}: "
                                                           f"{esc(o['reason'])}</li>"))
            cells.append(f"<td>{''.join(lines)}</td>")
        body.append(f"<tr><th>{esc(site)}</th>{''.join(cells)}</tr>")
    notes = f"<ul class='reasons'>{''.join(x[2] for x in sorted(reasons))}</ul>" if reasons else ""
    return (f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>{notes}')
