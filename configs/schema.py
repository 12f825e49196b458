"""The typed configuration: frozen dataclasses that code below the loader receives."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LabFeature:
    """One lab feature of the model input: a code, its canonical unit and conversions."""

    code: str
    name: str
    unit: str
    ref_mean: float
    ref_sd: float
    low: float
    high: float
    # unit -> factor that multiplies a value in that unit to give the canonical unit
    conversions: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    """Where the site data lives (simulation only) and how it becomes tensors."""

    root: str | None
    image_size: int
    window_center: float | None
    window_width: float | None
    frame_policy: str             # multi-frame images: middle | first | mean
    lab_window_hours: float | None  # labs within this many hours before index_time (null: any)
    note_buckets: int
    note_max_tokens: int
    labs: tuple[LabFeature, ...]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the multimodal network."""

    image_channels: tuple[int, ...]
    lab_hidden: int
    note_dim: int
    embed_dim: int
    fusion_hidden: int


@dataclass(frozen=True)
class TrainConfig:
    """Local training at each site."""

    local_epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    device: str
    num_threads: int


@dataclass(frozen=True)
class PrivacyConfig:
    """DP-SGD settings requested by the coordinator (sample-level, per site)."""

    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    accountant: str
    grad_sample_mode: str


@dataclass(frozen=True)
class StrategyConfig:
    """Federated aggregation."""

    name: str
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of each virtual site in Flower's simulation engine."""

    cpus_per_site: int
    gpus_per_site: float


@dataclass(frozen=True)
class OutputConfig:
    """Where run folders go; run_dir pins one (the launcher sets it)."""

    root: str
    run_dir: str | None


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment, as composed from configs/ plus overrides."""

    rounds: int
    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    privacy: PrivacyConfig
    strategy: StrategyConfig
    simulation: SimulationConfig
    output: OutputConfig


@dataclass(frozen=True)
class LocalLabCode:
    """A site-local lab code mapped onto one of the model's configured features."""

    code: str
    feature: str
    # extra units this code is reported in -> factor to the feature's canonical unit
    conversions: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PrivacyPolicy:
    """The site's privacy promise for one dataset; it can only tighten what the coordinator asks."""

    dataset_id: str | None = None          # ledger key; default: the site name
    lifetime_epsilon: float = 10.0         # total over every run on this dataset
    lifetime_delta: float = 1e-5
    run_epsilon: float | None = None       # per-run ceiling (null: the coordinator's target)
    min_noise_multiplier: float = 0.5
    max_grad_norm: float | None = None     # largest clipping norm accepted (null: any)


@dataclass(frozen=True)
class ValidationSplit:
    """The site's held-out patients: owned by the site so the coordinator cannot pick them."""

    fraction: float = 0.2
    seed: int = 0
    min_patients: int = 20     # fewer held-out patients: the site refuses to report metrics


@dataclass(frozen=True)
class SiteFileConfig:
    """site.yaml: configuration the site owns; the coordinator never sends or sees it."""

    lab_codes: tuple[LocalLabCode, ...] = ()
    privacy: PrivacyPolicy | None = None  # None: no policy written; the built-in PrivacyPolicy() applies
    validation: ValidationSplit = field(default_factory=ValidationSplit)

    @property
    def policy(self) -> PrivacyPolicy:
        """The policy in force: the site's own, else the conservative built-in default."""
        return self.privacy or PrivacyPolicy()
