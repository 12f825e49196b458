"""The exact (non-DP) validation AUROC of a run's global model at each synthetic site.

    python bench/exact_auroc.py RUN_FOLDER [SITES_FOLDER]

RUN_FOLDER is `runs/<run-id>/` (its config.yaml and global_model.pt); SITES_FOLDER defaults to
`fedclinic-demo/sites`. For the demo only: it reads every site's data, which in a deployment only
the site itself may do. It prints each site's exact AUROC on its held-out patients (the split in
its site.yaml) and the pooled AUROC over all of them, so the DP release the run printed can be
compared with the value it estimates.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from client.metrics import auroc
from client.site import discover_sites
from client.site_data.loader import load_site
from client.site_file import read_site_file
from client.trainer import evaluate, split_dataset
from configs.parse import parse_dataclass
from configs.schema import ExperimentConfig
from configs.validate import validate_experiment
from model.networks import build_model
from server.run_folder import CHECKPOINT, CONFIG, load_checkpoint


def main(run_dir: Path, sites_dir: Path) -> int:
    cfg = parse_dataclass(ExperimentConfig, yaml.safe_load((run_dir / CONFIG).read_text()))
    validate_experiment(cfg)
    round_, state = load_checkpoint(run_dir / CHECKPOINT)
    model = build_model(cfg.model, num_labs=len(cfg.data.labs), note_buckets=cfg.data.note_buckets, seed=cfg.seed)
    model.load_state_dict(state)
    labels, scores = [], []
    with tempfile.TemporaryDirectory() as cache:
        for site in discover_sites(sites_dir):
            site_file = read_site_file(site / "site.yaml", cfg.data)
            data = dataclasses.replace(site_file.data or cfg.data, image_size=cfg.data.image_size)
            arrays, _ = load_site(site, data, cache_dir=Path(cache) / site.name, site_file=site_file)
            outcome = evaluate(model, split_dataset(arrays, validation=True), device=torch.device("cpu"))
            print(f"{site.name}: exact AUROC {outcome.auroc:.3f} on {outcome.num_examples} held-out patients")
            labels.append(outcome.labels)
            scores.append(outcome.probabilities)
    pooled = auroc(np.concatenate(labels), np.concatenate(scores))
    print(f"pooled over all sites: exact AUROC {pooled:.3f} (global model after round {round_})")
    return 0


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else Path("fedclinic-demo/sites")))
