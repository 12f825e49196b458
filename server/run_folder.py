"""runs/<run-id>/: the resolved config, the global checkpoint and summary.json."""

from __future__ import annotations

import io
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from storage.atomic import write_atomic

CONFIG, CHECKPOINT, SUMMARY = "config.yaml", "global_model.pt", "summary.json"
SHARED = 0o644  # run folders are read by the central team


def new_run_id() -> str:
    """Sortable and unique: UTC time plus 4 random hex digits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def create_run_folder(root: Path) -> Path:
    """A new, empty runs/<run-id>/ folder."""
    root.mkdir(parents=True, exist_ok=True)
    while True:
        path = root / new_run_id()
        try:
            path.mkdir()
            return path.resolve()
        except FileExistsError:
            continue


def save_checkpoint(run_dir: Path, arrays: Mapping[str, np.ndarray], server_round: int, *,
                    name: str = CHECKPOINT) -> Path:
    """The global model as a torch state dict, labelled with the round that aggregated it
    (runs/<id>/global_model.pt; `name` best_model.pt for the best round's)."""
    buffer = io.BytesIO()
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    torch.save({"round": server_round, "state_dict": state}, buffer)
    path = run_dir / name
    write_atomic(path, buffer.getvalue(), mode=SHARED)
    return path


def load_checkpoint(path: Path) -> tuple[int, dict[str, torch.Tensor]]:
    """(round, state_dict) of a checkpoint written by save_checkpoint."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return int(payload["round"]), dict(payload["state_dict"])

