"""One study's films -> its outbox folder (docs/study-outputs.md, result.json ``xr3d.result/1``).

:class:`StudyProcessor` is the :data:`~appliance.jobs.processor.Processor` that ``xr3d watch`` and
``xr3d demo`` run. It writes into the fresh folder the runner gives it; the runner renames that folder
into place, so everything below (films, pictures, DICOM, reconstruction) appears at once or not at all.

1. One film per view is copied to ``films/`` (:mod:`appliance.pipeline.films`).
2. The long-leg AP film is measured with the landmark models (:func:`appliance.process.measure_film`,
   the same code as ``xr3d process``) and drawn (overlay, CPAK chart). Without a long-leg film the
   study is ``partial``: angles, CPAK and landmarks are null, ``flags.reasons`` says why.
3. Each knee AP / lateral film is measured with the knee landmark model
   (:mod:`appliance.pipeline.knee`): ``knee_films`` in result.json and ``knee_overlay_<view>.png``; a
   missing model or an odd film is recorded there, never a failed study.
   With knee films, ``appliance.recon.study.reconstruct_study`` runs when the build has it.
4. result.json is written, then the report PDF and the DICOM objects (``appliance.outputs``) when the
   build has them, and result.json is rewritten with the final file list and stage outcomes.

The ``[pipeline]`` settings (:meth:`StudyProcessor.from_settings`) turn the reconstruction, the report
PDF and the DICOM objects off; such a stage is reported ``disabled`` (not ``unavailable``) and adds no
reason.

A missing or failing optional stage is a flag, never a failed study. :class:`~appliance.errors.InputError`
from the measurement quarantines the study (the runner's rule); any other exception is retried.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from appliance import __version__
from appliance.config import PipelineSettings
from appliance.jobs.processor import StudyInput
from appliance.landmarks.detector import LandmarkDetector
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.pipeline.agreement import angles_agreement
from appliance.pipeline.films import StudyFilm, choose_films, copy_films, film_entry
from appliance.pipeline.knee import KneeDetectorHolder, measure_knee_films
from appliance.pipeline.optional import DONE, SKIPPED, StageOutcome, run_optional
from appliance.process import (
    LONGLEG_VIEW,
    LOW_CONFIDENCE,
    FilmMeasurement,
    measure_film,
    render_pictures,
    write_json_durably,
)

log = logging.getLogger(__name__)

RESULT_SCHEMA: Final = "xr3d.result/1"
RESULT_FILE: Final = "result.json"
KNEE_VIEWS: Final = ("knee_ap", "knee_lat")
RECON_MODULE: Final = "appliance.recon.study"
RECON_FUNCTIONS: Final = ("reconstruct_study",)
OUTPUTS_MODULE: Final = "appliance.outputs"
REPORT_FUNCTIONS: Final = ("write_report_pdf", "write_study_report", "write_report")
DICOM_FUNCTIONS: Final = ("write_study_dicom",)
DISABLED: Final = "disabled"
"""A stage turned off in ``[pipeline]`` (not a problem: no reason is added, unlike ``unavailable``)."""
_DISABLED_DETAIL: Final = "turned off in the [pipeline] settings"


class StudyProcessor:
    """The study pipeline as a callable ``(study, out_dir) -> None`` for the job runner.

    One detector is shared by every worker thread (ONNX Runtime sessions may be run concurrently).
    """

    def __init__(
        self,
        detector: LandmarkDetector,
        *,
        low_confidence: float = LOW_CONFIDENCE,
        knee_low_confidence: float = KNEE_LOW_CONFIDENCE,
        reconstruction: bool = True,
        report_pdf: bool = True,
        dicom_outputs: bool = True,
        models_dir: Path | None = None,
        knee: KneeDetectorHolder | None = None,
    ) -> None:
        self.detector = detector
        self.knee = knee or KneeDetectorHolder(models_dir)
        """The knee landmark detector, opened on first use (models_dir or the shipped models)."""
        self.low_confidence = low_confidence
        self.knee_low_confidence = knee_low_confidence
        self.reconstruction = reconstruction
        self.report_pdf = report_pdf
        self.dicom_outputs = dicom_outputs
        self.models_dir = models_dir
        """The reconstruction's models folder (None: its shipped default)."""

    @classmethod
    def from_settings(cls, detector: LandmarkDetector, pipeline: PipelineSettings) -> StudyProcessor:
        """The processor configured by a ``[pipeline]`` section (appliance/config.py)."""
        return cls(
            detector,
            low_confidence=pipeline.low_confidence,
            knee_low_confidence=pipeline.knee_low_confidence,
            reconstruction=pipeline.reconstruction,
            report_pdf=pipeline.report_pdf,
            dicom_outputs=pipeline.dicom_outputs,
            models_dir=pipeline.models_dir,
        )

    def __call__(self, study: StudyInput, out_dir: Path) -> None:
        process_study(self, study, out_dir)


def _status(measured: FilmMeasurement | None) -> str:
    return "measured" if measured is not None else "partial"


def _study_side(films: Mapping[str, StudyFilm]) -> tuple[str | None, bool]:
    sides = {sf.film.side for sf in films.values() if sf.film.side}
    ll = films.get(LONGLEG_VIEW)
    side = ll.film.side if ll is not None and ll.film.side else (sorted(sides)[0] if sides else "")
    return side or None, len(sides) > 1


def _recon_fields(outcome: StageOutcome) -> tuple[Any, Any, Any]:
    """(reconstruction, angles_3d, landmarks_3d) from whatever ``reconstruct_study`` returned."""
    value = outcome.value
    if outcome.status != DONE or value is None:
        return None, None, None
    for attr in ("to_json", "to_dict"):
        if hasattr(value, attr):
            value = getattr(value, attr)()
            break
    if not isinstance(value, Mapping):
        return None, None, None
    doc = dict(value)
    recon = doc.pop("reconstruction", None) if "reconstruction" in doc else None
    angles_3d = doc.pop("angles_3d", None)
    landmarks_3d = doc.pop("landmarks_3d", None)
    if recon is None:
        recon = doc or None
    return recon, angles_3d, landmarks_3d


def _network_in(models_dir: Path) -> Callable[[Mapping[str, Any]], Any]:
    """``reconstruct_study``'s ``reconstructor`` with the network's ONNX files read from ``models_dir``."""

    def reconstruct(films: Mapping[str, Any]) -> Any:
        # Imported on first use, like the stage itself: a build without it reports the stage unavailable.
        rstudy = importlib.import_module(RECON_MODULE)
        return rstudy.network_reconstructor(films, models_dir=models_dir)

    return reconstruct


def _det_spacing(measured: FilmMeasurement | None, view: str) -> tuple[float, float] | None:
    return measured.detector_spacing_mm if measured is not None and view == LONGLEG_VIEW else None


def _scale(measured: FilmMeasurement | None, view: str) -> dict[str, Any] | None:
    return measured.scale.to_json() if measured is not None and view == LONGLEG_VIEW else None


def _listing(study_dir: Path) -> list[str]:
    return sorted(p.relative_to(study_dir).as_posix() for p in study_dir.rglob("*") if p.is_file())


def process_study(proc: StudyProcessor, study: StudyInput, out_dir: Path) -> dict[str, Any]:
    """Write the study's outbox folder into ``out_dir``; returns the result.json document."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    chosen, repeated = choose_films(study.instances)
    published = out_dir.parent / study.study_uid
    films = copy_films(chosen, out_dir, published if published.is_dir() else None)
    timings["films"] = time.perf_counter() - t0
    reasons: list[str] = []
    side, side_conflict = _study_side(films)
    if side_conflict:
        reasons.append("side_conflict")
    if repeated:
        reasons.append("view_received_more_than_once")

    measured: FilmMeasurement | None = None
    ll = films.get(LONGLEG_VIEW)
    if ll is None:
        reasons.append("no_longleg_film")
    else:
        t = time.perf_counter()
        measured = measure_film(out_dir / ll.copy, ll.film, proc.detector, low_confidence=proc.low_confidence)
        timings["measure"] = time.perf_counter() - t
        t = time.perf_counter()
        render_pictures(measured, out_dir)
        timings["render"] = time.perf_counter() - t
        if measured.flags["needs_review"]:
            reasons.append("landmarks_need_review")

    t = time.perf_counter()
    knee = measure_knee_films(films, out_dir, proc.knee, side, low_confidence=proc.knee_low_confidence)
    if knee.entries:
        timings["knee_films"] = time.perf_counter() - t
    reasons.extend(knee.reasons)

    knees = {v: films[v] for v in KNEE_VIEWS if v in films}
    if not proc.reconstruction:
        recon_outcome = StageOutcome(DISABLED, _DISABLED_DETAIL)
    else:
        recon_outcome = StageOutcome(SKIPPED, "no knee film")
    if knees and proc.reconstruction:
        t = time.perf_counter()
        pool = {
            "films": {v: out_dir / sf.copy for v, sf in films.items()},
            "film_info": {v: sf.film for v, sf in films.items()},
            "out_dir": out_dir,
            "study_dir": out_dir,
            "side": side,
            # The knee films' landmarks give the joint line that aligns a clinic's knee films in one frame.
            "landmarks_2d": {
                **({LONGLEG_VIEW: measured.landmarks_json()} if measured else {}),
                **{v: e["landmarks"] for v, e in knee.entries.items() if e.get("status") == "measured"},
            },
        }
        if proc.models_dir is not None:
            pool["reconstructor"] = _network_in(proc.models_dir)
        recon_outcome = run_optional(RECON_MODULE, RECON_FUNCTIONS, pool)
        timings["reconstruction"] = time.perf_counter() - t
        if recon_outcome.status != DONE:
            reasons.append(f"reconstruction_{recon_outcome.status}")
    reconstruction, angles_3d, landmarks_3d = _recon_fields(recon_outcome)
    if reconstruction is not None and isinstance(reconstruction, Mapping):
        reconstruction = dict(reconstruction)
        consistency = reconstruction.get("consistency")
        withhold: list[str] = []
        if isinstance(consistency, Mapping) and consistency.get("consistent") is False:
            reasons.append("reconstruction_not_consistent_with_films")
            withhold.append("reconstruction_not_consistent_with_films")
        if angles_3d is not None and measured is not None:
            agreement = angles_agreement(measured.angles_json(), angles_3d)
            reconstruction["agreement_with_2d"] = agreement.to_json()
            if not agreement.agrees:
                reasons.append("angles_3d_disagree_with_2d")
                withhold.append("angles_3d_disagree_with_2d")
        if withhold and (angles_3d is not None or landmarks_3d is not None):
            # Never presented as fact (appliance/pipeline/agreement.py): kept aside for review only.
            reconstruction["withheld"] = {
                "reasons": withhold,
                "angles_3d": angles_3d,
                "landmarks_3d": landmarks_3d,
            }
            angles_3d, landmarks_3d = None, None

    flags: dict[str, Any] = dict(measured.flags) if measured else {}
    flags.update(
        {
            "needs_review": bool(
                measured is None or measured.flags["needs_review"] or side_conflict or knee.needs_review
            ),
            "reasons": reasons,
            "views_received_more_than_once": repeated,
            "side_conflict": side_conflict,
            "stages": {"reconstruction": recon_outcome.to_json()},
        }
    )
    doc: dict[str, Any] = {
        "schema": RESULT_SCHEMA,
        "software": f"xr3d {__version__}",
        "status": _status(measured),
        "study_uid": study.study_uid,
        "side": side,
        "apparent_side": measured.angles.apparent_side if measured else None,
        "films": {
            v: film_entry(sf, out_dir, _det_spacing(measured, v), _scale(measured, v))
            for v, sf in films.items()
        },
        "missing_views": [v for v in study.expected_views if v not in films],
        "landmarks_2d": {LONGLEG_VIEW: measured.landmarks_json()} if measured else {},
        "angles_2d": measured.angles_json() if measured else None,
        "cpak": measured.cpak_json() if measured else None,
        "knee_films": knee.entries,
        "angles_3d": angles_3d,
        "landmarks_3d": landmarks_3d,
        "reconstruction": reconstruction,
        "flags": flags,
        "engine": proc.detector.backend_choice.to_json(),
        # The models that ran on this study's films (the fine stage skips films coarser than 0.5 mm/px).
        "model_versions": {
            **(measured.detection.model_versions if measured is not None else proc.detector.model_versions),
            **knee.model_versions,
        },
        "timings_s": timings,
        "files": [],
    }

    def write() -> None:
        doc["timings_s"]["total"] = time.perf_counter() - t0
        doc["files"] = sorted({*_listing(out_dir), RESULT_FILE})
        write_json_durably(out_dir / RESULT_FILE, doc)

    write()  # the writers below may read it
    t = time.perf_counter()
    pool = {
        "study_dir": out_dir,
        "out_dir": out_dir,
        "result": doc,
        "result_path": out_dir / RESULT_FILE,
        "films": {v: out_dir / sf.copy for v, sf in films.items()},
    }
    off = StageOutcome(DISABLED, _DISABLED_DETAIL)
    report = run_optional(OUTPUTS_MODULE, REPORT_FUNCTIONS, pool) if proc.report_pdf else off
    dicom = run_optional(OUTPUTS_MODULE, DICOM_FUNCTIONS, pool) if proc.dicom_outputs else off
    flags["stages"].update({"report": report.to_json(), "dicom": dicom.to_json()})
    for name, outcome in (("report", report), ("dicom", dicom)):
        if outcome.status not in (DONE, DISABLED):
            reasons.append(f"{name}_{outcome.status}")
    timings["outputs"] = time.perf_counter() - t
    write()
    log.info(
        "study %s %s: %d film(s), mHKA %s, reasons: %s, %.2f s",
        study.study_key,
        doc["status"],
        len(films),
        "n/a" if measured is None or measured.angles.mhka is None else f"{measured.angles.mhka:+.1f}",
        ", ".join(reasons) or "none",
        doc["timings_s"]["total"],
    )
    return doc
