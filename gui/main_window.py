"""The surgeon's workstation window: worklist, film viewer with editable overlay, angles, CPAK, 3D.

Keyboard: Ctrl+F search, Enter open the selected study, 1/2/3 films, D 3D view, O overlay on/off,
arrow keys nudge the selected landmark (Shift: 10 px),
F fit, +/- zoom, W reset window/level, Ctrl+S save correction, Ctrl+R revert to the pipeline's landmarks,
Ctrl+E export report, F5 rescan the outbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QAction, QCloseEvent, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from appliance.analytics.results import Angles2D
from appliance.errors import InputError
from gui.angle_panel import AngleTable, CpakChart, fmt
from gui.film_view import FilmView
from gui.report_export import export_sr, sr_export_unavailable, write_report_pdf
from gui.study import VIEW_TITLES, KneeFilm
from gui.study_panel import EditSession
from gui.view3d import Recon3DPanel
from gui.worklist import WorklistFilter, WorklistModel

log = logging.getLogger(__name__)

LEGEND_KEYS: Final = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO")


_KNEE_VALUE_NAMES = {
    "JLCA": "JLCA",
    "tibial_slope_deg": "posterior tibial slope",
    "knee_flexion_deg": "knee flexion",
}


def knee_film_note(
    knee: KneeFilm, now: Mapping[str, float | None] | None = None, low: frozenset[str] | None = None
) -> str:
    """One line under a knee film: its measurements (degrees; ``now`` = as the landmarks stand after the
    surgeon's edits, with the model's value alongside when they differ) and its low-confidence points."""
    current = dict(knee.measurements) if now is None else dict(now)

    def one(k: str, v: float | None) -> str:
        name = _KNEE_VALUE_NAMES.get(k, k)
        text = f"{name} {v:.1f}°" if v is not None else f"{name} —"
        was = knee.measurements.get(k)
        if now is not None and was is not None and (v is None or abs(v - was) >= 0.05):
            text += f" (model {was:.1f}°)"
        return text

    parts = [one(k, v) for k, v in current.items()]
    flagged = sorted(low if low is not None else (n for n, p in knee.landmarks.items() if p.low_confidence))
    text = "Knee film: " + (", ".join(parts) if parts else "no measurements")
    return text + (f"; low confidence: {', '.join(flagged)}" if flagged else "")


class MainWindow(QMainWindow):
    """One window; ``open_study`` is what a click on the worklist does."""

    def __init__(self, outbox: Path, user: str, organization: str = "unspecified") -> None:
        super().__init__()
        self.setWindowTitle(f"xr3d workstation — {outbox}")
        self.user = user
        self.organization = organization
        self.session: EditSession | None = None
        self.first_image_s: float | None = None

        self.model = WorklistModel(outbox, self)
        self.proxy = WorklistFilter(self)
        self.proxy.setSourceModel(self.model)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search patient, UID, CPAK, status, flags… (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self.proxy.setFilterFixedString)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().hide()
        self.table.clicked.connect(self._row_clicked)
        self.table.activated.connect(self._row_clicked)
        self.worklist_count = QLabel()
        self.model.changed.connect(self._worklist_changed)
        wl = self.worklist_pane = QWidget()
        wv = QVBoxLayout(wl)
        wv.setContentsMargins(4, 4, 4, 4)
        wv.addWidget(QLabel("<b>Worklist</b>"))
        wv.addWidget(self.search)
        wv.addWidget(self.table, 1)
        wv.addWidget(self.worklist_count)

        self.film_view = FilmView()
        self.film_view.landmark_moved.connect(self._landmark_moved)
        self.film_buttons = QButtonGroup(self)
        self.film_buttons.setExclusive(True)
        self.film_bar = QHBoxLayout()
        self.film_note = QLabel()
        films = QWidget()
        fv = QVBoxLayout(films)
        fv.setContentsMargins(0, 0, 0, 0)
        fv.addLayout(self.film_bar)
        fv.addWidget(self.film_view, 1)
        fv.addWidget(self.film_note)
        self.recon = Recon3DPanel()
        self.tabs = QTabWidget()
        self.tabs.addTab(films, "Films")
        self.tabs.addTab(self.recon, "3D")
        self.tabs.currentChanged.connect(self._tab_changed)

        self.header = QLabel("Open a study from the worklist.")
        self.header.setWordWrap(True)
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.angles = AngleTable()
        self.chart = CpakChart()
        self.save_btn = QPushButton("Save correction")
        self.revert_btn = QPushButton("Revert to pipeline")
        self.report_btn = QPushButton("Export report…")
        self.sr_btn = QPushButton("Export SR…")
        side = QWidget()
        sv = QVBoxLayout(side)
        sv.setContentsMargins(4, 4, 4, 4)
        sv.addWidget(self.header)
        sv.addWidget(self.angles)
        sv.addWidget(self.chart, 1)
        row1 = QHBoxLayout()
        row1.addWidget(self.save_btn)
        row1.addWidget(self.revert_btn)
        row2 = QHBoxLayout()
        row2.addWidget(self.report_btn)
        row2.addWidget(self.sr_btn)
        sv.addLayout(row1)
        sv.addLayout(row2)
        self.save_btn.clicked.connect(self.save_correction)
        self.revert_btn.clicked.connect(self.revert)
        self.report_btn.clicked.connect(self.export_report)
        self.sr_btn.clicked.connect(self.export_sr)
        self._sr_unavailable = sr_export_unavailable()

        split = self.splitter = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(wl)
        split.addWidget(self.tabs)
        split.addWidget(side)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 5)
        split.setStretchFactor(2, 2)
        self.setCentralWidget(split)
        self._actions()
        self._refresh_panel()
        self.model.start()

    # --- actions ---------------------------------------------------------------------------------------
    def _action(self, text: str, keys: str | QKeySequence.StandardKey, slot: object) -> QAction:
        act = QAction(text, self)
        act.setShortcut(QKeySequence(keys))
        act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        act.triggered.connect(slot)
        self.addAction(act)
        return act

    def _actions(self) -> None:
        self.overlay_action = self._action("Overlay", "O", self.toggle_overlay)
        self._action("Search", "Ctrl+F", lambda: self.search.setFocus())
        self._action("Fit", "F", self.film_view.fit)
        self._action("Zoom in", "+", lambda: self.film_view.zoom(1.25))
        self._action("Zoom in", "=", lambda: self.film_view.zoom(1.25))
        self._action("Zoom out", "-", lambda: self.film_view.zoom(0.8))
        self._action("Reset window/level", "W", self.film_view.reset_window_level)
        self._action("Save correction", "Ctrl+S", self.save_correction)
        self._action("Revert", "Ctrl+R", self.revert)
        self._action("Export report", "Ctrl+E", self.export_report)
        self._action("Rescan", "F5", self.model.rescan)
        self._action("3D view", "D", lambda: self.tabs.setCurrentIndex(1))
        for i in range(3):
            self._action(f"Film {i + 1}", str(i + 1), lambda _=False, i=i: self._film_by_index(i))

    # --- worklist --------------------------------------------------------------------------------------
    def _worklist_changed(self) -> None:
        n = len(self.model.entries)
        review = sum(e.needs_review for e in self.model.entries)
        self.worklist_count.setText(f"{n} studies, {review} to review")
        self.table.resizeColumnsToContents()

    def _row_clicked(self, index: QModelIndex) -> None:
        src = self.proxy.mapToSource(index)
        if src.isValid():
            self.open_study(self.model.entries[src.row()].folder)

    def select_uid(self, uid: str) -> bool:
        row = self.model.row_of(uid)
        if row < 0:
            return False
        idx = self.proxy.mapFromSource(self.model.index(row, 0))
        self.table.selectRow(idx.row())
        self.open_study(self.model.entries[row].folder)
        return True

    # --- study -----------------------------------------------------------------------------------------
    def open_study(self, folder: Path) -> None:
        if self.session is not None and self.session.dirty and not self._confirm_discard():
            return
        t0 = time.perf_counter()
        try:
            self.session = EditSession.open(folder)
        except InputError as exc:
            self._warn("Cannot open study", str(exc))
            return
        self._build_film_buttons()
        self.show_film(self.session.view)
        self.first_image_s = time.perf_counter() - t0
        self.recon.set_study(self.session.study)
        if self.tabs.currentIndex() == 1:
            self.recon.ensure_loaded()
        log.info("opened study %s in %.3f s", self.session.study.uid, self.first_image_s)

    def _warn(self, title: str, text: str) -> None:
        """Status bar and log; a dialog too when there is a screen (offscreen nobody could answer it)."""
        log.warning("%s: %s", title, text)
        self.statusBar().showMessage(f"{title}: {text}", 10000)
        if QGuiApplication.platformName() != "offscreen":
            QMessageBox.warning(self, title, text)

    def _confirm_discard(self) -> bool:
        if QGuiApplication.platformName() == "offscreen":
            # Nobody can answer a dialog offscreen (tests, screenshots): unsaved edits are dropped.
            log.info("offscreen: discarding unsaved landmark changes")
            return True
        answer = QMessageBox.question(self, "Unsaved correction", "Discard the unsaved landmark changes?")
        return answer == QMessageBox.StandardButton.Yes

    def _build_film_buttons(self) -> None:
        for b in self.film_buttons.buttons():
            self.film_buttons.removeButton(b)
            self.film_bar.removeWidget(b)
            b.deleteLater()
        assert self.session is not None
        for i, view in enumerate(self.session.study.films):
            b = QPushButton(f"{i + 1}  {VIEW_TITLES.get(view, view)}")
            b.setCheckable(True)
            b.setProperty("view", view)
            b.clicked.connect(lambda _=False, v=view: self.show_film(v))
            self.film_buttons.addButton(b)
            self.film_bar.addWidget(b)

    def _film_by_index(self, i: int) -> None:
        if self.session is not None and i < len(self.session.study.films):
            self.show_film(list(self.session.study.films)[i])

    def current_film(self) -> str | None:
        b = self.film_buttons.checkedButton()
        return str(b.property("view")) if b is not None else None

    def show_film(self, view: str) -> None:
        """Show one film of the open study; the overlay belongs to the film that was measured."""
        if self.session is None:
            return
        self.tabs.setCurrentIndex(0)
        for b in self.film_buttons.buttons():
            b.setChecked(b.property("view") == view)
        pixels = self.session.film_pixels(view)
        self.film_view.set_film(pixels)
        note = ""
        knee = self.session.study.knee_films.get(view)
        if view == self.session.view:
            low = frozenset(
                n for n, p in self.session.study.landmarks.get(view, {}).items() if p.low_confidence
            )
            self.film_view.set_landmarks(self.session.points, low)
        elif knee is not None and view in self.session.knee_points:
            # Knee-film landmarks are edited like the long-leg film's; their measurements follow live.
            low = frozenset(n for n, p in knee.landmarks.items() if p.low_confidence)
            self.film_view.set_landmarks(self.session.knee_points[view], low)
            note = knee_film_note(knee, self.session.knee_measured(view))
        else:
            self.film_view.set_landmarks({})
            if knee is not None and knee.status != "measured":
                note = f"Knee landmarks {knee.status or 'not available'}"
                note += f": {knee.reason}" if knee.reason else ""
        self.film_note.setText(note if pixels is not None else "This film is not in the study folder.")
        self._refresh_panel()

    def _landmark_moved(self, name: str) -> None:
        if self.session is None:
            return
        view = self.current_film()
        if view is not None and view != self.session.view and view in self.session.knee_points:
            self.session.knee_points[view] = dict(self.film_view.points)
            knee = self.session.study.knee_films[view]
            self.film_note.setText(knee_film_note(knee, self.session.knee_measured(view)))
        else:
            self.session.points = dict(self.film_view.points)
        self._refresh_panel()

    def _refresh_panel(self) -> None:
        s = self.session
        self.save_btn.setEnabled(bool(s and s.dirty))
        self.revert_btn.setEnabled(bool(s and s.differs_from_pipeline))
        self.report_btn.setEnabled(s is not None)
        dicom_films = bool(
            s and any(f.path is not None and f.path.suffix == ".dcm" for f in s.study.films.values())
        )
        self.sr_btn.setEnabled(bool(s and not s.dirty and dicom_films and self._sr_unavailable is None))
        if self._sr_unavailable is not None:
            self.sr_btn.setToolTip(self._sr_unavailable)
        elif s is not None and not dicom_films:
            self.sr_btn.setToolTip("No DICOM film in this study: an SR could not join its DICOM study")
        elif s is not None and s.dirty:
            self.sr_btn.setToolTip("Save the correction first: the SR records a saved, attributed result")
        else:
            self.sr_btn.setToolTip(
                "Export the result as shown as a verified DICOM SR (supersedes the automatic SR)"
            )
        if s is None:
            self.angles.show_values({}, {}, "—", "—", {})
            self.chart.set_points(None, None)
            return
        now, orig = s.measured(), s.original()
        self.angles.show_values(
            now.to_dict(),
            orig.to_dict(),
            now.cpak.display if now.cpak else "—",
            orig.cpak.display if orig.cpak else "—",
            s.study.flags.get("flagged_values") or {},
        )
        self.chart.set_points(_cpak_point(now), _cpak_point(orig))
        view = self.current_film()
        if view is not None and view != s.view and view in s.knee_points:
            self.film_view.set_legend(_knee_legend(s.knee_measured(view)))
        else:
            self.film_view.set_legend(_legend(now))
        st = s.study
        reasons = [k for k, v in (st.flags.get("implausible") or {}).items() if v]
        low = st.flags.get("low_confidence_landmarks") or []
        review = "<span style='color:#c01c28'><b>needs review</b></span>" if st.needs_review else "no flags"
        detail = "; ".join(
            [*(f"implausible: {r}" for r in reasons), *([f"low confidence: {', '.join(low)}"] if low else [])]
        )
        if s.correction is not None:
            edited = f"Corrected by <b>{s.correction.who}</b> at {s.correction.when}"
        else:
            edited = "Pipeline landmarks (not corrected)"
        if s.dirty:
            edited += " · <span style='color:#1a5fb4'>unsaved changes</span>"
        self.header.setText(
            f"<b>{st.status}</b> · side {st.side or '?'} · {review}{f' ({detail})' if detail else ''}<br>"
            f"{edited}<br><span style='color:#666'>{st.uid}</span>"
        )

    # --- overlay, tabs ------------------------------------------------------------------------------
    def toggle_overlay(self) -> None:
        self.film_view.set_overlay_visible(not self.film_view.overlay_visible())

    def _tab_changed(self, index: int) -> None:
        if index == 1 and self.session is not None:
            self.recon.ensure_loaded()

    # --- saving and export -------------------------------------------------------------------------------
    def save_correction(self) -> Path | None:
        if self.session is None or not self.session.dirty:
            return None
        path = self.session.save(self.user)
        self.model.rescan()
        self._refresh_panel()
        self.statusBar().showMessage(f"Correction saved: {path.name}", 5000)
        return path

    def revert(self) -> None:
        if self.session is None:
            return
        self.session.revert_to_pipeline()
        view = self.current_film()
        if view is not None:
            self.show_film(view)
        self._refresh_panel()

    def export_report(self, target: Path | None = None) -> Path | None:
        if self.session is None:
            return None
        if target is None:
            name, _ = QFileDialog.getSaveFileName(
                self, "Export report", f"{self.session.study.uid}.pdf", "PDF (*.pdf)"
            )
            if not name:
                return None
            target = Path(name)
        out = write_report_pdf(self.session, self.film_view, self.chart, target)
        self.statusBar().showMessage(f"Report written: {out}", 5000)
        return out

    def export_sr(self, target: Path | None = None) -> Path | None:
        if self.session is None or not self.sr_btn.isEnabled():
            return None
        if target is None:
            name, _ = QFileDialog.getSaveFileName(
                self, "Export SR", f"{self.session.study.uid}_verified_sr.dcm", "DICOM (*.dcm)"
            )
            if not name:
                return None
            target = Path(name)
        try:
            out = export_sr(self.session, target, self.user, self.organization)
        except InputError as exc:
            self._warn("SR export failed", str(exc))
            return None
        self.statusBar().showMessage(f"SR written: {out}", 5000)
        return out

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.session is not None and self.session.dirty and not self._confirm_discard():
            event.ignore()
            return
        event.accept()


def _cpak_point(a: Angles2D) -> tuple[float, float] | None:
    return (a.ahka, a.jlo) if a.ahka is not None and a.jlo is not None else None


def _legend(a: Angles2D) -> str:
    values = a.to_dict()
    lines = [f"{k} {fmt(k, values.get(k))}" for k in LEGEND_KEYS]
    lines.append(f"CPAK {a.cpak.display if a.cpak else '—'}")
    return "\n".join(lines)


def _knee_legend(values: Mapping[str, float | None]) -> str:
    return "\n".join(
        f"{_KNEE_VALUE_NAMES.get(k, k)} {v:.1f}°" if v is not None else f"{_KNEE_VALUE_NAMES.get(k, k)} —"
        for k, v in values.items()
    )
