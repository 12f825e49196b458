"""What every message of a run would otherwise re-derive, kept for the life of one process.

A SiteCache holds:
- composed experiment configs by override string (Hydra composition costs 0.3-1 s, and every
  message of a run carries the same string); a ConfigError is never cached;
- the site's AccountingCache (privacy/accounting_cache.py: Opacus' epsilons, bit for bit, with
  each mechanism's RDP curve computed once);
- the loaded arrays of the sites this process serves, each keyed by everything the load
  depends on: the site and cache folders, the data settings, the site's own configuration, and
  a fingerprint of the site folder's files (client/site_data/fingerprint.py). A changed file,
  setting or site.yaml is a miss, and the site is loaded again, replacing its old entry.
  Bounded by count and by bytes (least recently used first out; defaults 8 sites, 512 MiB): a
  deployed site's process serves one site, so it holds one entry; a simulation's Ray actor
  serves whichever virtual site comes next (3 sites on 2 actors in the demo), so it must hold
  every site of a small federation to reuse any (2,000 patients at 64 x 64: 37 MB each).
  A process that has not loaded a site yet first looks for the snapshot another process of the
  same site left in its cache folder (client/site_data/snapshot.py: one file, used only for
  exactly the same files, settings and loader code), and each load leaves one.

This is process state, on purpose and in one place: client/app.py's ClientApp object owns the
one SiteCache of a process (a deployed site's task runner and a simulation's Ray actors are
long-lived and call that ClientApp for every message); everything else receives it as an
argument. The arrays it hands out are read-only (numpy `writeable=False`), so no message can
change what the next one sees. Thread-safe (one lock; a load happens outside it).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, fields
from pathlib import Path

from client.site_data.loader import SiteArrays
from client.site_data.snapshot import read_snapshot, snapshot_digest, write_snapshot
from configs.load import load_experiment, split_overrides
from configs.schema import DataConfig, ExperimentConfig, SiteFileConfig
from privacy.accounting_cache import AccountingCache


@dataclass(frozen=True)
class SiteKey:
    """Everything a site load depends on besides its files' contents."""

    data_dir: Path
    cache_dir: Path
    data: DataConfig
    site_file: SiteFileConfig


@dataclass(frozen=True)
class CachedSite:
    """A site as loaded: its labelled-patient count and its arrays (read-only)."""

    fingerprint: str
    patients: int
    arrays: SiteArrays


class SiteCache:
    """Per-process memo of composed configs and loaded sites (see the module docstring)."""

    def __init__(self, *, sites: int = 8, max_bytes: int = 512 << 20, configs: int = 4) -> None:
        if sites < 1 or configs < 1 or max_bytes < 0:
            raise ValueError("a SiteCache keeps at least one site and one config, in a non-negative budget")
        self._max_sites, self._max_bytes, self._max_configs = sites, max_bytes, configs
        self._sites: list[tuple[SiteKey, CachedSite]] = []  # most recently used last
        self._configs: OrderedDict[str, ExperimentConfig] = OrderedDict()
        self._lock = threading.Lock()
        self.accounting = AccountingCache()

    @property
    def loaded_sites(self) -> int:
        """Sites whose arrays are kept."""
        return len(self._sites)

    def experiment(self, overrides: str) -> ExperimentConfig:
        """configs/ composed with `overrides` (configs.load.load_experiment), composed once per
        distinct string. Raises ConfigError as load_experiment does (never cached)."""
        with self._lock:
            if overrides in self._configs:
                self._configs.move_to_end(overrides)
                return self._configs[overrides]
        cfg = load_experiment(split_overrides(overrides))
        with self._lock:
            self._configs[overrides] = cfg
            while len(self._configs) > self._max_configs:
                self._configs.popitem(last=False)
        return cfg

    def site(self, key: SiteKey, fingerprint: str) -> CachedSite | None:
        """The site loaded under `key` if its files still have `fingerprint`: from this process's
        memory, else from the snapshot another process of the site left (client/site_data/
        snapshot.py); None when neither matches."""
        with self._lock:
            for i, (k, entry) in enumerate(self._sites):
                if k == key and entry.fingerprint == fingerprint:
                    self._sites.append(self._sites.pop(i))
                    return entry
        found = read_snapshot(key.cache_dir, snapshot_digest(_describe(key), fingerprint))
        return None if found is None else self._remember(key, fingerprint, *found)

    def keep(self, key: SiteKey, fingerprint: str, patients: int, arrays: SiteArrays) -> CachedSite:
        """Remember a load: in memory (see _remember) and as the site's snapshot on disk."""
        write_snapshot(key.cache_dir, snapshot_digest(_describe(key), fingerprint), patients, arrays)
        return self._remember(key, fingerprint, patients, arrays)

    def _remember(self, key: SiteKey, fingerprint: str, patients: int, arrays: SiteArrays) -> CachedSite:
        """Keep a site in memory (its arrays made read-only), replacing any entry of the same site
        and folders and dropping the least recently used beyond the count or the byte budget (a
        load larger than the whole budget is not kept)."""
        for f in fields(arrays):
            getattr(arrays, f.name).flags.writeable = False
        entry = CachedSite(fingerprint, patients, arrays)
        with self._lock:
            self._sites = [(k, e) for k, e in self._sites
                           if (k.data_dir, k.cache_dir) != (key.data_dir, key.cache_dir)]
            self._sites.append((key, entry))
            while self._sites and (len(self._sites) > self._max_sites or self._bytes() > self._max_bytes):
                self._sites.pop(0)
        return entry

    def _bytes(self) -> int:
        return sum(_nbytes(e.arrays) for _, e in self._sites)


def _describe(key: SiteKey) -> str:
    """The load's inputs besides file contents, as text (dataclass reprs: every field, in order)."""
    return f"{key.data_dir}\n{key.cache_dir}\n{key.data!r}\n{key.site_file!r}"


def _nbytes(arrays: SiteArrays) -> int:
    """Bytes a site's arrays hold."""
    return sum(getattr(arrays, f.name).nbytes for f in fields(arrays))
