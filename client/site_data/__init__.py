"""Site data ingestion: a hospital's export folder -> arrays for training, and the readiness check.

Parts:
- `tables/` reads CSV / Parquet / JSON Lines as text within the site's caps; `labels`,
  `manifest`, `labs` (with `lab_units`), `notes` turn each table into per-patient values,
  counting every row they cannot use by reason; `findings` keeps those counts and where each was.
- `imaging/` reads and decodes DICOM (`dicom`, `pixels`, `reasons`) through a per-file cache
  (`cache`) kept within the site's quota (`quota`).
- `loader` puts the parts together (`load_site`); `errors` holds the one exception that stops a site.
- `readiness/` is `fedclinic site check`: the verdict, its console view and the shareable report.

`load_site`, `LoadReport`, `SiteArrays` and `SiteDataError` are importable from here.
"""

from client.site_data.errors import SiteDataError
from client.site_data.loader import LoadReport, SiteArrays, load_site

__all__ = ["LoadReport", "SiteArrays", "SiteDataError", "load_site"]
