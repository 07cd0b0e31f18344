"""The worklist: every processed study in the outbox, updated while the service finishes jobs.

A study appears when its folder ``OUTBOX/<StudyInstanceUID>/`` does (the pipeline renames a complete
temporary folder into place, so a half-written study is never listed). Changes are noticed by a
QFileSystemWatcher on the outbox and, because watchers miss events on some file systems (network
shares) and have per-process limits, by a periodic rescan as well. Rows are only re-read when a
study's result.json or corrections change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from PySide6.QtCore import (
    QAbstractTableModel,
    QFileSystemWatcher,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QBrush, QColor

from appliance.errors import InputError
from gui.study import CORRECTIONS_DIR, RESULT_FILE, load_study, patient_label

log = logging.getLogger(__name__)

RESCAN_MS: Final = 2000
COLUMNS: Final = ("Patient", "Study date", "Status", "CPAK", "mHKA", "Flags", "Corrected", "Study UID")


@dataclass(frozen=True)
class WorklistEntry:
    """One row of the worklist (the patient's name is held for display only)."""

    uid: str
    folder: Path
    patient: str
    study_date: str
    status: str
    cpak: str
    mhka: float | None
    flags: str
    needs_review: bool
    corrections: int
    stamp: tuple[float, int]

    def cell(self, column: int) -> Any:
        mhka = f"{self.mhka:+.1f}°" if self.mhka is not None else "—"
        values = (
            self.patient or "(no name)",
            self.study_date,
            self.status,
            self.cpak,
            mhka,
            self.flags,
            str(self.corrections) if self.corrections else "",
            self.uid,
        )
        return values[column]

    def sort_key(self, column: int) -> Any:
        if column == 4:
            return self.mhka if self.mhka is not None else float("inf")
        if column == 6:
            return self.corrections
        return str(self.cell(column)).lower()


def _stamp(folder: Path) -> tuple[float, int]:
    result = folder / RESULT_FILE
    corr = folder / CORRECTIONS_DIR
    n = len(list(corr.glob("*.json"))) if corr.is_dir() else 0
    return result.stat().st_mtime, n


def read_entry(folder: Path) -> WorklistEntry:
    study = load_study(folder)
    patient, date = patient_label(folder)
    flags: list[str] = []
    if study.needs_review:
        flags.append("review")
    recon = study.reconstruction or {}
    cons = recon.get("consistency") or {}
    if cons and not cons.get("consistent", True):
        flags.append("3D inconsistent")
    if study.flags.get("side_mismatch"):
        flags.append("side?")
    cpak = study.cpak or {}
    return WorklistEntry(
        uid=study.uid,
        folder=folder,
        patient=patient,
        study_date=date,
        status=study.status,
        cpak=str(cpak.get("label", "—")) if cpak else "—",
        mhka=study.angles.get("mHKA"),
        flags=", ".join(flags),
        needs_review=study.needs_review,
        corrections=len(study.corrections()),
        stamp=_stamp(folder),
    )


def study_folders(outbox: Path) -> list[Path]:
    """Complete study folders (temporary ``.<uid>.tmp-*`` folders are skipped)."""
    if not outbox.is_dir():
        return []
    return sorted(
        p
        for p in outbox.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / RESULT_FILE).is_file()
    )


class WorklistModel(QAbstractTableModel):
    """Rows of :class:`WorklistEntry`, kept in step with the outbox."""

    changed = Signal()

    def __init__(self, outbox: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.outbox = outbox
        self.entries: list[WorklistEntry] = []
        self._watcher = QFileSystemWatcher(self)
        self._watcher.directoryChanged.connect(self._soon)
        self._timer = QTimer(self)
        self._timer.setInterval(RESCAN_MS)
        self._timer.timeout.connect(self.rescan)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(150)
        self._debounce.timeout.connect(self.rescan)

    def start(self) -> None:
        self.rescan()
        self._timer.start()

    def _soon(self, _path: str = "") -> None:
        self._debounce.start()

    def _watch(self, folders: list[Path]) -> None:
        wanted = {str(self.outbox)} | {str(f) for f in folders} | {str(f / CORRECTIONS_DIR) for f in folders}
        wanted = {w for w in wanted if Path(w).is_dir()}
        have = set(self._watcher.directories())
        if wanted - have:
            self._watcher.addPaths(sorted(wanted - have))
        if have - wanted:
            self._watcher.removePaths(sorted(have - wanted))

    def rescan(self) -> None:
        folders = study_folders(self.outbox)
        old = {e.folder: e for e in self.entries}
        fresh: list[WorklistEntry] = []
        for folder in folders:
            prev = old.get(folder)
            try:
                if prev is not None and prev.stamp == _stamp(folder):
                    fresh.append(prev)
                    continue
                fresh.append(read_entry(folder))
            except (InputError, OSError) as exc:
                log.warning("worklist: skipping study folder %s: %s", folder.name, exc)
        self._watch(folders)
        if fresh == self.entries:
            return
        self.beginResetModel()
        self.entries = fresh
        self.endResetModel()
        self.changed.emit()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(
        self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if not index.isValid():
            return None
        e = self.entries[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return e.cell(index.column())
        if role == Qt.ItemDataRole.UserRole:
            return e.sort_key(index.column())
        if role == Qt.ItemDataRole.ToolTipRole:
            return str(e.folder)
        if role == Qt.ItemDataRole.BackgroundRole and e.needs_review:
            return QBrush(QColor("#fff1cc"))
        return None

    def row_of(self, uid: str) -> int:
        for i, e in enumerate(self.entries):
            if e.uid == uid or e.folder.name == uid:
                return i
        return -1


class WorklistFilter(QSortFilterProxyModel):
    """Search across every column (case-insensitive substring) and sort by each column's own key."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.setSortRole(Qt.ItemDataRole.UserRole)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setFilterKeyColumn(-1)
