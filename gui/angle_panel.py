"""Angle table with normal ranges and the CPAK chart, both redrawn live while a landmark is dragged.

Normal ranges (../shared/reference/alignment.md): mLDFA 85-90, MPTA 85-90, JLCA 0-2; aHKA and JLO use
the CPAK neutral bands (-2..+2, 177..183). mHKA: the reference gives no range; the neutral band of
+-3 deg is the one commonly used (Bellemans et al., Clin Orthop Relat Res 2012, "constitutional varus"
beyond 3 deg) and is labelled as such. A value outside its range is highlighted; a value the pipeline
flagged (a landmark it depends on is low-confidence or implausible) is marked "check".

The chart is drawn with QPainter rather than by the matplotlib chart of the reports, so it follows a
drag at interactive speed; its axes, cells and numbering are the report chart's
(``appliance.analytics.cpak_chart``): aHKA across, JLO down, type I top left.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QHeaderView, QSizePolicy, QTableWidget, QTableWidgetItem, QWidget

from appliance.analytics.cpak import (
    AHKA_VALGUS_ABOVE,
    AHKA_VARUS_BELOW,
    JLO_APEX_DISTAL_BELOW,
    JLO_APEX_PROXIMAL_ABOVE,
    ROMAN,
    cpak_type,
)
from appliance.analytics.cpak_chart import AHKA_RANGE, JLO_RANGE

ROWS: Final = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO", "MAD_mm")
UNITS: Final = {"MAD_mm": "mm"}
NORMAL: Final[dict[str, tuple[float, float]]] = {
    "mHKA": (-3.0, 3.0),
    "mLDFA": (85.0, 90.0),
    "MPTA": (85.0, 90.0),
    "JLCA": (0.0, 2.0),
    "aHKA": (AHKA_VARUS_BELOW, AHKA_VALGUS_ABOVE),
    "JLO": (JLO_APEX_DISTAL_BELOW, JLO_APEX_PROXIMAL_ABOVE),
}
NORMAL_SOURCE: Final = {
    "mHKA": "common neutral band (Bellemans 2012); not in the project reference",
    "aHKA": "CPAK neutral band (MacDessi 2021)",
    "JLO": "CPAK neutral band (MacDessi 2021)",
}
OUT_OF_RANGE: Final = QColor("#ffd6d6")
CHANGED: Final = QColor("#1a5fb4")


def in_range(key: str, value: float | None) -> bool | None:
    """True inside the normal range (bounds included), False outside, None without a range or value."""
    if value is None or key not in NORMAL:
        return None
    lo, hi = NORMAL[key]
    return lo <= round(value, 9) <= hi


def fmt(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key in ("mHKA", "aHKA", "JLCA"):
        return f"{value:+.1f}°"
    return f"{value:.1f} {UNITS[key]}" if key in UNITS else f"{value:.1f}°"


class AngleTable(QTableWidget):
    """Value, normal range and the pipeline's original value of each angle."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(len(ROWS) + 1, 3, parent)
        self.setHorizontalHeaderLabels(["value", "normal", "original"])
        self.setVerticalHeaderLabels([*ROWS, "CPAK"])
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
        for r, key in enumerate(ROWS):
            lo_hi = NORMAL.get(key)
            text = f"{lo_hi[0]:g} to {lo_hi[1]:g}" if lo_hi else "—"
            item = QTableWidgetItem(text)
            item.setToolTip(NORMAL_SOURCE.get(key, "../shared/reference/alignment.md"))
            self.setItem(r, 1, item)
        self.values: dict[str, str] = {}
        self.resizeRowsToContents()
        rows_h = sum(self.rowHeight(r) for r in range(self.rowCount()))
        self.setMinimumHeight(rows_h + self.horizontalHeader().height() + 2 * self.frameWidth())

    def show_values(
        self,
        current: Mapping[str, float | None],
        original: Mapping[str, float | None],
        cpak_now: str,
        cpak_orig: str,
        flagged: Mapping[str, list[str]],
    ) -> None:
        self.values = {}
        for r, key in enumerate(ROWS):
            text = fmt(key, current.get(key))
            self.values[key] = text
            item = QTableWidgetItem(text)
            ok = in_range(key, current.get(key))
            tips = []
            if ok is False:
                item.setBackground(QBrush(OUT_OF_RANGE))
                tips.append("outside the normal range")
            if key in flagged:
                item.setText(f"{text}  check")
                tips.append(f"depends on flagged landmark(s) {', '.join(flagged[key])}")
            if text != fmt(key, original.get(key)):
                item.setForeground(QBrush(CHANGED))
                tips.append("changed by your correction")
            item.setToolTip("; ".join(tips))
            self.setItem(r, 0, item)
            self.setItem(r, 2, QTableWidgetItem(fmt(key, original.get(key))))
        self.values["CPAK"] = cpak_now
        cp = QTableWidgetItem(cpak_now)
        if cpak_now != cpak_orig:
            cp.setForeground(QBrush(CHANGED))
        self.setItem(len(ROWS), 0, cp)
        self.setItem(len(ROWS), 1, QTableWidgetItem(""))
        self.setItem(len(ROWS), 2, QTableWidgetItem(cpak_orig))


class CpakChart(QWidget):
    """The 3x3 CPAK grid with the current point (red) and the pipeline's original point (grey)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(220, 220)
        self.current: tuple[float, float] | None = None
        self.original: tuple[float, float] | None = None

    def set_points(self, current: tuple[float, float] | None, original: tuple[float, float] | None) -> None:
        self.current, self.original = current, original
        self.update()

    def current_type(self) -> str:
        return cpak_type(*self.current).label if self.current is not None else "—"

    def _plot_rect(self) -> QRectF:
        m = 34.0
        side = min(self.width(), self.height()) - 2 * m
        return QRectF(m, m * 0.6, max(side, 10.0), max(side, 10.0))

    def _to_px(self, rect: QRectF, ahka: float, jlo: float) -> QPointF:
        x = (min(max(ahka, AHKA_RANGE[0]), AHKA_RANGE[1]) - AHKA_RANGE[0]) / (AHKA_RANGE[1] - AHKA_RANGE[0])
        y = (min(max(jlo, JLO_RANGE[0]), JLO_RANGE[1]) - JLO_RANGE[0]) / (JLO_RANGE[1] - JLO_RANGE[0])
        return QPointF(rect.left() + x * rect.width(), rect.top() + y * rect.height())

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("white"))
        rect = self._plot_rect()
        xs = (AHKA_RANGE[0], AHKA_VARUS_BELOW, AHKA_VALGUS_ABOVE, AHKA_RANGE[1])
        ys = (JLO_RANGE[0], JLO_APEX_DISTAL_BELOW, JLO_APEX_PROXIMAL_ABOVE, JLO_RANGE[1])
        tints = (QColor("#DCE9F7"), QColor("#EEF3E2"), QColor("#F7E3DC"))
        mine = cpak_type(*self.current).type if self.current is not None else 0
        font = QFont(self.font())
        font.setBold(True)
        font.setPointSizeF(max(self.font().pointSizeF(), 9.0) * 1.3)
        for row in range(3):
            for col in range(3):
                a = self._to_px(rect, xs[col], ys[row])
                b = self._to_px(rect, xs[col + 1], ys[row + 1])
                cell = QRectF(a, b)
                number = 3 * row + col + 1
                p.fillRect(cell, tints[col])
                p.setPen(
                    QPen(
                        QColor("#d00000") if number == mine else QColor("#404040"), 3 if number == mine else 1
                    )
                )
                p.drawRect(cell)
                p.setFont(font)
                p.setPen(QColor("#d00000") if number == mine else QColor("#707070"))
                p.drawText(cell, Qt.AlignmentFlag.AlignCenter, ROMAN[number - 1])
        p.setFont(self.font())
        p.setPen(QColor("black"))
        p.drawText(
            QRectF(rect.left(), rect.bottom() + 2, rect.width(), 18),
            Qt.AlignmentFlag.AlignCenter,
            "aHKA  ← varus | valgus →",
        )
        p.save()
        p.translate(rect.left() - 6, rect.center().y())
        p.rotate(-90)
        p.drawText(
            QRectF(-rect.height() / 2, -18, rect.height(), 16),
            Qt.AlignmentFlag.AlignCenter,
            "JLO (↓ apex proximal)",
        )
        p.restore()
        if self.original is not None:
            p.setPen(QPen(QColor("white"), 2))
            p.setBrush(QColor("#808080"))
            p.drawEllipse(self._to_px(rect, *self.original), 6, 6)
        if self.current is not None:
            p.setPen(QPen(QColor("white"), 2))
            p.setBrush(QColor("#d00000"))
            p.drawEllipse(self._to_px(rect, *self.current), 7, 7)
        p.end()
