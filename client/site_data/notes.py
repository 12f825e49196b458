"""Clinical notes -> hashed token ids: no vocabulary is built or shared between sites."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

import numpy as np
import pandas as pd

from client.site_data.findings import Findings
from client.site_data.tables import undecodable

_TOKEN = re.compile(r"[a-z0-9]+")


def first_tokens(texts: Iterable[str], limit: int) -> list[str]:
    """The first `limit` tokens of `texts` read in order (Unicode NFKC, lower-case, alphanumeric
    runs), the same as those of the texts joined by newlines, without tokenising past the limit or
    joining the texts: one patient's notes can hold millions of tokens (each note is up to the
    4 MiB record cap, and a patient can have many)."""
    out: list[str] = []
    for text in texts:
        for match in _TOKEN.finditer(unicodedata.normalize("NFKC", text).lower()):
            out.append(match.group())
            if len(out) >= limit:
                return out
    return out


def has_token(text: str) -> bool:
    """Whether `text` holds at least one token (stops at the first)."""
    return _TOKEN.search(unicodedata.normalize("NFKC", text).lower()) is not None


def token_id(token: str, buckets: int) -> int:
    """A stable hash of the token into 1..buckets-1 (0 is padding)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def encode(texts: str | Iterable[str], *, buckets: int, max_tokens: int) -> np.ndarray:
    """Token ids of the first `max_tokens` tokens of `texts` (one text, or notes read in order),
    zero-padded to max_tokens: int64 [max_tokens]."""
    ids = [token_id(t, buckets) for t in first_tokens([texts] if isinstance(texts, str) else texts, max_tokens)]
    out = np.zeros(max_tokens, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def note_tokens(notes: pd.DataFrame, patient_ids: list[str], *, buckets: int, max_tokens: int,
                source: str = "notes.csv") -> tuple[np.ndarray, Findings]:
    """Tokens per patient [N, max_tokens] int64 (distinct notes of a patient concatenated in file
    order, cut to `max_tokens`) and the rows not used by reason, with their row numbers in
    `source` (the index of `notes`, as tables.read_table gives it).

    Empty, whitespace-only and undecodable notes count as a missing modality. A long note is
    kept and cut to the token cap, not counted.
    """
    problems = Findings()
    index = {pid: i for i, pid in enumerate(patient_ids)}

    def drop(reason: str, rows: pd.Series) -> pd.DataFrame:
        problems.add_rows(reason, source, notes.index[rows.to_numpy(dtype=bool)])
        return notes[~rows.to_numpy(dtype=bool)]

    notes = drop("note for a patient without a label", ~notes["patient_id"].isin(index))
    notes = drop("duplicate note row", notes.duplicated(keep="first"))
    notes = drop("undecodable note (not UTF-8)", undecodable(notes["text"]))
    notes = drop("empty note", ~notes["text"].map(has_token).astype(bool))
    tokens = np.zeros((len(patient_ids), max_tokens), dtype=np.int64)
    for pid, texts in notes.groupby("patient_id", sort=False)["text"]:
        tokens[index[pid]] = encode(texts, buckets=buckets, max_tokens=max_tokens)
    return tokens, problems.nonzero()
