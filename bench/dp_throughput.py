"""DP-SGD cost on the default fused model: non-DP vs each grad_sample_mode, side by side.

    python bench/dp_throughput.py [--threads 1] [--reps 7] [--steps 20] [--device cpu|cuda]

Throughput: one process; synthetic tensors of the default config's shapes (Zipf-like token ids),
Poisson batches drawn in advance from the real `privacy.dpsgd.engine.make_private` loader (q = 1/16 of
N = 16 x batch, expected batch = train.batch_size), so no data loading is timed. Each repetition
times every configuration on the same batches (rotating order, each preceded by --rewarm untimed
steps so that the switch from another configuration is charged to none) and the DP/non-DP ratio
is taken per repetition (paired); the table reports medians. CPU: process CPU time is the primary clock
(robust to co-running load), wall time is shown too. CUDA: wall time with synchronisation.

Memory: fresh subprocesses per configuration (--mem-probes, median of each figure). CPU: peak RSS growth, i.e. the peak RSS after
--mem-steps steps minus the peak just before the first step, after malloc_trim and a reset of the
high-water mark to the current RSS (/proc/self/clear_refs "5"), so setup peaks do not hide the
steps' footprint (tensor memory comes from malloc, which tracemalloc cannot see). The peak is read
as VmHWM from /proc/self/status: getrusage's ru_maxrss in a child starts at the parent's peak
(carried across exec), which here is larger than the child's own (see _peak_rss_kib). The first
steps include one-off allocations (oneDNN primitives, optimizer state) that every mode makes; the
last column is the steady state: the peak growth of --mem-steps further steps after another reset.
CUDA: torch.cuda.max_memory_allocated minus memory_allocated before.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from client.trainer import batch_loss  # noqa: E402
from configs.load import load_experiment  # noqa: E402
from configs.schema import ExperimentConfig  # noqa: E402
from configs.validate import GRAD_SAMPLE_MODES  # noqa: E402
from model.batch import ClinicalBatch  # noqa: E402
from model.networks import build_model  # noqa: E402
from privacy.dpsgd.engine import DPSettings, make_private  # noqa: E402

NON_DP = "non-DP"
SIGMA, CLIP = 1.0, 1.0
TARGET_SPEED, TARGET_MEMORY = 0.6, 1.5
BATCHES_PER_EPOCH = 16  # N = 16 x batch size -> sample rate 1/16


def synthetic_dataset(cfg: ExperimentConfig, n: int, seed: int) -> TensorDataset:
    """Random tensors in ClinicalBatch order; notes of 8..L tokens, Zipf-like (alpha 1.1) ids."""
    g = torch.Generator().manual_seed(seed)
    d, f, length = cfg.data, len(cfg.data.labs), cfg.data.note_max_tokens
    lab_mask = (torch.rand(n, f, generator=g) < 0.8).float()
    tokens = torch.rand(n, length, generator=g).pow(-1 / 1.1).long().clamp(max=d.note_buckets - 1)
    lengths = torch.randint(8, length + 1, (n, 1), generator=g)
    tokens[torch.arange(length)[None, :] >= lengths] = 0
    return TensorDataset(torch.rand(n, 1, d.image_size, d.image_size, generator=g),
                         torch.randn(n, f, generator=g) * lab_mask, lab_mask, tokens,
                         (torch.rand(n, 3, generator=g) < 0.9).float(),
                         (torch.rand(n, generator=g) < 0.3).float())


class Runner:
    """One configuration: a model (same init for all) and a `step(batch) -> None`."""

    def __init__(self, name: str, cfg: ExperimentConfig, data: TensorDataset, device: torch.device) -> None:
        self.name = name
        model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets,
                            seed=cfg.seed).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
        self.private = None
        if name == NON_DP:
            def step(batch: ClinicalBatch) -> None:
                opt.zero_grad(set_to_none=True)
                batch_loss(model, batch).backward()
                opt.step()
            self.step: Callable[[ClinicalBatch], None] = step
        else:
            self.private = make_private(model, opt, DataLoader(data, batch_size=cfg.train.batch_size),
                                        settings=DPSettings(SIGMA, CLIP, "prv", name), prior=[])
            self.step = lambda batch: self.private.step(batch, batch.label)
        self.num_params = sum(p.numel() for p in model.parameters())


def poisson_batches(cfg: ExperimentConfig, data: TensorDataset, count: int, device: torch.device,
                    seed: int) -> list[ClinicalBatch]:
    """`count` batches from the real DP (Poisson) loader, materialised on `device` up front."""
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=0)
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.0),
                           DataLoader(data, batch_size=cfg.train.batch_size),
                           settings=DPSettings(SIGMA, CLIP, "prv", GRAD_SAMPLE_MODES[0]), prior=[])
    torch.manual_seed(seed)
    out: list[ClinicalBatch] = []
    while len(out) < count:
        out += [ClinicalBatch(*t).to(device) for t in private.loader]
    private.close()
    return out[:count]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(runner: Runner, batches: list[ClinicalBatch], device: torch.device) -> tuple[float, float, int]:
    """(cpu seconds, wall seconds, samples) for one step per batch."""
    _sync(device)
    c0, w0 = time.process_time(), time.perf_counter()
    for b in batches:
        runner.step(b)
    _sync(device)
    return time.process_time() - c0, time.perf_counter() - w0, sum(len(b.label) for b in batches)


def _reset_peak_rss() -> bool:
    """Reset the process' RSS high-water mark (ru_maxrss / VmHWM) to its current RSS (Linux >= 4.0)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed setup memory back first
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_kib() -> int:
    """This process' peak RSS in KiB: VmHWM (the live address space's high-water mark, which
    clear_refs resets), else ru_maxrss. ru_maxrss alone is not usable in a child process: the
    kernel carries the parent's high-water mark across fork+exec into it (signal->maxrss), so the
    probe could never see a peak below the (larger) benchmark parent's."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_probe(name: str, args: argparse.Namespace) -> dict[str, float]:
    """Run in a fresh process: peak memory growth of --mem-steps steps of one configuration."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_experiment([])
    data = synthetic_dataset(cfg, BATCHES_PER_EPOCH * cfg.train.batch_size, seed=0)
    batches = poisson_batches(cfg, data, 2 * args.mem_steps, device, seed=1)
    runner = Runner(name, cfg, data, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    # With the reset, ru_maxrss before = the current RSS, so the growth is what the steps add on
    # top of the setup; without it (no clear_refs), it is what they add on top of the setup's peak.
    reset = _reset_peak_rss()
    before, ru_before = _peak_rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for b in batches[:args.mem_steps]:
        runner.step(b)
    _sync(device)
    after, ru_after = _peak_rss_kib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"rss_growth_mib": (after - before) / 1024, "rss_peak_mib": after / 1024,
              "rss_before_mib": before / 1024, "ru_maxrss_growth_mib": (ru_after - ru_before) / 1024,
              "peak_reset": float(reset)}
    if device.type == "cuda":
        result["cuda_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return result
    # steady state: the same number of further steps, high-water mark reset after the first ones
    _reset_peak_rss()
    settled = _peak_rss_kib()
    for b in batches[args.mem_steps:]:
        runner.step(b)
    result["steady_growth_mib"] = (_peak_rss_kib() - settled) / 1024
    return result


def run_memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    """--mem-probes fresh subprocesses; the median of each figure (glibc's heap makes single RSS
    peaks vary by several MiB from run to run)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", name, "--threads", str(args.threads),
           "--device", args.device, "--mem-steps", str(args.mem_steps)]
    runs = [json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                       .stdout.strip().splitlines()[-1]) for _ in range(args.mem_probes)]
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--reps", type=int, default=7, help="paired repetitions")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration per repetition")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration first")
    ap.add_argument("--rewarm", type=int, default=2,
                    help="untimed steps before each timed repetition (after switching configuration)")
    ap.add_argument("--mem-steps", type=int, default=3, help="steps measured by each memory subprocess")
    ap.add_argument("--mem-probes", type=int, default=3, help="memory subprocesses per configuration (median)")
    ap.add_argument("--modes", default=",".join(GRAD_SAMPLE_MODES), help="comma-separated DP modes")
    ap.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    return ap


def _measure(names: list[str], runners: dict[str, Runner], batches: list, args: argparse.Namespace,
             device: torch.device) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Samples/s (CPU and wall) per configuration and repetition, on the same batches, order rotated.

    Warm-up: --warmup steps, then one step on each batch size the timed batches have, so that
    oneDNN's per-shape primitives (a one-off cost per batch size, shared by the configurations in
    this process) are built before timing instead of charged to whichever configuration meets a
    size first."""
    by_size = {len(b.label): b for b in reversed(batches[args.warmup:])}
    for name in names:
        for b in [*batches[:args.warmup], *by_size.values()]:
            runners[name].step(b)
    cpu_sps: dict[str, list[float]] = {name: [] for name in names}
    wall_sps: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.reps):
        chunk = batches[args.warmup + r * args.steps: args.warmup + (r + 1) * args.steps]
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order per rep
            for b in chunk[:args.rewarm]:  # untimed: caches and allocator after the switch
                runners[name].step(b)
            cpu, wall, samples = time_steps(runners[name], chunk, device)
            cpu_sps[name].append(samples / cpu)
            wall_sps[name].append(samples / wall)
    for runner in runners.values():
        if runner.private is not None:
            runner.private.close()
    return cpu_sps, wall_sps


def _ratios(sps: dict[str, list[float]], name: str) -> list[float]:
    return [a / b for a, b in zip(sps[name], sps[NON_DP])]


def _memory_label(memory: dict[str, dict], device: torch.device, args: argparse.Namespace) -> str:
    reset_txt = ("high-water mark reset to the current RSS first" if all(m["peak_reset"] for m in memory.values())
                 else "NO high-water reset: growth over the setup peak")
    if device.type == "cuda":
        return "CUDA max_memory_allocated growth over the first steps"
    return (f"peak RSS growth of the first {args.mem_steps} steps in a fresh subprocess per mode (median of "
            f"{args.mem_probes}), VmHWM (= ru_maxrss of this address space) after minus before ({reset_txt}); "
            f"steady state: {args.mem_steps} further steps after another reset")


def _table(names: list[str], primary: dict[str, list[float]], wall_sps: dict[str, list[float]],
           memory: dict[str, dict], mem_key: str, clock: str) -> list[tuple[str, float, float]]:
    """Print the side-by-side table; return (mode, speed ratio, memory ratio) per DP mode."""
    header = (f"| mode | samples/s ({clock}) | DP/non-DP ({clock}) | per-rep ratios | samples/s (wall) "
              f"| DP/non-DP (wall) | peak mem growth MiB | mem vs non-DP | RSS before -> peak MiB "
              f"| steady-state growth MiB (vs non-DP) |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base_mem, verdicts = memory[NON_DP][mem_key], []
    for name in names:
        sps, wsps, mem = statistics.median(primary[name]), statistics.median(wall_sps[name]), memory[name][mem_key]
        r_txt, per_rep, w_txt, m_txt = "1.00", "-", "1.00", "1.00"
        if name != NON_DP:
            rs = _ratios(primary, name)
            r_med, m_ratio = statistics.median(rs), (mem / base_mem if base_mem > 0 else float("inf"))
            r_txt, per_rep = f"{r_med:.2f}", " ".join(f"{x:.2f}" for x in rs)
            w_txt, m_txt = f"{statistics.median(_ratios(wall_sps, name)):.2f}", f"{m_ratio:.2f}"
            verdicts.append((name, r_med, m_ratio))
        steady, base_steady = memory[name].get("steady_growth_mib"), memory[NON_DP].get("steady_growth_mib")
        s_txt = "-" if steady is None else (f"{steady:.1f}" + (f" ({steady / base_steady:.2f})" if base_steady else ""))
        print(f"| {name} | {sps:.0f} | {r_txt} | {per_rep} | {wsps:.0f} | {w_txt} | {mem:.1f} | {m_txt} "
              f"| {memory[name]['rss_before_mib']:.0f} -> {memory[name]['rss_peak_mib']:.0f} | {s_txt} |")
    return verdicts


def _verdicts(verdicts: list[tuple[str, float, float]]) -> None:
    print(f"Targets: DP/non-DP throughput >= {TARGET_SPEED}x; DP peak memory <= {TARGET_MEMORY}x non-DP.")
    for name, r_med, m_ratio in verdicts:
        speed_ok, mem_ok = r_med >= TARGET_SPEED, m_ratio <= TARGET_MEMORY
        print(f"  {name}: speed {r_med:.2f}x {'meets' if speed_ok else 'MISSES'}; memory {m_ratio:.2f}x "
              f"{'meets' if mem_ok else 'MISSES'} -> {'meets both' if speed_ok and mem_ok else 'does not meet both'}")
    fastest = max(verdicts, key=lambda v: v[1])[0] if verdicts else None
    print(f"Fastest DP mode here: {fastest}")


def main() -> None:
    ap = _parser()
    args = ap.parse_args()
    if args.memory_probe is not None:
        print(json.dumps(memory_probe(args.memory_probe, args)))
        return
    print("$ python " + shlex.join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]))
    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available on this machine: skipping the --device cuda benchmark.")
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(GRAD_SAMPLE_MODES))
    if unknown:
        ap.error(f"unsupported modes {unknown}; supported: {GRAD_SAMPLE_MODES}")
    names = [NON_DP, *modes]
    cfg = load_experiment([])
    n = BATCHES_PER_EPOCH * cfg.train.batch_size
    data = synthetic_dataset(cfg, n, seed=0)
    batches = poisson_batches(cfg, data, args.warmup + args.reps * args.steps, device, seed=1)
    runners = {name: Runner(name, cfg, data, device) for name in names}
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}; default config: "
          f"image {cfg.data.image_size}x{cfg.data.image_size}, {len(cfg.data.labs)} labs, "
          f"{cfg.data.note_buckets} note buckets x dim {cfg.model.note_dim}, {cfg.data.note_max_tokens} tokens; "
          f"{runners[NON_DP].num_params} params")
    print(f"Poisson: N={n}, q=1/{BATCHES_PER_EPOCH}, expected batch {cfg.train.batch_size}; sigma={SIGMA}, "
          f"C={CLIP}; SGD lr {cfg.train.lr} momentum {cfg.train.momentum}; {args.reps} reps x {args.steps} "
          f"steps (+{args.warmup} warm-up and one per batch size, +{args.rewarm} untimed before each) per "
          f"configuration; mean batch "
          f"{statistics.mean(len(b.label) for b in batches):.1f}")
    cpu_sps, wall_sps = _measure(names, runners, batches, args, device)
    memory = {name: run_memory(name, args) for name in names}
    clock = "wall" if device.type == "cuda" else "CPU"
    print(f"\nThroughput: median over {args.reps} reps; ratio = median of paired per-rep DP/non-DP ratios "
          f"({clock} time primary). Memory: {_memory_label(memory, device, args)}.")
    verdicts = _table(names, wall_sps if device.type == "cuda" else cpu_sps, wall_sps, memory,
                      "cuda_peak_mib" if device.type == "cuda" else "rss_growth_mib", clock)
    print()
    _verdicts(verdicts)


if __name__ == "__main__":
    main()
