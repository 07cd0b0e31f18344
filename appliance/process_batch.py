"""``xr3d process`` on several films: long-leg AP and knee AP / lateral films, one result per study.

The inputs are read and classified first (a bad file is a failure with its reason code; the others go
on). Films are then grouped by StudyInstanceUID, and each study gets one ``OUT/<uid>/`` folder:

* its long-leg AP film is measured exactly as :func:`appliance.process.process_film` does (landmarks,
  ``angles_2d``, CPAK, overlay and CPAK chart);
* each knee AP / lateral film is measured with the knee landmark model exactly as the study pipeline
  does (:func:`appliance.pipeline.knee.measure_knee_path`), into ``knee_films.<view>`` (JLCA on the
  knee AP; posterior tibial slope and knee flexion on the lateral) plus ``knee_overlay_<view>.png``.

A study with only knee films gets the same document with the long-leg parts empty (``input`` null,
``landmarks`` and ``angles_2d`` empty, ``cpak`` null). Two films of one view in one study: the later
input is measured and the earlier one is reported as a failure (``duplicate_view``), so nothing is
dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from appliance import __version__
from appliance.config import Settings
from appliance.errors import InputError, Xr3dError
from appliance.ingest.film import Film
from appliance.ingest.reader import read_film
from appliance.landmarks.confidence import LOW_CONFIDENCE
from appliance.landmarks.detector import LandmarkDetector
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.landmarks.knee_views import KNEE_VIEWS
from appliance.pipeline.knee import KneeDetectorHolder, measure_knee_path
from appliance.process import (
    LONGLEG_VIEW,
    RESULT_FILE,
    RESULT_SCHEMA,
    FilmMeasurement,
    ProcessResult,
    longleg_document,
    measure_film,
    publish_result,
    render_pictures,
    write_json_durably,
)

log = logging.getLogger(__name__)

__all__ = ["ProcessBatch", "ProcessFailure", "StudyProcessed", "process_films"]

MEASURED_VIEWS: Final = (LONGLEG_VIEW, *KNEE_VIEWS)


@dataclass(frozen=True)
class ProcessFailure:
    """An input that could not be used, with the reason code quarantine would record."""

    input: Path
    reason: str
    message: str


@dataclass(frozen=True)
class StudyProcessed:
    """One study's published result and the inputs measured into it."""

    result: ProcessResult
    inputs: tuple[Path, ...]


@dataclass(frozen=True)
class ProcessBatch:
    results: tuple[StudyProcessed, ...] = ()
    failures: tuple[ProcessFailure, ...] = ()


@dataclass
class _Study:
    uid: str
    longleg: tuple[Path, Film] | None = None
    knees: dict[str, tuple[Path, Film]] = field(default_factory=dict)


def _failure(path: Path, exc: Xr3dError) -> ProcessFailure:
    return ProcessFailure(path, exc.reason, str(exc))


def _group(paths: Sequence[Path], settings: Settings, failures: list[ProcessFailure]) -> dict[str, _Study]:
    studies: dict[str, _Study] = {}
    for raw in paths:
        path = Path(raw)
        try:
            if not path.is_file():
                raise InputError(f"{path.name}: no such file", reason="file_not_found")
            film = read_film(path, settings)
            if film.view not in MEASURED_VIEWS:
                raise InputError(
                    f"{path.name}: view is {film.view}; measured views are {', '.join(MEASURED_VIEWS)}",
                    reason="unsupported_view",
                )
        except InputError as exc:
            failures.append(_failure(path, exc))
            continue
        st = studies.setdefault(film.study_uid, _Study(film.study_uid))
        earlier = st.longleg if film.view == LONGLEG_VIEW else st.knees.get(film.view)
        if earlier is not None:
            failures.append(
                ProcessFailure(
                    earlier[0],
                    "duplicate_view",
                    f"[duplicate_view] {earlier[0].name}: another {film.view} film of the same study "
                    f"({path.name}) was given later and is measured instead",
                )
            )
        if film.view == LONGLEG_VIEW:
            st.longleg = (path, film)
        else:
            st.knees[film.view] = (path, film)
    return studies


def _empty_longleg(study: _Study) -> dict[str, Any]:
    sides = {f.side for _, f in study.knees.values() if f.side}
    return {
        "schema": RESULT_SCHEMA,
        "software": f"xr3d {__version__}",
        "status": "measured",
        "study_uid": study.uid,
        "side": sides.pop() if len(sides) == 1 else None,
        "apparent_side": None,
        "input": None,
        "landmarks": {},
        "angles_2d": {},
        "cpak": None,
        "flags": {"needs_review": False, "low_confidence_landmarks": [], "notes": ["no long-leg AP film"]},
        "engine": None,
        "model_versions": {},
        "timings_s": {},
    }


def _process_study(
    study: _Study,
    out_root: Path,
    detector: LandmarkDetector,
    knees: KneeDetectorHolder,
    low_confidence: float,
    knee_low_confidence: float,
    failures: list[ProcessFailure],
) -> StudyProcessed | None:
    t0 = time.perf_counter()
    measured: FilmMeasurement | None = None
    measured_path = Path()
    if study.longleg is not None:
        path, film = study.longleg
        measured_path = path
        try:
            measured = measure_film(path, film, detector, low_confidence=low_confidence)
        except InputError as exc:
            failures.append(_failure(path, exc))
    side = measured.film.side if measured is not None else None
    knee_films = dict(study.knees)
    knee_detector = None
    if knee_films:
        try:
            knee_detector = knees.get()
        except Xr3dError as exc:
            failures.extend(_failure(p, exc) for p, _ in knee_films.values())
            knee_films = {}
    if measured is None and not knee_films:
        return None
    doc: dict[str, Any] = {}

    def write(tmp: Path) -> list[str]:
        files = [RESULT_FILE]
        t_w = time.perf_counter()
        if measured is not None:
            files += render_pictures(measured, tmp)
            doc.update(longleg_document(measured, detector, {"render": time.perf_counter() - t_w}))
        else:
            doc.update(_empty_longleg(study))
        entries: dict[str, dict[str, Any]] = {}
        for view, (path, film) in knee_films.items():
            assert knee_detector is not None
            try:
                entry = measure_knee_path(
                    path, film, view, knee_detector, side, knee_low_confidence, tmp, path.name
                )
            except Xr3dError as exc:
                failures.append(_failure(path, exc))
                continue
            entries[view] = entry
            files.append(entry["overlay"])
        if measured is None and not entries:
            raise _NothingMeasuredError
        doc["knee_films"] = entries
        if entries:
            assert knee_detector is not None
            doc["model_versions"] = {**doc["model_versions"], **knee_detector.model_versions}
            doc["knee_engine"] = knee_detector.backend_choice.to_json()
            doc["flags"]["needs_review"] = bool(
                doc["flags"]["needs_review"] or any(e["flags"]["needs_review"] for e in entries.values())
            )
        doc["timings_s"] = {**doc["timings_s"], "total": time.perf_counter() - t0}
        doc["files"] = sorted(files)
        write_json_durably(tmp / RESULT_FILE, doc)
        return files

    try:
        final = publish_result(out_root, study.uid, write)
    except _NothingMeasuredError:
        return None
    log.info(
        "processed a study: long-leg %s, %d knee film(s), %.2f s",
        "measured" if measured is not None else "absent",
        len(doc["knee_films"]),
        doc["timings_s"]["total"],
    )
    inputs = ([] if measured is None else [measured_path]) + [knee_films[v][0] for v in doc["knee_films"]]
    res = ProcessResult(study_uid=study.uid, out_dir=final, files=tuple(doc["files"]), document=doc)
    return StudyProcessed(res, tuple(inputs))


class _NothingMeasuredError(Exception):
    """Every film of a study failed while its folder was being written: nothing is published."""


def process_films(
    paths: Sequence[Path],
    out_root: Path,
    settings: Settings,
    detector: LandmarkDetector,
    knees: KneeDetectorHolder | None = None,
    *,
    low_confidence: float = LOW_CONFIDENCE,
    knee_low_confidence: float = KNEE_LOW_CONFIDENCE,
) -> ProcessBatch:
    """Every input measured into its study's ``out_root/<uid>/`` (see the module docstring)."""
    failures: list[ProcessFailure] = []
    studies = _group(paths, settings, failures)
    holder = knees or KneeDetectorHolder(detector.models_dir)
    results: list[StudyProcessed] = []
    for study in studies.values():
        res = _process_study(study, out_root, detector, holder, low_confidence, knee_low_confidence, failures)
        if res is not None:
            results.append(res)
    return ProcessBatch(tuple(results), tuple(failures))
