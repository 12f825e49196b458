"""Per-file preprocessing cache: a DICOM file (or series folder) is decoded once, not every round.

Key: SHA-256 over CACHE_VERSION, the preprocessing parameters (size, window, frame policy), the
    size caps (client.site_data.imaging.limits.DicomLimits: a changed cap decides every file
    again), the decoding environment (pydicom's version and the plugins available for each
    transfer syntax, so installing a decoder retires "no permissive decoder" entries) and the
    input's content digest: a file's SHA-256; a folder's SHA-256 over each non-hidden file's
    name, size and SHA-256, in name order. Changed content or parameters give a different key,
    i.e. a miss. Bump CACHE_VERSION when preprocessing changes. (Folder digests were a single
    SHA-256 over names, sizes and bytes before the hash memo; those old folder entries are
    simply never hit.)
Size cap first: a file over limits.max_file_mb is "image too large" from its stat alone: never
    opened, hashed or cached (a folder's member over the cap is never read either: its stat
    signature stands in for its digest). Likewise a folder of more than
    limits.MAX_SERIES_ENTRIES entries is "series folder with too many files" from its listing
    alone (read up to the first entry past the cap): no member is stat-ed, hashed or parsed, and
    nothing is cached, as the check costs no more than a cache lookup would.
    Files are hashed CHUNK (1 MiB) at a time.
    A file is hashed, then decoded, from the same open file; when its stat signature (size,
    mtime, ctime, inode, device) changed meanwhile, the outcome is returned but not cached. A
    folder is hashed, then read again to decode; a file rewritten in between is picked up by the
    next round's key.
Entry: <cache_dir>/<key[:2]>/<key>.entry, mode 0600, written atomically (temp file in the same
    folder, fsync, os.replace: storage.atomic), so racing processes both succeed and a reader
    never sees a torn entry. Both outcomes are cached:
        b"IMG\\n" + np.save bytes of the float32 [size, size] image (size * size * 4 + 128 bytes)
        b"BAD\\n" + the UTF-8 quarantine reason (a bad file is not decoded again every round)
    An entry that does not parse or does not fit the request is a miss and is rewritten.
    "file not found" / "file not readable" are transient and never cached; a cache that cannot
    be written only costs speed.

Hash memo: re-reading and re-hashing every source file on every round would cost most of a
    cache hit, so each file's SHA-256 is remembered by its stat signature, the way git's index
    does: <cache_dir>/memo/<h[:2]>/<h>.memo, h = SHA-256 of the resolved path (the path itself is
    not stored), mode 0600, written atomically, one small file per source file (no shared file
    to lock or rewrite; concurrent writers each leave a complete, self-consistent entry), holding
        b"HASHMEMO1\\n" + b"<st_size> <st_mtime_ns> <st_ctime_ns> <st_ino> <st_dev> <sha256 hex>\\n"
    The memo is used only when ALL five fields equal the file's stat now; any difference, a
    missing or damaged memo entry, or a non-regular file means the file is read and hashed
    again (and the memo rewritten). A folder is memoised per contained file. The signature is
    taken with fstat on the open file before it is read. On a cache miss a memoised file is
    hashed anyway (it must be decoded), and the entry is keyed by what was hashed.
    Trade-off (the same one git makes): content rewritten with the same size, within the same
    mtime AND ctime tick, on the same inode, after it was hashed, would keep the old digest.
    ctime moves on every content write, chmod, rename or link, even when a tool restores the
    mtime (cp -p, rsync -t, tar), so mtime-preserving rewrites are still caught. To close the
    same-tick window, a file whose mtime or ctime is within RECENT_S (2 s) of now (or in the
    future) when it is hashed is not memoised: a file still being written is re-hashed next time.
    Removing <cache_dir>/memo at any time only costs one re-hash per file.
Quota: entries are pruned by client.site_data.imaging.quota.prune_cache, least recently used first (a hit
    refreshes its mtime), memo entries last, never those of the current load (`used=` -> `keep`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.pixels import decoders
from pydicom.pixels.decoders.base import Decoder

from client.site_data.imaging.dicom import check_arguments, image_from_file, open_image_file, read_image
from client.site_data.imaging.limits import DEFAULT_LIMITS, DicomLimits, over_series_cap
from client.site_data.imaging.reasons import (
    FILE_NOT_FOUND,
    FILE_NOT_READABLE,
    TOO_LARGE,
    TOO_MANY_FILES,
    UnusableImage,
    is_known_reason,
)
from storage.atomic import write_atomic

CACHE_VERSION = "2"  # 2: float32 frame-by-frame decoding, size caps (limits) in the key
IMAGE_TAG, REASON_TAG = b"IMG\n", b"BAD\n"
TRANSIENT_REASONS = frozenset({FILE_NOT_FOUND, FILE_NOT_READABLE})
CHUNK = 1 << 20
MEMO_DIR, MEMO_TAG = "memo", b"HASHMEMO1\n"
RECENT_S = 2.0  # a file modified (mtime or ctime) this recently is hashed but not memoised
_HEX64 = re.compile(r"[0-9a-f]{64}")

Signature = tuple[int, int, int, int, int]  # st_size, st_mtime_ns, st_ctime_ns, st_ino, st_dev


def decoder_environment() -> str:
    """pydicom's version and, per transfer syntax, the decoding plugins available now."""
    parts = [pydicom.__version__]
    for name in sorted(vars(decoders)):
        decoder = getattr(decoders, name)
        if isinstance(decoder, Decoder):
            parts.append(f"{decoder.UID}={','.join(sorted(decoder.available_plugins))}")
    return ";".join(parts)


def stat_signature(st: os.stat_result) -> Signature:
    """The fields a memo entry must match: size, mtime, ctime (ns), inode, device."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


def memo_path(memo_dir: Path, path: Path | str) -> Path:
    """Where the hash memo of the file at `path` lives (named by the hash of its resolved path)."""
    name = hashlib.sha256(os.fsencode(os.path.realpath(path))).hexdigest()
    return memo_dir / name[:2] / f"{name}.memo"


def parse_memo(payload: bytes) -> tuple[Signature, str] | None:
    """(stat signature, sha256 hex) from a memo entry, or None when it is damaged."""
    if not payload.startswith(MEMO_TAG) or not payload.endswith(b"\n"):
        return None
    try:
        fields = payload[len(MEMO_TAG):-1].decode("ascii").split(" ")
        if len(fields) != 6 or not _HEX64.fullmatch(fields[5]):
            return None
        if not all(f.isdigit() for f in fields[:5]):
            return None
    except UnicodeDecodeError:
        return None
    size, mtime, ctime, ino, dev = (int(f) for f in fields[:5])
    return (size, mtime, ctime, ino, dev), fields[5]


def memo_payload(signature: Signature, digest: str) -> bytes:
    """Memo entry bytes for a file with this stat signature and content digest."""
    return MEMO_TAG + (" ".join(str(v) for v in signature) + f" {digest}\n").encode("ascii")


def _memo_hit(path: Path, memo_dir: Path | None) -> tuple[Signature, str] | None:
    """(signature, digest) remembered for `path` when ALL its stat fields are unchanged."""
    if memo_dir is None:
        return None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        memo = parse_memo(memo_path(memo_dir, path).read_bytes())
    except (OSError, ValueError):  # ValueError: a path with a NUL byte
        return None
    return memo if memo is not None and memo[0] == stat_signature(st) else None


def _remember(memo_dir: Path | None, path: Path, st: os.stat_result, digest: str) -> None:
    """Memoise `digest` for the signature `st` taken before the bytes were read, unless recent."""
    if memo_dir is None or not stat.S_ISREG(st.st_mode):
        return
    if max(st.st_mtime_ns, st.st_ctime_ns) >= time.time_ns() - int(RECENT_S * 1e9):
        return  # possibly still being written, or rewritten within this timestamp tick
    try:
        target = memo_path(memo_dir, path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(target, memo_payload(stat_signature(st), digest), mode=0o600)
    except (OSError, ValueError):
        pass  # a read-only or full cache only costs speed


def hash_open(fh: BinaryIO) -> str:
    """SHA-256 of an open file from its start, read CHUNK bytes at a time (bounded memory)."""
    digest = hashlib.sha256()
    fh.seek(0)
    try:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    except OSError:
        raise UnusableImage(FILE_NOT_READABLE) from None
    return digest.hexdigest()


def _file_digest(path: Path, memo_dir: Path | None, limits: DicomLimits) -> tuple[int, str]:
    """(size, SHA-256) of one file, from the memo or by streaming it; raises OSError. A file over
    limits.max_file_mb is not read: its "digest" is that of its stat signature."""
    st = os.stat(path)
    if st.st_size > limits.max_file_bytes:
        marker = b"over the file size cap\0" + " ".join(map(str, stat_signature(st))).encode()
        return st.st_size, hashlib.sha256(marker).hexdigest()
    if (hit := _memo_hit(path, memo_dir)) is not None:
        return hit[0][0], hit[1]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    _remember(memo_dir, path, st, digest.hexdigest())
    return st.st_size, digest.hexdigest()


def folder_digest(folder: Path, memo_dir: Path | None = None, limits: DicomLimits = DEFAULT_LIMITS) -> str:
    """SHA-256 over (name, size, SHA-256) of the folder's non-hidden files, in name order.

    Per-file digests come from the hash memo in `memo_dir` when given (None: always hashed).
    A file over limits.max_file_mb is never read; its stat signature stands in for its digest.
    A folder over limits.MAX_SERIES_ENTRIES entries is "series folder with too many files",
    found from its listing alone (nothing stat-ed or hashed).
    """
    digest = hashlib.sha256()
    try:
        if over_series_cap(folder):  # before any member is stat-ed or hashed
            raise UnusableImage(TOO_MANY_FILES)
        files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
        for path in files:
            size, file_digest = _file_digest(path, memo_dir, limits)
            digest.update(os.fsencode(path.name) + b"\0" + size.to_bytes(8, "little")
                          + bytes.fromhex(file_digest))
    except OSError:
        raise UnusableImage(FILE_NOT_READABLE) from None
    return digest.hexdigest()


def entry_key(content_digest: str, *, size: int, window: tuple[float, float] | None,
              frame_policy: str, limits: DicomLimits = DEFAULT_LIMITS) -> str:
    """Cache key of one input (its content digest) under one set of preprocessing parameters."""
    params = {"version": CACHE_VERSION, "size": size, "frame_policy": frame_policy,
              "window": None if window is None else [float(window[0]), float(window[1])],
              "decoders": decoder_environment(), "limits": asdict(limits)}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode() + b"\0")
    digest.update(content_digest.encode())
    return digest.hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    """Where the entry for `key` lives (fanned out over 256 sub-folders)."""
    return cache_dir / key[:2] / f"{key}.entry"


def parse_entry(payload: bytes, size: int) -> np.ndarray | str | None:
    """The cached image, the cached reason, or None for a damaged or mismatched entry."""
    if payload.startswith(REASON_TAG):
        try:
            reason = payload[len(REASON_TAG):].decode("utf-8")
        except UnicodeDecodeError:
            return None
        return reason if is_known_reason(reason) else None
    if not payload.startswith(IMAGE_TAG):
        return None
    try:
        image = np.load(io.BytesIO(payload[len(IMAGE_TAG):]), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    fits = (isinstance(image, np.ndarray) and image.dtype == np.float32
            and image.shape == (size, size) and bool(np.isfinite(image).all())
            and float(image.min()) >= 0.0 and float(image.max()) <= 1.0)
    return image if fits else None


def _read_entry(path: Path, size: int) -> np.ndarray | str | None:
    try:
        payload = path.read_bytes()
    except OSError:
        return None
    found = parse_entry(payload, size)
    if found is not None:  # a hit: refresh the mtime, client.site_data.imaging.quota's LRU clock
        with contextlib.suppress(OSError, NotImplementedError):  # read-only: only costs speed
            os.utime(path, follow_symlinks=False)
    return found


def _write_entry(path: Path, payload: bytes, used: set[Path] | None, written: set[Path] | None = None) -> None:
    for paths in (used, written):
        if paths is not None:
            paths.add(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, payload, mode=0o600)
    except OSError:
        pass  # a read-only or full cache only costs speed


def image_payload(image: np.ndarray) -> bytes:
    """Entry bytes for a successfully preprocessed image."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(image, dtype=np.float32), allow_pickle=False)
    return IMAGE_TAG + buffer.getvalue()


def _lookup(cache_dir: Path, digest: str, size: int, window: tuple[float, float] | None,
            frame_policy: str, limits: DicomLimits) -> tuple[Path, np.ndarray | str | None]:
    key = entry_key(digest, size=size, window=window, frame_policy=frame_policy, limits=limits)
    return entry_path(cache_dir, key), _read_entry(entry_path(cache_dir, key), size)


def _serve(cached: np.ndarray | str, entry: Path, used: set[Path] | None) -> np.ndarray:
    """A hit: the cached image, or its cached reason raised."""
    if used is not None:
        used.add(entry)
    if isinstance(cached, str):
        raise UnusableImage(cached)
    return cached


def _decide(entry: Path, decode: Callable[[], np.ndarray], used: set[Path] | None,
            written: set[Path] | None, keep: Callable[[], bool] = lambda: True) -> np.ndarray:
    """A miss: decode, and cache the image or the (non-transient) reason when `keep()` says the
    input is still what was hashed."""
    try:
        image = decode()
    except UnusableImage as bad:
        if bad.reason not in TRANSIENT_REASONS and keep():
            _write_entry(entry, REASON_TAG + bad.reason.encode("utf-8"), used, written)
        raise
    if keep():
        _write_entry(entry, image_payload(image), used, written)
    return image


def _unchanged(fh: BinaryIO, st: os.stat_result) -> bool:
    try:
        return stat_signature(os.fstat(fh.fileno())) == stat_signature(st)
    except OSError:
        return False


def load_image_cached(path: Path, *, cache_dir: Path, size: int,
                      window: tuple[float, float] | None, frame_policy: str = "middle",
                      used: set[Path] | None = None, written: set[Path] | None = None,
                      limits: DicomLimits = DEFAULT_LIMITS) -> np.ndarray:
    """`read_image(path, ...)`, served from `cache_dir` when this content was seen before.

    A file over limits.max_file_mb is "image too large" from its stat alone (never opened,
    nothing cached: the check costs one stat). Otherwise its digest comes from the hash memo
    (not read at all on a hit) or from hashing it in CHUNK-sized reads, and on a miss it is
    decoded from the same open file; the verdict (image or reason) is cached unless the file's
    stat signature changed meanwhile.
    `used` (if given) gets the path of the entry read or written (none for a transient reason
    or a file over the size cap); `written` (if given) only the path of an entry written (a miss).
    Raises UnusableImage (cached too) exactly as read_image does.
    """
    check_arguments(size, window, frame_policy)
    memo_dir = cache_dir / MEMO_DIR
    if path.is_dir():
        digest = folder_digest(path, memo_dir, limits)
        entry, cached = _lookup(cache_dir, digest, size, window, frame_policy, limits)
        if cached is not None:
            return _serve(cached, entry, used)
        return _decide(entry, lambda: read_image(path, size=size, window=window,
                                                 frame_policy=frame_policy, limits=limits), used, written)
    with contextlib.suppress(OSError, ValueError):
        if os.stat(path).st_size > limits.max_file_bytes:
            raise UnusableImage(TOO_LARGE)
    if (hit := _memo_hit(path, memo_dir)) is not None:  # unchanged since hashed: not even opened
        entry, cached = _lookup(cache_dir, hit[1], size, window, frame_policy, limits)
        if cached is not None:
            return _serve(cached, entry, used)
    with open_image_file(path, limits) as (fh, st):
        digest = hash_open(fh)
        if hit is None or (stat_signature(st), digest) != hit:
            _remember(memo_dir, path, st, digest)
        entry, cached = _lookup(cache_dir, digest, size, window, frame_policy, limits)
        if cached is not None:
            return _serve(cached, entry, used)
        return _decide(entry, lambda: image_from_file(fh, st.st_size, size=size, window=window,
                                                      frame_policy=frame_policy, limits=limits),
                       used, written, keep=lambda: _unchanged(fh, st))
