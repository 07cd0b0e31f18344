"""Encapsulated PDF: the exact PDF bytes come back, the object joins the study, dciodvfy is clean."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from appliance.errors import InputError
from appliance.outputs.encapsulated_pdf import build_encapsulated_pdf, pdf_bytes, write_encapsulated_pdf
from appliance.outputs.report_pdf import ReportImages, render_report_pdf
from tests.dicom_validate import dciodvfy_errors, requires_dciodvfy
from tests.outputs_support import CREATED, STUDY_DIR, result_doc, source_film, strict_reading  # noqa: F401


@requires_dciodvfy
@pytest.mark.usefixtures("strict_reading")
def test_report_round_trips_byte_for_byte(tmp_path: Path) -> None:
    pdf = render_report_pdf(
        tmp_path / "report.pdf",
        result_doc(),
        source_film(),
        ReportImages(cpak_chart=STUDY_DIR / "cpak_chart.png"),
    )
    src = source_film()
    path = write_encapsulated_pdf(tmp_path / "report_pdf.dcm", pdf, [src], key="k", created=CREATED)
    ds = pydicom.dcmread(path)
    assert pdf_bytes(ds) == pdf.read_bytes()
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf" and ds.Modality == "DOC"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.PatientName == src.PatientName
    assert ds.SourceInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert dciodvfy_errors(path) == []


def test_odd_length_pdf_keeps_its_exact_length(tmp_path: Path) -> None:
    odd = tmp_path / "odd.pdf"
    odd.write_bytes(b"%PDF-1.4\n%%EOF")  # 14 + 1 bytes: odd, the element is padded to even length
    odd.write_bytes(odd.read_bytes() + b"\n")
    ds = build_encapsulated_pdf(odd, [source_film()], key="k")
    path = tmp_path / "o.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert pdf_bytes(pydicom.dcmread(path)) == odd.read_bytes()


def test_not_a_pdf_or_no_source(tmp_path: Path) -> None:
    (tmp_path / "x.pdf").write_bytes(b"hello")
    with pytest.raises(InputError) as err:
        build_encapsulated_pdf(tmp_path / "x.pdf", [source_film()], key="k")
    assert err.value.reason == "bad_pdf"
    with pytest.raises(InputError) as err:
        build_encapsulated_pdf(tmp_path / "x.pdf", [], key="k")
    assert err.value.reason == "missing_source"
