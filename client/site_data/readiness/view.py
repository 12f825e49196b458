"""A readiness report rendered for a terminal (rich)."""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from client.site_data.findings import Findings
from client.site_data.readiness.check import Readiness

SECTIONS = (
    ("label_problems", "label rows not used"),
    ("manifest_problems", "manifest rows not used"),
    ("quarantined_images", "quarantined image files, by reason"),
    ("lab_rows_dropped", "lab rows not used, by reason"),
    ("lab_values_clipped", "lab values beyond ±5 reference SD, clipped at the model's input"),
    ("unit_conversions", "unit conversions applied (rows)"),
    ("unknown_lab_codes", "unknown lab codes (map them in site.yaml lab_codes, or choose a released "
                          "feature file with lab_features: see docs/site-data.md)"),
    ("note_problems", "notes not used"),
    ("table_problems", "rows and tables that could not be read"),
)


def _counts(counts: Counter[str], limit: int | None) -> Table:
    """One row per reason, most frequent first; under it, where (first `limit`; None: all)."""
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(justify="right")
    table.add_column(overflow="fold")
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if not n:
            continue
        table.add_row(str(n), escape(key))
        if isinstance(counts, Findings) and limit != 0:
            at, more = counts.locations(key, limit)
            if at:
                tail = f" … and {more} more (--all lists every one)" if more else ""
                table.add_row("", f"[dim]{escape(', '.join(at))}{tail}[/dim]")
    return table


def render(r: Readiness, console: Console, limit: int | None = 5) -> None:
    """Verdict first, then coverage and every group of problems that is not empty, each reason
    with the first `limit` files or rows behind it (None: every one; 0: counts only)."""
    verdict = "[green]READY to train[/green]" if r.can_train else f"[red]CANNOT TRAIN[/red]: {r.reason}"
    console.print(f"site {r.site}: {verdict}", soft_wrap=True)
    rep = r.report
    if rep is None:
        return
    console.print(f"patients with a label: {rep.patients} ({rep.positives} positive, "
                  f"{rep.patients - rep.positives} negative); usable: {rep.usable_patients}; "
                  f"train/validation: {r.train_patients}/{r.validation_patients}")
    console.print("coverage: " + ", ".join(f"{k} {v}/{rep.patients}" for k, v in rep.coverage.items()))
    console.print("files: " + ", ".join(f"{k}: {v or 'absent'}" for k, v in rep.tables.items()))
    if r.privacy:
        p = r.privacy
        console.print(f"privacy: dataset {p['dataset']} ({p['policy']} policy, {p['accountant']} accountant): "
                      f"lifetime ε {p['lifetime_epsilon_spent']:.3f} spent of {p['lifetime_epsilon_cap']:g}, "
                      f"remaining {p['remaining']:.3f} over {p['rounds_recorded']} recorded releases; "
                      f"validation metrics released {'with DP' if p['validation_release'] == 'dp' else 'EXACT'}",
                      soft_wrap=True)
    for attr, title in SECTIONS:
        counts = getattr(rep, attr)
        if counts:
            console.print(f"[bold]{title}[/bold]", soft_wrap=True)
            console.print(_counts(counts, limit))
    for warning in r.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
