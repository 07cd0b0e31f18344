"""What the surgeon's one-page report says, decided separately from how it is drawn (pure functions).

``report_content(result, source)`` turns the result document and the source film's header into a
:class:`ReportContent`: header lines, one :class:`AngleRow` per value (with its normal range and
whether it lies outside it), warning banners, and the footer. :mod:`appliance.outputs.report_pdf`
only lays it out.

Normal ranges (team clinical reference ``alignment.md``, "Angles"): mLDFA 85-90 deg, MPTA 85-90 deg,
JLCA 0-2 deg. aHKA and JLO show the CPAK *neutral* bands (aHKA -2..+2, JLO 177..183; MacDessi et al.,
Bone Joint J 2021); a value on a boundary counts as inside. The reference gives no normal range for mHKA
and MAD, so none is shown and they are never highlighted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from appliance.outputs.study_result import StudyResult, parse_result

__all__ = ["NORMAL_RANGES", "AngleRow", "ReportContent", "format_person_name", "report_content"]

NORMAL_RANGES: Final[dict[str, tuple[float, float, str]]] = {
    "mLDFA": (85.0, 90.0, "85 - 90"),
    "MPTA": (85.0, 90.0, "85 - 90"),
    "JLCA": (0.0, 2.0, "0 - 2"),
    "aHKA": (-2.0, 2.0, "-2 - +2 (CPAK neutral)"),
    "JLO": (177.0, 183.0, "177 - 183 (CPAK neutral)"),
}
RANGE_SOURCE: Final = (
    "Normal ranges: mLDFA, MPTA, JLCA from the xr3d clinical reference (alignment.md); aHKA/JLO neutral "
    "bands and CPAK types: MacDessi et al., Bone Joint J 2021. mHKA: 0 = neutral, negative = varus."
)
_LABELS: Final[dict[str, tuple[str, str]]] = {
    "mHKA": ("mHKA", "deg"),
    "mLDFA": ("mLDFA", "deg"),
    "MPTA": ("MPTA", "deg"),
    "JLCA": ("JLCA", "deg"),
    "aHKA": ("aHKA", "deg"),
    "JLO": ("JLO", "deg"),
    "MAD_mm": ("MAD", "mm"),
}
DISCLAIMER: Final = (
    "Planning aid. Values are computed automatically from the radiographs and must be reviewed by a "
    "qualified clinician before use; not for diagnostic use without that review."
)
NOT_CONSISTENT: Final = (
    "3D RECONSTRUCTION NOT CONSISTENT WITH THE FILMS: do not rely on the 3D model or 3D values"
)
_REASON_TEXT: Final[dict[str, str]] = {
    "low_confidence": "low-confidence landmark(s)",
    "femoral_axis_tilt": "femoral axis implausibly tilted",
    "tibial_axis_tilt": "tibial axis implausibly tilted",
    "femoral_length": "femoral length implausible",
    "tibial_length": "tibial length implausible",
    "side_mismatch": "side label differs from the anatomy",
    "default_spacing": "pixel spacing assumed (not from the film)",
    "reconstruction_not_consistent": "3D reconstruction not consistent with the films",
    "landmarks_need_review": "landmarks need review",
    "side_conflict": "the films disagree on the side",
    "no_longleg_film": "no long-leg film",
    "view_received_more_than_once": "a view was received more than once",
    "reconstruction_unavailable": "no 3D reconstruction in this build",
    "reconstruction_failed": "3D reconstruction failed",
}


@dataclass(frozen=True)
class AngleRow:
    key: str
    label: str
    value_text: str
    value_3d_text: str | None
    normal_text: str
    out_of_range_2d: bool
    out_of_range_3d: bool
    flagged: bool  # depends on a low-confidence or implausible landmark

    @property
    def out_of_range(self) -> bool:
        return self.out_of_range_2d or self.out_of_range_3d


@dataclass(frozen=True)
class ReportContent:
    title: str
    header: tuple[tuple[str, str], ...]  # (label, value) pairs; may contain the patient's name
    rows: tuple[AngleRow, ...]
    has_3d: bool
    cpak_text: str
    banners: tuple[str, ...]  # most important first; shown prominently
    notes: str | None  # flags that do not call for review (e.g. no reconstruction), in small print
    consistency_text: str | None
    not_consistent: bool
    knee_text: str | None
    footer: tuple[str, ...]
    pdf_title: str


def format_person_name(value: Any) -> str:
    """``FAMILY^GIVEN^MIDDLE`` as ``FAMILY, GIVEN MIDDLE`` (empty stays empty)."""
    if not value:
        return ""
    pn = PersonName(str(value))
    given = " ".join(p for p in (pn.given_name, pn.middle_name) if p)
    family = pn.family_name or ""
    return f"{family}, {given}" if family and given else family or given


def _date(value: Any) -> str:
    s = str(value or "")
    return f"{s[:4]}-{s[4:6]}-{s[6:8]}" if len(s) == 8 and s.isdigit() else s


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    if unit == "deg":
        return f"{value:+.1f}\N{DEGREE SIGN}" if abs(value) < 45 else f"{value:.1f}\N{DEGREE SIGN}"
    return f"{value:.1f} {unit}"


def _out_of_range(key: str, value: float | None) -> bool:
    rng = NORMAL_RANGES.get(key)
    return value is not None and rng is not None and not rng[0] <= value <= rng[1]


def _rows(r: StudyResult) -> tuple[AngleRow, ...]:
    rows = []
    for key, (label, unit) in _LABELS.items():
        value = r.angles_2d.get(key)
        v3 = r.angles_3d.get(key) if r.angles_3d is not None else None
        text = _fmt(value, unit)
        if value is None and key in r.missing:
            text = f"not measured (no {', '.join(r.missing[key])})"
        rows.append(
            AngleRow(
                key=key,
                label=label,
                value_text=text,
                value_3d_text=_fmt(v3, unit) if r.angles_3d is not None else None,
                normal_text=NORMAL_RANGES[key][2] if key in NORMAL_RANGES else "-",
                out_of_range_2d=_out_of_range(key, value),
                out_of_range_3d=_out_of_range(key, v3),
                flagged=key in r.flagged_values,
            )
        )
    return tuple(rows)


def _reason_texts(r: StudyResult) -> list[str]:
    return [_REASON_TEXT.get(x, x.replace("_", " ")) for x in r.review_reasons]


def _banners(r: StudyResult) -> tuple[str, ...]:
    out = []
    if r.consistency is not None and not r.consistency.consistent:
        out.append(NOT_CONSISTENT)
    if r.needs_review:
        out.append("NEEDS REVIEW: " + "; ".join(_reason_texts(r) or ["flagged by xr3d"]))
    if r.low_confidence_landmarks:
        out.append("Low-confidence landmarks: " + ", ".join(r.low_confidence_landmarks))
    if r.status and r.status != "measured":
        out.append(f"Result status: {r.status}")
    return tuple(out)


_KNEE_LABELS = {
    "JLCA": "JLCA",
    "tibial_slope_deg": "posterior tibial slope",
    "knee_flexion_deg": "knee flexion",
}
_KNEE_VIEWS = {"knee_ap": "knee AP", "knee_lat": "lateral"}


def _knee_text(r: StudyResult) -> str | None:
    """One line with the knee films' own measurements (knee-film model), or None without any."""
    parts = []
    for view in sorted(r.knee_measurements):
        vals = [f"{_KNEE_LABELS.get(k, k)} {_fmt(v, 'deg')}" for k, v in r.knee_measurements[view].items()]
        if vals:
            parts.append(f"{', '.join(vals)} ({_KNEE_VIEWS.get(view, view)})")
    return "Knee films: " + "; ".join(parts) if parts else None


def report_content(result: Mapping[str, Any] | StudyResult, source: Dataset | None) -> ReportContent:
    """Everything the report shows (module docstring). ``source`` supplies patient and study details;
    without it those fields read "unknown"."""
    r = result if isinstance(result, StudyResult) else parse_result(result)
    src = source if source is not None else Dataset()
    header = (
        ("Patient", format_person_name(src.get("PatientName")) or "unknown"),
        ("Patient ID", str(src.get("PatientID") or "unknown")),
        ("Birth date", _date(src.get("PatientBirthDate")) or "unknown"),
        ("Sex", str(src.get("PatientSex") or "unknown")),
        ("Study date", _date(src.get("StudyDate")) or "unknown"),
        ("Accession", str(src.get("AccessionNumber") or "-")),
        ("Study", str(src.get("StudyDescription") or "-")),
        ("Side", {"L": "left", "R": "right"}.get(r.side or "", "not recorded")),
        ("Films", ", ".join(sorted(r.films)) or "-"),
    )
    if r.cpak is not None:
        cpak = f"CPAK type {r.cpak.label}"
        if r.cpak.ahka_category and r.cpak.jlo_category:
            cpak += f" (aHKA {r.cpak.ahka_category}, JLO {r.cpak.jlo_category.replace('_', ' ')})"
        if r.cpak.borderline:
            cpak += f"; borderline with {', '.join(r.cpak.borderline)} (an angle within 1° of a boundary)"
        if "CPAK" in r.flagged_values:
            cpak += " - check landmarks"
    else:
        cpak = "CPAK type: not determined (aHKA or JLO not measured)"
    consistency_text = None
    if r.consistency is not None:
        c = r.consistency
        verdict = "consistent with the films" if c.consistent else "NOT consistent with the films"
        score = f"score {c.score:.2f}" if c.score is not None else "score n/a"
        thr = f" (threshold {c.threshold:.2f})" if c.threshold is not None else ""
        consistency_text = f"3D reconstruction: {verdict}; {score}{thr}"
        if c.cross_view_score is not None:
            # The AP and lateral films checked against each other (a pair from two patients fails here).
            cv = c.cross_view_threshold
            cv_thr = f" (threshold {cv:.2f})" if cv is not None else ""
            consistency_text += f"; AP/lateral agreement {c.cross_view_score:.2f}{cv_thr}"
    models = ", ".join(f"{k} {v}" for k, v in sorted(r.model_versions.items())) or "n/a"
    footer = (
        DISCLAIMER,
        RANGE_SOURCE,
        f"Software: {r.software or 'xr3d'}; models: {models}; engine: {r.engine or 'n/a'}.",
        f"Study Instance UID {r.study_uid}",
    )
    return ReportContent(
        title="Lower limb alignment report",
        header=header,
        rows=_rows(r),
        has_3d=r.angles_3d is not None,
        cpak_text=cpak,
        banners=_banners(r),
        notes=None if r.needs_review or not r.review_reasons else "Notes: " + "; ".join(_reason_texts(r)),
        consistency_text=consistency_text,
        not_consistent=r.consistency is not None and not r.consistency.consistent,
        knee_text=_knee_text(r),
        footer=footer,
        pdf_title="xr3d lower limb alignment report",
    )
