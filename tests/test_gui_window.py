"""The real workstation window, offscreen (pytest-qt): open a study from the worklist, drag a landmark and
compare the displayed angles and CPAK type with the analytics engine, save a correction, toggle the
overlay, switch films, window/level, live worklist, 3D tab.

The study is built from real parts (tests/gui_fixtures.py: simulated DICOM films, the shipped landmark
models through ONNX Runtime, real consistency scoring), once per machine in pytest's cache.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists

import numpy as np
import pydicom
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QWidget

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.cpak import cpak_display
from appliance.outputs.sr_read import read_measurement_groups
from gui.angle_panel import fmt
from gui.film_image import WindowLevel, apply_window
from gui.main_window import MainWindow
from gui.study import load_study
from tests.gui_fixtures import cached_study_source, copy_study, sha256

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
USER = "dr.test"


@pytest.fixture(scope="session")
def study_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("xr3d-gui")) if cache is not None else tmp_path_factory.mktemp("xr3d-gui")
    return cached_study_source(root)


@pytest.fixture
def outbox(study_source: Path, tmp_path: Path) -> Path:
    copy_study(study_source, tmp_path / "outbox")
    return tmp_path / "outbox"


@pytest.fixture
def window(qtbot, outbox: Path) -> MainWindow:  # type: ignore[no-untyped-def]
    w = MainWindow(outbox, USER)
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    qtbot.waitExposed(w)
    return w


def _send_move(widget: QWidget, pos: QPoint, buttons: Qt.MouseButton) -> None:
    # QTest.mouseMove carries no pressed buttons; a drag needs move events that do.
    local, screen = QPointF(pos), QPointF(widget.mapToGlobal(pos))
    no_button, no_mod = Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier
    ev = QMouseEvent(QEvent.Type.MouseMove, local, screen, no_button, buttons, no_mod)
    QApplication.sendEvent(widget, ev)


def drag(
    widget: QWidget, start: QPoint, end: QPoint, button: Qt.MouseButton = Qt.MouseButton.LeftButton
) -> None:
    QTest.mousePress(widget, button, Qt.KeyboardModifier.NoModifier, start)
    for t in np.linspace(0.2, 1.0, 5):
        p = QPoint(round(start.x() + t * (end.x() - start.x())), round(start.y() + t * (end.y() - start.y())))
        _send_move(widget, p, button)
    QTest.mouseRelease(widget, button, Qt.KeyboardModifier.NoModifier, end)


def open_first(window: MainWindow) -> None:
    rect = window.table.visualRect(window.proxy.index(0, 0))
    QTest.mouseClick(
        window.table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, rect.center()
    )
    assert window.session is not None


def engine(window: MainWindow, points: dict[str, tuple[float, float]]):  # type: ignore[no-untyped-def]
    """What the analytics engine says for ``points`` on the measured film (the pipeline's call)."""
    assert window.session is not None
    st = window.session.study
    film = st.document["films"]["longleg_ap"]
    return measure_2d(points, tuple(film["detector_spacing_mm"]), film["magnification"], st.side)


def test_open_study_from_worklist(window: MainWindow, outbox: Path) -> None:
    assert len(window.model.entries) == 1
    doc = json.loads(next(outbox.glob("*/result.json")).read_text())
    assert window.table.model().data(window.proxy.index(0, 3)) == doc["cpak"]["label"]
    open_first(window)
    shown = window.film_view.displayed_pixels()
    film = doc["films"]["longleg_ap"]
    assert shown is not None and shown.shape == (film["rows"], film["columns"])
    assert shown.std() > 10  # a real film, not a blank
    assert set(window.film_view.handles) == set(doc["landmarks_2d"]["longleg_ap"])
    for key in ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO"):
        assert window.angles.values[key] == fmt(key, doc["angles_2d"][key])
    assert window.angles.values["CPAK"] == cpak_display(doc["cpak"]["label"], doc["cpak"]["borderline"])
    assert window.first_image_s is not None


def _cpak_changing_move(window: MainWindow) -> tuple[str, float]:
    """A landmark and a row shift (film pixels) for which the engine predicts a different CPAK type."""
    assert window.session is not None
    pts = dict(window.session.points)
    before = engine(window, pts).cpak
    for name in ("MTP", "LTP", "MDFC", "LDFC"):
        for dy in (-12.0, 12.0, -20.0, 20.0):
            moved = {**pts, name: (pts[name][0], pts[name][1] + dy)}
            after = engine(window, moved).cpak
            if after is not None and before is not None and after.type != before.type:
                return name, dy
    pytest.fail("no small joint-line move changes the CPAK type of this film")


def drag_landmark(window: MainWindow, name: str, dy_film_px: float) -> dict[str, tuple[float, float]]:
    """Drag ``name`` with real mouse events; returns where the engine should now see the landmarks."""
    fv = window.film_view
    fv.fit()
    fv.zoom(4.0)
    handle = fv.handles[name]
    fv.centerOn(handle.pos())
    QApplication.processEvents()
    start = fv.mapFromScene(handle.pos())
    end = fv.mapFromScene(handle.pos() + QPointF(0.0, dy_film_px))
    s0, s1 = fv.mapToScene(start), fv.mapToScene(end)
    before = dict(window.session.points) if window.session else {}
    drag(fv.viewport(), start, end)
    c, r = before[name]
    return {**before, name: (c + s1.x() - s0.x(), r + s1.y() - s0.y())}


def test_drag_landmark_updates_angles_and_cpak(window: MainWindow) -> None:
    open_first(window)
    assert window.session is not None
    original = engine(window, window.session.points)
    name, dy = _cpak_changing_move(window)
    expected_pts = drag_landmark(window, name, dy)
    got = window.session.points[name]
    assert got == pytest.approx(expected_pts[name], abs=1e-6)
    expected = engine(window, expected_pts)
    for key in ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO"):
        assert window.angles.values[key] == fmt(key, expected.value(key))
    assert expected.cpak is not None and original.cpak is not None
    assert window.angles.values["CPAK"] == expected.cpak.display
    assert expected.cpak.label != original.cpak.label
    assert window.chart.current_type() == expected.cpak.label
    assert window.save_btn.isEnabled()


def test_save_correction_keeps_original(window: MainWindow, outbox: Path, tmp_path: Path) -> None:
    open_first(window)
    assert window.session is not None
    folder = window.session.study.folder
    result = folder / "result.json"
    before = result.read_bytes()
    t0 = datetime.now(UTC)
    expected_pts = drag_landmark(window, "AC", 25.0)
    QTest.keyClick(window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    files = sorted((folder / "corrections").glob("*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["schema"] == "xr3d.correction/1" and doc["who"] == USER
    when = datetime.fromisoformat(doc["when"].replace("Z", "+00:00"))
    assert t0 - timedelta(seconds=1) <= when <= datetime.now(UTC) + timedelta(seconds=1)
    assert doc["based_on_sha256"] == sha256(result)
    marks = doc["landmarks_2d"]["longleg_ap"]
    assert (marks["AC"]["col"], marks["AC"]["row"]) == pytest.approx(expected_pts["AC"], abs=1e-6)
    assert marks["AC"]["moved"] and not marks["FHC"]["moved"]
    expected = engine(window, expected_pts)
    assert doc["angles_2d"]["mHKA"] == pytest.approx(expected.mhka, abs=1e-9)
    assert result.read_bytes() == before  # the original is never changed
    assert not window.save_btn.isEnabled()
    # Reopening shows the correction, with who/when.
    window.open_study(folder)
    assert window.session is not None and window.session.points["AC"] == pytest.approx(expected_pts["AC"])
    assert USER in window.header.text()
    assert window.model.entries[0].corrections == 1
    pdf = window.export_report(tmp_path / "report.pdf")
    assert pdf is not None and pdf.read_bytes()[:5] == b"%PDF-"
    # Revert goes back to the pipeline's landmarks (unsaved until Ctrl+S).
    QTest.keyClick(window, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    assert window.session.points == {
        n: (p.col, p.row) for n, p in load_study(folder).landmarks["longleg_ap"].items()
    }


def _green(window: MainWindow) -> int:
    img = window.film_view.viewport().grab().toImage()
    arr = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())[
        :, : 4 * img.width()
    ]
    px = arr.reshape(img.height(), img.width(), 4)
    b, g, r = px[..., 0].astype(int), px[..., 1].astype(int), px[..., 2].astype(int)
    return int(((g > 180) & (r < 120) & (b < 120)).sum())


def test_overlay_toggle_and_film_switch(window: MainWindow, outbox: Path) -> None:
    open_first(window)
    with_overlay = _green(window)
    assert with_overlay > 20
    QTest.keyClick(window, Qt.Key.Key_O)
    assert not window.film_view.overlay_visible() and _green(window) < with_overlay // 4
    QTest.keyClick(window, Qt.Key.Key_O)
    assert window.film_view.overlay_visible()
    doc = json.loads(next(outbox.glob("*/result.json")).read_text())
    QTest.keyClick(window, Qt.Key.Key_2)
    assert window.current_film() == "knee_ap"
    shown = window.film_view.displayed_pixels()
    assert shown is not None and shown.shape == (
        doc["films"]["knee_ap"]["rows"],
        doc["films"]["knee_ap"]["columns"],
    )
    # A knee film shows the knee model's own landmarks, correctable like the long-leg film's.
    knee_marks = ((doc.get("knee_films") or {}).get("knee_ap") or {}).get("landmarks") or {}
    assert knee_marks, "the fixture study's knee AP film was not measured"
    assert set(window.film_view.handles) == set(knee_marks)
    assert all(h.editable for h in window.film_view.handles.values())
    window.film_buttons.buttons()[2].click()
    assert window.current_film() == "knee_lat"
    QTest.keyClick(window, Qt.Key.Key_1)
    assert window.current_film() == "longleg_ap" and len(window.film_view.handles) == 8


def test_window_level_zoom_fit(window: MainWindow) -> None:
    open_first(window)
    fv = window.film_view
    before = fv.displayed_pixels()
    assert before is not None
    before = before.copy()
    centre = fv.viewport().rect().center()
    drag(fv.viewport(), centre, centre + QPoint(120, 60), Qt.MouseButton.RightButton)
    assert fv.wl != WindowLevel()
    after = fv.displayed_pixels()
    assert after is not None and not np.array_equal(after, before)
    q = window.session.film_pixels("longleg_ap") if window.session else None
    assert q is not None and np.array_equal(after, apply_window(q, fv.wl))
    assert fv.wl.window > 1.0 - 1e-9 and fv.wl.level < 0.5  # wider to the right, brighter upward
    QTest.keyClick(window, Qt.Key.Key_W)
    assert fv.wl == WindowLevel() and np.array_equal(fv.displayed_pixels(), before)
    z = fv.zoom_factor()
    QTest.keyClick(window, Qt.Key.Key_Plus)
    assert fv.zoom_factor() == pytest.approx(z * 1.25)
    QTest.keyClick(window, Qt.Key.Key_F)
    assert fv.zoom_factor() == pytest.approx(z)


def test_worklist_live_update_and_search(window: MainWindow, outbox: Path, qtbot) -> None:  # type: ignore[no-untyped-def]
    src = next(p for p in outbox.iterdir() if p.is_dir())
    # A new study arrives the way the pipeline publishes one: written aside, then renamed into place.
    tmp = outbox / ".2.25.999.tmp-1"
    shutil.copytree(src, tmp)
    doc = json.loads((tmp / "result.json").read_text())
    # The fixture study's own verdict depends on the shipped models; the new one is made to need review.
    before = 1 if doc["flags"].get("needs_review") else 0
    doc["study_uid"] = "2.25.999"
    doc["flags"]["needs_review"] = True
    (tmp / "result.json").write_text(json.dumps(doc))
    qtbot.wait(300)
    assert len(window.model.entries) == 1  # a temporary folder is never listed
    tmp.rename(outbox / "2.25.999")
    qtbot.waitUntil(lambda: len(window.model.entries) == 2, timeout=6000)
    assert f"{before + 1} to review" in window.worklist_count.text()
    window.search.setText("2.25.999")
    assert window.proxy.rowCount() == 1
    window.search.setText("")
    assert window.proxy.rowCount() == 2
    assert window.select_uid("2.25.999") and window.session is not None
    assert "needs review" in window.header.text()


def test_3d_tab(window: MainWindow, qtbot) -> None:  # type: ignore[no-untyped-def]
    open_first(window)
    QTest.keyClick(window, Qt.Key.Key_D)
    assert window.tabs.currentIndex() == 1
    panel = window.recon
    assert {m.name for m in panel.mesh_view.meshes} == {"femur", "tibia", "fibula", "patella"}
    img = panel.mesh_view.render_image()
    background = img[0, 0].copy()
    bone = np.any(img != background, axis=2)
    assert 0.05 < bone.mean() < 0.95
    panel.bone_boxes["femur"].setChecked(False)
    assert np.any(np.any(panel.mesh_view.render_image() != background, axis=2) != bone)
    assert "consistent with the films" in panel.consistency.text() and "0." in panel.consistency.text()
    assert set(panel.reprojection_labels) == {"knee_ap", "knee_lat"}
    qtbot.waitUntil(lambda: panel.volume is not None, timeout=20000)  # read in a worker thread
    start = list(panel.voxel)
    ax = panel.slice_views["axial"]
    QTest.mouseClick(
        ax, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, ax.rect().center() + QPoint(20, 10)
    )
    assert panel.voxel != start and panel.voxel[2] == start[2]  # axial click keeps the axial slice
    assert panel.slice_views["coronal"].cursor_ijk == panel.voxel


def test_no_network_module(window: MainWindow) -> None:
    open_first(window)
    assert "PySide6.QtNetwork" not in sys.modules


def test_export_report_and_verified_sr(window: MainWindow, tmp_path: Path) -> None:
    open_first(window)
    assert window.session is not None
    folder = window.session.study.folder
    # Unedited: the service's own report is exported unchanged.
    assert window.export_report(tmp_path / "as_is.pdf") is not None
    assert (tmp_path / "as_is.pdf").read_bytes() == (folder / "report.pdf").read_bytes()
    expected_pts = drag_landmark(window, "AC", 25.0)
    assert not window.sr_btn.isEnabled()  # an SR records a saved, attributed correction only
    QTest.keyClick(window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert window.sr_btn.isEnabled()
    out = window.export_sr(tmp_path / "verified_sr.dcm")
    assert out is not None
    ds = pydicom.dcmread(out)
    auto = pydicom.dcmread(folder / "dicom" / "sr.dcm")
    assert ds.VerificationFlag == "VERIFIED" and ds.CompletionFlag == "COMPLETE"
    assert ds.VerifyingObserverSequence[0].VerifyingObserverName.family_name == USER
    assert ds.StudyInstanceUID == auto.StudyInstanceUID and ds.SOPInstanceUID != auto.SOPInstanceUID
    refs = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert refs[0].ReferencedSOPInstanceUID == auto.SOPInstanceUID
    corrected = engine(window, expected_pts).mhka
    original = json.loads((folder / "result.json").read_text())["angles_2d"]["mHKA"]
    assert corrected is not None and abs(corrected - original) > 0.05

    def numbers(d: pydicom.Dataset) -> list[float]:
        return [
            n.value
            for g in read_measurement_groups(d).values()
            for n in g.numbers.values()
            if n.value is not None
        ]

    assert any(abs(v - corrected) < 1e-3 for v in numbers(ds))
    assert not any(abs(v - corrected) < 1e-3 for v in numbers(auto))


def test_keyboard_nudges_selected_landmark(window: MainWindow) -> None:
    open_first(window)
    assert window.session is not None
    fv = window.film_view
    fv.fit()
    fv.zoom(4.0)
    fv.centerOn(fv.handles["AC"].pos())
    QApplication.processEvents()
    before = dict(window.session.points)
    at = fv.mapFromScene(fv.handles["AC"].pos())
    QTest.mouseClick(fv.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at)
    assert fv.selected_landmark() == "AC" and window.session.points == before  # a click does not move it
    for _ in range(3):
        QTest.keyClick(fv, Qt.Key.Key_Right)
    QTest.keyClick(fv, Qt.Key.Key_Down, Qt.KeyboardModifier.ShiftModifier)
    c, r = before["AC"]
    assert window.session.points["AC"] == pytest.approx((c + 3.0, r + 10.0))
    expected = engine(window, {**before, "AC": (c + 3.0, r + 10.0)})
    assert window.angles.values["mHKA"] == fmt("mHKA", expected.mhka)


def test_knee_film_landmarks_are_corrected_like_the_long_leg_film(window: MainWindow, outbox: Path) -> None:
    """A knee film's landmarks can be dragged like the long-leg film's: its JLCA follows live (the
    pipeline's own ``measure_knee_film``), the correction saves the knee landmarks and the re-made
    measurement, and re-opening the study shows the corrected points. A failed knee film shows why."""
    from appliance.landmarks.knee_views import measure_knee_film

    result = next(outbox.glob("*/result.json"))
    doc = json.loads(result.read_text())
    film = doc["films"]["knee_ap"]
    rows, cols = film["rows"], film["columns"]
    layout = (
        ("FKC", 0.50, 0.45, 0.95),
        ("MDFC", 0.35, 0.50, 0.95),
        ("LDFC", 0.65, 0.50, 0.90),
        ("MTP", 0.35, 0.52, 0.92),
        ("LTP", 0.65, 0.52, 0.91),
        ("TKC", 0.50, 0.55, 0.60),
    )
    marks = {
        n: {"col": cols * fc, "row": rows * fr, "confidence": c, "low_confidence": c < 0.8}
        for n, fc, fr, c in layout
    }
    spacing, mag = tuple(film["detector_spacing_mm"]), film["magnification"] or 1.0

    def jlca(points: dict[str, tuple[float, float]]) -> float:
        v = measure_knee_film("knee_ap", points, spacing, mag)["JLCA"]
        assert v is not None
        return float(v)

    original = {n: (m["col"], m["row"]) for n, m in marks.items()}
    doc["knee_films"] = {
        "knee_ap": {"status": "measured", "landmarks": marks, "measurements": {"JLCA": jlca(original)}},
        "knee_lat": {"status": "failed", "reason": "[not_lower_limb] odd film"},
    }
    result.write_text(json.dumps(doc))
    open_first(window)
    QTest.keyClick(window, Qt.Key.Key_2)
    assert window.current_film() == "knee_ap"
    fv = window.film_view
    assert set(fv.handles) == set(marks) and all(h.editable for h in fv.handles.values())
    note = window.film_note.text()
    assert f"JLCA {jlca(original):.1f}°" in note and "low confidence: TKC" in note
    s = window.session
    assert s is not None and not s.dirty
    long_leg_before = dict(s.points)
    fv.move_landmark("LTP", original["LTP"][0], original["LTP"][1] + 40.0)
    moved = {**original, "LTP": (original["LTP"][0], original["LTP"][1] + 40.0)}
    assert s.knee_points["knee_ap"]["LTP"] == pytest.approx(moved["LTP"])
    assert abs(jlca(moved) - jlca(original)) > 0.5  # the move changes the angle measurably
    assert f"JLCA {jlca(moved):.1f}° (model {jlca(original):.1f}°)" in window.film_note.text()
    assert s.dirty and s.points == long_leg_before  # the long-leg landmarks are untouched
    assert window.save_btn.isEnabled()
    path = window.save_correction()
    assert path is not None and not s.dirty
    saved = json.loads(path.read_text())
    assert saved["landmarks_2d"]["knee_ap"]["LTP"]["moved"] is True
    assert saved["landmarks_2d"]["knee_ap"]["MTP"]["moved"] is False
    assert saved["knee_measurements"]["knee_ap"]["JLCA"] == pytest.approx(jlca(moved))
    # The verified SR carries the corrected knee-film value in that film's group.
    sr = window.export_sr(outbox.parent / "verified_knee_sr.dcm")
    assert sr is not None
    groups = read_measurement_groups(pydicom.dcmread(sr))
    assert groups["knee_ap knee film"].numbers["JLCA"].value == pytest.approx(jlca(moved), abs=1e-4)
    window.film_buttons.buttons()[2].click()
    assert window.current_film() == "knee_lat" and fv.handles == {}
    assert "failed" in window.film_note.text() and "not_lower_limb" in window.film_note.text()
    QTest.keyClick(window, Qt.Key.Key_1)
    assert len(fv.handles) == 8 and all(h.editable for h in fv.handles.values())
    open_first(window)  # re-open: the saved correction is where editing resumes
    assert window.session is not None
    assert window.session.knee_points["knee_ap"]["LTP"] == pytest.approx(moved["LTP"])
    window.revert()
    assert window.session.knee_points["knee_ap"]["LTP"] == pytest.approx(original["LTP"])
