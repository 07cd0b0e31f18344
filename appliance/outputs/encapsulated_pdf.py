"""The surgeon's PDF report as an Encapsulated PDF object in the source study.

``build_encapsulated_pdf(pdf_path, sources, key=..., created=...)`` returns the Dataset (Encapsulated
PDF Storage, modality DOC): patient/study copied from the first source film, a new series, the PDF bytes
unchanged in EncapsulatedDocument (with EncapsulatedDocumentLength, so the exact bytes can be recovered
from the even-padded element), SourceInstanceSequence naming every source film. The PDF shows the
patient's name, hence BurnedInAnnotation YES. ``write_encapsulated_pdf(path, ...)`` saves it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import EncapsulatedPDFStorage

from appliance.errors import InputError
from appliance.outputs.common import (
    DEFAULT_EQUIPMENT,
    Equipment,
    base_dataset,
    dicom_date_time,
    output_uid,
    referenced_image_item,
    require_source,
    save,
)

log = logging.getLogger(__name__)

__all__ = ["PDF_SERIES_NUMBER", "build_encapsulated_pdf", "pdf_bytes", "write_encapsulated_pdf"]

PDF_SERIES_NUMBER: Final = 9003
PDF_SERIES_DESCRIPTION: Final = "xr3d alignment report"
DOCUMENT_TITLE: Final = "xr3d lower limb alignment report"


def build_encapsulated_pdf(
    pdf_path: Path,
    sources: Sequence[Dataset],
    *,
    key: str,
    created: datetime | None = None,
    equipment: Equipment = DEFAULT_EQUIPMENT,
    series_number: int = PDF_SERIES_NUMBER,
) -> Dataset:
    """The Encapsulated PDF of ``pdf_path`` (module docstring)."""
    if not sources:
        raise InputError("no source film dataset given for the PDF", reason="missing_source")
    refs = [require_source(s, "source film") for s in sources]
    try:
        data = Path(pdf_path).read_bytes()
    except OSError as exc:
        raise InputError(
            f"{Path(pdf_path).name}: cannot read the report ({exc})", reason="file_not_found"
        ) from exc
    if not data.startswith(b"%PDF-"):
        raise InputError(f"{Path(pdf_path).name} is not a PDF file", reason="bad_pdf")
    when = created or datetime.now(UTC)
    ds = base_dataset(
        sources[0],
        sop_class_uid=EncapsulatedPDFStorage,
        sop_instance_uid=output_uid(key, "pdf.instance"),
        series_uid=output_uid(key, "pdf.series"),
        series_number=series_number,
        series_description=PDF_SERIES_DESCRIPTION,
        modality="DOC",
        created=when,
        equipment=equipment,
    )
    ds.ConversionType = "WSD"  # SC Equipment: made by software on a workstation
    ds.AcquisitionDateTime = "".join(dicom_date_time(when))
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = DOCUMENT_TITLE
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.SourceInstanceSequence = [referenced_image_item(r) for r in refs]
    ds.EncapsulatedDocument = data
    ds.EncapsulatedDocumentLength = len(data)
    log.info("encapsulated PDF built: %d bytes", len(data))
    return ds


def pdf_bytes(ds: Dataset) -> bytes:
    """The PDF's exact bytes from an Encapsulated PDF Dataset (the element is padded to even length)."""
    raw = bytes(ds.EncapsulatedDocument)
    n = ds.get("EncapsulatedDocumentLength")
    return raw[: int(n)] if n is not None else raw


def write_encapsulated_pdf(path: Path, pdf_path: Path, sources: Sequence[Dataset], **kwargs: Any) -> Path:
    """``build_encapsulated_pdf(pdf_path, sources, **kwargs)`` saved to ``path``."""
    return save(build_encapsulated_pdf(pdf_path, sources, **kwargs), Path(path))
