"""3D landmarks from the reconstructed knee bones, plus the hip and ankle centres from the long-leg film,
and the 3D angles through :func:`appliance.analytics.angles3d.measure_3d`.

Knee landmarks are read on each bone's smoothed label surface (:mod:`appliance.recon.meshes`), in the
bone's own frame, following the definitions of the simulator's truth (docs/recon-checks.md):

* femur: the distal frame has ``distal`` = FHC -> knee and ``lateral`` along the posterior condylar
  axis. MDFC / LDFC are the most distal points of each condyle along the mechanical axis, refined by a
  quadratic fit of the surface around the extremum; MPC / LPC the most posterior points; the lateral axis
  and the posterior points are iterated to their fixed point (the PCA is tangent to both condyles).
  MEC / LEC are the extreme points along the transepicondylar direction (iterated the same way) in the
  epicondyle band. FKC is the midpoint of MDFC and LDFC.
* tibia: the plateau plane is fitted to the proximal-facing surface outside the spines, keeping the upper
  envelope (the concave medial dish and the rounded rim drop out); MTP / LTP lie on that plane 1.5 mm
  inside the plateau's medial and lateral extremes at the middle of its AP extent, TKC halfway between
  them, MTPA / MTPP on the plane 2 mm inside the anterior / posterior rim at the middle of the medial plateau.

FHC and AC lie outside the knee volume. Each is taken on the ray of the long-leg AP film through its 2D
landmark (the recorded geometry), at a depth set by the depth model:

* ``"axes"`` (default): where the ray passes closest to the bone's axis in the reconstruction, a line
  through the centroids of 5 mm slabs of the bone's voxels from 15 mm beyond the joint to the end of the
  volume (:func:`shaft_axis`; on the truth labels of the 42 held-out knees 530000-530011 and
  531000-531029 the tibial line is within 1.1 deg of the mechanical axis, median 0.4, the femoral one
  within 5.6 deg, median 2.8: the femur's mechanical axis is not its shaft's);
* ``"tibial_axis"``: FHC at the knee's depth, AC as in ``"axes"``;
* ``"knee"``: both at the depth of the knee centre (fails for flexed knees);
* ``"shaft"``: as ``"axes"`` with cross-sections from 45 mm only (too few inside a 144 mm cube).

Depth errors move the points almost only along the ray, which the coronal angles barely see directly;
they tilt the mechanical axes sagittally, which slope, flexion and (through each bone's frame) the
coronal angles do see.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.analytics.angles3d import measure_3d
from appliance.analytics.landmarks import (
    AC,
    FHC,
    FKC,
    LDFC,
    LEC,
    LPC,
    LTP,
    MDFC,
    MEC,
    MPC,
    MTP,
    MTPA,
    MTPP,
    TKC,
)
from appliance.analytics.results import Angles3D
from appliance.errors import GeometryError, InputError
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import Volume
from appliance.recon.meshes import Mesh, label_surface
from appliance.recon.types import FEMUR, TIBIA

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]

SPINE_HALF_WIDTH_MM = 14.0  # lateral half-width around TKC excluded from the plateau fit (spines)
PLATEAU_INSET_MM = 1.5  # MTP / LTP inside the plateau's extremes
SLOPE_INSET_MM = 2.0  # MTPA / MTPP inside the anterior / posterior rim
SHAFT_START_MM = 45.0  # shaft cross-sections from this far from the joint line
# Hip / ankle depth models (module docstring) and where their axis cross-sections start.
DEPTH_MODELS = ("knee", "shaft", "axes", "tibial_axis")
DEPTH_AXIS_START_MM = {"shaft": SHAFT_START_MM, "axes": 15.0, "tibial_axis": 15.0}
DEFAULT_DEPTH_MODEL = "axes"


@dataclass(frozen=True)
class Landmarks3D:
    """3D landmarks (LPS mm) and the angles measured from them; ``notes`` says how FHC / AC were placed."""

    points: dict[str, tuple[float, float, float]]
    angles: Angles3D
    notes: tuple[str, ...] = ()

    def landmarks_json(self) -> dict[str, list[float]]:
        return {k: [round(float(x), 3) for x in v] for k, v in self.points.items()}


def _unit(v: F64) -> F64:
    n = float(np.linalg.norm(v))
    if n < 1e-9:
        raise GeometryError("degenerate direction", reason="degenerate")
    return np.asarray(v / n, dtype=np.float64)


def _perp(v: F64, axis: F64) -> F64:
    return _unit(v - (v @ axis) * axis)


def _vertex_normals(mesh: Mesh) -> F64:
    n = np.zeros_like(mesh.vertices)
    fn = mesh.face_normals()
    for k in range(3):
        np.add.at(n, mesh.faces[:, k], fn)
    return np.asarray(n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12), dtype=np.float64)


def _extreme(points: F64, direction: F64, radius_mm: float = 6.0) -> F64:
    """The surface point furthest along ``direction``, refined by fitting the height along ``direction``
    as a quadratic of the in-plane offsets around the raw extremum (sub-voxel, staircase-robust)."""
    h = points @ direction
    top = points[int(np.argmax(h))]
    e1 = _perp(np.array([1.0, 0.0, 0.0]) if abs(direction[0]) < 0.9 else np.array([0.0, 1.0, 0.0]), direction)
    e2 = np.cross(direction, e1)
    q = points - top
    a, b = q @ e1, q @ e2
    near = (a * a + b * b <= radius_mm**2) & (h >= h.max() - radius_mm)
    if int(near.sum()) < 12:
        return np.asarray(top, dtype=np.float64)
    A = np.column_stack(
        [np.ones(near.sum()), a[near], b[near], a[near] ** 2, a[near] * b[near], b[near] ** 2]
    )
    coef, *_ = np.linalg.lstsq(A, h[near] - h[near].max(), rcond=None)
    H = np.array([[2 * coef[3], coef[4]], [coef[4], 2 * coef[5]]])
    if np.all(np.linalg.eigvalsh(H) < 0):  # a proper cap: take its apex
        ab = np.linalg.solve(H, -coef[1:3])
        if float(np.hypot(*ab)) <= radius_mm:
            height = coef[0] + coef[1] * ab[0] + coef[2] * ab[1] + 0.5 * ab @ H @ ab
            return np.asarray(
                top + ab[0] * e1 + ab[1] * e2 + (height + h[near].max() - h[int(np.argmax(h))]) * direction,
                dtype=np.float64,
            )
    return np.asarray(top, dtype=np.float64)


def _lateral_guess(side: str) -> F64:
    # LPS: +x is the patient's left, so a right leg's lateral side is -x.
    return np.array([-1.0, 0.0, 0.0]) if side == "R" else np.array([1.0, 0.0, 0.0])


@dataclass(frozen=True)
class _FemurMarks:
    points: dict[str, F64]
    lateral: F64


def femur_landmarks(surface: F64, distal: F64, side: str) -> _FemurMarks:
    """MDFC, LDFC, FKC, MPC, LPC, MEC, LEC on the femur surface for mechanical axis direction ``distal``."""
    lateral = _perp(_lateral_guess(side), distal)
    h = surface @ distal
    low = surface[h >= h.max() - 40.0]  # distal 40 mm: condyles and epicondyles
    centre = low.mean(axis=0)
    pts: dict[str, F64] = {}
    for _ in range(4):
        posterior = np.cross(distal, lateral) * (1.0 if side == "R" else -1.0)
        # In LPS a right leg has distal x lateral = posterior; a left leg the opposite.
        side_coord = (low - centre) @ lateral
        med, lat = low[side_coord < -5.0], low[side_coord > 5.0]
        if len(med) < 20 or len(lat) < 20:
            raise InputError("femur surface too small for condyle landmarks", reason="recon_landmarks")
        pts[MDFC] = _extreme(med, distal)
        pts[LDFC] = _extreme(lat, distal)
        pts[MPC] = _extreme(med, posterior)
        pts[LPC] = _extreme(lat, posterior)
        lateral = _perp(pts[LPC] - pts[MPC], distal)
    pts[FKC] = 0.5 * (pts[MDFC] + pts[LDFC])
    # Epicondyles: 15-45 mm above the distal points; iterate the TEA direction.
    band_h = low @ distal
    d_level = max(float(pts[MDFC] @ distal), float(pts[LDFC] @ distal))
    band = low[(band_h <= d_level - 15.0) & (band_h >= d_level - 45.0)]
    tea = lateral
    for _ in range(3):
        pts[MEC] = _extreme(band, -tea, radius_mm=4.0)
        pts[LEC] = _extreme(band, tea, radius_mm=4.0)
        tea = _perp(pts[LEC] - pts[MEC], distal)
    return _FemurMarks(pts, lateral)


def tibia_landmarks(surface: F64, normals: F64, distal: F64, lateral_ref: F64, side: str) -> dict[str, F64]:
    """MTP, LTP, TKC, MTPA, MTPP on the tibia surface for mechanical axis direction ``distal``
    (proximal = -distal) and the femoral mediolateral reference."""
    lateral = _perp(lateral_ref, distal)
    anterior = np.cross(distal, lateral) * (-1.0 if side == "R" else 1.0)
    up = -distal
    h = surface @ up
    top_mask = (h >= h.max() - 15.0) & (normals @ up > 0.7)
    top = surface[top_mask]
    if len(top) < 50:
        raise InputError("tibia surface too small for plateau landmarks", reason="recon_landmarks")
    centre = top.mean(axis=0)
    x = (top - centre) @ lateral
    y = (top - centre) @ anterior
    keep = np.abs(x - np.median(x)) > SPINE_HALF_WIDTH_MM
    z = (top - centre) @ up
    # Upper-envelope plane z = c0 + c1 x + c2 y.
    sel = keep.copy()
    coef = np.zeros(3)
    for _ in range(6):
        A = np.column_stack([np.ones(sel.sum()), x[sel], y[sel]])
        coef, *_ = np.linalg.lstsq(A, z[sel], rcond=None)
        resid = z - (coef[0] + coef[1] * x + coef[2] * y)
        new = keep & (resid > -0.3)
        if new.sum() < 30 or np.array_equal(new, sel):
            break
        sel = new

    def on_plane(xx: float, yy: float) -> F64:
        return np.asarray(
            centre + xx * lateral + yy * anterior + (coef[0] + coef[1] * xx + coef[2] * yy) * up,
            dtype=np.float64,
        )

    # Plateau extremes: the whole proximal 8 mm of the tibia, not just the upward-facing part.
    near_top = surface[(h >= h.max() - 12.0)]
    xs = (near_top - centre) @ lateral
    x_med, x_lat = float(xs.min()), float(xs.max())
    ys = (near_top - centre) @ anterior
    # AP position of MTP / LTP / TKC: the middle of the plateau's AP extent (the simulator puts its TKC
    # 2 mm anterior of that; the spines are too irregular to locate reliably on a 1 mm label volume).
    y_mid = 0.5 * (float(ys.min()) + float(ys.max()))
    x_mtp, x_ltp = x_med + PLATEAU_INSET_MM, x_lat - PLATEAU_INSET_MM
    pts = {MTP: on_plane(x_mtp, y_mid), LTP: on_plane(x_ltp, y_mid)}
    pts[TKC] = 0.5 * (pts[MTP] + pts[LTP])
    # Slope points at the middle of the medial plateau.
    x_m = 0.5 * (x_med + 0.5 * (x_med + x_lat))
    strip = np.abs(xs - x_m) <= 1.5
    if strip.sum() >= 4:
        y_ant, y_post = float(ys[strip].max()), float(ys[strip].min())
        pts[MTPA] = on_plane(x_m, y_ant - SLOPE_INSET_MM)
        pts[MTPP] = on_plane(x_m, y_post + SLOPE_INSET_MM)
    return pts


@dataclass(frozen=True)
class BoneVoxels:
    """A bone's voxel centres (LPS mm) and which of them lie on the volume's outer layer, where the bone
    is cut off by the reconstruction's extent."""

    points: F64
    on_edge: NDArray[np.bool_]

    @staticmethod
    def from_labels(labels: Volume, label: int) -> BoneVoxels:
        mask = np.asarray(labels.data) == label
        idx = np.argwhere(mask)
        shape = np.asarray(mask.shape)
        edge = np.any((idx == 0) | (idx == shape - 1), axis=1)
        return BoneVoxels(labels.index_to_mm(idx), edge)

    def moved(self, T: F64 | None) -> BoneVoxels:
        if T is None:
            return self
        return BoneVoxels(np.asarray(self.points @ T[:3, :3].T + T[:3, 3], np.float64), self.on_edge)


def shaft_axis(
    bone: BoneVoxels, distal: F64, joint_level: float, away: float, start_mm: float = SHAFT_START_MM
) -> tuple[F64, F64] | None:
    """Line (point, unit direction) through the centroids of 5 mm slabs of the bone perpendicular to
    ``distal``, from ``start_mm`` beyond the joint (``away`` = +1 proximal for the femur, -1 distal for the
    tibia) to the end of the volume.

    The centroids are of the slabs' voxels, i.e. of the filled cross-sections. Surface-vertex centroids,
    used before, follow the surface's irregularities: on reconstructed labels a few millimetres of rough
    surface on one side of the metaphysis tilted the femoral line by 10 deg (knee 530002, docs/recon.md).
    Slabs holding voxels on the volume's outer layer are cut by its extent and are left out while at
    least three whole ones remain."""
    h = (bone.points @ distal - joint_level) * -away  # distance from the joint toward the shaft
    whole: list[F64] = []
    cut: list[F64] = []
    for start in np.arange(start_mm, h.max() - 2.0, 5.0):
        sel = (h >= start) & (h < start + 5.0)
        if int(sel.sum()) < 30:
            continue
        centre = bone.points[sel].mean(axis=0)
        (cut if bool(bone.on_edge[sel].any()) else whole).append(centre)
    centres = whole if len(whole) >= 3 else whole + cut
    if len(centres) < 3:
        return None
    c = np.asarray(centres)
    mean = c.mean(axis=0)
    _, _, vt = np.linalg.svd(c - mean)
    direction = vt[0] if vt[0] @ distal > 0 else -vt[0]
    return mean, np.asarray(direction, dtype=np.float64)


def point_on_ray_near_line(
    geometry: ProjectionGeometry, col: float, row: float, line_point: F64, line_dir: F64
) -> F64:
    """The point of the ray through pixel (col, row) closest to the 3D line."""
    s = geometry.source
    d = _unit(geometry.pixel_to_mm(col, row) - s)
    w0 = s - line_point
    a, b, c = d @ d, d @ line_dir, line_dir @ line_dir
    dd, e = d @ w0, line_dir @ w0
    den = a * c - b * b
    if den < 1e-9:
        raise GeometryError("ray parallel to the shaft axis", reason="degenerate")
    t = (b * e - c * dd) / den
    return np.asarray(s + t * d, dtype=np.float64)


@dataclass(frozen=True)
class LongLegLandmarks:
    """The long-leg AP film's geometry and its 2D FHC / AC (pixel col, row)."""

    geometry: ProjectionGeometry
    fhc_px: tuple[float, float]
    ac_px: tuple[float, float]


def _transform(T: F64 | None, p: F64) -> F64:
    if T is None:
        return p
    return np.asarray(T[:3, :3] @ p + T[:3, 3], dtype=np.float64)


def landmarks_from_labels(
    labels: Volume,
    side: str,
    longleg: LongLegLandmarks | None,
    poses: Mapping[str, F64] | None = None,
    depth_model: str = DEFAULT_DEPTH_MODEL,
) -> Landmarks3D:
    """All 3D landmarks and the 3D angles from a reconstructed label volume and the long-leg landmarks.

    ``side`` is "L" or "R"; ``poses`` optional 4x4 corrections per bone ("femur", "tibia") from
    :func:`appliance.recon.register.register_bones`, applied to that bone's landmarks. Without
    ``longleg`` only the knee landmarks are placed (bone axes taken along the grid's S-I direction) and
    the angles that need the hip or ankle centre are None."""
    if depth_model not in DEPTH_MODELS:
        raise InputError(f"unknown depth model {depth_model!r}")
    if side not in ("L", "R"):
        raise InputError(f"side must be 'L' or 'R' for 3D landmarks, got {side!r}", reason="unknown_side")
    fem_mesh = label_surface(labels, FEMUR, smooth_sigma_vox=1.0)
    tib_mesh = label_surface(labels, TIBIA, smooth_sigma_vox=1.0)
    if fem_mesh is None or tib_mesh is None:
        raise InputError("reconstruction has no femur or no tibia", reason="recon_landmarks")
    poses = poses or {}
    T_f, T_t = poses.get("femur"), poses.get("tibia")
    fem = np.asarray(fem_mesh.vertices @ (T_f[:3, :3].T if T_f is not None else np.eye(3)))
    if T_f is not None:
        fem = fem + T_f[:3, 3]
    fem_vox = BoneVoxels.from_labels(labels, FEMUR).moved(T_f)
    tib_vox = BoneVoxels.from_labels(labels, TIBIA).moved(T_t)
    tib_v = tib_mesh.vertices
    tib_n = _vertex_normals(tib_mesh)
    if T_t is not None:
        tib_v = tib_v @ T_t[:3, :3].T + T_t[:3, 3]
        tib_n = tib_n @ T_t[:3, :3].T
    notes: list[str] = []
    if longleg is None:
        down = np.array([0.0, 0.0, -1.0])  # LPS: distal is -z
        fm = femur_landmarks(fem, down, side)
        pts: dict[str, F64] = {**fm.points, **tibia_landmarks(tib_v, tib_n, down, fm.lateral, side)}
        notes.append("no long-leg hip/ankle centres: knee landmarks only, bone axes along S-I")
        angles = measure_3d({k: v.tolist() for k, v in pts.items()}, side=side)
        return Landmarks3D(
            {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in pts.items()}, angles, tuple(notes)
        )
    g = longleg.geometry

    # Initial axes: knee centre, hip and ankle at the knee's depth.
    knee = 0.5 * (fem[np.argmin(fem[:, 2])] + tib_v[np.argmax(tib_v[:, 2])])
    fhc = g.back_project(*longleg.fhc_px, knee)
    ac = g.back_project(*longleg.ac_px, knee)
    pts = {}
    for _ in range(3):
        fm = femur_landmarks(fem, _unit(knee - fhc), side)
        pts.update(fm.points)
        tm = tibia_landmarks(tib_v, tib_n, _unit(ac - knee), fm.lateral, side)
        pts.update(tm)
        knee = 0.5 * (pts[FKC] + pts[TKC])
        f_axis = t_axis = None
        d_f, d_t = _unit(pts[FKC] - fhc), _unit(ac - pts[TKC])
        if depth_model in ("shaft", "axes"):
            f_axis = shaft_axis(fem_vox, d_f, float(pts[FKC] @ d_f), 1.0, DEPTH_AXIS_START_MM[depth_model])
        if depth_model in ("shaft", "axes", "tibial_axis"):
            t_axis = shaft_axis(tib_vox, d_t, float(pts[TKC] @ d_t), -1.0, DEPTH_AXIS_START_MM[depth_model])
        notes = []
        if f_axis is not None:
            fhc = point_on_ray_near_line(g, *longleg.fhc_px, *f_axis)
            notes.append("FHC: long-leg ray at the femoral shaft axis depth")
        else:
            fhc = g.back_project(*longleg.fhc_px, knee)
            notes.append("FHC: long-leg ray at the knee depth")
        if t_axis is not None:
            ac = point_on_ray_near_line(g, *longleg.ac_px, *t_axis)
            notes.append("AC: long-leg ray at the tibial shaft axis depth")
        else:
            ac = g.back_project(*longleg.ac_px, knee)
            notes.append("AC: long-leg ray at the knee depth")
    pts[FHC], pts[AC] = fhc, ac
    angles = measure_3d({k: v.tolist() for k, v in pts.items()}, side=side)
    return Landmarks3D(
        {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in pts.items()}, angles, tuple(notes)
    )
