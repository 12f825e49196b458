"""Who this site is and where its files live, from the SuperNode's node config.

Deployed: node config `data-path` (required), `site-name`, `state-dir`, `site-config`,
`ledger-mark-dir` (optional). Simulation: virtual site `partition-id` serves the partition-id-th
site folder under data.root. The state folder (cache, privacy ledger) defaults to
<parent>/.fedclinic-state/<site folder>; the site-owned configuration file defaults to
<site folder>/site.yaml; the ledger's high-water marks live outside the state folder
(privacy.ledger_marks.default_mark_dir(): FEDCLINIC_LEDGER_MARK_DIR, else ~/.local/state/...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from client.site_data.errors import SiteDataError
from privacy.ledger_marks import default_mark_dir

SITE_FILE = "site.yaml"


@dataclass(frozen=True)
class SiteSettings:
    """A site's identity (a name, never patient data) and its folders."""

    name: str
    data_dir: Path
    state_dir: Path
    site_file: Path
    site_file_explicit: bool = False  # named in the node config: it must exist
    mark_dir: Path | None = None      # the ledger's high-water marks (None: the default store)

    @property
    def cache_dir(self) -> Path:
        """Preprocessed images, keyed by file content and preprocessing settings."""
        return self.state_dir / "cache"


def discover_sites(root: Path) -> list[Path]:
    """Site folders under a simulation root: its non-hidden subfolders, sorted by name."""
    if not root.is_dir():
        raise SiteDataError(f"data.root {root} is not a folder; point it at a folder of site folders")
    sites = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sites:
        raise SiteDataError(f"data.root {root} has no site folders (e.g. run `fedclinic synth --out {root}`)")
    return sites


def _default_state(data_dir: Path) -> Path:
    return data_dir.parent / ".fedclinic-state" / data_dir.name


def site_settings(node_config: Mapping[str, object], data_root: str | None) -> SiteSettings:
    """Resolve this site's settings; the node config (owned by the site) always wins."""
    if "data-path" in node_config:
        data_dir = Path(str(node_config["data-path"])).expanduser().resolve()
        name = str(node_config.get("site-name", data_dir.name))
        state = node_config.get("state-dir")
        site_file = node_config.get("site-config")
        marks = node_config.get("ledger-mark-dir")
        return SiteSettings(name, data_dir, Path(str(state)).resolve() if state else _default_state(data_dir),
                            Path(str(site_file)).resolve() if site_file else data_dir / SITE_FILE,
                            site_file_explicit=bool(site_file),
                            mark_dir=Path(str(marks)).expanduser().resolve() if marks else default_mark_dir())
    if "partition-id" in node_config:
        if not data_root:
            raise SiteDataError("simulation needs data.root (a folder of site folders)")
        sites = discover_sites(Path(data_root))
        index, count = int(str(node_config["partition-id"])), int(str(node_config["num-partitions"]))
        if count != len(sites):
            raise SiteDataError(f"{count} virtual sites but {len(sites)} site folders under {data_root}")
        return SiteSettings(sites[index].name, sites[index], _default_state(sites[index]),
                            sites[index] / SITE_FILE, mark_dir=default_mark_dir())
    raise SiteDataError("node config has no data-path: start the SuperNode with "
                        "--node-config 'data-path=\"/path/to/site\"'")
