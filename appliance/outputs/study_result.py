"""One typed view of a study's result document for the DICOM and PDF writers.

Two schemas are read: ``xr3d.result/1`` (docs/study-outputs.md: ``films``, ``landmarks_2d`` per view,
``angles_3d``, ``reconstruction``) and ``xr3d.process/1`` (docs/result-schema.md: one ``input`` film and
its ``landmarks``), which ``xr3d process`` writes today. Anything else raises InputError
(``bad_result``). Values that could not be measured stay ``None``; nothing is invented.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from appliance.errors import InputError

__all__ = [
    "ANGLE_KEYS_2D",
    "ANGLE_KEYS_3D",
    "SUPPORTED_SCHEMAS",
    "Consistency",
    "Cpak",
    "FilmInfo",
    "Landmark",
    "StudyResult",
    "parse_result",
]

SUPPORTED_SCHEMAS: Final = ("xr3d.result/1", "xr3d.process/1")
ANGLE_KEYS_2D: Final = (
    "mHKA",
    "mLDFA",
    "MPTA",
    "JLCA",
    "aHKA",
    "JLO",
    "MAD_mm",
    "femoral_mech_axis_mm",
    "tibial_mech_axis_mm",
)
ANGLE_KEYS_3D: Final = (*ANGLE_KEYS_2D, "condylar_twist_deg", "tibial_slope_deg", "knee_flexion_deg")
LANDMARK_ORDER: Final = ("FHC", "FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC", "AC")


@dataclass(frozen=True)
class Landmark:
    """A landmark in film pixels: centre of the first pixel at (0, 0), as in result.json."""

    name: str
    col: float
    row: float
    confidence: float | None
    low_confidence: bool


@dataclass(frozen=True)
class FilmInfo:
    view: str
    sop_uid: str | None
    series_uid: str | None
    rows: int | None
    columns: int | None


@dataclass(frozen=True)
class Cpak:
    type: int
    label: str
    ahka_category: str | None
    jlo_category: str | None
    borderline: tuple[str, ...] = ()  # neighbouring types within 1 deg (results before 2026-11-24: none)


@dataclass(frozen=True)
class Consistency:
    consistent: bool
    score: float | None
    threshold: float | None
    registration_residual_mm: float | None
    per_view: Mapping[str, float] = field(default_factory=dict)
    # the AP-vs-lateral cross-view check (appliance/recon/cross_view.py), when it ran
    cross_view_score: float | None = None
    cross_view_threshold: float | None = None


@dataclass(frozen=True)
class StudyResult:
    schema: str
    software: str
    status: str
    study_uid: str
    side: str | None
    films: Mapping[str, FilmInfo]
    measured_view: str | None
    landmarks: Mapping[str, tuple[Landmark, ...]]
    angles_2d: Mapping[str, float | None]
    missing: Mapping[str, tuple[str, ...]]
    cpak: Cpak | None
    angles_3d: Mapping[str, float | None] | None
    consistency: Consistency | None
    reconstruction_views: tuple[str, ...]
    landmarks_3d: Mapping[str, tuple[float, float, float]]  # LPS mm in the reconstruction's frame
    needs_review: bool
    review_reasons: tuple[str, ...]
    low_confidence_landmarks: tuple[str, ...]
    flagged_values: Mapping[str, tuple[str, ...]]
    model_versions: Mapping[str, str]
    engine: str | None
    # knee_films (docs/study-outputs.md): view -> measurement -> degrees, measured films only
    knee_measurements: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)

    def angle(self, key: str) -> float | None:
        return self.angles_2d.get(key)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _knee_measurements(raw: Any) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    if isinstance(raw, Mapping):
        for view, entry in raw.items():
            if isinstance(entry, Mapping) and entry.get("status") == "measured":
                values = entry.get("measurements") or {}
                if isinstance(values, Mapping):
                    out[str(view)] = {str(k): _num(v) for k, v in values.items()}
    return out


def _landmarks(raw: Mapping[str, Any] | None) -> tuple[Landmark, ...]:
    if not raw:
        return ()
    order = {n: i for i, n in enumerate(LANDMARK_ORDER)}
    out = []
    for name in sorted(raw, key=lambda n: (order.get(n, len(order)), n)):
        p = raw[name]
        col, row = _num(p.get("col")), _num(p.get("row"))
        if col is None or row is None:
            continue  # an undetected landmark has no position to write
        out.append(
            Landmark(
                name=str(name),
                col=col,
                row=row,
                confidence=_num(p.get("confidence")),
                low_confidence=bool(p.get("low_confidence", False)),
            )
        )
    return tuple(out)


def _points_3d(raw: Any) -> dict[str, tuple[float, float, float]]:
    """name -> (x, y, z) from ``{name: [x, y, z]}`` or ``{name: {"x":, "y":, "z":}}``; others skipped."""
    if not isinstance(raw, Mapping):
        return {}
    out = {}
    for name, p in raw.items():
        xyz = [p.get(k) for k in ("x", "y", "z")] if isinstance(p, Mapping) else p
        if isinstance(xyz, list | tuple) and len(xyz) == 3:
            vals = [_num(v) for v in xyz]
            if all(v is not None for v in vals):
                out[str(name)] = (float(vals[0]), float(vals[1]), float(vals[2]))  # type: ignore[arg-type]
    return out


def _films(doc: Mapping[str, Any]) -> dict[str, FilmInfo]:
    if doc["schema"] == "xr3d.process/1":
        inp = doc.get("input") or {}
        view = str(inp.get("view") or "longleg_ap")
        raw: Mapping[str, Any] = {view: inp}
    else:
        raw = doc.get("films") or {}
    films = {}
    for view, f in raw.items():
        films[str(view)] = FilmInfo(
            view=str(view),
            sop_uid=f.get("sop_uid"),
            series_uid=f.get("series_uid"),
            rows=f.get("rows"),
            columns=f.get("columns"),
        )
    return films


# The study pipeline's names for reasons this module also derives itself.
_REASON_ALIASES: Final = {"reconstruction_not_consistent_with_films": "reconstruction_not_consistent"}


def _review_reasons(flags: Mapping[str, Any], consistency: Consistency | None) -> tuple[str, ...]:
    reasons: list[str] = [_REASON_ALIASES.get(str(r), str(r)) for r in flags.get("reasons") or []]
    if flags.get("low_confidence_landmarks"):
        reasons.append("low_confidence")
    reasons.extend(str(k) for k in (flags.get("implausible") or {}))
    if flags.get("side_mismatch"):
        reasons.append("side_mismatch")
    if flags.get("spacing"):
        reasons.append(str(flags["spacing"]))
    if consistency is not None and not consistency.consistent:
        reasons.append("reconstruction_not_consistent")
    return tuple(dict.fromkeys(reasons))  # unique, first-seen order


def _needs_review(
    flags: Mapping[str, Any], reasons: tuple[str, ...], consistency: Consistency | None
) -> bool:
    """The document's own verdict when it has one (a reason such as "reconstruction unavailable" does
    not make the 2D values suspect); derived from the reasons otherwise. A reconstruction that is not
    consistent with the films always needs review."""
    if consistency is not None and not consistency.consistent:
        return True
    if "needs_review" in flags:
        return bool(flags["needs_review"])
    return bool(reasons)


def parse_result(doc: Mapping[str, Any]) -> StudyResult:
    """The writers' view of ``doc``; raises InputError(``bad_result``) for an unknown schema."""
    schema = doc.get("schema") if isinstance(doc, Mapping) else None
    if schema not in SUPPORTED_SCHEMAS:
        raise InputError(
            f"result schema {schema!r} is not one of {', '.join(SUPPORTED_SCHEMAS)}", reason="bad_result"
        )
    if not doc.get("study_uid"):
        raise InputError("result has no study_uid", reason="bad_result")
    films = _films(doc)
    if schema == "xr3d.process/1":
        view = next(iter(films)) if films else None
        landmarks = {view: _landmarks(doc.get("landmarks"))} if view else {}
    else:
        landmarks = {str(v): _landmarks(lm) for v, lm in (doc.get("landmarks_2d") or {}).items()}
        view = "longleg_ap" if "longleg_ap" in landmarks else next(iter(landmarks), None)
    angles = {k: _num((doc.get("angles_2d") or {}).get(k)) for k in ANGLE_KEYS_2D}
    raw3d = doc.get("angles_3d")
    angles_3d = {k: _num(raw3d.get(k)) for k in ANGLE_KEYS_3D if k in raw3d} if raw3d else None
    cpak_raw = doc.get("cpak")
    cpak = (
        Cpak(
            type=int(cpak_raw["type"]),
            label=str(cpak_raw["label"]),
            ahka_category=cpak_raw.get("ahka_category"),
            jlo_category=cpak_raw.get("jlo_category"),
            borderline=tuple(str(x) for x in cpak_raw.get("borderline") or ()),
        )
        if cpak_raw
        else None
    )
    recon = doc.get("reconstruction") or None
    consistency = None
    if recon and recon.get("consistency"):
        c = recon["consistency"]
        consistency = Consistency(
            consistent=bool(c.get("consistent")),
            score=_num(c.get("score")),
            threshold=_num(c.get("threshold")),
            registration_residual_mm=_num(c.get("registration_residual_mm")),
            per_view={str(k): float(v) for k, v in (c.get("per_view") or {}).items() if _num(v) is not None},
            cross_view_score=_num((c.get("cross_view") or {}).get("score")),
            cross_view_threshold=_num((c.get("cross_view") or {}).get("threshold")),
        )
    flags = doc.get("flags") or {}
    reasons = _review_reasons(flags, consistency)
    low = tuple(sorted(flags.get("low_confidence_landmarks") or ()))
    return StudyResult(
        schema=str(schema),
        software=str(doc.get("software") or ""),
        status=str(doc.get("status") or ""),
        study_uid=str(doc["study_uid"]),
        side=doc.get("side") or None,
        films=films,
        measured_view=view,
        landmarks=landmarks,
        angles_2d=angles,
        missing={str(k): tuple(v) for k, v in (flags.get("missing") or {}).items()},
        cpak=cpak,
        angles_3d=angles_3d,
        consistency=consistency,
        reconstruction_views=tuple(recon.get("views_used") or ()) if recon else (),
        landmarks_3d=_points_3d(doc.get("landmarks_3d")),
        needs_review=_needs_review(flags, reasons, consistency),
        review_reasons=reasons,
        low_confidence_landmarks=low,
        flagged_values={str(k): tuple(v) for k, v in (flags.get("flagged_values") or {}).items()},
        model_versions={str(k): str(v) for k, v in (doc.get("model_versions") or {}).items()},
        engine=(doc.get("engine") or {}).get("backend"),
        knee_measurements=_knee_measurements(doc.get("knee_films")),
    )
