"""What happened in each round, shown live and turned into the run summary."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from server.evaluation import GlobalEvaluation, SiteEvaluation, aggregate
from server.participation import DECLINED, TRAIN, TRAINED, Outcome, plural


@dataclass(frozen=True)
class SiteTraining:
    """One site's training report for a round (numbers only)."""

    site: str
    num_examples: int
    epsilon: float
    delta: float
    lifetime_epsilon: float
    compute_s: float = 0.0  # the site's reported training time (to 0.1 s; 0 if not reported)
    epsilon_cap: float | None = None  # the site's run epsilon ceiling, as it reported it


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
    wall_s: float | None = None  # seconds from the previous round's end (the first: from the run's start)
    aggregated: bool = False     # a new global model came out of this round
    skipped: str | None = None   # why the round did not aggregate
    participation: dict[str, dict[str, Outcome]] = field(default_factory=dict)  # site -> phase -> outcome
    metrics: dict[str, Any] = field(default_factory=dict)  # {"pooled": M, "sites": {site: M}} (summary M)

    def as_json(self) -> dict[str, Any]:
        """This record as JSON-able values (the run's resume state keeps them; from_json reverses)."""
        raw = asdict(self)
        raw["declined"] = {str(k): v for k, v in self.declined.items()}
        raw["ended"] = None  # a monotonic clock reading means nothing in another process
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RoundRecord:
        ev = raw.get("evaluation")
        return cls(round=int(raw["round"]), training=[SiteTraining(**t) for t in raw.get("training", [])],
                   train_failed=dict(raw.get("train_failed", {})),
                   declined={int(k): int(v) for k, v in raw.get("declined", {}).items()},
                   rejected=dict(raw.get("rejected", {})),
                   evaluation=GlobalEvaluation(**ev) if ev else None,
                   site_evals=[SiteEvaluation(**{**e, "histogram_positive": tuple(e.get("histogram_positive", ())),
                                                 "histogram_negative": tuple(e.get("histogram_negative", ()))})
                               for e in raw.get("site_evals", [])],
                   eval_failed=dict(raw.get("eval_failed", {})), wall_s=raw.get("wall_s"),
                   aggregated=bool(raw.get("aggregated", False)), skipped=raw.get("skipped"),
                   participation={site: {phase: Outcome.from_dict(o) for phase, o in phases.items()}
                                  for site, phases in raw.get("participation", {}).items()},
                   metrics=dict(raw.get("metrics", {})))

    def sites_not_training(self) -> dict[str, str]:
        """Sites with a training outcome other than 'trained': {site: status (and code)}."""
        out = {}
        for site, phases in sorted(self.participation.items()):
            o = phases.get(TRAIN)
            if o is not None and o.status != TRAINED:
                out[site] = o.status.replace("_", " ") + (f" {o.code}" if o.code is not None else "")
        return out

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

    def round_record(self, number: int) -> RoundRecord:
        """The record of round `number` (created empty on first use)."""
        return self._round(number)

    def skip(self, number: int, why: str) -> None:
        """Round `number` did not aggregate a model, and why."""
        self._round(number).skipped = why

    def aggregated(self, number: int) -> None:
        """Round `number` produced a new global model."""
        record = self._round(number)
        record.aggregated, record.skipped = True, None

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
        """Each recorded round's wall time in seconds: from the previous round's end (the first
        round of a start: from the start of live(), so it includes the sites' start-up) to its own
        end. Rounds restored from a resume state keep the wall time they were recorded with."""
        walls, previous = {}, self.started
        for r in sorted(self.rounds.values(), key=lambda r: r.round):
            if r.ended is not None and previous is not None:
                walls[r.round] = r.ended - previous
            elif r.wall_s is not None:
                walls[r.round] = r.wall_s
            previous = r.ended if r.ended is not None else previous
        return walls

    def participated(self, number: int, phase: str, site: str, outcome: Outcome) -> None:
        """Record one site's outcome in one phase of round `number` (TRAIN or EVALUATE)."""
        self._round(number).participation.setdefault(site, {})[phase] = outcome

    def restore(self, rounds: Sequence[RoundRecord]) -> None:
        """Take back the rounds of an earlier start of this run (resume). Node ids are not taken
        back: a new start (a new simulation) numbers its nodes anew; sites name themselves again."""
        for r in rounds:
            self.rounds[r.round] = r

    def known_sites(self) -> list[str]:
        """Every site name recorded in any round so far."""
        return sorted({site for r in self.rounds.values() for site in r.participation})

    def site_name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    def evaluated(self, number: int, sites: Sequence[SiteEvaluation], failed: Mapping[str, str]
                  ) -> GlobalEvaluation:
        """Record a round's evaluation (sites that failed it: {site: why}); prints the round's line."""
        record = self._round(number)
        record.site_evals, record.eval_failed = list(sites), dict(failed)
        record.evaluation = aggregate(sites)
        record.ended = time.monotonic()
        record.wall_s = self.wall_seconds().get(number)
        self.console.print(_round_line(record, self.total_rounds), soft_wrap=True, highlight=False)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=number)
        return record.evaluation

    def round_line(self, number: int) -> None:
        """Print round `number`'s line now (a round that ends without its evaluation)."""
        self.console.print(_round_line(self._round(number), self.total_rounds), soft_wrap=True, highlight=False)

    def table(self) -> Table:
        """Round, AUROC, loss, max epsilon over sites, and counts; its caption names, per round,
        the sites that did not train (a caption wraps on a narrow terminal, a column would vanish)."""
        table = Table(title="fedclinic rounds (weighted federated evaluation)", caption_justify="left")
        for name in ("round", "AUROC", "loss", "max ε (sites)", "trained", "declined", "failed"):
            table.add_column(name, justify="right", no_wrap=True)
        notes = []
        for r in sorted(self.rounds.values(), key=lambda r: r.round):
            ev = r.evaluation
            missing = ", ".join(f"{site} ({why})" for site, why in r.sites_not_training().items())
            if r.skipped:
                missing = f"skipped: {r.skipped}" + (f"; {missing}" if missing else "")
            if missing:
                notes.append(f"round {r.round} did not train: {missing}")
            table.add_row(str(r.round), _auroc(ev), _fmt(ev.loss if ev else None),
                          _fmt(r.max_epsilon, 2), str(len(r.training)), str(len(r.declined)), str(r.failures))
        table.caption = Text("\n".join(notes) or "every sampled site trained in every round")  # not markup
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
    skipped = f"  (round skipped: {r.skipped})" if r.skipped else ""
    declined = [site for site, phases in r.participation.items()
                if any(o.status == DECLINED for o in phases.values())]
    return (f"round {r.round}/{total}: AUROC {_auroc(ev)}  "
            f"loss {_fmt(ev.loss if ev else None)}  max ε {_fmt(r.max_epsilon, 2)}  "
            f"{plural(len(r.training), 'site')} trained, {len(r.declined)} declined, "
            f"{r.failures} failed{skipped}"
            + "".join(f"; {site}: declined" for site in sorted(declined))
            + "".join(f"; {site}: {', '.join(why)}" for site, why in r.failed_sites.items()))
