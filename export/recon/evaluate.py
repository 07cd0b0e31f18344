"""``xr3d eval recon``: the shipped reconstruction (ONNX Runtime through ``engines``) against the simulator's
truth on held-out (eval-range) seeds.

Two kinds of items in ``--data``:
* ``recon_<seed>_<pose>.npz`` (export.recon.data): the network frames and matrices as training makes them;
  truth is the exact 1 mm cube (same grid).
* ``case_<seed>/`` (``xr3d simulate``): the full runtime path: DICOM films read with their recorded geometry
  (pixels through ``bone_bright_unit``), the cube centred by :func:`estimate_centre`, truth = the 0.5 mm
  knee CT and labels resampled onto the reconstruction grid (HU trilinear, labels nearest); the region is
  the part of the cube inside the truth volume.

Per item and model row: PSNR / SSIM of HU in the region, Dice / ASSD / HD95 per bone, re-projection NCC per
film (DRR of the reconstruction vs the film frame, with the truth CT's own NCC as the ceiling), 3D angles via
``appliance.recon.bones3d`` with the truth hip and ankle centres (isolates the knee), and timing.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from scipy import ndimage

from appliance.dicomio.geometry_tags import read_geometry
from appliance.errors import InputError
from appliance.geometry.drr import line_integrals
from appliance.geometry.projection import ProjectionGeometry, centred_geometry
from appliance.geometry.volume import Volume
from appliance.ingest.presentation import bone_bright_unit
from appliance.recon.infer import (
    VIEWS,
    Reconstructor,
    ReconVolumes,
    cube_affine,
    estimate_centre,
    film_frame,
)
from appliance.recon.orientation import plateau_axial_deg
from engines.config import EngineConfig
from export.recon import metrics as M
from export.recon.data import EVAL_SEEDS
from export.simulator import labels as simlab

log = logging.getLogger(__name__)

BONES = {1: "femur", 2: "tibia", 3: "fibula", 4: "patella"}
ANGLES = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA")
TARGETS = {
    "dice_femur": 0.97,
    "dice_tibia": 0.97,
    "dice_patella": 0.92,
    "dice_fibula": 0.92,
    "assd_mm": 0.7,
    "psnr_db": 30.0,
    "angle_mae_deg": 0.8,
    "seconds": 10.0,
}
_SIM_TO_RECON = np.zeros(256, np.uint8)
for _s, _d in ((simlab.FEMUR, 1), (simlab.TIBIA, 2), (simlab.FIBULA, 3), (simlab.PATELLA, 4)):
    _SIM_TO_RECON[_s] = _d


@dataclass(frozen=True, eq=False)
class EvalItem:
    name: str
    seed: int
    frames: NDArray[np.float32]  # (2, 256, 256)
    mats: NDArray[np.float32]  # (2, 3, 4)
    affine: NDArray[np.float64]
    frame_geoms: tuple[ProjectionGeometry, ...]
    hu: NDArray[np.float32]
    labels: NDArray[np.uint8]
    region: NDArray[np.bool_]
    truth: Mapping[str, Any]  # side, landmarks_3d, angles_3d


def _items(data: Path, max_cases: int | None) -> list[Path]:
    paths = sorted(data.glob("recon_*_*.npz")) + sorted(p for p in data.glob("case_*") if p.is_dir())
    out = []
    for p in paths:
        m = re.search(r"(?:recon|case)_(\d+)", p.name)
        if m is None:
            continue
        seed = int(m.group(1))
        if not EVAL_SEEDS[0] <= seed <= EVAL_SEEDS[1]:
            raise InputError(
                f"{p.name}: seed {seed} is not an evaluation seed {EVAL_SEEDS}", reason="seed_range"
            )
        out.append(p)
    return out[:max_cases] if max_cases else out


def _frame_geometry(g: ProjectionGeometry, centre: NDArray[np.float64]) -> ProjectionGeometry:
    dummy = np.zeros((g.rows, g.columns), np.float32)
    return film_frame(dummy, g, centre).geometry


def load_npz(path: Path) -> EvalItem:
    from appliance.recon.infer import cube_to_film_matrix  # noqa: F401  (documents where mats come from)

    with np.load(path) as d:
        affine = d["affine"].astype(np.float64)
        geoms = {k: ProjectionGeometry.from_dict(v) for k, v in json.loads(str(d["geometry_json"])).items()}
        centre = affine[:3, :3] @ np.full(3, (d["hu"].shape[0] - 1) / 2.0) + affine[:3, 3]
        truth = json.loads(str(d["truth_json"])) if "truth_json" in d else {}
        return EvalItem(
            path.stem,
            int(d["seed"]),
            d["films"].astype(np.float32),
            d["mats"].astype(np.float32),
            affine,
            tuple(_frame_geometry(geoms[v], centre) for v in VIEWS),
            d["hu"].astype(np.float32),
            d["labels"].astype(np.uint8),
            np.ones(d["hu"].shape, bool),
            truth,
        )


def load_case(path: Path) -> EvalItem:
    from appliance.recon.infer import cube_to_film_matrix
    from export.simulator.ct_io import load_ct

    films: dict[str, tuple[NDArray[np.float32], ProjectionGeometry]] = {}
    for v in VIEWS:
        ds = pydicom.dcmread(path / f"{v}.dcm")
        g = read_geometry(ds)
        if g is None:
            raise InputError(f"{path.name}/{v}.dcm has no projection geometry", reason="no_geometry")
        films[v] = (bone_bright_unit(ds, ds.pixel_array), g)
    centre = estimate_centre({k: v[1] for k, v in films.items()})
    affine = cube_affine(centre)
    frames = [film_frame(films[v][0], films[v][1], centre) for v in VIEWS]
    ct = load_ct(path / "ct_knee.nii.gz")
    lab = load_ct(path / "labels_knee.nii.gz")
    n = 144
    ijk = np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), -1).reshape(-1, 3)
    src = ct.mm_to_index(ijk @ affine[:3, :3].T + affine[:3, 3]).T
    hu = ndimage.map_coordinates(np.asarray(ct.data, np.float32), src, order=1, mode="nearest").reshape(
        n, n, n
    )
    labs = ndimage.map_coordinates(np.asarray(lab.data, np.uint8), src, order=0, mode="nearest").reshape(
        n, n, n
    )
    shape = np.asarray(ct.shape)[:, None]
    region = np.all((src >= -0.5) & (src <= shape - 0.5), axis=0).reshape(n, n, n)
    truth = json.loads((path / "truth.json").read_text())
    return EvalItem(
        path.name,
        int(truth["seed"]),
        np.stack([f.image for f in frames]),
        np.stack([cube_to_film_matrix(f.matrix, affine) for f in frames]),
        affine,
        tuple(f.geometry for f in frames),
        hu.astype(np.float32),
        _SIM_TO_RECON[labs],
        region,
        {"side": truth["side"], "landmarks_3d": truth["landmarks_3d"], "angles_3d": truth["angles_3d"]},
    )


def _reprojection(
    vol: NDArray[np.float32], affine: NDArray[np.float64], g: ProjectionGeometry, frame: NDArray[np.float32]
) -> float:
    mu = np.maximum(vol / 1000.0 + 1.0, 0.0).astype(np.float32)
    drr = line_integrals(Volume(mu, affine), g)
    # Only where the ray crossed the cube (the film outside it carries anatomy the cube does not hold).
    return M.ncc(drr, frame, drr > 1e-3)


def _angles(item: EvalItem, rec: ReconVolumes) -> dict[str, float] | None:
    try:
        from appliance.recon.bones3d import LongLegLandmarks, landmarks_from_labels
    except ImportError:
        return None
    t = item.truth
    if not t.get("landmarks_3d"):
        return None
    lm = {k: np.asarray(v, float) for k, v in t["landmarks_3d"].items()}
    mid = 0.5 * (lm["FHC"] + lm["AC"])
    g = centred_geometry(
        name="longleg_ap",
        isocenter_mm=mid,
        beam_dir=(0.0, 1.0, 0.0),
        u_dir=(1.0, 0.0, 0.0),
        sid_mm=2750.0,
        sod_mm=2600.0,
        width_mm=430.0,
        height_mm=1300.0,
        pitch_mm=0.35,
    )
    fhc, ac = g.project(np.stack([lm["FHC"], lm["AC"]]))
    side = "L" if str(t["side"]).lower().startswith("l") else "R"
    try:
        res = landmarks_from_labels(rec.labels, side, LongLegLandmarks(g, (fhc[0], fhc[1]), (ac[0], ac[1])))
    except Exception as exc:  # a reconstruction without usable bones scores as missing, not a crash
        log.warning("%s: 3D landmarks failed: %s", item.name, exc)
        return {}
    got: dict[str, Any] = res.angles.to_dict()
    out = {}
    for a in ANGLES:
        g_a, t_a = got.get(a), t["angles_3d"].get(a)
        if g_a is not None and t_a is not None:
            out[a] = abs(float(g_a) - float(t_a))
    return out


def score(item: EvalItem, rec: ReconVolumes, seconds: float) -> dict[str, Any]:
    hu, lab = rec.hu.data.astype(np.float32), np.asarray(rec.labels.data)
    reg = item.region
    row: dict[str, Any] = {
        "item": item.name,
        "seed": item.seed,
        "views": list(rec.views_used),
        "psnr_db": M.psnr(hu, item.hu, reg),
        "ssim": M.ssim3d(hu, item.hu, reg),
        "seconds": seconds,
    }
    sp = rec.hu.spacing_mm
    for k, name in BONES.items():
        a, b = (lab == k) & reg, (item.labels == k) & reg
        row[f"dice_{name}"] = M.dice(a, b)
        row[f"assd_{name}"], row[f"hd95_{name}"] = M.assd_hd95(a, b, sp)
    for i, v in enumerate(VIEWS):
        if v in rec.views_used:
            row[f"reproj_{v}"] = _reprojection(hu, item.affine, item.frame_geoms[i], item.frames[i])
    ang = _angles(item, rec)
    row["angle_abs_err"] = ang
    return row


def truth_reprojection(item: EvalItem) -> dict[str, float]:
    return {
        f"reproj_{v}": _reprojection(item.hu, item.affine, item.frame_geoms[i], item.frames[i])
        for i, v in enumerate(VIEWS)
    }


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    agg: dict[str, Any] = {"n": len(rows)}
    keys = [k for k in rows[0] if isinstance(rows[0][k], float)]
    for k in keys:
        v = np.array([r[k] for r in rows if k in r and math.isfinite(r[k])], float)
        agg[k] = {"mean": float(v.mean()), "sd": float(v.std()), "n_finite": len(v)} if len(v) else None
    agg["assd_mm"] = float(
        np.mean([agg[f"assd_{b}"]["mean"] for b in BONES.values() if agg.get(f"assd_{b}")] or [math.inf])
    )
    for view in VIEWS:
        vals = [r[f"reproj_{view}"] for r in rows if f"reproj_{view}" in r]
        if vals:
            agg[f"reproj_{view}_pct"] = {str(p): float(np.percentile(vals, p)) for p in (5, 25, 50, 75, 95)}
    errs = [r["angle_abs_err"] for r in rows if r.get("angle_abs_err") is not None]
    if errs:
        per = {a: [e[a] for e in errs if a in e] for a in ANGLES}
        agg["angle_mae_deg"] = {a: float(np.mean(x)) for a, x in per.items() if x}
        allv = [x for xs in per.values() for x in xs]
        agg["angle_mae_all_deg"] = float(np.mean(allv)) if allv else None
        agg["angle_failures"] = sum(1 for e in errs if not e)
    else:
        agg["angle_mae_deg"] = None
    agg["seconds_median"] = float(np.median([r["seconds"] for r in rows]))
    return agg


def evaluate_all(
    data: Path,
    models_dir: Path,
    *,
    ablations: Mapping[str, Path] | None = None,
    ap_only: bool = False,
    uncalibrated: bool = False,
    truth_orientation: bool = False,
    max_cases: int | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Every item of ``data`` through ``models_dir`` (row ``biplanar``) and the extra rows asked for:
    ``ap_only_input`` (the AP film alone), ``uncalibrated`` (the label-logit offsets off),
    ``truth_orientation`` (a knee-canonical model turned to the truth labels' rotation instead of its
    estimate: the orientation model's share of the error) and one per ablation folder (AP only when its
    name says so)."""
    paths = _items(data, max_cases)
    if not paths:
        raise InputError(
            f"no eval items (recon_<seed>_<pose>.npz or case_<seed>/) in {data}", reason="no_data"
        )
    cfg = EngineConfig(backend="auto", cpu_threads=threads)
    # name -> (models folder, AP only, label offsets applied, truth orientation)
    models: dict[str, tuple[Path, bool, bool, bool]] = {"biplanar": (models_dir, False, True, False)}
    if ap_only:
        models["ap_only_input"] = (models_dir, True, True, False)
    if uncalibrated:
        models["uncalibrated"] = (models_dir, False, False, False)
    if truth_orientation:
        models["truth_orientation"] = (models_dir, False, True, True)
    for name, d in (ablations or {}).items():
        models[name] = (d, "ap" in name.lower() and "only" in name.lower(), True, False)
    recons = {name: Reconstructor(d, cfg) for name, (d, _, _, _) in models.items()}
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in models}
    ceiling: list[dict[str, float]] = []
    try:
        for p in paths:
            item = load_npz(p) if p.suffix == ".npz" else load_case(p)
            ceiling.append(truth_reprojection(item))
            axial_truth = plateau_axial_deg(item.labels)
            for name, (_, ap, cal, oracle) in models.items():
                present = np.array([1.0, 0.0 if ap else 1.0], np.float32)
                if oracle and not recons[name].canonical:
                    raise InputError(
                        f"--truth-orientation needs a knee-canonical model; {models[name][0]} is not",
                        reason="bad_argument",
                    )
                t0 = time.perf_counter()
                rec = recons[name].reconstruct_frames(
                    item.frames,
                    item.mats,
                    present,
                    item.affine,
                    calibrated=cal,
                    axial_deg=axial_truth if oracle else None,
                )
                row = score(item, rec, time.perf_counter() - t0)
                row["axial_truth_deg"] = axial_truth
                if rec.axial_deg is not None:
                    row["axial_deg"] = rec.axial_deg
                    row["axial_abs_err_deg"] = abs((rec.axial_deg - axial_truth + 90.0) % 180.0 - 90.0)
                rows[name].append(row)
                log.info(
                    "%s %s: dice femur %.3f tibia %.3f",
                    item.name,
                    name,
                    rows[name][-1]["dice_femur"],
                    rows[name][-1]["dice_tibia"],
                )
    finally:
        for r in recons.values():
            r.close()
    summary: dict[str, Any] = {
        "data": str(data),
        "items": [p.name for p in paths],
        "seeds": sorted({int(re.search(r"_(\d+)", p.name).group(1)) for p in paths}),  # type: ignore[union-attr]
        "models": {n: str(d) for n, (d, _, _, _) in models.items()},
        "rows": {n: _aggregate(r) for n, r in rows.items()},
        "truth_reprojection_ncc": {v: float(np.median([c[f"reproj_{v}"] for c in ceiling])) for v in VIEWS},
        "targets": TARGETS,
        "per_item": rows,
    }
    return summary


def _m(agg: Mapping[str, Any], k: str) -> str:
    v = agg.get(k)
    if v is None:
        return "n/a"
    if isinstance(v, dict):
        return f"{v['mean']:.3f}"
    return f"{v:.3f}"


def format_summary(s: Mapping[str, Any]) -> str:
    lines = [
        f"xr3d eval recon: {len(s['items'])} items, seeds {s['seeds'][0]}-{s['seeds'][-1]} ({s['data']})"
    ]
    hdr = [
        "row",
        "PSNR dB",
        "SSIM",
        "Dice F",
        "Dice T",
        "Dice Fib",
        "Dice P",
        "ASSD mm",
        "HD95 F",
        "angle MAE",
        "s",
    ]
    lines.append(" | ".join(hdr))
    for name, a in s["rows"].items():
        lines.append(
            " | ".join(
                [
                    name,
                    _m(a, "psnr_db"),
                    _m(a, "ssim"),
                    _m(a, "dice_femur"),
                    _m(a, "dice_tibia"),
                    _m(a, "dice_fibula"),
                    _m(a, "dice_patella"),
                    f"{a['assd_mm']:.2f}",
                    _m(a, "hd95_femur"),
                    "n/a" if not a.get("angle_mae_all_deg") else f"{a['angle_mae_all_deg']:.2f}",
                    f"{a['seconds_median']:.1f}",
                ]
            )
        )
    for name, a in s["rows"].items():
        for v in VIEWS:
            pct = a.get(f"reproj_{v}_pct")
            if pct:
                lines.append(
                    f"{name} re-projection NCC {v}: " + ", ".join(f"p{k} {x:.3f}" for k, x in pct.items())
                )
    for name, a in s["rows"].items():
        if a.get("axial_abs_err_deg"):
            err = _m(a, "axial_abs_err_deg")
            lines.append(f"{name} knee rotation error (deg, vs the truth plateau): {err}")
    lines.append(
        "truth CT re-projection NCC (ceiling): "
        + json.dumps({k: round(v, 3) for k, v in s["truth_reprojection_ncc"].items()})
    )
    lines.append("targets: " + json.dumps(s["targets"]))
    return "\n".join(lines)
