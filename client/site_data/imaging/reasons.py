"""Why an image was quarantined: a finite, non-identifying vocabulary.

Reasons are counted in the site load report, shown to site IT and shared with the central
team, so a reason never holds patient data, a path or exception text. It is one of the fixed
phrases below, or one of three prefixes followed by a qualifier from a closed set:

    non-image object: <SOP class name from pydicom's UID dictionary>
    unsupported photometric interpretation: <DICOM defined term, or "other">
    no permissive decoder for <transfer syntax name, or "unknown transfer syntax">
"""

from __future__ import annotations

from pydicom.uid import UID, UID_dictionary

FILE_NOT_FOUND = "file not found"
FILE_NOT_READABLE = "file not readable"
NOT_DICOM = "not a DICOM file"
CORRUPT = "truncated or corrupt file"
NO_PIXEL_DATA = "no pixel data"
EMPTY_IMAGE = "empty image"
INVALID_ATTRIBUTES = "invalid image attributes"
NO_TRANSFER_SYNTAX = "missing transfer syntax"
PALETTE_COLOUR = "palette colour image"
UNDECODABLE = "pixel data cannot be decoded"
NO_IMAGE_IN_FOLDER = "no image instances in folder"
TOO_LARGE = "image too large"  # over a cap of client.site_data.imaging.limits, before decoding
# a series folder over client.site_data.imaging.limits.MAX_SERIES_ENTRIES, before any member is read
TOO_MANY_FILES = "series folder with too many files"

FIXED_REASONS = frozenset({
    FILE_NOT_FOUND, FILE_NOT_READABLE, NOT_DICOM, CORRUPT, NO_PIXEL_DATA, EMPTY_IMAGE,
    INVALID_ATTRIBUTES, NO_TRANSFER_SYNTAX, PALETTE_COLOUR, UNDECODABLE, NO_IMAGE_IN_FOLDER,
    TOO_LARGE, TOO_MANY_FILES,
})

NON_IMAGE = "non-image object: "
UNSUPPORTED_PHOTOMETRIC = "unsupported photometric interpretation: "
NO_DECODER = "no permissive decoder for "
UNKNOWN_TRANSFER_SYNTAX = "unknown transfer syntax"
OTHER = "other"

# PS3.3 C.7.6.3.1.2 defined terms (current and retired).
PHOTOMETRIC_TERMS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
    "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYZ",
})

# SOP classes that carry pixel data although "Image" is not in their name.
PIXEL_SOP_CLASSES = frozenset({
    "RT Dose Storage", "Segmentation Storage", "Parametric Map Storage",
    "Ophthalmic Thickness Map Storage", "Corneal Topography Map Storage",
    "Enhanced US Volume Storage",
    "Ophthalmic Optical Coherence Tomography B-scan Volume Analysis Storage",
})


class UnusableImage(Exception):
    """A file that cannot become a training image; `reason` is from this module's vocabulary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _known(uid: str, kind: str) -> bool:
    entry = UID_dictionary.get(str(uid))
    return entry is not None and entry[1] == kind


def is_known_non_image_class(uid: str) -> bool:
    """True for a registered SOP class that never carries an image (SR, RT Plan, ECG, PDF, ...)."""
    if not _known(uid, "SOP Class"):
        return False
    name = UID(str(uid)).name
    return "Image" not in name and name not in PIXEL_SOP_CLASSES


def non_image(uid: str) -> str:
    """Reason for a registered non-image SOP class (see `is_known_non_image_class`)."""
    return NON_IMAGE + UID(str(uid)).name


def unsupported_photometric(value: object) -> str:
    """Reason for a photometric interpretation this reader does not convert."""
    term = str(value).strip().upper()
    return UNSUPPORTED_PHOTOMETRIC + (term if term in PHOTOMETRIC_TERMS else OTHER)


def no_decoder(transfer_syntax: str) -> str:
    """Reason for pixel data that no installed permissive plugin can decode."""
    known = _known(transfer_syntax, "Transfer Syntax")
    return NO_DECODER + (UID(str(transfer_syntax)).name if known else UNKNOWN_TRANSFER_SYNTAX)


def is_known_reason(reason: str) -> bool:
    """True when `reason` belongs to the vocabulary (used by tests and the cache)."""
    if reason in FIXED_REASONS:
        return True
    names = {kind: {v[0] for v in UID_dictionary.values() if v[1] == kind}
             for kind in ("SOP Class", "Transfer Syntax")}
    if reason.startswith(NON_IMAGE):
        return reason[len(NON_IMAGE):] in names["SOP Class"]
    if reason.startswith(UNSUPPORTED_PHOTOMETRIC):
        return reason[len(UNSUPPORTED_PHOTOMETRIC):] in PHOTOMETRIC_TERMS | {OTHER}
    if reason.startswith(NO_DECODER):
        return reason[len(NO_DECODER):] in names["Transfer Syntax"] | {UNKNOWN_TRANSFER_SYNTAX}
    return False
