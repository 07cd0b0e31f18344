"""GUI parts without the window: the screenshot command (also at HiDPI), the 3D flag when the reconstruction
is not consistent, mesh readers, slice orientation, the software renderer, and the older result schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before any QApplication exists

import numpy as np
import pytest
from PIL import Image

from appliance.cli.main import main
from gui.recon_data import SliceVolume, read_ply, read_stl
from gui.render3d import Camera, fit_camera, render
from gui.slices import display_to_voxel, plane_axes, slice_of
from gui.study import load_study
from tests.gui_fixtures import cached_study_source, copy_study, write_ply, write_stl


@pytest.fixture(scope="session")
def study_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("xr3d-gui")) if cache is not None else tmp_path_factory.mktemp("xr3d-gui")
    return cached_study_source(root)


def test_screenshot_command(qapp, study_source: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    study = copy_study(study_source, tmp_path / "outbox")
    out = tmp_path / "shot.png"
    rc = main(["gui", "--outbox", str(study.parent), "--screenshot", str(out), "--study", study.name])
    assert rc == 0
    img = np.asarray(Image.open(out).convert("L"))
    assert img.shape == (1000, 1600) and img.std() > 20
    assert not (study / "corrections").exists()  # looking changes nothing


def test_screenshot_hidpi_and_3d_inconsistent(study_source: Path, tmp_path: Path) -> None:
    study = copy_study(study_source, tmp_path / "outbox")
    doc = json.loads((study / "result.json").read_text())
    doc["reconstruction"]["consistency"]["consistent"] = False
    (study / "result.json").write_text(json.dumps(doc))
    out = tmp_path / "hidpi.png"
    # A fresh process: the scale factor must be set before Qt starts.
    cmd = [sys.executable, "-m", "appliance.cli.main", "gui", "--outbox", str(study.parent)]
    cmd += [
        "--screenshot",
        str(out),
        "--study",
        study.name,
        "--tab",
        "3d",
        "--size",
        "1200x800",
        "--scale",
        "2",
    ]
    subprocess.run(
        cmd, check=True, capture_output=True, timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    )
    assert Image.open(out).size == (2400, 1600)


def test_inconsistent_reconstruction_is_flagged(qtbot, study_source: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from gui.main_window import MainWindow

    study = copy_study(study_source, tmp_path / "outbox")
    doc = json.loads((study / "result.json").read_text())
    doc["reconstruction"]["consistency"]["consistent"] = False
    (study / "result.json").write_text(json.dumps(doc))
    w = MainWindow(study.parent, "t")
    qtbot.addWidget(w)
    assert "3D inconsistent" in w.model.entries[0].flags
    assert w.select_uid(study.name)
    assert "NOT consistent with the films" in w.recon.consistency.text()


def test_mesh_readers_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    verts = rng.normal(size=(50, 3)).astype(np.float32)
    faces = rng.integers(0, 50, size=(80, 3)).astype(np.int32)
    write_ply(tmp_path / "m.ply", verts, faces)
    v, f = read_ply(tmp_path / "m.ply")
    assert np.array_equal(v, verts) and np.array_equal(f, faces)
    write_stl(tmp_path / "m.stl", verts, faces)
    v2, f2 = read_stl(tmp_path / "m.stl")
    assert np.allclose(v2[f2], verts[faces])
    (tmp_path / "a.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "property float nx\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 1\n1 0 0 1\n0 1 0 1\n3 0 1 2\n"
    )
    v3, f3 = read_ply(tmp_path / "a.ply")
    assert v3.shape == (3, 3) and f3.tolist() == [[0, 1, 2]]


def test_slice_orientation_and_click_mapping() -> None:
    # Canonical (RAS) voxel order: i grows to the patient's right, j anterior, k superior.
    shape = (5, 6, 7)
    vol = np.zeros(shape, np.float32)
    vol[4, 5, 6] = 1.0  # the most right, anterior, superior voxel
    ax = slice_of(vol, "axial", 6)
    assert ax.shape == (6, 5) and ax[0, 0] == 1.0  # anterior at the top, patient's right on the viewer's left
    cor = slice_of(vol, "coronal", 5)
    assert cor.shape == (7, 5) and cor[0, 0] == 1.0  # superior at the top
    sag = slice_of(vol, "sagittal", 4)
    assert sag.shape == (7, 6) and sag[0, 0] == 1.0  # superior up, anterior on the left
    for plane in ("axial", "coronal", "sagittal"):
        _, ra, ca = plane_axes(plane)
        hit = display_to_voxel(plane, shape, 0.2, 0.7)
        assert hit == {ra: shape[ra] - 1, ca: shape[ca] - 1}
    SliceVolume(vol, None, (1.0, 1.0, 1.0))


def test_renderer_draws_nearest_surface() -> None:
    # Two squares facing the viewer of the anterior view: the anterior one (smaller y in LPS) must win.
    def square(y: float) -> tuple[np.ndarray, np.ndarray]:
        v = np.array([[-10, y, -10], [10, y, -10], [10, y, 10], [-10, y, 10]], np.float32)
        return v, np.array([[0, 1, 2], [0, 2, 3]], np.int32)

    v1, f1 = square(-5.0)  # anterior
    v2, f2 = square(5.0)
    verts = np.concatenate([v1, v2])
    faces = np.concatenate([f1, f2 + 4])
    colours = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]], np.float32)
    cam = fit_camera(verts, (64, 64))
    img = render(verts, faces, colours, cam, (64, 64))
    centre = img[32, 32]
    assert centre[0] > 100 and centre[2] == 0
    posterior_view = np.array(
        [[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
    )  # right, up, toward viewer
    back = render(verts, faces, colours, Camera(posterior_view, cam.centre, cam.scale), (64, 64))
    assert back[32, 32][2] > 100 and back[32, 32][0] == 0  # seen from behind, the posterior square wins
    assert img[0, 0].tolist() == [32, 36, 44]  # background outside the squares


def test_process_schema_is_read(tmp_path: Path) -> None:
    doc = {
        "schema": "xr3d.process/1",
        "status": "measured",
        "study_uid": "1.2.3",
        "side": "R",
        "input": {"rows": 100, "columns": 40, "detector_spacing_mm": [0.5, 0.5], "magnification": 1.1},
        "landmarks": {"FHC": {"col": 10.0, "row": 5.0, "confidence": 0.9, "low_confidence": False}},
        "angles_2d": {"mHKA": None, "mLDFA": 88.0},
        "cpak": None,
        "flags": {"needs_review": True},
    }
    (tmp_path / "result.json").write_text(json.dumps(doc))
    st = load_study(tmp_path)
    assert st.films["longleg_ap"].detector_spacing_mm == (0.5, 0.5) and st.films["longleg_ap"].path is None
    assert st.landmarks["longleg_ap"]["FHC"].col == 10.0 and st.needs_review
    assert st.angles == {"mHKA": None, "mLDFA": 88.0}


def test_unmeasured_and_broken_studies(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An ingested-only study opens with every value shown as missing; an unreadable result is skipped."""
    from gui.main_window import MainWindow

    (tmp_path / "1.2.3").mkdir()
    (tmp_path / "1.2.3" / "result.json").write_text(
        json.dumps({"schema": "xr3d.result/1", "status": "ingested_only", "study_uid": "1.2.3", "films": {}})
    )
    (tmp_path / "1.2.4").mkdir()
    (tmp_path / "1.2.4" / "result.json").write_text("not json")
    w = MainWindow(tmp_path, "t")
    qtbot.addWidget(w)
    assert [e.uid for e in w.model.entries] == ["1.2.3"]
    assert w.select_uid("1.2.3")
    assert set(w.angles.values.values()) == {"—"}
    assert not w.sr_btn.isEnabled() and "No DICOM film" in w.sr_btn.toolTip()
    assert w.film_view.displayed_pixels() is None
    w.tabs.setCurrentIndex(1)
    assert "No 3D reconstruction" in w.recon.consistency.text()
    pdf = w.export_report(tmp_path / "r.pdf")
    assert pdf is not None and pdf.read_bytes()[:5] == b"%PDF-"


def test_nominal_geometry_is_said_in_the_3d_tab(qtbot, study_source: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A reconstruction from a clinic's films (geometry rebuilt from the headers) says so, with the
    assumptions made."""
    from gui.main_window import MainWindow

    study = copy_study(study_source, tmp_path / "outbox")
    doc = json.loads((study / "result.json").read_text())
    doc["reconstruction"]["geometry"] = {
        "frame": "nominal",
        "longleg_needs_registration": True,
        "notes": ["knee_lat: magnification 1.1 assumed (no SOD in the header)"],
    }
    (study / "result.json").write_text(json.dumps(doc))
    w = MainWindow(study.parent, "t")
    qtbot.addWidget(w)
    assert w.select_uid(study.name)
    text = w.recon.consistency.text()
    assert "rebuilt from the film headers" in text and "magnification 1.1 assumed" in text
