"""Pixel spacing at the patient from a DICOM header (PS3.3 10.7, C.8.11.4 and C.8.11.7).

Order of trust:

1. ``PixelSpacing`` with a ``PixelSpacingCalibrationType`` (already calibrated to the patient): as is.
2. ``ImagerPixelSpacing`` (detector plane) divided by the magnification, from
   ``EstimatedRadiographicMagnificationFactor`` or else ``DistanceSourceToDetector /
   DistanceSourceToPatient`` (when ``correct_magnification`` is on; otherwise detector millimetres).
3. ``PixelSpacing`` without calibration type: for projection radiographs it usually equals the imager
   spacing (PS3.3 10.7.1.3), so it is treated like (2) when no imager spacing is present.

Zero, negative, non-numeric or absurd (> 5 mm) values count as absent: RG1 in pydicom-data carries
``PixelSpacing = [0, 0]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset

_MAX_SPACING_MM = 5.0


@dataclass(frozen=True)
class Spacing:
    row_mm: float
    col_mm: float
    source: str
    magnification: float | None


def _pair(ds: Dataset, keyword: str) -> tuple[float, float] | None:
    value = ds.get(keyword)
    if value is None:
        return None
    try:
        seq = [value] if isinstance(value, str | bytes | int | float) else list(value)
        items = [float(v) for v in seq]
    except (TypeError, ValueError):
        return None
    if len(items) != 2 or not all(math.isfinite(v) and 0.0 < v <= _MAX_SPACING_MM for v in items):
        return None
    return items[0], items[1]


def _float(ds: Dataset, keyword: str) -> float | None:
    try:
        value = float(ds.get(keyword))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def magnification_of(ds: Dataset) -> float | None:
    """The radiographic magnification at the anatomy (>= 1), or None when the header does not say."""
    erm = _float(ds, "EstimatedRadiographicMagnificationFactor")
    if erm is not None and 1.0 <= erm < 3.0:
        return erm
    sid, sod = _float(ds, "DistanceSourceToDetector"), _float(ds, "DistanceSourceToPatient")
    if sid is not None and sod is not None and sid >= sod:
        ratio = sid / sod
        if ratio < 3.0:
            return ratio
    return None


def spacing_of(ds: Dataset, *, correct_magnification: bool) -> Spacing | None:
    """The best patient-plane spacing in the header, or None when there is none usable."""
    calibrated = _pair(ds, "PixelSpacing")
    if calibrated is not None and str(ds.get("PixelSpacingCalibrationType", "")).strip():
        return Spacing(calibrated[0], calibrated[1], "PixelSpacing (calibrated)", None)
    detector = _pair(ds, "ImagerPixelSpacing")
    source = "ImagerPixelSpacing"
    if detector is None and calibrated is not None:
        detector, source = calibrated, "PixelSpacing"
    if detector is None:
        return None
    mag = magnification_of(ds) if correct_magnification else None
    if mag is None:
        return Spacing(detector[0], detector[1], f"{source} (detector plane, no magnification known)", None)
    return Spacing(detector[0] / mag, detector[1] / mag, f"{source} / magnification", mag)
