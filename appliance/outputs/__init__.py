"""DICOM and PDF outputs of a processed study (docs/outputs.md)."""
