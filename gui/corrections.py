"""Measuring edited landmarks and saving a surgeon's correction beside the original result.

The angles of a correction come from the same call the pipeline makes
(``appliance.analytics.angles2d.measure_2d`` with the film's detector spacing and magnification, as in
``appliance.process``), so a corrected number means exactly what the original meant. A correction is
written to ``corrections/<UTC timestamp>.json`` (schema ``xr3d.correction/1``, docs/study-outputs.md);
``result.json`` is never touched.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.results import Angles2D
from appliance.landmarks.knee_views import measure_knee_film
from gui.study import CORRECTIONS_DIR, Study

log = logging.getLogger(__name__)

CORRECTION_SCHEMA: Final = "xr3d.correction/1"
Points = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Correction:
    """A saved correction: who, when, the landmarks and what they measure."""

    path: Path
    who: str
    when: str
    view: str
    landmarks: dict[str, dict[str, tuple[float, float]]]
    based_on_sha256: str


def original_points(study: Study, view: str) -> Points:
    return {n: (p.col, p.row) for n, p in study.landmarks.get(view, {}).items()}


def measure(study: Study, view: str, points: Mapping[str, tuple[float, float]]) -> Angles2D:
    """Angles of ``points`` on ``view`` with that film's spacing, as the pipeline measures them."""
    side = study.side if study.side in ("L", "R") else None
    film = study.films.get(view)
    if film is None:
        # No film record (a study that was only ingested): nothing can be measured in millimetres.
        return measure_2d({}, 1.0, 1.0, side)
    return measure_2d(dict(points), film.detector_spacing_mm, film.magnification, side)


def original_knee_points(study: Study, view: str) -> Points:
    knee = study.knee_films.get(view)
    return {n: (p.col, p.row) for n, p in knee.landmarks.items()} if knee is not None else {}


def measure_knee(
    study: Study, view: str, points: Mapping[str, tuple[float, float]]
) -> dict[str, float | None]:
    """A knee film's measurements (JLCA; slope and flexion) from ``points``, as the pipeline makes them
    (``appliance.landmarks.knee_views.measure_knee_film`` with that film's detector spacing)."""
    film = study.films.get(view)
    spacing, mag = (film.detector_spacing_mm, film.magnification) if film is not None else ((1.0, 1.0), 1.0)
    values = measure_knee_film(view, dict(points), spacing, mag)
    return {k: _finite(v) for k, v in values.items()}


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _marks(points: Mapping[str, tuple[float, float]], original: Points) -> dict[str, dict[str, Any]]:
    return {
        n: {
            "col": float(c),
            "row": float(r),
            "moved": n not in original
            or not (math.isclose(original[n][0], c) and math.isclose(original[n][1], r)),
        }
        for n, (c, r) in points.items()
    }


def save_correction(
    study: Study,
    view: str,
    points: Mapping[str, tuple[float, float]],
    who: str,
    now: datetime | None = None,
    knee_points: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> Path:
    """Write ``corrections/<timestamp>.json`` for ``study``; returns its path. ``knee_points`` (knee view
    -> landmarks) adds the knee films' landmarks and their re-made ``knee_measurements``."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    angles = measure(study, view, points)
    doc: dict[str, Any] = {
        "schema": CORRECTION_SCHEMA,
        "who": who,
        "when": when.isoformat().replace("+00:00", "Z"),
        "based_on_sha256": study.result_sha256,
        "view": view,
        "landmarks_2d": {
            view: _marks(points, original_points(study, view)),
            **{k: _marks(pts, original_knee_points(study, k)) for k, pts in (knee_points or {}).items()},
        },
        "angles_2d": {k: _finite(v) for k, v in angles.to_dict().items()},
        "cpak": angles.cpak.to_dict() if angles.cpak is not None else None,
        "knee_measurements": {k: measure_knee(study, k, pts) for k, pts in (knee_points or {}).items()},
    }
    folder = study.folder / CORRECTIONS_DIR
    folder.mkdir(exist_ok=True)
    stamp = when.strftime("%Y%m%dT%H%M%S.%fZ")
    path = folder / f"{stamp}.json"
    tmp = folder / f".{stamp}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    log.info("saved a landmark correction for study %s (%s)", study.uid, path.name)
    return path


def load_correction(path: Path) -> Correction:
    doc = json.loads(path.read_text(encoding="utf-8"))
    marks = {
        view: {n: (float(p["col"]), float(p["row"])) for n, p in pts.items()}
        for view, pts in (doc.get("landmarks_2d") or {}).items()
    }
    view = str(doc.get("view") or next(iter(marks), "longleg_ap"))
    return Correction(
        path=path,
        who=str(doc.get("who", "")),
        when=str(doc.get("when", "")),
        view=view,
        landmarks=marks,
        based_on_sha256=str(doc.get("based_on_sha256", "")),
    )


def latest_correction(study: Study) -> Correction | None:
    """The newest correction made on this very result (a re-processed study starts from its original)."""
    for path in reversed(study.corrections()):
        try:
            c = load_correction(path)
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("unreadable correction %s in study %s", path.name, study.uid)
            continue
        if c.based_on_sha256 == study.result_sha256:
            return c
    return None
