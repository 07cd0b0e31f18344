"""The tibial shaft below the reconstruction, found on the knee films: where the ankle centre's depth
comes from.

The reconstruction ends ~70 mm below the joint, but the knee films show the shaft further down. A
straight cylinder (radius and start taken from the reconstructed tibia's lowest clean cross-section) is
hung below the reconstruction and its direction (2 DoF) is fitted to the films by the gradient
correlation of its DRR inside its projected region below the reconstruction (Powell). The fitted line
and the long-leg film's ankle-centre ray then give the ankle centre where they pass closest
(:mod:`appliance.recon.bones3d`, depth model ``"tibial_shaft"``). The tibial shaft is close to straight
and parallel to the mechanical axis, unlike the bowed femur, whose hip centre stays at the knee's depth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from appliance.geometry.drr import line_integrals
from appliance.geometry.volume import Volume
from appliance.recon.consistency import (
    FACE_MARGIN_MM,
    MU_BONE_PER_MM,
    MU_WATER_PER_MM,
    bin_image,
    binning_factor,
    gradient_correlation,
)
from appliance.recon.types import FilmView

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]

SHAFT_LENGTH_MM = 110.0  # cylinder length hung below the reconstruction
MAX_TILT_DEG = 12.0


@dataclass(frozen=True)
class ShaftFit:
    point: F64  # start of the cylinder (centre of the lowest clean cross-section), LPS mm
    direction: F64  # unit, distal
    radius_mm: float
    similarity: float
    tilt_deg: float  # change from the initial direction


def _basis(d: F64) -> tuple[F64, F64]:
    a = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = a - (a @ d) * d
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(d, e1)


def _cylinder(radius: float, pitch: float = 1.0) -> tuple[NDArray[np.float32], F64]:
    """Cylinder attenuation above soft tissue (cortex 3 mm of bone, marrow like tissue) in a local grid
    whose third axis is the cylinder axis from 0 to SHAFT_LENGTH_MM; returns data and the local affine."""
    n_r = int(np.ceil(radius / pitch)) + 2
    n_h = int(SHAFT_LENGTH_MM / pitch)
    a = (np.arange(-n_r, n_r + 1)) * pitch
    aa, bb = np.meshgrid(a, a, indexing="ij")
    r = np.hypot(aa, bb)
    cortex = ((r <= radius) & (r >= radius - 3.0)).astype(np.float32) * (MU_BONE_PER_MM - MU_WATER_PER_MM)
    data = np.repeat(cortex[:, :, None], n_h, axis=2)
    local = np.eye(4)
    local[:3, :3] *= pitch
    local[:3, 3] = [-n_r * pitch, -n_r * pitch, 0.0]
    return np.ascontiguousarray(data), local


def fit_tibial_shaft(
    labels: Volume, tibia_points: F64, distal: F64, films: Sequence[FilmView], pitch_mm: float = 1.0
) -> ShaftFit | None:
    """Fit the shaft direction below the reconstruction; None without a usable cross-section or films."""
    if not films:
        return None
    distal = distal / np.linalg.norm(distal)
    # The lowest tibia cross-section at least FACE_MARGIN_MM inside the grid's faces.
    inside = _inside(labels, tibia_points, FACE_MARGIN_MM)
    pts = tibia_points[inside]
    if len(pts) < 100:
        return None
    h = pts @ distal
    ring = pts[h >= h.max() - 4.0]
    if len(ring) < 30:
        return None
    start = ring.mean(axis=0)
    e1, e2 = _basis(distal)
    q = ring - start
    radius = float(np.median(np.hypot(q @ e1, q @ e2)))
    data, local = _cylinder(radius)

    views = []
    for film in films:
        f = binning_factor(film.geometry, pitch_mm)
        g = film.geometry.binned(f)
        views.append((g, bin_image(film.image, f)))

    def placed(angles: F64) -> F64:
        R0 = np.column_stack([e1, e2, distal])
        R = Rotation.from_rotvec(np.radians(angles[0]) * e1 + np.radians(angles[1]) * e2).as_matrix() @ R0
        A = np.eye(4)
        A[:3, :3] = R
        A[:3, 3] = start
        return np.asarray(A @ local, dtype=np.float64)

    # Region: the cylinder's projection at the start direction grown to cover the tilts searched,
    # beyond the first 10 mm (the junction with the reconstruction).
    regions = []
    for g, _ in views:
        vol = Volume(data, placed(np.zeros(2)))
        path = line_integrals(vol, g)
        grow = max(1, round((np.tan(np.radians(MAX_TILT_DEG)) * SHAFT_LENGTH_MM * 0.5) / g.pitch_u_mm))
        region = ndimage.binary_dilation(path > 0.0, iterations=grow)
        near = line_integrals(Volume(data[:, :, :10], placed(np.zeros(2))), g) > 0.0
        region &= ~ndimage.binary_dilation(near, iterations=3)
        regions.append(region)
    if not any(r.any() for r in regions):
        return None

    def similarity(x: F64) -> float:
        A = placed(x)
        total = 0.0
        for (g, img), region in zip(views, regions, strict=True):
            drr = line_integrals(Volume(data, A), g)
            total += gradient_correlation(img, drr, region, 1.5)
        return total / len(views)

    res = optimize.minimize(
        lambda x: -similarity(x),
        np.zeros(2),
        method="Powell",
        bounds=[(-MAX_TILT_DEG, MAX_TILT_DEG)] * 2,
        options={"xtol": 0.1, "ftol": 1e-5, "maxfev": 200},
    )
    A = placed(np.asarray(res.x))
    direction = A[:3, 2] / np.linalg.norm(A[:3, 2])
    tilt = float(np.degrees(np.arccos(np.clip(direction @ distal, -1.0, 1.0))))
    log.info("tibial shaft: GC %.3f, tilt %.1f deg from the start direction", -res.fun, tilt)
    return ShaftFit(start, direction, radius, -float(res.fun), tilt)


def _inside(vol: Volume, points: F64, margin_mm: float) -> NDArray[np.bool_]:
    idx = vol.mm_to_index(points)
    sp = np.asarray(vol.spacing_mm)
    m = margin_mm / sp
    shape = np.asarray(vol.shape) - 1
    return np.asarray(np.all((idx >= m) & (idx <= shape - m), axis=1), dtype=np.bool_)
