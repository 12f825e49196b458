"""Federation overhead: fedclinic's round time against an empty app's, and the slowest site's compute.

    python bench/federation_overhead.py [--work DIR] [--sites 3] [--patients 2000] [--rounds 3]
                                        [--only simulation|deployment] [--import-runs 7]

For the demo-sized federation (3 sites x 2000 synthetic patients, 3 rounds) it prints, side by
side for simulation and loopback deployment:
- fedclinic's round wall time (the run summary's `wall_s`: from the previous round's end, or the
  start of the strategy, to the round's evaluation);
- an EMPTY app's round wall time with the same message pattern (bench/empty_flower_app.py: the
  same arrays, a train and an evaluate message per site per round, no work): Flower's own floor;
- the slowest site's compute (the summary's `slowest_compute_s`: the slowest site's reported
  training time plus the slowest site's scoring time, `compute-s`, 0.1 s);
- the overhead ratio (fedclinic - empty) / slowest compute per round and its median;
  target <= 1.3.
It also prints the ClientApp's start-up import cost (`import client.app` in a fresh process,
median of --import-runs, wall and CPU seconds) and the bytes one train reply takes against the
model's fp32 parameter bytes (simulation: Flower's serialised objects; deployment: bytes on the
loopback wire per site per round).

The synthetic sites go to DIR/sites (made once, reused). Before any timing the preprocessing cache
of every site is warmed with `fedclinic site check` (untimed), so round 1 does not include decoding
2000 DICOM files per site. Each fedclinic run starts from empty ledgers: the bench deletes the
ledgers of ITS OWN synthetic sites and uses its own high-water-mark store (DIR/marks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.3
TARGET_WIRE = 1.2


def _env(work: Path) -> dict[str, str]:
    """Subprocess environment: the bench's own mark store and Flower home, no telemetry."""
    env = dict(os.environ)
    env.update(FEDCLINIC_LEDGER_MARK_DIR=str(work / "marks"), FLWR_HOME=str(work / "flwr-home"),
               FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONPATH=str(ROOT))
    return env


def _fedclinic(args: list[str], work: Path, log: Path) -> None:
    """`fedclinic ARGS` from the source tree, output to `log`; RuntimeError on failure."""
    with log.open("ab") as out:
        done = subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=ROOT, env=_env(work),
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"fedclinic {' '.join(args[:2])} failed (exit {done.returncode}); see {log}")


def prepare_sites(work: Path, sites: int, patients: int) -> Path:
    """DIR/sites with `sites` synthetic hospitals (made once), preprocessing caches warm."""
    root = work / "sites"
    if not root.is_dir() or not any(p for p in root.iterdir() if not p.name.startswith(".")):
        _fedclinic(["synth", "--sites", str(sites), "--patients", str(patients), "--out", str(root)],
                   work, work / "synth.log")
    reset_ledgers(root, work)  # a ledger is checked against its high-water mark before anything
    for site in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _fedclinic(["site", "check", str(site)], work, work / "warm-cache.log")
    return root


def reset_ledgers(root: Path, work: Path) -> None:
    """Empty ledgers for the bench's own synthetic sites (simulation state: ROOT/.fedclinic-state)."""
    for ledger in (root / ".fedclinic-state").glob("*/privacy-ledger.*"):
        ledger.unlink()
    shutil.rmtree(work / "marks", ignore_errors=True)


def simulation_fedclinic(root: Path, rounds: int, work: Path) -> list[dict[str, float]]:
    """fedclinic in Flower's simulation engine: per round {wall, compute} from its summary."""
    reset_ledgers(root, work)
    run_dir = work / "runs" / f"simulation-{time.strftime('%Y%m%d-%H%M%S')}"
    _fedclinic(["run", f"data.root={root}", f"rounds={rounds}", f"output.run_dir={run_dir}"], work,
               work / "simulation-fedclinic.log")
    summary = json.loads((run_dir / "summary.json").read_text())
    return [{"wall": r["wall_s"], "compute": r["slowest_compute_s"]} for r in summary["rounds"]]


def simulation_empty(rounds: int, sites: int, work: Path) -> list[float]:
    """bench/empty_flower_app.py in Flower's simulation engine (same backend as fedclinic's)."""
    out = work / "empty-simulation.json"
    out.unlink(missing_ok=True)
    with (work / "simulation-empty.log").open("ab") as log:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--empty-simulation", str(out),
                        "--rounds", str(rounds), "--sites", str(sites)], cwd=ROOT, env=_env(work),
                       stdout=log, stderr=subprocess.STDOUT, check=True)
    walls = json.loads(out.read_text())["rounds"]
    return [walls[str(r)] for r in range(1, rounds + 1)]


def _run_empty_simulation(out: Path, rounds: int, sites: int) -> None:
    """(child process) The empty app through launcher.simulation, as `fedclinic run` runs fedclinic."""
    sys.path.insert(0, str(ROOT))
    from configs.load import load_experiment
    from launcher.simulation import run_simulation
    cfg = load_experiment([])
    run_simulation([f"rounds={rounds}", f"out={out}", f"sites={sites}"], num_sites=sites,
                   cpus_per_site=cfg.simulation.cpus_per_site, gpus_per_site=cfg.simulation.gpus_per_site,
                   server_app="bench.empty_flower_app:server_app", client_app="bench.empty_flower_app:client_app")


def import_cost(module: str, runs: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `import module` in a fresh interpreter, `runs` times."""
    code = ("import time; w, c = time.perf_counter(), time.process_time(); import " + module +
            "; print(time.perf_counter() - w, time.process_time() - c)")
    walls, cpus = [], []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall, cpu = map(float, done.stdout.split()[-2:])
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def serialized_reply() -> tuple[int, int, int]:
    """(bytes, objects, fp32 parameter bytes) of a train reply as Flower serialises it in simulation."""
    sys.path.insert(0, str(ROOT))
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    from bench.empty_flower_app import wire_size
    from configs.load import load_experiment
    from model.networks import build_model
    from server.app import initial_record
    cfg = load_experiment([])
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=0)
    fp32 = sum(p.numel() * 4 for p in model.state_dict().values())
    metrics = {k: 1.0 for k in ("num-examples", "epsilon", "delta", "lifetime-epsilon", "noise-multiplier",
                                "steps", "compute-s", "epsilon-cap")}
    content = RecordDict({"arrays": initial_record(cfg)[0], "metrics": MetricRecord(metrics),
                          "site": ConfigRecord({"name": "site-a"})})
    size, objects = wire_size(content)
    return size, objects, fp32


def _ratios(fed: list[dict[str, float]], empty: list[float]) -> list[float]:
    return [(f["wall"] - e) / f["compute"] if f["compute"] > 0 else float("inf") for f, e in zip(fed, empty)]


def _row(name: str, values: list[float], digits: int = 2) -> str:
    shown = " ".join(f"{v:6.{digits}f}" for v in values)
    return f"  {name:<34} {shown}   median {statistics.median(values):.{digits}f}"


def report(mode: str, fed: list[dict[str, float]], empty: list[float]) -> float:
    """Print one mode's rounds side by side; returns the median overhead ratio."""
    ratios = _ratios(fed, empty)
    print(f"{mode}: rounds " + " ".join(f"{i + 1:>6}" for i in range(len(fed))))
    print(_row("fedclinic round wall (s)", [f["wall"] for f in fed]))
    print(_row("empty app round wall (s)", empty))
    print(_row("slowest site compute (s)", [f["compute"] for f in fed], 1))
    print(_row("(fedclinic - empty) / compute", ratios))
    median = statistics.median(ratios)
    print(f"  overhead ratio median {median:.2f} (target <= {TARGET_RATIO}): "
          f"{'met' if median <= TARGET_RATIO else 'NOT met'}")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("fedclinic-bench"))
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("simulation", "deployment"))
    parser.add_argument("--import-runs", type=int, default=7)
    parser.add_argument("--wire-before", action="store_true",
                        help="deployment: also run the empty app with one array per tensor (the old exchange)")
    parser.add_argument("--empty-simulation", type=Path, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.empty_simulation:
        _run_empty_simulation(args.empty_simulation, args.rounds, args.sites)
        return 0
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    root = prepare_sites(work, args.sites, args.patients)
    wall, cpu = import_cost("client.app", args.import_runs)
    empty_wall, empty_cpu = import_cost("bench.empty_flower_app", args.import_runs)
    print(f"ClientApp start-up: import client.app {wall:.2f} s wall, {cpu:.2f} s CPU "
          f"(empty app's ClientApp: {empty_wall:.2f} s wall, {empty_cpu:.2f} s CPU; median of {args.import_runs})")
    size, objects, fp32 = serialized_reply()
    print(f"train reply, simulation (serialised): {size} bytes in {objects} objects = {size / fp32:.2f} x "
          f"the fp32 parameters ({fp32} bytes)")
    if args.only != "deployment":
        fed = simulation_fedclinic(root, args.rounds, work)
        empty = simulation_empty(args.rounds, args.sites, work)
        report("simulation", fed, empty)
    if args.only != "simulation":
        from bench.deployment_overhead import deployment_rounds  # the deployment half
        result = deployment_rounds(root, args.rounds, work, wire_before=args.wire_before)
        report("deployment", result.fedclinic, result.empty)
        print(_row("empty app, process per message (s)", result.empty_process))
        print("loopback TLS wire, bytes per site per round (mean over sites):")
        for name, w in result.wire.items():
            print(f"  {name:<44} train reply {w['train_reply']:8.0f} = {w['train_reply'] / fp32:.2f} x fp32 "
                  f"(target <= {TARGET_WIRE});  all up {w['up']:8.0f}, all down {w['down']:8.0f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
