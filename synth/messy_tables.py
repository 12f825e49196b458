"""Messy-mode notes and labels: blank notes, a duplicate, a non-UTF-8 row, label defects, index_time."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from synth.cohort import Cohort, iso
from synth.notes_text import compose_note, concerning_count
from synth.site_profiles import SiteProfile

BLANK_NOTES: tuple[str, ...] = ("", "", "   ", " \t ")  # 2 empty, 2 whitespace-only
BROKEN_UTF8_TEXT = b"\xff\xfe broken \xc3( note"  # not valid UTF-8
UNKNOWN_LABEL = "unknown"

NoteRow = tuple[str, str | bytes]


def messy_note_rows(rows: Sequence[tuple[str, str]], cohort: Cohort, profile: SiteProfile,
                    rng: np.random.Generator, *, broken_utf8: bool) -> list[NoteRow]:
    """Blank 4 notes, duplicate one row exactly, give one patient a second different note and,
    if `broken_utf8`, replace one note by invalid UTF-8 bytes. Rows stay sorted by patient id.
    """
    out: list[NoteRow] = list(rows)
    order = [int(j) for j in rng.permutation(len(rows))]
    for j, text in zip(order, BLANK_NOTES):
        out[j] = (rows[j][0], text)
    rest = order[len(BLANK_NOTES):]
    if len(rest) >= 1:
        out.append(rows[rest[0]])  # exact duplicate row
    if len(rest) >= 2:
        pid = rows[rest[1]][0]
        f_note = float(cohort.factors[cohort.ids.index(pid), 2])
        out.append((pid, compose_note(rng, profile.wording, concerning_count(f_note))))
    if broken_utf8 and len(rest) >= 3:
        out[rest[2]] = (rows[rest[2]][0], BROKEN_UTF8_TEXT)
    return sorted(out, key=lambda r: r[0])


def _label_targets(candidates: Sequence[int], n: int, rng: np.random.Generator) -> list[int]:
    """Three distinct patient indices (unknown label, conflicting duplicate, unlisted)."""
    pool = list(candidates) if len(candidates) >= 3 else list(range(n))
    return [int(i) for i in rng.choice(pool, size=3, replace=False)]


def messy_label_rows(cohort: Cohort, index: np.ndarray, candidates: Sequence[int],
                     rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """(patient_id, label, index_time) rows with one 'unknown' label, one patient id listed twice
    with conflicting labels, and one patient (from `candidates`) left out entirely.
    """
    unknown, conflict, unlisted = _label_targets(candidates, len(cohort.ids), rng)
    rows: list[tuple[str, str, str]] = []
    for i, (pid, label) in enumerate(zip(cohort.ids, cohort.labels)):
        stamp = iso(0, int(index[i]))
        if i == unlisted:
            continue
        rows.append((pid, UNKNOWN_LABEL if i == unknown else str(int(label)), stamp))
        if i == conflict:
            rows.append((pid, str(1 - int(label)), stamp))
    return rows
