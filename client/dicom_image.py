"""One DICOM file -> a windowed, resized float image in [0, 1]."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

DEFAULT_WINDOW = (40.0, 400.0)  # soft tissue, used when neither the file nor config has one


class UnusableImage(Exception):
    """A file that cannot become a training image; `reason` is a short code, safe to report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = list(value)[0]  # type: ignore[call-overload]
    return float(value)  # type: ignore[arg-type]


def file_window(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(center, width) stored in the file, if any."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return _first(ds.WindowCenter), _first(ds.WindowWidth)
    return None


def read_image(path: Path, *, size: int, window: tuple[float, float] | None) -> np.ndarray:
    """Rescale to modality units, apply the window (config first, then file), resize to size^2."""
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise UnusableImage("not a readable DICOM file") from exc
    if "PixelData" not in ds:
        raise UnusableImage("no pixel data")
    try:
        pixels = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
    except (ValueError, AttributeError, RuntimeError, NotImplementedError) as exc:
        raise UnusableImage("pixel data cannot be decoded") from exc
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise UnusableImage("not a single-frame greyscale image")
    center, width = window or file_window(ds) or DEFAULT_WINDOW
    low = center - width / 2.0
    scaled = np.clip((pixels - low) / width, 0.0, 1.0)
    tensor = torch.from_numpy(scaled)[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="area")
    return resized[0, 0].numpy()
