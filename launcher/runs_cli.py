"""`fedclinic runs [ROOT]` and `fedclinic report RUN_DIR`: the run list and the run report."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

COMMANDS = ("runs", "report")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `runs` and `report` under the main parser."""
    runs = sub.add_parser("runs", help="list runs with their status, rounds and final AUROC")
    runs.add_argument("root", type=Path, nargs="?", default=Path("runs"),
                      help="the folder holding run folders (output.root; default: runs)")
    report = sub.add_parser("report", help="rebuild a run's report.html and TensorBoard events/ from its summary")
    report.add_argument("run_dir", type=Path, help="a run folder, runs/<run-id>")


def run(args: argparse.Namespace, console: Console) -> int:
    """Run `runs` or `report`; exit 2 with a message naming the folder when it is not what it should be."""
    return _runs(args.root, console) if args.command == "runs" else _report(args.run_dir, console)


def _runs(root: Path, console: Console) -> int:
    from server.report.run_data import MISSING
    from server.report.runs_list import list_runs
    try:
        rows = list_runs(root)
    except NotADirectoryError as exc:
        console.print(f"[red]fedclinic runs: {escape(str(exc))}[/red]", soft_wrap=True, highlight=False)
        return 2
    if not rows:
        console.print(f"no run folders under {escape(str(root))}", soft_wrap=True, highlight=False)
        return 0
    table = Table(title=f"runs under {escape(str(root))}")
    for name, justify in (("run", "left"), ("started (UTC)", "left"), ("status", "left"), ("rounds", "right"),
                          ("final AUROC", "right"), ("strategy", "left")):
        table.add_column(name, justify=justify, overflow="fold",  # type: ignore[arg-type]
                         no_wrap=name in ("run", "status"))
    for r in rows:
        rounds = f"{r.rounds_completed if r.rounds_completed is not None else MISSING}/" \
                 f"{r.rounds_planned if r.rounds_planned is not None else MISSING}"
        table.add_row(escape(r.run_id), r.started.strftime("%Y-%m-%d %H:%M:%S") if r.started else MISSING,
                      escape(r.status or MISSING), rounds,
                      f"{r.final_auroc:.3f}" if r.final_auroc is not None else MISSING, escape(r.strategy or MISSING))
    console.print(table)
    return 0


def _report(run_dir: Path, console: Console) -> int:
    from server.report.events import write_events
    from server.report.page import write_report
    from server.report.run_data import NotARunFolder, load_run
    try:
        run = load_run(run_dir)
    except NotARunFolder as exc:
        console.print(f"[red]fedclinic report: {escape(str(exc))}[/red]", soft_wrap=True, highlight=False)
        return 2
    path = write_report(run.folder)
    events = write_events(run.folder, run.summary)
    console.print(f"report: {path.resolve()}\nTensorBoard events: {events.resolve()}", soft_wrap=True,
                  highlight=False)
    return 0
