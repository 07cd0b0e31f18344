"""The Qt application object and offscreen rendering of the window (screenshots for docs and tests)."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from appliance.errors import InputError
from gui.main_window import MainWindow

log = logging.getLogger(__name__)


def make_app() -> QApplication:
    """The one QApplication (reused when it exists, as under pytest-qt)."""
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        return existing
    # Fractional scale factors (1.25, 1.5) as the screen asks, instead of rounding to whole numbers.
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication(["xr3d-gui"])
    app.setApplicationName("xr3d")
    return app


def screenshot(window: MainWindow, uid: str, out: Path, size: tuple[int, int], tab: str = "films") -> Path:
    """Open study ``uid`` in ``window``, show ``tab`` and write the whole window to ``out`` (PNG)."""
    app = QApplication.instance()
    window.resize(*size)
    window.show()
    if app is not None:
        app.processEvents()
    if not window.select_uid(uid):
        raise InputError(f"study {uid} is not in the outbox {window.model.outbox}", reason="study_not_found")
    if tab == "3d":
        window.tabs.setCurrentIndex(1)
        window.recon.wait_for_volume()
    if tab == "worklist":
        window.splitter.setSizes([int(size[0] * 0.7), int(size[0] * 0.15), int(size[0] * 0.15)])
    if app is not None:
        app.processEvents()
    window.film_view.fit()
    pix = window.worklist_pane.grab() if tab == "worklist" else window.grab()
    out.parent.mkdir(parents=True, exist_ok=True)
    if pix.isNull() or not pix.save(str(out), "PNG"):
        raise InputError(f"could not write the screenshot {out}", reason="screenshot_failed")
    log.info("screenshot of study written to %s", out)
    return out
