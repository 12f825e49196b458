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
    """Federated aggregation: one of Flower 1.41's strategies (server/strategy/choice.py) and the
    round's k-of-n rules. Parameters a strategy does not use are ignored by it."""

    name: str                     # fedavg | fedprox | fedadam | fedyogi | fedadagrad | fedtrimmedavg | fedmedian | multikrum
    fraction: float               # share of the online sites sampled for training each round
    fraction_evaluate: float      # share of the online sites sampled for evaluation each round
    min_sites: int                # a round aggregates only when at least this many sites trained
    round_timeout: float          # seconds a round waits: for min_sites to be online, then for replies
    proximal_mu: float = 0.0      # FedProx: weight of the proximal term mu/2 ||w - w_global||^2 (site side)
    server_lr: float = 0.1        # FedAdam/FedYogi/FedAdagrad: server learning rate eta
    beta_1: float = 0.9           # FedAdam/FedYogi: first-moment decay
    beta_2: float = 0.99          # FedAdam/FedYogi: second-moment decay
    tau: float = 1e-3             # FedAdam/FedYogi/FedAdagrad: adaptivity (numerical floor)
    trim_beta: float = 0.2        # FedTrimmedAvg: share cut from each end per coordinate
    byzantine_sites: int = 0      # MultiKrum: sites assumed malicious (f)
    krum_keep: int = 0            # MultiKrum: updates averaged after selection (0: n - f)
    max_update_norm: float | None = None  # an update whose L2 distance to the global model exceeds this is left out
    outlier_factor: float = 10.0  # ... or exceeds this many times the round's median (with >= 3 updates)


@dataclass(frozen=True)
class EvaluationConfig:
    """How the coordinator reads the sites' released validation histograms (server/clinical_metrics.py)."""

    threshold: float = 0.5        # probability above which a patient is called positive (snapped to a bin edge)
    min_cell: int = 10            # small-cell suppression: no count below this is shown, nor a metric built on it


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of each virtual site in Flower's simulation engine."""

    cpus_per_site: int
    gpus_per_site: float


@dataclass(frozen=True)
class OutputConfig:
    """Where run folders go; run_dir pins one (the launcher sets it). audit_log: the coordinator's
    audit log the ServerApp appends per-round events to (set by `fedclinic run --federation`; sites
    ignore it)."""

    root: str
    run_dir: str | None
    audit_log: str | None = None


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
    evaluation: EvaluationConfig = EvaluationConfig()


@dataclass(frozen=True)
class LocalLabCode:
    """A site-local lab code mapped onto one of the model's configured features."""

    code: str
    feature: str
    # extra units this code is reported in -> factor to the feature's canonical unit
    conversions: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LabUnit:
    """A unit this site's export reports a configured feature in, which the catalogue does not
    spell (site.yaml `lab_units`): either a spelling of one of the feature's catalogue units
    (`same_as`, whose released factor applies) or a new unit with its own `factor`."""

    feature: str                  # a configured feature code
    unit: str                     # the unit as the export prints it
    same_as: str | None = None    # a unit of the feature in the catalogue
    factor: float | None = None   # else: multiplies a value in `unit` to give the canonical unit


@dataclass(frozen=True)
class PrivacyPolicy:
    """The site's privacy promise for one dataset; it can only tighten what the coordinator asks."""

    dataset_id: str | None = None          # ledger key written with each spend; default: the site name
    lifetime_epsilon: float = 10.0         # total over every run on this dataset
    lifetime_delta: float = 1e-5
    run_epsilon: float | None = None       # per-run ceiling (null: the coordinator's target)
    min_noise_multiplier: float = 0.5
    max_grad_norm: float | None = None     # largest clipping norm accepted (null: any)
    accountant: str = "prv"                # prv | rdp: calibrates sigma and reports every epsilon
    # Ledger keys whose spends were on OTHER patients: they do not count toward this lifetime.
    # Every other key found in the ledger (an old site name, say) is counted.
    unrelated_datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationSplit:
    """The site's held-out patients and what it releases about them (never the coordinator's choice)."""

    fraction: float = 0.2
    seed: int = 0
    test_fraction: float = 0.0     # patients set aside for a final test: no round ever trains or validates on them
    min_patients: int = 20         # fewer held-out patients: the site refuses to report metrics
    release: str = "dp"            # dp: noised, accounted metrics | exact: only where the site trusts the coordinator
    noise_multiplier: float = 5.0  # std of the Gaussian noise on each count of a DP metrics release
    max_per_run: int = 50          # evaluation requests answered per run; further ones are declined


@dataclass(frozen=True)
class SiteLimits:
    """The most a coordinator may ask of this site; a request beyond any of them is refused (602)."""

    max_rounds: int = 1000
    max_local_epochs: int = 100
    max_steps_per_run: int = 10000       # rounds x local_epochs x ceil(patients / batch_size)
    max_image_size: int = 512
    max_note_buckets: int = 1 << 20
    max_note_tokens: int = 4096
    max_model_parameters: int = 20_000_000
    max_proximal_mu: float = 100.0       # FedProx's strategy.proximal_mu (0: no proximal term accepted)
    max_threads: int | None = None       # null: the machine's CPU count
    max_data_memory_mb: int = 4096       # the site's arrays (images: patients x size^2 x 4 bytes, twice)
    max_batch_memory_mb: int = 4096      # activations of one expected Poisson batch
    cache_mb: int = 4096                 # preprocessing cache quota (least recently used entries go first)
    max_ledger_mechanisms: int = 64      # distinct (sigma, q) pairs a dataset's lifetime may compose
    max_table_rows: int = 5_000_000      # rows (CSV/JSONL records) of one site table: labels, manifest, labs, notes
    max_table_mb: int = 512              # MiB of one table: CSV/JSONL file size, Parquet's needed columns as text (held in memory)
    max_dicom_file_mb: int = 1024        # MiB of one DICOM file on disk (checked before it is opened)
    max_dicom_frame_mb: int = 64         # MiB of one decoded frame, and of one compressed frame's bytes
    max_dicom_pixel_data_mb: int = 2048  # MiB of all frames as declared (rows x columns x frames x samples x bits)


@dataclass(frozen=True)
class SiteFileConfig:
    """site.yaml: configuration the site owns; the coordinator never sends or sees it."""

    lab_codes: tuple[LocalLabCode, ...] = ()
    # A released lab feature file (configs/data/<name>.yaml) this site's labs follow instead of the
    # default catalogue's (null: the default); the coordinator selects the same one (data=<name>).
    lab_features: str | None = None
    lab_units: tuple[LabUnit, ...] = ()
    privacy: PrivacyPolicy | None = None  # None: no policy written; the built-in PrivacyPolicy() applies
    validation: ValidationSplit = field(default_factory=ValidationSplit)
    limits: SiteLimits = field(default_factory=SiteLimits)
    # What the data means: the released catalogue (configs/data) with site.yaml's `data:` section
    # applied (window, frame policy, lab window). Set by client.site_file.read_site_file.
    data: DataConfig | None = None

    @property
    def policy(self) -> PrivacyPolicy:
        """The policy in force: the site's own, else the conservative built-in default."""
        return self.privacy or PrivacyPolicy()
