"""`fedclinic privacy plan | report`: the privacy officer's console."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from configs.schema import ValidationSplit


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `privacy plan` and `privacy report` under the main parser."""
    privacy = sub.add_parser("privacy", help="privacy officer console").add_subparsers(
        dest="privacy_command", required=True)
    plan = privacy.add_parser("plan", help="noise for a target ε, or ε for a noise multiplier, per round")
    plan.add_argument("--dataset-size", type=int, required=True, help="training records at the site")
    plan.add_argument("--batch-size", type=int, default=128, help="expected Poisson batch size")
    plan.add_argument("--local-epochs", type=int, default=2)
    plan.add_argument("--rounds", type=int, default=5)
    plan.add_argument("--delta", type=float, default=1e-5)
    plan.add_argument("--accountant", choices=("prv", "rdp"), default="prv")
    goal = plan.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-epsilon", type=float)
    goal.add_argument("--sigma", type=float, help="noise multiplier")
    plan.add_argument("--evaluation-sigma", type=float, default=ValidationSplit().noise_multiplier,
                      help="the site's validation.noise_multiplier: one DP evaluation per round is planned "
                           "with it (default %(default)g, the site default)")
    plan.add_argument("--no-evaluation", action="store_true",
                      help="plan training only (a site with validation.release: exact, or no evaluation)")
    plan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report = privacy.add_parser("report", help="what a site's privacy ledger says was spent")
    report.add_argument("ledger", type=Path, help="the site's privacy-ledger.jsonl")
    report.add_argument("--plot", type=Path, help="write an HTML page charting lifetime ε over the recorded spends "
                        "against the cap, with run boundaries and declines")
    report.add_argument("--audit-log", type=Path, help="the site's audit.jsonl, where declines are recorded (the "
                        "ledger holds spends only; default: audit.jsonl beside the ledger, if there)")
    report.add_argument("--json", action="store_true", help="print JSON instead of tables")
    report.add_argument("--mark-dir", type=Path, help="the site's ledger high-water mark store "
                        "(default: FEDCLINIC_LEDGER_MARK_DIR, else ~/.local/state/fedclinic/ledger-marks)")
    adopt = privacy.add_parser("adopt", help="record a ledger as it is now as its high-water mark (after moving "
                               "a site, or for a ledger written before marks existed)")
    adopt.add_argument("ledger", type=Path, help="the site's privacy-ledger.jsonl")
    adopt.add_argument("--mark-dir", type=Path, help="the site's ledger high-water mark store (as for report)")


def run(args: argparse.Namespace, console: Console) -> int:
    if args.privacy_command == "adopt":
        return _adopt(args, console)
    return _plan(args, console) if args.privacy_command == "plan" else _report(args, console)


def _adopt(args: argparse.Namespace, console: Console) -> int:
    """A privacy officer's deliberate decision: the ledger as it is now becomes its high-water mark."""
    from privacy.ledger import Ledger
    if not args.ledger.is_file():
        raise ValueError(f"{args.ledger}: no such ledger (a site keeps it in its state folder)")
    ledger = Ledger(args.ledger, args.mark_dir)
    adopted = ledger.adopt()
    console.print(f"adopted {adopted} recorded spend{'' if adopted == 1 else 's'} of {args.ledger} as its "
                  f"high-water mark in {ledger.marks.folder}; the site will refuse any shorter or different ledger "
                  "from now on",
                  soft_wrap=True, highlight=False)
    return 0


def _plan(args: argparse.Namespace, console: Console) -> int:
    from privacy.guarantee import GUARANTEE
    from privacy.plan_table import make_plan, plan_json
    p = make_plan(dataset_size=args.dataset_size, batch_size=args.batch_size, local_epochs=args.local_epochs,
                  rounds=args.rounds, delta=args.delta, accountant=args.accountant,
                  target_epsilon=args.target_epsilon, sigma=args.sigma,
                  evaluation_sigma=None if args.no_evaluation else args.evaluation_sigma)
    if args.json:
        print(json.dumps({**plan_json(p), "guarantee": GUARANTEE}, indent=2))
        return 0
    console.print(f"noise multiplier σ = {p.noise_multiplier:.4f}; sample rate q = {p.sample_rate:.5f} "
                  f"(1/{round(1 / p.sample_rate)}); {p.steps_per_round} steps per round; δ = {p.delta:g}; "
                  f"accountant {p.accountant}", soft_wrap=True)
    console.print("ε covers training and one DP evaluation per round (validation σ "
                  f"{p.evaluation_noise_multiplier:g})" if p.evaluation_noise_multiplier is not None
                  else "ε covers training only (--no-evaluation)", soft_wrap=True)
    table = Table(title="ε after each round")
    for name in ("round", "steps", "ε"):
        table.add_column(name, justify="right")
    for r in p.rounds:
        table.add_row(str(r.round), str(r.steps), f"{r.epsilon:.3f}")
    console.print(table)
    console.print(f"guarantee: {GUARANTEE}", soft_wrap=True)
    return 0


def _report(args: argparse.Namespace, console: Console) -> int:
    from privacy.guarantee import GUARANTEE
    from privacy.ledger import Ledger
    from privacy.ledger_report import read_declines, report_html, report_json, summarise
    if not args.ledger.is_file():
        raise ValueError(f"{args.ledger}: no such ledger (a site keeps it in its state folder)")
    datasets = summarise(Ledger(args.ledger, args.mark_dir).spends())
    if args.json:
        print(json.dumps(report_json(datasets, GUARANTEE), indent=2))
    for d in [] if args.json else datasets:
        console.print(f"[bold]dataset {d.dataset}[/bold]: lifetime ε {d.lifetime_epsilon:.3f} of {d.cap:g} "
                      f"(δ {d.lifetime_delta:g}), remaining {d.remaining:.3f}", soft_wrap=True)
        table = Table()
        for name in ("run", "round", "release", "σ", "q", "steps", "run ε", "lifetime ε", "recorded"):
            table.add_column(name, justify="right", overflow="fold")  # never hide audit data
        for s in d.spends:
            table.add_row(s.run_id, str(s.round), s.kind, f"{s.noise_multiplier:.3f}", f"{s.sample_rate:.4f}",
                          str(s.steps), f"{s.run_epsilon:.3f}", f"{s.lifetime_epsilon:.3f}", s.recorded_at)
        console.print(table)
    if args.plot:
        audit = args.audit_log or args.ledger.parent / "audit.jsonl"
        if args.audit_log and not audit.is_file():
            raise ValueError(f"--audit-log {audit}: no such file (a site keeps audit.jsonl in its state folder)")
        declines = read_declines(audit)
        args.plot.write_text(report_html(datasets, GUARANTEE, declines), encoding="utf-8")
        console.print(f"plot written to {args.plot.resolve()} ({len(declines)} declines from "
                      f"{audit if audit.is_file() else 'no audit log'})", soft_wrap=True, highlight=False)
    if not args.json:
        console.print(f"guarantee: {GUARANTEE}", soft_wrap=True)
    return 0
