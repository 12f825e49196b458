"""A site folder (manifest, DICOM, labs, notes, labels) -> arrays ready for training.

Format (see README "Site data format"):
    manifest.csv  patient_id,image_path   (path relative to the site folder)
    labs.csv      patient_id,code,value,unit,time
    notes.csv     patient_id,text
    labels.csv    patient_id,label        (0/1; the patients of the site)
Any of manifest/labs/notes may be absent; labels.csv is required.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from client.dicom_image import UnusableImage, read_image
from client.labs import lab_matrix
from client.notes import encode
from configs.schema import DataConfig

LABELS, MANIFEST, LABS, NOTES = "labels.csv", "manifest.csv", "labs.csv", "notes.csv"


class SiteDataError(Exception):
    """The site cannot train at all; the message names the file and what to do."""


@dataclass
class SiteArrays:
    """All patients of a site as arrays (no identifiers) plus the train/validation split."""

    image: np.ndarray          # [N, S, S] float32 in [0, 1], zeros where missing
    labs: np.ndarray           # [N, F] float32 standardised
    lab_mask: np.ndarray       # [N, F] float32
    tokens: np.ndarray         # [N, L] int64, 0 = padding
    modality_mask: np.ndarray  # [N, 3] float32: image, labs, notes
    label: np.ndarray          # [N] float32
    is_val: np.ndarray         # [N] bool


@dataclass
class LoadReport:
    """Aggregate counts only: safe to show to the central team."""

    patients: int = 0
    coverage: dict[str, int] = field(default_factory=dict)
    unusable_images: Counter[str] = field(default_factory=Counter)
    lab_rows_dropped: Counter[str] = field(default_factory=Counter)
    unit_conversions: Counter[str] = field(default_factory=Counter)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SiteDataError(f"{path.name}: cannot be read as UTF-8 CSV ({type(exc).__name__})") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SiteDataError(f"{path.name}: missing column(s) {missing}; expected {list(columns)}")
    return frame


def read_labels(site: Path) -> tuple[list[str], np.ndarray]:
    """Patient ids (sorted, unique) and 0/1 labels; a site without usable labels cannot train."""
    path = site / LABELS
    if not path.is_file():
        raise SiteDataError(f"{path}: labels file is missing; export patient_id,label for every patient")
    frame = _read_csv(path, ("patient_id", "label"))
    frame = frame[frame["label"].str.strip().isin(["0", "1"])].drop_duplicates("patient_id", keep=False)
    if frame.empty:
        raise SiteDataError(f"{path}: no patient has a 0/1 label in column 'label'")
    frame = frame.sort_values("patient_id")
    return frame["patient_id"].tolist(), frame["label"].astype(np.float32).to_numpy()


def validation_mask(patient_ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Deterministic split by a hash of (seed, patient id): stable when patients are added."""
    def unit(pid: str) -> float:
        digest = hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64
    return np.array([unit(p) < fraction for p in patient_ids], dtype=bool)


def _inside(site: Path, relative: str) -> Path | None:
    candidate = (site / relative).resolve()
    return candidate if candidate.is_relative_to(site.resolve()) else None


def _images(site: Path, ids: list[str], cfg: DataConfig, report: LoadReport
            ) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((len(ids), cfg.image_size, cfg.image_size), dtype=np.float32)
    present = np.zeros(len(ids), dtype=bool)
    if not (site / MANIFEST).is_file():
        return out, present
    index = {pid: i for i, pid in enumerate(ids)}
    window = None if cfg.window_center is None else (cfg.window_center, cfg.window_width or 0.0)
    manifest = _read_csv(site / MANIFEST, ("patient_id", "image_path"))
    for pid, rel in zip(manifest["patient_id"], manifest["image_path"]):
        if pid not in index or present[index[pid]]:
            continue
        path = _inside(site, rel)
        if path is None:
            report.unusable_images["path outside the site folder"] += 1
            continue
        try:
            out[index[pid]] = read_image(path, size=cfg.image_size, window=window)
            present[index[pid]] = True
        except UnusableImage as bad:
            report.unusable_images[bad.reason] += 1
    return out, present


def _notes(site: Path, ids: list[str], cfg: DataConfig) -> np.ndarray:
    tokens = np.zeros((len(ids), cfg.note_max_tokens), dtype=np.int64)
    if not (site / NOTES).is_file():
        return tokens
    index = {pid: i for i, pid in enumerate(ids)}
    notes = _read_csv(site / NOTES, ("patient_id", "text"))
    for pid, text in zip(notes["patient_id"], notes["text"]):
        if pid in index and not tokens[index[pid]].any():
            tokens[index[pid]] = encode(text, buckets=cfg.note_buckets, max_tokens=cfg.note_max_tokens)
    return tokens


def load_site(site: Path, cfg: DataConfig) -> tuple[SiteArrays, LoadReport]:
    """Decode and preprocess a whole site; bad files are counted, never fatal."""
    ids, label = read_labels(site)
    report = LoadReport(patients=len(ids))
    image, has_image = _images(site, ids, cfg, report)
    labs_frame = _read_csv(site / LABS, ("patient_id", "code", "value", "unit", "time")) \
        if (site / LABS).is_file() else pd.DataFrame(columns=["patient_id", "code", "value", "unit", "time"])
    labs, lab_mask, lab_counts = lab_matrix(labs_frame, ids, cfg.labs)
    report.lab_rows_dropped, report.unit_conversions = lab_counts.dropped, lab_counts.converted
    tokens = _notes(site, ids, cfg)
    modality = np.stack([has_image, lab_mask.any(axis=1), tokens.any(axis=1)], axis=1).astype(np.float32)
    report.coverage = {name: int(modality[:, k].sum()) for k, name in enumerate(("image", "labs", "notes"))}
    arrays = SiteArrays(image, labs, lab_mask, tokens, modality, label,
                        validation_mask(ids, cfg.val_fraction, cfg.split_seed))
    return arrays, report
