"""A film's projection geometry from the standard DX header, for films without xr3d's private block.

Real radiographs do not carry a 3x4 matrix; they carry enough to rebuild a nominal one:
DistanceSourceToDetector (SID), DistanceSourceToPatient (SOD) or EstimatedRadiographicMagnificationFactor
(SID / SOD), ImagerPixelSpacing (the pitch at the detector), Rows/Columns, ViewPosition, ImageLaterality
and PatientOrientation (which way the columns and rows run on the patient). From them:

* the beam: AP along +y (anterior -> posterior, LPS), PA along -y; a lateral along -x when the right side
  is against the detector (ViewPosition RL) and +x for LL; without RL/LL the lateral side of the knee is
  taken to be against the detector (standard technique), from the laterality;
* the detector axes: PatientOrientation's row and column directions (so a film stored mirrored is
  described as such); without PatientOrientation, the standard display (AP: patient's left to the
  right of the image, feet down; lateral: rows toward the feet, not mirrored);
* the isocentre (where the central ray is SOD from the source) at the origin of a *nominal frame*: each
  film's own frame, centred on what the film was centred on (the knee for knee films).

Two knee films then share a frame up to their centring errors: the horizontal ones only move the knee
along the other film's beam (a ~1 % magnification change), but the vertical ones do not cancel, so
:func:`align_joint_line` shifts each knee film's frame so its tibiofemoral joint line lies at z = 0
(measured on held-out simulated pairs: AP vs lateral joint line agree within 0.5 mm, see docs/recon.md).
A long-leg film has its own frame; ``appliance.recon.frames`` registers it to the knee's.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy.ndimage import gaussian_filter1d

from appliance.errors import GeometryError
from appliance.geometry.projection import ProjectionGeometry

log = logging.getLogger(__name__)

__all__ = ["NominalGeometry", "align_joint_line", "joint_line_row", "nominal_geometry", "shifted"]

_LETTERS: Final = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "H": (0.0, 0.0, 1.0),
    "F": (0.0, 0.0, -1.0),
}
_JOINT_SEARCH_MM: Final = 25.0  # knee films are centred on the joint line within ~1-2 cm
_JOINT_SMOOTH_MM: Final = 1.5


@dataclass(frozen=True)
class NominalGeometry:
    """A geometry rebuilt from the header, and what had to be assumed for it (for result.json)."""

    geometry: ProjectionGeometry
    assumptions: tuple[str, ...]


def _float(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        v = float(value[0] if isinstance(value, MultiValue | list | tuple) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _direction(letters: str) -> NDArray[np.float64] | None:
    """A PatientOrientation entry ("L", "FL", ...) as a unit vector; None if unreadable."""
    if not letters:
        return None
    vec = np.zeros(3)
    for ch in letters.upper():
        if ch not in _LETTERS:
            return None
        vec += np.asarray(_LETTERS[ch])
    n = float(np.linalg.norm(vec))
    return vec / n if n > 0 else None


def _beam(ds: Dataset, view: str, side: str) -> tuple[NDArray[np.float64], str | None]:
    vp = str(ds.get("ViewPosition") or "").upper()
    if view == "knee_lat":
        if vp == "RL":
            return np.array([-1.0, 0.0, 0.0]), None
        if vp == "LL":
            return np.array([1.0, 0.0, 0.0]), None
        if side not in ("L", "R"):
            raise GeometryError("lateral film without RL/LL ViewPosition or laterality")
        # Lateral side against the detector: beam from the medial side toward the lateral side.
        return np.array(
            [1.0 if side == "L" else -1.0, 0.0, 0.0]
        ), f"lateral beam assumed medial to lateral ({side})"
    if vp == "PA":
        return np.array([0.0, -1.0, 0.0]), None
    return np.array([0.0, 1.0, 0.0]), (None if vp == "AP" else "AP beam assumed (no ViewPosition AP/PA)")


def nominal_geometry(ds: Dataset, view: str, side: str = "") -> NominalGeometry | None:
    """The nominal geometry of a DX film (module docstring), or None when the header lacks SID, the
    detector pitch or the film size. ``view`` is xr3d's (longleg_ap, knee_ap, knee_lat); ``side`` L/R."""
    sid = _float(ds, "DistanceSourceToDetector")
    pitch = ds.get("ImagerPixelSpacing")
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if sid is None or pitch is None or len(pitch) != 2 or not rows or not cols:
        return None
    pv, pu = float(pitch[0]), float(pitch[1])
    if not (pv > 0 and pu > 0):
        return None
    assumptions: list[str] = []
    sod = _float(ds, "DistanceSourceToPatient")
    if sod is None or sod >= sid:
        mag = _float(ds, "EstimatedRadiographicMagnificationFactor")
        if mag is None or mag <= 1.0:
            mag = 1.1
            assumptions.append("magnification 1.1 assumed (no SOD in the header)")
        sod = sid / mag
    side = (side or str(ds.get("ImageLaterality") or "")).upper()[:1]
    beam, note = _beam(ds, view, side)
    if note:
        assumptions.append(note)
    po = [str(x) for x in (ds.get("PatientOrientation") or [])]
    u = _direction(po[0]) if len(po) == 2 else None
    v = _direction(po[1]) if len(po) == 2 else None
    down = np.array([0.0, 0.0, -1.0])
    if (
        u is None
        or v is None
        or abs(float(u @ beam)) > 1e-6
        or abs(float(v @ beam)) > 1e-6
        or abs(float(u @ v)) > 1e-6
    ):
        v = down
        u = np.cross(v, beam)  # not mirrored: v = beam x u
        assumptions.append("standard display assumed (no usable PatientOrientation)")
    src = -sod * beam
    centre = src + sid * beam
    origin = centre - (int(cols) - 1) / 2.0 * pu * u - (int(rows) - 1) / 2.0 * pv * v
    geometry = ProjectionGeometry(
        source_mm=tuple(float(x) for x in src),  # type: ignore[arg-type]
        detector_origin_mm=tuple(float(x) for x in origin),  # type: ignore[arg-type]
        u_dir=tuple(float(x) for x in u),  # type: ignore[arg-type]
        v_dir=tuple(float(x) for x in v),  # type: ignore[arg-type]
        pitch_u_mm=pu,
        pitch_v_mm=pv,
        columns=int(cols),
        rows=int(rows),
        name=view,
    )
    return NominalGeometry(geometry, tuple(assumptions))


def shifted(
    geometry: ProjectionGeometry, offset_mm: NDArray[np.float64] | tuple[float, float, float]
) -> ProjectionGeometry:
    """The same film with source and detector moved by ``offset_mm`` (so the patient moves by minus it)."""
    d = np.asarray(offset_mm, dtype=np.float64).reshape(3)
    return ProjectionGeometry(
        source_mm=tuple(float(x) for x in geometry.source + d),  # type: ignore[arg-type]
        detector_origin_mm=tuple(float(x) for x in geometry.origin + d),  # type: ignore[arg-type]
        u_dir=geometry.u_dir,
        v_dir=geometry.v_dir,
        pitch_u_mm=geometry.pitch_u_mm,
        pitch_v_mm=geometry.pitch_v_mm,
        columns=geometry.columns,
        rows=geometry.rows,
        name=geometry.name,
    )


def joint_line_row(image: NDArray[np.floating], pitch_mm: float) -> float:
    """Row of the tibiofemoral joint space on a knee film (bone bright): the darkest row of the middle
    40 % of columns, smoothed over 1.5 mm, within 25 mm of the film's centre row (knee films are centred
    on the joint line). Held-out simulated knee films: within 2.7 mm of the FKC/TKC midpoint, with the
    same ~1.5 mm bias on AP and lateral (docs/recon.md)."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    prof = img[:, int(0.3 * w) : max(int(0.3 * w) + 1, int(0.7 * w))].mean(axis=1)
    prof = gaussian_filter1d(prof, _JOINT_SMOOTH_MM / pitch_mm)
    mid, r = h // 2, max(1, int(_JOINT_SEARCH_MM / pitch_mm))
    lo, hi = max(0, mid - r), min(h, mid + r)
    i = lo + int(np.argmin(prof[lo:hi]))
    if 0 < i < h - 1:  # parabolic sub-row refinement
        a, b, c = prof[i - 1], prof[i], prof[i + 1]
        den = a - 2 * b + c
        if den > 0:
            return float(i + 0.5 * (a - c) / den)
    return float(i)


JOINT_AGREE_MM: Final = 5.0
"""The darkest-row joint line is kept when it lies within this of the knee landmarks' (it is the finer
of the two on ordinary films, within 0.3 mm on held-out cases); further away it has caught another dark
band (a flexed lateral film: 35 mm off on one held-out case) and the landmarks' row is used."""


def choose_joint_row(
    image: NDArray[np.floating], pitch_mm: float, landmark_row: float | None
) -> tuple[float, str]:
    """(joint-line row, which rule gave it: "darkest row" or "knee landmarks")."""
    dark = joint_line_row(image, pitch_mm)
    if landmark_row is None or abs(dark - landmark_row) * pitch_mm <= JOINT_AGREE_MM:
        return dark, "darkest row"
    return float(landmark_row), "knee landmarks"


def align_joint_line(
    geometry: ProjectionGeometry, image: NDArray[np.floating], row: float | None = None
) -> tuple[ProjectionGeometry, float]:
    """``geometry`` shifted vertically so the film's joint line lies at z = 0 at the isocentre depth;
    returns it and the shift (mm, +z moves the film up). ``row``: the joint line's film row when it is
    known (the knee landmark model's FKC/TKC midpoint); else :func:`joint_line_row` of the image."""
    if row is None:
        row = joint_line_row(image, geometry.pitch_v_mm)
    col = (geometry.columns - 1) / 2.0
    # The isocentre plane: the point of the joint-line pixel's ray at the source-to-origin distance.
    sod = float(np.linalg.norm(geometry.source))
    ray = geometry.pixel_to_mm(np.array([col]), np.array([row]))[0] - geometry.source
    point = geometry.source + ray / float(np.linalg.norm(ray)) * sod
    dz = -float(point[2])
    return shifted(geometry, (0.0, 0.0, dz)), dz
