"""Reconstruction from a clinic's films: nominal geometry from the standard DX header, the knee films'
joint-line alignment, the long-leg film's registration to the knee frame, and the whole study with the
private geometry block stripped (real DICOM files, the shipped network through ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from appliance.dicomio.geometry_tags import PRIVATE_GROUP, read_geometry
from appliance.dicomio.nominal_geometry import (
    align_joint_line,
    choose_joint_row,
    joint_line_row,
    nominal_geometry,
    shifted,
)
from appliance.errors import InputError
from appliance.geometry.projection import centred_geometry
from appliance.recon.frames import FRAME_NOMINAL, FRAME_RECORDED, load_study_frames, register_longleg
from appliance.recon.study import reconstruct_study
from tests.service_films import cached_template

VIEWS = ("knee_ap", "knee_lat", "longleg_ap")


def _header(**kw: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = 1200, 960
    ds.ImagerPixelSpacing = [0.25, 0.25]
    ds.DistanceSourceToDetector = "1100"
    ds.DistanceSourceToPatient = "1000"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_nominal_geometry_reads_beam_axes_and_distances() -> None:
    ap = nominal_geometry(_header(ViewPosition="AP", PatientOrientation=["L", "F"]), "knee_ap")
    assert ap is not None and ap.assumptions == ()
    g = ap.geometry
    assert np.allclose(g.u, [1, 0, 0]) and np.allclose(g.v, [0, 0, -1])
    assert np.allclose(g.source, [0, -1000, 0])  # anterior, SOD before the isocentre at the origin
    assert np.allclose(g.project(np.zeros((1, 3)))[0], [(960 - 1) / 2, (1200 - 1) / 2])
    assert g.magnification_at(np.zeros(3)) == pytest.approx(1.1)
    mirrored = nominal_geometry(_header(ViewPosition="AP", PatientOrientation=["R", "F"]), "knee_ap")
    assert mirrored is not None and np.allclose(mirrored.geometry.u, [-1, 0, 0])
    rl = nominal_geometry(_header(ViewPosition="RL", PatientOrientation=["P", "F"]), "knee_lat")
    assert rl is not None and np.allclose(rl.geometry.source, [1000, 0, 0])  # right side on the detector
    guessed = nominal_geometry(_header(ImageLaterality="L"), "knee_lat")
    assert guessed is not None and np.allclose(guessed.geometry.source, [-1000, 0, 0])
    assert any("lateral beam assumed" in a for a in guessed.assumptions)
    assert any("standard display" in a for a in guessed.assumptions)
    no_sod = nominal_geometry(_header(DistanceSourceToPatient=None, ViewPosition="AP"), "knee_ap")
    assert no_sod is not None and any("magnification 1.1" in a for a in no_sod.assumptions)
    assert nominal_geometry(_header(DistanceSourceToDetector=None), "knee_ap") is None


def test_joint_line_is_found_and_moved_to_z0() -> None:
    g = nominal_geometry(_header(ViewPosition="AP", PatientOrientation=["L", "F"]), "knee_ap")
    assert g is not None
    img = np.full((1200, 960), 0.8, dtype=np.float32)
    img[640:660, 200:760] = 0.2  # the joint space, 10 mm tall, 12.5 mm below the centre
    assert joint_line_row(img, 0.25) == pytest.approx(649.5, abs=0.6)
    aligned, dz = align_joint_line(g.geometry, img)
    pt = aligned.back_project(np.array([479.5]), np.array([649.5]), np.zeros(3))
    assert abs(float(np.asarray(pt).reshape(-1)[2])) < 0.3
    assert dz == pytest.approx(50.0 * 0.25 / 1.1, abs=0.3)


def test_longleg_registration_recovers_the_knee_frame() -> None:
    rng = np.random.default_rng(3)
    true_ll = centred_geometry(
        name="longleg_ap",
        isocenter_mm=[20.0, 0.0, -300.0],
        beam_dir=[0, 1, 0],
        u_dir=[1, 0, 0],
        sid_mm=2700.0,
        sod_mm=2500.0,
        width_mm=430.0,
        height_mm=1300.0,
        pitch_mm=0.35,
    )
    knee = {n: rng.normal(0.0, 25.0, 3) for n in ("FKC", "TKC", "MDFC", "LDFC", "MTP", "LTP")}
    marks = {n: tuple(true_ll.project(p[None])[0]) for n, p in knee.items()}
    fhc = np.array([60.0, 5.0, 420.0])
    # What the header gives: the same film in its own frame (isocentre at the origin).
    nominal = shifted(true_ll, -np.array([20.0, 0.0, -300.0]))
    fit = register_longleg(nominal, knee, marks)
    assert fit.rms_px < 0.05
    assert np.allclose(fit.geometry.project(fhc[None]), true_ll.project(fhc[None]), atol=0.5)
    with pytest.raises(InputError) as err:
        register_longleg(nominal, {"FKC": knee["FKC"]}, marks)
    assert err.value.reason == "longleg_registration"


@pytest.fixture(scope="module")
def template(request: pytest.FixtureRequest) -> Path:
    return cached_template(request.config.cache.mkdir("xr3d_service_template"))


@pytest.fixture(scope="module")
def stripped(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template's films without xr3d's private geometry block: what a clinic's modality sends."""
    out = tmp_path_factory.mktemp("stripped")
    for v in VIEWS:
        ds = pydicom.dcmread(template / f"{v}.dcm")
        for tag in [elem.tag for elem in ds if elem.tag.group == PRIVATE_GROUP]:
            del ds[tag]
        ds.save_as(out / f"{v}.dcm")
        assert read_geometry(pydicom.dcmread(out / f"{v}.dcm")) is None
    return out


def test_frames_choose_recorded_or_nominal(template: Path, stripped: Path) -> None:
    rec = load_study_frames({v: template / f"{v}.dcm" for v in VIEWS}, "L")
    assert rec.frame == FRAME_RECORDED and not rec.longleg_registered
    nom = load_study_frames({v: stripped / f"{v}.dcm" for v in VIEWS}, "L")
    assert nom.frame == FRAME_NOMINAL and nom.longleg_registered
    assert set(nom.views) == set(VIEWS)
    # One stripped knee film makes both knee films nominal: frames are never mixed.
    mixed = load_study_frames({"knee_ap": template / "knee_ap.dcm", "knee_lat": stripped / "knee_lat.dcm"})
    assert mixed.frame == FRAME_NOMINAL


def test_a_study_without_recorded_geometry_gives_the_same_3d_angles(
    template: Path, stripped: Path, tmp_path: Path
) -> None:
    """Stripped of the private geometry, the study is reconstructed in the nominal knee frame, the long-leg
    film is registered to it, and the 3D angles and consistency match the recorded-geometry run."""
    truth = json.loads((template / "truth.json").read_text())
    side = str(truth["side"])[0].upper()
    lm2d = {"longleg_ap": truth["films"]["longleg_ap"]["landmarks_2d"]}
    runs = {}
    for name, folder in (("recorded", template), ("nominal", stripped)):
        runs[name] = reconstruct_study(
            {v: folder / f"{v}.dcm" for v in VIEWS}, tmp_path / name, side=side, landmarks_2d=lm2d
        )
    rec, nom = runs["recorded"], runs["nominal"]
    assert nom.to_json()["reconstruction"]["geometry"]["frame"] == FRAME_NOMINAL
    assert any("registered to the knee frame" in n for n in nom.notes)
    assert abs(nom.consistency.score - rec.consistency.score) < 0.03
    assert rec.angles_3d is not None and nom.angles_3d is not None
    for key in ("mHKA", "mLDFA", "MPTA"):
        assert nom.angles_3d[key] == pytest.approx(rec.angles_3d[key], abs=1.5), key


def test_films_of_different_patients_are_not_reconstructed_together(template: Path, tmp_path: Path) -> None:
    """A lateral film of another patient in the study: refused by name, before any reconstruction (the
    re-projection check alone lets a quarter of such pairs through, docs/recon-checks.md)."""
    other = pydicom.dcmread(template / "knee_lat.dcm")
    other.PatientID = "SOMEONE-ELSE"
    other.save_as(tmp_path / "knee_lat.dcm")
    films = {"knee_ap": template / "knee_ap.dcm", "knee_lat": tmp_path / "knee_lat.dcm"}
    with pytest.raises(InputError) as err:
        load_study_frames(films, "L")
    assert err.value.reason == "films_of_different_patients"
    assert "SOMEONE" not in str(err.value)  # who the films show is compared, never reported
    with pytest.raises(InputError) as err2:
        reconstruct_study(films, tmp_path / "out", side="L")
    assert err2.value.reason == "films_of_different_patients"
    anonymous = pydicom.dcmread(template / "knee_lat.dcm")
    for kw in ("PatientID", "PatientName", "PatientBirthDate"):
        if kw in anonymous:
            delattr(anonymous, kw)
    anonymous.save_as(tmp_path / "knee_lat.dcm")
    assert load_study_frames(films, "L").frame == FRAME_RECORDED  # nothing to compare: not refused


def test_knee_landmarks_overrule_a_darkest_row_that_caught_another_band() -> None:
    """A flexed lateral film can hold a darker band than its joint space near the centre (35 mm off on
    one held-out case): the knee model's joint row wins when the two disagree by more than 5 mm, and the
    finer darkest row is kept when they agree."""
    img = np.full((1300, 800), 0.7, dtype=np.float32)
    img[640:648] = 0.45  # the joint space
    img[700:716] = 0.2  # a darker band 15 mm lower (0.25 mm pixels)
    assert joint_line_row(img, 0.25) == pytest.approx(707.5, abs=1.0)
    row, how = choose_joint_row(img, 0.25, 645.0)
    assert (row, how) == (645.0, "knee landmarks")
    img[700:716] = 0.7
    row, how = choose_joint_row(img, 0.25, 645.0)
    assert how == "darkest row" and row == pytest.approx(643.5, abs=0.6)
    assert choose_joint_row(img, 0.25, None)[1] == "darkest row"
