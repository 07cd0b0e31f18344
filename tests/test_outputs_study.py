"""write_report_pdf + write_study_dicom on a study folder laid out as docs/study-outputs.md, called the
way the study pipeline calls them (appliance.pipeline.optional.call_with with its keyword pool)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from appliance.errors import InputError
from appliance.geometry.volume import RAS_TO_LPS
from appliance.outputs import write_report_pdf, write_study_dicom
from appliance.outputs.encapsulated_pdf import pdf_bytes
from appliance.outputs.sr_read import read_measurement_groups
from appliance.pipeline.optional import DONE, call_with
from tests.dicom_validate import dciodvfy_errors, dsrdump_errors, requires_dciodvfy, requires_dsrdump
from tests.outputs_support import CREATED, STUDY_DIR, as_result_v1, result_doc, source_film, strict_reading  # noqa: F401

AFFINE_LPS = np.array([[1.0, 0, 0, -40.0], [0, 1.0, 0, -35.0], [0, 0, 1.0, 780.0], [0, 0, 0, 1]])


def _study(tmp_path: Path, *, recon: bool) -> tuple[Path, dict[str, Any]]:
    d = tmp_path / "study"
    (d / "films").mkdir(parents=True)
    shutil.copy(STUDY_DIR / "longleg_ap_header.dcm", d / "films" / "longleg_ap.dcm")
    shutil.copy(STUDY_DIR / "overlay.png", d / "overlay.png")
    shutil.copy(STUDY_DIR / "cpak_chart.png", d / "cpak_chart.png")
    base = result_doc()
    changes: dict[str, Any] = {}
    if recon:
        (d / "recon").mkdir()
        data = np.full((12, 10, 6), -1000.0, dtype=np.float32)
        data[4:8, 3:7, 1:5] = 1200.0
        nib.save(nib.Nifti1Image(data, RAS_TO_LPS @ AFFINE_LPS), str(d / "recon" / "volume.nii.gz"))
        shutil.copy(STUDY_DIR / "cpak_chart.png", d / "recon" / "slices.png")
        changes = {
            "angles_3d": {**base["angles_2d"], "mHKA": -2.6},
            "landmarks_3d": {"FKC": [-38.5, -30.25, 785.0], "TKC": {"x": -38.0, "y": -30.0, "z": 781.5}},
            "reconstruction": {
                "model": "recon/1",
                "views_used": ["knee_ap", "knee_lat"],
                "spacing_mm": 1.0,
                "shape": [6, 10, 12],
                "consistency": {"score": 0.42, "threshold": 0.6, "consistent": False},
                "files": ["recon/volume.nii.gz"],
            },
        }
    doc = as_result_v1(base, **changes)
    doc["films"]["longleg_ap"]["file"] = "films/longleg_ap.dcm"
    (d / "result.json").write_text(json.dumps(doc))
    return d, doc


@requires_dciodvfy
@requires_dsrdump
@pytest.mark.usefixtures("strict_reading")
def test_pipeline_call_writes_every_object_into_the_study(tmp_path: Path) -> None:
    d, doc = _study(tmp_path, recon=True)
    pool = {"study_dir": d, "out_dir": d, "result": doc, "result_path": d / "result.json",
            "films": {"longleg_ap": d / "films" / "longleg_ap.dcm"}}  # fmt: skip
    report = call_with(write_report_pdf, pool)
    dicom = call_with(write_study_dicom, pool)
    assert (report.status, dicom.status) == (DONE, DONE), (report.detail, dicom.detail)
    files = set(dicom.value.files)
    ct = sorted(f for f in files if f.startswith("dicom/ct/"))
    assert files == {"dicom/sr.dcm", "dicom/overlay_sc.dcm", "dicom/report_pdf.dcm", *ct}
    assert len(ct) == 6 and dicom.value.skipped == {}

    src = source_film()
    series = set()
    for f in files:
        ds = pydicom.dcmread(d / f)
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
        series.add(ds.SeriesInstanceUID)
    assert len(series) == 4 and src.SeriesInstanceUID not in series
    for f in ["dicom/sr.dcm", "dicom/overlay_sc.dcm", "dicom/report_pdf.dcm", ct[0]]:
        assert dciodvfy_errors(d / f) == [], f
    assert dsrdump_errors(d / "dicom/sr.dcm") == []
    assert pdf_bytes(pydicom.dcmread(d / "dicom/report_pdf.dcm")) == (d / "report.pdf").read_bytes()
    groups = read_measurement_groups(pydicom.dcmread(d / "dicom/sr.dcm"))
    assert groups["3D knee"].numbers["MHKA"].value == pytest.approx(-2.6)
    assert ("RECONOK", "373067005") in groups["3D knee"].codes  # not consistent -> "No"
    first = pydicom.dcmread(d / ct[0])
    assert [float(v) for v in first.ImagePositionPatient] == [-40.0, -35.0, 780.0]
    # 3D landmarks are SCOORD3D points in the frame of reference the CT series declares.
    assert groups["3D FKC"].points_3d == [pytest.approx((-38.5, -30.25, 785.0))]
    assert groups["3D TKC"].points_3d == [pytest.approx((-38.0, -30.0, 781.5))]
    assert groups["3D FKC"].frames_of_reference == [first.FrameOfReferenceUID]


@pytest.mark.usefixtures("strict_reading")
def test_without_reconstruction_or_report(tmp_path: Path) -> None:
    d, doc = _study(tmp_path, recon=False)
    out = write_study_dicom(d, doc, created=CREATED)  # films found through result["films"]
    assert set(out.files) == {"dicom/sr.dcm", "dicom/overlay_sc.dcm"}
    assert out.skipped == {"report_pdf": "no report.pdf", "ct": "no reconstruction"}
    first_uid = pydicom.dcmread(d / "dicom/sr.dcm").SOPInstanceUID
    again = write_study_dicom(d, doc, created=CREATED)
    assert again.files == out.files
    assert pydicom.dcmread(d / "dicom/sr.dcm").SOPInstanceUID == first_uid  # same result, same object


def test_study_without_dicom_films_is_refused(tmp_path: Path) -> None:
    d, doc = _study(tmp_path, recon=False)
    (d / "films" / "longleg_ap.dcm").unlink()
    with pytest.raises(InputError) as err:
        write_study_dicom(d, doc)
    assert err.value.reason == "missing_source"
    with pytest.raises(InputError) as err:
        write_study_dicom(d, result_doc())  # xr3d.process/1 names no film copies
    assert err.value.reason == "missing_source"
    out = write_study_dicom(d, result_doc(), films={"longleg_ap": source_film()}, created=CREATED)
    assert "dicom/sr.dcm" in out.files


@pytest.mark.usefixtures("strict_reading")
def test_partial_study_gets_a_report_but_no_empty_sr(tmp_path: Path) -> None:
    d, doc = _study(tmp_path, recon=False)
    (d / "overlay.png").unlink()
    (d / "films" / "longleg_ap.dcm").rename(d / "films" / "knee_ap.dcm")
    doc.update(status="partial", landmarks_2d={}, angles_2d=None, cpak=None)
    doc["films"] = {"knee_ap": {**doc["films"]["longleg_ap"], "file": "films/knee_ap.dcm", "view": "knee_ap"}}
    doc["flags"].update(needs_review=True, reasons=["no_longleg_film"])
    write_report_pdf(d, doc)
    out = write_study_dicom(d, doc, created=CREATED)
    assert out.files == ("dicom/report_pdf.dcm",)
    assert out.skipped == {
        "sr": "nothing measured",
        "overlay_sc": "no overlay.png",
        "ct": "no reconstruction",
    }
    assert pdf_bytes(pydicom.dcmread(d / out.files[0])) == (d / "report.pdf").read_bytes()
