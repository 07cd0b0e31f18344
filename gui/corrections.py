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


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def save_correction(
    study: Study,
    view: str,
    points: Mapping[str, tuple[float, float]],
    who: str,
    now: datetime | None = None,
) -> Path:
    """Write ``corrections/<timestamp>.json`` for ``study``; returns its path."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    angles = measure(study, view, points)
    original = study.landmarks.get(view, {})
    doc: dict[str, Any] = {
        "schema": CORRECTION_SCHEMA,
        "who": who,
        "when": when.isoformat().replace("+00:00", "Z"),
        "based_on_sha256": study.result_sha256,
        "view": view,
        "landmarks_2d": {
            view: {
                n: {
                    "col": float(c),
                    "row": float(r),
                    "moved": n not in original
                    or not (math.isclose(original[n].col, c) and math.isclose(original[n].row, r)),
                }
                for n, (c, r) in points.items()
            }
        },
        "angles_2d": {k: _finite(v) for k, v in angles.to_dict().items()},
        "cpak": angles.cpak.to_dict() if angles.cpak is not None else None,
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
