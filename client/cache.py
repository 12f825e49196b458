"""Preprocessed site arrays cached on the site's disk, keyed by file contents + preprocessing.

Later rounds and epochs load the arrays instead of decoding DICOM again. Writes go to a
temporary file that is fsynced and renamed, so two processes starting at once both end up
with a complete cache entry and a reader never sees a partial one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from client.site_data import LoadReport, SiteArrays, load_site
from configs.schema import DataConfig
from storage.atomic import write_atomic

CACHE_VERSION = "1"


def site_fingerprint(site: Path, cfg: DataConfig) -> str:
    """SHA-256 over every site file's relative path and content, and the preprocessing config."""
    digest = hashlib.sha256(CACHE_VERSION.encode())
    prep = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "root"}
    digest.update(json.dumps(prep, sort_keys=True).encode())
    for path in sorted(p for p in site.rglob("*") if p.is_file() and not _hidden(p, site)):
        digest.update(str(path.relative_to(site)).encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _hidden(path: Path, site: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(site).parts)


def _report_json(report: LoadReport) -> bytes:
    raw = {f.name: getattr(report, f.name) for f in dataclasses.fields(LoadReport)}
    return json.dumps({k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}, sort_keys=True).encode()


def _report_from(raw: dict[str, object]) -> LoadReport:
    counters = {k: Counter(v) for k, v in raw.items() if isinstance(v, dict) and k != "coverage"}
    return LoadReport(patients=int(raw["patients"]), coverage=dict(raw["coverage"]), **counters)  # type: ignore[arg-type]


def load_site_cached(site: Path, cfg: DataConfig, cache_dir: Path) -> tuple[SiteArrays, LoadReport, bool]:
    """The site's arrays and load report; the bool says whether the cache served them."""
    key = site_fingerprint(site, cfg)
    arrays_path, report_path = cache_dir / f"{key}.npz", cache_dir / f"{key}.json"
    if arrays_path.is_file() and report_path.is_file():
        try:
            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = SiteArrays(**{f.name: npz[f.name] for f in dataclasses.fields(SiteArrays)})
            return arrays, _report_from(json.loads(report_path.read_text())), True
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            pass  # a damaged entry is rebuilt below
    arrays, report = load_site(site, cfg)
    cache_dir.mkdir(parents=True, exist_ok=True)
    buffer = _npz_bytes(arrays)
    write_atomic(arrays_path, buffer)
    write_atomic(report_path, _report_json(report))
    return arrays, report, False


def _npz_bytes(arrays: SiteArrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **dataclasses.asdict(arrays))
    return buffer.getvalue()
