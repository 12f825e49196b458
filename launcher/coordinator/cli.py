"""`fedclinic coordinator init | start | register-site | unregister-site | list-sites | audit | renew-cert`
and `fedclinic certs inspect`: the central team's console (docs/deployment.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from server.deployment.coordinator_settings import DEFAULT_LISTEN, DEFAULT_SUPERLINK_PORT


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `coordinator ...` and `certs ...` under the main parser."""
    coordinator = sub.add_parser("coordinator", help="the central team's SuperLink, fence and sites").add_subparsers(
        dest="coordinator_command", required=True)
    init = coordinator.add_parser("init", help="make a coordinator folder: settings, CA, server certificate")
    init.add_argument("dir", type=Path, help="the coordinator folder (made; existing files are never overwritten)")
    init.add_argument("--host", action="append", required=True, metavar="NAME_OR_IP",
                      help="a name or IP address sites use to reach the coordinator (repeat; localhost and "
                           "127.0.0.1 are always added)")
    init.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                      help="the fence's site-facing address (default %(default)s)")
    init.add_argument("--superlink-port", type=int, default=DEFAULT_SUPERLINK_PORT, metavar="N",
                      help="the SuperLink's loopback port (default %(default)s)")
    start = coordinator.add_parser("start", help="run the SuperLink and the fence in the foreground (Ctrl-C stops)")
    start.add_argument("dir", type=Path, help="the coordinator folder")
    register = coordinator.add_parser("register-site", help="admit a site's public key (from `fedclinic site init`)")
    register.add_argument("name", help="the site's name (letters, digits, - and _)")
    register.add_argument("pubkey", type=Path, metavar="PUBKEY_FILE", help="the site's OpenSSH ECDSA public key")
    unregister = coordinator.add_parser("unregister-site", help="revoke a site's key (by name or node id)")
    unregister.add_argument("site", help="the site's name as registered, or its node id")
    coordinator.add_parser("list-sites", help="registered sites: name, node id, online/offline")
    coordinator.add_parser("audit", help="print the coordinator's audit log")
    renew = coordinator.add_parser("renew-cert", help="re-issue server.pem and server.key from ca.key "
                                   "(for coordinator.toml's hosts); restart the coordinator afterwards")
    renew.add_argument("dir", type=Path, help="the coordinator folder")
    for name in ("register-site", "unregister-site", "list-sites", "audit"):
        coordinator.choices[name].add_argument("--dir", type=Path, default=Path("."),
                                               help="the coordinator folder (default: the current folder)")
    certs = sub.add_parser("certs", help="certificate tools").add_subparsers(dest="certs_command", required=True)
    inspect = certs.add_parser("inspect", help="subject, SANs, validity and SHA-256 fingerprint; warns < 30 days")
    inspect.add_argument("file", type=Path, help="a PEM or DER certificate (e.g. ca.crt, server.pem)")


def run(args: argparse.Namespace, console: Console) -> int:
    """Dispatch a `coordinator` or `certs` command; the exit code. Errors a user can fix exit 2."""
    from launcher.coordinator.process import StartError
    from launcher.coordinator.sites import SiteCommandError
    from launcher.coordinator.fence import FenceError
    try:
        if args.command == "certs":
            return _inspect(args.file, console)
        return _COMMANDS[args.coordinator_command](args, console)
    except (FenceError, StartError, SiteCommandError) as exc:
        console.print(f"[red]fedclinic {args.command}: {escape(str(exc))}[/red]", soft_wrap=True, highlight=False)
        return 1


def _init(args: argparse.Namespace, console: Console) -> int:
    from launcher.coordinator.folder import CoordinatorFolder, init_folder
    from server.deployment.certificates import CA_DAYS, SERVER_DAYS, describe, load_cert
    folder = CoordinatorFolder.at(args.dir)
    settings = init_folder(folder, args.host, args.listen, args.superlink_port)
    ca = describe(load_cert(folder.ca_cert))
    console.print(f"coordinator folder {folder.root}\n"
                  f"  server certificate for {', '.join(settings.hosts)} ({SERVER_DAYS} days; CA {CA_DAYS} days)\n"
                  f"  fence (site-facing) {settings.fence}; SuperLink (loopback) {settings.superlink}\n"
                  f"  send sites {folder.ca_cert} (CA SHA-256 {ca.sha256}); never ca.key or server.key\n"
                  f"next: fedclinic coordinator start {folder.root}", soft_wrap=True, highlight=False, markup=False,
                  emoji=False)
    return 0


def _start(args: argparse.Namespace, console: Console) -> int:
    from launcher.coordinator.folder import CoordinatorFolder
    from launcher.coordinator.process import run_coordinator
    return run_coordinator(CoordinatorFolder.at(args.dir), console)


def _register(args: argparse.Namespace, console: Console) -> int:
    from launcher.coordinator.folder import CoordinatorFolder
    from launcher.coordinator.sites import register_site
    node_id = register_site(CoordinatorFolder.at(args.dir), args.name, args.pubkey)
    console.print(f"registered site {args.name} as node {node_id}", highlight=False)
    return 0


def _unregister(args: argparse.Namespace, console: Console) -> int:
    from launcher.coordinator.folder import CoordinatorFolder
    from launcher.coordinator.sites import unregister_site
    node_id = unregister_site(CoordinatorFolder.at(args.dir), args.site)
    console.print(f"unregistered node {node_id}; its key can no longer connect", highlight=False)
    return 0


def _list(args: argparse.Namespace, console: Console) -> int:
    from launcher.coordinator.folder import CoordinatorFolder
    from launcher.coordinator.sites import list_sites
    table = Table(title="sites")
    for column in ("name", "node id", "status"):
        table.add_column(column)
    for row in list_sites(CoordinatorFolder.at(args.dir)):
        table.add_row(row.name, str(row.node_id), row.status)
    console.print(table)
    return 0


def _audit(args: argparse.Namespace, console: Console) -> int:
    from launcher.coordinator.folder import CoordinatorFolder
    from storage.audit_log import read_events
    log = CoordinatorFolder.at(args.dir).audit_log
    events = read_events(log)
    for event in events.events:
        rest = {k: v for k, v in event.items() if k not in ("time", "event")}
        console.print(f"{event.get('time', '?')}  {event.get('event', '?'):<18} "
                      f"{' '.join(f'{k}={json.dumps(v)}' for k, v in sorted(rest.items()))}",
                      soft_wrap=True, highlight=False, markup=False, emoji=False)
    console.print(f"{len(events.events)} events in {log}" + (f"; {events.torn_lines} torn line(s) skipped "
                  "(a write cut short by a crash)" if events.torn_lines else ""), highlight=False)
    return 0


def _renew(args: argparse.Namespace, console: Console) -> int:
    from launcher.coordinator.folder import CoordinatorFolder, renew_server_cert
    from storage.audit_log import append_event
    folder = CoordinatorFolder.at(args.dir)
    info = renew_server_cert(folder)
    hosts = [*info.dns_names, *info.ip_addresses]
    append_event(folder.audit_log, "server-cert-renewed", {"sha256": info.sha256, "hosts": hosts,
                                                           "not_after": info.not_after.isoformat()})
    console.print(f"new {folder.server_cert} for {', '.join(hosts)}, valid until {info.not_after:%Y-%m-%d}; "
                  "restart the coordinator to use it (sites keep their ca.crt)", soft_wrap=True, highlight=False,
                  markup=False)
    return 0


def _inspect(path: Path, console: Console) -> int:
    """Print a certificate's details; exit 1 if it has expired (0 otherwise, with a warning < 30 days)."""
    from server.deployment.certificates import WARN_DAYS, describe, load_cert
    info = describe(load_cert(path))
    sans = [*(f"DNS:{d}" for d in info.dns_names), *(f"IP:{i}" for i in info.ip_addresses)]
    console.print(f"{path}\n  subject:     {info.subject}\n  issuer:      {info.issuer}\n"
                  f"  CA:          {'yes' if info.is_ca else 'no'}\n  SANs:        {', '.join(sans) or '-'}\n"
                  f"  not before:  {info.not_before:%Y-%m-%d %H:%M:%S} UTC\n"
                  f"  not after:   {info.not_after:%Y-%m-%d %H:%M:%S} UTC\n  SHA-256:     {info.sha256}",
                  soft_wrap=True, highlight=False, markup=False, emoji=False)
    days = info.days_left()
    if days < 0:
        console.print(f"[red]EXPIRED {-days:.0f} days ago: renew it (docs/deployment.md, rotation)[/red]",
                      highlight=False)
        return 1
    if days < WARN_DAYS:
        console.print(f"[yellow]WARNING: expires in {days:.1f} days (less than {WARN_DAYS}): renew it soon "
                      "(docs/deployment.md, rotation)[/yellow]", highlight=False, soft_wrap=True)
    return 0


_COMMANDS = {"init": _init, "start": _start, "register-site": _register, "unregister-site": _unregister,
             "list-sites": _list, "audit": _audit, "renew-cert": _renew}
