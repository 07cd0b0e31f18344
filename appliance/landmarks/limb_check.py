"""Model-based check that a film shows a lower limb before it is measured (issue 4: a chest film is
rejected with a clear reason, never measured).

The ingest rejects most non-limb films from their tags and an image statistic
(``appliance.ingest.classify``: BodyPartExamined, descriptions, edge anisotropy). Files that reach the
detector without such tags (a PNG with a sidecar saying ``longleg_ap``, a mis-tagged DICOM) are checked
here from what the landmark models saw:

* **stage-1 confidence**: the whole-film network's heatmap peaks. With the shipped models 0.3.0 the
  median of the eight peaks was >= 0.85 on all 44 held-out simulated long-leg films of eval seeds
  500100-500115, 500200-500211, 500300-500315 (0.2.0: >= 0.49) and <= 0.013 on the real RG1 chest CR
  of pydicom-data at every pixel spacing (0.15, 0.35, 0.7 mm) and side tried. Below
  :data:`MIN_MEDIAN_STAGE1_CONFIDENCE` the film is not taken for a lower limb;
* **anatomical order**: on an AP long-leg film (head up) the hip centre lies above the knee centres and
  the knee above the ankle;
* **mechanical lengths** at the detector (patient length times magnification ~1.0-1.2): femur
  :data:`FEMUR_DETECTOR_MM`, tibia :data:`TIBIA_DETECTOR_MM`; a film where both are outside is rejected.

The figures behind the limits and the film they were checked on are in docs/landmarks.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from appliance.errors import InputError
from appliance.landmarks.detector import Detection

log = logging.getLogger(__name__)

__all__ = [
    "FEMUR_DETECTOR_MM",
    "MIN_MEDIAN_STAGE1_CONFIDENCE",
    "NOT_LOWER_LIMB",
    "TIBIA_DETECTOR_MM",
    "LimbCheck",
    "check_lower_limb",
    "require_lower_limb",
]

NOT_LOWER_LIMB: Final = "not_lower_limb"  # the ingest's reason code for the same verdict
MIN_MEDIAN_STAGE1_CONFIDENCE: Final = 0.35
# Adult mechanical lengths (femur ~370-500 mm, tibia ~310-440 mm: Paley 2002) times magnification
# 1.0-1.2, widened for rotation, flexion and unusual stature.
FEMUR_DETECTOR_MM: Final = (250.0, 700.0)
TIBIA_DETECTOR_MM: Final = (200.0, 650.0)


@dataclass(frozen=True)
class LimbCheck:
    """Whether a detection looks like one standing lower limb, and why not."""

    is_lower_limb: bool
    reasons: tuple[str, ...]
    median_stage1_confidence: float
    femur_mm: float | None
    tibia_mm: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "is_lower_limb": self.is_lower_limb,
            "reasons": list(self.reasons),
            "median_stage1_confidence": self.median_stage1_confidence,
            "femur_mm": self.femur_mm,
            "tibia_mm": self.tibia_mm,
        }


def _length(
    pts: dict[str, tuple[float, float]], a: str, b: str, spacing: tuple[float, float]
) -> float | None:
    if a not in pts or b not in pts:
        return None
    d = np.asarray(pts[a], dtype=float) - np.asarray(pts[b], dtype=float)
    return float(math.hypot(d[0] * spacing[1], d[1] * spacing[0]))


def check_lower_limb(det: Detection, detector_spacing_mm: tuple[float, float] | float) -> LimbCheck:
    """The verdict on one detection; ``detector_spacing_mm`` (row, col) as given to the detector."""
    sp = np.asarray(detector_spacing_mm, dtype=np.float64).reshape(-1)
    spacing = (float(sp[0]), float(sp[-1]))
    med = float(np.median(det.coarse_confidence)) if len(det.coarse_confidence) else 0.0
    pts = det.as_dict()
    reasons: list[str] = []
    if med < MIN_MEDIAN_STAGE1_CONFIDENCE:
        reasons.append(
            f"the whole-film landmark network finds no leg (median stage-1 confidence {med:.2f} < "
            f"{MIN_MEDIAN_STAGE1_CONFIDENCE})"
        )
    rows = {n: p[1] for n, p in pts.items()}
    if {"FHC", "FKC", "AC"} <= rows.keys() and not rows["FHC"] < rows["FKC"] < rows["AC"]:
        reasons.append("hip, knee and ankle are not in head-to-foot order")
    fem = _length(pts, "FHC", "FKC", spacing)
    tib = _length(pts, "TKC", "AC", spacing)
    fem_ok = fem is None or FEMUR_DETECTOR_MM[0] <= fem <= FEMUR_DETECTOR_MM[1]
    tib_ok = tib is None or TIBIA_DETECTOR_MM[0] <= tib <= TIBIA_DETECTOR_MM[1]
    if not fem_ok and not tib_ok:
        reasons.append(f"femur {fem:.0f} mm and tibia {tib:.0f} mm are outside adult ranges")
    return LimbCheck(
        is_lower_limb=not reasons,
        reasons=tuple(reasons),
        median_stage1_confidence=med,
        femur_mm=fem,
        tibia_mm=tib,
    )


def require_lower_limb(det: Detection, detector_spacing_mm: tuple[float, float] | float) -> LimbCheck:
    """:func:`check_lower_limb`, raising ``InputError(reason="not_lower_limb")`` when it fails."""
    verdict = check_lower_limb(det, detector_spacing_mm)
    if not verdict.is_lower_limb:
        raise InputError(
            "the film does not show a lower limb: " + "; ".join(verdict.reasons), reason=NOT_LOWER_LIMB
        )
    return verdict
