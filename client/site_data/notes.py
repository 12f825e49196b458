"""Clinical notes -> hashed token ids: no vocabulary is built or shared between sites."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter

import numpy as np
import pandas as pd

from client.site_data.tables import undecodable

_TOKEN = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> list[str]:
    """Unicode NFKC, lower-case, alphanumeric tokens."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def token_id(token: str, buckets: int) -> int:
    """A stable hash of the token into 1..buckets-1 (0 is padding)."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def encode(text: str, *, buckets: int, max_tokens: int) -> np.ndarray:
    """Token ids of the first `max_tokens` tokens, zero-padded to max_tokens."""
    ids = [token_id(t, buckets) for t in normalise(text)[:max_tokens]]
    out = np.zeros(max_tokens, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def note_tokens(notes: pd.DataFrame, patient_ids: list[str], *, buckets: int, max_tokens: int
                ) -> tuple[np.ndarray, Counter[str]]:
    """Tokens per patient (distinct notes of a patient concatenated in file order) and problems.

    Empty, whitespace-only and undecodable notes count as a missing modality.
    """
    problems: Counter[str] = Counter()
    index = {pid: i for i, pid in enumerate(patient_ids)}
    problems["note for a patient without a label"] = int((~notes["patient_id"].isin(index)).sum())
    notes = notes[notes["patient_id"].isin(index)]
    dupes = notes.duplicated(keep="first")
    problems["duplicate note row"] = int(dupes.sum())
    notes = notes[~dupes]
    bad_bytes = undecodable(notes["text"])
    problems["undecodable note (not UTF-8)"] = int(bad_bytes.sum())
    notes = notes[~bad_bytes]
    empty = notes["text"].map(lambda t: not normalise(t)).astype(bool)
    problems["empty note"] = int(empty.sum())
    notes = notes[~empty]
    tokens = np.zeros((len(patient_ids), max_tokens), dtype=np.int64)
    for pid, texts in notes.groupby("patient_id", sort=False)["text"]:
        tokens[index[pid]] = encode("\n".join(texts), buckets=buckets, max_tokens=max_tokens)
    return tokens, Counter({k: v for k, v in problems.items() if v})
