"""How good is fedclinic's model? Pooled, federated and local-only training, with and without DP,
side by side on one synthetic federation, measured on test patients no row ever trains or tunes on.

    python bench/quality.py [--quick] [--draws K] [--work DIR] [OVERRIDE ...]

Three non-IID synthetic hospitals (synth/, the demo's generator and size, 2,000 patients each) with
site.yaml `validation.test_fraction: 0.2`: each site's test split is drawn from its own hash and
is read only here, after training. Every row trains the same model from the same initial weights
with the experiment's recipe (configs/ plus OVERRIDEs, e.g. `train.lr=0.2`; none: the demo's
defaults) for the same number of epochs (rounds x local_epochs); non-DP baselines use the
optimiser that trains them best (quality_rows.NON_DP_RECIPE):

  pooled non-DP / DP ε 8        all sites' training patients in one place
  FedAvg non-DP / DP ε 8 / ε 3  every site trains every round (bench/quality_training.py)
  FedProx / FedAdam DP ε 8      the strategy's settings from configs/strategy/
  local-only DP ε 8             each site alone, tested on its own test split, then averaged
  image / labs / notes only     FedAvg DP ε 8 with the other two modalities masked out

Columns (mean, or mean ± standard deviation, over K draws: fresh DP noise and Poisson sampling
each draw, fresh shuffling for non-DP rows): AUROC and AUPRC (average precision), each the mean
over sites of the site's test value; Brier score and expected calibration error (ECE, 15 bins,
Guo et al. 2017) over all sites' test patients, each patient's probability recalibrated by its
own site's Platt scaling fitted on that site's validation split (client/calibration.py; the ECE
before it and the mean slope and intercept are shown too); the wall time of one draw.
Then the verdicts of issue 12's targets. `--quick` is a smoke test for CI (small sites, 2 rounds,
2 draws): it prints the same table and verdicts, which mean nothing at that size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from quality_rows import ALL_INPUTS, NON_DP_RECIPE, ROWS, Row
from client.calibration import fit_recalibration
from client.metrics import auroc, average_precision, brier_score, expected_calibration_error
from client.site import discover_sites
from client.site_data.loader import load_site
from client.site_file import read_site_file
from client.trainer import rows_dataset
from configs.load import load_experiment
from configs.schema import ExperimentConfig
from quality_training import Privacy, SiteSplits, centralised, federated, logits
from synth.hospitals import write_hospitals

PATIENTS, QUICK_PATIENTS = 2000, 400
TEST_FRACTION = 0.2
MODALITY_COLUMN = {"image": 0, "labs": 1, "notes": 2}  # SiteArrays.modality_mask columns


@dataclass
class SiteScore:
    """One site's test split under one model: ranking metrics, and the labels and probabilities
    (raw and recalibrated) that the calibration metrics pool over every site's test patients."""

    auroc: float
    auprc: float
    slope: float
    intercept: float
    labels: np.ndarray         # [N] 0/1
    probabilities: np.ndarray  # [N] after the site's recalibration
    raw: np.ndarray            # [N] the model's own


@dataclass
class RowResult:
    row: Row
    draws: list[list[SiteScore]] = field(default_factory=list)  # per draw, per site
    seconds: list[float] = field(default_factory=list)

    def metric(self, name: str) -> list[float]:
        """Per draw: AUROC, AUPRC, slope, intercept as the mean over sites; brier, ece and ece_raw
        over all sites' test patients together (an ECE over one site's ~400 patients in 15 bins
        is biased upward by its own sampling noise)."""
        if name in ("brier", "ece", "ece_raw"):
            return [_pooled(name, sites) for sites in self.draws]
        return [float(np.mean([getattr(s, name) for s in sites])) for sites in self.draws]


def _pooled(name: str, sites: list[SiteScore]) -> float:
    y = np.concatenate([s.labels for s in sites])
    if name == "brier":
        return brier_score(y, np.concatenate([s.probabilities for s in sites]))
    return expected_calibration_error(y, np.concatenate([s.raw if name == "ece_raw" else s.probabilities
                                                         for s in sites]))


def load_sites(folder: Path, cfg: ExperimentConfig, cache: Path) -> list[SiteSplits]:
    """Every site under `folder` as train / validation / test tensors (its site.yaml's split)."""
    out = []
    for site in discover_sites(folder):
        site_file = read_site_file(site / "site.yaml", cfg.data)
        arrays, _ = load_site(site, cfg.data, cache_dir=cache / site.name, site_file=site_file)
        out.append(SiteSplits(site.name, rows_dataset(arrays, arrays.is_train), rows_dataset(arrays, arrays.is_val),
                              rows_dataset(arrays, arrays.is_test)))
    return out


def only(data: TensorDataset, inputs: frozenset[str]) -> TensorDataset:
    """`data` with every modality outside `inputs` masked out (its encoder's output is multiplied by 0)."""
    tensors = list(data.tensors)
    mask = tensors[4].clone()
    for name, column in MODALITY_COLUMN.items():
        if name not in inputs:
            mask[:, column] = 0.0
    tensors[4] = mask
    return TensorDataset(*tensors)


def restrict(sites: list[SiteSplits], inputs: frozenset[str]) -> list[SiteSplits]:
    if inputs == ALL_INPUTS:
        return sites
    return [SiteSplits(s.name, only(s.train, inputs), only(s.validation, inputs), only(s.test, inputs)) for s in sites]


def score(model: torch.nn.Module, site: SiteSplits) -> SiteScore:
    """The site's test metrics; probabilities recalibrated (Platt scaling) on its validation split."""
    val_y, val_z = logits(model, site.validation)
    y, z = logits(model, site.test)
    recalibration = fit_recalibration(val_y, val_z)
    p, raw = recalibration.probabilities(z), 1.0 / (1.0 + np.exp(-z))
    area, precision = auroc(y, z), average_precision(y, z)
    return SiteScore(float("nan") if area is None else area, float("nan") if precision is None else precision,
                     recalibration.slope,
                     recalibration.intercept, y, p, raw)


def run_row(row: Row, recipe: Sequence[str], sites: list[SiteSplits], privacy_of: Callable[[float], Privacy],
            draw: int) -> list[SiteScore]:
    """One draw of `row`: per site, its test metrics. Non-DP rows train with NON_DP_RECIPE on top of `recipe`."""
    cfg = load_experiment([*recipe, *(NON_DP_RECIPE if row.epsilon is None else ())])
    cfg = replace(cfg, strategy=row.strategy_config(cfg))
    sites = restrict(sites, row.inputs)
    privacy = privacy_of(row.epsilon) if row.epsilon is not None else None
    if row.kind == "local":
        return [score(centralised(cfg, s.train, privacy, draw), s) for s in sites]
    if row.kind == "pooled":
        pooled = TensorDataset(*(torch.cat(parts) for parts in zip(*(s.train.tensors for s in sites))))
        model = centralised(cfg, pooled, privacy, draw)
    else:
        model = federated(cfg, sites, privacy, draw)
    return [score(model, s) for s in sites]


def _mean_sd(values: Sequence[float], digits: int = 3) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def table(results: list[RowResult]) -> str:
    lines = ["| row | AUROC | AUPRC | Brier | ECE | ECE before recalibration | slope, intercept | wall s / draw |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.row.label} | {_mean_sd(r.metric('auroc'))} | {statistics.fmean(r.metric('auprc')):.3f} | "
                     f"{statistics.fmean(r.metric('brier')):.3f} | {_mean_sd(r.metric('ece'))} | "
                     f"{statistics.fmean(r.metric('ece_raw')):.3f} | {statistics.fmean(r.metric('slope')):.2f}, "
                     f"{statistics.fmean(r.metric('intercept')):+.2f} | "
                     f"{statistics.fmean(r.seconds):.0f} |")
    return "\n".join(lines)


def verdicts(results: list[RowResult]) -> list[str]:
    by = {r.row.key: r for r in results}
    mean = {k: statistics.fmean(r.metric("auroc")) for k, r in by.items()}
    pooled, fed, fed_dp = mean["pooled"], mean["fedavg"], mean["fedavg-dp8"]
    single = max(("image", "labs", "notes"), key=lambda k: mean[k])
    ece = statistics.fmean(by["fedavg-dp8"].metric("ece"))

    def line(ok: bool, text: str) -> str:
        return f"{'MET   ' if ok else 'MISSED'} {text}"
    return [line(fed >= pooled - 0.01, f"federated non-DP AUROC {fed:.3f} >= pooled non-DP {pooled:.3f} - 0.01"),
            line(fed_dp >= pooled - 0.03, f"federated DP ε 8 AUROC {fed_dp:.3f} >= pooled non-DP {pooled:.3f} - 0.03"),
            line(fed_dp >= mean[single] + 0.03,
                 f"fused {fed_dp:.3f} >= best single modality ({single} only, {mean[single]:.3f}) + 0.03"),
            line(ece <= 0.05, f"federated DP ε 8 ECE {ece:.3f} <= 0.05 (after each site's recalibration)")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/quality.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke version (CI)")
    parser.add_argument("--draws", type=int, default=None, help="draws per row (default 3; --quick 2)")
    parser.add_argument("--work", type=Path, default=None, help="keep the synthetic sites here (reused)")
    parser.add_argument("--rows", default=None,
                        help=f"comma-separated row keys (default: all): {', '.join(r.key for r in ROWS)}; "
                             f"the verdicts print only when pooled, fedavg, fedavg-dp8, image, labs and notes are all in")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, as for `fedclinic run`")
    args = parser.parse_args(argv)
    draws = args.draws or (2 if args.quick else 3)
    overrides = [*(["rounds=2", "train.local_epochs=1"] if args.quick else []), *args.overrides]
    cfg = load_experiment(overrides)
    torch.set_num_threads(cfg.train.num_threads)
    wanted = None if args.rows is None else args.rows.split(",")
    unknown = sorted(set(wanted or ()) - {r.key for r in ROWS})
    if unknown:
        parser.error(f"--rows: unknown row key(s) {', '.join(unknown)}; the rows are {', '.join(r.key for r in ROWS)}")
    rows = [r for r in ROWS if wanted is None or r.key in wanted]
    with tempfile.TemporaryDirectory(prefix="fedclinic-quality-") as scratch:
        work = args.work or Path(scratch)
        sites_dir = work / ("sites-quick" if args.quick else "sites")
        if not sites_dir.is_dir():
            write_hospitals(sites_dir, sites=3, patients=QUICK_PATIENTS if args.quick else PATIENTS, seed=0,
                            test_fraction=TEST_FRACTION)
        sites = load_sites(sites_dir, cfg, work / "cache")
        policy = read_site_file(discover_sites(sites_dir)[0] / "site.yaml", cfg.data)
        print(f"recipe: {' '.join(overrides) or 'the demo defaults'}; {len(sites)} sites, train/validation/test "
              f"patients {', '.join(f'{len(s.train)}/{len(s.validation)}/{len(s.test)}' for s in sites)}; "
              f"{draws} draw{'s' if draws != 1 else ''}", flush=True)
        results = []
        for row in rows:
            result = RowResult(row)
            for draw in range(draws):
                started = time.perf_counter()
                result.draws.append(run_row(row, overrides, sites, lambda eps: Privacy(eps, policy), draw))
                result.seconds.append(time.perf_counter() - started)
            print(f"{row.label}: AUROC {_mean_sd(result.metric('auroc'))}", flush=True)
            results.append(result)
    print()
    print(table(results))
    if {r.row.key for r in results} >= {"pooled", "fedavg", "fedavg-dp8", "image", "labs", "notes"}:
        print()
        print("targets: federated non-DP within 0.01 of pooled non-DP; federated DP ε 8 within 0.03 of it; "
              "fused >= best single modality + 0.03; ECE <= 0.05 after recalibration")
        print("\n".join(verdicts(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
