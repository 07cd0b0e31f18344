"""Flexion-extension axis from posterior-condyle surface points.

The posterior femoral condyles are close to circular in sagittal section, and the axis through the
centres of circles fitted to them is the knee's flexion-extension axis (Eckhoff et al., JBJS Am
2005;87 Suppl 2:71-80; Hollister et al., Clin Orthop 1993;290:259-268). We fit one circle per condyle
in the plane perpendicular to the current axis estimate, take the axis through the two centres, and
repeat until the axis stops moving: the result is the common axis of two coaxial circular cylinders,
one radius per condyle.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numpy.typing import ArrayLike

from appliance.analytics.points import FloatArray
from appliance.analytics.results import FlexionAxisFit
from appliance.errors import GeometryError, InputError

log = logging.getLogger(__name__)

MIN_POINTS = 5
_MAX_ITER = 200
_TOL_RAD = 1e-12
# A condyle whose points span less than this fraction of their extent across the arc is a line, not an arc.
_MIN_ARC_ASPECT = 1e-3


def _points(values: ArrayLike, what: str) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: points are not numbers", reason="bad_coordinates") from exc
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"{what}: expected an (N, 3) array, got shape {arr.shape}", reason="bad_coordinates")
    if arr.shape[0] < MIN_POINTS:
        raise InputError(
            f"{what}: need at least {MIN_POINTS} points, got {arr.shape[0]}", reason="too_few_points"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: non-finite coordinates", reason="bad_coordinates")
    return arr


def fit_circle(xy: FloatArray, what: str = "circle") -> tuple[FloatArray, float]:
    """Least-squares (geometric) circle through 2D points: (centre, radius).

    Algebraic fit for the start (Kasa 1976), then Gauss-Newton on the orthogonal distances, which
    removes the algebraic fit's bias toward small circles on short, noisy arcs.
    """
    mean = xy.mean(axis=0)
    q = xy - mean
    sv = np.linalg.svd(q, compute_uv=False)
    if sv[0] <= 0 or sv[1] / sv[0] < _MIN_ARC_ASPECT:
        raise GeometryError(f"{what}: points are collinear, no circle fits", reason="degenerate")
    a = np.column_stack([q, np.ones(len(q))])
    b = -(q**2).sum(axis=1)
    coef, *_ = np.linalg.lstsq(a, b, rcond=None)
    c = -coef[:2] / 2.0
    r = math.sqrt(max(float(c @ c - coef[2]), 1e-12))
    for _ in range(50):
        diff = q - c
        dist = np.linalg.norm(diff, axis=1)
        if np.any(dist < 1e-12):
            break
        res = dist - r
        jac = np.column_stack([-diff / dist[:, None], -np.ones(len(q))])
        step, *_ = np.linalg.lstsq(jac, -res, rcond=None)
        c = c + step[:2]
        r = r + float(step[2])
        if float(np.abs(step).max()) < 1e-12 * max(1.0, abs(r)):
            break
    return c + mean, abs(r)


def _basis(d: FloatArray) -> tuple[FloatArray, FloatArray]:
    helper = np.eye(3)[int(np.argmin(np.abs(d)))]
    u = np.cross(d, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(d, u)


def _condyle_circle(p: FloatArray, d: FloatArray, what: str) -> tuple[FloatArray, float, FloatArray]:
    """Circle of one condyle in the plane perpendicular to ``d``: (3D centre, radius, residuals)."""
    u, v = _basis(d)
    xy = np.column_stack([p @ u, p @ v])
    c2, r = fit_circle(xy, what)
    centre = c2[0] * u + c2[1] * v + float((p @ d).mean()) * d
    residuals = np.linalg.norm(xy - c2, axis=1) - r
    return centre, r, residuals


def _unsigned_line_angle(a: FloatArray, b: FloatArray) -> float:
    """Angle between two lines (not vectors), 0..90 degrees."""
    # atan2 of |cross| and |dot| stays accurate near 0, where acos loses half the digits.
    return math.degrees(math.atan2(float(np.linalg.norm(np.cross(a, b))), abs(float(a @ b))))


def fit_flexion_axis(
    medial_points: ArrayLike,
    lateral_points: ArrayLike,
    tea: FloatArray | None = None,
    pca: FloatArray | None = None,
) -> FlexionAxisFit:
    """Fit the flexion-extension axis to posterior-condyle surface points (mm, any frame).

    ``tea`` / ``pca`` (medial -> lateral vectors), when given, are reported as angles to the axis.
    """
    med = _points(medial_points, "medial condyle")
    lat = _points(lateral_points, "lateral condyle")
    d = lat.mean(axis=0) - med.mean(axis=0)
    n = float(np.linalg.norm(d))
    if n < 1e-6:
        raise GeometryError("medial and lateral condyle points have the same centroid", reason="degenerate")
    d /= n
    for _ in range(_MAX_ITER):
        cm, _, _ = _condyle_circle(med, d, "medial condyle")
        cl, _, _ = _condyle_circle(lat, d, "lateral condyle")
        d_new = cl - cm
        d_new /= np.linalg.norm(d_new)
        # Chord length, not acos: acos cannot resolve steps below ~1e-8 rad near 1.
        moved = float(np.linalg.norm(d_new - d))
        d = d_new
        if moved < _TOL_RAD:
            break
    else:
        log.warning("flexion axis fit did not converge; last step %.3g rad", moved)
    cm, rm, res_m = _condyle_circle(med, d, "medial condyle")
    cl, rl, res_l = _condyle_circle(lat, d, "lateral condyle")
    rms = float(np.sqrt(np.mean(np.concatenate([res_m, res_l]) ** 2)))
    return FlexionAxisFit(
        direction=(float(d[0]), float(d[1]), float(d[2])),
        medial_centre=(float(cm[0]), float(cm[1]), float(cm[2])),
        lateral_centre=(float(cl[0]), float(cl[1]), float(cl[2])),
        medial_radius_mm=float(rm),
        lateral_radius_mm=float(rl),
        rms_mm=rms,
        angle_to_tea_deg=_unsigned_line_angle(d, tea) if tea is not None else None,
        angle_to_pca_deg=_unsigned_line_angle(d, pca) if pca is not None else None,
    )
