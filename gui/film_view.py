"""Film viewer: one film with window/level, zoom, pan and fit, and the measurement overlay.

Mouse: wheel zooms about the cursor, left-drag on the film pans, left-drag on a landmark moves it,
right-drag changes window (horizontal) and level (vertical). Landmark handles and labels keep their
size on screen at any zoom; lines are cosmetic (one device pixel wide at any zoom, HiDPI aware).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPen, QPixmap, QWheelEvent
from PySide6.QtWidgets import (
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsItemGroup,
    QGraphicsLineItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsSceneMouseEvent,
    QGraphicsSimpleTextItem,
    QGraphicsTextItem,
    QGraphicsView,
    QStyleOptionGraphicsItem,
    QWidget,
)

from gui.film_image import WindowLevel, apply_window

log = logging.getLogger(__name__)

HANDLE_PX: Final = 7.0
# The lines of the overlay: the two mechanical axes, the two joint lines and the hip-ankle line (MAD).
LINES: Final = (
    ("FHC", "FKC", "#00c8ff", False),
    ("TKC", "AC", "#00c8ff", False),
    ("MDFC", "LDFC", "#ffd000", False),
    ("MTP", "LTP", "#ffd000", False),
    ("FHC", "AC", "#ff6060", True),
)
_HANDLE = QColor("#40ff40")
_HANDLE_LOW = QColor("#ff9900")
ZOOM_STEP: Final = 1.25
WL_PER_PX: Final = 0.002
NUDGE_PX: Final = 1.0  # film pixels per arrow key press


class LandmarkHandle(QGraphicsEllipseItem):
    """A draggable landmark; reports every move to ``on_move``."""

    def __init__(
        self,
        name: str,
        low_confidence: bool,
        on_move: Callable[[str, QPointF], None],
        on_press: Callable[[str], None],
        editable: bool = True,
    ) -> None:
        r = HANDLE_PX
        super().__init__(-r, -r, 2 * r, 2 * r)
        self.name = name
        self._on_move = on_move
        self._on_press = on_press
        colour = _HANDLE_LOW if low_confidence else _HANDLE
        self._colour = colour
        self.setPen(QPen(colour, 2))
        self.setBrush(QBrush(QColor(colour.red(), colour.green(), colour.blue(), 70)))
        flags = (
            QGraphicsItem.GraphicsItemFlag.ItemSendsGeometryChanges
            | QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations
        )
        if editable:
            flags |= QGraphicsItem.GraphicsItemFlag.ItemIsMovable
            self.setCursor(Qt.CursorShape.SizeAllCursor)
        self.setFlags(flags)
        self.editable = editable
        self.setToolTip(
            f"{name}{' (low confidence)' if low_confidence else ''}: "
            + (
                "drag to correct, or click and nudge with the arrow keys (Shift: 10 px)"
                if editable
                else "found by the knee-film model (shown for review; not editable here)"
            )
        )
        self.setZValue(10)
        label = QGraphicsSimpleTextItem(name, self)
        label.setBrush(QBrush(colour))
        label.setPos(r + 2, -r - 4)

    def mousePressEvent(self, event: QGraphicsSceneMouseEvent) -> None:
        # Qt's own selection would select the whole overlay group, so the view tracks the active handle.
        self._on_press(self.name)
        super().mousePressEvent(event)

    def set_active(self, active: bool) -> None:
        self.setPen(QPen(QColor("white") if active else self._colour, 3 if active else 2))

    def itemChange(self, change: QGraphicsItem.GraphicsItemChange, value: object) -> object:
        if change == QGraphicsItem.GraphicsItemChange.ItemPositionHasChanged:
            self._on_move(self.name, self.pos())
        return super().itemChange(change, value)


class _Legend(QGraphicsTextItem):
    """Angle values drawn on the film, with a dark backing so they read on bone and background alike."""

    def paint(
        self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None
    ) -> None:
        painter.fillRect(self.boundingRect(), QColor(0, 0, 0, 170))
        super().paint(painter, option, widget)  # type: ignore[arg-type]


class FilmView(QGraphicsView):
    """Shows one film; emits ``landmark_moved(name)`` while a landmark is dragged."""

    landmark_moved = Signal(str)
    window_level_changed = Signal(float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setBackgroundBrush(QBrush(QColor(20, 20, 20)))
        self._pixmap = QGraphicsPixmapItem()
        self._pixmap.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.scene().addItem(self._pixmap)
        self._overlay = QGraphicsItemGroup()
        self._overlay.setHandlesChildEvents(False)
        self._overlay.setZValue(5)
        self.scene().addItem(self._overlay)
        self._quantised: NDArray[np.uint16] | None = None
        self._display: NDArray[np.uint8] | None = None
        self.wl = WindowLevel()
        self.points: dict[str, tuple[float, float]] = {}
        self.handles: dict[str, LandmarkHandle] = {}
        self._lines: list[tuple[str, str, QGraphicsLineItem]] = []
        self._legend = _Legend()
        self._legend.setDefaultTextColor(QColor("white"))
        self._legend.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations)
        self._wl_drag: QPointF | None = None
        self._silent = False
        self.active: str | None = None

    # --- image ------------------------------------------------------------------------------------
    def set_film(self, quantised: NDArray[np.uint16] | None, wl: WindowLevel | None = None) -> None:
        self._quantised = quantised
        self.wl = (wl or WindowLevel()).clamped()
        self._render()
        if quantised is not None:
            h, w = quantised.shape
            self.scene().setSceneRect(QRectF(0, 0, w, h))
        self.fit()

    def _render(self) -> None:
        if self._quantised is None:
            self._pixmap.setPixmap(QPixmap())
            return
        self._display = apply_window(self._quantised, self.wl)
        h, w = self._display.shape
        img = QImage(self._display.data, w, h, w, QImage.Format.Format_Grayscale8)
        self._pixmap.setPixmap(QPixmap.fromImage(img))

    def displayed_pixels(self) -> NDArray[np.uint8] | None:
        """The 8-bit image currently shown (after window/level)."""
        return self._display

    def set_window_level(self, wl: WindowLevel) -> None:
        self.wl = wl.clamped()
        self._render()
        self.window_level_changed.emit(self.wl.level, self.wl.window)

    def reset_window_level(self) -> None:
        self.set_window_level(WindowLevel())

    # --- view ---------------------------------------------------------------------------------------
    def fit(self) -> None:
        if not self.sceneRect().isEmpty():
            self.fitInView(self.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)

    def zoom(self, factor: float) -> None:
        self.scale(factor, factor)

    def zoom_factor(self) -> float:
        return float(self.transform().m11())

    def selected_landmark(self) -> str | None:
        """The landmark last clicked (the one the arrow keys move)."""
        return self.active

    def _handle_pressed(self, name: str) -> None:
        self.active = name
        for n, h in self.handles.items():
            h.set_active(n == name)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        step = NUDGE_PX * (10.0 if event.modifiers() & Qt.KeyboardModifier.ShiftModifier else 1.0)
        moves = {
            Qt.Key.Key_Left: (-step, 0.0),
            Qt.Key.Key_Right: (step, 0.0),
            Qt.Key.Key_Up: (0.0, -step),
            Qt.Key.Key_Down: (0.0, step),
        }
        name = self.selected_landmark()
        key = Qt.Key(event.key())
        if name is not None and key in moves and self.overlay_visible():
            c, r = self.points[name]
            dc, dr = moves[key]
            self.move_landmark(name, c + dc, r + dr)
            event.accept()
            return
        super().keyPressEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:
        self.zoom(ZOOM_STEP if event.angleDelta().y() > 0 else 1.0 / ZOOM_STEP)
        event.accept()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.RightButton:
            self._wl_drag = event.position()
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._wl_drag is not None:
            d = event.position() - self._wl_drag
            self._wl_drag = event.position()
            self.set_window_level(
                WindowLevel(self.wl.level - d.y() * WL_PER_PX, self.wl.window + d.x() * WL_PER_PX)
            )
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._wl_drag is not None and event.button() == Qt.MouseButton.RightButton:
            self._wl_drag = None
            event.accept()
            return
        super().mouseReleaseEvent(event)

    # --- overlay ------------------------------------------------------------------------------------
    def set_landmarks(
        self,
        points: Mapping[str, tuple[float, float]],
        low: frozenset[str] = frozenset(),
        *,
        editable: bool = True,
    ) -> None:
        """Replace the overlay's landmarks (no ``landmark_moved`` is emitted); ``editable=False`` shows
        them for review only (they cannot be dragged or nudged)."""
        for item in list(self._overlay.childItems()):
            self._overlay.removeFromGroup(item)
            self.scene().removeItem(item)
        self.handles.clear()
        self._lines.clear()
        self.active = None
        self.points = {n: (float(c), float(r)) for n, (c, r) in points.items()}
        self._silent = True
        for a, b, colour, dashed in LINES:
            pen = QPen(QColor(colour), 2 if not dashed else 1.5)
            pen.setCosmetic(True)
            if dashed:
                pen.setStyle(Qt.PenStyle.DashLine)
            line = QGraphicsLineItem()
            line.setPen(pen)
            self._overlay.addToGroup(line)
            self._lines.append((a, b, line))
        for name, (c, r) in self.points.items():
            h = LandmarkHandle(name, name in low, self._handle_moved, self._handle_pressed, editable)
            h.setPos(c, r)
            self._overlay.addToGroup(h)
            self.handles[name] = h
        self._overlay.addToGroup(self._legend)
        self._silent = False
        self._update_lines()

    def _handle_moved(self, name: str, pos: QPointF) -> None:
        self.points[name] = (float(pos.x()), float(pos.y()))
        self._update_lines()
        if not self._silent:
            self.landmark_moved.emit(name)

    def _update_lines(self) -> None:
        for a, b, line in self._lines:
            if a in self.points and b in self.points:
                line.setLine(*self.points[a], *self.points[b])
                line.setVisible(True)
            else:
                line.setVisible(False)
        knee = self.points.get("FKC") or self.points.get("TKC")
        if knee is not None:
            self._legend.setPos(knee[0] + 40.0 / max(self.zoom_factor(), 1e-6), knee[1])

    def set_legend(self, text: str) -> None:
        self._legend.setPlainText(text)

    def set_overlay_visible(self, visible: bool) -> None:
        self._overlay.setVisible(visible)

    def overlay_visible(self) -> bool:
        return self._overlay.isVisible()

    def move_landmark(self, name: str, col: float, row: float) -> None:
        """Move one landmark programmatically (keyboard nudges); emits ``landmark_moved``. A read-only
        landmark does not move."""
        if not self.handles[name].editable:
            return
        self.handles[name].setPos(col, row)
