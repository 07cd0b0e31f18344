"""Export from the workstation: the report PDF and the DICOM SR of the result as the surgeon left it.

Report: an unedited study's own ``report.pdf`` (written by the service) is copied as it is. When the
landmarks were corrected, or the study has no report.pdf, a one-page PDF is drawn here with Qt's PDF
writer (no network, no extra dependency): current values beside the pipeline's, who corrected them and
when, the film view with its overlay and the CPAK chart.

SR: the service's SR writer (``appliance.outputs.sr.write_sr``) is given the result with the corrected
landmarks, angles and CPAK type, the surgeon as the verifying observer (VERIFIED, FINAL) and the study's
automatic SR (``dicom/sr.dcm``) as the predecessor it supersedes. Without that writer installed the
button is disabled and says why.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Final

import pydicom
from PySide6.QtCore import QMarginsF, QRectF, Qt
from PySide6.QtGui import QFont, QPageLayout, QPageSize, QPainter, QPdfWriter
from PySide6.QtWidgets import QWidget

from gui.angle_panel import NORMAL, ROWS, fmt
from gui.study_panel import EditSession

log = logging.getLogger(__name__)

SR_WRITER_MODULE: Final = "appliance.outputs.sr"
AUTOMATIC_SR: Final = "dicom/sr.dcm"


def sr_export_unavailable() -> str | None:
    """Why SR export cannot be offered, or None when it can."""
    try:
        found = importlib.util.find_spec(SR_WRITER_MODULE) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return "SR export needs the DICOM SR writer (appliance/outputs), which is not installed"
    return None


def corrected_result(session: EditSession) -> dict[str, Any]:
    """The study's result document with the edited landmarks and what they measure."""
    doc: dict[str, Any] = copy.deepcopy(dict(session.study.document))
    view = session.view
    marks = doc.setdefault("landmarks_2d", {}).setdefault(view, {})
    for name, (col, row) in session.points.items():
        entry = dict(marks.get(name) or {})
        moved = not (
            math.isclose(entry.get("col", math.nan), col) and math.isclose(entry.get("row", math.nan), row)
        )
        entry.update({"col": float(col), "row": float(row)})
        if moved:
            entry["corrected"] = True
        marks[name] = entry
    angles = session.measured()
    doc["angles_2d"] = {
        k: (v if v is not None and math.isfinite(v) else None) for k, v in angles.to_dict().items()
    }
    doc["cpak"] = angles.cpak.to_dict() if angles.cpak is not None else None
    knees = doc.get("knee_films") or {}
    for view, points in session.knee_points.items():
        knee = knees.get(view)
        if not isinstance(knee, dict):
            continue
        marks = knee.setdefault("landmarks", {})
        for name, (col, row) in points.items():
            m = dict(marks.get(name) or {})
            if not (math.isclose(m.get("col", math.nan), col) and math.isclose(m.get("row", math.nan), row)):
                m["corrected"] = True
            m.update({"col": float(col), "row": float(row)})
            marks[name] = m
        knee["measurements"] = session.knee_measured(view)
    if session.correction is not None:
        doc["correction"] = {
            "who": session.correction.who,
            "when": session.correction.when,
            "file": f"corrections/{session.correction.path.name}",
        }
    return doc


def export_sr(session: EditSession, target: Path, who: str, organization: str) -> Path:
    """Write the corrected result as a verified Comprehensive 3D SR that supersedes the automatic one."""
    from appliance.outputs import load_films
    from appliance.outputs.sr import Verification, write_sr

    doc = corrected_result(session)
    sources = load_films(session.study.folder, doc)
    auto = session.study.folder / AUTOMATIC_SR
    predecessor = pydicom.dcmread(auto) if auto.is_file() else None
    # A DICOM person name; a login name is one component, marked as such by a trailing caret.
    name = who.replace("\\", " ").strip() or "unknown"
    verification = Verification(observer_name=name if "^" in name else f"{name}^", organization=organization)
    written = write_sr(Path(target), doc, sources, verification=verification, predecessor=predecessor)
    log.info("exported a verified SR for study %s", session.study.uid)
    return Path(written)


def write_report_pdf(session: EditSession, film_view: QWidget, chart: QWidget, target: Path) -> Path:
    """Write the report for the open study to ``target`` (see module docstring); returns ``target``."""
    target = Path(target)
    original = session.study.file("report.pdf")
    if original is not None and not session.differs_from_pipeline and session.correction is None:
        shutil.copyfile(original, target)
        log.info("exported the service's report for study %s", session.study.uid)
        return target
    now, orig = session.measured(), session.original()
    writer = QPdfWriter(str(target))
    writer.setPageLayout(
        QPageLayout(
            QPageSize(QPageSize.PageSizeId.A4), QPageLayout.Orientation.Portrait, QMarginsF(15, 15, 15, 15)
        )
    )
    writer.setResolution(150)
    writer.setTitle(f"xr3d report {session.study.uid}")
    p = QPainter(writer)
    page = QRectF(p.viewport())
    y = 0.0

    def text(s: str, size: float = 10.0, bold: bool = False) -> None:
        nonlocal y
        f = QFont("Sans Serif")
        f.setPointSizeF(size)
        f.setBold(bold)
        p.setFont(f)
        h = p.fontMetrics().height() * (s.count("\n") + 1)
        p.drawText(QRectF(0, y, page.width(), h), Qt.AlignmentFlag.AlignLeft, s)
        y += h + 4

    text("xr3d knee alignment report", 16, True)
    text(f"Study {session.study.uid} · status {session.study.status} · side {session.study.side or '?'}")
    if session.correction is not None or session.differs_from_pipeline:
        who = session.correction.who if session.correction else "(unsaved)"
        when = session.correction.when if session.correction else "(unsaved)"
        text(f"Landmarks corrected by {who} at {when}; pipeline values shown alongside.", 10, True)
    else:
        text("Pipeline landmarks (not corrected).")
    y += 6
    cur, ori = now.to_dict(), orig.to_dict()
    rows = [f"{'':8s}{'value':>12s}{'normal':>16s}{'pipeline':>12s}"]
    for key in ROWS:
        lo_hi = NORMAL.get(key)
        rng = f"{lo_hi[0]:g} to {lo_hi[1]:g}" if lo_hi else "—"
        rows.append(f"{key:8s}{fmt(key, cur.get(key)):>12s}{rng:>16s}{fmt(key, ori.get(key)):>12s}")
    rows.append(
        f"{'CPAK':8s}{(now.cpak.label if now.cpak else '—'):>12s}{'':>16s}"
        f"{(orig.cpak.label if orig.cpak else '—'):>12s}"
    )
    f = QFont("Monospace")
    f.setStyleHint(QFont.StyleHint.TypeWriter)
    f.setPointSizeF(10)
    p.setFont(f)
    for r in rows:
        h = p.fontMetrics().height()
        p.drawText(QRectF(0, y, page.width(), h), Qt.AlignmentFlag.AlignLeft, r)
        y += h
    y += 10
    film = film_view.grab()
    cpak = chart.grab()
    avail = page.height() - y
    fw = page.width() * 0.58
    if not film.isNull():
        s = min(fw / film.width(), avail / film.height())
        p.drawPixmap(QRectF(0, y, film.width() * s, film.height() * s), film, QRectF(film.rect()))
    if not cpak.isNull():
        cw = page.width() - fw - 10
        s = min(cw / cpak.width(), avail / cpak.height())
        p.drawPixmap(QRectF(fw + 10, y, cpak.width() * s, cpak.height() * s), cpak, QRectF(cpak.rect()))
    p.end()
    log.info("exported a workstation report for study %s", session.study.uid)
    return target
