"""One simulated case, end to end: sample -> phantom -> volumes -> films -> files + truth.json.

All randomness is drawn up front into records (phantom, materials, views, exposures, artefacts), each
from its own generator spawned from the case seed, so a case can be replayed from truth.json and adding
a view never changes the anatomy of a seed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.angles3d import measure_3d
from appliance.analytics.cpak import cpak_type
from appliance.dicomio.uids import uid_from
from appliance.geometry.projection import ProjectionGeometry
from export.simulator import labels, truth
from export.simulator.assembly import Limb, build_limb
from export.simulator.collimation import F64, bone_outline, in_open_field, keep_open
from export.simulator.ct_io import save_nifti
from export.simulator.film_artifacts import (
    FilmArtifacts,
    padded_geometry,
    render_with_artifacts,
    sample_artifacts,
    shift_points,
    steel_ball_metal_path,
)
from export.simulator.film_output import (
    FILM_NAMES,
    PHYS_KIND,
    VIEW_INDEX,
    FilmIdentity,
    write_film,
    write_json,
)
from export.simulator.params import PhantomParams, SamplingOptions, sample_params
from export.simulator.physics import ExposureParams, Film, sample_exposure
from export.simulator.views import ViewRecord, sample_view, view_geometry
from export.simulator.volumes import CaseVolumes, build_volumes, path_images
from export.simulator.voxelize import Materials, sample_materials

log = logging.getLogger(__name__)

TRUTH_SCHEMA = "xr3d.sim.truth/1"


@dataclass(frozen=True)
class CaseOptions:
    views: tuple[str, ...] = ("longleg", "knee-ap", "knee-lat")
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    write_ct: bool = True
    contralateral: bool = True
    longleg_pitch: float = 0.35
    knee_pitch: float = 0.25
    preview_max_px: int = 1400
    leg_spacing: float = 1.0  # voxel size of the whole-leg volume, mm
    knee_spacing: float = 0.5  # voxel size of the knee volume, mm


def options_from_dict(d: dict[str, Any]) -> CaseOptions:
    """The CaseOptions truth.json's ``options`` records (``generate_case(seed, out, options)`` remakes
    the case)."""
    fields = {k: v for k, v in d.items() if k in CaseOptions.__dataclass_fields__}
    fields["views"] = tuple(fields.get("views", CaseOptions().views))
    fields["sampling"] = SamplingOptions(**(fields.get("sampling") or {}))
    return CaseOptions(**fields)


@dataclass(frozen=True)
class CaseRecord:
    """Everything random about one case."""

    seed: int
    params: PhantomParams
    contralateral: PhantomParams | None
    materials: Materials
    views: dict[str, ViewRecord]
    exposures: dict[str, ExposureParams]
    noise_seeds: dict[str, int]
    ball: tuple[float, float, float] | None = None  # calibration sphere centre (LPS mm)
    ball_views: tuple[str, ...] = ()


def sample_case(seed: int, opts: CaseOptions) -> CaseRecord:
    ss = np.random.SeedSequence(seed)
    g_anat, g_mat, g_views, g_contra = (np.random.default_rng(s) for s in ss.spawn(4))
    params = sample_params(g_anat, opts.sampling)
    contra = None
    if opts.contralateral and "longleg" in opts.views:
        other = "left" if params.side == "right" else "right"
        c = sample_params(g_contra, SamplingOptions(side=other, cpak_uniform_share=0.0))
        # Same person: bone sizes match the measured leg within a few millimetres (leg-length
        # discrepancy is under 1 cm in most adults: Knutson, Chiropr Osteopat 2005); alignment, pose and
        # tissue texture are the other leg's own.
        same = {
            k: getattr(params, k)
            for k in (
                "hip_half_width",
                "head_radius",
                "femur_shaft_radius",
                "femur_cortex",
                "condylar_width",
                "epicondylar_width",
                "condyle_radius_medial",
                "condyle_radius_lateral",
                "plateau_width",
                "plateau_depth",
                "tibia_shaft_radius",
                "tibia_cortex",
                "soft_tissue_scale",
                "fat_thickness",
            )
        }
        contra = c.replace(
            **same,
            femur_mech_length=params.femur_mech_length + float(g_contra.normal(0.0, 2.5)),
            tibia_mech_length=params.tibia_mech_length + float(g_contra.normal(0.0, 2.5)),
            implant="none",
        )
    views: dict[str, ViewRecord] = {}
    exposures: dict[str, ExposureParams] = {}
    noise: dict[str, int] = {}
    for v in ("longleg", "knee-ap", "knee-lat"):  # fixed order: a view's draws never depend on others
        rng = np.random.default_rng(np.random.SeedSequence([seed, 17, VIEW_INDEX[v]]))
        views[v] = sample_view(rng, v, longleg_pitch=opts.longleg_pitch, knee_pitch=opts.knee_pitch)
        exposures[v] = sample_exposure(rng, PHYS_KIND[v])
        noise[v] = int(rng.integers(0, 2**31 - 1))
    # A 25 mm steel calibration ball beside the knee on about half the long-leg films (films.md).
    ball = None
    if "longleg" in opts.views and g_views.random() < 0.5:
        ball = _ball_position(params, g_views)
    return CaseRecord(
        seed=seed,
        params=params,
        contralateral=contra,
        materials=sample_materials(g_mat),
        views={k: views[k] for k in opts.views},
        exposures={k: exposures[k] for k in opts.views},
        noise_seeds={k: noise[k] for k in opts.views},
        ball=ball,
        ball_views=("longleg",) if ball is not None else (),
    )


BALL_DIAMETER_MM = 25.0


def _ball_position(params: PhantomParams, rng: np.random.Generator) -> tuple[float, float, float]:
    """Taped to the lateral side of the knee or thigh, at the depth of the bone (where it calibrates)."""
    limb = build_limb(params)
    knee = limb.landmarks()["FKC"]
    out = 1.0 if params.side == "left" else -1.0
    x = knee[0] + out * (params.soft_tissue_scale * 50.0 + 14.0 + rng.uniform(0.0, 20.0))
    z = knee[2] + rng.uniform(-60.0, 120.0)
    return (float(x), float(knee[1] + rng.uniform(-10.0, 10.0)), float(z))


def _study_meta(seed: int, params: PhantomParams) -> dict[str, Any]:
    # Synthetic identities only: nothing here describes a real person.
    return {
        "patient_name": f"SIM^CASE{seed}",
        "patient_id": f"SIM{seed:08d}",
        "patient_sex": "O",
        "study_date": "20260101",
        "study_time": "120000",
        "accession": f"A{seed:08d}",
        "study_description": "SIMULATED LOWER LIMB ALIGNMENT",
    }


def _render_film(
    vols: CaseVolumes, geom: ProjectionGeometry, view: str, rec: CaseRecord, keep: F64
) -> tuple[Film, FilmArtifacts]:
    """``keep``: (N, 2) film points (the visible reader landmarks) whose rows, +-30 mm, bound the bone
    the collimated field must keep open (``collimation.keep_open``)."""
    paths = path_images(vols, geom, with_contralateral=(view == "longleg"))
    exposure = rec.exposures[view]
    rng = np.random.default_rng(np.random.SeedSequence([rec.seed, 29, VIEW_INDEX[view]]))
    art = sample_artifacts(
        rng, PHYS_KIND[view], geom.rows, geom.columns, geom.pitch_u_mm, exposure, leg_side=rec.params.side
    )
    if art.collimation is not None and len(keep):
        reach = 30.0 / geom.pitch_v_mm
        rows = (float(keep[:, 1].min()) - reach, float(keep[:, 1].max()) + reach)
        outline = np.concatenate([bone_outline(paths[1], rows), keep, _ball_outline(geom, rec, view)])
        opened = keep_open(art.collimation, (geom.rows, geom.columns), geom.pitch_u_mm, outline)
        art = dataclasses.replace(art, collimation=opened)
    if rec.ball is not None and view in rec.ball_views:
        paths[2] += steel_ball_metal_path(geom, rec.ball, BALL_DIAMETER_MM)
    film = render_with_artifacts(paths, geom.pitch_u_mm, exposure, art, rec.noise_seeds[view])
    return film, art


def _ball_outline(geom: ProjectionGeometry, rec: CaseRecord, view: str) -> F64:
    """The calibration sphere's projected extent (4 points), when this film shows one: it is placed to be
    seen, so the collimation keeps it open too."""
    if rec.ball is None or view not in rec.ball_views:
        return np.zeros((0, 2))
    centre = np.asarray(geom.project(np.asarray(rec.ball, np.float64)[None]), np.float64).reshape(2)
    r = 0.5 * BALL_DIAMETER_MM * geom.magnification_at(np.asarray(rec.ball, np.float64)) / geom.pitch_u_mm
    return centre + np.array([[-r, 0.0], [r, 0.0], [0.0, -r], [0.0, r]])


def generate_case(seed: int, out_dir: Path, opts: CaseOptions) -> Path:
    """Build, render and write one case to ``out_dir/case_<seed>`` (atomically). Returns the folder."""
    t0 = time.perf_counter()
    rec = sample_case(seed, opts)
    limb = build_limb(rec.params)
    contra_limb: Limb | None = build_limb(rec.contralateral) if rec.contralateral is not None else None
    vols = build_volumes(
        limb,
        rec.materials,
        contralateral=contra_limb,
        leg_spacing=opts.leg_spacing,
        knee_spacing=opts.knee_spacing,
    )
    t_vol = time.perf_counter() - t0

    final = out_dir / f"case_{seed}"
    tmp = out_dir / f".case_{seed}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        doc = _write_case(tmp, rec, limb, vols, opts)
        doc["timing_s"] = {"volumes": round(t_vol, 2), "total": round(time.perf_counter() - t0, 2)}
        write_json(tmp / "truth.json", doc)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("case %d written in %.1f s", seed, time.perf_counter() - t0)
    return final


def _on_film(
    points: dict[str, np.ndarray], art: FilmArtifacts, geom: ProjectionGeometry
) -> dict[str, np.ndarray]:
    """Reader landmarks where the film shows them: a stitched film's zones carry their registration error
    (``shift_zones``), which the projection through ``geom`` does not. Without stitching, the same."""
    if art.stitch is None:
        return dict(points)
    pad = art.padding
    top = pad.top if pad is not None else 0
    left = pad.left if pad is not None else 0
    rows = geom.rows - top - (pad.bottom if pad is not None else 0)
    names = list(points)
    offset = np.array([left, top], dtype=np.float64)
    raw = np.array([points[n] for n in names], dtype=np.float64) - offset
    moved = shift_points(raw, rows, art.stitch) + offset
    return {n: moved[i] for i, n in enumerate(names)}


def _visible(
    points: dict[str, np.ndarray], geom: ProjectionGeometry, art: FilmArtifacts, shape: tuple[int, int]
) -> dict[str, bool]:
    """On the detector and not under a collimator blade (``shape``: the film before padding, where the
    field was applied)."""
    on = truth.in_field(points, geom)
    names = list(points)
    raw = np.array([points[n] for n in names], np.float64).reshape(-1, 2) - np.array(art.pixel_offset())
    open_ = in_open_field(raw, shape, art.collimation)
    return {n: bool(on[n] and open_[i]) for i, n in enumerate(names)}


def _plain(d: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in d.items()}


def _write_case(
    tmp: Path, rec: CaseRecord, limb: Limb, vols: CaseVolumes, opts: CaseOptions
) -> dict[str, Any]:
    p = rec.params
    study_uid = uid_from("xr3d-sim", "study", str(rec.seed))
    meta = _study_meta(rec.seed, p)
    L3 = truth.landmarks_3d(limb)
    pcp = truth.posterior_condyle_points(limb)
    a3 = measure_3d(_plain(L3), side=p.side, posterior_condyle_points=pcp)
    films: dict[str, Any] = {}
    for n, view in enumerate(opts.views, start=1):
        name = FILM_NAMES[view]
        vr = rec.views[view]
        # The detector stands against the body: the whole leg for long-leg films, the knee otherwise.
        extent = (vols.skin_lo, vols.skin_hi) if view == "longleg" else (vols.knee_skin_lo, vols.knee_skin_hi)
        geom = view_geometry(limb, vr, extent)
        seen = truth.reader_landmarks(limb, geom)
        inside = truth.in_field(seen, geom)
        keep = np.array([p for n, p in seen.items() if inside[n]], np.float64).reshape(-1, 2)
        film, art = _render_film(vols, geom, view, rec, keep)
        shape = (geom.rows, geom.columns)
        geom = padded_geometry(geom, art.padding)
        mag = geom.magnification_at(0.5 * (L3["FKC"] + L3["TKC"]))
        ident = FilmIdentity(
            study_uid=study_uid,
            series_uid=uid_from("xr3d-sim", "series", str(rec.seed), name),
            sop_uid=uid_from("xr3d-sim", "sop", str(rec.seed), name),
            series_number=n,
            laterality="L" if p.side == "left" else "R",
            meta=meta,
            series_description=name.replace("_", " ").upper(),
        )
        entry = write_film(
            tmp, name, film, geom, art, ident, magnification=mag, preview_max_px=opts.preview_max_px
        )
        proj = truth.projected_landmarks(limb, geom)
        reader = truth.reader_landmarks(limb, geom)
        on_film = _on_film(reader, art, geom)
        entry.update(
            {
                "view_record": rec.views[view].to_dict(),
                "noise_seed": rec.noise_seeds[view],
                "landmarks_2d": truth.as_lists(reader),
                "landmarks_film": truth.as_lists(on_film),
                "landmarks_projected": truth.as_lists(proj),
                "in_field": _visible(reader, geom, art, shape),
            }
        )
        if view in ("longleg", "knee-ap"):
            # A reader measures only what the film shows: a knee film has no hip or ankle, so only the
            # joint-line angles come out of it.
            visible = {k: v for k, v in reader.items() if entry["in_field"][k]}
            a2 = measure_2d(_plain(visible), pixel_spacing_mm=geom.pitch_u_mm, magnification=mag, side=p.side)
            entry["angles_2d"] = a2.to_dict()
        films[name] = entry

    # CT volumes (NIfTI, LPS converted to RAS on write).
    ct: dict[str, Any] = {}
    if opts.write_ct:
        save_nifti(vols.leg.hu, tmp / "ct_leg.nii.gz", dtype=np.int16)
        save_nifti(vols.leg.labels, tmp / "labels_leg.nii.gz", dtype=np.uint8)
        save_nifti(vols.knee.hu, tmp / "ct_knee.nii.gz", dtype=np.int16)
        save_nifti(vols.knee.labels, tmp / "labels_knee.nii.gz", dtype=np.uint8)
        ct = {
            "leg": {
                "ct": "ct_leg.nii.gz",
                "labels": "labels_leg.nii.gz",
                "spacing_mm": vols.leg.hu.spacing_mm,
            },
            "knee": {
                "ct": "ct_knee.nii.gz",
                "labels": "labels_knee.nii.gz",
                "spacing_mm": vols.knee.hu.spacing_mm,
            },
        }

    a3d = a3.to_dict()
    cons = truth.construction_truth(limb)
    cp = cpak_type(a3.ahka, a3.jlo) if a3.ahka is not None and a3.jlo is not None else None
    return {
        "schema": TRUTH_SCHEMA,
        "seed": rec.seed,
        # with the seed, what generate_case needs to make this case again (replay, regeneration)
        "options": dataclasses.asdict(opts),
        "side": p.side,
        "study_instance_uid": study_uid,
        "pixel_spacing_mm": films.get("longleg_ap", next(iter(films.values()), {})).get("pixel_spacing_mm"),
        "magnification": films.get("longleg_ap", next(iter(films.values()), {})).get("magnification"),
        "landmarks_3d": truth.as_lists(L3),
        "posterior_condyle_points": {k: np.round(v, 3).tolist() for k, v in pcp.items()},
        "angles_3d": a3d,
        "construction": cons,
        "cpak": cp.to_dict() if cp is not None else None,
        "films": films,
        "landmarks_2d": films["longleg_ap"]["landmarks_2d"] if "longleg_ap" in films else None,
        "ct": ct,
        "labels": {str(k): v for k, v in labels.NAMES.items()},
        "params": p.to_dict(),
        "contralateral_params": rec.contralateral.to_dict() if rec.contralateral else None,
        "materials": rec.materials.to_dict(),
        "calibration_ball": None
        if rec.ball is None
        else {"centre_mm": list(rec.ball), "diameter_mm": BALL_DIAMETER_MM, "films": list(rec.ball_views)},
    }
