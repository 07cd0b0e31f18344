"""``xr3d eval knee-landmarks``: the knee landmark model on held-out simulated knee films.

Eval-range seeds only (``build_index(root, "eval")`` refuses training seeds). Per film the ONNX detector
(through ``engines``) gets the film as the runtime reads it, its detector pixel spacing, the case's side
and the DICOM PatientOrientation. Reported:

* per landmark and view: error in mm at the patient (pixel spacing / truth magnification), in-field
  landmarks only: median, 95th percentile, max;
* knee AP: JLCA from predicted vs truth landmarks of the same film (the detector's error) and vs the
  3D truth (``angles_3d.JLCA``: adds what projection does);
* knee lateral: posterior tibial slope and knee flexion the same two ways (3D truth
  ``tibial_slope_deg`` / ``knee_flexion_deg``);
* seconds per film (detector), and the confidence threshold's flag rates;
* knee AP without side or orientation: how often the image-based choice mirrors like the side would.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.landmarks.knee_detector import KneeLandmarkDetector
from appliance.landmarks.knee_views import KNEE_AP, KNEE_LANDMARKS, KNEE_VIEWS, measure_knee_film
from engines.config import EngineConfig
from export.datasets.knee_samples import load_knee_case
from export.datasets.landmark_samples import build_index

log = logging.getLogger(__name__)

__all__ = ["evaluate_knee", "format_knee_summary"]

THRESHOLDS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
"""Candidate low-confidence thresholds whose flag rates are reported (refit of KNEE_LOW_CONFIDENCE)."""
_TRUTH_3D = {"JLCA": "JLCA", "tibial_slope_deg": "tibial_slope_deg", "knee_flexion_deg": "knee_flexion_deg"}


def _stats(v: list[float]) -> dict[str, float | int | None]:
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0, "median": None, "p95": None, "max": None, "mean": None}
    return {
        "n": int(a.size),
        "median": float(np.median(a)),
        "p95": float(np.percentile(a, 95)),
        "max": float(a.max()),
        "mean": float(a.mean()),
    }


def evaluate_knee(
    data: Path, models_dir: Path | None = None, config: EngineConfig | None = None
) -> dict[str, Any]:
    """Evaluate on every eval-range case of ``data`` that has knee films; a JSON-able summary."""
    index = build_index(Path(data), "eval")
    errors: dict[str, dict[str, list[float]]] = {v: {n: [] for n in KNEE_LANDMARKS[v]} for v in KNEE_VIEWS}
    angle_err: dict[str, dict[str, list[float]]] = {}
    pairs: list[tuple[float, float]] = []
    seconds: list[float] = []
    films: list[dict[str, Any]] = []
    auto_ok = auto_n = 0
    with KneeLandmarkDetector(models_dir, config or EngineConfig(cpu_threads=1)) as det:
        for seed in index.seeds:
            folder = index.folder(seed)
            for view in KNEE_VIEWS:
                try:
                    case = load_knee_case(folder, view)
                except Exception as exc:  # a case without this view
                    log.info("case %d %s skipped: %s", seed, view, exc)
                    continue
                ds = pydicom.dcmread(folder / case.truth["films"][view]["file"], stop_before_pixels=True)
                po = list(ds.get("PatientOrientation") or []) or None
                t0 = time.perf_counter()
                d = det.detect(
                    case.film.image, case.film.spacing_mm, view, side=case.side, patient_orientation=po
                )
                seconds.append(time.perf_counter() - t0)
                mm = np.array([case.film.spacing_mm[1], case.film.spacing_mm[0]]) / case.magnification
                err = np.hypot(*((d.points - case.landmarks) * mm).T)
                for n, e, ok, c in zip(case.names, err, case.in_field, d.confidence, strict=True):
                    if ok:
                        errors[view][n].append(float(e))
                        pairs.append((float(c), float(e)))
                truth_px = {n: case.landmarks[i] for i, n in enumerate(case.names) if case.in_field[i]}
                pred = measure_knee_film(view, d.as_dict(), case.film.spacing_mm, case.magnification)
                ref2 = measure_knee_film(view, truth_px, case.film.spacing_mm, case.magnification)
                row: dict[str, Any] = {"seed": seed, "view": view, "side": case.side, "passes": d.passes}
                for k, v in pred.items():
                    t2, t3 = ref2.get(k), case.truth.get("angles_3d", {}).get(_TRUTH_3D[k])
                    row[k] = {"pred": v, "truth_2d": t2, "truth_3d": t3}
                    bucket = angle_err.setdefault(k, {"vs_2d": [], "vs_3d": [], "truth2d_vs_3d": []})
                    if v is not None and t2 is not None:
                        bucket["vs_2d"].append(abs(v - t2))
                    if v is not None and t3 is not None:
                        bucket["vs_3d"].append(abs(v - float(t3)))
                    if t2 is not None and t3 is not None:
                        bucket["truth2d_vs_3d"].append(abs(t2 - float(t3)))
                row["median_error_mm"] = float(np.median(err[case.in_field])) if case.in_field.any() else None
                films.append(row)
                if view == KNEE_AP:
                    auto = det.detect(case.film.image, case.film.spacing_mm, view)
                    auto_n += 1
                    auto_ok += int(auto.orientation.mirror == d.orientation.mirror)
        backend = det.backend_name
        versions = det.model_versions
    all_err = [e for v in KNEE_VIEWS for lst in errors[v].values() for e in lst]
    per_view = {v: _stats([e for lst in errors[v].values() for e in lst]) for v in KNEE_VIEWS}
    conf = np.array([c for c, _ in pairs]) if pairs else np.zeros(0)
    err_a = np.array([e for _, e in pairs]) if pairs else np.zeros(0)
    flagged = conf < KNEE_LOW_CONFIDENCE

    def share(mask: np.ndarray) -> float | None:
        return float(flagged[mask].mean()) if mask.any() else None

    return {
        "data": str(data),
        "seeds": [int(s) for s in index.seeds],
        "films": len(films),
        "backend": backend,
        "model_versions": versions,
        "landmark_error_mm": {
            "all": _stats(all_err),
            "per_view": per_view,
            "per_landmark": {v: {n: _stats(lst) for n, lst in errors[v].items()} for v in KNEE_VIEWS},
        },
        "angles_abs_error_deg": {k: {w: _stats(lst) for w, lst in b.items()} for k, b in angle_err.items()},
        "seconds_per_film": _stats(seconds),
        "low_confidence": {
            "threshold": KNEE_LOW_CONFIDENCE,
            "flags_errors_over_2mm": share(err_a > 2.0),
            "flags_errors_over_5mm": share(err_a > 5.0),
            "flags_landmarks_within_2mm": share(err_a <= 2.0),
            "landmarks_over_2mm": int((err_a > 2.0).sum()),
            "spearman_conf_error": _spearman(conf, err_a),
            "by_threshold": {
                f"{t:.2f}": {
                    "flags_errors_over_2mm": float((conf[err_a > 2.0] < t).mean())
                    if (err_a > 2.0).any()
                    else None,
                    "flags_landmarks_within_2mm": float((conf[err_a <= 2.0] < t).mean())
                    if (err_a <= 2.0).any()
                    else None,
                }
                for t in THRESHOLDS
            },
        },
        "ap_orientation_from_image": {"films": auto_n, "same_as_side": auto_ok},
        "per_film": films,
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < 3:
        return None
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def _f(x: Any, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def format_knee_summary(s: dict[str, Any]) -> str:
    """A readable table of :func:`evaluate_knee`'s summary."""
    le = s["landmark_error_mm"]
    lines = [
        f"knee landmarks on {s['films']} held-out films (seeds {min(s['seeds'])}-{max(s['seeds'])}), "
        f"backend {s['backend']}, models {s['model_versions']}",
        f"landmark error (mm at the patient): median {_f(le['all']['median'])}, p95 {_f(le['all']['p95'])}, "
        f"max {_f(le['all']['max'])} (target median <= 0.7)",
    ]
    for v in KNEE_VIEWS:
        pv = le["per_view"][v]
        lines.append(f"  {v}: median {_f(pv['median'])}, p95 {_f(pv['p95'])} ({pv['n']} landmarks)")
        for n, st in le["per_landmark"][v].items():
            lines.append(
                f"    {n:5s} median {_f(st['median'])}  p95 {_f(st['p95'])}  max {_f(st['max'])}  n {st['n']}"
            )
    lines.append("angles, absolute error (deg): MAE / p95 vs same-film truth | vs 3D truth | truth 2D vs 3D")
    for k, b in s["angles_abs_error_deg"].items():
        lines.append(
            f"  {k:17s} {_f(b['vs_2d']['mean'])} / {_f(b['vs_2d']['p95'])} | {_f(b['vs_3d']['mean'])} / "
            f"{_f(b['vs_3d']['p95'])} | {_f(b['truth2d_vs_3d']['mean'])}  (n {b['vs_2d']['n']})"
        )
    sec = s["seconds_per_film"]
    lines.append(
        f"seconds per film: median {_f(sec['median'], 3)}, p95 {_f(sec['p95'], 3)}, max {_f(sec['max'], 3)}"
    )
    lc = s["low_confidence"]
    lines.append(
        f"confidence < {lc['threshold']}: flags {_f(lc['flags_errors_over_2mm'])} of errors > 2 mm "
        f"({lc['landmarks_over_2mm']}), {_f(lc['flags_errors_over_5mm'])} of > 5 mm, "
        f"{_f(lc['flags_landmarks_within_2mm'])} of landmarks <= 2 mm; "
        f"Spearman {_f(lc['spearman_conf_error'])}"
    )
    ao = s["ap_orientation_from_image"]
    lines.append(
        f"knee AP without side/orientation: orientation as the side gives on "
        f"{ao['same_as_side']}/{ao['films']}"
    )
    return "\n".join(lines)
