"""manifest: which DICOM file or series folder belongs to which patient, confined to the site."""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath, PureWindowsPath

from client.site_data.errors import SiteDataError
from client.site_data.tables import MALFORMED, find_table, read_table

OUTSIDE = "path outside the site folder"
MISSING = "file listed in the manifest is missing"


def safe_path(site: Path, relative: str) -> tuple[Path | None, str | None]:
    """Resolve a manifest path; refuse absolute paths, '..' and symlinks that leave the site."""
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
        members = [m for m in resolved.iterdir() if not m.name.startswith(".")]
        if any(not m.resolve().is_relative_to(root) for m in members):
            return None, OUTSIDE
    elif not resolved.is_file():
        return None, "not a regular file (device, pipe or socket)"
    return resolved, None


def image_paths(site: Path, patients: set[str]) -> tuple[dict[str, Path], Counter[str], Path | None]:
    """First usable image path per labelled patient, problems by reason, and the manifest used."""
    problems: Counter[str] = Counter()
    table = find_table(site, "manifest")
    if table is None:
        return {}, problems, None
    try:
        frame = read_table(table, ("patient_id", "image_path"))
    except SiteDataError as exc:
        problems[f"{exc} (table ignored)"] += 1
        return {}, problems, table
    problems["malformed manifest row"] += frame.attrs.get(MALFORMED, 0)
    chosen: dict[str, Path] = {}
    for pid, rel in zip(frame["patient_id"], frame["image_path"]):
        if pid not in patients:
            problems["manifest row for a patient without a label"] += 1
            continue
        if pid in chosen:
            problems["extra manifest row for a patient (first one used)"] += 1
            continue
        path, reason = safe_path(site, rel)
        if reason:
            problems[reason] += 1
        else:
            chosen[pid] = path  # type: ignore[assignment]
    return chosen, Counter({k: v for k, v in problems.items() if v}), table
