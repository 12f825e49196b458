"""One DICOM file, or one series folder, -> a float32 [size, size] image in [0, 1].

Input
    A file is read with pydicom (force=False: bytes without the DICOM prefix are "not a DICOM
    file"). A folder is a series exported as one file per instance: its DICOM files with pixel
    data (non-recursive, hidden files ignored, all taken as one series) are ordered by Instance
    Number, then file name, and the middle one (index n // 2) is used. If that one is unusable the
    others are tried, nearest first; if none is usable, the middle one's reason is raised.
Checks, in order (reasons: client.site_data.imaging.reasons): readable file; DICOM; not truncated (no dataset,
    a last element shorter than its length, native pixel data shorter than the header says);
    pixel data present (else a registered non-image SOP class is named, or "no pixel data");
    transfer syntax present; image attributes readable; rows, columns and frames non-zero.
Pixels: client.site_data.imaging.pixels (frame policy, modality LUT, VOI, MONOCHROME1, colour, decoders).
Resize: torch "area" (exact box averaging, no aliasing) when neither side grows; antialiased
    bilinear when a side must grow, where "area" would only repeat pixels. The aspect ratio is
    not kept: the image is stretched to size x size.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID

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
    NOT_DICOM,
    UnusableImage,
    is_known_non_image_class,
    no_decoder,
    non_image,
)
from configs.validate import FRAME_POLICIES

__all__ = ("DEFAULT_WINDOW", "UnusableImage", "check_arguments", "image_from_bytes", "read_bytes",
           "read_image", "series_instances")

# A soft-tissue CT window, for data.window_center / window_width. Not a fallback: without a
# configured window the file's own VOI is used, else the image's min-max.
DEFAULT_WINDOW = (40.0, 400.0)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF


def read_bytes(path: Path) -> bytes:
    """The file's bytes; a missing or unreadable file is an UnusableImage."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UnusableImage(FILE_NOT_FOUND) from None
    except OSError:
        raise UnusableImage(FILE_NOT_READABLE) from None


def _parse(data: bytes) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        raise UnusableImage(NOT_DICOM) from None
    except Exception:  # noqa: BLE001 - the parser raises many types on damaged bytes
        raise UnusableImage(CORRUPT) from None


def _pixel_keyword(ds: Dataset) -> str | None:
    return next((k for k in PIXEL_KEYWORDS if k in ds), None)


def _cut_short(ds: Dataset) -> bool:
    """True when the dataset is empty or its last element holds fewer bytes than its length."""
    if len(ds) == 0:
        return True
    last = ds.get_item(next(reversed(ds.keys())))
    return (isinstance(last, RawDataElement) and isinstance(last.value, bytes)
            and last.length != UNDEFINED_LENGTH and len(last.value) < last.length)


def _frames(ds: Dataset, keyword: str) -> int:
    """Number of frames after the attribute checks (raises the matching UnusableImage)."""
    if not getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID"):
        raise UnusableImage(NO_TRANSFER_SYNTAX)
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    if int(ds.BitsAllocated) < 1 or int(ds.SamplesPerPixel) < 1 \
            or not str(ds.PhotometricInterpretation).strip():
        raise UnusableImage(INVALID_ATTRIBUTES)
    if min(rows, columns, frames) <= 0:
        raise UnusableImage(EMPTY_IMAGE)
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    if not transfer_syntax.is_transfer_syntax:
        raise UnusableImage(no_decoder(transfer_syntax))
    if not transfer_syntax.is_encapsulated and len(ds[keyword].value) < get_expected_length(ds, "bytes"):
        raise UnusableImage(CORRUPT)
    return frames


def checked_frames(ds: Dataset) -> int:
    """Check that `ds` is a decodable image (see module docstring); return its frame count."""
    try:
        if _cut_short(ds):
            raise UnusableImage(CORRUPT)
        keyword = _pixel_keyword(ds)
        if keyword is None:
            meta = getattr(ds, "file_meta", Dataset())
            sop_class = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
            if sop_class and is_known_non_image_class(sop_class):
                raise UnusableImage(non_image(sop_class))
            raise UnusableImage(NO_PIXEL_DATA)
        return _frames(ds, keyword)
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


def image_from_bytes(data: bytes, *, size: int, window: tuple[float, float] | None,
                     frame_policy: str = "middle") -> np.ndarray:
    """The image held in one DICOM file's bytes (see `read_image`)."""
    check_arguments(size, window, frame_policy)
    ds = _parse(data)
    frames = checked_frames(ds)
    image = greyscale(ds, frames=frames, window=window, frame_policy=frame_policy)
    return resize(image, size)


def _series_key(path: Path) -> tuple[int, int] | None:
    """(0, InstanceNumber) or (1, 0) for a DICOM file with pixel data; None for anything else."""
    try:
        ds = pydicom.dcmread(path, force=False, defer_size=1024)
        if _pixel_keyword(ds) is None:
            return None
    except Exception:  # noqa: BLE001 - anything unreadable is simply not an instance
        return None
    try:
        return 0, int(ds.InstanceNumber)
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError):
        return 1, 0


def series_instances(folder: Path) -> list[Path]:
    """The folder's image instances in series order (Instance Number, then file name)."""
    try:
        children = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError:
        raise UnusableImage(FILE_NOT_READABLE) from None
    keyed = [(key, child.name, child) for child in children if (key := _series_key(child))]
    return [child for _, _, child in sorted(keyed)]


def _read_series(folder: Path, size: int, window: tuple[float, float] | None,
                 frame_policy: str) -> np.ndarray:
    instances = series_instances(folder)
    if not instances:
        raise UnusableImage(NO_IMAGE_IN_FOLDER)
    middle = len(instances) // 2
    reasons: list[str] = []
    for i in sorted(range(len(instances)), key=lambda i: (abs(i - middle), i)):
        try:
            return image_from_bytes(read_bytes(instances[i]), size=size, window=window,
                                    frame_policy=frame_policy)
        except UnusableImage as bad:
            reasons.append(bad.reason)
    raise UnusableImage(reasons[0])


def read_image(path: Path, *, size: int, window: tuple[float, float] | None,
               frame_policy: str = "middle") -> np.ndarray:
    """A DICOM file or series folder as float32 [size, size] in [0, 1]; raises UnusableImage.

    `window` is (center, width) in modality units (e.g. HU); None uses each file's own VOI.
    """
    check_arguments(size, window, frame_policy)
    if path.is_dir():
        return _read_series(path, size, window, frame_policy)
    return image_from_bytes(read_bytes(path), size=size, window=window, frame_policy=frame_policy)
