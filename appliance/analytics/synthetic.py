"""Landmark sets with known angles, built from the definitions in reverse.

Used by the tests, by the example overlays in docs/examples and as a sanity source for other teams:
give the angles, get landmarks that must measure back to exactly those angles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from appliance.analytics.landmarks import (
    AC,
    FHC,
    FKC,
    LDFC,
    LEC,
    LMAL,
    LPC,
    LTP,
    MDFC,
    MEC,
    MMAL,
    MPC,
    MTP,
    MTPA,
    MTPP,
    TKC,
)
from appliance.analytics.points import FloatArray, normalise_side

TIBIAL_NAMES: tuple[str, ...] = (TKC, AC, MTP, LTP, MTPA, MTPP, MMAL, LMAL)


@dataclass(frozen=True)
class LegSpec:
    """Coronal angles (deg) and sizes (mm) of a synthetic leg.

    Typical adult sizes: femoral mechanical axis ~430-450 mm, tibial ~370-390 mm, distal femur
    ~75-85 mm wide (Paley, Principles of Deformity Correction, 2002, ch. 1).
    """

    mldfa: float = 87.0
    mpta: float = 87.0
    jlca: float = 0.0
    femur_mm: float = 440.0
    tibia_mm: float = 380.0
    half_width_mm: float = 25.0
    joint_gap_mm: float = 6.0
    femoral_tilt_deg: float = 0.0  # femoral axis direction from vertical in the film, lateral positive

    @property
    def mhka(self) -> float:
        return self.mpta - self.mldfa - self.jlca


def _dir(deg: float) -> FloatArray:
    r = math.radians(deg)
    return np.array([math.cos(r), math.sin(r)])


def canonical_2d(spec: LegSpec) -> dict[str, FloatArray]:
    """Landmarks in the canonical frame (mm; x lateral, y distal), FKC at the origin.

    Direction angles follow ``planar``: ang(-femoral axis) = -90 + tilt, so the joint lines and the
    tibial axis follow from mLDFA, JLCA and MPTA one after another.
    """
    up = -90.0 + spec.femoral_tilt_deg
    fkc = np.zeros(2)
    fhc = fkc + spec.femur_mm * _dir(up)
    jf = _dir(up + spec.mldfa)
    jt = _dir(up + spec.mldfa + spec.jlca)
    down_t = up + spec.mldfa + spec.jlca + 180.0 - spec.mpta
    tkc = fkc + spec.joint_gap_mm * _dir(up + 180.0)
    return {
        FHC: fhc,
        FKC: fkc,
        MDFC: fkc - spec.half_width_mm * jf,
        LDFC: fkc + spec.half_width_mm * jf,
        TKC: tkc,
        MTP: tkc - spec.half_width_mm * jt,
        LTP: tkc + spec.half_width_mm * jt,
        AC: tkc + spec.tibia_mm * _dir(down_t),
    }


def film_2d(
    spec: LegSpec,
    side: str = "L",
    pixel_spacing_mm: tuple[float, float] = (0.5, 0.5),
    magnification: float = 1.0,
    origin_px: tuple[float, float] = (300.0, 100.0),
) -> dict[str, list[float]]:
    """(col, row) pixels on a film shown in radiological convention (right leg: lateral = -col).

    ``origin_px`` is where the hip centre lands.
    """
    s = normalise_side(side)
    canon = canonical_2d(spec)
    sign = 1.0 if s == "L" else -1.0
    row_mm, col_mm = pixel_spacing_mm
    base = canon[FHC]
    out: dict[str, list[float]] = {}
    for name, p in canon.items():
        q = (p - base) * magnification
        out[name] = [origin_px[0] + sign * q[0] / col_mm, origin_px[1] + q[1] / row_mm]
    return out


def leg_3d(
    spec: LegSpec,
    side: str = "L",
    twist_deg: float = 3.0,
    slope_deg: float = 7.0,
    flexion_deg: float = 0.0,
) -> dict[str, FloatArray]:
    """All 3D landmarks in LPS mm for a leg standing with patellae forward.

    Coronal points sit at AP depth 0; the posterior condyles 25 mm behind with the PCA parallel to
    the coronal mediolateral axis; the epicondyles' axis is ``twist_deg`` externally rotated from
    the PCA; the medial plateau runs 40 mm front to back, falling ``slope_deg`` posteriorly;
    ``flexion_deg`` swings the tibia (ankle backwards) about the mediolateral axis through FKC.
    """
    s = normalise_side(side)
    sign = 1.0 if s == "L" else -1.0
    canon = canonical_2d(spec)
    lat2 = canon[LDFC] - canon[MDFC]
    lat2 /= np.linalg.norm(lat2)

    def lps(p2: FloatArray, posterior: float = 0.0) -> FloatArray:
        # canonical x lateral -> +x for a left leg, -x for a right; y distal -> -z; AP depth -> +y.
        return np.array([sign * p2[0], posterior, -p2[1]])

    pts: dict[str, FloatArray] = {n: lps(p) for n, p in canon.items()}
    w = spec.half_width_mm
    mid = (canon[MDFC] + canon[LDFC]) / 2 - 15.0 * np.array([0.0, 1.0])
    pts[MPC] = lps(canon[MDFC] - np.array([0.0, 10.0]), 25.0)
    pts[LPC] = lps(canon[LDFC] - np.array([0.0, 10.0]), 25.0)
    # External rotation of the TEA: its lateral end moves posterior (alignment.md; Berger 1993).
    t = math.radians(twist_deg)
    half = (w + 15.0) * np.array([math.cos(t), math.sin(t)])  # (lateral, posterior)
    centre = lps(mid, 0.0)
    lat3 = lps(lat2) - lps(np.zeros(2))
    post3 = np.array([0.0, 1.0, 0.0])
    pts[MEC] = centre - half[0] * lat3 - half[1] * post3
    pts[LEC] = centre + half[0] * lat3 + half[1] * post3
    plateau = canon[MTP] + 0.4 * (canon[TKC] - canon[MTP])
    drop = 20.0 * math.tan(math.radians(slope_deg))
    pts[MTPA] = lps(plateau - np.array([0.0, drop]), -20.0)
    pts[MTPP] = lps(plateau + np.array([0.0, drop]), 20.0)
    pts[MMAL] = lps(canon[AC] + np.array([-22.0, 12.0]), 0.0)
    pts[LMAL] = lps(canon[AC] + np.array([24.0, 18.0]), 5.0)
    if flexion_deg:
        axis = lat3 / np.linalg.norm(lat3)
        pivot = pts[FKC]
        rot = _rotation(axis, sign * math.radians(flexion_deg))
        for n in TIBIAL_NAMES:
            pts[n] = pivot + rot @ (pts[n] - pivot)
    return pts


def _rotation(axis: FloatArray, angle: float) -> FloatArray:
    """Right-handed rotation about a unit axis (Rodrigues)."""
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def rotation_matrix(axis: FloatArray, angle_deg: float) -> FloatArray:
    """Public wrapper: rotation by ``angle_deg`` about ``axis`` (normalised here)."""
    a = np.asarray(axis, dtype=np.float64)
    return _rotation(a / np.linalg.norm(a), math.radians(angle_deg))


def condyle_surface_points(
    centre_medial: FloatArray,
    centre_lateral: FloatArray,
    radius_medial: float,
    radius_lateral: float,
    posterior: FloatArray,
    distal: FloatArray,
    n_per_ring: int = 24,
    rings: int = 5,
    width_mm: float = 16.0,
) -> dict[str, FloatArray]:
    """Points on two coaxial cylinder patches (posterior-distal arcs) around the axis through the centres."""
    axis = centre_lateral - centre_medial
    axis /= np.linalg.norm(axis)
    p = posterior - (posterior @ axis) * axis
    p /= np.linalg.norm(p)
    d = np.cross(axis, p)
    if float(d @ distal) < 0:
        d = -d
    # From straight posterior round to straight distal: the surface the condyles roll on.
    angles = np.linspace(-10.0, 100.0, n_per_ring)
    out: dict[str, FloatArray] = {}
    for key, c, r in (("medial", centre_medial, radius_medial), ("lateral", centre_lateral, radius_lateral)):
        pts = []
        for off in np.linspace(-width_mm / 2, width_mm / 2, rings):
            for a in np.radians(angles):
                pts.append(c + off * axis + r * (math.cos(a) * p + math.sin(a) * d))
        out[key] = np.array(pts)
    return out


def _segment_distance(xx: FloatArray, yy: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    d = b - a
    # A zero-length segment is a point: distance to ``a``.
    t = np.clip(((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / max(float(d @ d), 1e-12), 0.0, 1.0)
    dist: FloatArray = np.hypot(xx - (a[0] + t * d[0]), yy - (a[1] + t * d[1]))
    return dist


def synthetic_film(
    landmarks_px: dict[str, list[float]], shape: tuple[int, int], pixel_spacing_mm: float = 0.5
) -> FloatArray:
    """A plain, deterministic stand-in for a film: soft tissue and bone bands along the landmarks.

    Only for example overlays and tests; it is not a radiograph simulation (that is export/simulator).
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in landmarks_px.items()}
    mm = 1.0 / pixel_spacing_mm
    img = np.full((h, w), 0.08)

    def band(a: FloatArray, b: FloatArray, radius_mm: float, value: float) -> None:
        nonlocal img
        dist = _segment_distance(xx, yy, a, b) / (radius_mm * mm)
        img = img + value / (1.0 + np.exp((dist - 1.0) * 12.0))

    band(p[FHC], p[AC], 70.0, 0.18)  # soft tissue around the whole limb
    band(p[FHC], p[FKC], 14.0, 0.35)  # femoral shaft
    band(p[FHC], p[FHC], 24.0, 0.25)  # femoral head
    band(p[MDFC], p[LDFC], 12.0, 0.3)  # condyles
    band(p[MTP], p[LTP], 10.0, 0.3)  # plateau
    band(p[TKC], p[AC], 12.0, 0.35)  # tibial shaft
    band(p[AC], p[AC], 16.0, 0.2)  # talus
    out: FloatArray = np.clip(img, 0.0, 1.0)
    return out
