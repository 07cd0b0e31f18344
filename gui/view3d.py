"""The 3D tab: bone surfaces, linked slices, the reprojection consistency verdict and film | re-projection.

Everything is loaded the first time the tab is shown, so opening a study stays quick.
"""

from __future__ import annotations

import html
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PySide6.QtCore import QPointF, Qt, QTimer
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPaintEvent, QPixmap, QWheelEvent
from PySide6.QtWidgets import (
    QApplication,
    QCheckBox,
    QColorDialog,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from appliance.errors import InputError
from gui.recon_data import BONE_COLOURS, Mesh, SliceVolume, load_meshes, load_slice_volume
from gui.render3d import Camera, fit_camera, render
from gui.slices import PLANES, SliceView
from gui.study import Study

log = logging.getLogger(__name__)

DEG_PER_PX: Final = 0.5


class MeshView(QWidget):
    """Software-rendered bone surfaces: drag to rotate, wheel to zoom, double-click or R to reset."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumSize(240, 240)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.meshes: list[Mesh] = []
        self.visible: dict[str, bool] = {}
        self.colours: dict[str, tuple[float, float, float]] = {}
        self.camera: Camera | None = None
        self._drag: QPointF | None = None
        self._geom: tuple[NDArray[np.float32], NDArray[np.int32], NDArray[np.float32]] | None = None
        self._frame: NDArray[np.uint8] | None = None
        self.last_render_s = 0.0

    def set_meshes(self, meshes: list[Mesh]) -> None:
        self.meshes = meshes
        self.visible = {m.name: True for m in meshes}
        self.colours = {m.name: BONE_COLOURS.get(m.name, (0.9, 0.9, 0.9)) for m in meshes}
        self._geom = None
        self.reset_view()

    def reset_view(self) -> None:
        verts = (
            np.concatenate([m.verts for m in self.meshes]) if self.meshes else np.zeros((0, 3), np.float32)
        )
        self.camera = fit_camera(verts, (max(self.width(), 1), max(self.height(), 1)))
        self._frame = None
        self.update()

    def set_bone_visible(self, name: str, on: bool) -> None:
        self.visible[name] = on
        self._geom = None
        self.update()

    def set_bone_colour(self, name: str, rgb: tuple[float, float, float]) -> None:
        self.colours[name] = rgb
        self._geom = None
        self.update()

    def _combined(self) -> tuple[NDArray[np.float32], NDArray[np.int32], NDArray[np.float32]]:
        if self._geom is None:
            vs, fs, cs = [], [], []
            base = 0
            for m in self.meshes:
                if not self.visible.get(m.name, True):
                    continue
                vs.append(m.verts)
                fs.append(m.faces + base)
                cs.append(np.tile(np.asarray(self.colours[m.name], np.float32), (len(m.faces), 1)))
                base += len(m.verts)
            if vs:
                self._geom = (np.concatenate(vs), np.concatenate(fs).astype(np.int32), np.concatenate(cs))
            else:
                self._geom = (
                    np.zeros((0, 3), np.float32),
                    np.zeros((0, 3), np.int32),
                    np.zeros((0, 3), np.float32),
                )
        return self._geom

    def render_image(self) -> NDArray[np.uint8]:
        """The current picture at device resolution (HiDPI aware)."""
        dpr = self.devicePixelRatioF()
        w, h = max(int(self.width() * dpr), 1), max(int(self.height() * dpr), 1)
        cam = self.camera or Camera()
        # Camera scale is in logical pixels; render at device pixels.
        cam = replace(cam, scale=cam.scale * dpr)
        t0 = time.perf_counter()
        v, f, c = self._combined()
        img = render(v, f, c, cam, (w, h))
        self.last_render_s = time.perf_counter() - t0
        return img

    def paintEvent(self, event: QPaintEvent) -> None:
        self._frame = self.render_image()
        h, w, _ = self._frame.shape
        qi = QImage(self._frame.data, w, h, 3 * w, QImage.Format.Format_RGB888)
        qi.setDevicePixelRatio(self.devicePixelRatioF())
        p = QPainter(self)
        p.drawImage(0, 0, qi)
        p.setPen(QColor("white"))
        p.drawText(6, 16, "anterior view at start · drag: rotate · wheel: zoom · R: reset")
        p.end()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self._drag = event.position()
        self.setFocus()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._drag is None or self.camera is None:
            return
        d = event.position() - self._drag
        self._drag = event.position()
        self.camera = self.camera.orbit(np.radians(d.x() * DEG_PER_PX), np.radians(d.y() * DEG_PER_PX))
        self.update()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        self._drag = None

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:
        self.reset_view()

    def wheelEvent(self, event: QWheelEvent) -> None:
        if self.camera is not None:
            self.camera = self.camera.zoomed(1.2 if event.angleDelta().y() > 0 else 1 / 1.2)
            self.update()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_R:
            self.reset_view()
        else:
            super().keyPressEvent(event)


class Recon3DPanel(QWidget):
    """Surfaces with per-bone visibility and colour, linked slices, consistency and reprojections."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.study: Study | None = None
        self.loaded = False
        self.mesh_view = MeshView()
        self.slice_views = {p: SliceView(p) for p in PLANES}
        for sv in self.slice_views.values():
            sv.clicked.connect(self._move_cursor)
        self.volume: SliceVolume | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xr3d-volume")
        self._volume_job: Future[SliceVolume | None] | None = None
        self._poll = QTimer(self)
        self._poll.setInterval(30)
        self._poll.timeout.connect(self._volume_ready)
        self.voxel = [0, 0, 0]
        self.consistency = QLabel()
        self.consistency.setWordWrap(True)
        self.consistency.setTextFormat(Qt.TextFormat.RichText)
        self._bones = QHBoxLayout()
        self.bone_boxes: dict[str, QCheckBox] = {}
        self.reprojections = QHBoxLayout()
        self.reprojection_labels: dict[str, QLabel] = {}

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.mesh_view, 1)
        lv.addLayout(self._bones)
        right = QWidget()
        grid = QGridLayout(right)
        grid.setContentsMargins(0, 0, 0, 0)
        for i, p in enumerate(PLANES):
            grid.addWidget(self.slice_views[p], i, 0)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        rep = QWidget()
        rep.setLayout(self.reprojections)
        rep.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        layout = QVBoxLayout(self)
        layout.addWidget(self.consistency)
        layout.addWidget(split, 1)
        layout.addWidget(QLabel("Input film | re-projection of the reconstruction (DRR):"))
        layout.addWidget(rep)

    def set_study(self, study: Study | None) -> None:
        self.study = study
        self.loaded = False
        self._poll.stop()
        self._volume_job = None
        self._show_consistency()

    def _show_consistency(self) -> None:
        rec = self.study.reconstruction if self.study is not None else None
        if not rec:
            self.consistency.setText("<b>No 3D reconstruction for this study.</b>")
            return
        c = rec.get("consistency") or {}
        score, thr, ok = c.get("score"), c.get("threshold"), c.get("consistent")
        per = ", ".join(f"{v} {s:.2f}" for v, s in (c.get("per_view") or {}).items())
        if ok:
            verdict = "<span style='color:#1a7f37'><b>consistent with the films</b></span>"
        else:
            verdict = (
                "<span style='color:#c01c28'><b>NOT consistent with the films: do not rely on the 3D "
                "reconstruction</b></span>"
            )
        s = f"{score:.2f}" if isinstance(score, float | int) else "—"
        t = f"{thr:.2f}" if isinstance(thr, float | int) else "—"
        model = rec.get("model", "")
        geo = rec.get("geometry") or {}
        frame = ""
        if geo.get("frame") == "nominal":
            # A clinic's films: the geometry was rebuilt from the DX header (docs/recon-checks.md).
            notes = "; ".join(html.escape(str(n)) for n in geo.get("notes") or [])
            frame = f"<br><span style='color:#8a5a00'>Geometry rebuilt from the film headers</span> ({notes})"
        self.consistency.setText(
            f"Reprojection consistency <b>{s}</b> (threshold {t}; {per}): {verdict}"
            + (f" <span style='color:#666'>[{model}]</span>" if model else "")
            + frame
        )

    def ensure_loaded(self) -> None:
        """Read meshes, volume and pictures (first time the tab is shown for this study)."""
        if self.loaded:
            return
        self.loaded = True
        while self._bones.count():
            item = self._bones.takeAt(0)
            if item is not None and item.widget() is not None:
                item.widget().deleteLater()  # type: ignore[union-attr]
        while self.reprojections.count():
            item = self.reprojections.takeAt(0)
            if item is not None and item.widget() is not None:
                item.widget().deleteLater()  # type: ignore[union-attr]
        self.bone_boxes.clear()
        self.reprojection_labels.clear()
        recon_dir = self.study.folder / "recon" if self.study is not None else None
        meshes = load_meshes(recon_dir) if recon_dir is not None and recon_dir.is_dir() else []
        self.mesh_view.set_meshes(meshes)
        for m in meshes:
            box = QCheckBox(m.name)
            box.setChecked(True)
            box.toggled.connect(lambda on, n=m.name: self.mesh_view.set_bone_visible(n, on))
            self.bone_boxes[m.name] = box
            colour = QPushButton()
            colour.setFixedWidth(28)
            colour.setToolTip(f"colour of the {m.name}")
            self._paint_swatch(colour, self.mesh_view.colours[m.name])
            colour.clicked.connect(lambda _=False, n=m.name, b=colour: self._pick_colour(n, b))
            self._bones.addWidget(box)
            self._bones.addWidget(colour)
        self._bones.addStretch(1)
        # The volume (tens of MB compressed) is read in a worker thread so the surfaces show at once.
        self.volume = None
        for sv in self.slice_views.values():
            sv.set_volume(None, [0, 0, 0], loading=recon_dir is not None and recon_dir.is_dir())
        if recon_dir is not None and recon_dir.is_dir():
            self._volume_job = self._pool.submit(load_slice_volume, recon_dir)
            self._poll.start()
        if recon_dir is not None:
            for p in sorted(recon_dir.glob("reprojection_*.png")):
                lab = QLabel()
                pm = QPixmap(str(p))
                lab.setPixmap(pm.scaledToHeight(180, Qt.TransformationMode.SmoothTransformation))
                lab.setToolTip(p.name)
                self.reprojection_labels[p.stem.removeprefix("reprojection_")] = lab
                self.reprojections.addWidget(lab)
        self.reprojections.addStretch(1)

    def wait_for_volume(self, timeout_s: float = 60.0) -> bool:
        """Block (processing events) until the volume is read; for screenshots and benchmarks."""
        app = QApplication.instance()
        end = time.perf_counter() + timeout_s
        while self._volume_job is not None and time.perf_counter() < end:
            time.sleep(0.01)
            if app is not None:
                app.processEvents()
        return self._volume_job is None

    def _volume_ready(self) -> None:
        job = self._volume_job
        if job is None or not job.done():
            return
        self._poll.stop()
        self._volume_job = None
        try:
            self.volume = job.result()
        except (OSError, ValueError, InputError) as exc:
            log.warning("cannot read the reconstructed volume: %s", exc)
            self.volume = None
        self.voxel = [s // 2 for s in self.volume.hu.shape] if self.volume is not None else [0, 0, 0]
        for sv in self.slice_views.values():
            sv.set_volume(self.volume, self.voxel)

    def _paint_swatch(self, button: QPushButton, rgb: tuple[float, float, float]) -> None:
        c = QColor.fromRgbF(*rgb)
        button.setStyleSheet(f"background-color: {c.name()};")

    def _pick_colour(self, name: str, button: QPushButton) -> None:
        c = QColorDialog.getColor(
            QColor.fromRgbF(*self.mesh_view.colours[name]), self, f"Colour of the {name}"
        )
        if c.isValid():
            rgb = (c.redF(), c.greenF(), c.blueF())
            self.mesh_view.set_bone_colour(name, rgb)
            self._paint_swatch(button, rgb)

    def _move_cursor(self, axes: dict[int, int]) -> None:
        for axis, value in axes.items():
            self.voxel[axis] = value
        for sv in self.slice_views.values():
            sv.set_cursor(self.voxel)
