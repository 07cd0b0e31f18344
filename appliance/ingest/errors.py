"""The reasons an incoming file is rejected; each becomes the ``reason`` of a quarantine record."""

from __future__ import annotations

from appliance.errors import InputError

# reason code -> one line for docs and operators
REASONS: dict[str, str] = {
    "truncated": "the file ends before its data does (incomplete copy or damaged file)",
    "not_dicom": "neither DICOM nor a PNG/TIFF image with a sidecar JSON",
    "not_image": "a DICOM object that is not a single-frame greyscale radiograph",
    "no_pixel_data": "the DICOM object carries no pixel data",
    "pixel_decode_failed": "the pixel data cannot be decoded (unsupported or corrupt compression)",
    "unsupported_transfer_syntax": "no installed decoder handles the transfer syntax",
    "unsupported_image": "bit depth, photometric interpretation or frame count is not supported",
    "no_spacing": "no usable pixel spacing (and ingest.missing_spacing = quarantine)",
    "bad_sidecar": "the sidecar JSON of a PNG/TIFF is missing or malformed",
    "damaged_element": "a DICOM element's value cannot be read (wrong length, unknown VR, bad encoding)",
    "missing_uid": "StudyInstanceUID or SOPInstanceUID missing or invalid",
    "unsupported_view": "no classification rule matches the film",
    "not_lower_limb": "the film shows another body part (by tags or by the image check)",
    "too_large": "the file is larger than ingest.max_file_mb, or its image than any film (100 megapixels)",
    "internal_error": "an unexpected error while reading the file (a bug: please report)",
}


class IngestError(InputError):
    """A file cannot be accepted; ``reason`` is one of :data:`REASONS`."""

    reason = "internal_error"

    def __init__(self, message: str, *, reason: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ingest reason {reason!r}")
        super().__init__(message, reason=reason)
