"""Finding the calibration sphere on a long-leg film and reading the magnification from it.

Standing long-leg films often carry a steel sphere of known diameter (typically 25 mm) taped beside the
knee or thigh at the depth of the bone (../shared/reference/films.md), because the header's magnification
(SID / SOD) is often absent, and a PACS export loses the pixel spacing altogether. A sphere projects to a
disc whatever its orientation, so its diameter on the film divided by its true diameter is the
magnification at the sphere's depth.

Known bias: the edge is the steepest fall of the displayed (log) film. A radiograph shows the log of the
detector's blurred intensity, and the log of a blurred opaque edge falls steepest inside the true rim, so
the diameter reads small by about one blur sigma per side: 2-4.5 % on drawn films with a 0.7-1.5 px
detector blur (tests/test_calibration_ball.py), median 0.3 % (max 2.1 %) on the simulator's held-out
films (docs/calibration.md). A model fit of the sphere's edge would remove it; not done.

Method (pure numpy / scipy / scikit-image; ``find_calibration_ball``):

1. Candidates: the film at ~1 mm/px, Canny edges, a circular Hough transform over the radii the sphere can
   have (its diameter times the plausible magnifications), the strongest few peaks.
2. Each candidate is measured at full resolution: ``RAYS`` radial intensity profiles from its centre; on
   each, the edge is the steepest inside-bright -> outside-dark step near the expected radius. A ray counts
   only when that step is strong against the profile's own noise (rays into a white collimation shutter,
   an overlapping bone or text have none and are left out, so a sphere half hidden by a shutter is still
   measured on its visible arc). A circle is fitted to the accepted edge points (algebraic fit, then
   re-measured from the new centre twice).
3. Accepted: at least ``MIN_ARC`` of the circumference with an edge, an RMS fit residual under
   ``MAX_RMS_FRAC`` of the radius, a diameter inside the magnification range, and not centred on an
   exclusion point (the femoral head centres: a hip prosthesis head is a metal sphere of 28-36 mm that
   would otherwise read as the calibration sphere).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage
from skimage.feature import canny
from skimage.transform import hough_circle, hough_circle_peaks

log = logging.getLogger(__name__)

__all__ = ["BALL_DIAMETER_MM", "CALIBRATION_BALL", "BallFinding", "find_calibration_ball"]

BALL_DIAMETER_MM: Final = 25.0
CALIBRATION_BALL: Final = "calibration_ball"
"""The magnification source recorded when the sphere gave the scale."""
MAGNIFICATION_RANGE: Final = (1.0, 1.4)
"""Standing long-leg films: SID 2.5-3 m with the bone 10-40 cm in front of the detector (films.md)."""
COARSE_MM: Final = 1.0
RAYS: Final = 120
MIN_ARC: Final = 0.7
"""Share of the circumference with a clean edge. A sphere cut by the film edge or a collimation blade
shows less; so does the rounded end of a bone canal or a nail, which must not pass."""
SOLID_TOL: Final = 0.15
MAX_RMS_FRAC: Final = 0.015
EXCLUDE_MM: Final = 40.0
CANDIDATES: Final = 30
STEP_SNR: Final = 6.0
"""An edge counts when its step is this many times the profile's own high-frequency noise."""


@dataclass(frozen=True)
class BallFinding:
    """The calibration sphere found on a film: centre (col, row) and diameter in film pixels, the
    diameter at the detector in mm, the magnification it implies, and how well it was seen."""

    centre: tuple[float, float]
    diameter_px: float
    diameter_detector_mm: float
    magnification: float
    arc_fraction: float
    fit_rms_px: float

    def to_json(self) -> dict[str, float | list[float]]:
        return {
            "centre_px": [round(self.centre[0], 2), round(self.centre[1], 2)],
            "diameter_px": round(self.diameter_px, 3),
            "diameter_detector_mm": round(self.diameter_detector_mm, 3),
            "magnification": round(self.magnification, 4),
            "arc_fraction": round(self.arc_fraction, 3),
            "fit_rms_px": round(self.fit_rms_px, 3),
        }


def _fit_circle(pts: NDArray[np.float64]) -> tuple[float, float, float]:
    """Least-squares (Kasa) circle through (N, 2) points: centre x, y and radius."""
    x, y = pts[:, 0], pts[:, 1]
    a = np.column_stack([x, y, np.ones_like(x)])
    b = x * x + y * y
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2.0, sol[1] / 2.0
    r = math.sqrt(max(sol[2] + cx * cx + cy * cy, 0.0))
    return float(cx), float(cy), r


def _robust_circle(pts: NDArray[np.float64]) -> tuple[float, float, float, NDArray[np.bool_]]:
    """Circle through the points that agree with it: fit, drop the points off the circle (a straight
    film edge or collimation blade cutting the sphere, a bone edge crossing it), refit."""
    keep = np.ones(len(pts), dtype=bool)
    cx, cy, r = _fit_circle(pts)
    for _ in range(6):
        res = np.abs(np.hypot(pts[:, 0] - cx, pts[:, 1] - cy) - r)
        scale = max(1.4826 * float(np.median(res[keep])), 0.3)
        new = res < max(3.0 * scale, 1.0)
        if new.sum() < 8:
            break
        if np.array_equal(new, keep):
            break
        keep = new
        cx, cy, r = _fit_circle(pts[keep])
    return cx, cy, r, keep


def _edges_on_rays(
    img: NDArray[np.float32], cx: float, cy: float, r: float
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Edge point per ray (N, 2) around (cx, cy) near radius ``r`` and whether the ray has a clean step."""
    ang = np.linspace(0.0, 2.0 * math.pi, RAYS, endpoint=False)
    t = np.linspace(0.55 * r, 1.45 * r, max(int(1.8 * r), 24))
    cols = cx + np.cos(ang)[:, None] * t[None, :]
    rows = cy + np.sin(ang)[:, None] * t[None, :]
    prof = ndimage.map_coordinates(img, [rows.ravel(), cols.ravel()], order=1, mode="nearest")
    prof = prof.reshape(RAYS, t.size).astype(np.float64)
    d = np.diff(prof, axis=1)
    k = np.argmin(d, axis=1)  # steepest fall: bright inside -> dark outside
    dt = t[1] - t[0]
    # Parabolic sub-sample position of the steepest fall.
    i = np.clip(k, 1, d.shape[1] - 2)
    y0, y1, y2 = d[np.arange(RAYS), i - 1], d[np.arange(RAYS), i], d[np.arange(RAYS), i + 1]
    den = y0 - 2.0 * y1 + y2
    off = np.where(np.abs(den) > 1e-12, 0.5 * (y0 - y2) / np.where(np.abs(den) > 1e-12, den, 1.0), 0.0)
    pos = t[0] + (i + 0.5 + np.clip(off, -0.5, 0.5)) * dt
    # Step height: mean a few samples inside minus a few outside the edge; noise from the second difference.
    # The fall at d[i] is between samples i and i + 1: average a few samples on either side.
    idx = np.arange(t.size)[None, :]
    e = i[:, None]
    inside_mask = (idx <= e) & (idx >= e - 3)
    outside_mask = (idx >= e + 2) & (idx <= e + 5)
    inside = (prof * inside_mask).sum(axis=1) / np.maximum(inside_mask.sum(axis=1), 1)
    outside = np.where(
        outside_mask.any(axis=1),
        (prof * outside_mask).sum(axis=1) / np.maximum(outside_mask.sum(axis=1), 1),
        prof[:, -1],
    )
    noise = np.median(np.abs(np.diff(d, axis=1)), axis=1) + 1e-6
    ok = (inside - outside) > STEP_SNR * noise
    # The edge must be a single fall: the largest rise on the ray stays well below the fall.
    ok &= np.max(d, axis=1) < 0.5 * (-d[np.arange(RAYS), k])
    pts = np.column_stack([cx + np.cos(ang) * pos, cy + np.sin(ang) * pos])
    return pts, ok


def _measure(
    img: NDArray[np.float32], cx: float, cy: float, r: float
) -> tuple[float, float, float, float, float] | None:
    """Refine a candidate: (cx, cy, r, arc fraction, rms) or None when no circle is supported."""
    for _ in range(3):
        pts, ok = _edges_on_rays(img, cx, cy, r)
        if ok.sum() < max(8, MIN_ARC * RAYS * 0.75):
            return None
        ncx, ncy, nr, _ = _robust_circle(pts[ok])
        if not (0.7 * r < nr < 1.3 * r) or math.hypot(ncx - cx, ncy - cy) > 0.3 * r:
            return None
        cx, cy, r = ncx, ncy, nr
    pts, ok = _edges_on_rays(img, cx, cy, r)
    if not ok.any():
        return None
    resid = np.hypot(pts[ok, 0] - cx, pts[ok, 1] - cy) - r
    # Rays whose edge is off the circle (a bone edge crossing) do not count toward the visible arc.
    good = np.abs(resid) < max(1.0, 0.05 * r)
    arc = float(good.sum()) / RAYS
    rms = float(np.sqrt(np.mean(resid[good] ** 2))) if good.any() else float("inf")
    return cx, cy, r, arc, rms


def _solid(img: NDArray[np.float32], cx: float, cy: float, r: float) -> bool:
    """A solid sphere is brightest (longest path) toward its centre: the inner disc is about as bright
    as the ring inside the edge (an unsharp-mask rim may lift the ring a little: ``SOLID_TOL`` of the
    edge step). A hollow tube's end (a bone canal, a nail) is much darker in the middle."""
    yy, xx = np.mgrid[-1.4:1.4:57j, -1.4:1.4:57j]
    rr = np.hypot(xx, yy)
    vals = ndimage.map_coordinates(img, [cy + yy * r, cx + xx * r], order=1, mode="nearest")
    inner = float(vals[rr <= 0.4].mean())
    ring = float(vals[(rr >= 0.6) & (rr <= 0.85)].mean())
    outside = float(np.median(vals[(rr >= 1.15) & (rr <= 1.35)]))
    return inner >= ring - SOLID_TOL * max(ring - outside, 0.0)


def find_calibration_ball(
    image01: NDArray[np.float32],
    detector_spacing_mm: tuple[float, float],
    *,
    diameter_mm: float = BALL_DIAMETER_MM,
    magnification_range: tuple[float, float] = MAGNIFICATION_RANGE,
    exclude: Sequence[tuple[float, float]] = (),
) -> BallFinding | None:
    """The calibration sphere on a film (``image01`` in [0, 1], bone bright; ``detector_spacing_mm``
    (row, col) at the detector), or None when no sphere of that size is seen. ``exclude``: film (col, row)
    points (e.g. femoral head centres) on which a found sphere is not the calibration sphere."""
    img = np.asarray(image01, dtype=np.float32)
    sp = float(np.mean(detector_spacing_mm))
    if img.ndim != 2 or not math.isfinite(sp) or sp <= 0:
        return None
    f = min(1.0, sp / COARSE_MM)
    small = ndimage.zoom(ndimage.gaussian_filter(img, 0.5 / f), f, order=1) if f < 1.0 else img
    px_small = sp / f
    r_lo = 0.5 * diameter_mm * magnification_range[0] / px_small
    r_hi = 0.5 * diameter_mm * magnification_range[1] / px_small
    radii = np.arange(max(r_lo - 1.0, 3.0), r_hi + 1.0, 0.5)
    edges = canny(small, sigma=1.0, low_threshold=0.02, high_threshold=0.06)
    if not edges.any():
        return None
    acc = hough_circle(edges, radii)
    _, xs, ys, rs = hough_circle_peaks(
        acc, radii, min_xdistance=int(r_lo), min_ydistance=int(r_lo), total_num_peaks=CANDIDATES
    )
    best: BallFinding | None = None
    for x, y, rad in zip(xs, ys, rs, strict=True):
        m = _measure(img, float(x) / f, float(y) / f, float(rad) / f)
        if m is None:
            continue
        cx, cy, r, arc, rms = m
        d_mm = 2.0 * r * sp
        mag = d_mm / diameter_mm
        if arc < MIN_ARC or rms > MAX_RMS_FRAC * r:
            continue
        if not magnification_range[0] - 0.02 <= mag <= magnification_range[1] + 0.02:
            continue
        if any(math.hypot(cx - ex, cy - ey) * sp < EXCLUDE_MM for ex, ey in exclude):
            continue
        if not _solid(img, cx, cy, r):
            continue
        cand = BallFinding((cx, cy), 2.0 * r, d_mm, mag, arc, rms)
        if best is None or arc > best.arc_fraction:
            best = cand
    if best is not None:
        log.debug(
            "calibration sphere: magnification %.3f (%.0f %% of its edge seen)",
            best.magnification,
            100 * best.arc_fraction,
        )
    return best
