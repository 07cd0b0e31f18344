"""Cross-view check: do the knee AP and the knee lateral film show the same knee?

The re-projection score (:mod:`appliance.recon.consistency`) compares the reconstruction with each film.
It cannot tell two patients' films apart once the network has reconstructed *from* them: the decoder is
flexible enough to build a compromise that fits both (docs/recon-checks.md). This check compares the two
films with each other instead, through what they must share.

Both films look at the knee horizontally, so they share its cranio-caudal (S-I) axis: the height of every
horizontal edge (plateau and condyles, the poles of the patella, the tip of the fibular head, the
metaphyseal flares, the joint space) is the same in both views once each film is mapped through its own
recorded geometry. The extreme heights of a convex bone are even independent of the direction it is
viewed from. Per view:

1. sample the film on the vertical plane through the reconstruction's centre, perpendicular to that
   view's beam (``h`` across, ``z`` up, ``step_mm`` grid): every row of that picture is one height z in the
   common patient frame (exact at the plane, within ~1 % for bone in front of or behind it);
2. take the vertical Gaussian derivative ``gz`` (``sigma_mm``) weighted by how horizontal the edge is,
   ``gz * gz^2 / (gz^2 + gh^2)`` (vertical edges of the shafts and texture in every direction count little;
   the sign is kept, so an edge where bone starts going down differs from one where it ends);
3. squash it (tanh at the 99th percentile of the view: metal ruler ticks and film edges are far stronger
   than bone edges) and average it, winsorised at 10/90 %, across the projected bone of the reconstruction
   (``ViewImages.region`` of the consistency check, opened with a 5 mm disk, without islands under
   4 cm^2, eroded by ``erode_mm``; this keeps lead markers, rulers, text and collimation edges out)
   -> ``p(z)``.

The score is the normalised cross-correlation of ``p_AP(z)`` and ``p_LAT(z)`` over the heights both
views cover with bone. No search over a shift: the geometry fixes the heights, and a shift is exactly
what a mismatched pair shows. Calibrated threshold: ``ConsistencySettings.cross_view_threshold``
(tools/calibrate_consistency_cross_view.py, docs/recon-checks.md "Cross-view check").

Assumption: the knee did not move between the two exposures (the simulator keeps one pose for both
films). A clinic's lateral taken in more flexion than its AP moves the patella and the fibular head
relative to the femur: such a matched pair scores lower and is flagged for review, never passed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.geometry.projection import ProjectionGeometry
from appliance.recon.types import FilmView

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]
AP_VIEW = "knee_ap"
LAT_VIEW = "knee_lat"
SUPERIOR = np.array([0.0, 0.0, 1.0])
# A beam this close to the S-I axis has no horizontal direction to share heights along.
MAX_BEAM_TILT_COS = 0.5


@dataclass(frozen=True)
class CrossViewSettings:
    """Method parameters (the threshold lives in ``ConsistencySettings.cross_view_threshold``).

    ``step_mm``: sampling step of the common plane; ``sigma_mm``: derivative scale (finer was better: the
    heights are known to well under a millimetre); ``half_height_mm`` / ``half_width_mm``: the plane's
    extent around the centre (the 144 mm cube minus its 10 mm face margin); ``erode_mm``: how far the
    projected bone region is shrunk (its 4 mm growth is for the re-projection score's edges; here it
    would let soft-tissue and marker edges in); ``open_mm``: radius of the morphological opening that
    removes thin bumps of the region; ``min_piece_mm2``: smaller islands of projected bone are dropped;
    ``saturate_percentile``: edge strengths are squashed (tanh) at this percentile of the view's bone
    pixels; ``winsor_percent``: each row's values are clipped to this percentile range before averaging;
    ``min_bone_mm``: a height counts only when both views have at least this much bone
    across. Chosen on the calibration cases only (docs/recon-checks.md)."""

    step_mm: float = 0.5
    sigma_mm: float = 0.5
    half_height_mm: float = 62.0
    half_width_mm: float = 75.0
    erode_mm: float = 3.0
    open_mm: float = 5.0
    min_piece_mm2: float = 400.0
    saturate_percentile: float = 99.0
    winsor_percent: float = 10.0
    min_bone_mm: float = 10.0
    min_heights: int = 40


@dataclass(frozen=True)
class CrossViewResult:
    """The ``reconstruction.consistency.cross_view`` object of result.json (docs/result-schema.md)."""

    score: float
    threshold: float
    heights_used: int
    consistent: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "score": round(self.score, 4),
            "threshold": self.threshold,
            "heights_used": self.heights_used,
            "consistent": self.consistent,
        }


@dataclass(frozen=True)
class HeightProfile:
    """One view's horizontal-edge profile ``values`` over ``heights_mm`` (relative to the centre, up
    positive) and how much bone (mm) each height has across (``bone_mm``)."""

    view: str
    heights_mm: F64
    values: F64
    bone_mm: F64


def plane_axes(geometry: ProjectionGeometry) -> tuple[F64, F64] | None:
    """(across, up) unit vectors of the vertical plane facing ``geometry``'s beam, or None when the beam
    runs along the S-I axis."""
    n = np.asarray(geometry.normal, dtype=np.float64)
    if abs(float(n @ SUPERIOR)) > MAX_BEAM_TILT_COS:
        return None
    across = np.cross(n, SUPERIOR)
    across /= np.linalg.norm(across)
    up = np.cross(across, n)
    up /= np.linalg.norm(up)
    if up @ SUPERIOR < 0:
        up = -up
    return across, up


def plane_points(
    geometry: ProjectionGeometry, centre_mm: F64, s: CrossViewSettings
) -> tuple[F64, F64] | None:
    """(rows, cols, 3) LPS points of the common plane (first row highest) and the row heights."""
    axes = plane_axes(geometry)
    if axes is None:
        return None
    across, up = axes
    hs = np.arange(-s.half_width_mm, s.half_width_mm + 1e-9, s.step_mm)
    zs = np.arange(s.half_height_mm, -s.half_height_mm - 1e-9, -s.step_mm)
    pts = centre_mm[None, None, :] + hs[None, :, None] * across + zs[:, None, None] * up
    return pts, zs


def sample_at(image: NDArray[np.generic], geometry: ProjectionGeometry, pts: F64, order: int) -> F64:
    """``image`` (on ``geometry``'s detector) at the projections of ``pts``; NaN off the detector."""
    px = geometry.project(pts.reshape(-1, 3))
    out = ndimage.map_coordinates(
        np.asarray(image, dtype=np.float64), [px[:, 1], px[:, 0]], order=order, mode="constant", cval=np.nan
    )
    return np.asarray(out.reshape(pts.shape[:2]), dtype=np.float64)


def _disk(radius_px: float) -> NDArray[np.bool_]:
    n = int(np.ceil(radius_px))
    y, x = np.mgrid[-n : n + 1, -n : n + 1]
    return np.asarray(x * x + y * y <= radius_px * radius_px)


def bone_pixels(image: F64, bone: NDArray[np.bool_], s: CrossViewSettings) -> NDArray[np.bool_]:
    """The plane's pixels that count: projected bone on the film, opened with a ``open_mm`` disk (the
    network sometimes reconstructs the ticks of a ruler next to the knee as bumps of bone), in pieces of
    at least ``min_piece_mm2`` (or a lead marker as an island), shrunk by ``erode_mm``."""
    valid = np.isfinite(image) & bone
    if s.open_mm > 0:
        valid = ndimage.binary_opening(valid, structure=_disk(s.open_mm / s.step_mm))
    lab, n = ndimage.label(valid)
    if n:
        area = np.asarray(ndimage.sum(valid, lab, np.arange(1, n + 1)), dtype=np.float64) * s.step_mm**2
        keep = np.concatenate([[False], area >= s.min_piece_mm2])
        valid = keep[lab]
    return np.asarray(ndimage.binary_erosion(valid, iterations=max(1, round(s.erode_mm / s.step_mm))))


def _row_percentile(h: F64, percent: float) -> F64:
    """Per-row percentile of the finite values (linear interpolation, as ``np.nanpercentile``, which runs
    a Python loop over the rows); every row needs at least one finite value."""
    srt = np.sort(h, axis=1)  # NaN sort last
    n = np.isfinite(h).sum(axis=1)
    pos = (n - 1) * (percent / 100.0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    r = np.arange(len(n))
    return np.asarray(srt[r, lo] + (srt[r, hi] - srt[r, lo]) * (pos - lo), dtype=np.float64)


def edge_profile(image: F64, bone: NDArray[np.bool_], s: CrossViewSettings) -> tuple[F64, F64]:
    """Horizontal-edge profile (winsorised mean over each row's bone) and bone width per row (mm)."""
    valid = bone_pixels(image, bone, s)
    x = np.where(np.isfinite(image), image, 0.0)
    if valid.any():
        lo, hi = np.percentile(x[valid], [5.0, 95.0])
        x = (x - lo) / max(float(hi - lo), 1e-6)
    sig = s.sigma_mm / s.step_mm
    gz = ndimage.gaussian_filter(x, sig, order=(1, 0))
    gh = ndimage.gaussian_filter(x, sig, order=(0, 1))
    horizontal = gz * gz * gz / (gz * gz + gh * gh + 1e-12)
    count = valid.sum(axis=1)
    values = np.zeros(len(count), dtype=np.float64)
    rows = count > 0
    if rows.any():
        # Saturate: a metal ruler tick or a film edge is far stronger than any bone edge and would
        # otherwise decide the correlation alone.
        scale = float(np.percentile(np.abs(horizontal[valid]), s.saturate_percentile)) + 1e-12
        h = np.where(valid, np.tanh(horizontal / scale), np.nan)[rows]
        # Winsorise each row: a narrow feature (ruler ticks beside the bone) moves the row's mean little.
        lo_r = _row_percentile(h, s.winsor_percent)
        hi_r = _row_percentile(h, 100.0 - s.winsor_percent)
        values[rows] = np.nanmean(np.clip(h, lo_r[:, None], hi_r[:, None]), axis=1)
    return values, count.astype(np.float64) * s.step_mm


def height_profile(
    film: FilmView,
    region: NDArray[np.bool_],
    region_geometry: ProjectionGeometry,
    centre_mm: F64,
    settings: CrossViewSettings | None = None,
) -> HeightProfile | None:
    """One film's profile on its plane through ``centre_mm``; ``region`` (on ``region_geometry``'s
    detector) marks the projected bone. None when the view is not horizontal."""
    s = settings or CrossViewSettings()
    grid = plane_points(film.geometry, np.asarray(centre_mm, dtype=np.float64).reshape(3), s)
    if grid is None:
        return None
    pts, zs = grid
    image = sample_at(film.image, film.geometry, pts, order=1)
    bone = sample_at(region.astype(np.float32), region_geometry, pts, order=0) > 0.5
    values, bone_mm = edge_profile(image, bone, s)
    return HeightProfile(film.view, zs, values, bone_mm)


def _ncc(a: F64, b: F64) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def profile_agreement(
    ap: HeightProfile, lat: HeightProfile, settings: CrossViewSettings | None = None
) -> tuple[float, int]:
    """(NCC of the two profiles over the heights both cover with bone, number of those heights)."""
    s = settings or CrossViewSettings()
    both = (ap.bone_mm >= s.min_bone_mm) & (lat.bone_mm >= s.min_bone_mm)
    n = int(both.sum())
    if n < s.min_heights:
        return 0.0, n
    return _ncc(ap.values[both], lat.values[both]), n


def cross_view_check(
    films: Mapping[str, FilmView],
    regions: Sequence[tuple[str, NDArray[np.bool_], ProjectionGeometry]],
    centre_mm: F64,
    threshold: float,
    settings: CrossViewSettings | None = None,
) -> CrossViewResult | None:
    """Score the knee AP against the knee lateral film (module docstring); None without both views.

    ``regions``: (view, projected bone region, the region's detector geometry) per view, as the
    consistency check rendered them (:class:`appliance.recon.consistency.ViewImages`)."""
    s = settings or CrossViewSettings()
    if AP_VIEW not in films or LAT_VIEW not in films:
        return None
    by_view = {v: (r, g) for v, r, g in regions}
    profiles: dict[str, HeightProfile] = {}
    for view in (AP_VIEW, LAT_VIEW):
        if view not in by_view:
            return None
        region, geom = by_view[view]
        p = height_profile(films[view], region, geom, centre_mm, s)
        if p is None:
            log.info("cross-view check skipped: %s beam is not horizontal", view)
            return None
        profiles[view] = p
    score, n = profile_agreement(profiles[AP_VIEW], profiles[LAT_VIEW], s)
    ok = score >= threshold
    log.debug("cross-view score %.3f over %d heights (threshold %.3f)", score, n, threshold)
    return CrossViewResult(
        score=float(score), threshold=float(threshold), heights_used=n, consistent=bool(ok)
    )
