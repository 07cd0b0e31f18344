"""A small, valid ``Film`` record for job-store tests that need rows, not pixels."""

from __future__ import annotations

from appliance.ingest.film import Film


def film_record(study: str, sop: str, view: str, sha: str = "", series_uid: str = "1.2.3") -> Film:
    return Film(
        sha256=sha or f"h{sop}",
        kind="dicom",
        study_uid=study,
        series_uid=series_uid,
        sop_uid=sop,
        view=view,
        side="R",
        rows=10,
        columns=10,
        spacing_mm=(0.1, 0.1),
        spacing_source="test",
        spacing_flag="",
        magnification=None,
        modality="DX",
        body_part="KNEE",
        view_position="AP",
        photometric="MONOCHROME2",
        bits_stored=12,
        transfer_syntax="1.2.840.10008.1.2.1",
    )
