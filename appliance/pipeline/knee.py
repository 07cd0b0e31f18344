"""Knee AP / knee lateral films of a study -> ``knee_films`` in result.json and one overlay per film.

Each knee film is read as the landmark models were trained (``appliance.process.film_image01``), its
DICOM PatientOrientation decides with the study's side whether the models see it mirrored
(``appliance.landmarks.knee_views.mirror_decision``), the knee detector finds the view's landmarks (in
the stored film's pixels), and the measurements the view supports are made: JLCA on the knee AP;
posterior tibial slope and knee flexion on the lateral. A low-confidence landmark is flagged with every
value that needs it (values are still reported).

Never fails a study: a missing model makes every knee film ``unavailable``, an odd film ``failed``,
each with its reason; only an environment error (disk full, read-only outbox) propagates so the
service can retry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from appliance.errors import Xr3dError
from appliance.ingest.film import Film
from appliance.jobs.runner import ENVIRONMENT_ERRNOS
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.landmarks.knee_detector import KneeLandmarkDetector
from appliance.landmarks.knee_overlay import render_knee_overlay
from appliance.landmarks.knee_views import KNEE_NEEDS, KNEE_VIEWS, measure_knee_film
from appliance.pipeline.films import StudyFilm, patient_orientation

log = logging.getLogger(__name__)

__all__ = [
    "KneeDetectorHolder",
    "KneeFilmsResult",
    "measure_knee_films",
    "measure_knee_path",
    "overlay_name",
]

MEASURED: Final = "measured"
UNAVAILABLE: Final = "unavailable"
FAILED: Final = "failed"


def overlay_name(view: str) -> str:
    return f"knee_overlay_{view}.png"


class KneeDetectorHolder:
    """Opens the knee detector once, on first use, shared by the pipeline's worker threads; remembers
    why it could not be opened (e.g. ``model_missing``) instead of retrying for every study."""

    def __init__(
        self, models_dir: Path | None = None, factory: Callable[[], KneeLandmarkDetector] | None = None
    ) -> None:
        self._factory = factory or (lambda: KneeLandmarkDetector(models_dir))
        self._lock = threading.Lock()
        self._detector: KneeLandmarkDetector | None = None
        self._error: Xr3dError | None = None

    def get(self) -> KneeLandmarkDetector:
        with self._lock:
            if self._detector is None and self._error is None:
                try:
                    self._detector = self._factory()
                except Xr3dError as exc:
                    self._error = exc
            if self._error is not None:
                raise self._error
            assert self._detector is not None
            return self._detector


@dataclass(frozen=True)
class KneeFilmsResult:
    """``entries`` (view -> result.json ``knee_films`` entry), reasons for ``flags.reasons``, files."""

    entries: dict[str, dict[str, Any]]
    reasons: list[str]
    needs_review: bool
    model_versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _flags(
    names: tuple[str, ...], conf: np.ndarray, values: Mapping[str, float | None], threshold: float
) -> dict[str, Any]:
    low = sorted(n for n, c in zip(names, conf, strict=True) if float(c) < threshold)
    flagged = {k: sorted(set(KNEE_NEEDS[k]) & set(low)) for k in values if set(KNEE_NEEDS[k]) & set(low)}
    missing = [k for k, v in values.items() if v is None]
    return {
        "needs_review": bool(low) or bool(missing),
        "low_confidence_threshold": threshold,
        "low_confidence_landmarks": low,
        "flagged_values": flagged,
        "not_measured": missing,
    }


def measure_knee_path(
    path: Path,
    film: Film,
    view: str,
    detector: KneeLandmarkDetector,
    side: str | None,
    threshold: float,
    out_dir: Path,
    file_label: str,
) -> dict[str, Any]:
    """One accepted knee film at ``path`` measured: its ``knee_films`` entry (``file`` = ``file_label``),
    with its overlay written to ``out_dir / overlay_name(view)``. Shared by the study pipeline and
    ``xr3d process``."""
    from appliance.process import film_image01  # the long-leg reader; imported here to avoid a cycle

    t0 = time.perf_counter()
    image = film_image01(path, film)
    po = patient_orientation(path) if film.kind == "dicom" else None
    mag = float(film.magnification) if film.magnification else 1.0
    det_spacing = (film.spacing_mm[0] * mag, film.spacing_mm[1] * mag)
    t_read = time.perf_counter()
    det = detector.detect(image, det_spacing, view, side=film.side or side, patient_orientation=po)
    t_det = time.perf_counter()
    values = measure_knee_film(view, det.as_dict(), det_spacing, mag)
    values = {k: (float(v) if v is not None and np.isfinite(v) else None) for k, v in values.items()}
    landmarks = det.landmarks_json(threshold)
    render_knee_overlay(image, view, landmarks, values, out_dir / overlay_name(view))
    t_render = time.perf_counter()
    return {
        "view": view,
        "status": MEASURED,
        "reason": None,
        "file": file_label,
        "landmarks": landmarks,
        "measurements": values,
        "flags": _flags(det.names, det.confidence, values, threshold),
        "orientation": {**det.orientation.to_json(), "patient_orientation": po},
        "detector_spacing_mm": list(det_spacing),
        "overlay": overlay_name(view),
        "model_version": det.model_versions.get("knee_landmarks"),
        "timings_s": {"read": t_read - t0, "detect": t_det - t_read, "render": t_render - t_det},
    }


def _measure_one(
    sf: StudyFilm, study_dir: Path, detector: KneeLandmarkDetector, side: str | None, threshold: float
) -> dict[str, Any]:
    return measure_knee_path(
        study_dir / sf.copy, sf.film, sf.view, detector, side, threshold, study_dir, sf.copy.as_posix()
    )


def measure_knee_films(
    films: Mapping[str, StudyFilm],
    study_dir: Path,
    holder: KneeDetectorHolder,
    side: str | None,
    *,
    low_confidence: float = KNEE_LOW_CONFIDENCE,
) -> KneeFilmsResult:
    """Every knee film of ``films`` measured (or its reason recorded); see the module docstring."""
    t0 = time.perf_counter()
    knees = {v: films[v] for v in KNEE_VIEWS if v in films}
    entries: dict[str, dict[str, Any]] = {}
    reasons: list[str] = []
    versions: dict[str, str] = {}
    if not knees:
        return KneeFilmsResult({}, [], False)
    try:
        detector = holder.get()
    except Xr3dError as exc:
        status = UNAVAILABLE if exc.reason == "model_missing" else FAILED
        for v in knees:
            entries[v] = {
                "view": v,
                "status": status,
                "reason": f"[{exc.reason}] {exc}",
                "file": knees[v].copy.as_posix(),
            }
        return KneeFilmsResult(entries, [f"knee_landmarks_{status}"], True, seconds=time.perf_counter() - t0)
    versions = dict(detector.model_versions)
    review = False
    for v, sf in knees.items():
        try:
            entry = _measure_one(sf, study_dir, detector, side, low_confidence)
        except OSError as exc:
            if exc.errno in ENVIRONMENT_ERRNOS:
                raise
            entry = {
                "view": v,
                "status": FAILED,
                "reason": f"{type(exc).__name__}: {exc}",
                "file": sf.copy.as_posix(),
            }
        except Exception as exc:  # an odd film never fails the study: its reason is recorded
            why = f"[{exc.reason}] {exc}" if isinstance(exc, Xr3dError) else f"{type(exc).__name__}: {exc}"
            log.warning("knee film %s not measured: %s", v, type(exc).__name__)
            entry = {"view": v, "status": FAILED, "reason": why, "file": sf.copy.as_posix()}
        entries[v] = entry
        if entry["status"] != MEASURED:
            reasons.append("knee_film_failed")
            review = True
        elif entry["flags"]["needs_review"]:
            review = True
    if any(e["status"] == MEASURED and e["flags"]["needs_review"] for e in entries.values()):
        reasons.append("knee_landmarks_need_review")
    return KneeFilmsResult(entries, sorted(set(reasons)), review, versions, time.perf_counter() - t0)
