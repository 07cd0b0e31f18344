"""Rigid 2D/3D registration of the reconstructed femur and tibia to the films.

Each bone is cut out of the reconstruction as its own small attenuation volume (bone minus soft tissue,
in the bone's bounding box); the rest of the reconstruction, with that bone replaced by soft tissue, is
rendered once per view. A pose (rotation vector about the bone's centroid, translation; 6 DoF) only
changes the bone volume's affine, so each evaluation is one small DRR per view on the ~1 mm working
detector of :mod:`appliance.recon.consistency`. Powell's method maximises the mean gradient correlation
over the views inside the bone's projected region, after a first coarse look (each parameter +-2 units)
that ends the search at once when the bone already fits. Seconds per bone, not minutes.

The residual of a bone is the RMS displacement of its voxels under the correcting pose (mm); the
study's residual is the largest over the registered bones and joins the consistency verdict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from appliance.errors import InputError
from appliance.geometry.drr import line_integrals, line_integrals_multi
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import Volume
from appliance.recon.consistency import (
    FACE_MARGIN_MM,
    MU_WATER_PER_MM,
    away_from_faces,
    bin_image,
    binning_factor,
    gradients,
    hu_to_mu,
)
from appliance.recon.types import BONE_NAMES, FEMUR, TIBIA, FilmView, Reconstruction

log = logging.getLogger(__name__)

MU_SOFT_PER_MM = MU_WATER_PER_MM * (1.0 + 40.0 / 1000.0)  # muscle-like 40 HU fill for the cut-out bone


@dataclass(frozen=True)
class RegistrationSettings:
    """``bones``: labels to register; ``max_rotation_deg`` / ``max_translation_mm``: search bounds;
    ``margin_mm``: growth of each bone's projected region (covers the poses searched);
    ``xtol``: Powell's parameter tolerance of the fine stage in the scaled units (1 = 1 deg or 1 mm; the
    coarse stage at twice the pitch uses twice that); the evaluation caps bound the run time.

    ``probe_step``: the first, coarse look moves each of the 6 parameters by +-this (deg or mm); when no
    probe raises the similarity by more than ``fits_gain``, the bone already fits at that scale and
    only a per-axis parabolic refinement from those probes is made (no Powell search).
    ``threads``: numba threads per DRR; the crops are small, and on a shared 2-core box a second thread
    costs more in waiting than it gains (docs/recon-checks.md)."""

    bones: tuple[int, ...] = (FEMUR, TIBIA)
    max_rotation_deg: float = 15.0
    max_translation_mm: float = 20.0
    margin_mm: float = 8.0
    pitch_mm: float = 1.0
    sigma_px: float = 1.0
    xtol: float = 0.1
    initial_step: float = 2.0  # first Powell step per parameter (deg or mm), halved for the fine stage
    coarse_max_evaluations: int = 100
    fine_max_evaluations: int = 30
    probe_step: float = 2.0
    fits_gain: float = 0.002
    threads: int = 1


@dataclass(frozen=True)
class BonePose:
    """Correction of one bone: ``matrix`` (4x4, LPS mm) maps the reconstructed bone onto the films.
    ``rotation_deg`` is the rotation vector in degrees (about ``centre_mm``), ``translation_mm`` the shift."""

    bone: str
    matrix: NDArray[np.float64]
    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float]
    residual_mm: float
    similarity_before: float
    similarity_after: float
    evaluations: int


@dataclass(frozen=True)
class RegistrationResult:
    poses: dict[str, BonePose]
    residual_mm: float | None


def rigid_matrix(
    rotvec_rad: NDArray[np.float64], translation_mm: NDArray[np.float64], centre_mm: NDArray[np.float64]
) -> NDArray[np.float64]:
    """4x4 for x -> R (x - c) + c + t."""
    R = Rotation.from_rotvec(np.asarray(rotvec_rad, dtype=np.float64)).as_matrix()
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(centre_mm) - R @ np.asarray(centre_mm) + np.asarray(translation_mm)
    return T


def rms_displacement_mm(T: NDArray[np.float64], points_mm: NDArray[np.float64]) -> float:
    moved = points_mm @ T[:3, :3].T + T[:3, 3]
    return float(np.sqrt(np.mean(np.sum((moved - points_mm) ** 2, axis=1))))


@dataclass(frozen=True)
class _BoneModel:
    data: NDArray[np.float32]  # attenuation above soft tissue, cropped
    affine: NDArray[np.float64]
    centre: NDArray[np.float64]
    points: NDArray[np.float64]  # a subsample of the bone's voxel centres (residual)


def _cut_bone(
    mu: NDArray[np.float32], labels: NDArray[np.generic], affine: NDArray[np.float64], label: int
) -> tuple[_BoneModel, NDArray[np.float32]] | None:
    mask = labels == label
    if int(mask.sum()) < 50:
        return None
    # Work in the label's bounding box (+3 voxels for the dilation and the 2-voxel zero rim); the
    # full-grid morphology and copies cost more than the rest of a fitting bone's registration.
    lo = np.zeros(3, dtype=int)
    hi = np.array(labels.shape)
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        lo[axis] = max(int(present[0]) - 3, 0)
        hi[axis] = min(int(present[-1]) + 4, labels.shape[axis])
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    box_lo = lo.copy()
    grown_box = ndimage.binary_dilation(mask[box], iterations=1)
    idx = np.argwhere(grown_box) + box_lo
    lo = np.maximum(idx.min(axis=0) - 2, 0)
    hi = np.minimum(idx.max(axis=0) + 3, labels.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grown = np.zeros(labels.shape, dtype=bool)
    grown[box] = grown_box
    excess = np.where(grown[sl], mu[sl] - MU_SOFT_PER_MM, 0.0).astype(np.float32)
    rest = np.array(mu, dtype=np.float32, copy=True)
    rest[grown] = MU_SOFT_PER_MM
    crop_aff = affine.copy()
    crop_aff[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    vox = np.argwhere(mask[box]) + box_lo
    pts = vox @ affine[:3, :3].T + affine[:3, 3]
    step = max(1, len(pts) // 5000)
    return _BoneModel(excess, crop_aff, pts.mean(axis=0), pts[::step]), rest


# Optimiser units: degrees for the rotation vector, mm for the translation.
_SCALE = np.array([np.radians(1.0)] * 3 + [1.0] * 3)


def _downsampled(model: _BoneModel) -> _BoneModel:
    """The bone volume at twice the voxel size (2x2x2 means), for the coarse stage."""
    d = model.data
    s = [(n // 2) * 2 for n in d.shape]
    if min(s) < 2:
        return model
    x = d[: s[0], : s[1], : s[2]].reshape(s[0] // 2, 2, s[1] // 2, 2, s[2] // 2, 2).mean(axis=(1, 3, 5))
    aff = model.affine.copy()
    aff[:3, :3] = model.affine[:3, :3] * 2.0
    aff[:3, 3] = model.affine[:3, :3] @ np.full(3, 0.5) + model.affine[:3, 3]
    return _BoneModel(np.ascontiguousarray(x, dtype=np.float32), aff, model.centre, model.points)


@dataclass(frozen=True)
class _View:
    geometry: ProjectionGeometry
    rest_drr: NDArray[np.float32]
    region: NDArray[np.bool_]
    # The film's x / y gradients inside the region, centred and scaled to unit norm once, so that an
    # evaluation only differentiates its DRR (same numbers as consistency.gradient_correlation).
    film_gx: NDArray[np.float64]
    film_gy: NDArray[np.float64]


def _unit_centred(x: NDArray[np.float64]) -> NDArray[np.float64]:
    x = x - x.mean()
    n = float(np.sqrt((x * x).sum()))
    return x / n if n > 0 else np.zeros_like(x)


def _prepared_view(
    geom: ProjectionGeometry,
    film: NDArray[np.float32],
    rest_drr: NDArray[np.float32],
    region: NDArray[np.bool_],
    sigma_px: float,
) -> _View:
    fx, fy = gradients(film, sigma_px)
    return _View(geom, rest_drr, region, _unit_centred(fx[region]), _unit_centred(fy[region]))


def _view_similarity(v: _View, drr: NDArray[np.float32], sigma_px: float) -> float:
    if v.film_gx.size < 16:
        return 0.0
    dx, dy = gradients(drr, sigma_px)
    return 0.5 * (
        float(_unit_centred(dx[v.region]) @ v.film_gx) + float(_unit_centred(dy[v.region]) @ v.film_gy)
    )


def _crop_geometry(geom: ProjectionGeometry, r0: int, r1: int, c0: int, c1: int) -> ProjectionGeometry:
    origin = geom.pixel_to_mm(c0, r0)
    return replace(
        geom,
        detector_origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        columns=c1 - c0,
        rows=r1 - r0,
    )


def _cropped_view(
    geom: ProjectionGeometry,
    box: tuple[int, int],
    film: NDArray[np.float32],
    bone_path: NDArray[np.float32],
    rest_drr: NDArray[np.float32],
    margin_mm: float,
    sigma_px: float,
) -> _View | None:
    """The view cut to the bone's grown projected region; ``box`` = (row, column) of the arrays' first
    pixel on ``geom``'s detector."""
    pad = 4
    region = ndimage.binary_dilation(bone_path > 1.0, iterations=max(1, round(margin_mm / geom.pitch_u_mm)))
    if not region.any():
        return None
    rows, cols = np.nonzero(region)
    r0, r1 = max(0, rows.min() - pad), min(region.shape[0], rows.max() + pad + 1)
    c0, c1 = max(0, cols.min() - pad), min(region.shape[1], cols.max() + pad + 1)
    sub = _crop_geometry(geom, box[0] + int(r0), box[0] + int(r1), box[1] + int(c0), box[1] + int(c1))
    return _prepared_view(sub, film[r0:r1, c0:c1], rest_drr[r0:r1, c0:c1], region[r0:r1, c0:c1], sigma_px)


def _stage_views(
    rest: NDArray[np.float32],
    mask: NDArray[np.bool_],
    affine: NDArray[np.float64],
    films: Sequence[FilmView],
    pitch_mm: float,
    margin_mm: float,
    sigma_px: float = 1.0,
    threads: int | None = None,
) -> tuple[list[_View], list[_View]]:
    """Per view, at ``2 * pitch_mm`` (coarse) and at ``pitch_mm`` (fine): the film, the DRR of everything
    but the bone and the bone's grown projected region, cut to that region's bounding box (only those
    rays are traced later).

    One render per view, on the detector rectangle under the bone's voxel bounding box (grown by the
    margin): the full detector at 1 mm costs about half a second per view. The coarse stage is the fine
    one averaged over 2 x 2 pixels (film and rest DRR alike; the rectangle starts on an even pixel)."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        return [], []
    lo, hi = idx.min(axis=0) - 0.5, idx.max(axis=0) + 0.5
    corners = np.array([[(lo, hi)[k >> j & 1][j] for j in range(3)] for k in range(8)], dtype=np.float64)
    corners_mm = corners @ affine[:3, :3].T + affine[:3, 3]
    mask_f = mask.astype(np.float32)
    coarse: list[_View] = []
    fine: list[_View] = []
    for film in films:
        factor = binning_factor(film.geometry, pitch_mm)
        geom = film.geometry.binned(factor)
        img = bin_image(film.image, factor)
        uv = geom.project(corners_mm)
        extra = round(margin_mm / geom.pitch_u_mm) + 6
        b_r0 = max(0, int(np.floor(uv[:, 1].min())) - extra) // 2 * 2
        b_c0 = max(0, int(np.floor(uv[:, 0].min())) - extra) // 2 * 2
        b_r1 = b_r0 + (min(geom.rows, int(np.ceil(uv[:, 1].max())) + extra + 1) - b_r0) // 2 * 2
        b_c1 = b_c0 + (min(geom.columns, int(np.ceil(uv[:, 0].max())) + extra + 1) - b_c0) // 2 * 2
        if b_r1 <= b_r0 or b_c1 <= b_c0:
            continue
        box = _crop_geometry(geom, b_r0, b_r1, b_c0, b_c1)
        bone_path, rest_box = line_integrals_multi([mask_f, rest], affine, box, threads=threads)
        film_box = img[b_r0:b_r1, b_c0:b_c1]
        v_fine = _cropped_view(geom, (b_r0, b_c0), film_box, bone_path, rest_box, margin_mm, sigma_px)
        v_coarse = _cropped_view(
            geom.binned(2),
            (b_r0 // 2, b_c0 // 2),
            bin_image(film_box, 2),
            bin_image(bone_path, 2),
            bin_image(rest_box, 2),
            margin_mm,
            sigma_px,
        )
        if v_fine is not None and v_coarse is not None:
            fine.append(v_fine)
            coarse.append(v_coarse)
    return coarse, fine


def _probe(
    f: Callable[[NDArray[np.float64]], float], step: float, fits_gain: float
) -> tuple[NDArray[np.float64], bool]:
    """Similarity at the identity and at +-``step`` on each parameter (13 evaluations).

    Returns the start for the search and whether the bone already fits: no probe gains more than
    ``fits_gain``. A fitting bone gets the per-axis parabola vertex through its three values (clipped to
    +-``step``) as its pose instead of a search: a sub-step correction for the residual, at no cost."""
    f0 = f(np.zeros(6))
    plus = np.empty(6)
    minus = np.empty(6)
    for i in range(6):
        e = np.zeros(6)
        e[i] = step
        plus[i], minus[i] = f(e), f(-e)
    best = float(max(plus.max(), minus.max()))
    if best - f0 > fits_gain:
        i = int(np.argmax(np.maximum(plus, minus)))
        x = np.zeros(6)
        x[i] = step if plus[i] >= minus[i] else -step
        return x, False
    curvature = plus + minus - 2.0 * f0  # < 0 around a maximum
    with np.errstate(divide="ignore", invalid="ignore"):
        vertex = np.where(curvature < 0, 0.5 * step * (minus - plus) / curvature, 0.0)
    return np.clip(vertex, -step, step), True


def register_bones(
    recon: Reconstruction,
    films: Sequence[FilmView],
    settings: RegistrationSettings | None = None,
) -> RegistrationResult:
    """Register each bone of ``settings.bones`` to ``films``; returns the poses and the residual."""
    s = settings or RegistrationSettings()
    if not films:
        raise InputError("registration needs at least one film")
    hu = np.asarray(recon.volume.data, dtype=np.float32)
    labels = np.asarray(recon.labels.data)
    mu = hu_to_mu(hu)
    affine = np.asarray(recon.volume.affine, dtype=np.float64)
    poses: dict[str, BonePose] = {}
    limits = np.array([s.max_rotation_deg] * 3 + [s.max_translation_mm] * 3)
    for label in s.bones:
        cut = _cut_bone(mu, labels, affine, label)
        if cut is None:
            log.info("registration: no %s in the reconstruction", BONE_NAMES[label])
            continue
        model, rest = cut
        # Only the bone away from the grid's faces is compared (consistency.mu_volumes).
        compared = (labels == label) & away_from_faces(labels.shape, recon.volume.spacing_mm, FACE_MARGIN_MM)
        coarse_views, fine_views = _stage_views(
            rest, compared, affine, films, s.pitch_mm, s.margin_mm, s.sigma_px, s.threads
        )
        if not fine_views:
            log.info("registration: %s projects onto no film", BONE_NAMES[label])
            continue
        coarse = _downsampled(model)
        n_eval = 0

        def similarity(x: NDArray[np.float64], views: list[_View], bone: _BoneModel = model) -> float:
            nonlocal n_eval
            n_eval += 1
            p = x * _SCALE
            T = rigid_matrix(p[:3], p[3:], bone.centre)
            vol = Volume(bone.data, T @ bone.affine)
            total = 0.0
            for v in views:
                drr = v.rest_drr + line_integrals(vol, v.geometry, threads=s.threads)
                total += _view_similarity(v, drr, s.sigma_px)
            return total / len(views)

        before = similarity(np.zeros(6), fine_views)

        def objective(
            x: NDArray[np.float64], views: list[_View], bone: _BoneModel, limits: NDArray[np.float64] = limits
        ) -> float:
            # Unbounded Powell searches locally around the current pose (a bounded line search spans
            # the whole +-limit interval and can land on a far, false optimum); outside the limits the
            # pose is simply worse than any similarity.
            if np.any(np.abs(x) > limits):
                return 2.0
            return -similarity(x, views, bone)

        def coarse_similarity(
            y: NDArray[np.float64], views: list[_View] = coarse_views, bone: _BoneModel = coarse
        ) -> float:
            return similarity(y, views, bone)

        x, fits = _probe(coarse_similarity, s.probe_step, s.fits_gain)
        if fits:
            log.debug("%s already fits (no probe gains > %.4f)", BONE_NAMES[label], s.fits_gain)
        else:
            for views, bone, xtol, step, maxfev in (
                (coarse_views, coarse, 2.0 * s.xtol, s.initial_step, s.coarse_max_evaluations),
                (fine_views, model, s.xtol, 0.5 * s.initial_step, s.fine_max_evaluations),
            ):
                t_stage, n_stage = time.perf_counter(), n_eval
                res = optimize.minimize(
                    objective,
                    x,
                    args=(views, bone),
                    method="Powell",
                    options={"xtol": xtol, "ftol": 1e-5, "maxfev": maxfev, "direc": np.eye(6) * step},
                )
                x = np.asarray(res.x, dtype=np.float64)
                log.debug("stage: %d evaluations, %.1f s", n_eval - n_stage, time.perf_counter() - t_stage)
        after = similarity(x, fine_views)
        p = x * _SCALE
        T = rigid_matrix(p[:3], p[3:], model.centre)
        if after < before:  # never return a pose worse than the start
            T, p, after = np.eye(4), np.zeros(6), before
        name = BONE_NAMES[label]
        poses[name] = BonePose(
            bone=name,
            matrix=T,
            rotation_deg=tuple(float(v) for v in np.degrees(p[:3])),  # type: ignore[arg-type]
            translation_mm=tuple(float(v) for v in p[3:]),  # type: ignore[arg-type]
            centre_mm=tuple(float(v) for v in model.centre),  # type: ignore[arg-type]
            residual_mm=rms_displacement_mm(T, model.points),
            similarity_before=before,
            similarity_after=after,
            evaluations=n_eval,
        )
        log.info(
            "registered %s: GC %.3f -> %.3f, residual %.2f mm (%d evaluations)",
            name,
            before,
            after,
            poses[name].residual_mm,
            n_eval,
        )
    residual = max((q.residual_mm for q in poses.values()), default=None)
    return RegistrationResult(poses=poses, residual_mm=residual)
