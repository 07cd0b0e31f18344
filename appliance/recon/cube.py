"""The reconstruction cube and the film frames: geometry shared by the runtime (appliance/recon/infer.py)
and training (export/recon).

The knee cube is ``CUBE_VOXELS``^3 voxels of ``VOXEL_MM`` mm on an axis-aligned LPS grid centred on the
knee (:func:`estimate_centre`, :func:`cube_affine`); each film is resampled to a ``FILM_PX`` x ``FILM_PX``
frame of ``FILM_PITCH_MM`` at the detector around the cube centre's projection (:func:`film_frame`), and
:func:`cube_to_film_matrix` maps normalised cube coordinates to normalised frame coordinates, the matrices
the network samples its features with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from appliance.errors import InputError
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import axis_aligned_affine

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]

FILM_PX: Final = 256
FILM_PITCH_MM: Final = 0.75  # at the detector: 192 mm frame, the 144 mm cube magnified by up to ~1.2
CUBE_VOXELS: Final = 144
VOXEL_MM: Final = 1.0
AP_ONLY_DEPTH_MM: Final = 85.0  # knee centre in front of the AP detector (gap 10-40 mm + half the knee)
VIEWS: Final = ("knee_ap", "knee_lat")


def _central_ray(g: ProjectionGeometry) -> tuple[F64, F64]:
    """Source and unit direction of the ray through the principal point (perpendicular to the detector)."""
    return g.source, -g.normal


def estimate_centre(geometries: Mapping[str, ProjectionGeometry]) -> F64:
    """Where the reconstruction cube is centred when no centre is given (LPS mm).

    Knee films are centred on the joint (centring error ~1 cm), so with two views the point nearest to
    both central rays is the joint; with the AP alone the depth is a typical one."""
    if "knee_ap" not in geometries:
        raise InputError("the knee AP film is required for reconstruction", reason="recon_missing_ap")
    s1, d1 = _central_ray(geometries["knee_ap"])
    if "knee_lat" in geometries:
        s2, d2 = _central_ray(geometries["knee_lat"])
        # Closest points of two lines: solve for t1, t2 minimising |s1 + t1 d1 - s2 - t2 d2|.
        a = np.array([[d1 @ d1, -(d1 @ d2)], [d1 @ d2, -(d2 @ d2)]])
        b = np.array([(s2 - s1) @ d1, (s2 - s1) @ d2])
        if abs(np.linalg.det(a)) > 1e-6:
            t1, t2 = np.linalg.solve(a, b)
            return np.asarray(0.5 * (s1 + t1 * d1 + s2 + t2 * d2), dtype=np.float64)
    g = geometries["knee_ap"]
    sid = g.source_to_detector_mm()
    return np.asarray(s1 + (sid - AP_ONLY_DEPTH_MM) * d1, dtype=np.float64)


def cube_affine(centre_mm: ArrayLike, n: int = CUBE_VOXELS, spacing: float = VOXEL_MM) -> F64:
    """Affine of the ``n``^3 reconstruction grid centred on ``centre_mm`` (axis-aligned LPS)."""
    c = np.asarray(centre_mm, dtype=np.float64).reshape(3)
    return axis_aligned_affine(c - spacing * (n - 1) / 2.0, (spacing, spacing, spacing))


@dataclass(frozen=True, eq=False)
class FilmFrame:
    """One film resampled for the network: ``image`` (FILM_PX, FILM_PX) in [0, 1] and ``matrix`` (3x4)
    mapping LPS mm to frame pixels (col, row), homogeneous."""

    image: F32
    matrix: F64
    geometry: ProjectionGeometry  # the frame as a detector of its own (for re-projection)


def film_frame(image01: ArrayLike, geometry: ProjectionGeometry, centre_mm: ArrayLike) -> FilmFrame:
    """Resample a film to the network frame around the projection of ``centre_mm``.

    Gaussian low-pass (sigma = (s - 1) / 2 film pixels for a shrink factor s), bilinear, zero outside."""
    img = np.asarray(image01, dtype=np.float32)
    if img.shape != (geometry.rows, geometry.columns):
        raise InputError(
            f"film shape {img.shape} does not match its geometry ({geometry.rows}, {geometry.columns})",
            reason="recon_bad_film",
        )
    cp = geometry.project(np.asarray(centre_mm, dtype=np.float64).reshape(1, 3))[0]
    su = FILM_PITCH_MM / geometry.pitch_u_mm  # film pixels per frame pixel
    sv = FILM_PITCH_MM / geometry.pitch_v_mm
    half = (FILM_PX - 1) / 2.0
    c0, r0 = cp[0] - half * su, cp[1] - half * sv
    # Frame pixel (c', r') sits at film pixel (c0 + su c', r0 + sv r').
    lo_c, hi_c = int(np.floor(c0)) - 8, int(np.ceil(c0 + su * (FILM_PX - 1))) + 9
    lo_r, hi_r = int(np.floor(r0)) - 8, int(np.ceil(r0 + sv * (FILM_PX - 1))) + 9
    win = np.zeros((hi_r - lo_r, hi_c - lo_c), np.float32)
    rs, re = max(lo_r, 0), min(hi_r, img.shape[0])
    cs, ce = max(lo_c, 0), min(hi_c, img.shape[1])
    if re > rs and ce > cs:
        win[rs - lo_r : re - lo_r, cs - lo_c : ce - lo_c] = img[rs:re, cs:ce]
    sig = (0.5 * max(sv - 1.0, 0.0), 0.5 * max(su - 1.0, 0.0))
    if max(sig) > 0:
        win = ndimage.gaussian_filter(win, sig, mode="constant", truncate=3.0)
    idx = np.arange(FILM_PX, dtype=np.float64)
    rr, cc = np.meshgrid(r0 + sv * idx - lo_r, c0 + su * idx - lo_c, indexing="ij")
    out = ndimage.map_coordinates(win, [rr, cc], order=1, mode="constant", cval=0.0)
    a = np.array([[1.0 / su, 0.0, -c0 / su], [0.0, 1.0 / sv, -r0 / sv], [0.0, 0.0, 1.0]])
    o = geometry.pixel_to_mm(c0, r0)
    frame_geom = ProjectionGeometry(
        source_mm=geometry.source_mm,
        detector_origin_mm=(float(o[0]), float(o[1]), float(o[2])),
        u_dir=geometry.u_dir,
        v_dir=geometry.v_dir,
        pitch_u_mm=FILM_PITCH_MM,
        pitch_v_mm=FILM_PITCH_MM,
        columns=FILM_PX,
        rows=FILM_PX,
        name=geometry.name,
    )
    return FilmFrame(np.clip(out, 0.0, 1.0).astype(np.float32), a @ geometry.matrix(), frame_geom)


def cube_to_film_matrix(frame_matrix: ArrayLike, affine: ArrayLike) -> F32:
    """3x4 matrix from normalised cube coordinates (each axis -1..1 over the voxel centres) to
    normalised frame coordinates (-1..1 over the pixel centres, ``grid_sample`` align_corners=True),
    scaled so the homogeneous w is 1 at the cube centre."""
    a = np.asarray(affine, dtype=np.float64)
    n = CUBE_VOXELS
    # normalised p -> index (p + 1) (n - 1) / 2 -> LPS
    t_cube = np.zeros((4, 4))
    t_cube[:3, :3] = a[:3, :3] * (n - 1) / 2.0
    t_cube[:3, 3] = a[:3, :3] @ np.full(3, (n - 1) / 2.0) + a[:3, 3]
    t_cube[3, 3] = 1.0
    k = 2.0 / (FILM_PX - 1)
    t_film = np.array([[k, 0.0, -1.0], [0.0, k, -1.0], [0.0, 0.0, 1.0]])
    m = t_film @ np.asarray(frame_matrix, dtype=np.float64) @ t_cube
    w = m[2, 3]  # w at p = 0
    if w <= 0:
        raise InputError("the reconstruction centre lies behind a film's source", reason="recon_bad_geometry")
    return (m / w).astype(np.float32)
