"""Range and choice checks on a parsed ExperimentConfig; each error names the field."""

from __future__ import annotations

from configs.parse import ConfigError
from configs.schema import ExperimentConfig

OPTIMIZERS = ("adam", "sgd")
ACCOUNTANTS = ("prv", "rdp")
GRAD_SAMPLE_MODES = ("bk", "hooks", "ghost", "ew")
STRATEGIES = ("fedavg",)
DEVICES = ("auto", "cpu", "cuda")
FRAME_POLICIES = ("middle", "first", "mean")


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{field}: {message}")


def validate_experiment(cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the first field whose value cannot work."""
    _require(cfg.rounds >= 1, "rounds", f"must be >= 1 (got {cfg.rounds})")
    d = cfg.data
    _require(d.image_size >= 8, "data.image_size", f"must be >= 8 (got {d.image_size})")
    _require(d.note_buckets >= 2, "data.note_buckets", "must be >= 2")
    _require(d.note_max_tokens >= 1, "data.note_max_tokens", "must be >= 1")
    _require((d.window_center is None) == (d.window_width is None), "data.window_width",
             "set window_center and window_width together, or neither")
    _require(d.window_width is None or d.window_width > 0, "data.window_width", "must be > 0")
    _require(d.frame_policy in FRAME_POLICIES, "data.frame_policy", f"must be one of {FRAME_POLICIES}")
    _require(d.lab_window_hours is None or d.lab_window_hours > 0, "data.lab_window_hours", "must be > 0 or null")
    _require(len(d.labs) >= 1, "data.labs", "configure at least one lab feature")
    codes = [f.code for f in d.labs]
    _require(len(set(codes)) == len(codes), "data.labs", "lab codes must be unique")
    for i, lab in enumerate(d.labs):
        _require(lab.ref_sd > 0, f"data.labs[{i}].ref_sd", "must be > 0")
        _require(lab.unit in lab.conversions, f"data.labs[{i}].conversions",
                 f"must include the canonical unit {lab.unit!r} (factor 1.0)")
    _require(len(cfg.model.image_channels) >= 1, "model.image_channels", "needs at least one conv layer")
    t = cfg.train
    _require(t.local_epochs >= 1, "train.local_epochs", "must be >= 1")
    _require(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    _require(t.lr > 0, "train.lr", "must be > 0")
    _require(t.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {OPTIMIZERS}")
    _require(t.device in DEVICES, "train.device", f"must be one of {DEVICES}")
    _require(t.num_threads >= 1, "train.num_threads", "must be >= 1")
    p = cfg.privacy
    _require(p.target_epsilon > 0, "privacy.target_epsilon", "must be > 0")
    _require(0 < p.target_delta < 1, "privacy.target_delta", "must be in (0, 1)")
    _require(p.max_grad_norm > 0, "privacy.max_grad_norm", "must be > 0")
    _require(p.accountant in ACCOUNTANTS, "privacy.accountant", f"must be one of {ACCOUNTANTS}")
    _require(p.grad_sample_mode in GRAD_SAMPLE_MODES, "privacy.grad_sample_mode",
             f"must be one of {GRAD_SAMPLE_MODES}")
    s = cfg.strategy
    _require(s.name in STRATEGIES, "strategy.name", f"must be one of {STRATEGIES}")
    _require(0 < s.fraction_train <= 1, "strategy.fraction_train", "must be in (0, 1]")
    _require(0 <= s.fraction_evaluate <= 1, "strategy.fraction_evaluate", "must be in [0, 1]")
    _require(cfg.simulation.cpus_per_site >= 1, "simulation.cpus_per_site", "must be an integer >= 1")
