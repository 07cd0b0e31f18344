"""Linked axial / coronal / sagittal slices of the reconstructed volume with the bone labels tinted.

Display conventions (radiological): patient's right on the viewer's left in axial and coronal views,
anterior up in axial, superior up in coronal and sagittal, anterior on the left in sagittal. A click in
one view moves the shared cursor, and the other two views follow.
"""

from __future__ import annotations

from typing import Final

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPaintEvent, QPen
from PySide6.QtWidgets import QWidget

from gui.recon_data import BONE_COLOURS, BONES, LABEL_OF, SliceVolume

PLANES: Final = ("axial", "coronal", "sagittal")
BONE_WINDOW: Final = (400.0, 1800.0)  # HU level, width
LABEL_ALPHA: Final = 0.35
# Slice tints are stronger than the surface colours so thin cortices stay visible in the bone window.
SLICE_TINTS: Final = {
    "femur": (1.0, 0.85, 0.2),
    "tibia": (0.2, 0.7, 1.0),
    "fibula": (0.3, 1.0, 0.4),
    "patella": (1.0, 0.4, 0.3),
}


def _label_table() -> NDArray[np.float32]:
    table = np.zeros((256, 3), np.float32)
    for bone in BONES:
        table[LABEL_OF[bone]] = SLICE_TINTS.get(bone, BONE_COLOURS[bone])
    table.setflags(write=False)
    return table


_LABEL_RGB: Final = _label_table()


def plane_axes(plane: str) -> tuple[int, int, int]:
    """(fixed voxel axis, axis along display rows, axis along display columns); i=0, j=1, k=2."""
    return {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}[plane]


def slice_of(a: NDArray[np.generic], plane: str, index: int) -> NDArray[np.generic]:
    """The display image of one plane: both in-plane axes reversed to put right/anterior/superior
    where the conventions above want them."""
    fixed, _, _ = plane_axes(plane)
    # Basic indexing is a view (np.take would copy along the whole volume); remaining axes keep their order.
    s = a[(slice(None),) * fixed + (index,)]
    return np.ascontiguousarray(s.T[::-1, ::-1])


def display_to_voxel(plane: str, shape: tuple[int, int, int], row: float, col: float) -> dict[int, int]:
    """Voxel indices (by axis) under display pixel (row, col) of ``plane``."""
    _, ra, ca = plane_axes(plane)
    return {
        ra: int(np.clip(shape[ra] - 1 - int(row), 0, shape[ra] - 1)),
        ca: int(np.clip(shape[ca] - 1 - int(col), 0, shape[ca] - 1)),
    }


def rgb_slice(vol: SliceVolume, plane: str, index: int) -> NDArray[np.uint8]:
    level, width = BONE_WINDOW
    hu = np.asarray(slice_of(vol.hu, plane, index), dtype=np.float32)
    g = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0).astype(np.float32)
    rgb = np.repeat(g[..., None], 3, axis=2)
    if vol.labels is not None:
        lab = np.asarray(slice_of(vol.labels, plane, index), dtype=np.uint8)
        mask = lab > 0
        rgb[mask] = (1 - LABEL_ALPHA) * rgb[mask] + LABEL_ALPHA * _LABEL_RGB[lab[mask]]
    return np.ascontiguousarray((rgb * 255 + 0.5).astype(np.uint8))


class SliceView(QWidget):
    """One plane of the volume; ``clicked(axis_index_dict)`` reports the voxel under a click."""

    clicked = Signal(object)

    def __init__(self, plane: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plane = plane
        self.setMinimumSize(140, 140)
        self.vol: SliceVolume | None = None
        self.cursor_ijk = [0, 0, 0]
        self._img: QImage | None = None
        self._buf: NDArray[np.uint8] | None = None
        self.loading = False

    def set_volume(self, vol: SliceVolume | None, cursor: list[int], loading: bool = False) -> None:
        self.vol = vol
        self.loading = loading
        self.set_cursor(cursor)

    def set_cursor(self, cursor: list[int]) -> None:
        self.cursor_ijk = list(cursor)
        self._img = None
        if self.vol is not None:
            fixed, _, _ = plane_axes(self.plane)
            self._buf = rgb_slice(self.vol, self.plane, self.cursor_ijk[fixed])
            h, w, _ = self._buf.shape
            self._img = QImage(self._buf.data, w, h, 3 * w, QImage.Format.Format_RGB888)
        self.update()

    def _target(self) -> QRectF:
        """Where the slice is drawn: aspect kept in millimetres, centred."""
        assert self.vol is not None and self._img is not None
        _, ra, ca = plane_axes(self.plane)
        h_mm = self._img.height() * self.vol.spacing_mm[ra]
        w_mm = self._img.width() * self.vol.spacing_mm[ca]
        s = min(self.width() / w_mm, (self.height() - 16) / h_mm)
        w, h = w_mm * s, h_mm * s
        return QRectF((self.width() - w) / 2, 16 + (self.height() - 16 - h) / 2, w, h)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(10, 10, 10))
        p.setPen(QColor("white"))
        p.drawText(QRectF(4, 0, self.width(), 16), Qt.AlignmentFlag.AlignLeft, self.plane)
        if self.vol is None or self._img is None:
            p.drawText(
                self.rect(), Qt.AlignmentFlag.AlignCenter, "loading volume…" if self.loading else "no volume"
            )
            p.end()
            return
        t = self._target()
        p.drawImage(t, self._img)
        _, ra, ca = plane_axes(self.plane)
        shape = self.vol.hu.shape
        r = (shape[ra] - 1 - self.cursor_ijk[ra] + 0.5) / shape[ra]
        c = (shape[ca] - 1 - self.cursor_ijk[ca] + 0.5) / shape[ca]
        pen = QPen(QColor(255, 80, 80, 200), 1)
        pen.setCosmetic(True)
        p.setPen(pen)
        y = t.top() + r * t.height()
        x = t.left() + c * t.width()
        p.drawLine(QPointF(t.left(), y), QPointF(t.right(), y))
        p.drawLine(QPointF(x, t.top()), QPointF(x, t.bottom()))
        p.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if self.vol is None or self._img is None:
            return
        t = self._target()
        pos = event.position()
        if not t.contains(pos):
            return
        row = (pos.y() - t.top()) / t.height() * self._img.height()
        col = (pos.x() - t.left()) / t.width() * self._img.width()
        self.clicked.emit(display_to_voxel(self.plane, self.vol.hu.shape, row, col))
