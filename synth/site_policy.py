"""The privacy block of a synthetic site's site.yaml (the site-owned policy)."""

from __future__ import annotations

import pathlib

HEADER = "# Site-owned configuration (written by site IT, never sent by the coordinator)"


def policy_yaml(site: str, test_fraction: float = 0.0) -> str:
    """A generous lifetime budget: synthetic data has no patients, and demos are rerun.
    `test_fraction` > 0 sets patients aside for a final test (validation.test_fraction)."""
    test = [f"  test_fraction: {test_fraction:g}      # a final test split no round reads"] if test_fraction > 0 else []
    return "\n".join([
        "privacy:                      # the site's promise per dataset; the coordinator cannot loosen it",
        f"  dataset_id: synthetic-{site}",
        "  lifetime_epsilon: 50.0      # over every run on this dataset (a real site sets far less)",
        "  lifetime_delta: 1.0e-5",
        "  run_epsilon: null           # per-run ceiling; null = the coordinator's target",
        "  min_noise_multiplier: 0.5",
        "  max_grad_norm: 10.0",
        "validation:                   # the held-out split is the site's choice, not the coordinator's",
        "  fraction: 0.2",
        "  seed: 0",
        "  min_patients: 10            # no validation metrics over fewer held-out patients",
        *test,
    ]) + "\n"


def add_policy(site_dir: pathlib.Path, test_fraction: float = 0.0) -> None:
    """Append the privacy block to site.yaml, creating the file if the site has none yet."""
    path = site_dir / "site.yaml"
    existing = path.read_text(encoding="utf-8") if path.exists() else HEADER + "\n"
    path.write_text(existing + policy_yaml(site_dir.name, test_fraction), encoding="utf-8")
