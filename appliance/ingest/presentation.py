"""A DICOM film's pixels as the landmark models see them: bone bright in [0, 1].

Training (``export.datasets.landmark_samples``) and the runtime (``appliance.process``) must convert a film
the same way, or a model trained on one scaling is run on another (landmarks centimetres off); this module
is that one conversion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
from numpy.typing import ArrayLike, NDArray


def _first(value: Any) -> float:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return float(value[0])
    return float(value)


def bone_bright_unit(ds: pydicom.Dataset, stored: ArrayLike) -> NDArray[np.float32]:
    """Modality rescale, the first VOI window (linear; the full range without one) and MONOCHROME1
    inversion applied to the stored pixel values ``stored`` of ``ds``."""
    x = np.asarray(stored, dtype=np.float64)
    x = x * float(ds.get("RescaleSlope", 1.0) or 1.0) + float(ds.get("RescaleIntercept", 0.0) or 0.0)
    try:
        wc, ww = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1e-6)
    except (AttributeError, TypeError, ValueError, IndexError):
        lo, hi = float(x.min()), float(x.max())
        wc, ww = (lo + hi) / 2.0, max(hi - lo, 1e-6)
    v = np.clip((x - (wc - ww / 2.0)) / ww, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        v = 1.0 - v
    return v.astype(np.float32)
