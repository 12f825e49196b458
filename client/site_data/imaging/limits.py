"""Size caps that keep reading and decoding one DICOM file within bounded memory and time.

Every cap is checked from sizes the file states (its size on disk, its header, the header of a
compressed frame) BEFORE the bytes it bounds are read, inflated or decoded; a file over any cap
is quarantined as "image too large" (client.site_data.imaging.reasons.TOO_LARGE). The defaults
keep the peak memory of a whole-site load (`fedclinic site check`, every round) well under 1 GiB
whatever the files hold, while admitting every clinical image the model can use
(data.image_size <= 512, so a frame is always shrunk to at most 512 x 512):

max_file_mb = 1024
    Bytes on disk (st_size), checked with stat before the file is opened, hashed or parsed. The
    largest single-frame clinical objects are a few tens of MB (a 16-bit 4728 x 5928 mammogram
    is 56 MB); uncompressed multi-frame CT/MR/tomosynthesis objects reach a few hundred MB. A
    larger file is never read (frames are read one at a time, so this bounds time, not memory).
    For Deflated Explicit VR Little Endian files it also caps the inflated dataset, which is
    inflated in bounded chunks and never beyond the bytes it must reach.
max_frame_samples = 2**25 (33,554,432)
    Rows x Columns x SamplesPerPixel of one frame, the size of the float32 buffers a frame is
    processed in (128 MiB each). Clinical CT/MR/CR/DX frames are at most ~4096 x 4096 (16.8 M),
    full-field mammograms up to ~5000 x 6000 (30 M); a colour frame (3 samples) is admitted up
    to ~3344 x 3344, beyond any ultrasound or endoscopy frame.
max_frame_mb = 64
    Rows x Columns x SamplesPerPixel x BitsAllocated / 8 of one decoded frame (a huge
    BitsAllocated is caught here; a 16-bit frame of max_frame_samples fits, a 32- or 64-bit one
    up to ~4096 x 4096 or ~2896 x 2896), and the most encoded bytes one compressed frame may
    span (its fragments are read into memory to be decoded): no codec's output is larger than
    the decoded frame by more than a few percent.
max_pixel_data_mb = 2048
    Rows x Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated / 8: the decoded size of
    all frames as declared, before anything is decoded. Bounds the time of frame_policy "mean"
    (every frame is decoded, one at a time) and rejects a multi-frame object declaring more
    frames than any acquisition has (e.g. NumberOfFrames = 100000).
max_header_mb = 4
    Bytes the parser may read before the pixel data (elements over 1 MiB, such as an embedded
    PDF, are skipped without being read), and at most MAX_HEADER_ITEMS sequence items: pydicom
    holds a parsed header at up to ~85x its size in memory (a sequence of empty items), ~25x
    for plain elements. 4 MiB and 100,000 items cover the functional groups of enhanced
    multi-frame objects with thousands of frames.

Caps are part of the preprocessing cache key, so a changed cap re-decides every file.

Series folders (fixed, not site settings):
MAX_SERIES_ENTRIES = 5000
    Entries a series folder may hold (any kind, hidden ones included), counted with os.scandir
    that stops at the first one past the cap, BEFORE any member is resolved, hashed or parsed:
    over it the folder is "series folder with too many files" (reasons.TOO_MANY_FILES), at the
    cost of reading one directory listing, so no verdict needs caching. Clinical series are
    at most a few thousand instances (a thin-slice whole-body CT: ~2,000-3,000), and the model
    uses one instance of the folder anyway. A site with larger series lists a folder holding the
    instances around the one to use, or a single instance file, in its manifest.
SERIES_ATTEMPTS = 9
    Instances of a series folder decoded at most: the middle one, then the 8 nearest to it. If
    none of them decodes the folder gets the middle one's reason (without the cap, a folder of
    thousands of broken instances was decoded instance by instance).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class DicomLimits:
    """Caps on one DICOM file (see the module docstring for each default's source)."""

    max_file_mb: int = 1024
    max_frame_samples: int = 1 << 25
    max_frame_mb: int = 64
    max_pixel_data_mb: int = 2048
    max_header_mb: int = 4

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer (got {value!r})")

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb * MIB

    @property
    def max_frame_bytes(self) -> int:
        return self.max_frame_mb * MIB

    @property
    def max_pixel_data_bytes(self) -> int:
        return self.max_pixel_data_mb * MIB

    @property
    def max_header_bytes(self) -> int:
        return self.max_header_mb * MIB


DEFAULT_LIMITS = DicomLimits()
DEFER_BYTES = 1 << 20  # header elements larger than this are skipped, not read (LUTs are <= 128 KiB)
# Sequence items the header may hold: pydicom keeps each as a Dataset (~700 bytes even when
# empty), so 100,000 cost ~70 MB; an enhanced multi-frame object has ~10 per frame.
MAX_HEADER_ITEMS = 100_000

MAX_SERIES_ENTRIES = 5000
SERIES_ATTEMPTS = 9


def over_series_cap(folder: Path | str, cap: int | None = None) -> bool:
    """True when `folder` holds more than `cap` (default MAX_SERIES_ENTRIES) entries, of any kind,
    hidden included; reads its listing only up to the first entry past the cap and stats
    nothing. Raises OSError."""
    cap = MAX_SERIES_ENTRIES if cap is None else cap
    with os.scandir(folder) as entries:
        for count, _ in enumerate(entries, start=1):
            if count > cap:
                return True
    return False
