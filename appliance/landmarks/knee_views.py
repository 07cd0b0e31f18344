"""Knee AP / knee lateral films: landmark sets, display orientation and the measurements they support.

Shared by the runtime detector (:mod:`appliance.landmarks.knee_detector`), the training side
(``export/datasets/knee_samples.py``) and the evaluation, so the definitions cannot drift apart.
Definitions and sign conventions: docs/knee-landmarks.md and ../shared/reference/alignment.md.

* Knee AP: FKC, MDFC, LDFC, MTP, LTP, TKC, exactly as on the long-leg AP film (alignment.md). JLCA from
  MDFC, LDFC, MTP, LTP (positive when the joint lines converge medially).
* Knee lateral (ours; alignment.md defines none): FKC and TKC (projections of the 3D knee centres),
  MTPA / MTPP (anterior and posterior edge of the medial tibial plateau, 2 mm inside the rim at the
  middle of the plateau), FAX / TAX (the points of the femoral / tibial mechanical axes
  :data:`AXIS_POINT_MM` proximal to FKC / distal to TKC). Posterior tibial slope and knee flexion follow
  the 3D definitions of ``appliance.analytics.angles3d`` read in the film plane.

Orientation: the models see every film as a **right knee in the standard display**: AP with the patient's
right on the viewer's left (DICOM PatientOrientation row direction "L"), lateral as seen from the
source of a medial-to-lateral beam (right knee: anterior on the viewer's left, row direction "P"; a left
knee's lateral film then shows anterior on the right, "A"). :func:`mirror_decision` says whether a film
must be mirrored for the models, from the study's side and the film's PatientOrientation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.analytics.planar import jlca_deg
from appliance.errors import InputError

__all__ = [
    "AXIS_POINT_MM",
    "KNEE_AP",
    "KNEE_LANDMARKS",
    "KNEE_LAT",
    "KNEE_NEEDS",
    "KNEE_VIEWS",
    "MirrorDecision",
    "flexion_2d_deg",
    "jlca_2d_deg",
    "measure_knee_film",
    "mirror_decision",
    "row_direction",
    "slope_2d_deg",
]

F64 = NDArray[np.float64]
KNEE_AP: Final = "knee_ap"
KNEE_LAT: Final = "knee_lat"
KNEE_VIEWS: Final = (KNEE_AP, KNEE_LAT)
AXIS_POINT_MM: Final = 80.0
"""Distance (3D, mm) of FAX / TAX from FKC / TKC along the mechanical axes: far enough for a lever arm
(1 mm across the axis = 0.7 deg), near enough to stay on a 24 x 30 cm knee film with collimation."""

KNEE_LANDMARKS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        KNEE_AP: ("FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC"),
        KNEE_LAT: ("FKC", "TKC", "MTPA", "MTPP", "FAX", "TAX"),
    }
)
"""Landmarks per knee view, in model channel order (the model's channels are ap.* then lat.*)."""

KNEE_NEEDS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "JLCA": ("MDFC", "LDFC", "MTP", "LTP"),
        "tibial_slope_deg": ("TKC", "TAX", "MTPA", "MTPP"),
        "knee_flexion_deg": ("FKC", "FAX", "TKC", "TAX", "MTPA", "MTPP"),
    }
)
"""Landmarks each knee-film measurement depends on (for low-confidence flags)."""

_STANDARD_ROW: Final = {(KNEE_AP, "R"): "L", (KNEE_AP, "L"): "L", (KNEE_LAT, "R"): "P", (KNEE_LAT, "L"): "A"}
_OPPOSITE: Final = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def row_direction(patient_orientation: Sequence[str] | str | None) -> str | None:
    """The dominant patient direction of the image rows (first value of DICOM PatientOrientation
    (0020,0020), e.g. "L" or "P"; an oblique "LP" gives its first letter); None when absent."""
    if patient_orientation is None:
        return None
    if isinstance(patient_orientation, str):
        parts = patient_orientation.replace("\\", " ").split()
    else:
        parts = [str(p) for p in patient_orientation]
    if not parts or not parts[0].strip():
        return None
    letter = parts[0].strip().upper()[0]
    return letter if letter in _OPPOSITE else None


@dataclass(frozen=True)
class MirrorDecision:
    """How a knee film is shown to the models: ``mirror`` (columns reversed before detection, points
    mapped back), whether the stored film is ``display_mirrored`` (its row direction is the opposite of
    the standard display), and the reasoning, for result.json."""

    mirror: bool
    display_mirrored: bool | None  # None: no usable PatientOrientation
    row_direction: str | None
    side: str | None
    basis: str

    def to_json(self) -> dict[str, object]:
        return {
            "mirrored_for_model": self.mirror,
            "display_mirrored": self.display_mirrored,
            "row_direction": self.row_direction,
            "side": self.side,
            "basis": self.basis,
        }


def mirror_decision(
    view: str, side: str | None, patient_orientation: Sequence[str] | str | None
) -> MirrorDecision:
    """Whether to mirror a film of ``view`` so it looks like a right knee in the standard display.

    AP: mirror a left knee; mirror once more when the row direction is "R" (stored mirrored). Lateral:
    the row direction alone decides when present ("A" = anterior toward +col: mirror), else a left knee
    is assumed in its standard display ("A") and mirrored. Without side or orientation on an AP film the
    caller must decide from the image (``mirror`` is False, ``basis`` "unknown")."""
    if view not in KNEE_VIEWS:
        raise InputError(f"not a knee view: {view!r}", reason="unsupported_view")
    s = side.strip().upper()[:1] if side else None
    s = s if s in ("R", "L") else None
    row = row_direction(patient_orientation)
    usable = row in (("L", "R") if view == KNEE_AP else ("A", "P"))
    display_mirrored = None
    if usable and s is not None:
        display_mirrored = row != _STANDARD_ROW[(view, s)]
    elif usable and view == KNEE_AP:
        display_mirrored = row == "R"
    if view == KNEE_LAT:
        if usable:
            return MirrorDecision(row == "A", display_mirrored, row, s, "patient_orientation")
        if s is not None:
            return MirrorDecision(s == "L", None, row, s, "side")
        return MirrorDecision(False, None, row, s, "unknown")
    if s is None:
        return MirrorDecision(False, display_mirrored, row, s, "unknown")
    mirror = (s == "L") != bool(display_mirrored)
    return MirrorDecision(mirror, display_mirrored, row, s, "side+patient_orientation" if usable else "side")


# --- measurements (points in mm at the patient, (x, y) = (col, row) scaled) ------------------------
def _pts(points: Mapping[str, ArrayLike], names: Sequence[str]) -> dict[str, F64] | None:
    out: dict[str, F64] = {}
    for n in names:
        p = points.get(n)
        if p is None:
            return None
        a = np.asarray(p, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(a)):
            return None
        out[n] = a
    return out


def _unit(v: F64) -> F64 | None:
    n = float(np.hypot(v[0], v[1]))
    return None if n < 1e-6 else np.asarray(v / n, dtype=np.float64)


def jlca_2d_deg(points: Mapping[str, ArrayLike]) -> float | None:
    """JLCA on a knee AP film: tibial minus femoral joint-line direction in the leg's (lateral, distal)
    frame; positive when the lines converge medially (alignment.md). Any display orientation."""
    p = _pts(points, KNEE_NEEDS["JLCA"])
    if p is None:
        return None
    ml = (p["LDFC"] - p["MDFC"]) + (p["LTP"] - p["MTP"])
    lat = _unit(ml)
    if lat is None:
        return None
    # Distal: perpendicular to the joint lines, toward the tibia.
    distal = np.array([-lat[1], lat[0]])
    if float(distal @ ((p["MTP"] + p["LTP"]) - (p["MDFC"] + p["LDFC"]))) < 0:
        distal = -distal

    def c(n: str) -> F64:
        return np.array([float(p[n] @ lat), float(p[n] @ distal)])

    return float(jlca_deg(c("MDFC"), c("LDFC"), c("MTP"), c("LTP")))


def _posterior(p: Mapping[str, F64], along: F64) -> F64 | None:
    """Unit film direction across ``along`` that points posterior (MTPA -> MTPP side)."""
    perp = np.array([-along[1], along[0]])
    s = float(perp @ (p["MTPP"] - p["MTPA"]))
    if abs(s) < 1e-9:
        return None
    return perp if s > 0 else -perp


def slope_2d_deg(points: Mapping[str, ArrayLike]) -> float | None:
    """Posterior tibial slope on a lateral film: angle of the medial plateau line MTPA -> MTPP below
    the perpendicular to the tibial axis TKC -> TAX; positive when the plateau descends posteriorly
    (as ``angles3d`` tibial_slope_deg; Brazier et al., Arthroscopy 1996, measure it against the
    proximal tibial axis the same way)."""
    p = _pts(points, KNEE_NEEDS["tibial_slope_deg"])
    if p is None:
        return None
    d = _unit(p["TAX"] - p["TKC"])
    if d is None:
        return None
    v = p["MTPP"] - p["MTPA"]
    down = float(v @ d)
    across = v - down * d
    return math.degrees(math.atan2(down, float(np.hypot(across[0], across[1]))))


def flexion_2d_deg(points: Mapping[str, ArrayLike]) -> float | None:
    """Knee flexion on a lateral film: angle of the tibial axis TKC -> TAX from the distal femoral axis
    FAX -> FKC, positive when the tibia swings posterior (flexion), as ``angles3d`` knee_flexion_deg."""
    p = _pts(points, KNEE_NEEDS["knee_flexion_deg"])
    if p is None:
        return None
    f = _unit(p["FKC"] - p["FAX"])
    t = p["TAX"] - p["TKC"]
    if f is None or _unit(t) is None:
        return None
    post = _posterior(p, f)
    if post is None:
        return None
    return math.degrees(math.atan2(float(t @ post), float(t @ f)))


def measure_knee_film(
    view: str, points_px: Mapping[str, ArrayLike], spacing_mm: tuple[float, float], magnification: float = 1.0
) -> dict[str, float | None]:
    """The measurements a knee film supports from its landmarks in film pixels (col, row);
    ``spacing_mm`` (row, col). Angles need only the pixel aspect; values that cannot be measured are None."""
    scale = np.array([spacing_mm[1], spacing_mm[0]], dtype=np.float64) / float(magnification)
    mm = {n: np.asarray(p, dtype=np.float64).reshape(2) * scale for n, p in points_px.items()}
    if view == KNEE_AP:
        return {"JLCA": jlca_2d_deg(mm)}
    if view == KNEE_LAT:
        return {"tibial_slope_deg": slope_2d_deg(mm), "knee_flexion_deg": flexion_2d_deg(mm)}
    raise InputError(f"not a knee view: {view!r}", reason="unsupported_view")
