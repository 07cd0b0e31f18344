"""Evaluation of the landmark detector on held-out simulated cases (``xr3d eval landmarks``).

For every complete ``case_<seed>`` folder of ``--data`` (seeds must lie in the *eval* range; a
training-range seed is refused by :func:`export.datasets.landmark_samples.build_index`), the long-leg
film is read as the training pipeline reads it, :class:`appliance.landmarks.LandmarkDetector` (ONNX
Runtime through ``engines``) finds the eight landmarks, and the result is compared with the truth:

* landmark error in mm at the patient: |predicted - truth| in film pixels times the pixel spacing,
  divided by the film's magnification (truth ``films.longleg_ap.magnification``); in-field landmarks only;
* mHKA, mLDFA, MPTA, JLCA from :func:`appliance.analytics.angles2d.measure_2d` on the predicted vs the
  truth ``landmarks_2d`` (same spacing, magnification and side): MAE and 95th percentile of |error|;
* CPAK type agreement (predicted vs truth landmarks through the same ``measure_2d``);
* detector wall time per film (stage 1 + stage 2 + resampling; film reading excluded);
* diagnostics: stage 1 alone (coarse points), and stage 2 alone from crops centred on the truth shifted
  by up to 10 mm per axis at the patient (seeded by the case seed), which bounds what the crop stage can
  do with a good coarse guess;
* the same errors, angles and CPAK against the landmarks **where the film shows them** ("film truth"):
  truth.json's ``landmarks_2d`` moved by the film's recorded stitching registration error
  (:func:`export.datasets.landmark_samples.film_landmarks`; the simulator displaces each stitched zone's
  content by up to +-1.5 mm per axis but not the truth), i.e. what a detector can see;
* with the fine patch stage (``landmarks_fine.onnx``): the error of the crop stage's points before
  stage 3 moved them (same run), and stage 3 alone on the landmarks it refines, from patches centred on
  the truth shifted by up to 3 mm per axis at the patient (about the crop stage's errors; seeded by the
  case seed), against the film truth;
* the detector is told the case's side (the DICOM laterality / sidecar side at runtime); separately it
  is run without a side (:meth:`LandmarkDetector.detect_legs` and its documented pick) to count how
  often it then measures the case's leg and how many legs it finds;
* the low-confidence threshold: the confidence below which :func:`fit_low_confidence` flags a given
  share (sensitivity) of the landmarks whose error exceeds ``error_mm``, and what else it flags;
* bone masks, on cases simulated with label volumes (``labels_leg.nii.gz``, i.e. without ``--no-ct``):
  Dice of stage 1's femur / tibia masks (probability > 0.5, its stride-4 grid of 8 mm cells at the
  detector) against the label volume projected through the film's geometry into the same grid
  (:func:`mask_dice`); cases without labels are not counted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import ArrayLike
from tqdm import tqdm

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.results import Angles2D
from appliance.errors import InputError, Xr3dError
from appliance.landmarks.detector import TTA_SHIFTS_MM, LandmarkDetector, normalise_side, pick_leg
from engines.config import EngineConfig
from export.datasets.landmark_samples import build_index
from export.evaluation.landmark_confidence import ConfidenceFit, fit_low_confidence

log = logging.getLogger(__name__)

__all__ = [
    "ANGLES",
    "TARGETS",
    "CaseResult",
    "EvalSummary",
    "evaluate",
    "mask_dice",
]

ANGLES: Final = ("mhka", "mldfa", "mpta", "jlca")
# Issue 4 targets on held-out simulated films.
TARGETS: Final = {
    "median_landmark_error_mm": 0.7,
    "mae_deg.mhka": 0.5,
    "mae_deg.mldfa": 0.8,
    "mae_deg.mpta": 0.8,
    "cpak_agreement": 0.92,
    "whole_film_seconds": 2.0,
}


@dataclass(frozen=True)
class CaseResult:
    seed: int
    side: str
    errors_mm: dict[str, float]  # in-field landmarks only
    coarse_errors_mm: dict[str, float]  # stage 1 alone
    crop_only_errors_mm: dict[str, float]  # stage 2 alone, from the truth +-10 mm
    confidence: dict[str, float]
    angles_pred: dict[str, float | None]
    angles_true: dict[str, float | None]
    cpak_pred: str | None
    cpak_true: str | None
    seconds: float
    legs_found: int = 0  # without a side: how many legs the detector reports
    unknown_side_on_target: bool | None = None  # without a side: the picked leg is the case's leg
    dice: dict[str, float] = field(default_factory=dict)  # femur / tibia; empty without labels
    stage1_median_confidence: float = 0.0  # what appliance.landmarks.limb_check thresholds
    crop_stage_errors_mm: dict[str, float] = field(default_factory=dict)  # before stage 3; {} without it
    fine_only_errors_mm: dict[str, float] = field(default_factory=dict)  # stage 3 alone, truth +-3 mm
    # against the film truth (stitching registration error applied to the truth landmarks)
    film_errors_mm: dict[str, float] = field(default_factory=dict)
    film_crop_stage_errors_mm: dict[str, float] = field(default_factory=dict)
    film_angles_true: dict[str, float | None] = field(default_factory=dict)
    film_cpak_true: str | None = None
    cpak_pred_borderline: tuple[str, ...] = ()  # the types the result names as borderline

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpak_pred_borderline": list(self.cpak_pred_borderline),
            "film_errors_mm": self.film_errors_mm,
            "film_crop_stage_errors_mm": self.film_crop_stage_errors_mm,
            "film_angles_true": self.film_angles_true,
            "film_cpak_true": self.film_cpak_true,
            "crop_stage_errors_mm": self.crop_stage_errors_mm,
            "fine_only_errors_mm": self.fine_only_errors_mm,
            "stage1_median_confidence": self.stage1_median_confidence,
            "dice": self.dice,
            "legs_found": self.legs_found,
            "unknown_side_on_target": self.unknown_side_on_target,
            "seed": self.seed,
            "side": self.side,
            "errors_mm": self.errors_mm,
            "coarse_errors_mm": self.coarse_errors_mm,
            "crop_only_errors_mm": self.crop_only_errors_mm,
            "confidence": self.confidence,
            "angles_pred": self.angles_pred,
            "angles_true": self.angles_true,
            "cpak_pred": self.cpak_pred,
            "cpak_true": self.cpak_true,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class EvalSummary:
    data: str
    seeds: tuple[int, ...]
    landmark_error_mm: dict[str, dict[str, float]]  # name -> {median, p95, n}; "all" pooled
    coarse_error_mm: dict[str, float]  # stage 1 alone, pooled
    crop_only_error_mm: dict[str, float]  # stage 2 alone from truth +-10 mm, pooled
    angle_error_deg: dict[str, dict[str, float]]  # angle -> {mae, p95, n}
    cpak_agreement: float | None
    cpak_n: int
    seconds: dict[str, float]  # median, p95, max per film
    backend: str
    model_versions: dict[str, str]
    targets: dict[str, dict[str, Any]]
    cases: tuple[CaseResult, ...] = field(default=())
    confidence_fit: ConfidenceFit | None = None
    unknown_side: dict[str, Any] = field(default_factory=dict)
    mask_dice: dict[str, dict[str, float]] = field(default_factory=dict)  # bone -> {mean, median, min, n}
    crop_stage_error_mm: dict[str, float] = field(default_factory=dict)  # before stage 3, pooled
    fine_only_error_mm: dict[str, float] = field(default_factory=dict)  # stage 3 alone, pooled
    film_truth: dict[str, Any] = field(default_factory=dict)  # the headline figures against the film truth

    def to_dict(self) -> dict[str, Any]:
        return {
            "film_truth": self.film_truth,
            "crop_stage_error_mm": self.crop_stage_error_mm,
            "fine_only_error_mm": self.fine_only_error_mm,
            "mask_dice": self.mask_dice,
            "data": self.data,
            "seeds": list(self.seeds),
            "n_cases": len(self.seeds),
            "landmark_error_mm": self.landmark_error_mm,
            "coarse_error_mm": self.coarse_error_mm,
            "crop_only_error_mm": self.crop_only_error_mm,
            "angle_error_deg": self.angle_error_deg,
            "cpak_agreement": self.cpak_agreement,
            "cpak_n": self.cpak_n,
            "seconds_per_film": self.seconds,
            "backend": self.backend,
            "model_versions": self.model_versions,
            "targets": self.targets,
            "confidence_fit": None if self.confidence_fit is None else self.confidence_fit.to_dict(),
            "unknown_side": self.unknown_side,
            "cases": [c.to_dict() for c in self.cases],
        }


def mask_dice(pred: ArrayLike, truth: ArrayLike) -> float:
    """Dice of two boolean masks of one shape (1.0 when both are empty)."""
    a = np.asarray(pred, dtype=bool)
    b = np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise InputError(f"mask shapes differ: {a.shape} vs {b.shape}", reason="bad_mask")
    den = int(a.sum()) + int(b.sum())
    return 1.0 if den == 0 else 2.0 * int((a & b).sum()) / den


def _case_dice(detector: LandmarkDetector, case: Any, probs: Any) -> dict[str, float]:
    """Dice of the detector's stage-1 masks against the case's projected label volume, on the
    stage-1 grid (the truth mask pooled to it: a cell is bone when more than half of it is)."""
    from export.datasets.landmark_samples import load_bone_labels, whole_film_sample

    if case.labels_path is None or probs is None:
        return {}
    rows, cols, stride = detector.whole_geometry
    sample = whole_film_sample(
        case,
        mm_per_px=detector.whole_mm_per_px,
        shape=(rows, cols),
        labels=load_bone_labels(case.labels_path),
        canonical_side=detector.canonical_side,
    )
    out: dict[str, float] = {}
    for k, (bone, m) in enumerate((("femur", sample.femur_mask), ("tibia", sample.tibia_mask))):
        if m is None:
            continue
        h, w = probs.shape[1:]
        pad = np.zeros((h * stride, w * stride), np.float32)
        pad[: m.shape[0], : m.shape[1]] = m[: h * stride, : w * stride]
        pooled = pad.reshape(h, stride, w, stride).mean(axis=(1, 3)) > 0.5
        out[bone] = mask_dice(probs[k] > 0.5, pooled)
    return out


def _stats(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"median": float("nan"), "p95": float("nan"), "mean": float("nan"), "n": 0}
    return {
        "median": float(np.median(v)),
        "p95": float(np.percentile(v, 95)),
        "mean": float(np.mean(v)),
        "n": int(v.size),
    }


def _evaluate_case(detector: LandmarkDetector, folder: Path) -> CaseResult:
    from export.datasets.landmark_samples import load_case

    case = load_case(folder)
    truth = json.loads((folder / "truth.json").read_text())
    film = truth["films"]["longleg_ap"]
    mag = float(film.get("magnification", truth.get("magnification", 1.0)))
    s_row, s_col = case.film.spacing_mm
    det = detector.detect(case.film.image, (s_row, s_col), case.side)
    d = det.points - case.landmarks
    err = np.hypot(d[:, 0] * s_col, d[:, 1] * s_row) / mag
    errors = {n: float(e) for n, e, f in zip(case.names, err, case.in_field, strict=True) if f}
    dc = det.coarse_points - case.landmarks
    cerr = np.hypot(dc[:, 0] * s_col, dc[:, 1] * s_row) / mag
    coarse = {n: float(e) for n, e, f in zip(case.names, cerr, case.in_field, strict=True) if f}
    # stage 2 alone: one pass from the truth shifted by up to 10 mm (seeded by the case), as in training
    rng = np.random.default_rng(case.seed)
    shift = rng.uniform(-10.0, 10.0, size=(len(case.names), 2)) * mag / np.array([s_col, s_row])
    p_or, _ = detector.refine(case.film.image, (s_row, s_col), case.landmarks + shift, side=case.side)
    # without a side: how many legs, and is the documented pick the case's leg (knee within 30 mm)
    legs = detector.detect_legs(case.film.image, (s_row, s_col))
    pick = pick_leg(legs.values())
    k = case.names.index("FKC")
    dk = (pick.points[k] - case.landmarks[k]) * np.array([s_col, s_row]) / mag
    on_target = bool(np.hypot(*dk) < 30.0)
    film_pts = case.film_points if case.film_points is not None else case.landmarks
    film_err = _errors(case, det.points, (s_row, s_col), mag, film_pts)
    film_crop = (
        {} if det.crop_points is None else _errors(case, det.crop_points, (s_row, s_col), mag, film_pts)
    )
    film_true_pts = {
        n: (float(p[0]), float(p[1]))
        for n, p, f in zip(case.names, film_pts, case.in_field, strict=True)
        if f
    }
    a_film = measure_2d(film_true_pts, (s_row, s_col), mag, case.side)
    crop_stage: dict[str, float] = {}
    fine_only: dict[str, float] = {}
    fine = detector.fine_stage
    if det.crop_points is not None:
        crop_stage = _errors(case, det.crop_points, (s_row, s_col), mag)
    if fine is not None and fine.applies_to((s_row, s_col)):
        shift3 = rng.uniform(-3.0, 3.0, size=(len(case.names), 2)) * mag / np.array([s_col, s_row])
        side = normalise_side(case.side)
        mirror = detector.canonical_side is not None and side not in (None, detector.canonical_side)
        f3 = fine.refine(case.film.image, (s_row, s_col), case.landmarks + shift3, mirror=mirror)
        # only the landmarks the stage refines (the others keep their +-3 mm start)
        fine_only = {
            n: e
            for n, e in _errors(case, f3.points, (s_row, s_col), mag, film_pts).items()
            if n in fine.refines
        }
    do = p_or - case.landmarks
    oerr = np.hypot(do[:, 0] * s_col, do[:, 1] * s_row) / mag
    oracle = {n: float(e) for n, e, f in zip(case.names, oerr, case.in_field, strict=True) if f}
    truth_pts = {
        n: (float(p[0]), float(p[1]))
        for n, p, f in zip(case.names, case.landmarks, case.in_field, strict=True)
        if f
    }
    pred_pts = {n: p for n, p in det.as_dict().items() if n in truth_pts}
    a_true = measure_2d(truth_pts, (s_row, s_col), mag, case.side)
    try:
        a_pred: Angles2D | None = measure_2d(pred_pts, (s_row, s_col), mag, case.side)
    except Xr3dError as exc:  # e.g. predicted medial/lateral points in an impossible order
        log.warning("case %d: predicted landmarks cannot be measured: %s", case.seed, exc)
        a_pred = None
    return CaseResult(
        seed=case.seed,
        side=case.side,
        errors_mm=errors,
        coarse_errors_mm=coarse,
        crop_only_errors_mm=oracle,
        confidence={n: float(c) for n, c in zip(det.names, det.confidence, strict=True)},
        angles_pred={k: (getattr(a_pred, k) if a_pred is not None else None) for k in ANGLES},
        angles_true={k: getattr(a_true, k) for k in ANGLES},
        cpak_pred=a_pred.cpak.label if a_pred is not None and a_pred.cpak is not None else None,
        cpak_true=a_true.cpak.label if a_true.cpak is not None else None,
        seconds=float(det.timings_s["total"]),
        legs_found=len(legs),
        unknown_side_on_target=on_target,
        dice=_case_dice(detector, case, det.bone_masks),
        stage1_median_confidence=float(np.median(det.coarse_confidence)),
        crop_stage_errors_mm=crop_stage,
        fine_only_errors_mm=fine_only,
        film_errors_mm=film_err,
        film_crop_stage_errors_mm=film_crop,
        film_angles_true={k: getattr(a_film, k) for k in ANGLES},
        film_cpak_true=a_film.cpak.label if a_film.cpak is not None else None,
        cpak_pred_borderline=a_pred.cpak.borderline if a_pred is not None and a_pred.cpak is not None else (),
    )


def _errors(
    case: Any, points: Any, spacing: tuple[float, float], mag: float, truth: Any = None
) -> dict[str, float]:
    """name -> error in mm at the patient against ``truth`` (default the case's landmarks), in-field only."""
    ref = case.landmarks if truth is None else np.asarray(truth, np.float64)
    d = np.asarray(points, np.float64) - ref
    e = np.hypot(d[:, 0] * spacing[1], d[:, 1] * spacing[0]) / mag
    return {n: float(x) for n, x, f in zip(case.names, e, case.in_field, strict=True) if f}


def evaluate(
    data: Path,
    models_dir: Path | None = None,
    config: EngineConfig | None = None,
    *,
    seeds: Sequence[int] | None = None,
    error_mm: float = 3.0,
    sensitivity: float = 0.8,
    tta_shifts_mm: tuple[tuple[float, float], ...] | None = None,
) -> EvalSummary:
    """Run the detector on every eval-range case of ``data`` and summarise the errors; the
    low-confidence threshold is fitted for ``sensitivity`` to errors above ``error_mm``.
    ``tta_shifts_mm``: the detector's crop shifts (None: its default)."""
    index = build_index(Path(data), "eval", seeds)
    if not index.seeds:
        raise InputError(f"no complete eval cases under {data}", reason="no_cases")
    results: list[CaseResult] = []
    shifts = TTA_SHIFTS_MM if tta_shifts_mm is None else tta_shifts_mm
    with LandmarkDetector(models_dir, config, tta_shifts_mm=shifts) as detector:
        for seed in tqdm(index.seeds, desc="eval landmarks", unit="film"):
            results.append(_evaluate_case(detector, index.folder(seed)))
        backend = detector.backend_name
        names = detector.names
        versions = detector.model_versions

    lm: dict[str, dict[str, float]] = {
        n: _stats([r.errors_mm[n] for r in results if n in r.errors_mm]) for n in names
    }
    lm["all"] = _stats([e for r in results for e in r.errors_mm.values()])
    angles = _angle_stats(results, film=False)
    pairs = [(r.cpak_pred, r.cpak_true) for r in results if r.cpak_true is not None]
    agree = float(np.mean([p == t for p, t in pairs])) if pairs else None
    secs = [r.seconds for r in results]
    timing = {
        "median": float(np.median(secs)),
        "p95": float(np.percentile(secs, 95)),
        "max": float(max(secs)),
    }
    measured = _measured(lm, angles, agree, timing["median"])
    targets = _targets(measured)
    film_truth = _film_summary(results, names, timing["median"])
    conf = [r.confidence[n] for r in results for n in r.errors_mm]
    err = [r.errors_mm[n] for r in results for n in r.errors_mm]
    fit = fit_low_confidence(conf, err, error_mm=error_mm, sensitivity=sensitivity)
    unknown = {
        "on_target": float(np.mean([bool(r.unknown_side_on_target) for r in results])),
        "legs_found": {str(n): sum(r.legs_found == n for r in results) for n in (1, 2)},
        "min_stage1_median_confidence": float(min(r.stage1_median_confidence for r in results)),
    }
    dice: dict[str, dict[str, float]] = {}
    for bone in ("femur", "tibia"):
        v = np.asarray([r.dice[bone] for r in results if bone in r.dice])
        if v.size:
            dice[bone] = {
                "mean": float(v.mean()),
                "median": float(np.median(v)),
                "min": float(v.min()),
                "n": int(v.size),
            }
    crop_stage = [e for r in results for e in r.crop_stage_errors_mm.values()]
    film_truth_block = film_truth
    fine_only = [e for r in results for e in r.fine_only_errors_mm.values()]
    return EvalSummary(
        film_truth=film_truth_block,
        crop_stage_error_mm=_stats(crop_stage) if crop_stage else {},
        fine_only_error_mm=_stats(fine_only) if fine_only else {},
        mask_dice=dice,
        data=str(data),
        seeds=index.seeds,
        landmark_error_mm=lm,
        coarse_error_mm=_stats([e for r in results for e in r.coarse_errors_mm.values()]),
        crop_only_error_mm=_stats([e for r in results for e in r.crop_only_errors_mm.values()]),
        angle_error_deg=angles,
        cpak_agreement=agree,
        cpak_n=len(pairs),
        seconds=timing,
        backend=backend,
        model_versions=versions,
        targets=targets,
        cases=tuple(results),
        confidence_fit=fit,
        unknown_side=unknown,
    )


def _angle_stats(results: Sequence[CaseResult], *, film: bool) -> dict[str, dict[str, float]]:
    """MAE / p95 / max of |predicted - true| per angle (true: truth.json's or the film truth's)."""
    out: dict[str, dict[str, float]] = {}
    for k in ANGLES:
        truths = [(r.film_angles_true.get(k) if film else r.angles_true[k]) for r in results]
        diffs = [
            abs(float(p) - float(t))
            for r, t in zip(results, truths, strict=True)
            if (p := r.angles_pred[k]) is not None and t is not None
        ]
        v = np.asarray(diffs)
        n_true = sum(1 for t in truths if t is not None)
        out[k] = {
            "unmeasurable_pred": int(n_true - v.size),
            "mae": float(v.mean()) if v.size else float("nan"),
            "p95": float(np.percentile(v, 95)) if v.size else float("nan"),
            "max": float(v.max()) if v.size else float("nan"),
            "n": int(v.size),
        }
    return out


def _measured(
    lm: Mapping[str, Any], angles: Mapping[str, Any], agree: float | None, seconds: float
) -> dict[str, Any]:
    """The figures the issue's targets are checked against (``_targets``)."""
    return {
        "median_landmark_error_mm": lm["all"]["median"],
        "mae_deg.mhka": angles["mhka"]["mae"],
        "mae_deg.mldfa": angles["mldfa"]["mae"],
        "mae_deg.mpta": angles["mpta"]["mae"],
        "cpak_agreement": agree,
        "whole_film_seconds": seconds,
    }


def _targets(measured: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    targets: dict[str, dict[str, Any]] = {}
    for key, goal in TARGETS.items():
        got = measured[key]
        ok = (
            None
            if got is None or not np.isfinite(got)
            else (got >= goal if key == "cpak_agreement" else got <= goal)
        )
        targets[key] = {"target": goal, "measured": got, "met": ok}
    return targets


def _film_summary(results: Sequence[CaseResult], names: Sequence[str], seconds: float) -> dict[str, Any]:
    """Landmark errors, angles, CPAK and the targets against the film truth."""
    if not any(r.film_errors_mm for r in results):
        return {}
    lm = {n: _stats([r.film_errors_mm[n] for r in results if n in r.film_errors_mm]) for n in names}
    lm["all"] = _stats([e for r in results for e in r.film_errors_mm.values()])
    crop = [e for r in results for e in r.film_crop_stage_errors_mm.values()]
    angles = _angle_stats(results, film=True)
    with_truth = [r for r in results if r.film_cpak_true is not None]
    agree = float(np.mean([r.cpak_pred == r.film_cpak_true for r in with_truth])) if with_truth else None
    # a miss the result itself called borderline (the true type among the named neighbours) vs a clear miss
    named = [
        r.cpak_pred == r.film_cpak_true or r.film_cpak_true in r.cpak_pred_borderline for r in with_truth
    ]
    measured = _measured(lm, angles, agree, seconds)
    return {
        "landmark_error_mm": lm,
        "crop_stage_error_mm": _stats(crop) if crop else {},
        "angle_error_deg": angles,
        "cpak_agreement": agree,
        "cpak_agreement_or_borderline": float(np.mean(named)) if named else None,
        "cpak_n": len(with_truth),
        "targets": _targets(measured),
    }
