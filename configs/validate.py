"""Range and choice checks on a parsed ExperimentConfig; each error names the field.

The upper bounds are the release's hard maxima (RELEASE_MAXIMA): beyond them no value is valid,
at the coordinator or at a site. Each site may set lower limits in its site.yaml (`limits:`,
client/recipe.py); these maxima are also the defaults of those limits.
"""

from __future__ import annotations

import math

from configs.parse import ConfigError
from configs.schema import ExperimentConfig

OPTIMIZERS = ("adam", "sgd")
ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("bk", "hooks", "ghost", "ew")
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedtrimmedavg", "fedmedian",
              "multikrum")
DEVICES = ("auto", "cpu", "cuda")
FRAME_POLICIES = ("middle", "first", "mean")

# The release's hard maxima; a site's site.yaml limits can only be lower.
RELEASE_MAXIMA = {
    "rounds": 100_000, "train.local_epochs": 10_000, "train.batch_size": 10_000_000,
    "train.lr": 1000.0, "train.num_threads": 1024, "data.image_size": 512, "data.note_buckets": 1 << 20,
    "data.note_max_tokens": 4096, "model.width": 4096, "model.conv_layers": 8,
    "privacy.target_epsilon": 100.0, "privacy.max_grad_norm": 1e6, "strategy.round_timeout": 86_400.0,
    "strategy.proximal_mu": 100.0, "strategy.min_sites": 100_000,
}


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}", field=field)


def _in_range(value: float, low: float, high: float, field: str, *, low_open: bool = False) -> None:
    above = value > low if low_open else value >= low
    _require(math.isfinite(value) and above and value <= high, field,
             f"must be in {'(' if low_open else '['}{low:g}, {high:g}] (got {value})")


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the first field whose value cannot work."""
    m = RELEASE_MAXIMA
    _in_range(cfg.rounds, 1, m["rounds"], "rounds")
    _require(0 <= cfg.seed < 2**63, "seed", "must be in [0, 2^63)")
    _validate_data(cfg)
    widths = (*cfg.model.image_channels, cfg.model.lab_hidden, cfg.model.note_dim, cfg.model.embed_dim,
              *((cfg.model.fusion_hidden,) if cfg.model.fusion_hidden else ()))  # 0: a linear head
    _require(1 <= len(cfg.model.image_channels) <= m["model.conv_layers"], "model.image_channels",
             f"needs 1 to {m['model.conv_layers']} conv layers")
    _require(all(1 <= w <= m["model.width"] for w in widths), "model",
             f"every width (channels, hidden sizes, dims) must be in [1, {m['model.width']}] "
             f"(model.fusion_hidden may also be 0: a linear head)")
    t = cfg.train
    _in_range(t.local_epochs, 1, m["train.local_epochs"], "train.local_epochs")
    _in_range(t.batch_size, 1, m["train.batch_size"], "train.batch_size")
    _in_range(t.lr, 0, m["train.lr"], "train.lr", low_open=True)
    _require(math.isfinite(t.momentum) and 0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    _require(t.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}")
    _require(t.device in DEVICES, "train.device", f"must be one of {DEVICES}")
    _in_range(t.num_threads, 1, m["train.num_threads"], "train.num_threads")
    p = cfg.privacy
    _in_range(p.target_epsilon, 0, m["privacy.target_epsilon"], "privacy.target_epsilon", low_open=True)
    _require(math.isfinite(p.target_delta) and 0 < p.target_delta < 1, "privacy.target_delta", "must be in (0, 1)")
    _in_range(p.max_grad_norm, 0, m["privacy.max_grad_norm"], "privacy.max_grad_norm", low_open=True)
    _require(p.accountant in ACCOUNTANTS, "privacy.accountant", f"must be one of {ACCOUNTANTS}")
    _require(p.grad_sample_mode in GRAD_SAMPLE_MODES, "privacy.grad_sample_mode",
             f"must be one of {GRAD_SAMPLE_MODES}")
    s = cfg.strategy
    _require(s.name in STRATEGIES, "strategy.name", f"must be one of {STRATEGIES}")
    _require(0 < s.fraction <= 1, "strategy.fraction", "must be in (0, 1]")
    _require(0 <= s.fraction_evaluate <= 1, "strategy.fraction_evaluate", "must be in [0, 1]")
    _in_range(s.min_sites, 1, m["strategy.min_sites"], "strategy.min_sites")
    _in_range(s.round_timeout, 1, m["strategy.round_timeout"], "strategy.round_timeout")
    _in_range(s.proximal_mu, 0, m["strategy.proximal_mu"], "strategy.proximal_mu")
    _in_range(s.server_lr, 0, 10.0, "strategy.server_lr", low_open=True)
    _require(math.isfinite(s.beta_1) and 0 <= s.beta_1 < 1, "strategy.beta_1", "must be in [0, 1)")
    _require(math.isfinite(s.beta_2) and 0 <= s.beta_2 < 1, "strategy.beta_2", "must be in [0, 1)")
    _in_range(s.tau, 0, 1.0, "strategy.tau", low_open=True)
    _require(math.isfinite(s.trim_beta) and 0 <= s.trim_beta < 0.5, "strategy.trim_beta", "must be in [0, 0.5)")
    _in_range(s.byzantine_sites, 0, 1000, "strategy.byzantine_sites")
    _in_range(s.krum_keep, 0, 100_000, "strategy.krum_keep")
    if s.max_update_norm is not None:
        _in_range(s.max_update_norm, 0, 1e12, "strategy.max_update_norm", low_open=True)
    _in_range(s.outlier_factor, 1, 1e12, "strategy.outlier_factor")
    e = cfg.evaluation
    _require(math.isfinite(e.threshold) and 0 < e.threshold < 1, "evaluation.threshold", "must be in (0, 1)")
    _in_range(e.min_cell, 1, 1_000_000, "evaluation.min_cell")
    _require(cfg.simulation.cpus_per_site >= 1, "simulation.cpus_per_site", "must be an integer >= 1")


def _validate_data(cfg: ExperimentConfig) -> None:
    d, m = cfg.data, RELEASE_MAXIMA
    _in_range(d.image_size, 8, m["data.image_size"], "data.image_size")
    _in_range(d.note_buckets, 2, m["data.note_buckets"], "data.note_buckets")
    _in_range(d.note_max_tokens, 1, m["data.note_max_tokens"], "data.note_max_tokens")
    validate_data_meaning(d)


def validate_data_meaning(d: object) -> None:
    """Checks on what the data means (the catalogue, or a site's own version of it)."""
    from configs.schema import DataConfig
    assert isinstance(d, DataConfig)
    _require((d.window_center is None) == (d.window_width is None), "data.window_width",
             "set window_center and window_width together, or neither")
    _require(d.window_width is None or (math.isfinite(d.window_width) and d.window_width > 0),
             "data.window_width", "must be a finite number > 0")
    _require(d.window_center is None or math.isfinite(d.window_center), "data.window_center", "must be finite")
    _require(d.frame_policy in FRAME_POLICIES, "data.frame_policy", f"must be one of {FRAME_POLICIES}")
    _require(d.lab_window_hours is None or (math.isfinite(d.lab_window_hours) and d.lab_window_hours > 0),
             "data.lab_window_hours", "must be > 0 or null")
    _require(len(d.labs) >= 1, "data.labs", "configure at least one lab feature")
    codes = [f.code for f in d.labs]
    _require(len(set(codes)) == len(codes), "data.labs", "lab codes must be unique")
    for i, lab in enumerate(d.labs):
        _require(math.isfinite(lab.ref_mean), f"data.labs[{i}].ref_mean", "must be finite")
        _require(math.isfinite(lab.ref_sd) and lab.ref_sd > 0, f"data.labs[{i}].ref_sd", "must be > 0")
        _require(math.isfinite(lab.low) and math.isfinite(lab.high) and lab.low <= lab.high,
                 f"data.labs[{i}].low", "low and high must be finite with low <= high")
        _require(lab.unit in lab.conversions, f"data.labs[{i}].conversions",
                 f"must include the canonical unit {lab.unit!r} (factor 1.0)")
        _require(all(math.isfinite(f) and f > 0 for f in lab.conversions.values()),
                 f"data.labs[{i}].conversions", "factors must be finite numbers > 0")
