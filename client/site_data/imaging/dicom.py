"""One DICOM file, or one series folder, -> a float32 [size, size] image in [0, 1].

Input
    A file's size is checked (stat) before it is opened: over limits.max_file_mb it is "image
    too large" unread. It is then read through client.site_data.imaging.source: a Part 10 file,
    or one without the 128-byte preamble that starts with "DICM", the file meta group or a bare
    dataset (group 0008); anything else is "not a DICOM file". Only the header (within
    limits.max_header_mb) and the frames used are read. A folder is a series exported as one
    file per instance: its DICOM files with pixel data (non-recursive, hidden files ignored,
    all taken as one series) are ordered by Instance Number, then file name, and the middle one
    (index n // 2) is used. A folder of more than limits.MAX_SERIES_ENTRIES entries is "series
    folder with too many files" before any member is opened. If the middle instance is
    unusable, up to SERIES_ATTEMPTS - 1 = 8 others are tried, nearest first; if none is usable,
    the middle one's reason is raised (a folder whose only candidates are over the size cap:
    "image too large").
Checks, in order (reasons: client.site_data.imaging.reasons): readable regular file within the
    size cap; DICOM; header within its cap; not truncated (no dataset, a last element shorter
    than its length, native pixel data shorter than the header says or cut by the end of the
    file); pixel data present (else a registered non-image SOP class is named, or "no pixel
    data"); transfer syntax present; image attributes readable; the declared size within the
    caps (Rows x Columns x SamplesPerPixel, x BitsAllocated, x NumberOfFrames:
    client.site_data.imaging.limits) -> "image too large"; rows, columns and frames non-zero.
    All of these come from the header: nothing is decoded before they pass.
Pixels: client.site_data.imaging.pixels (frame policy, modality LUT, VOI, MONOCHROME1, colour),
    one frame at a time in float32, decoded by client.site_data.imaging.source.
Resize: torch "area" (exact box averaging, no aliasing) when neither side grows; antialiased
    bilinear when a side must grow, where "area" would only repeat pixels. The aspect ratio is
    not kept: the image is stretched to size x size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length

from client.site_data.imaging.limits import DEFAULT_LIMITS, SERIES_ATTEMPTS, DicomLimits, over_series_cap
from client.site_data.imaging.pixels import greyscale
from client.site_data.imaging.reasons import (
    CORRUPT,
    EMPTY_IMAGE,
    FILE_NOT_FOUND,
    FILE_NOT_READABLE,
    INVALID_ATTRIBUTES,
    NO_IMAGE_IN_FOLDER,
    NO_PIXEL_DATA,
    NO_TRANSFER_SYNTAX,
    TOO_LARGE,
    TOO_MANY_FILES,
    UnusableImage,
    is_known_non_image_class,
    no_decoder,
    non_image,
)
from client.site_data.imaging.source import UNDEFINED_LENGTH, PixelSource, open_source, quiet_decoding
from configs.validate import FRAME_POLICIES

log = logging.getLogger("fedclinic.site.dicom")

__all__ = ("DEFAULT_LIMITS", "DEFAULT_WINDOW", "DicomLimits", "UnusableImage", "check_arguments",
           "image_from_bytes", "image_from_file", "open_image_file", "read_image", "series_instances")

# A soft-tissue CT window, for data.window_center / window_width. Not a fallback: without a
# configured window the file's own VOI is used, else the image's min-max.
DEFAULT_WINDOW = (40.0, 400.0)


@contextlib.contextmanager
def open_image_file(path: Path, limits: DicomLimits = DEFAULT_LIMITS
                    ) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    """The open file and its fstat, once it is known to be a regular file within the size cap.

    The size is taken (stat) before the file is opened: a file over limits.max_file_mb is
    "image too large" without a byte of it being read. Missing: "file not found"; not a
    regular file (a FIFO is never opened), or unreadable: "file not readable".
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise UnusableImage(FILE_NOT_READABLE)
        if st.st_size > limits.max_file_bytes:
            raise UnusableImage(TOO_LARGE)
        # O_NONBLOCK: a file swapped for a FIFO after the stat is not waited on (fstat below)
        fh = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb")
    except FileNotFoundError:
        raise UnusableImage(FILE_NOT_FOUND) from None
    except (OSError, ValueError):  # ValueError: a path with a NUL byte
        raise UnusableImage(FILE_NOT_READABLE) from None
    with fh:
        try:
            st = os.fstat(fh.fileno())
        except OSError:
            raise UnusableImage(FILE_NOT_READABLE) from None
        if not stat.S_ISREG(st.st_mode):
            raise UnusableImage(FILE_NOT_READABLE)
        if st.st_size > limits.max_file_bytes:
            raise UnusableImage(TOO_LARGE)
        yield fh, st


def _cut_short(ds: Dataset) -> bool:
    """True when the dataset is empty or its last element holds fewer bytes than its length."""
    if len(ds) == 0:
        return True
    last = ds.get_item(next(reversed(ds.keys())))
    return (isinstance(last, RawDataElement) and isinstance(last.value, bytes)
            and last.length != UNDEFINED_LENGTH and len(last.value) < last.length)


def check_declared_size(rows: int, columns: int, frames: int, samples: int, bits: int,
                        limits: DicomLimits) -> None:
    """"image too large" when the size the header declares is over a cap (nothing decoded yet)."""
    frame_samples = rows * columns * samples
    frame_bits = frame_samples * bits
    if (frame_samples > limits.max_frame_samples or frame_bits > limits.max_frame_bytes * 8
            or frame_bits * max(frames, 1) > limits.max_pixel_data_bytes * 8):
        raise UnusableImage(TOO_LARGE)


def _frames(src: PixelSource) -> int:
    """Number of frames after the attribute and size checks (raises the matching UnusableImage)."""
    ds = src.ds
    if not getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID"):
        raise UnusableImage(NO_TRANSFER_SYNTAX)
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    samples, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
    check_declared_size(rows, columns, frames, samples, bits, src.limits)
    if bits < 1 or samples < 1 or not str(ds.PhotometricInterpretation).strip():
        raise UnusableImage(INVALID_ATTRIBUTES)
    if min(rows, columns, frames) <= 0:
        raise UnusableImage(EMPTY_IMAGE)
    transfer_syntax = src.transfer_syntax
    if not transfer_syntax.is_transfer_syntax:
        raise UnusableImage(no_decoder(transfer_syntax))
    if not transfer_syntax.is_encapsulated:
        expected = get_expected_length(ds, "bytes")
        if src.length == UNDEFINED_LENGTH or src.length < expected:
            raise UnusableImage(CORRUPT)
        if src.available is not None and src.value_offset + src.length > src.available:
            raise UnusableImage(CORRUPT)  # the value is cut short by the end of the file
        if src.available is None and src.value_offset + expected > src.limits.max_file_bytes:
            raise UnusableImage(TOO_LARGE)  # a deflated dataset inflating past the file cap
    return frames


def checked_frames(src: PixelSource) -> int:
    """Check that `src` is a decodable image within the caps (see module docstring); its frame count."""
    ds = src.ds
    try:
        if _cut_short(ds):
            raise UnusableImage(CORRUPT)
        if src.keyword is None:
            meta = getattr(ds, "file_meta", Dataset())
            sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
            if sop_class and is_known_non_image_class(sop_class):
                raise UnusableImage(non_image(sop_class))
            raise UnusableImage(NO_PIXEL_DATA)
        return _frames(src)
    except (OSError, EOFError, struct.error):
        raise UnusableImage(CORRUPT) from None
    except (AttributeError, KeyError, ValueError, TypeError, OverflowError):
        raise UnusableImage(INVALID_ATTRIBUTES) from None


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """`image` (2-D, values in [0, 1]) as float32 [size, size]: area down, antialiased bilinear up."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if min(image.shape) >= size:
        out = F.interpolate(tensor, size=(size, size), mode="area")
    else:
        out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                            antialias=True)
    return np.clip(out[0, 0].numpy(), 0.0, 1.0).astype(np.float32, copy=False)


def check_arguments(size: int, window: tuple[float, float] | None, frame_policy: str) -> None:
    """Configuration errors (not per-file problems) raise ValueError."""
    if size < 1:
        raise ValueError(f"size must be >= 1 (got {size})")
    if window is not None and not (math.isfinite(window[0]) and math.isfinite(window[1])
                                   and window[1] > 0):
        raise ValueError(f"window must be finite (center, width) with width > 0 (got {window})")
    if frame_policy not in FRAME_POLICIES:
        raise ValueError(f"frame_policy must be one of {FRAME_POLICIES} (got {frame_policy!r})")


def image_from_file(raw: BinaryIO, file_size: int, *, size: int, window: tuple[float, float] | None,
                    frame_policy: str = "middle", limits: DicomLimits = DEFAULT_LIMITS) -> np.ndarray:
    """The image held in one open DICOM file of `file_size` bytes (see `read_image`).

    Only the header and the frames used are read. Raises UnusableImage.
    """
    check_arguments(size, window, frame_policy)
    if file_size > limits.max_file_bytes:
        raise UnusableImage(TOO_LARGE)
    with quiet_decoding():
        try:
            src = open_source(raw, file_size, limits)
            frames = checked_frames(src)
            image = greyscale(src, frames=frames, window=window, frame_policy=frame_policy)
        except UnusableImage:
            raise
        except MemoryError:  # not expected within the caps; never retried every round either
            raise UnusableImage(TOO_LARGE) from None
        except Exception:  # noqa: BLE001 - e.g. a malformed sequence parsed late; one file must not stop a site
            log.debug("unexpected error reading a DICOM file", exc_info=True)
            raise UnusableImage(INVALID_ATTRIBUTES) from None
    return resize(image, size)


def image_from_bytes(data: bytes, *, size: int, window: tuple[float, float] | None,
                     frame_policy: str = "middle", limits: DicomLimits = DEFAULT_LIMITS) -> np.ndarray:
    """The image held in one DICOM file's bytes (see `read_image`)."""
    return image_from_file(io.BytesIO(data), len(data), size=size, window=window,
                           frame_policy=frame_policy, limits=limits)


def read_file(path: Path, *, size: int, window: tuple[float, float] | None,
              frame_policy: str = "middle", limits: DicomLimits = DEFAULT_LIMITS) -> np.ndarray:
    """One DICOM file (not a folder) as float32 [size, size]; raises UnusableImage."""
    with open_image_file(path, limits) as (fh, st):
        return image_from_file(fh, st.st_size, size=size, window=window,
                               frame_policy=frame_policy, limits=limits)


def _series_key(path: Path, limits: DicomLimits) -> tuple[int, int] | None | str:
    """(0, InstanceNumber) or (1, 0) for a DICOM file with pixel data; TOO_LARGE for a file over
    a size cap; None for anything else. Only the header is read (within limits)."""
    try:
        with open_image_file(path, limits) as (fh, st), quiet_decoding():
            src = open_source(fh, st.st_size, limits)
    except UnusableImage as bad:
        return bad.reason if bad.reason == TOO_LARGE else None
    except Exception:  # noqa: BLE001 - anything unreadable is simply not an instance
        log.debug("series member not read", exc_info=True)
        return None
    if src.keyword is None:
        return None
    try:
        return 0, int(src.ds.InstanceNumber)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        return 1, 0


def series_instances(folder: Path, limits: DicomLimits = DEFAULT_LIMITS) -> list[Path]:
    """The folder's image instances in series order (Instance Number, then file name).

    Raises "series folder with too many files" over limits.MAX_SERIES_ENTRIES (before any member
    is opened), "image too large" when there are none but some file was over a size cap.
    """
    try:
        if over_series_cap(folder):
            raise UnusableImage(TOO_MANY_FILES)
        children = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError:
        raise UnusableImage(FILE_NOT_READABLE) from None
    keys = [(_series_key(child, limits), child.name, child) for child in children]
    keyed = [(key, name, child) for key, name, child in keys if isinstance(key, tuple)]
    if not keyed and any(key == TOO_LARGE for key, _, _ in keys):
        raise UnusableImage(TOO_LARGE)
    return [child for _, _, child in sorted(keyed)]


def _read_series(folder: Path, size: int, window: tuple[float, float] | None,
                 frame_policy: str, limits: DicomLimits) -> np.ndarray:
    instances = series_instances(folder, limits)
    if not instances:
        raise UnusableImage(NO_IMAGE_IN_FOLDER)
    middle = len(instances) // 2
    reasons: list[str] = []
    nearest = sorted(range(len(instances)), key=lambda i: (abs(i - middle), i))
    for i in nearest[:SERIES_ATTEMPTS]:
        try:
            return read_file(instances[i], size=size, window=window, frame_policy=frame_policy,
                             limits=limits)
        except UnusableImage as bad:
            reasons.append(bad.reason)
    raise UnusableImage(reasons[0])


def read_image(path: Path, *, size: int, window: tuple[float, float] | None,
               frame_policy: str = "middle", limits: DicomLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A DICOM file or series folder as float32 [size, size] in [0, 1]; raises UnusableImage.

    `window` is (center, width) in modality units (e.g. HU); None uses each file's own VOI.
    `limits` caps what one file may cost (client.site_data.imaging.limits).
    """
    check_arguments(size, window, frame_policy)
    if path.is_dir():
        return _read_series(path, size, window, frame_policy, limits)
    return read_file(path, size=size, window=window, frame_policy=frame_policy, limits=limits)
