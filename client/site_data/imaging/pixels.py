"""Pixels of one checked DICOM dataset -> one greyscale float64 image in [0, 1] (not resized).

Frames of a multi-frame object, chosen by `frame_policy`:
    "middle" (default)  frame n // 2 (the upper middle one when n is even)
    "first"             frame 0
    "mean"              every frame decoded and put through its modality LUT, then averaged;
                        VOI uses the first frame's attributes
Monochrome: modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, from the top level
    or the shared / per-frame functional groups of enhanced objects), then VOI: the configured
    window (linear, low = center - width / 2) if given, else the file's VOI LUT Sequence, else
    its window (with its VOI LUT Function), else the image's min-max. A VOI the file gets wrong
    falls back to min-max. MONOCHROME1 is inverted after VOI, so bright = dense as in MONOCHROME2.
Colour: RGB, YBR_FULL and YBR_FULL_422 (converted to RGB), YBR_ICT and YBR_RCT (the JPEG 2000
    codec returns RGB) -> ITU-R BT.601 luminance / (2**BitsStored - 1). No window is applied.
PALETTE COLOR: the palette is applied, then luminance / the palette's nominal maximum.
Decoding uses pydicom's decoders with whichever permissive plugins are installed.
"""

from __future__ import annotations

import struct

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import UID, JPEGExtended12Bit

from client.site_data.imaging.reasons import (
    INVALID_ATTRIBUTES,
    PALETTE_COLOUR,
    UNDECODABLE,
    UnusableImage,
    no_decoder,
    unsupported_photometric,
)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights for R, G, B
MODALITY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence")
VOI_KEYWORDS = ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")
FUNCTIONAL_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
# Transfer syntaxes (with the smallest Bits Stored) that the permissive plugins cannot decode:
# 12-bit JPEG Extended needs the GPL pylibjpeg-libjpeg, which must not be installed.
PERMISSIVE_GAPS = ((JPEGExtended12Bit, 9),)
LUT_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError,
              struct.error)


def frame_indices(frames: int, policy: str) -> list[int]:
    """Indices of the frames that `policy` uses."""
    if policy == "middle":
        return [frames // 2]
    if policy == "first":
        return [0]
    if policy == "mean":
        return list(range(frames))
    raise ValueError(f"frame_policy must be middle, first or mean (got {policy!r})")


def _decode_failure(ds: Dataset, transfer_syntax: UID) -> str:
    bits = int(ds.get("BitsStored", 0) or 0)
    for syntax, min_bits in PERMISSIVE_GAPS:
        if transfer_syntax == syntax and bits >= min_bits:
            return no_decoder(transfer_syntax)
    return UNDECODABLE


def decode_frame(ds: Dataset, index: int) -> tuple[np.ndarray, str]:
    """Frame `index` as decoded by pydicom, and the photometric interpretation it comes in."""
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        raise UnusableImage(no_decoder(transfer_syntax)) from None
    if not decoder.is_available:
        raise UnusableImage(no_decoder(transfer_syntax))
    try:
        arr, meta = decoder.as_array(ds, index=index, as_rgb=True)
    except Exception as exc:  # noqa: BLE001 - plugins raise anything; one file must not crash a site
        raise UnusableImage(_decode_failure(ds, transfer_syntax)) from exc
    return arr, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))


def frame_transforms(ds: Dataset, index: int, keywords: tuple[str, ...]) -> Dataset:
    """The `keywords` elements that apply to frame `index`: top level, then shared, then per-frame."""
    shim = Dataset()
    shim.file_meta = ds.file_meta  # LUT Data endianness
    sources: list[Dataset] = [ds]
    for groups_keyword, item in (("SharedFunctionalGroupsSequence", 0),
                                 ("PerFrameFunctionalGroupsSequence", index)):
        groups = ds.get(groups_keyword)
        if groups and len(groups) > item:
            sources += [groups[item].get(m)[0] for m in FUNCTIONAL_MACROS if groups[item].get(m)]
    for source in sources:
        for keyword in keywords:
            if keyword in source:
                shim[source[keyword].tag] = source[keyword]
    return shim


def min_max(pixels: np.ndarray) -> np.ndarray:
    """Linear map of the finite range to [0, 1]; a constant image becomes 0."""
    finite = np.isfinite(pixels)
    if not finite.any():
        return np.zeros(pixels.shape)
    values = pixels if finite.all() else pixels[finite]
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(pixels.shape)
    return np.nan_to_num((pixels - low) / (high - low), nan=0.0, posinf=1.0, neginf=0.0)


def _file_voi(pixels: np.ndarray, voi: Dataset) -> np.ndarray | None:
    """The file's VOI mapped to [0, 1], or None when it has none (or one that cannot be used)."""
    try:
        lut = voi.get("VOILUTSequence")
        if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
            depth = int(lut[0].LUTDescriptor[2])
            return apply_voi(np.rint(pixels).astype(np.int64), voi) / (2.0**depth - 1.0)
        if "WindowCenter" in voi and "WindowWidth" in voi:
            voi.PhotometricInterpretation = "MONOCHROME2"  # inversion happens later
            voi.BitsStored, voi.PixelRepresentation = 16, 0  # output range [0, 65535]
            return apply_windowing(pixels, voi) / 65535.0
    except LUT_ERRORS:
        return None
    return None


def _voi(pixels: np.ndarray, voi: Dataset, window: tuple[float, float] | None) -> np.ndarray:
    if window is not None:
        center, width = window
        return np.nan_to_num((pixels - (center - width / 2.0)) / width, nan=0.0)
    mapped = _file_voi(pixels, voi)
    return min_max(pixels) if mapped is None or not np.isfinite(mapped).all() else mapped


def _modality(ds: Dataset, index: int) -> np.ndarray:
    """Frame `index` in modality units (e.g. HU)."""
    arr, _ = decode_frame(ds, index)
    try:
        values = apply_modality_lut(arr, frame_transforms(ds, index, MODALITY_KEYWORDS))
    except LUT_ERRORS:
        raise UnusableImage(INVALID_ATTRIBUTES) from None
    return np.asarray(values, dtype=np.float64)


def _monochrome(ds: Dataset, indices: list[int], window: tuple[float, float] | None,
                inverted: bool) -> np.ndarray:
    total = _modality(ds, indices[0])
    for index in indices[1:]:
        total = total + _modality(ds, index)
    voi = frame_transforms(ds, indices[0], VOI_KEYWORDS)
    out = np.clip(_voi(total / len(indices) if len(indices) > 1 else total, voi, window), 0.0, 1.0)
    return 1.0 - out if inverted else out


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array (last axis = samples)."""
    return np.asarray(rgb[..., :3], dtype=np.float64) @ np.asarray(BT601)


def _colour(ds: Dataset, indices: list[int]) -> np.ndarray:
    nominal = 2.0 ** int(ds.get("BitsStored") or ds.BitsAllocated) - 1.0
    total = np.zeros(())
    for index in indices:
        arr, photometric = decode_frame(ds, index)
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            arr = convert_color_space(arr, photometric, "RGB")
        total = total + luminance(arr) / nominal
    return np.clip(total / len(indices), 0, 1)


def _palette(ds: Dataset, indices: list[int]) -> np.ndarray:
    total = np.zeros(())
    for index in indices:
        arr, _ = decode_frame(ds, index)
        try:
            rgb = apply_color_lut(arr, ds)
        except LUT_ERRORS:
            raise UnusableImage(PALETTE_COLOUR) from None
        total = total + luminance(rgb) / float(np.iinfo(rgb.dtype).max)
    return np.clip(total / len(indices), 0, 1)


def greyscale(ds: Dataset, *, frames: int, window: tuple[float, float] | None,
              frame_policy: str) -> np.ndarray:
    """The image (one frame, or the mean of all) as a 2-D float64 array in [0, 1]."""
    indices = frame_indices(frames, frame_policy)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric in MONOCHROME:
        image = _monochrome(ds, indices, window, inverted=photometric == "MONOCHROME1")
    elif photometric in RGB_LIKE:
        image = _colour(ds, indices)
    elif photometric == "PALETTE COLOR":
        image = _palette(ds, indices)
    else:
        raise UnusableImage(unsupported_photometric(photometric))
    if image.ndim != 2:
        raise UnusableImage(INVALID_ATTRIBUTES)
    return image
