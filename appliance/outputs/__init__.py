"""DICOM and PDF outputs of a processed study (docs/outputs.md, docs/study-outputs.md).

Two entry points for the study pipeline, both taking the study folder and the result document:

* ``write_report_pdf(study_dir, result, films=None)`` renders ``<study_dir>/report.pdf`` (one A4 page)
  from result.json and the pictures already in the folder.
* ``write_study_dicom(study_dir, result, films=None, volume=None)`` writes ``<study_dir>/dicom/``:
  ``sr.dcm`` (Comprehensive 3D SR, TID 1500), ``overlay_sc.dcm`` (when overlay.png exists),
  ``report_pdf.dcm`` (when report.pdf exists: call ``write_report_pdf`` first) and ``ct/IM_0001.dcm``...
  (when a reconstruction exists: ``volume`` or ``recon/volume.nii.gz``).

``films`` maps a view (``longleg_ap``, ``knee_ap``, ``knee_lat``) to the source film: a path to its DICOM
file (the copies in ``films/``) or a pydicom Dataset; by default the ``films/<view>.dcm`` named in the
result. The objects join the film's study (same StudyInstanceUID and patient, new series). A study
without any DICOM film cannot be joined: InputError(``missing_source``).

Both functions are deterministic for a given result and films (UIDs derive from the result's content;
dates from ``created``, default now; the PDF's metadata date is the study date).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from appliance.errors import InputError
from appliance.geometry.volume import RAS_TO_LPS, Volume
from appliance.outputs.common import DEFAULT_EQUIPMENT, Equipment, content_key
from appliance.outputs.ct_series_writer import write_ct_series
from appliance.outputs.encapsulated_pdf import write_encapsulated_pdf
from appliance.outputs.report_pdf import ReportImages, render_report_pdf
from appliance.outputs.secondary_capture import write_overlay_sc
from appliance.outputs.sr import write_sr
from appliance.outputs.study_result import parse_result

log = logging.getLogger(__name__)

__all__ = ["StudyDicom", "load_films", "write_report_pdf", "write_study_dicom"]

DICOM_DIR: Final = "dicom"
SR_FILE: Final = "dicom/sr.dcm"
SC_FILE: Final = "dicom/overlay_sc.dcm"
PDF_DICOM_FILE: Final = "dicom/report_pdf.dcm"
CT_DIR: Final = "dicom/ct"
REPORT_FILE: Final = "report.pdf"
OVERLAY_FILE: Final = "overlay.png"
VOLUME_FILE: Final = "recon/volume.nii.gz"
_MEASURED_VIEW: Final = "longleg_ap"


@dataclass(frozen=True)
class StudyDicom:
    """What ``write_study_dicom`` wrote (paths relative to the study folder) and what it left out, why."""

    files: tuple[str, ...]
    skipped: Mapping[str, str]


def _read_header(path: Path) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError) as exc:
        log.warning("film %s is not readable DICOM (%s); not used as a source", path.name, type(exc).__name__)
        return None


def load_films(
    study_dir: Path, result: Mapping[str, Any], films: Mapping[str, Any] | None = None
) -> dict[str, Dataset]:
    """view -> source Dataset: ``films`` (paths or Datasets) or the result's ``films/<view>.dcm``.
    Non-DICOM films (PNG/TIFF inputs) are left out."""
    if films is None:
        raw = result.get("films") if result.get("schema") == "xr3d.result/1" else None
        films = {
            v: Path(study_dir) / str(f["file"])
            for v, f in (raw or {}).items()
            if str(f.get("file", "")).endswith(".dcm")
        }
    out: dict[str, Dataset] = {}
    for view, f in films.items():
        ds = f if isinstance(f, Dataset) else _read_header(Path(f)) if f is not None else None
        if ds is not None:
            out[str(view)] = ds
    return out


def _load_volume(path: Path) -> Volume:
    import nibabel as nib  # loaded only for studies with a reconstruction

    img = nib.load(str(path))
    data = np.asarray(img.dataobj)  # type: ignore[attr-defined]
    return Volume(data=data, affine=RAS_TO_LPS @ np.asarray(img.affine, dtype=np.float64))  # type: ignore[attr-defined]


def write_report_pdf(
    study_dir: Path, result: Mapping[str, Any], films: Mapping[str, Any] | None = None
) -> Path:
    """Render ``<study_dir>/report.pdf`` (:func:`appliance.outputs.report_pdf.render_report_pdf`)."""
    study_dir = Path(study_dir)
    sources = load_films(study_dir, result, films)
    source = sources.get(_MEASURED_VIEW) or next(iter(sources.values()), None)
    return render_report_pdf(study_dir / REPORT_FILE, result, source, ReportImages.from_study_dir(study_dir))


def write_study_dicom(
    study_dir: Path,
    result: Mapping[str, Any],
    films: Mapping[str, Any] | None = None,
    volume: Volume | None = None,
    *,
    created: datetime | None = None,
    equipment: Equipment = DEFAULT_EQUIPMENT,
) -> StudyDicom:
    """Write every DICOM object of the study into ``<study_dir>/dicom/`` (module docstring)."""
    study_dir = Path(study_dir)
    parsed = parse_result(result)
    sources = load_films(study_dir, result, films)
    if not sources:
        raise InputError(
            "the study has no DICOM film: its outputs cannot join a DICOM study", reason="missing_source"
        )
    key = content_key(result)
    when = created or datetime.now(UTC)
    common: dict[str, Any] = {"key": key, "created": when, "equipment": equipment}
    written: list[str] = []
    skipped: dict[str, str] = {}

    if (
        parsed.measured_view is None
        and parsed.angles_3d is None
        and parsed.consistency is None
        and not parsed.landmarks_3d
        and not any(v in sources for v in parsed.knee_measurements)
    ):
        skipped["sr"] = "nothing measured"
    else:
        write_sr(study_dir / SR_FILE, result, sources, **common)
        written.append(SR_FILE)

    film = sources.get(_MEASURED_VIEW)
    if not (study_dir / OVERLAY_FILE).is_file():
        skipped["overlay_sc"] = "no overlay.png"
    elif film is None:
        skipped["overlay_sc"] = "no long-leg DICOM film"
    else:
        write_overlay_sc(study_dir / SC_FILE, study_dir / OVERLAY_FILE, film, **common)
        written.append(SC_FILE)

    ordered = [sources[v] for v in sorted(sources, key=lambda v: (v != _MEASURED_VIEW, v))]
    if (study_dir / REPORT_FILE).is_file():
        write_encapsulated_pdf(study_dir / PDF_DICOM_FILE, study_dir / REPORT_FILE, ordered, **common)
        written.append(PDF_DICOM_FILE)
    else:
        skipped["report_pdf"] = "no report.pdf"

    if volume is None and (study_dir / VOLUME_FILE).is_file():
        volume = _load_volume(study_dir / VOLUME_FILE)
    if volume is None:
        skipped["ct"] = "no reconstruction"
    else:
        recon_sources = [sources[v] for v in parsed.reconstruction_views if v in sources] or ordered
        for stale in (study_dir / CT_DIR).glob("IM_*.dcm"):  # an earlier, possibly longer, series
            stale.unlink()
        paths = write_ct_series(study_dir / CT_DIR, volume, recon_sources, **common)
        written.extend(p.relative_to(study_dir).as_posix() for p in paths)
    log.info(
        "study DICOM written: %d file(s); skipped: %s", len(written), ", ".join(sorted(skipped)) or "none"
    )
    return StudyDicom(files=tuple(written), skipped=skipped)
