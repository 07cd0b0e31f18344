"""Oriented angles in a bone's canonical coronal frame.

Both the film (2D) and the 3D path reduce every coronal measurement to points in a frame whose
x axis points LATERAL and whose y axis points DISTAL for the leg being measured. Working in that
frame once makes left legs, right legs, mirrored and upside-down films give identical numbers, and
makes the identity mHKA = MPTA - mLDFA - JLCA hold by construction (each angle is a difference of
the same direction angles; see alignment.md "Angles").
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from appliance.errors import GeometryError

FloatArray = NDArray[np.float64]

# Two landmarks closer than this (mm) cannot define a direction.
MIN_SEGMENT_MM = 1e-6


def direction_deg(v: FloatArray, what: str) -> float:
    """Direction of a 2-vector in the canonical frame, degrees in (-180, 180]."""
    n = math.hypot(float(v[0]), float(v[1]))
    if not math.isfinite(n) or n < MIN_SEGMENT_MM:
        raise GeometryError(
            f"{what}: the two landmarks coincide in the measurement plane", reason="degenerate"
        )
    return math.degrees(math.atan2(float(v[1]), float(v[0])))


def wrap_deg(a: float) -> float:
    """Wrap to (-180, 180]."""
    w = math.fmod(a, 360.0)
    if w <= -180.0:
        w += 360.0
    elif w > 180.0:
        w -= 360.0
    return w


def mldfa_deg(fhc: FloatArray, fkc: FloatArray, mdfc: FloatArray, ldfc: FloatArray) -> float:
    """Lateral angle from the proximal femoral mechanical axis (FKC->FHC) to the joint line (MDFC->LDFC)."""
    return wrap_deg(
        direction_deg(ldfc - mdfc, "femoral joint line") - direction_deg(fhc - fkc, "femoral axis")
    )


def mpta_deg(tkc: FloatArray, ac: FloatArray, mtp: FloatArray, ltp: FloatArray) -> float:
    """Medial angle from the distal tibial mechanical axis (TKC->AC) to the joint line (LTP->MTP)."""
    return wrap_deg(direction_deg(mtp - ltp, "tibial joint line") - direction_deg(ac - tkc, "tibial axis"))


def jlca_deg(mdfc: FloatArray, ldfc: FloatArray, mtp: FloatArray, ltp: FloatArray) -> float:
    """Tibial minus femoral joint-line direction: positive when the lines converge medially."""
    return wrap_deg(
        direction_deg(ltp - mtp, "tibial joint line") - direction_deg(ldfc - mdfc, "femoral joint line")
    )


def mhka_deg(fhc: FloatArray, fkc: FloatArray, tkc: FloatArray, ac: FloatArray) -> float:
    """Femoral minus tibial axis direction: negative when the tibia heads medially (varus)."""
    return wrap_deg(direction_deg(fkc - fhc, "femoral axis") - direction_deg(ac - tkc, "tibial axis"))


def mad_mm(fhc: FloatArray, ac: FloatArray, knee: FloatArray) -> float:
    """Signed distance of the knee centre from the FHC-AC line; positive when the knee is lateral."""
    u = ac - fhc
    n = math.hypot(float(u[0]), float(u[1]))
    if n < MIN_SEGMENT_MM:
        raise GeometryError("hip and ankle centres coincide", reason="degenerate")
    # Unit normal of the line turned toward +x (lateral) when the line runs distally.
    lateral_normal = np.array([u[1], -u[0]]) / n
    return float((knee - fhc) @ lateral_normal)
