"""DICOM files -> preprocessed images: reading, decoding, the per-file cache and its quota."""
