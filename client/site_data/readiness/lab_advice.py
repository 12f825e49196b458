"""`fedclinic site check`'s advice on labs: what site IT can do about dropped or clipped values.

Every piece of advice leads to a configuration that loads (docs/site-data.md, "labs").
"""

from __future__ import annotations

from collections.abc import Mapping

from client.site_data.labs import CLIP_SD, UNCONFIGURED_CODE, clipped_reason

# More than this share of a feature's used values beyond ±CLIP_SD reference sd: under a fitting
# reference (roughly normal values) fewer than 1e-6 would be; 1 % allows for skewed labs.
MAX_CLIPPED_SHARE = 0.01


def _rows(n: int, one: str = "has", many: str = "have") -> str:
    """'1 lab row has', '3 lab rows have'."""
    return f"{n} lab row {one}" if n == 1 else f"{n} lab rows {many}"


def lab_warnings(dropped: Mapping[str, int], clipped: Mapping[str, int], used: Mapping[str, int]) -> list[str]:
    """Warnings from a LoadReport's lab_rows_dropped, lab_values_clipped and lab_values_used."""
    out = []
    unconfigured = dropped.get(UNCONFIGURED_CODE, 0)
    if unconfigured:
        out.append(f"{_rows(unconfigured)} codes that are not the model's lab features. A site-local code "
                   "for a configured feature: map it in site.yaml lab_codes. A dataset whose lab features are not "
                   "in the catalogue (not LOINC): the federation releases a lab feature file "
                   "(configs/data/<name>.yaml, example: configs/data/example_local_codes.yaml), the coordinator "
                   "selects it with data=<name>, and each site names it in site.yaml lab_features "
                   "(check with: fedclinic site check <folder> data=<name>); see docs/site-data.md")
    units = sum(n for reason, n in dropped.items() if reason.startswith("unit not convertible for "))
    if units:
        out.append(f"{_rows(units, 'is', 'are')} in units the catalogue does not convert: add each unit of a "
                   "configured feature to site.yaml lab_units, as a spelling of a catalogue unit (same_as) or with "
                   "its factor to the canonical unit (factor); see docs/site-data.md")
    for code, n_used in sorted(used.items()):
        n = clipped.get(clipped_reason(code), 0)
        if n_used and n / n_used > MAX_CLIPPED_SHARE:
            out.append(f"{n} of {n_used} {code} values ({100 * n / n_used:.1f} %) lie beyond ±{CLIP_SD:g} reference "
                       f"SD and reach the model clipped: the catalogue's reference mean/sd for {code} look wrong "
                       "for this site's data (or its unit is misreported); tell the central team")
    return out
