"""One long-leg AP film -> landmarks, 2D alignment, CPAK and pictures in ``OUT/<StudyInstanceUID>/``.

The pipeline of ``xr3d process`` (docs/result-schema.md):

1. :func:`appliance.ingest.reader.read_film` accepts and classifies the file (DICOM, or PNG/TIFF with
   a sidecar JSON); a rejected file raises :class:`~appliance.ingest.errors.IngestError` with its
   reason code. Only ``longleg_ap`` films are measured (``reason = not_longleg``).
2. The pixels are brought to [0, 1] with bone bright the way the landmark models were trained (DICOM:
   modality rescale, first VOI window, MONOCHROME1 inverted; other images: their own min-max).
3. :class:`~appliance.landmarks.detector.LandmarkDetector` finds the eight landmarks. The models work in
   detector millimetres, so they get the detector pixel spacing (patient-plane spacing times the film's
   magnification, when the ingest divided by one). Films are assumed in the standard display (patient's
   right on the viewer's left); a DICOM film whose PatientOrientation row direction is "R" is stored
   mirrored: it is mirrored back before detection and the landmarks are mapped to the stored pixels
   (``flags.display_mirrored``).
4. :func:`~appliance.analytics.angles2d.measure_2d` measures with the same spacing and magnification.
   A landmark whose confidence is below :data:`LOW_CONFIDENCE` is flagged, and so is every value that
   needs it (values are still reported, never hidden).
5. result.json, the overlay (full size and preview) and the CPAK chart are written to a temporary
   folder next to the destination, which is then renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from numpy.typing import NDArray

from appliance import __version__
from appliance.analytics.angles2d import _NEEDS as ANGLE_LANDMARKS
from appliance.analytics.angles2d import measure_2d
from appliance.analytics.cpak_chart import render_cpak_chart
from appliance.analytics.overlay import render_overlay
from appliance.analytics.results import Angles2D
from appliance.calibration.ball import CALIBRATION_BALL, BallFinding, find_calibration_ball
from appliance.config import Settings
from appliance.errors import InputError
from appliance.ingest.dicom_reader import decode_pixels
from appliance.ingest.film import Film
from appliance.ingest.presentation import bone_bright_unit
from appliance.ingest.reader import load_pixels, read_film
from appliance.landmarks.confidence import LOW_CONFIDENCE
from appliance.landmarks.detector import Detection, LandmarkDetector
from appliance.landmarks.limb_check import require_lower_limb

log = logging.getLogger(__name__)

__all__ = [
    "LOW_CONFIDENCE",
    "RESULT_SCHEMA",
    "FilmMeasurement",
    "ProcessResult",
    "display_mirrored",
    "film_image01",
    "measure_film",
    "process_film",
    "render_pictures",
]

RESULT_SCHEMA: Final = "xr3d.process/1"
LONGLEG_VIEW: Final = "longleg_ap"
RESULT_FILE: Final = "result.json"
OVERLAY_FILE: Final = "overlay.png"
OVERLAY_PREVIEW_FILE: Final = "overlay_preview.png"
CPAK_CHART_FILE: Final = "cpak_chart.png"
PREVIEW_MAX_PX: Final = 1024
# CPAK needs aHKA and JLO, which need all eight landmarks.
_DEPENDS: Final[dict[str, tuple[str, ...]]] = {**ANGLE_LANDMARKS, "CPAK": ANGLE_LANDMARKS["aHKA"]}


@dataclass(frozen=True)
class ProcessResult:
    """Where one film's outputs went, and the document written to ``result.json``."""

    study_uid: str
    out_dir: Path
    files: tuple[str, ...]
    document: Mapping[str, Any]


def film_image01(path: Path, film: Film) -> NDArray[np.float32]:
    """The film's pixels in [0, 1], bone bright, as the landmark models were trained on them.

    DICOM: RescaleSlope/Intercept, then the first WindowCenter/WindowWidth (linear; the full range
    without a window), MONOCHROME1 inverted (``export.datasets.landmark_samples.read_film``). PNG/TIFF:
    min-max of the image (the ingest already made bone bright).
    """
    if film.kind != "dicom":
        x = np.asarray(load_pixels(path), dtype=np.float64)
        if x.ndim == 3:
            x = x[..., :3].mean(axis=2)
        lo, hi = float(x.min()), float(x.max())
        return np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    ds = pydicom.dcmread(path)
    return bone_bright_unit(ds, decode_pixels(ds))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# Anatomical plausibility on a standing long-leg film: the mechanical axes stand within a few degrees of
# the film's vertical (hip-ankle line ~3 deg: Moreland, Bassett & Hanker, JBJS Am 1987) and mechanical
# lengths stay within adult ranges (femur ~370-500 mm, tibia ~310-440 mm: Paley 2002). Wider limits leave
# room for lean, rotation and flexion; outside them a landmark sits on the wrong structure (e.g. the other
# leg's hip).
MAX_AXIS_TILT_DEG = 15.0
FEMUR_MM = (300.0, 580.0)
TIBIA_MM = (250.0, 500.0)


def _implausible(det: Detection, angles: Angles2D) -> dict[str, list[str]]:
    """Reasons the detected landmarks cannot describe one standing leg, with the landmarks involved."""
    pts = det.as_dict()
    out: dict[str, list[str]] = {}

    def tilt(a: str, b: str) -> float:
        d = np.asarray(pts[a], dtype=float) - np.asarray(pts[b], dtype=float)
        return math.degrees(math.atan2(abs(d[0]), abs(d[1]) + 1e-9))

    if tilt("FHC", "FKC") > MAX_AXIS_TILT_DEG:
        out["femoral_axis_tilt"] = ["FHC", "FKC"]
    if tilt("TKC", "AC") > MAX_AXIS_TILT_DEG:
        out["tibial_axis_tilt"] = ["TKC", "AC"]
    fem, tib = angles.femoral_mech_axis_mm, angles.tibial_mech_axis_mm
    if fem is not None and not FEMUR_MM[0] <= fem <= FEMUR_MM[1]:
        out["femoral_length"] = ["FHC", "FKC"]
    if tib is not None and not TIBIA_MM[0] <= tib <= TIBIA_MM[1]:
        out["tibial_length"] = ["TKC", "AC"]
    return out


def _flags(film: Film, det: Detection, angles: Angles2D, threshold: float) -> dict[str, Any]:
    low = sorted(n for n, c in zip(det.names, det.confidence, strict=True) if float(c) < threshold)
    implausible = _implausible(det, angles)
    suspect = set(low) | {n for names in implausible.values() for n in names}
    flagged = {key: sorted(set(needs) & suspect) for key, needs in _DEPENDS.items() if set(needs) & suspect}
    return {
        "needs_review": bool(suspect),
        "implausible": implausible,
        "low_confidence_threshold": threshold,
        "low_confidence_landmarks": low,
        "flagged_values": flagged,
        "missing": {k: list(v) for k, v in angles.missing.items()},
        "spacing": film.spacing_flag or None,
        "side_mismatch": bool(angles.side and angles.apparent_side and angles.side != angles.apparent_side),
        "notes": list(angles.notes),
    }


def _publish(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an older result is moved aside first and removed afterwards."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class ScaleCalibration:
    """The magnification the millimetre values were measured with, and where it came from: the header
    (SID / SOD), the calibration sphere on the film (appliance/calibration/ball.py; looked for only when
    the header gives none), or nothing (``None``: detector millimetres, magnification 1)."""

    magnification: float | None
    source: str | None
    ball: BallFinding | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "magnification": self.magnification,
            "source": self.source,
            "calibration_ball": self.ball.to_json() if self.ball is not None else None,
        }


def _calibrate(
    film: Film, shown: NDArray[np.float32], det: Detection, detector_spacing: tuple[float, float]
) -> ScaleCalibration:
    if film.magnification:
        return ScaleCalibration(float(film.magnification), "header")
    # A prosthetic femoral head is a metal sphere too: one centred on a femoral head is not the ball.
    fhc = det.as_dict().get("FHC")
    ball = find_calibration_ball(shown, detector_spacing, exclude=[fhc] if fhc is not None else [])
    if ball is None:
        return ScaleCalibration(None, None)
    return ScaleCalibration(ball.magnification, CALIBRATION_BALL, ball)


@dataclass(frozen=True, eq=False)
class FilmMeasurement:
    """One long-leg AP film measured: what ``xr3d process`` and the study pipeline both report."""

    film: Film
    image: NDArray[np.float32]
    detection: Detection
    angles: Angles2D
    detector_spacing_mm: tuple[float, float]
    flags: Mapping[str, Any]
    timings_s: Mapping[str, float]
    scale: ScaleCalibration = ScaleCalibration(None, None)

    @property
    def spacing_mm(self) -> tuple[float, float]:
        """Pixel spacing at the patient (the detector spacing over the magnification applied)."""
        mag = self.scale.magnification or 1.0
        return (self.detector_spacing_mm[0] / mag, self.detector_spacing_mm[1] / mag)

    def landmarks_json(self) -> dict[str, dict[str, Any]]:
        low = set(self.flags["low_confidence_landmarks"])
        det = self.detection
        return {
            n: {"col": float(p[0]), "row": float(p[1]), "confidence": float(c), "low_confidence": n in low}
            for n, p, c in zip(det.names, det.points, det.confidence, strict=True)
        }

    def angles_json(self) -> dict[str, float | None]:
        return {k: _finite(v) for k, v in self.angles.to_dict().items()}

    def cpak_json(self) -> dict[str, Any] | None:
        return self.angles.cpak.to_dict() if self.angles.cpak is not None else None


def display_mirrored(path: Path, film: Film) -> tuple[bool | None, list[str] | None]:
    """(whether an AP film is stored mirrored, its PatientOrientation): the row direction "R" is the
    mirror of the standard display "L"; None when the film records no usable orientation."""
    from appliance.pipeline.films import patient_orientation  # no import cycle at module load

    po = patient_orientation(path) if film.kind == "dicom" else None
    row = po[0][:1] if po and po[0] else ""
    return ({"L": False, "R": True}.get(row), po)


def _unmirror(det: Detection, columns: int) -> Detection:
    """Landmarks found on the mirrored image, in the stored image's pixels (col -> columns - 1 - col)."""

    def flip(p: NDArray[np.float64]) -> NDArray[np.float64]:
        q = np.array(p, dtype=np.float64, copy=True)
        q[:, 0] = columns - 1 - q[:, 0]
        return q

    return dataclasses.replace(det, points=flip(det.points), coarse_points=flip(det.coarse_points))


def measure_film(
    path: Path, film: Film, detector: LandmarkDetector, *, low_confidence: float = LOW_CONFIDENCE
) -> FilmMeasurement:
    """Landmarks, 2D angles, CPAK and flags of one accepted long-leg AP film (steps 2-4 above)."""
    t0 = time.perf_counter()
    image = film_image01(path, film)
    mirrored, orientation = display_mirrored(path, film)
    shown = image[:, ::-1] if mirrored else image
    t_read = time.perf_counter()
    mag = float(film.magnification) if film.magnification else 1.0
    detector_spacing = (film.spacing_mm[0] * mag, film.spacing_mm[1] * mag)
    # The study's side picks the leg on a bilateral film; without one the detector's documented rule
    # chooses (docs/landmarks.md).
    det = detector.detect(shown, detector_spacing, film.side or None)
    # A film that shows no lower limb (wrong body part that passed the ingest rules) is not measured.
    require_lower_limb(det, detector_spacing)
    t_detect = time.perf_counter()
    scale = _calibrate(film, shown, det, detector_spacing)
    t_scale = time.perf_counter()
    # Angles (and the apparent side) from the standard display; mirroring changes no angle.
    angles = measure_2d(det.as_dict(), detector_spacing, scale.magnification or 1.0, film.side or None)
    if mirrored:
        det = _unmirror(det, image.shape[1])
        if scale.ball is not None:
            c = scale.ball.centre
            scale = dataclasses.replace(
                scale, ball=dataclasses.replace(scale.ball, centre=(image.shape[1] - 1 - c[0], c[1]))
            )
    flags = {
        **_flags(film, det, angles, low_confidence),
        "display_mirrored": mirrored,
        "patient_orientation": orientation,
    }
    t_measure = time.perf_counter()
    timings = {
        "read": t_read - t0,
        **{f"detect_{k}": float(v) for k, v in det.timings_s.items()},
        "detect": t_detect - t_read,
        "calibrate": t_scale - t_detect,
        "measure": t_measure - t_scale,
    }
    return FilmMeasurement(film, image, det, angles, detector_spacing, flags, timings, scale)


def render_pictures(m: FilmMeasurement, out_dir: Path) -> list[str]:
    """Overlay (full size and preview) and, when aHKA and JLO were measured, the CPAK chart."""
    render_overlay(
        m.image,
        m.detection.as_dict(),
        m.angles,
        out_dir / OVERLAY_FILE,
        out_dir / OVERLAY_PREVIEW_FILE,
        PREVIEW_MAX_PX,
    )
    files = [OVERLAY_FILE, OVERLAY_PREVIEW_FILE]
    if m.angles.ahka is not None and m.angles.jlo is not None:
        render_cpak_chart(m.angles.ahka, m.angles.jlo, out_dir / CPAK_CHART_FILE)
        files.append(CPAK_CHART_FILE)
    return files


def write_json_durably(path: Path, doc: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def longleg_document(
    m: FilmMeasurement, detector: LandmarkDetector, timings: Mapping[str, float]
) -> dict[str, Any]:
    """The long-leg part of ``result.json`` (everything but ``files``; see docs/result-schema.md)."""
    film = m.film
    return {
        "schema": RESULT_SCHEMA,
        "software": f"xr3d {__version__}",
        "status": "measured",
        "study_uid": film.study_uid,
        "side": film.side or None,
        "apparent_side": m.angles.apparent_side,
        "input": {
            "kind": film.kind,
            "sha256": film.sha256,
            "series_uid": film.series_uid,
            "sop_uid": film.sop_uid,
            "view": film.view,
            "rows": film.rows,
            "columns": film.columns,
            "spacing_mm": list(m.spacing_mm),
            "spacing_source": film.spacing_source
            + (" / calibration sphere" if m.scale.source == CALIBRATION_BALL else ""),
            "magnification": m.scale.magnification,
            "magnification_source": m.scale.source,
            "calibration_ball": m.scale.ball.to_json() if m.scale.ball is not None else None,
            "detector_spacing_mm": list(m.detector_spacing_mm),
            "photometric": film.photometric,
        },
        "landmarks": m.landmarks_json(),
        "angles_2d": m.angles_json(),
        "cpak": m.cpak_json(),
        "flags": dict(m.flags),
        "engine": detector.backend_choice.to_json(),
        "model_versions": dict(m.detection.model_versions),
        "timings_s": {**m.timings_s, **timings},
    }


def publish_result(out_root: Path, study_uid: str, write: Callable[[Path], list[str]]) -> Path:
    """Write a study's outputs into a temporary folder with ``write`` (returns the file names it wrote),
    then rename it to ``out_root/<study_uid>`` (an older result is replaced); nothing half-written is
    ever visible under the final name."""
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / study_uid
    tmp = out_root / f".{study_uid}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def process_film(
    path: Path,
    out_root: Path,
    settings: Settings,
    detector: LandmarkDetector,
    *,
    low_confidence: float = LOW_CONFIDENCE,
) -> ProcessResult:
    """Process one long-leg AP film into ``out_root/<StudyInstanceUID>/`` (see module docstring).
    Knee films are measured by :func:`appliance.process_batch.process_films` (``xr3d process``).

    Raises :class:`~appliance.errors.InputError` (an IngestError for a rejected file) for bad input.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path.name}: no such file", reason="file_not_found")
    film = read_film(path, settings)
    if film.view != LONGLEG_VIEW:
        raise InputError(
            f"{path.name}: view is {film.view}, only {LONGLEG_VIEW} films are measured", reason="not_longleg"
        )
    m = measure_film(path, film, detector, low_confidence=low_confidence)
    t_measure = time.perf_counter()
    doc: dict[str, Any] = {}

    def write(tmp: Path) -> list[str]:
        files = [RESULT_FILE, *render_pictures(m, tmp)]
        t_render = time.perf_counter()
        doc.update(longleg_document(m, detector, {"render": t_render - t_measure, "total": t_render - t0}))
        doc["files"] = sorted(files)
        write_json_durably(tmp / RESULT_FILE, doc)
        return files

    final = publish_result(out_root, film.study_uid, write)
    log.info(
        "processed a long-leg film: mHKA %s, %d low-confidence landmark(s), %.2f s",
        "n/a" if m.angles.mhka is None else f"{m.angles.mhka:.1f}",
        len(m.flags["low_confidence_landmarks"]),
        doc["timings_s"]["total"],
    )
    return ProcessResult(study_uid=film.study_uid, out_dir=final, files=tuple(doc["files"]), document=doc)
