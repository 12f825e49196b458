"""Site data ingestion: a hospital's export folder -> arrays for training, and the readiness check.

Parts:
- `tables/` reads CSV / Parquet / JSON Lines as text within the site's caps; `labels`,
  `manifest`, `labs` (with `lab_units`), `notes` turn each table into per-patient values,
  counting every row they cannot use by reason; `findings` keeps those counts and where each was.
- `imaging/` reads and decodes DICOM (`dicom`, `pixels`, `reasons`) through a per-file cache
  (`cache`) kept within the site's quota (`quota`).
- `loader` puts the parts together (`load_site`); `errors` holds the one exception that stops a site.
- `readiness/` is `fedclinic site check`: the verdict, its console view and the shareable report.

`load_site`, `LoadReport`, `SiteArrays` and `SiteDataError` are importable from here. The loader's
names are resolved on first use (PEP 562), so that importing `client.site_data.errors`, as every
`fedclinic` command does to report a site data error, does not import the DICOM decoders (~3 s).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from client.site_data.errors import SiteDataError

if TYPE_CHECKING:
    from client.site_data.loader import LoadReport, SiteArrays, load_site

__all__ = ["LoadReport", "SiteArrays", "SiteDataError", "load_site"]
_FROM_LOADER = frozenset({"LoadReport", "SiteArrays", "load_site"})


def __getattr__(name: str) -> object:
    if name in _FROM_LOADER:
        return getattr(import_module("client.site_data.loader"), name)
    raise AttributeError(f"module 'client.site_data' has no attribute {name!r}")
