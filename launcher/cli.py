"""`fedclinic synth | run | demo`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from launcher import runs_cli

DEMO_PATIENTS = 2000  # per site: enough for DP-SGD at epsilon 8 to learn the synthetic task


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedclinic", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fedclinic {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="write synthetic hospital site folders")
    synth.add_argument("--sites", type=int, default=3)
    synth.add_argument("--patients", type=int, default=DEMO_PATIENTS, help="patients per site")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument("--out", type=Path, required=True, help="folder that receives one folder per site")
    synth.add_argument("--messy", action="store_true",
                       help="export like a real hospital: DICOM variants, broken files, mixed units, ...")
    synth.add_argument("--only", nargs="*", default=[], metavar="SITE=MODS",
                       help="restrict a whole site's modalities, e.g. site-b=labs site-c=image+notes")
    from configs.describe import CONFIG_EPILOG, ConfigHelpFormatter
    run = sub.add_parser("run", help="run a federated experiment in Flower's simulation engine, or (--federation) "
                         "submit it to a coordinator's sites",
                         epilog=CONFIG_EPILOG, formatter_class=ConfigHelpFormatter)
    run.add_argument("--federation", type=Path, metavar="DIR", help="a coordinator folder: submit the installed "
                     "release to its SuperLink with `flwr run` (docs/deployment.md)")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.root=DIR rounds=5 strategy=fedadam; "
                     "resume=RUN_DIR continues a stopped run from its last completed round")
    site = sub.add_parser("site", help="site IT tools").add_subparsers(dest="site_command", required=True)
    check = site.add_parser("check", help="validate a site folder without training; print and save a report")
    check.add_argument("folder", type=Path, help="the site folder (labels, manifest, labs, notes)")
    check.add_argument("--json", type=Path,
                       help="also write the report for site IT as JSON, with file names and row numbers")
    check.add_argument("--share", type=Path, help="where to write the shareable report, counts only "
                       "(default: <state folder>/readiness.json)")
    check.add_argument("--limit", type=int, default=5, help="files or rows listed per reason (default 5)")
    check.add_argument("--all", action="store_true", help="list every file and row behind each reason")
    check.add_argument("--state-dir", type=Path, help="the site's state folder (default: beside the data)")
    check.add_argument("--site-config", type=Path, help="site.yaml (default: <folder>/site.yaml)")
    check.add_argument("overrides", nargs="*", help="Hydra overrides of the data settings")
    from launcher.site.cli import add_parsers as add_site_parsers
    add_site_parsers(site)
    from launcher.privacy_cli import add_parsers as add_privacy_parsers
    add_privacy_parsers(sub)
    from launcher.coordinator.cli import add_parsers as add_coordinator_parsers
    add_coordinator_parsers(sub)
    runs_cli.add_parsers(sub)
    demo = sub.add_parser("demo", help="synthesise three hospitals and run the default experiment",
                          epilog=CONFIG_EPILOG, formatter_class=ConfigHelpFormatter)
    demo.add_argument("--work", type=Path, default=Path("fedclinic-demo"), help="where the sites go")
    demo.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fedclinic")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fedclinic` console command."""
    args = _parser().parse_args(argv)
    console = Console()
    from configs.parse import ConfigError
    from client.site_data.errors import SiteDataError
    from privacy.ledger import LedgerError
    try:
        if args.command == "synth":
            return _synth(args, console)
        if args.command == "run" and args.federation:
            from launcher.coordinator.submit import run_federation
            return run_federation(args.federation, list(args.overrides), console)
        if args.command == "run":
            return _run(list(args.overrides), console)
        if args.command == "site" and args.site_command != "check":
            from launcher.site.cli import run as site_command
            return site_command(args, console)
        if args.command in ("coordinator", "certs"):
            from launcher.coordinator.cli import run as coordinator_command
            return coordinator_command(args, console)
        if args.command == "site":
            return _site_check(args, console)
        if args.command in runs_cli.COMMANDS:
            return runs_cli.run(args, console)
        if args.command == "privacy":
            from launcher.privacy_cli import run as privacy_command
            return privacy_command(args, console)
        return _demo(args, console)
    except (ConfigError, SiteDataError, LedgerError, ValueError, FileExistsError) as exc:
        console.print(f"[red]fedclinic {args.command}: {escape(str(exc))}[/red]", soft_wrap=True, highlight=False)
        return 2


def _synth(args: argparse.Namespace, console: Console) -> int:
    from synth.hospitals import write_hospitals
    started = time.perf_counter()
    folders = write_hospitals(args.out, sites=args.sites, patients=args.patients, seed=args.seed,
                              image_size=args.image_size, messy=args.messy,
                              modalities=_site_modalities(args.only) or None)
    console.print(f"wrote {len(folders)} site folder{'s' if len(folders) != 1 else ''} under {args.out.resolve()} "
                  f"in {time.perf_counter() - started:.1f} s: {', '.join(f.name for f in folders)}")
    return 0


def _site_modalities(specs: list[str]) -> dict[int, set[str]]:
    """['site-b=labs', 'site-c=image+notes'] -> {1: {'labs'}, 2: {'image', 'notes'}}."""
    out = {}
    for spec in specs:
        name, _, mods = spec.partition("=")
        if not (name.startswith("site-") and len(name) == 6 and name[5].isalpha() and mods):
            raise ValueError(f"--only {spec!r}: expected site-X=MODALITY[+MODALITY] (image, labs, notes)")
        chosen = set(mods.split("+"))
        if not chosen <= {"image", "labs", "notes"}:
            raise ValueError(f"--only {spec!r}: modalities are image, labs and notes")
        out[ord(name[5].lower()) - ord("a")] = chosen
    return out


def _site_check(args: argparse.Namespace, console: Console) -> int:
    from client.site_data.readiness.check import as_json, check_site, site_it_json
    from client.site_data.readiness.view import render
    from client.site import site_settings
    from configs.load import load_experiment
    from storage.atomic import write_json
    node = {"data-path": str(args.folder)}
    node |= {"state-dir": str(args.state_dir)} if args.state_dir else {}
    node |= {"site-config": str(args.site_config)} if args.site_config else {}
    site = site_settings(node, None)
    overrides = list(args.overrides)
    chosen = _released_lab_features(site.site_file)
    if chosen and not any(o.split("=", 1)[0] == "data" for o in overrides):
        overrides.insert(0, f"data={chosen}")  # the runs this site joins select its feature file
        console.print(f"site.yaml lab_features: checking the configuration data={chosen}", highlight=False)
    cfg = load_experiment(overrides)
    verdict = check_site(site, cfg.data, cfg)
    limit = None if args.all else max(0, args.limit)
    render(verdict, console, limit)
    share = args.share or site.state_dir / "readiness.json"
    share.parent.mkdir(parents=True, exist_ok=True)
    write_json(share, as_json(verdict))
    console.print(f"shareable report (counts only, for the central team): {share.resolve()}", soft_wrap=True,
                  highlight=False)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, site_it_json(verdict, limit))
        console.print(f"report for site IT (file names and row numbers; keep it at the site): "
                      f"{args.json.resolve()}", soft_wrap=True, highlight=False)
    return 0 if verdict.can_train else 1


def _released_lab_features(site_file: Path) -> str | None:
    """site.yaml's `lab_features` when it names a released configs/data file (anything else is
    left for the site check to refuse, with the field named)."""
    import yaml

    from configs.load import CONFIG_DIR
    try:
        raw = yaml.safe_load(site_file.read_text(encoding="utf-8")) if site_file.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = raw.get("lab_features") if isinstance(raw, dict) else None
    if isinstance(name, str) and name in {p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")}:
        return name
    return None


def _run(overrides: list[str], console: Console) -> int:
    from launcher.run_command import run
    return run(overrides, console)


def _demo(args: argparse.Namespace, console: Console) -> int:
    from synth.hospitals import write_hospitals
    sites_dir = args.work / "sites"
    if sites_dir.is_dir() and any(sites_dir.iterdir()):
        console.print(f"reusing the synthetic sites in {sites_dir.resolve()}", soft_wrap=True)
    else:
        folders = write_hospitals(sites_dir, sites=3, patients=DEMO_PATIENTS, seed=0)
        console.print(f"wrote {len(folders)} synthetic hospital{'s' if len(folders) != 1 else ''} to {sites_dir.resolve()}", soft_wrap=True)
    return _run([f"data.root={sites_dir.resolve()}", *args.overrides], console)


if __name__ == "__main__":
    sys.exit(main())
