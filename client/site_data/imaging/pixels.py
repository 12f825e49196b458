"""Pixels of one checked DICOM file -> one greyscale float32 image in [0, 1] (not resized).

Frames are decoded one at a time (client.site_data.imaging.source.PixelSource.frame) and turned
into float32 at once; pydicom's pointwise transforms (modality LUT, VOI LUT, windowing, colour
conversion, palette) run over blocks of BLOCK_SAMPLES samples, so their float64 temporaries stay
small whatever the frame size. "mean" keeps one float32 sum, never all frames.

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
PALETTE COLOR: the palette becomes one luminance table (luminance / the entries' nominal
    maximum), built once per file before any frame is decoded and checked against the LUT
    descriptor's number of entries first: plain LUT Data must hold exactly that many 8- or 16-bit
    entries, and a Segmented LUT's segment headers are counted (nothing expanded) and refused
    over it, or with an indirect segment (`palette_luminance`): "palette colour image".
Decoding uses pydicom's decoders with whichever permissive plugins are installed; a frame no
plugin decodes is "pixel data cannot be decoded" (its traceback goes to the DEBUG log), or "no
permissive decoder for ..." where only a GPL plugin could (PERMISSIVE_GAPS).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, convert_color_space
from pydicom.uid import UID, JPEGExtended12Bit

from client.site_data.imaging.reasons import (
    INVALID_ATTRIBUTES,
    PALETTE_COLOUR,
    UNDECODABLE,
    UnusableImage,
    no_decoder,
    unsupported_photometric,
)
from client.site_data.imaging.source import PixelSource

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
RGB_LIKE = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights for R, G, B
MODALITY_KEYWORDS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence")
VOI_KEYWORDS = ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")
FUNCTIONAL_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
# Transfer syntaxes (with the smallest Bits Stored) that the permissive plugins cannot decode:
# 12-bit JPEG Extended needs the GPL pylibjpeg-libjpeg, which must not be installed.
PERMISSIVE_GAPS = ((JPEGExtended12Bit, 9),)
BLOCK_SAMPLES = 1 << 20  # samples per block of pointwise float64 work (8 MiB temporaries)
LUT_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError,
              struct.error)
# Palette Color LUTs (PS3.3 C.7.6.3.1.5): at most 2**16 entries (a descriptor's 0 means 65536).
# A segmented LUT is expanded only after its segment headers show it within its descriptor's
# count: pydicom's apply_color_lut expands it without bound (a linear segment of 3 words adds up
# to 65,535 entries, so 120 KB of them expand to 2.6e9 Python ints).
MAX_PALETTE_ENTRIES = 1 << 16
PALETTE_CHANNELS = ("Red", "Green", "Blue")


def frame_indices(frames: int, policy: str) -> list[int]:
    """Indices of the frames that `policy` uses (in increasing order)."""
    if policy == "middle":
        return [frames // 2]
    if policy == "first":
        return [0]
    if policy == "mean":
        return list(range(frames))
    raise ValueError(f"frame_policy must be middle, first or mean (got {policy!r})")


def decode_failure(transfer_syntax: UID, bits_stored: int) -> str:
    """The reason for a frame no installed plugin decoded."""
    for syntax, min_bits in PERMISSIVE_GAPS:
        if transfer_syntax == syntax and bits_stored >= min_bits:
            return no_decoder(transfer_syntax)
    return UNDECODABLE


def decode_frame(src: PixelSource, index: int, frames: int) -> tuple[np.ndarray, str]:
    """Frame `index` as decoded by pydicom, and the photometric interpretation it comes in."""
    try:
        return src.frame(index, frames)
    except UnusableImage as bad:
        if bad.reason != UNDECODABLE:
            raise
        bits = int(src.ds.get("BitsStored", 0) or 0)
        raise UnusableImage(decode_failure(src.transfer_syntax, bits)) from None


def blockwise(fn: Callable[[np.ndarray], np.ndarray], arr: np.ndarray) -> np.ndarray:
    """float32 `fn(arr)` for a pointwise `fn`, applied BLOCK_SAMPLES at a time (whole rows), so
    that fn's float64 temporaries stay small however large the frame."""
    per_row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)))
    step = max(1, BLOCK_SAMPLES // per_row)
    out: np.ndarray | None = None
    for row in range(0, max(arr.shape[0], 1), step):
        part = np.asarray(fn(arr[row:row + step]), dtype=np.float32)
        if out is None:
            out = np.empty((arr.shape[0], *part.shape[1:]), dtype=np.float32)
        out[row:row + step] = part
    assert out is not None
    return out


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
    """Linear map of the finite range to [0, 1] (in place on a float32 array); constant -> 0."""
    pixels = np.asarray(pixels, dtype=np.float32)
    finite = np.isfinite(pixels)
    if not finite.any():
        return np.zeros(pixels.shape, dtype=np.float32)
    values = pixels if finite.all() else pixels[finite]
    del finite
    low, high = float(values.min()), float(values.max())
    del values
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        np.subtract(pixels, np.float32(low), out=pixels)
        np.divide(pixels, np.float32(high - low), out=pixels)
    return np.nan_to_num(pixels, copy=False, nan=0.0, posinf=1.0, neginf=0.0)


def _file_voi(pixels: np.ndarray, voi: Dataset) -> np.ndarray | None:
    """The file's VOI mapped to [0, 1], or None when it has none (or one that cannot be used)."""
    try:
        lut = voi.get("VOILUTSequence")
        if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
            scale = 2.0 ** int(lut[0].LUTDescriptor[2]) - 1.0
            return blockwise(lambda block: apply_voi(np.rint(block).astype(np.int64), voi) / scale, pixels)
        if "WindowCenter" in voi and "WindowWidth" in voi:
            voi.PhotometricInterpretation = "MONOCHROME2"  # inversion happens later
            voi.BitsStored, voi.PixelRepresentation = 16, 0  # output range [0, 65535]
            return blockwise(lambda block: apply_windowing(block, voi) / 65535.0, pixels)
    except LUT_ERRORS:
        return None
    return None


def _voi(pixels: np.ndarray, voi: Dataset, window: tuple[float, float] | None) -> np.ndarray:
    """VOI of float32 modality values (overwritten when a window is configured)."""
    if window is not None:
        center, width = window
        with np.errstate(over="ignore", invalid="ignore"):
            np.subtract(pixels, np.float32(center - width / 2.0), out=pixels)
            np.divide(pixels, np.float32(width), out=pixels)
        return np.nan_to_num(pixels, copy=False, nan=0.0)
    mapped = _file_voi(pixels, voi)
    return min_max(pixels) if mapped is None or not np.isfinite(mapped).all() else mapped


def _modality(src: PixelSource, index: int, frames: int) -> np.ndarray:
    """Frame `index` in modality units (e.g. HU), float32."""
    arr, _ = decode_frame(src, index, frames)
    transforms = frame_transforms(src.ds, index, MODALITY_KEYWORDS)
    try:
        return blockwise(lambda block: apply_modality_lut(block, transforms), arr)
    except LUT_ERRORS:
        raise UnusableImage(INVALID_ATTRIBUTES) from None


def _monochrome(src: PixelSource, indices: list[int], frames: int, window: tuple[float, float] | None,
                inverted: bool) -> np.ndarray:
    total = _modality(src, indices[0], frames)
    for index in indices[1:]:
        frame = _modality(src, index, frames)
        if frame.shape != total.shape:
            raise UnusableImage(INVALID_ATTRIBUTES)
        total += frame
        del frame
    if len(indices) > 1:
        total /= np.float32(len(indices))
    out = _voi(total, frame_transforms(src.ds, indices[0], VOI_KEYWORDS), window)
    np.clip(out, 0.0, 1.0, out=out)
    return np.subtract(np.float32(1.0), out, out=out) if inverted else out


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array (last axis = samples)."""
    return np.asarray(rgb[..., :3], dtype=np.float64) @ np.asarray(BT601)


def _accumulate(total: np.ndarray | None, frame: np.ndarray) -> np.ndarray:
    if total is None:
        return frame
    if frame.shape != total.shape:
        raise UnusableImage(INVALID_ATTRIBUTES)
    total += frame
    return total


def _mean_of_frames(src: PixelSource, indices: list[int], frames: int, ndim: int,
                    to_luma: Callable[[np.ndarray, str], np.ndarray]) -> np.ndarray:
    """Frames `indices` decoded one at a time, each turned into luminance in [0, 1] block by block
    (`to_luma(block, photometric)`), and averaged into one float32 [rows, columns] image.
    UnusableImage(INVALID_ATTRIBUTES) for a frame that is not `ndim`-dimensional or not the
    first one's shape."""
    total: np.ndarray | None = None
    for index in indices:
        arr, photometric = decode_frame(src, index, frames)
        if arr.ndim != ndim:
            raise UnusableImage(INVALID_ATTRIBUTES)
        total = _accumulate(total, blockwise(lambda block, p=photometric: to_luma(block, p), arr))
        del arr
    assert total is not None
    if len(indices) > 1:
        total /= np.float32(len(indices))
    return np.clip(total, 0.0, 1.0, out=total)


def _colour(src: PixelSource, indices: list[int], frames: int) -> np.ndarray:
    nominal = 2.0 ** int(src.ds.get("BitsStored") or src.ds.BitsAllocated) - 1.0

    def to_luma(block: np.ndarray, photometric: str) -> np.ndarray:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            block = convert_color_space(block, photometric, "RGB")
        return luminance(block) / nominal

    return _mean_of_frames(src, indices, frames, 3, to_luma)


def _lut_words(data: bytes, bits: int, little: bool) -> np.ndarray:
    """LUT Data bytes as unsigned `bits`-bit entries in the dataset's byte order."""
    if bits == 8:
        return np.frombuffer(data, dtype=np.uint8)
    if len(data) % 2:
        raise UnusableImage(PALETTE_COLOUR)
    return np.frombuffer(data, dtype="<u2" if little else ">u2")


def segmented_length(words: np.ndarray, limit: int) -> int:
    """Entries a Segmented Palette Color LUT (PS3.3 C.7.9.2) expands to, counted from its segment
    headers alone (nothing is expanded). "palette colour image" for a table over `limit` entries,
    an indirect segment (type 2: never emitted in practice, and read differently by readers:
    pydicom takes its offset as an entry index, the standard as a byte offset), an empty or
    unknown segment, a first segment that is linear, or a segment cut by the end of the data."""
    total, offset, count = 0, 0, len(words)
    while offset + 1 < count:  # a trailing pad entry is allowed
        opcode, length = int(words[offset]), int(words[offset + 1])
        if opcode == 0:  # discrete: `length` values follow
            offset += 2 + length
        elif opcode == 1 and total:  # linear: `length` values up to the one that follows
            offset += 3
        else:
            raise UnusableImage(PALETTE_COLOUR)
        total += length
        if length == 0 or offset > count or total > limit:
            raise UnusableImage(PALETTE_COLOUR)
    if total == 0:
        raise UnusableImage(PALETTE_COLOUR)
    return total


def expand_segmented(words: np.ndarray, limit: int) -> np.ndarray:
    """The expanded table (float64) of a Segmented Palette Color LUT, once `segmented_length`
    has bounded it by `limit`; linear segments are interpolated as pydicom does."""
    out = np.empty(segmented_length(words, limit), dtype=np.float64)
    offset = filled = 0
    while offset + 1 < len(words):
        opcode, length = int(words[offset]), int(words[offset + 1])
        if opcode == 0:
            out[filled:filled + length] = words[offset + 2:offset + 2 + length]
            offset += 2 + length
        else:
            y0, y1 = out[filled - 1], float(words[offset + 2])
            step = (y1 - y0) / length
            out[filled:filled + length] = np.around(np.linspace(y0 + step, y1, length))
            offset += 3
        filled += length
    return out


def palette_luminance(ds: Dataset) -> tuple[np.ndarray, int]:
    """The palette as one float32 luminance table in [0, 1] (ITU-R BT.601 of R, G, B over the
    entries' nominal maximum) and the first stored value it maps, built once per file.

    Every LUT is checked against the Red descriptor before it is used: the number of entries n
    (0 means 65536) bounds a segmented table (`segmented_length`), and plain LUT Data must hold
    n entries of 8 or 16 bits. Anything else is "palette colour image"."""
    try:
        if str(ds.get("PixelPresentation", "")).upper() in ("MIXED", "COLOR"):
            raise UnusableImage(PALETTE_COLOUR)  # supplemental palette: not supported
        descriptor = [int(v) for v in ds.RedPaletteColorLookupTableDescriptor]
        entries, first_map, nominal = descriptor[0] or MAX_PALETTE_ENTRIES, descriptor[1], descriptor[2]
        little = ds.original_encoding[1] is not False
        tables: list[np.ndarray] = []
        if "RedPaletteColorLookupTableData" in ds:
            for colour in PALETTE_CHANNELS:
                data = bytes(ds[f"{colour}PaletteColorLookupTableData"].value)
                if len(data) == 2 * entries:
                    bits = 16
                elif len(data) == entries + entries % 2:  # 8-bit entries, with an odd count's pad byte
                    bits, data = 8, data[:entries]
                else:
                    raise UnusableImage(PALETTE_COLOUR)
                tables.append(_lut_words(data, bits, little).astype(np.float64))
        elif "SegmentedRedPaletteColorLookupTableData" in ds and nominal in (8, 16):
            bits = nominal
            for colour in PALETTE_CHANNELS:
                data = bytes(ds[f"Segmented{colour}PaletteColorLookupTableData"].value)
                tables.append(expand_segmented(_lut_words(data, nominal, little), entries))
        else:
            raise UnusableImage(PALETTE_COLOUR)
    except LUT_ERRORS:
        raise UnusableImage(PALETTE_COLOUR) from None
    if len({len(t) for t in tables}) != 1:
        raise UnusableImage(PALETTE_COLOUR)
    scale = 2.0 ** bits - 1.0
    rgb = [np.clip(t, 0.0, scale) for t in tables]
    luma = (BT601[0] * rgb[0] + BT601[1] * rgb[1] + BT601[2] * rgb[2]) / scale
    return luma.astype(np.float32), first_map


def _palette(src: PixelSource, indices: list[int], frames: int) -> np.ndarray:
    table, first_map = palette_luminance(src.ds)  # before any frame is decoded

    def to_luma(block: np.ndarray, _photometric: str) -> np.ndarray:
        # stored values below the first mapped one take entry 0, those past the table its last
        index = np.clip(np.asarray(block, dtype=np.int64) - first_map, 0, len(table) - 1)
        return table[index]

    return _mean_of_frames(src, indices, frames, 2, to_luma)


def greyscale(src: PixelSource, *, frames: int, window: tuple[float, float] | None,
              frame_policy: str) -> np.ndarray:
    """The image (one frame, or the mean of all) as a 2-D float32 array in [0, 1]."""
    indices = frame_indices(frames, frame_policy)
    photometric = str(src.ds.PhotometricInterpretation).strip().upper()
    if photometric in MONOCHROME:
        image = _monochrome(src, indices, frames, window, inverted=photometric == "MONOCHROME1")
    elif photometric in RGB_LIKE:
        image = _colour(src, indices, frames)
    elif photometric == "PALETTE COLOR":
        image = _palette(src, indices, frames)
    else:
        raise UnusableImage(unsupported_photometric(photometric))
    if image.ndim != 2:
        raise UnusableImage(INVALID_ATTRIBUTES)
    return image
