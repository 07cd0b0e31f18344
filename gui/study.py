"""One processed study read from the outbox (docs/study-outputs.md), as typed values for the GUI.

Reads ``result.json`` in the shared ``xr3d.result/1`` shape; an ``xr3d.process/1`` document (written by
``xr3d process`` before the study pipeline existed) is mapped into the same shape. The patient's name is
read from a film header only for display in the worklist; it is never logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pydicom

from appliance.errors import InputError

log = logging.getLogger(__name__)

RESULT_FILE: Final = "result.json"
CORRECTIONS_DIR: Final = "corrections"
VIEW_ORDER: Final = ("longleg_ap", "knee_ap", "knee_lat")
VIEW_TITLES: Final = {"longleg_ap": "Long-leg AP", "knee_ap": "Knee AP", "knee_lat": "Knee lateral"}


@dataclass(frozen=True)
class FilmInfo:
    """One film of the study: where its pixels are and the spacing the angles are measured with."""

    view: str
    path: Path | None
    rows: int
    columns: int
    detector_spacing_mm: tuple[float, float]
    magnification: float


@dataclass(frozen=True)
class Landmark:
    col: float
    row: float
    confidence: float | None = None
    low_confidence: bool = False


@dataclass(frozen=True)
class KneeFilm:
    """What the knee-film model found on one knee AP / lateral film (result.json ``knee_films``)."""

    view: str
    status: str
    landmarks: dict[str, Landmark]
    measurements: dict[str, float | None]
    reason: str = ""


@dataclass(frozen=True)
class Study:
    """A processed study: the result document with its pieces typed, and the folder it lives in."""

    uid: str
    folder: Path
    status: str
    side: str | None
    films: dict[str, FilmInfo]
    landmarks: dict[str, dict[str, Landmark]]
    angles: dict[str, float | None]
    cpak: dict[str, Any] | None
    flags: dict[str, Any]
    reconstruction: dict[str, Any] | None
    result_sha256: str
    document: Mapping[str, Any] = field(repr=False)
    knee_films: dict[str, KneeFilm] = field(default_factory=dict)

    @property
    def needs_review(self) -> bool:
        return bool(self.flags.get("needs_review"))

    def file(self, name: str) -> Path | None:
        """A file of the study folder, or None when it is absent."""
        p = self.folder / name
        return p if p.is_file() else None

    def corrections(self) -> list[Path]:
        """Saved corrections, oldest first (names are UTC timestamps)."""
        d = self.folder / CORRECTIONS_DIR
        return sorted(d.glob("*.json")) if d.is_dir() else []


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _from_process_schema(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``xr3d.process/1`` -> the ``xr3d.result/1`` keys the GUI reads (the film is not in the folder)."""
    inp = doc.get("input") or {}
    film = {
        "file": None,
        "rows": inp.get("rows", 0),
        "columns": inp.get("columns", 0),
        "detector_spacing_mm": inp.get("detector_spacing_mm") or inp.get("spacing_mm") or [1.0, 1.0],
        "magnification": inp.get("magnification"),
    }
    out = dict(doc)
    out["films"] = {"longleg_ap": film}
    out["landmarks_2d"] = {"longleg_ap": doc.get("landmarks") or {}}
    out.setdefault("reconstruction", None)
    return out


def _films(folder: Path, raw: Mapping[str, Any]) -> dict[str, FilmInfo]:
    films: dict[str, FilmInfo] = {}
    for view in sorted(raw, key=lambda v: VIEW_ORDER.index(v) if v in VIEW_ORDER else len(VIEW_ORDER)):
        f = raw[view] or {}
        path = folder / f["file"] if f.get("file") else None
        sp = f.get("detector_spacing_mm") or f.get("spacing_mm") or [1.0, 1.0]
        films[view] = FilmInfo(
            view=view,
            path=path if path is not None and path.is_file() else None,
            rows=int(f.get("rows") or 0),
            columns=int(f.get("columns") or 0),
            detector_spacing_mm=(float(sp[0]), float(sp[1])),
            magnification=_num(f.get("magnification")) or 1.0,
        )
    return films


def _landmarks(raw: Mapping[str, Any]) -> dict[str, dict[str, Landmark]]:
    out: dict[str, dict[str, Landmark]] = {}
    for view, pts in (raw or {}).items():
        out[view] = {
            name: Landmark(
                float(p["col"]), float(p["row"]), _num(p.get("confidence")), bool(p.get("low_confidence"))
            )
            for name, p in (pts or {}).items()
            if p is not None and _num(p.get("col")) is not None and _num(p.get("row")) is not None
        }
    return out


def _knee_films(raw: Any) -> dict[str, KneeFilm]:
    out: dict[str, KneeFilm] = {}
    if not isinstance(raw, Mapping):
        return out
    for view, entry in raw.items():
        if not isinstance(entry, Mapping):
            continue
        marks = _landmarks({view: entry.get("landmarks") or {}}).get(view, {})
        values = {str(k): _num(v) for k, v in (entry.get("measurements") or {}).items()}
        status, reason = str(entry.get("status") or ""), str(entry.get("reason") or "")
        out[str(view)] = KneeFilm(str(view), status, marks, values, reason)
    return out


def load_study(folder: Path) -> Study:
    """Read ``folder/result.json``; raises InputError (reason ``bad_result``) when it is unusable."""
    folder = Path(folder)
    path = folder / RESULT_FILE
    try:
        raw = path.read_bytes()
        doc = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder.name}: cannot read result.json ({exc})", reason="bad_result") from exc
    if not isinstance(doc, dict):
        raise InputError(f"{folder.name}: result.json is not an object", reason="bad_result")
    if doc.get("schema") == "xr3d.process/1":
        doc = _from_process_schema(doc)
    angles = {k: _num(v) for k, v in (doc.get("angles_2d") or {}).items()}
    return Study(
        uid=str(doc.get("study_uid") or folder.name),
        folder=folder,
        status=str(doc.get("status") or "unknown"),
        side=doc.get("side"),
        films=_films(folder, doc.get("films") or {}),
        landmarks=_landmarks(doc.get("landmarks_2d") or {}),
        angles=angles,
        cpak=doc.get("cpak"),
        flags=dict(doc.get("flags") or {}),
        reconstruction=doc.get("reconstruction"),
        result_sha256=hashlib.sha256(raw).hexdigest(),
        document=doc,
        knee_films=_knee_films(doc.get("knee_films")),
    )


def patient_label(study_folder: Path, films: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(patient name, study date) from the first film header, for display only (never logged)."""
    film_dir = study_folder / "films"
    candidates = sorted(film_dir.glob("*.dcm")) if film_dir.is_dir() else []
    for p in candidates:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["PatientName", "StudyDate"])
        except Exception:  # an unreadable header only costs the name column
            log.debug("no readable header in a film of study folder %s", study_folder.name)
            continue
        name = str(ds.get("PatientName", "") or "").replace("^", " ").strip()
        date = str(ds.get("StudyDate", "") or "")
        if len(date) == 8:
            date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
        return name, date
    return "", ""
