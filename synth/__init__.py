"""Synthetic multi-site hospital data (CT DICOM, labs, notes, labels) for fedclinic."""
