"""Valid-but-unusual CT encodings of the same HU slice, as real PACS exports produce them.

Every writer takes (job, hu, rng), writes under job.site_dir and returns the manifest image_path.
After the modality LUT (and, for MONOCHROME1, the inversion described in `monochrome1`) each
variant gives the clean HU image, except `uint8` (quantised to RescaleSlope) and the noisy
non-middle frames / instances of `multiframe` and `series`.
"""

from __future__ import annotations

import math
import pathlib
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from synth.dicom_writer import SLICE_THICKNESS_MM, WINDOW_CENTER, CTUids, build_ct, encode_pixels
from synth.site_profiles import SiteProfile

FRAME_NOISE_SD = 3.0  # HU noise on the non-middle frames of a multi-frame object
SERIES_NOISE_SD = 5.0  # HU noise on the non-middle instances of a series folder
VOI_CENTER, VOI_WIDTH = 50, 350  # the `voi_window` variant's stored window
M1_REFLECT_HU = 2.0 * WINDOW_CENTER  # MONOCHROME1 modality value = 80 - HU
J2K_MIN_SIZE = 32  # openjpeg's default 6 resolution levels need at least 32 x 32 pixels
# Series folder: file name -> InstanceNumber. Lexical order (3, 1, 2) differs from instance order.
SERIES_FILES: tuple[tuple[str, int], ...] = (("I0.dcm", 3), ("I1.dcm", 1), ("I2.dcm", 2))
REAL_INSTANCE = 2  # the instance carrying the real (clean) slice


@dataclass(frozen=True)
class ImageJob:
    """Where and as whom to write one patient's image."""

    site_dir: pathlib.Path
    patient_id: str
    uids: CTUids
    profile: SiteProfile
    study_date: str

    @property
    def rel(self) -> str:
        """Default manifest path of this patient's image file."""
        return f"images/{self.patient_id}.dcm"

    def build(self, hu: np.ndarray) -> Dataset:
        """A clean CT dataset for `hu` in the site's conventions."""
        return build_ct(hu, patient_id=self.patient_id, uids=self.uids, profile=self.profile,
                        study_date=self.study_date)

    def save(self, ds: Dataset, rel: str) -> str:
        """Save `ds` at site_dir/rel; return rel."""
        ds.save_as(self.site_dir / rel, enforce_file_format=True)
        return rel


def clean(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """The ordinary single-frame MONOCHROME2 file."""
    return job.save(job.build(hu), job.rel)


def monochrome1(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """MONOCHROME1: modality values are M1_REFLECT_HU - HU (80 - HU: reflected about the clean 40 HU centre).

    Stored window 41 / 400: DICOM's linear VOI function centres on WindowCenter - 0.5 = 40.5, so
    windowing with the file's window and then inverting (x -> 1 - x) gives exactly the clean file's
    windowed image; so does the plain window 40 / 400 (low = c - w / 2) and then inverting, and
    so does v -> 80 - v in modality units.
    """
    ds = job.build(M1_REFLECT_HU - hu)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter = WINDOW_CENTER + 1
    return job.save(ds, job.rel)


def multiframe(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """NumberOfFrames 3: the clean slice as the middle frame, noisy copies before and after."""
    ds = job.build(hu)
    rescale = job.profile.rescale
    frames = [encode_pixels(hu + rng.normal(0.0, FRAME_NOISE_SD, hu.shape), rescale),
              encode_pixels(hu, rescale),
              encode_pixels(hu + rng.normal(0.0, FRAME_NOISE_SD, hu.shape), rescale)]
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(frames).tobytes()
    return job.save(ds, job.rel)


def rle(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """RLE Lossless transfer syntax (numpy encoder, bit-exact)."""
    ds = job.build(hu)
    ds.compress(RLELossless, generate_instance_uid=False)
    return job.save(ds, job.rel)


def jpeg2000_available() -> bool:
    """Whether pydicom has a JPEG 2000 Lossless encoder (pylibjpeg-openjpeg or similar)."""
    return bool(get_encoder(JPEG2000Lossless).is_available)


def jpeg2000(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """JPEG 2000 Lossless when an encoder is installed and the image is >= 32 px, else the clean file."""
    ds = job.build(hu)
    if jpeg2000_available() and min(hu.shape) >= J2K_MIN_SIZE:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    return job.save(ds, job.rel)


def uint8(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """8-bit unsigned storage; RescaleIntercept/Slope map 0..255 onto the slice's HU range."""
    ds = job.build(hu)
    low = math.floor(float(hu.min()))
    slope = max(math.ceil((float(hu.max()) - low) / 255.0 * 100.0) / 100.0, 0.01)
    stored = np.clip(np.rint((hu - low) / slope), 0, 255).astype(np.uint8)
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = low
    ds.RescaleSlope = slope
    ds.PixelData = stored.tobytes()
    return job.save(ds, job.rel)


def series(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """A folder images/<pid>/ of 3 single-frame instances; InstanceNumber 2 holds the clean slice."""
    folder = f"images/{job.patient_id}"
    (job.site_dir / folder).mkdir(parents=True, exist_ok=True)
    for name, number in SERIES_FILES:
        noisy = hu + rng.normal(0.0, SERIES_NOISE_SD, hu.shape)
        ds = job.build(hu if number == REAL_INSTANCE else noisy)
        z = float((number - REAL_INSTANCE) * SLICE_THICKNESS_MM)
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [*list(ds.ImagePositionPatient)[:2], z]
        ds.SliceLocation = z
        sop = str(generate_uid(entropy_srcs=[job.uids.sop, "instance", str(number)]))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        job.save(ds, f"{folder}/{name}")
    return f"{folder}/"


def voi_window(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """Clean pixels with a non-default stored VOI window (WindowCenter 50 / WindowWidth 350)."""
    ds = job.build(hu)
    ds.WindowCenter = VOI_CENTER
    ds.WindowWidth = VOI_WIDTH
    return job.save(ds, job.rel)
