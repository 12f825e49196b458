"""A readiness report rendered for a terminal (rich)."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.table import Table

from client.site_data.readiness.check import Readiness

SECTIONS = (
    ("label_problems", "label rows not used"),
    ("manifest_problems", "manifest rows not used"),
    ("quarantined_images", "quarantined image files, by reason"),
    ("lab_rows_dropped", "lab rows dropped, by reason"),
    ("unit_conversions", "unit conversions applied (rows)"),
    ("unknown_lab_codes", "unknown lab codes (register site codes in site.yaml lab_codes)"),
    ("note_problems", "notes not used"),
    ("table_problems", "table files with problems"),
)


def _counts(counts: Mapping[str, int]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(justify="right")
    table.add_column()
    for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(str(n), key)
    return table


def render(r: Readiness, console: Console) -> None:
    """Verdict first, then coverage and every group of problems that is not empty."""
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
            console.print(_counts(counts))
    for warning in r.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", soft_wrap=True)
