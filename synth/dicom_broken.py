"""Manifest entries that cannot become a training image (a loader must quarantine them).

Writers share dicom_variants' signature (job, hu, rng) -> manifest image_path.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from synth.dicom_variants import ImageJob

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
TRUNCATE_SHARE = 0.6  # a truncated file keeps this share of its bytes
SR_TEXT = "Synthetic report. No image attached to this object."


def truncated(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """A clean CT file cut to 60 % of its bytes (inside PixelData): pixel_array raises."""
    path = job.site_dir / job.save(job.build(hu), job.rel)
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * TRUNCATE_SHARE)])
    return job.rel


def not_dicom(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """Random bytes under a .dcm name (no preamble, no 'DICM'): dcmread raises InvalidDicomError."""
    data = bytearray(rng.bytes(2 * hu.size + 512))
    data[128:132] = b"NOPE"
    (job.site_dir / job.rel).write_bytes(bytes(data))
    return job.rel


def no_pixels(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """A CT Image Storage object (image SOP class) without PixelData."""
    ds = job.build(hu)
    del ds.PixelData
    return job.save(ds, job.rel)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    """A code sequence item."""
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _sr_dataset(job: ImageJob) -> Dataset:
    """A minimal Basic Text SR document for the patient (no pixel data)."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = job.uids.sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, job.uids.sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = job.uids.study, job.uids.series
    ds.PatientID, ds.PatientName = job.patient_id, f"SYNTH^{job.patient_id}"
    ds.StudyDate = ds.ContentDate = job.study_date
    ds.StudyTime = ds.ContentTime = "090000"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 2, 1
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    finding.ConceptNameCodeSequence = Sequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = SR_TEXT
    ds.ContentSequence = Sequence([finding])
    return ds


def structured_report(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """A Basic Text SR (SOP class 1.2.840.10008.5.1.4.1.1.88.11) listed as the patient's image."""
    return job.save(_sr_dataset(job), job.rel)


def missing(job: ImageJob, hu: np.ndarray, rng: np.random.Generator) -> str:
    """A manifest row whose file is never written."""
    return job.rel
