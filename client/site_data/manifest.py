"""manifest: which DICOM file or series folder belongs to which patient, confined to the site."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from client.site_data.errors import SiteDataError
from client.site_data.findings import Findings
from client.site_data.imaging.limits import over_series_cap
from client.site_data.tables import find_table, read_table
from configs.schema import SiteLimits

OUTSIDE = "path outside the site folder"
MISSING = "file listed in the manifest is missing"


def safe_path(site: Path, relative: str) -> tuple[Path | None, str | None]:
    """Resolve a manifest path; refuse absolute paths, '..' and symlinks that leave the site.

    A series folder's members are resolved only when there are at most
    client.site_data.imaging.limits.MAX_SERIES_ENTRIES of them (counted from the listing with an
    early stop): a larger folder is passed on unresolved, and the image loader quarantines it as
    "series folder with too many files" before opening any member."""
    if not relative:
        return None, "empty image path"
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or \
            ".." in PurePosixPath(relative.replace("\\", "/")).parts:
        return None, OUTSIDE
    candidate = site / relative
    root = site.resolve()
    try:
        resolved = candidate.resolve(strict=True)
    except ValueError:  # e.g. a NUL byte in the path
        return None, "invalid image path"
    except (FileNotFoundError, RuntimeError, OSError):
        return None, MISSING
    if not resolved.is_relative_to(root):
        return None, OUTSIDE
    if resolved.is_dir():  # a series folder: every member must stay inside the site too
        try:
            too_many = over_series_cap(resolved)
        except OSError:
            return resolved, None  # unreadable: quarantined as "file not readable" when loaded
        if too_many:  # none of its members is ever opened: the image is quarantined unread
            return resolved, None
        members = [m for m in resolved.iterdir() if not m.name.startswith(".")]
        if any(not m.resolve().is_relative_to(root) for m in members):
            return None, OUTSIDE
    elif not resolved.is_file():
        return None, "not a regular file (device, pipe or socket)"
    return resolved, None


def image_paths(site: Path, patients: set[str], *, limits: SiteLimits | None = None
                ) -> tuple[dict[str, Path], Findings, Path | None]:
    """First usable image path per labelled patient, the rows not used by reason (with row
    numbers; an unreadable table counts once, with no row), and the manifest used (None: none).

    Every manifest row is either the one used for its patient or counted.
    """
    problems = Findings()
    table = find_table(site, "manifest")
    if table is None:
        return {}, problems, None
    try:
        frame, found = read_table(table, ("patient_id", "image_path"), limits=limits)
    except SiteDataError as exc:
        problems.add(f"{exc} (table ignored)")
        return {}, problems, table
    problems.merge(found)
    chosen: dict[str, Path] = {}
    rows: dict[str, list[int]] = {}
    for number, pid, rel in zip(frame.index, frame["patient_id"], frame["image_path"]):
        if pid not in patients:
            reason = "manifest row for a patient without a label"
        elif pid in chosen:
            reason = "extra manifest row for a patient (first one used)"
        else:
            path, reason = safe_path(site, rel)
            if not reason:
                chosen[pid] = path  # type: ignore[assignment]
                continue
        rows.setdefault(reason, []).append(number)  # type: ignore[arg-type]
    for reason, numbers in rows.items():
        problems.add_rows(reason, table.name, numbers)
    return chosen, problems.nonzero(), table
