"""Training films from a clinic's own CT: the simulator's projector, physics, artefacts and DICOM writer
applied to a real CT volume instead of a phantom.

A real CT carries no simulated anatomy, so the truth written next to the films holds geometry,
exposure and artefact records, and the exact projections of any landmarks the clinic supplies (LPS mm,
keyed like ``landmarks_3d`` in a simulated ``truth.json``). There are no angles: nothing in a CT says
what the alignment "really" is without someone placing landmarks.

How the CT becomes attenuation:

* values below -1024 HU are clipped (padding values such as -2000 or -3024 outside the scan circle);
* outside the CT's voxel box there is air (the projector's field is zero there);
* HU become (water, bone, metal) with :func:`~export.simulator.spectra.hu_to_basis`, slab by slab along
  the third index so memory stays bounded for whole-leg CTs;
* the CT table (couch) is part of a real CT and would appear on every film; ``remove_table=True`` keeps
  only the largest connected component above -500 HU (the body) and sets the rest to air. That also
  drops anything else not touching the body, e.g. the other leg of a knee-only bilateral CT;
* on the lateral knee film everything more than ``LATERAL_MEDIAL_LIMIT_MM`` medial of the knee centre
  (the other leg of a bilateral CT) is faded out, as a technologist moves the other leg out of the beam.

Input errors raise :class:`~appliance.errors.InputError` with these reasons (plus those of
:func:`~export.simulator.ct_io.load_ct`): ``bad_side``, ``bad_view``, ``bad_argument``,
``landmarks_not_found``, ``landmarks_unreadable``, ``bad_landmarks``, ``missing_landmarks``,
``knee_centre_outside_ct``, ``ct_too_short_for_longleg``, ``ct_no_body``, ``ct_body_too_deep``,
``bad_output``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from appliance.dicomio.uids import uid_from
from appliance.errors import InputError
from appliance.geometry.drr import line_integrals_multi
from appliance.geometry.projection import ProjectionGeometry, centred_geometry
from appliance.geometry.volume import Volume
from export.simulator.film_artifacts import padded_geometry, render_with_artifacts, sample_artifacts
from export.simulator.film_output import (
    FILM_NAMES,
    PHYS_KIND,
    VIEW_INDEX,
    FilmIdentity,
    write_film,
    write_json,
)
from export.simulator.from_ct_scene import (  # re-exported: this module is the public API
    HU_FLOOR,
    CTScene,
    body_box,
    check_longleg_coverage,
    load_landmarks,
    prepare_ct,
    remove_table_voxels,
)
from export.simulator.physics import ExposureParams, sample_exposure
from export.simulator.spectra import hu_to_basis
from export.simulator.views import VIEWS, ViewRecord, sample_view

__all__ = [
    "HU_FLOOR",
    "CTScene",
    "body_box",
    "check_longleg_coverage",
    "ct_path_images",
    "film_geometry",
    "load_landmarks",
    "plan_films",
    "prepare_ct",
    "remove_table_voxels",
    "render_from_ct",
]

log = logging.getLogger(__name__)

F64 = NDArray[np.float64]
F32 = NDArray[np.float32]


TRUTH_SCHEMA = "xr3d.sim.ct_truth/1"
DEFAULT_PITCH_MM = {"longleg": 0.35, "knee-ap": 0.25, "knee-lat": 0.25}
LATERAL_MEDIAL_LIMIT_MM = 100.0  # lateral film: tissue further medial than this from the knee is cut
CUT_RAMP_MM = 6.0  # width of that fade
SLAB_SLICES = 48  # third-index slices per projected piece (bounds the basis memory)
PREVIEW_MAX_PX = 1400


@dataclass(frozen=True)
class FilmPlan:
    """One film's sampled acquisition: view record, exposure, artefact-noise seed and geometry
    (before padding)."""

    view: str
    record: ViewRecord
    exposure: ExposureParams
    noise_seed: int
    geometry: ProjectionGeometry


# --- planning ------------------------------------------------------------------------------------------
def film_geometry(
    scene: CTScene,
    rec: ViewRecord,
    side: str,
    box: tuple[F64, F64],
    longleg_z: tuple[float, float] | None = None,
) -> ProjectionGeometry:
    """The film's geometry around the CT's knee, as :func:`export.simulator.views.view_geometry` places
    it around a phantom: AP films beam anterior -> posterior with the detector ``detector_gap_mm``
    behind the body; the lateral film beams medial -> lateral with the detector against the lateral
    side of the knee. ``box`` is the body's LPS box; ``longleg_z`` the long-leg film's z range."""
    knee = scene.knee_centre_mm
    lo, hi = box
    dh, dv = rec.centre_offset_mm
    if rec.view in ("longleg", "knee-ap"):
        if rec.view == "longleg":
            if longleg_z is None:
                raise InputError("long-leg geometry needs the hip-ankle range", reason="bad_argument")
            iso = np.array([knee[0] + dh, knee[1], 0.5 * (longleg_z[0] + longleg_z[1]) + dv])
        else:
            iso = knee + np.array([dh, 0.0, dv])
        beam = np.array([0.0, 1.0, 0.0])
        u = np.array([1.0, 0.0, 0.0])
        det = hi[1] + rec.detector_gap_mm
        sod = rec.sid_mm - (det - iso[1])
    elif rec.view == "knee-lat":
        lateral_sign = 1.0 if side == "left" else -1.0
        beam = np.array([lateral_sign, 0.0, 0.0])
        iso = knee + np.array([0.0, dh, dv])
        u = np.array([0.0, -lateral_sign, 0.0])  # rows run toward the feet: v = beam x u = -z
        det = (hi[0] if lateral_sign > 0 else -lo[0]) + rec.detector_gap_mm
        sod = rec.sid_mm - (det - lateral_sign * iso[0])
    else:
        raise InputError(f"unknown view {rec.view!r}", reason="bad_view")
    if not 0.0 < sod < rec.sid_mm:
        # Only reachable with a body (or table) about a metre deep: a wrong CT, not a real patient.
        raise InputError("the body is too deep for this source-image distance", reason="ct_body_too_deep")
    return centred_geometry(
        name=FILM_NAMES[rec.view],
        isocenter_mm=iso,
        beam_dir=beam,
        u_dir=u,
        sid_mm=rec.sid_mm,
        sod_mm=float(sod),
        width_mm=rec.width_mm,
        height_mm=rec.height_mm,
        pitch_mm=rec.pitch_mm,
    )


def plan_films(
    scene: CTScene,
    *,
    seed: int,
    views: tuple[str, ...],
    side: str,
    pitch_mm: Mapping[str, float] | None = None,
) -> dict[str, FilmPlan]:
    """Sample each view's acquisition (deterministic in ``seed``; a view's draws never depend on which
    other views are asked for) and place its geometry around the CT's knee."""
    _check_views(views)
    _check_side(side)
    pitches = dict(DEFAULT_PITCH_MM)
    for k, v in (pitch_mm or {}).items():
        if k not in VIEWS:
            raise InputError(f"pitch given for unknown view {k!r}", reason="bad_view")
        if not (math.isfinite(v) and 0.05 <= v <= 2.0):
            raise InputError("pixel pitch must be within 0.05..2 mm", reason="bad_argument")
        pitches[k] = float(v)
    longleg_z = check_longleg_coverage(scene) if "longleg" in views else None
    whole = body_box(scene, near_knee=False) if "longleg" in views else None
    knee_box = body_box(scene, near_knee=True)
    plans: dict[str, FilmPlan] = {}
    for view in views:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 17, VIEW_INDEX[view]]))
        rec = sample_view(rng, view)
        rec = dataclasses.replace(rec, pitch_mm=pitches[view])
        exposure = sample_exposure(rng, PHYS_KIND[view])
        # The exposure's SID drives the inverse-square fall-off: make it the film's SID.
        exposure = dataclasses.replace(exposure, sid_mm=rec.sid_mm)
        noise = int(rng.integers(0, 2**31 - 1))
        box = whole if view == "longleg" and whole is not None else knee_box
        geom = film_geometry(scene, rec, side, box, longleg_z)
        plans[view] = FilmPlan(view, rec, exposure, noise, geom)
    return plans


def _check_views(views: tuple[str, ...]) -> None:
    bad = [v for v in views if v not in VIEWS]
    if bad or not views or len(set(views)) != len(views):
        raise InputError(
            f"views must be distinct names from {', '.join(VIEWS)}, got {list(views)}", reason="bad_view"
        )


def _check_side(side: str) -> None:
    if side not in ("left", "right"):
        raise InputError(f"side must be 'left' or 'right', got {side!r}", reason="bad_side")


# --- projection ----------------------------------------------------------------------------------------
def _seen_range(
    vol: Volume, geom: ProjectionGeometry, box: list[tuple[int, int]], axis: int, margin: int = 2
) -> tuple[int, int]:
    """Smallest index range along ``axis`` (within ``box``) whose planes can project onto the detector.

    A plane of voxels is a rectangle; its projection is the convex hull of its corners' projections,
    so testing the corners' bounding box against the detector is conservative."""
    a0, a1 = box[axis]
    planes = np.arange(a0, a1 + 1, dtype=np.float64)
    others = [ax for ax in range(3) if ax != axis]
    corners = []
    for e0 in (box[others[0]][0] - 0.5, box[others[0]][1] + 0.5):
        for e1 in (box[others[1]][0] - 0.5, box[others[1]][1] + 0.5):
            ijk = np.zeros((len(planes), 3))
            ijk[:, axis] = planes
            ijk[:, others[0]] = e0
            ijk[:, others[1]] = e1
            corners.append(vol.index_to_mm(ijk))
    pts = np.stack(corners, axis=1)  # (planes, 4, 3)
    h = np.concatenate([pts, np.ones((*pts.shape[:2], 1))], axis=-1) @ geom.matrix().T
    w = h[..., 2]
    behind = np.any(w <= 1e-9, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        col = h[..., 0] / w
        row = h[..., 1] / w
    hit = (
        (col.max(axis=1) >= -1.0)
        & (col.min(axis=1) <= geom.columns)
        & (row.max(axis=1) >= -1.0)
        & (row.min(axis=1) <= geom.rows)
    )
    keep = np.nonzero(hit | behind)[0]
    if len(keep) == 0:
        return a0, a0 - 1  # empty
    return max(a0, a0 + int(keep[0]) - margin), min(a1, a0 + int(keep[-1]) + margin)


def projected_box(scene: CTScene, geom: ProjectionGeometry, margin: int = 2) -> list[tuple[int, int]] | None:
    """Index box (inclusive ranges) of the body voxels that can reach the detector, or None."""
    vol = scene.volume
    box: list[tuple[int, int]] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.nonzero(scene.body.any(axis=other))[0]
        box.append((max(0, int(nz[0]) - margin), min(vol.shape[axis] - 1, int(nz[-1]) + margin)))
    for axis in range(3):
        lo, hi = _seen_range(vol, geom, box, axis, margin)
        if hi < lo:
            return None
        box[axis] = (lo, hi)
    return box


def ct_path_images(
    scene: CTScene,
    geom: ProjectionGeometry,
    *,
    medial_cut: tuple[float, float] | None = None,
    slab: int = SLAB_SLICES,
) -> F32:
    """(water, bone, metal) path lengths in mm, shape (3, rows, columns), through the CT.

    The projected box of body voxels is cut into slabs along the third index; each slab carries a
    zero-valued neighbour slice on each inner side, so the trilinear field of the pieces adds up to the
    field of the whole volume and the slabs join without seams. ``medial_cut`` = (lateral sign, x of
    the cut plane): voxels medial of the plane fade out over ``CUT_RAMP_MM``."""
    vol = scene.volume
    total = np.zeros((3, geom.rows, geom.columns), np.float32)
    box = projected_box(scene, geom)
    if box is None:
        return total
    (i0, i1), (j0, j1), (k0, k1) = box
    aff = np.asarray(vol.affine, dtype=np.float64)
    for a in range(k0, k1 + 1, slab):
        b = min(k1 + 1, a + slab)  # core slices [a, b)
        lo = a - 1 if a > k0 else a
        hi = b + 1 if b <= k1 else b  # exclusive
        hu = vol.data[i0 : i1 + 1, j0 : j1 + 1, lo:hi]
        basis = hu_to_basis(hu)
        if lo < a:
            basis[:, :, :, 0] = 0.0
        if hi > b:
            basis[:, :, :, -1] = 0.0
        piece_aff = aff.copy()
        piece_aff[:3, 3] = aff[:3, :3] @ np.array([i0, j0, lo], dtype=np.float64) + aff[:3, 3]
        if medial_cut is not None:
            sign, x_cut = medial_cut
            ii, jj, kk = (np.arange(n, dtype=np.float32) for n in hu.shape)
            a0, a1, a2, t = (np.float32(v) for v in piece_aff[0])
            x = a0 * ii[:, None, None] + a1 * jj[None, :, None] + a2 * kk[None, None, :] + t
            w = np.clip((np.float32(sign) * (x - np.float32(x_cut))) / np.float32(CUT_RAMP_MM), 0.0, 1.0)
            basis *= w[None].astype(np.float32)
        total += line_integrals_multi(basis, piece_aff, geom)
        del basis
    return total


def _medial_cut(scene: CTScene, view: str, side: str) -> tuple[float, float] | None:
    if view != "knee-lat":
        return None
    sign = 1.0 if side == "left" else -1.0
    return sign, float(scene.knee_centre_mm[0] - sign * LATERAL_MEDIAL_LIMIT_MM)


# --- output --------------------------------------------------------------------------------------------
def _lists(d: Mapping[str, F64], ndigits: int = 4) -> dict[str, list[float]]:
    return {k: [round(float(x), ndigits) for x in np.asarray(v).reshape(-1)] for k, v in d.items()}


def _in_field(points: Mapping[str, F64], geom: ProjectionGeometry) -> dict[str, bool]:
    return {
        n: bool(-0.5 <= p[0] <= geom.columns - 0.5 and -0.5 <= p[1] <= geom.rows - 0.5)
        for n, p in points.items()
    }


def _covers_field_height(scene: CTScene, geom: ProjectionGeometry) -> bool:
    """Whether the CT reaches the top and bottom of the film's field at the depth of the knee."""
    col = 0.5 * (geom.columns - 1)
    ends = geom.back_project(np.array([col, col]), np.array([0.0, geom.rows - 1.0]), scene.knee_centre_mm)
    lo, hi = scene.volume.bounds_mm()
    return bool(ends[:, 2].min() >= lo[2] and ends[:, 2].max() <= hi[2])


def case_name(scene: CTScene, seed: int) -> str:
    """Output folder name: the seed and a short fingerprint of the CT (never its file name)."""
    return f"ct_{scene.fingerprint[:10]}_{seed}"


def render_from_ct(
    ct_path: Path,
    out_dir: Path,
    *,
    seed: int,
    views: tuple[str, ...],
    side: str,
    knee_centre_mm: tuple[float, float, float] | None = None,
    landmarks_path: Path | None = None,
    pitch_mm: dict[str, float] | None = None,
    remove_table: bool = False,
    preview_max_px: int = PREVIEW_MAX_PX,
) -> Path:
    """Render ``views`` (from ``longleg``, ``knee-ap``, ``knee-lat``) of a real CT (NIfTI file or DICOM
    series folder) as DICOM DX films with PNG previews and a ``truth.json``, into
    ``out_dir/ct_<fingerprint>_<seed>`` (written under a temporary name, then renamed). Deterministic
    for a seed and CT (DICOM creation timestamps aside). Returns the folder."""
    t0 = time.perf_counter()
    _check_views(views)
    _check_side(side)
    if seed < 0:
        raise InputError("seed must be non-negative", reason="bad_argument")
    scene = prepare_ct(
        Path(ct_path), knee_centre_mm=knee_centre_mm, landmarks_path=landmarks_path, remove_table=remove_table
    )
    plans = plan_films(scene, seed=seed, views=views, side=side, pitch_mm=pitch_mm)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder: {exc.strerror}", reason="bad_output") from exc
    name = case_name(scene, seed)
    final = out_dir / name
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        doc = _write_films(tmp, scene, plans, seed=seed, side=side, preview_max_px=preview_max_px)
        doc["ct_file"] = Path(ct_path).name
        doc["timing_s"] = round(time.perf_counter() - t0, 2)
        write_json(tmp / "truth.json", doc)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("rendered %d film(s) from a CT (seed %d) in %.1f s", len(plans), seed, time.perf_counter() - t0)
    return final


def _write_films(
    tmp: Path,
    scene: CTScene,
    plans: dict[str, FilmPlan],
    *,
    seed: int,
    side: str,
    preview_max_px: int,
) -> dict[str, Any]:
    key = scene.fingerprint[:16]
    study_uid = uid_from("xr3d-sim-ct", "study", key, str(seed))
    # Synthetic identities only: nothing of the CT's patient is read or written.
    meta: dict[str, Any] = {
        "patient_name": f"SIM^CT{seed}",
        "patient_id": f"SIMCT-{key[:10]}-{seed}",
        "patient_sex": "O",
        "study_date": "20260101",
        "study_time": "120000",
        "accession": f"C{seed:08d}"[:16],
        "study_description": "SIMULATED FROM CT",
    }
    knee = scene.knee_centre_mm
    films: dict[str, Any] = {}
    for n, (view, plan) in enumerate(plans.items(), start=1):
        film_name = FILM_NAMES[view]
        geom0 = plan.geometry
        paths = ct_path_images(scene, geom0, medial_cut=_medial_cut(scene, view, side))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 29, VIEW_INDEX[view]]))
        art = sample_artifacts(
            rng, PHYS_KIND[view], geom0.rows, geom0.columns, geom0.pitch_u_mm, plan.exposure, leg_side=side
        )
        film = render_with_artifacts(paths, geom0.pitch_u_mm, plan.exposure, art, plan.noise_seed)
        del paths
        geom = padded_geometry(geom0, art.padding)
        covered = _covers_field_height(scene, geom0)
        if not covered and view != "longleg":
            log.warning(
                "the CT is shorter than the %s film's field at the knee: the film shows where the scan "
                "ends (about 300 mm around the joint avoids that)",
                film_name,
            )
        mag = geom.magnification_at(knee)
        ident = FilmIdentity(
            study_uid=study_uid,
            series_uid=uid_from("xr3d-sim-ct", "series", key, str(seed), film_name),
            sop_uid=uid_from("xr3d-sim-ct", "sop", key, str(seed), film_name),
            series_number=n,
            laterality="L" if side == "left" else "R",
            meta=meta,
            series_description=f"{film_name.replace('_', ' ').upper()} FROM CT",
            derived=True,
            derivation_description="Digitally reconstructed radiograph simulated from a CT volume",
        )
        entry: dict[str, Any] = write_film(
            tmp, film_name, film, geom, art, ident, magnification=mag, preview_max_px=preview_max_px
        )
        points = {"knee_centre": knee, **scene.landmarks}
        proj = dict(zip(points, geom.project(np.array(list(points.values()))), strict=True))
        entry.update(
            {
                "view_record": plan.record.to_dict(),
                "noise_seed": plan.noise_seed,
                "ct_covers_field_height": covered,
                "knee_centre_projected": [round(float(x), 4) for x in proj["knee_centre"]],
                "landmarks_projected": _lists({k: v for k, v in proj.items() if k != "knee_centre"})
                if scene.landmarks
                else None,
                "in_field": _in_field({k: v for k, v in proj.items() if k != "knee_centre"}, geom)
                if scene.landmarks
                else None,
                "medial_cut": None
                if (cut := _medial_cut(scene, view, side)) is None
                else {"lateral_sign": cut[0], "x_mm": cut[1], "ramp_mm": CUT_RAMP_MM},
            }
        )
        films[film_name] = entry
        log.debug("film %s rendered (%dx%d)", film_name, entry["columns"], entry["rows"])
    vol = scene.volume
    return {
        "schema": TRUTH_SCHEMA,
        "source": "ct",
        "anatomy_truth": (
            "none: films rendered from a real CT; there are no simulated-anatomy angles or construction "
            "parameters, only the landmarks supplied with the CT (if any) projected exactly"
        ),
        "seed": seed,
        "side": side,
        "study_instance_uid": study_uid,
        "pixel_spacing_mm": films.get("longleg_ap", next(iter(films.values()), {})).get("pixel_spacing_mm"),
        "ct": {
            "fingerprint_sha256": scene.fingerprint,
            "shape": list(vol.shape),
            "spacing_mm": [round(s, 6) for s in vol.spacing_mm],
            "affine_lps": np.round(np.asarray(vol.affine), 6).tolist(),
            "hu_floor": HU_FLOOR,
            "table_removed": scene.table_removed,
        },
        "knee_centre_mm": [round(float(x), 4) for x in knee],
        "knee_centre_from": scene.knee_from,
        "landmarks_3d": _lists(scene.landmarks) if scene.landmarks else None,
        "angles_3d": None,
        "construction": None,
        "films": films,
    }
