"""`fedclinic site init | start | approve | audit`: a hospital's node (docs/deployment.md).

`site check` (the readiness check) lives in launcher/cli.py.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from rich.console import Console

from client.node.settings import load_node_settings

SITE_COMMANDS = ("init", "start", "approve", "audit")


def add_parsers(site: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the node commands under `fedclinic site`."""
    init = site.add_parser("init", help="make this site's node folder: key pair (here), CA, settings, allow-list")
    init.add_argument("folder", type=Path, help="the node folder to create (e.g. /etc/fedclinic/site-a)")
    init.add_argument("--name", required=True, help="the site's name: letters, digits and '-' (e.g. site-a)")
    init.add_argument("--coordinator", required=True, metavar="HOST:PORT",
                      help="the coordinator's site-facing address, from the central team")
    init.add_argument("--ca", type=Path, required=True, metavar="CA_CRT",
                      help="the coordinator's CA certificate (ca.crt), from the central team")
    init.add_argument("--data", type=Path, required=True, help="the site's data export folder (read-only)")
    init.add_argument("--state", type=Path, help="the site's state folder: ledger, cache, logs, audit "
                      "(default: FOLDER/state)")
    init.add_argument("--site-config", type=Path, help="site.yaml (default: <data>/site.yaml)")
    init.add_argument("--runtime-port", type=int, default=9094,
                      help="loopback port of the SuperNode's runtime API (default 9094)")
    start = site.add_parser("start", help="run the site: Flower SuperNode + the gated task runner (foreground)")
    start.add_argument("config", type=Path, help="node.toml, or the node folder")
    approve = site.add_parser("approve", help="add an app bundle's SHA-256 to the site's allow-list")
    approve.add_argument("config", type=Path, help="node.toml, or the node folder")
    approve.add_argument("sha256", help="the bundle's SHA-256 (64 hex digits), as the central team announced it")
    approve.add_argument("--note", default="approved by site IT",
                         help="why: e.g. the release and where the hash was announced (kept as a comment)")
    audit = site.add_parser("audit", help="print the site's audit log")
    audit.add_argument("config", type=Path, help="node.toml, or the node folder")


def run(args: argparse.Namespace, console: Console) -> int:
    """Dispatch one of SITE_COMMANDS; bad input raises ValueError (the CLI exits 2)."""
    handlers = {"init": _init, "start": _start, "approve": _approve, "audit": _audit}
    try:
        return handlers[args.site_command](args, console)
    except (RuntimeError, FileNotFoundError) as exc:
        raise ValueError(str(exc)) from None


def _init(args: argparse.Namespace, console: Console) -> int:
    from launcher.release_app import release_version
    from launcher.site.initialize import init_site
    from storage.audit_log import append_event
    made = init_site(args.folder, name=args.name, coordinator=args.coordinator, ca=args.ca, data=args.data,
                     state=args.state, site_config=args.site_config, runtime_port=args.runtime_port)
    s = made.settings
    key_blob = made.public_key_line.split()[1].encode()
    append_event(s.audit_log, "site-initialized", {
        "name": s.name, "coordinator": s.coordinator, "release": release_version(),
        "public_key_sha256": hashlib.sha256(key_blob).hexdigest(), "approved_app_sha256": made.approved_hash})
    console.print(f"wrote the node folder {s.file.parent}: node.toml, ca.crt, approved-apps.txt, and this site's "
                  f"key pair in {s.key.parent} (the private key {s.key} stays here, 0600)",
                  highlight=False, soft_wrap=True)
    console.print(f"approved app bundle: {made.approved_hash} (fedclinic {release_version()}, installed here)",
                  highlight=False, soft_wrap=True)
    console.print(f"\nsend {s.name} and this public key to the central team "
                  f"(it is also in {made.public_key_file}):\n", highlight=False, soft_wrap=True)
    print(made.public_key_line)
    console.print(f"\nonce they have registered it: fedclinic site start {s.file}", highlight=False, soft_wrap=True)
    return 0


def _start(args: argparse.Namespace, console: Console) -> int:
    from launcher.site.supervisor import start_site
    return start_site(load_node_settings(args.config), console)


def _approve(args: argparse.Namespace, console: Console) -> int:
    from client.node.approved_apps import append_entry, normalise_hash
    from storage.audit_log import append_event
    settings = load_node_settings(args.config)
    digest = normalise_hash(args.sha256)
    if not append_entry(settings.approved_apps, digest, args.note):
        console.print(f"{digest} is already approved in {settings.approved_apps}", highlight=False, soft_wrap=True)
        return 0
    append_event(settings.audit_log, "app-approved", {"app_sha256": digest, "note": " ".join(args.note.split())[:200]})
    console.print(f"approved {digest} in {settings.approved_apps} (a running site picks it up at the next task). "
                  "The site still runs its installed fedclinic ClientApp: approving a bundle lets this site "
                  "take part in runs submitted with it, never runs its code.", highlight=False, soft_wrap=True)
    return 0


def _audit(args: argparse.Namespace, console: Console) -> int:
    from storage.audit_log import read_events
    settings = load_node_settings(args.config)
    events = read_events(settings.audit_log)
    if not events.events:
        console.print(f"{settings.audit_log}: no events yet", highlight=False, soft_wrap=True)
    for event in events.events:
        fields = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("time", "event"))
        console.print(f"{event.get('time', '?')}  {event.get('event', '?'):<18} {fields}", highlight=False,
                      soft_wrap=True, markup=False)
    if events.torn_lines:
        console.print(f"({events.torn_lines} line(s) cut short by a crash were skipped)", highlight=False)
    return 0
