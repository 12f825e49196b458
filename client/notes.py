"""Clinical notes -> hashed token ids: no vocabulary is built or shared between sites."""

from __future__ import annotations

import hashlib
import re

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> list[str]:
    """Lower-case alphanumeric tokens."""
    return _TOKEN.findall(text.lower())


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
