"""DX film writing: standard conformance (dciodvfy), strict pydicom round trip, private geometry, UIDs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from pydicom.dataset import Dataset

from appliance.dicomio.dx_writer import (
    DX_FOR_PRESENTATION_SOP_CLASS_UID,
    FilmInfo,
    Photometric,
    View,
    build_dx_dataset,
    orientation_letters,
    save_atomically,
    view_position_from_geometry,
    write_dx,
)
from appliance.dicomio.geometry_tags import read_geometry, read_matrix, write_geometry
from appliance.dicomio.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    is_valid_uid,
    random_uid,
    uid_from,
)
from appliance.errors import GeometryError
from appliance.geometry.projection import ProjectionGeometry, centred_geometry

try:
    from dicom_validate import dciodvfy_report
except ImportError:  # tests/ imported as a package
    from tests.dicom_validate import dciodvfy_report


@pytest.fixture(autouse=True)
def strict_pydicom() -> Iterator[None]:
    """Read and write with pydicom raising on any invalid value, as highdicom does."""
    old = (config.settings.reading_validation_mode, config.settings.writing_validation_mode)
    config.settings.reading_validation_mode = config.RAISE
    config.settings.writing_validation_mode = config.RAISE
    yield
    config.settings.reading_validation_mode, config.settings.writing_validation_mode = old


def film_geometry(view: View, side: str) -> ProjectionGeometry:
    """A small detector (coarse pitch keeps files tiny) in the standard pose for each view."""
    if view == "knee_lat":
        # Lateral: the side being imaged lies against the detector; columns run anterior for the left
        # knee and posterior for the right, rows toward the feet in both.
        beam = (1.0, 0.0, 0.0) if side == "L" else (-1.0, 0.0, 0.0)
        u = (0.0, -1.0, 0.0) if side == "L" else (0.0, 1.0, 0.0)
    else:
        # AP: beam front to back, columns toward patient left, rows toward the feet.
        beam, u = (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)
    long_leg = view == "longleg_ap"
    return centred_geometry(
        name=view,
        isocenter_mm=(-90.0 if side == "R" else 90.0, 10.0, 450.0 if long_leg else 0.0),
        beam_dir=beam,
        u_dir=u,
        sid_mm=2800.0 if long_leg else 1150.0,
        sod_mm=2650.0 if long_leg else 1000.0,
        width_mm=180.0 if long_leg else 120.0,
        height_mm=600.0 if long_leg else 150.0,
        pitch_mm=3.0 if long_leg else 1.5,
    )


def film_info(view: View, side: str, **changes: object) -> FilmInfo:
    key = f"{view}-{side}"
    info = FilmInfo(
        study_uid=uid_from("test-study"),
        series_uid=uid_from("test-series", key),
        sop_uid=uid_from("test-sop", key),
        frame_of_reference_uid=uid_from("test-for"),
        view=view,
        laterality=side,  # type: ignore[arg-type]
        source_to_patient_mm=2600.0 if view == "longleg_ap" else 950.0,
        window_center=2048.0,
        window_width=4000.0,
        patient_name="Müller^Jörg",
        patient_id="SIM000123",
        patient_birth_date="19580214",
        patient_sex="M",
        study_date="20260115",
        study_time="093012",
        study_id="S1",
        accession="ACC0001",
        study_description="Simulated knee films",
        series_description=f"{view} {side}",
        series_number=3,
        instance_number=7,
        kvp=72.5,
        exposure_mas=6.3,
        burned_in_annotation=True,
        derived=True,
        derivation_description="Digitally reconstructed radiograph from CT",
    )
    return replace(info, **changes)  # type: ignore[arg-type]


def film_pixels(geometry: ProjectionGeometry, bits: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**bits, size=(geometry.rows, geometry.columns), dtype=np.uint16)


CASES = list(itertools.product(("MONOCHROME1", "MONOCHROME2"), ("longleg_ap", "knee_ap", "knee_lat"), "LR"))


@pytest.mark.parametrize(("photometric", "view", "side"), CASES)
def test_written_film_is_valid_dx_and_round_trips(
    tmp_path: Path, photometric: Photometric, view: View, side: str
) -> None:
    geometry = film_geometry(view, side)
    bits = 12 if photometric == "MONOCHROME1" else 14
    pixels = film_pixels(geometry, bits, seed=len(view) + ord(side))
    info = film_info(view, side)
    path = tmp_path / "film.dcm"
    write_dx(path, pixels, bits_stored=bits, photometric=photometric, geometry=geometry, info=info)

    report = dciodvfy_report(path)
    assert report.errors == [], report.output
    # The only warnings left are dciodvfy not knowing our private tags.
    assert all("Unrecognized tag" in w for w in report.warnings), report.warnings

    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert ds.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert ds.SOPClassUID == DX_FOR_PRESENTATION_SOP_CLASS_UID
    assert ds.SOPInstanceUID == info.sop_uid
    assert ds.Modality == "DX"
    assert ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.PhotometricInterpretation == photometric
    assert ds.PresentationLUTShape == ("INVERSE" if photometric == "MONOCHROME1" else "IDENTITY")
    assert ds.BitsStored == bits and ds.HighBit == bits - 1
    np.testing.assert_array_equal(ds.pixel_array, pixels)
    assert [float(x) for x in ds.ImagerPixelSpacing] == [geometry.pitch_v_mm, geometry.pitch_u_mm]
    assert "PixelSpacing" not in ds
    assert ds.ImageLaterality == side
    assert ds.BodyPartExamined == ("LEG" if view == "longleg_ap" else "KNEE")
    region = ds.AnatomicRegionSequence[0]
    assert (region.CodingSchemeDesignator, region.CodeValue) == (
        "SCT",
        "61685007" if view == "longleg_ap" else "72696002",
    )
    expected_position = "AP" if view != "knee_lat" else ("LL" if side == "L" else "RL")
    assert ds.ViewPosition == expected_position
    expected_orientation = ["L", "F"] if view != "knee_lat" else (["A", "F"] if side == "L" else ["P", "F"])
    assert list(ds.PatientOrientation) == expected_orientation
    assert float(ds.DistanceSourceToDetector) == pytest.approx(geometry.source_to_detector_mm())
    assert float(ds.EstimatedRadiographicMagnificationFactor) == pytest.approx(
        geometry.source_to_detector_mm() / info.source_to_patient_mm, rel=1e-9
    )
    assert str(ds.PatientName) == "Müller^Jörg"
    assert ds.ImageType[0] == "DERIVED"
    assert ds.BurnedInAnnotation == "YES"
    assert float(ds.KVP) == pytest.approx(72.5)
    assert ds.ExposureInuAs == 6300

    back = read_geometry(ds)
    assert back is not None
    assert back.to_dict() == geometry.to_dict()
    pts = np.array([[90.0, 10.0, 0.0], [-80.0, 40.0, 30.0], [10.0, -20.0, -60.0]])
    np.testing.assert_array_equal(back.project(pts), geometry.project(pts))
    matrix = read_matrix(ds)
    assert matrix is not None
    h = np.hstack([pts, np.ones((3, 1))]) @ matrix.T
    np.testing.assert_allclose(h[:, :2] / h[:, 2:], geometry.project(pts), atol=1e-9)


def test_magnification_calibrated_film_has_consistent_pixel_spacing(tmp_path: Path) -> None:
    geometry = film_geometry("longleg_ap", "R")
    info = film_info("longleg_ap", "R", calibrate_for_magnification=True, magnification_factor=1.08)
    path = tmp_path / "cal.dcm"
    write_dx(
        path,
        film_pixels(geometry, 12),
        bits_stored=12,
        photometric="MONOCHROME2",
        geometry=geometry,
        info=info,
    )
    report = dciodvfy_report(path)
    assert report.errors == [], report.output
    ds = pydicom.dcmread(path)
    assert ds.PixelSpacingCalibrationType == "GEOMETRY"
    assert float(ds.EstimatedRadiographicMagnificationFactor) == pytest.approx(1.08)
    np.testing.assert_allclose(
        [float(x) for x in ds.PixelSpacing],
        [float(x) / 1.08 for x in ds.ImagerPixelSpacing],
        rtol=1e-9,
    )


def test_writing_leaves_no_temporary_file_and_replaces_an_existing_film(tmp_path: Path) -> None:
    geometry = film_geometry("knee_ap", "L")
    path = tmp_path / "knee.dcm"
    first = film_pixels(geometry, 12, seed=1)
    second = film_pixels(geometry, 12, seed=2)
    info = film_info("knee_ap", "L")
    write_dx(path, first, bits_stored=12, photometric="MONOCHROME2", geometry=geometry, info=info)
    write_dx(path, second, bits_stored=12, photometric="MONOCHROME2", geometry=geometry, info=info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knee.dcm"]
    np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, second)


def test_failed_save_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    geometry = film_geometry("knee_ap", "R")
    path = tmp_path / "knee.dcm"
    pixels = film_pixels(geometry, 12, seed=3)
    write_dx(
        path,
        pixels,
        bits_stored=12,
        photometric="MONOCHROME2",
        geometry=geometry,
        info=film_info("knee_ap", "R"),
    )
    before = path.read_bytes()
    broken = Dataset()  # no SOP Class/Instance UID: pydicom cannot build the file meta
    broken.PatientName = "X"
    with pytest.raises((AttributeError, ValueError)):
        save_atomically(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["knee.dcm"]


def test_invalid_pixels_are_rejected_before_any_file_is_created(tmp_path: Path) -> None:
    geometry = film_geometry("knee_ap", "L")
    info = film_info("knee_ap", "L")
    too_bright = np.full((geometry.rows, geometry.columns), 4096, dtype=np.uint16)
    with pytest.raises(ValueError, match="stored bits"):
        write_dx(
            tmp_path / "a.dcm",
            too_bright,
            bits_stored=12,
            photometric="MONOCHROME2",
            geometry=geometry,
            info=info,
        )
    wrong_shape = np.zeros((geometry.columns, geometry.rows + 1), dtype=np.uint16)
    with pytest.raises(ValueError, match="geometry"):
        write_dx(
            tmp_path / "b.dcm",
            wrong_shape,
            bits_stored=12,
            photometric="MONOCHROME2",
            geometry=geometry,
            info=info,
        )
    assert list(tmp_path.iterdir()) == []


def test_view_must_match_the_geometry() -> None:
    geometry = film_geometry("knee_lat", "L")
    pixels = film_pixels(geometry, 12)
    with pytest.raises(ValueError, match="contradicts"):
        build_dx_dataset(
            pixels,
            bits_stored=12,
            photometric="MONOCHROME2",
            geometry=geometry,
            info=film_info("knee_lat", "L", view_position="RL"),
        )
    with pytest.raises(ValueError, match="view position"):
        build_dx_dataset(
            pixels,
            bits_stored=12,
            photometric="MONOCHROME2",
            geometry=geometry,
            info=film_info("knee_ap", "L"),
        )


@pytest.mark.parametrize(
    "changes",
    [
        {"sop_uid": "1.2.03"},
        {"study_date": "2026-01-15"},
        {"study_time": "9:30"},
        {"accession": "A" * 17},
        {"laterality": "B"},
        {"window_width": 0.0},
        {"source_to_patient_mm": -1.0},
    ],
)
def test_film_info_rejects_values_dicom_cannot_hold(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        film_info("knee_ap", "L", **changes)


def test_minimal_film_info_gives_a_valid_object(tmp_path: Path) -> None:
    geometry = film_geometry("knee_ap", "L")
    info = FilmInfo(
        study_uid=random_uid(),
        series_uid=random_uid(),
        sop_uid=random_uid(),
        view="knee_ap",
        laterality="L",
        source_to_patient_mm=950.0,
        window_center=512.0,
        window_width=1024.0,
    )
    path = tmp_path / "min.dcm"
    write_dx(
        path,
        film_pixels(geometry, 10),
        bits_stored=10,
        photometric="MONOCHROME1",
        geometry=geometry,
        info=info,
    )
    assert dciodvfy_report(path).errors == []
    ds = pydicom.dcmread(path)
    assert ds.ImageType[0] == "ORIGINAL" and ds.BurnedInAnnotation == "NO"
    assert "FrameOfReferenceUID" not in ds and "KVP" not in ds


def test_orientation_letters_follow_the_strongest_components() -> None:
    assert orientation_letters((1.0, 0.0, 0.0)) == "L"
    assert orientation_letters((-1.0, 0.0, 0.0)) == "R"
    assert orientation_letters((0.0, -1.0, 0.0)) == "A"
    assert orientation_letters((0.0, 0.0, -1.0)) == "F"
    # A detector rolled 30 degrees: mostly toward the feet, partly toward patient right.
    assert orientation_letters((-0.5, 0.0, -0.866)) == "FR"
    # Small tilts are not spelled out.
    assert orientation_letters((0.99, 0.1, 0.0)) == "L"


def test_view_position_follows_the_beam() -> None:
    assert view_position_from_geometry(film_geometry("knee_ap", "L")) == "AP"
    assert view_position_from_geometry(film_geometry("knee_lat", "L")) == "LL"
    assert view_position_from_geometry(film_geometry("knee_lat", "R")) == "RL"
    pa = centred_geometry(
        name="pa",
        isocenter_mm=(0, 0, 0),
        beam_dir=(0, -1, 0),
        u_dir=(-1, 0, 0),
        sid_mm=1100,
        sod_mm=1000,
        width_mm=30,
        height_mm=30,
        pitch_mm=3,
    )
    assert view_position_from_geometry(pa) == "PA"


def test_geometry_block_absent_or_tampered() -> None:
    assert read_geometry(Dataset()) is None
    assert read_matrix(Dataset()) is None
    geometry = film_geometry("knee_ap", "L")
    ds = Dataset()
    write_geometry(ds, geometry)
    assert read_geometry(ds) == geometry
    block = ds.private_block(0x0071, "XR3D GEOMETRY 1")
    values = list(block[0x03].value)
    values[3] += 1.0
    block[0x03].value = values
    with pytest.raises(GeometryError, match="disagrees"):
        read_geometry(ds)


def test_uids_are_deterministic_distinct_and_valid() -> None:
    a = uid_from("case-900001", "film", "knee_ap")
    assert a == uid_from("case-900001", "film", "knee_ap")
    assert a != uid_from("case-900001", "film", "knee_lat")
    assert uid_from("ab", "c") != uid_from("a", "bc")
    assert a.startswith("2.25.") and len(a) <= 64 and is_valid_uid(a)
    randoms = {random_uid() for _ in range(50)}
    assert len(randoms) == 50 and all(is_valid_uid(u) and len(u) <= 64 for u in randoms)
    assert is_valid_uid(IMPLEMENTATION_CLASS_UID)
    assert not is_valid_uid("1.02.3")
