"""What happened in each round, shown live and turned into the run summary."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from server.evaluation import GlobalEvaluation, SiteEvaluation, aggregate


@dataclass(frozen=True)
class SiteTraining:
    """One site's training report for a round (numbers only)."""

    site: str
    num_examples: int
    epsilon: float
    delta: float
    lifetime_epsilon: float
    compute_s: float = 0.0  # the site's reported training time (to 0.1 s; 0 if not reported)


@dataclass
class RoundRecord:
    """Training and evaluation of one round."""

    round: int
    training: list[SiteTraining] = field(default_factory=list)
    train_failed: dict[str, str] = field(default_factory=dict)  # site -> why it did not train (no decline)
    declined: dict[int, int] = field(default_factory=dict)  # node id -> decline code
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why its update was not averaged
    evaluation: GlobalEvaluation | None = None
    site_evals: list[SiteEvaluation] = field(default_factory=list)
    eval_failed: dict[str, str] = field(default_factory=dict)  # site -> why it did not evaluate (no decline)
    ended: float | None = None  # time.monotonic() when its last phase was recorded

    @property
    def slowest_compute_s(self) -> float:
        """The round's compute floor in seconds: the slowest site's training plus the slowest site's
        scoring (each phase waits for its slowest site), from the sites' reported `compute-s`."""
        return (max((t.compute_s for t in self.training), default=0.0)
                + max((e.compute_s for e in self.site_evals), default=0.0))

    @property
    def failed_sites(self) -> dict[str, list[str]]:
        """Every site that failed this round, with what failed: 'training: why', 'evaluation: why',
        'update left out: why'."""
        failed: dict[str, list[str]] = {}
        for phase, sites in (("training", self.train_failed), ("update left out", self.rejected),
                             ("evaluation", self.eval_failed)):
            for site, why in sites.items():
                failed.setdefault(site, []).append(f"{phase}: {why}")
        return failed

    @property
    def train_failures(self) -> int:
        """Sites that failed training this round (no decline)."""
        return len(self.train_failed)

    @property
    def eval_failures(self) -> int:
        """Sites that failed evaluation this round (no decline)."""
        return len(self.eval_failed)

    @property
    def failures(self) -> int:
        """Failed phases this round (a site that failed training and evaluation counts twice)."""
        return len(self.train_failed) + len(self.eval_failed) + len(self.rejected)

    @property
    def max_epsilon(self) -> float | None:
        """The largest run epsilon any site reported this round (training or a DP evaluation)."""
        values = [t.epsilon for t in self.training] + [e.epsilon for e in self.site_evals if e.epsilon is not None]
        return max(values, default=None)


class RunRecorder:
    """Collects per-round results; drives a progress bar and prints one line per round."""

    def __init__(self, total_rounds: int, console: Console | None = None) -> None:
        self.total_rounds = total_rounds
        self.console = console or Console()
        self.rounds: dict[int, RoundRecord] = {}
        self.names: dict[int, str] = {}  # node id -> site name, learned from its replies
        self._progress: Progress | None = None
        self._task: int | None = None
        self.started: float | None = None  # time.monotonic() when live() began

    def _round(self, number: int) -> RoundRecord:
        return self.rounds.setdefault(number, RoundRecord(number))

    @contextmanager
    def live(self) -> Iterator[None]:
        """Show a progress bar over the rounds while the block runs."""
        columns = (TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
        self.started = time.monotonic()
        with Progress(*columns, console=self.console, transient=True) as progress:
            self._progress, self._task = progress, progress.add_task("rounds", total=self.total_rounds)
            try:
                yield
            finally:
                self._progress = None

    def trained(self, number: int, sites: Sequence[SiteTraining], failed: Mapping[str, str],
                declined: Mapping[int, int] | None = None) -> None:
        """Record a round's training: the sites that trained, those that failed ({site: why}) and
        those whose policy declined ({node id: decline code})."""
        record = self._round(number)
        record.training, record.train_failed = list(sites), dict(failed)
        record.declined = dict(declined or {})
        record.ended = time.monotonic()

    def rejected(self, number: int, site: str, reason: str) -> None:
        """A site's update that was left out of the average (it counts as a failure)."""
        self._round(number).rejected[site] = reason
        self.console.print(f"round {number}: the update of {site} was left out: {reason}", soft_wrap=True,
                           highlight=False)

    def wall_seconds(self) -> dict[int, float]:
        """Each recorded round's wall time: from the previous round's end (the first round: from the
        start of live(), so it includes the sites' start-up) to its own end, in seconds."""
        walls, previous = {}, self.started
        for r in sorted(self.rounds.values(), key=lambda r: r.round):
            if r.ended is not None and previous is not None:
                walls[r.round] = r.ended - previous
            previous = r.ended if r.ended is not None else previous
        return walls

    def site_name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    def evaluated(self, number: int, sites: Sequence[SiteEvaluation], failed: Mapping[str, str]
                  ) -> GlobalEvaluation:
        """Record a round's evaluation (sites that failed it: {site: why}); prints the round's line."""
        record = self._round(number)
        record.site_evals, record.eval_failed = list(sites), dict(failed)
        record.evaluation = aggregate(sites)
        record.ended = time.monotonic()
        self.console.print(_round_line(record, self.total_rounds), soft_wrap=True, highlight=False)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=number)
        return record.evaluation

    def table(self) -> Table:
        """Round, AUROC, loss, max epsilon over sites, and failures."""
        table = Table(title="fedclinic rounds (weighted federated evaluation)")
        for name in ("round", "AUROC", "loss", "max ε (sites)", "declined", "failed"):
            table.add_column(name, justify="right")
        for r in sorted(self.rounds.values(), key=lambda r: r.round):
            ev = r.evaluation
            table.add_row(str(r.round), _auroc(ev), _fmt(ev.loss if ev else None),
                          _fmt(r.max_epsilon, 2), str(len(r.declined)),
                          str(r.failures))
        return table

    def last_site_values(self) -> Mapping[str, dict[str, float | int | None]]:
        """Final ε, δ, training size and AUROC of every site that ever reported."""
        sites: dict[str, dict[str, float | int | None]] = {}
        for r in sorted(self.rounds.values(), key=lambda r: r.round):
            for t in r.training:
                sites.setdefault(t.site, {"auroc": None}).update(
                    epsilon=t.epsilon, delta=t.delta, lifetime_epsilon=t.lifetime_epsilon, num_train=t.num_examples)
            for e in r.site_evals:
                site = sites.setdefault(e.site, {"epsilon": None, "delta": None, "num_train": None})
                site["auroc"] = e.auroc
                site["validation_metrics"] = "dp" if e.dp else "exact (not DP: the site trusts the coordinator)"
                if e.epsilon is not None:
                    site["epsilon"] = max(e.epsilon, site.get("epsilon") or 0.0)
                if e.lifetime_epsilon is not None:  # an evaluation after the last training round spends too
                    site["lifetime_epsilon"] = max(e.lifetime_epsilon, site.get("lifetime_epsilon") or 0.0)
        return sites


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _auroc(ev: GlobalEvaluation | None) -> str:
    """The AUROC with the spread its DP noise gives it (about ±1 standard deviation)."""
    if ev is None or ev.auroc is None:
        return "-"
    return _fmt(ev.auroc) + (f" ±{ev.auroc_std:.3f}" if ev.auroc_std > 0 else "")


def _round_line(r: RoundRecord, total: int) -> str:
    ev = r.evaluation
    return (f"round {r.round}/{total}: AUROC {_auroc(ev)}  "
            f"loss {_fmt(ev.loss if ev else None)}  max ε {_fmt(r.max_epsilon, 2)}  "
            f"sites {len(r.training)} trained, {len(r.declined)} declined, "
            f"{r.failures} failed" + "".join(f"; {site}: {', '.join(why)}" for site, why in r.failed_sites.items()))
