"""The Comprehensive 3D SR (TID 1500) of a real pipeline result: round trip of every value, dciodvfy and
dcmtk dsrdump without errors, missing values and missing sources."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from appliance.errors import InputError
from appliance.outputs.sr import ANGLES_2D, Verification, build_sr, write_sr
from appliance.outputs.sr_codes import ANGLE_CODES, LANDMARK_CODES, PRIVATE_SCHEME, cpak_code
from appliance.outputs.sr_read import read_measurement_groups
from tests.dicom_validate import dciodvfy_errors, dsrdump_errors, requires_dciodvfy, requires_dsrdump
from tests.outputs_support import CREATED, as_result_v1, result_doc, source_film, strict_reading  # noqa: F401

UNITS = {"MAD_mm": "mm", "femoral_mech_axis_mm": "mm", "tibial_mech_axis_mm": "mm"}
YES, NO = "373066001", "373067005"


def _write(tmp_path: Path, doc: dict[str, Any], **kwargs: Any) -> pydicom.Dataset:
    path = write_sr(tmp_path / "sr.dcm", doc, {"longleg_ap": source_film()}, created=CREATED, **kwargs)
    return pydicom.dcmread(path)


@pytest.mark.usefixtures("strict_reading")
def test_every_value_round_trips(tmp_path: Path) -> None:
    doc = result_doc()
    ds = _write(tmp_path, doc)
    src = source_film()
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage
    assert ds.StudyInstanceUID == src.StudyInstanceUID == doc["study_uid"]
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert (ds.PatientName, ds.PatientID, ds.AccessionNumber) == (
        src.PatientName,
        src.PatientID,
        src.AccessionNumber,
    )
    assert (ds.ContentDate, ds.ContentTime) == ("20260102", "030405")
    assert [i.CodingSchemeDesignator for i in ds.CodingSchemeIdentificationSequence] == [PRIVATE_SCHEME]
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    groups = read_measurement_groups(ds)
    film = groups["longleg_ap alignment"]
    assert film.source_images == [src.SOPInstanceUID]
    for key in ANGLES_2D:
        number = film.numbers[ANGLE_CODES[key][0].value]
        assert number.value is not None
        assert number.value == pytest.approx(doc["angles_2d"][key], abs=1e-9)
        assert number.unit == UNITS.get(key, "deg")
    assert (cpak_code(doc["cpak"]["type"]).value) in [v for c, v in film.codes if c == "CPAK"]
    assert ("REVIEW", NO) in film.codes

    for name, lm in doc["landmarks"].items():
        g = groups[f"longleg_ap {name}"]
        assert g.points == [pytest.approx((lm["col"] + 0.5, lm["row"] + 0.5), abs=1e-3)]  # FL is float32
        assert g.point_sources == [src.SOPInstanceUID]
        assert g.numbers["CONF"].value == pytest.approx(lm["confidence"], abs=1e-9)
        assert ("LOWCONF", YES if lm["low_confidence"] else NO) in g.codes
        assert ("121071", LANDMARK_CODES[name].value) in g.codes  # DCM "Finding"
    assert len(groups) == 1 + len(doc["landmarks"])


@pytest.mark.usefixtures("strict_reading")
def test_highdicom_reads_the_report(tmp_path: Path) -> None:
    doc = result_doc()
    path = write_sr(tmp_path / "sr.dcm", doc, {"longleg_ap": source_film()}, created=CREATED)
    sr = hd.sr.srread(path)
    report = sr.content
    groups = report.get_observer_contexts()  # the device observer was recorded
    assert groups
    rois = report.get_planar_roi_measurement_groups()
    assert len(rois) == len(doc["landmarks"])
    plain = report.get_image_measurement_groups()
    assert len(plain) == 1
    mhka = plain[0].get_measurements(name=ANGLE_CODES["mHKA"][0])
    assert len(mhka) == 1 and mhka[0].value == pytest.approx(doc["angles_2d"]["mHKA"])
    assert mhka[0].unit.value == "deg"


@requires_dciodvfy
@requires_dsrdump
def test_dciodvfy_and_dsrdump_report_no_errors(tmp_path: Path) -> None:
    path = write_sr(tmp_path / "sr.dcm", result_doc(), {"longleg_ap": source_film()}, created=CREATED)
    assert dciodvfy_errors(path) == []
    assert dsrdump_errors(path) == []


@pytest.mark.usefixtures("strict_reading")
@requires_dciodvfy
@requires_dsrdump
def test_missing_angle_is_written_with_a_reason_never_as_nan(tmp_path: Path) -> None:
    doc = result_doc()
    doc["angles_2d"]["JLCA"] = None
    doc["angles_2d"]["MAD_mm"] = float("nan")  # a stray NaN must not reach the SR either
    doc["flags"]["missing"] = {"JLCA": ["MTP"]}
    path = write_sr(tmp_path / "sr.dcm", doc, {"longleg_ap": source_film()}, created=CREATED, key="fixed")
    film = read_measurement_groups(pydicom.dcmread(path))["longleg_ap alignment"]
    for key in ("JLCA", "MAD_mm"):
        number = film.numbers[ANGLE_CODES[key][0].value]
        assert number.value is None and number.qualifier == "114006"  # DCM "Measurement failure"
    assert film.numbers["MHKA"].value == pytest.approx(doc["angles_2d"]["mHKA"])
    assert not any(n.value is not None and math.isnan(n.value) for n in film.numbers.values())
    assert "nan" not in _dsrdump_text(path).lower()
    assert dciodvfy_errors(path) == []
    assert dsrdump_errors(path) == []


def _dsrdump_text(path: Path) -> str:
    return subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False).stdout


@pytest.mark.usefixtures("strict_reading")
def test_review_flags_and_low_confidence_landmarks(tmp_path: Path) -> None:
    doc = result_doc()
    doc["landmarks"]["AC"]["low_confidence"] = True
    doc["flags"].update(
        needs_review=True, low_confidence_landmarks=["AC"], implausible={"tibial_length": ["TKC", "AC"]}
    )
    groups = read_measurement_groups(_write(tmp_path, doc))
    film = groups["longleg_ap alignment"]
    assert ("REVIEW", YES) in film.codes
    reasons = {v for c, v in film.codes if c == "RREASON"}
    assert reasons == {"RLOWCONF", "RTIBLEN"}
    assert ("LOWCONF", YES) in groups["longleg_ap AC"].codes
    assert ("LOWCONF", NO) in groups["longleg_ap FHC"].codes


@pytest.mark.usefixtures("strict_reading")
@requires_dciodvfy
@requires_dsrdump
def test_result_v1_with_3d_angles_and_an_inconsistent_reconstruction(tmp_path: Path) -> None:
    base = result_doc()
    angles_3d = {**base["angles_2d"], "mHKA": -3.25, "knee_flexion_deg": 4.5, "tibial_slope_deg": None}
    recon = {
        "model": "recon/1",
        "views_used": ["knee_ap", "knee_lat"],
        "spacing_mm": 1.0,
        "shape": [10, 10, 10],
        "consistency": {"score": 0.41, "threshold": 0.6, "per_view": {"knee_ap": 0.4}, "consistent": False},
        "files": [],
    }
    doc = as_result_v1(base, angles_3d=angles_3d, reconstruction=recon)
    path = write_sr(tmp_path / "sr.dcm", doc, {"longleg_ap": source_film()}, created=CREATED)
    groups = read_measurement_groups(pydicom.dcmread(path))
    g3d = groups["3D knee"]
    assert g3d.numbers["MHKA"].value == pytest.approx(-3.25)
    assert g3d.numbers["KFLEX"].value == pytest.approx(4.5)
    assert g3d.numbers["TSLOPE"].value is None and g3d.numbers["TSLOPE"].qualifier == "114006"
    assert ("RECONOK", NO) in g3d.codes
    assert g3d.numbers["RECONSC"].value == pytest.approx(0.41)
    film = groups["longleg_ap alignment"]
    assert ("REVIEW", YES) in film.codes and ("RREASON", "RRECON") in film.codes
    assert film.numbers["MHKA"].value == pytest.approx(base["angles_2d"]["mHKA"])
    assert dciodvfy_errors(path) == []
    assert dsrdump_errors(path) == []


@pytest.mark.usefixtures("strict_reading")
@requires_dciodvfy
def test_knee_film_measurements_get_their_own_groups(tmp_path: Path) -> None:
    """Each measured knee film's values (JLCA; slope, flexion) are a group with that film as source; a
    knee film whose dataset is not given, or that was not measured, gets none."""
    base = result_doc()
    knee_films = {
        "knee_ap": {"status": "measured", "measurements": {"JLCA": 1.75}},
        "knee_lat": {
            "status": "measured",
            "measurements": {"tibial_slope_deg": 7.5, "knee_flexion_deg": None},
        },
    }
    doc = as_result_v1(base, knee_films=knee_films)
    sources = {"longleg_ap": source_film()}
    for i, view in enumerate(("knee_ap", "knee_lat")):
        ds = source_film()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{ds.SOPInstanceUID}.{i + 7}"
        sources[view] = ds
    path = write_sr(tmp_path / "sr.dcm", doc, sources, created=CREATED)
    groups = read_measurement_groups(pydicom.dcmread(path))
    assert groups["knee_ap knee film"].numbers["JLCA"].value == pytest.approx(1.75)
    lat = groups["knee_lat knee film"].numbers
    assert lat["TSLOPE"].value == pytest.approx(7.5)
    assert lat["KFLEX"].value is None and lat["KFLEX"].qualifier == "114006"
    assert dciodvfy_errors(path) == []
    # Without the lateral film's dataset, or with that film failed, no lateral group.
    fewer = {v: d for v, d in sources.items() if v != "knee_lat"}
    groups = read_measurement_groups(
        pydicom.dcmread(write_sr(tmp_path / "a.dcm", doc, fewer, created=CREATED))
    )
    assert "knee_lat knee film" not in groups and "knee_ap knee film" in groups
    failed = as_result_v1(base, knee_films={**knee_films, "knee_ap": {"status": "failed", "reason": "x"}})
    groups = read_measurement_groups(
        pydicom.dcmread(write_sr(tmp_path / "b.dcm", failed, sources, created=CREATED))
    )
    assert "knee_ap knee film" not in groups


def test_uids_follow_the_content(tmp_path: Path) -> None:
    doc = result_doc()
    a = build_sr(doc, {"longleg_ap": source_film()}, created=CREATED)
    b = build_sr(doc, {"longleg_ap": source_film()}, created=CREATED)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    doc["angles_2d"]["mHKA"] += 0.5
    c = build_sr(doc, {"longleg_ap": source_film()}, created=CREATED)
    assert c.SOPInstanceUID != a.SOPInstanceUID and c.SeriesInstanceUID != a.SeriesInstanceUID


def test_missing_or_foreign_source_raises_a_clear_error() -> None:
    doc = result_doc()
    with pytest.raises(InputError) as err:
        build_sr(doc, {}, created=CREATED)
    assert err.value.reason == "missing_source"
    other = source_film()
    other.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(InputError) as err:
        build_sr(doc, {"longleg_ap": other}, created=CREATED)
    assert err.value.reason == "missing_source"
    bad = source_film()
    del bad.SOPInstanceUID
    with pytest.raises(InputError, match="SOPInstanceUID"):
        build_sr(doc, {"longleg_ap": bad}, created=CREATED)


def test_unknown_schema_is_refused() -> None:
    with pytest.raises(InputError) as err:
        build_sr({"schema": "xr3d.result/9", "study_uid": "1.2"}, {"longleg_ap": source_film()})
    assert err.value.reason == "bad_result"


@pytest.mark.usefixtures("strict_reading")
def test_flags_that_need_no_review_are_recorded_without_review(tmp_path: Path) -> None:
    doc = as_result_v1(result_doc())
    doc["flags"].update(needs_review=False, reasons=["reconstruction_unavailable", "some_new_reason"])
    film = read_measurement_groups(_write(tmp_path, doc))["longleg_ap alignment"]
    assert ("REVIEW", NO) in film.codes
    assert {v for c, v in film.codes if c == "RREASON"} == {"RRECONNA", "ROTHER"}


@requires_dciodvfy
@requires_dsrdump
@pytest.mark.usefixtures("strict_reading")
def test_corrected_and_verified_report_supersedes_the_first(tmp_path: Path) -> None:
    doc = as_result_v1(result_doc())
    first = pydicom.dcmread(
        write_sr(tmp_path / "sr1.dcm", doc, {"longleg_ap": source_film()}, created=CREATED)
    )
    corrected = as_result_v1(result_doc())
    corrected["landmarks_2d"]["longleg_ap"]["AC"]["col"] += 4.0  # as a surgeon's correction would
    corrected["angles_2d"]["mHKA"] = -2.4
    path = write_sr(
        tmp_path / "sr2.dcm",
        corrected,
        {"longleg_ap": source_film()},
        created=CREATED,
        verification=Verification(observer_name="SURGEON^ANNA", organization="Knee clinic"),
        predecessor=first,
    )
    ds = pydicom.dcmread(path)
    assert (ds.VerificationFlag, ds.PreliminaryFlag) == ("VERIFIED", "FINAL")
    assert ds.VerifyingObserverSequence[0].VerifyingObserverName == "SURGEON^ANNA"
    assert ds.VerifyingObserverSequence[0].VerificationDateTime == "20260102030405"
    pred = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == first.SOPInstanceUID != ds.SOPInstanceUID
    groups = read_measurement_groups(ds)
    assert groups["longleg_ap alignment"].numbers["MHKA"].value == pytest.approx(-2.4)
    ac = corrected["landmarks_2d"]["longleg_ap"]["AC"]
    assert groups["longleg_ap AC"].points == [pytest.approx((ac["col"] + 0.5, ac["row"] + 0.5), abs=1e-3)]
    assert "SURGEON^ANNA" in _dsrdump_text(path)  # the person observer is in the content tree
    assert dciodvfy_errors(path) == []
    assert dsrdump_errors(path) == []
    other = source_film()
    other.StudyInstanceUID = "1.2.3"
    with pytest.raises(InputError):
        build_sr(corrected, {"longleg_ap": source_film()}, predecessor=other)
