"""Compact reconstruction samples from the simulator's Python API (no DICOM, no whole leg).

One anatomy (seed) is voxelised once at 1 mm in a box around the knee; each *pose* re-renders the knee AP
and lateral films from it with a new acquisition (SID, detector gap, centring, exposure, artefacts, noise)
and, for poses > 0, a small rigid rotation of the whole set-up about the knee. Rendering uses the
simulator's own physics at 0.5 mm detector pitch (the recorded 0.25 mm binned 2x2: the films then go
through the same :func:`appliance.recon.infer.film_frame` resampling as at runtime).

A sample (``.npz``) holds, for the 144 mm cube centred where the runtime would centre it
(:func:`appliance.recon.infer.estimate_centre`, rounded to the voxel grid):
``hu`` int16 (144^3), ``labels`` uint8 (0 background, 1 femur, 2 tibia, 3 fibula, 4 patella),
``films`` float16 (2, 256, 256) (AP, lateral) and ``mats`` float32 (2, 3, 4) (normalised cube ->
normalised frame, :func:`appliance.recon.infer.cube_to_film_matrix`), ``affine`` (4x4) and ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.analytics.angles3d import measure_3d
from appliance.geometry.projection import ProjectionGeometry
from appliance.recon.infer import (
    CUBE_VOXELS,
    VIEWS,
    cube_affine,
    cube_to_film_matrix,
    estimate_centre,
    film_frame,
)
from export.simulator import labels as simlab
from export.simulator import truth
from export.simulator.assembly import build_limb
from export.simulator.case import CaseOptions, sample_case
from export.simulator.film_artifacts import padded_geometry, render_with_artifacts, sample_artifacts
from export.simulator.film_output import PHYS_KIND
from export.simulator.physics import sample_exposure
from export.simulator.views import sample_view, view_geometry
from export.simulator.volumes import RenderPiece, _basis, _skin_box, knee_box
from export.simulator.voxelize import Grid, voxelize

log = logging.getLogger(__name__)

TRAIN_SEEDS = (0, 499_999)
EVAL_SEEDS = (500_000, 899_999)
_BOX_HALF = np.array([92.0, 92.0, 118.0])  # voxelised box: cube half (72) + centring error + ray spread
_LABEL_MAP = np.zeros(256, np.uint8)
for _src, _dst in ((simlab.FEMUR, 1), (simlab.TIBIA, 2), (simlab.FIBULA, 3), (simlab.PATELLA, 4)):
    _LABEL_MAP[_src] = _dst


def _rotation(rng: np.random.Generator, yaw_deg: float, tilt_deg: float) -> NDArray[np.float64]:
    """Rotation about z (limb rotation) by up to ``yaw_deg`` and about x, y by up to ``tilt_deg``."""
    az, ax, ay = np.radians([rng.uniform(-yaw_deg, yaw_deg), *rng.uniform(-tilt_deg, tilt_deg, 2)])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return np.asarray(rz @ rx @ ry, dtype=np.float64)


def rotate_geometry(
    g: ProjectionGeometry, r: NDArray[np.float64], about: NDArray[np.float64]
) -> ProjectionGeometry:
    """The same acquisition turned rigidly by ``r`` about ``about`` (= the patient turned by r^-1)."""

    def t(p: tuple[float, float, float], point: bool) -> tuple[float, float, float]:
        v = np.asarray(p, dtype=np.float64)
        w = r @ (v - about) + about if point else r @ v
        return (float(w[0]), float(w[1]), float(w[2]))

    return dataclasses.replace(
        g,
        source_mm=t(g.source_mm, True),
        detector_origin_mm=t(g.detector_origin_mm, True),
        u_dir=t(g.u_dir, False),
        v_dir=t(g.v_dir, False),
    )


def make_samples(seed: int, out_dir: Path, poses: int = 2) -> list[Path]:
    """Write ``poses`` samples of anatomy ``seed`` to ``out_dir/recon_<seed>_<pose>.npz``."""
    t0 = time.perf_counter()
    rec = sample_case(seed, CaseOptions(views=("knee-ap", "knee-lat"), contralateral=False))
    limb = build_limb(rec.params)
    kb_lo, kb_hi = knee_box(limb)
    knee = 0.5 * (kb_lo + kb_hi)
    grid = Grid.covering(knee - _BOX_HALF, knee + _BOX_HALF, 1.0)
    vox = voxelize(limb, grid, rec.materials)
    piece = RenderPiece(_basis(vox), grid.affine())
    skin = _skin_box(vox, grid)
    lab_all = _LABEL_MAP[np.asarray(vox.labels.data, dtype=np.uint8)]
    hu_all = np.asarray(vox.hu.data, dtype=np.int16)
    marks = truth.landmarks_3d(limb)
    angles = measure_3d(
        {k: [float(x) for x in v] for k, v in marks.items()},
        side=rec.params.side,
        posterior_condyle_points=truth.posterior_condyle_points(limb),
    )
    truth_json = json.dumps(
        {"side": rec.params.side, "landmarks_3d": truth.as_lists(marks), "angles_3d": angles.to_dict()}
    )
    written: list[Path] = []
    for pose in range(poses):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 4242, pose]))
        geoms: dict[str, ProjectionGeometry] = {}
        images: dict[str, NDArray[np.float32]] = {}
        rot = np.eye(3) if pose == 0 else _rotation(rng, 8.0, 4.0)
        for view in ("knee-ap", "knee-lat"):
            name = "knee_ap" if view == "knee-ap" else "knee_lat"
            vr = rec.views[view] if pose == 0 else sample_view(rng, view)
            exposure = rec.exposures[view] if pose == 0 else sample_exposure(rng, PHYS_KIND[view])
            g = rotate_geometry(view_geometry(limb, vr, skin), rot, knee).binned(2)
            paths = piece.project(g)
            art = sample_artifacts(
                rng, PHYS_KIND[view], g.rows, g.columns, g.pitch_u_mm, exposure, leg_side=rec.params.side
            )
            film = render_with_artifacts(paths, g.pitch_u_mm, exposure, art, int(rng.integers(0, 2**31 - 1)))
            geoms[name] = padded_geometry(g, art.padding)
            images[name] = film.presentation
        centre = estimate_centre(geoms)
        # Round the cube onto the voxelised grid so the truth is copied, not interpolated.
        idx0 = np.rint((centre - np.asarray(grid.origin)) / grid.spacing).astype(int) - (CUBE_VOXELS - 1) // 2
        idx0 = np.clip(idx0, 0, np.asarray(grid.shape) - CUBE_VOXELS)
        c_mm = np.asarray(grid.origin) + grid.spacing * (idx0 + (CUBE_VOXELS - 1) / 2.0)
        aff = cube_affine(c_mm)
        sl = tuple(slice(int(i), int(i) + CUBE_VOXELS) for i in idx0)
        frames = [film_frame(images[v], geoms[v], c_mm) for v in VIEWS]
        path = out_dir / f"recon_{seed}_{pose}.npz"
        tmp = out_dir / f".recon_{seed}_{pose}.tmp-{os.getpid()}.npz"
        np.savez_compressed(
            tmp,
            hu=hu_all[sl],
            labels=lab_all[sl],
            films=np.stack([f.image for f in frames]).astype(np.float16),
            mats=np.stack([cube_to_film_matrix(f.matrix, aff) for f in frames]),
            affine=aff,
            seed=np.int64(seed),
            side=np.str_(rec.params.side),
            geometry_json=np.str_(_geoms_json(geoms)),
            truth_json=np.str_(truth_json),
        )
        os.replace(tmp, path)
        written.append(path)
    log.info("anatomy %d: %d samples in %.1f s", seed, poses, time.perf_counter() - t0)
    return written


def _geoms_json(geoms: dict[str, ProjectionGeometry]) -> str:
    return json.dumps({k: g.to_dict() for k, g in geoms.items()})


def generate(seeds: range, out_dir: Path, poses: int) -> list[Path]:
    """Samples for every seed in ``seeds`` not yet present (resumable)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    for s in seeds:
        have = [out_dir / f"recon_{s}_{p}.npz" for p in range(poses)]
        if all(p.exists() for p in have):
            done.extend(have)
            continue
        done.extend(make_samples(s, out_dir, poses))
    return done
