"""The surgeon's one-page PDF: what it says (normal ranges, highlighting, banners, missing values) and
the PDF itself (one A4 page, reproducible bytes, metadata without the patient's name)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from appliance.outputs.report_content import NOT_CONSISTENT, format_person_name, report_content
from appliance.outputs.report_pdf import ReportImages, render_report_pdf, study_datetime
from tests.outputs_support import STUDY_DIR, as_result_v1, result_doc, source_film

IMAGES = ReportImages(overlay=STUDY_DIR / "overlay.png", cpak_chart=STUDY_DIR / "cpak_chart.png")


def _rows(doc: dict[str, object]) -> dict[str, object]:
    return {r.key: r for r in report_content(doc, source_film()).rows}


def test_values_are_compared_with_the_reference_ranges() -> None:
    doc = result_doc()
    doc["angles_2d"].update(mLDFA=90.0, MPTA=84.9, JLCA=2.5, aHKA=-2.0, JLO=173.3, mHKA=-9.0)
    rows = _rows(doc)
    assert not rows["mLDFA"].out_of_range  # on the boundary counts as inside
    assert rows["MPTA"].out_of_range and rows["JLCA"].out_of_range and rows["JLO"].out_of_range
    assert not rows["aHKA"].out_of_range
    assert not rows["mHKA"].out_of_range and rows["mHKA"].normal_text == "-"  # no range in the reference
    assert rows["mLDFA"].normal_text == "85 - 90"
    assert rows["mHKA"].value_text == "-9.0\N{DEGREE SIGN}"
    assert rows["MAD_mm"].value_text.endswith(" mm")


def test_missing_value_and_flags_are_shown_not_hidden() -> None:
    doc = result_doc()
    doc["angles_2d"]["JLCA"] = None
    doc["flags"].update(
        missing={"JLCA": ["MTP"]},
        needs_review=True,
        low_confidence_landmarks=["MTP"],
        flagged_values={"MPTA": ["MTP"]},
    )
    content = report_content(doc, source_film())
    rows = {r.key: r for r in content.rows}
    assert rows["JLCA"].value_text == "not measured (no MTP)" and not rows["JLCA"].out_of_range
    assert rows["MPTA"].flagged and not rows["mLDFA"].flagged
    assert content.banners[0].startswith("NEEDS REVIEW") and "low-confidence" in content.banners[0]
    assert any("MTP" in b for b in content.banners)


def test_inconsistent_reconstruction_comes_first_and_3d_column_appears() -> None:
    base = result_doc()
    recon = {"views_used": ["knee_ap"], "consistency": {"score": 0.3, "threshold": 0.6, "consistent": False}}
    doc = as_result_v1(base, angles_3d={**base["angles_2d"], "mLDFA": 92.0}, reconstruction=recon)
    content = report_content(doc, source_film())
    assert content.banners[0] == NOT_CONSISTENT
    assert content.not_consistent and content.has_3d
    assert content.consistency_text is not None and "NOT consistent" in content.consistency_text
    rows = {r.key: r for r in content.rows}
    assert rows["mLDFA"].out_of_range_3d and not rows["mLDFA"].out_of_range_2d
    consistent = as_result_v1(base, reconstruction={"consistency": {"score": 0.9, "consistent": True}})
    assert NOT_CONSISTENT not in report_content(consistent, source_film()).banners
    assert "AP/lateral" not in (report_content(consistent, source_film()).consistency_text or "")


def test_failed_cross_view_check_is_shown_next_to_a_passing_reprojection_score() -> None:
    """A pair of films from two patients can re-project well; the report says which check failed."""
    base = result_doc()
    cons = {
        "score": 0.86,
        "threshold": 0.8,
        "consistent": False,
        "cross_view": {"score": 0.41, "threshold": 0.92, "heights_used": 180, "consistent": False},
    }
    doc = as_result_v1(base, reconstruction={"views_used": ["knee_ap", "knee_lat"], "consistency": cons})
    content = report_content(doc, source_film())
    assert content.banners[0] == NOT_CONSISTENT
    text = content.consistency_text or ""
    assert "score 0.86 (threshold 0.80)" in text and "AP/lateral agreement 0.41 (threshold 0.92)" in text


def test_header_names_the_patient_and_study() -> None:
    header = dict(report_content(result_doc(), source_film()).header)
    assert header["Patient"] == "SIM, CASE900001"
    assert header["Study date"] == "2026-01-01" and header["Side"] == "left"
    assert format_person_name("DOE^JANE^Q") == "DOE, JANE Q"
    assert dict(report_content(result_doc(), None).header)["Patient"] == "unknown"


def test_pdf_is_one_reproducible_a4_page(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    a = render_report_pdf(tmp_path / "a.pdf", result_doc(), source_film(), IMAGES)
    b = render_report_pdf(tmp_path / "b.pdf", result_doc(), source_film(), IMAGES)
    data = a.read_bytes()
    assert data.startswith(b"%PDF-") and data == b.read_bytes()
    assert len(re.findall(rb"/Type /Page\b(?!s)", data)) == 1
    assert b"/MediaBox [ 0 0 595.44 841.68 ]" in data  # A4 in points
    assert b"/CreationDate (D:20260101120000Z)" in data  # the study's date, not the clock
    assert b"CASE900001" not in data  # the name is drawn on the page, never in plain metadata
    src = source_film()
    for record in caplog.records:
        assert str(src.PatientID) not in record.getMessage() and "CASE900001" not in record.getMessage()


def test_report_with_reconstruction_pictures(tmp_path: Path) -> None:
    base = result_doc()
    doc = as_result_v1(
        base, reconstruction={"consistency": {"score": 0.3, "threshold": 0.6, "consistent": False}}
    )
    images = ReportImages(
        overlay=IMAGES.overlay,
        cpak_chart=IMAGES.cpak_chart,
        recon_slices=IMAGES.cpak_chart,
        reprojections=(IMAGES.overlay, IMAGES.overlay),  # type: ignore[arg-type]
    )
    with_recon = render_report_pdf(tmp_path / "r.pdf", doc, source_film(), images).read_bytes()
    without = render_report_pdf(tmp_path / "n.pdf", base, source_film(), IMAGES).read_bytes()
    # The three extra pictures are embedded as image XObjects.
    assert (
        len(re.findall(rb"/Subtype /Image", with_recon)) == len(re.findall(rb"/Subtype /Image", without)) + 3
    )


def test_images_are_found_in_a_study_folder(tmp_path: Path) -> None:
    (tmp_path / "recon").mkdir()
    for name in ("overlay.png", "overlay_preview.png", "cpak_chart.png", "recon/slices.png"):
        (tmp_path / name).write_bytes(b"")
    for view in ("knee_lat", "knee_ap"):
        (tmp_path / f"recon/reprojection_{view}.png").write_bytes(b"")
    images = ReportImages.from_study_dir(tmp_path)
    assert images.overlay == tmp_path / "overlay_preview.png"
    assert images.recon_slices == tmp_path / "recon/slices.png"
    assert [p.name for p in images.reprojections] == ["reprojection_knee_ap.png", "reprojection_knee_lat.png"]
    assert ReportImages.from_study_dir(tmp_path / "absent") == ReportImages()


def test_study_datetime_falls_back() -> None:
    src = source_film()
    assert study_datetime(src).isoformat() == "2026-01-01T12:00:00+00:00"
    del src.StudyDate
    assert study_datetime(src).year == 2000


def test_flags_without_review_are_notes_not_banners() -> None:
    doc = as_result_v1(result_doc())
    doc["flags"].update(needs_review=False, reasons=["reconstruction_unavailable"])
    content = report_content(doc, source_film())
    assert content.banners == ()
    assert content.notes == "Notes: no 3D reconstruction in this build"
    doc["flags"]["needs_review"] = True
    content = report_content(doc, source_film())
    assert content.notes is None and content.banners[0].startswith("NEEDS REVIEW: no 3D reconstruction")


def test_knee_film_measurements_are_reported(tmp_path: Path) -> None:
    """The knee films' own measurements (knee-film model) get a line; films it could not measure none."""
    base = result_doc()
    doc = as_result_v1(base)
    doc["knee_films"] = {
        "knee_ap": {"status": "measured", "measurements": {"JLCA": 1.24}},
        "knee_lat": {
            "status": "measured",
            "measurements": {"tibial_slope_deg": 7.06, "knee_flexion_deg": None},
        },
    }
    text = report_content(doc, source_film()).knee_text
    assert text == (
        "Knee films: JLCA +1.2\N{DEGREE SIGN} (knee AP); "
        "posterior tibial slope +7.1\N{DEGREE SIGN}, knee flexion not measured (lateral)"
    )
    doc["knee_films"] = {"knee_ap": {"status": "failed", "reason": "odd"}}
    assert report_content(doc, source_film()).knee_text is None
    assert report_content(as_result_v1(base), source_film()).knee_text is None
    doc["knee_films"] = {"knee_ap": {"status": "measured", "measurements": {"JLCA": 1.24}}}
    out = render_report_pdf(tmp_path / "r.pdf", doc, source_film(), IMAGES)
    assert out.stat().st_size > 0
