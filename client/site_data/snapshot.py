"""One file holding a loaded site's arrays, so another process of the same site skips the load.

A simulation's Ray actors each serve whichever virtual site comes next, and a deployed site's
runner may restart: without this, each of them would rebuild the site from its tables and the
per-image cache (3,676 small files for 2,000 synthetic patients, seconds). The snapshot is one
uncompressed .npz (numpy's own format, read with allow_pickle=False) in the site's preprocessing
cache folder, mode 0600 like every cache entry, replaced whenever the site is loaded again: one
per cache folder, never more (2,000 patients at 64 x 64: 37 MB; at most the site's
limits.max_data_memory_mb, which a load already has to fit).

It is used only when its digest matches the request's exactly: the snapshot format, the loader's
own source code, the image decoders available (client.site_data.imaging.cache.decoder_environment),
the site folder, the data settings, the site's configuration and the fingerprint of every file
under the site folder (client/site_data/fingerprint.py). Anything else, a damaged file or
arrays of inconsistent shapes or types, is a miss, and the site is loaded from its files.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np

from client.site_data.imaging.cache import decoder_environment
from client.site_data.loader import SiteArrays
from storage.atomic import write_atomic

SNAPSHOT_FILE = "site-arrays.npz"
SNAPSHOT_FORMAT = "2"
_KINDS = {"image": ("f4", 3), "labs": ("f4", 2), "lab_mask": ("f4", 2), "tokens": ("i8", 2),
          "modality_mask": ("f4", 2), "label": ("f4", 1), "is_val": ("b1", 1),
          "is_test": ("b1", 1)}
_LOADER_CODE = Path(__file__).resolve().parent  # client/site_data/, and client/split.py beside it


def snapshot_digest(description: str, fingerprint: str) -> str:
    """What a snapshot must have been made from: `description` (the site folder and every
    setting of the load, as text) and the files' `fingerprint`, under this code and decoders."""
    digest = hashlib.blake2b(digest_size=32)
    for part in (SNAPSHOT_FORMAT, decoder_environment(), description, fingerprint):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    for source in sorted([*_LOADER_CODE.rglob("*.py"), _LOADER_CODE.parent / "split.py"]):
        digest.update(source.read_bytes() + b"\0")
    return digest.hexdigest()


def write_snapshot(cache_dir: Path, digest: str, patients: int, arrays: SiteArrays) -> None:
    """Replace the cache folder's snapshot (a read-only or full disk only costs speed)."""
    buffer = io.BytesIO()
    np.savez(buffer, digest=np.array(digest), patients=np.array(patients, dtype=np.int64),
             **{f.name: getattr(arrays, f.name) for f in fields(arrays)})
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(cache_dir / SNAPSHOT_FILE, buffer.getvalue(), mode=0o600)
    except OSError:
        pass


def read_snapshot(cache_dir: Path, digest: str) -> tuple[int, SiteArrays] | None:
    """(labelled patients, arrays) from the snapshot made for exactly `digest`, else None."""
    try:
        with np.load(cache_dir / SNAPSHOT_FILE, allow_pickle=False) as saved:
            if str(saved["digest"]) != digest:
                return None
            patients = int(saved["patients"])
            values = {name: saved[name] for name in _KINDS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    rows = {len(v) for v in values.values()}
    consistent = all(values[n].dtype == np.dtype(k) and values[n].ndim == d for n, (k, d) in _KINDS.items())
    if len(rows) != 1 or not consistent or values["modality_mask"].shape[1:] != (3,):
        return None
    return patients, SiteArrays(**values)
