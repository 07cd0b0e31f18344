"""The films of a study as the pipeline uses them: one per view, copied into ``films/``, described.

When a view was received more than once (a re-sent or corrected film with a new SOPInstanceUID) the
latest one is used and the count is reported, so nothing is silently ignored.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pydicom
from pydicom.errors import InvalidDicomError

from appliance.calibration.ball import CALIBRATION_BALL
from appliance.dicomio.geometry_tags import read_geometry
from appliance.errors import GeometryError, InputError
from appliance.ingest.film import Film
from appliance.ingest.reader import file_sha256
from appliance.jobs.store import StoredInstance

log = logging.getLogger(__name__)

FILMS_DIR: Final = "films"
VIEW_ORDER: Final = ("longleg_ap", "knee_ap", "knee_lat")


@dataclass(frozen=True)
class StudyFilm:
    """One film chosen for its view: the accepted description, the stored source and its outbox copy."""

    film: Film
    source: Path
    copy: Path  # relative to the study folder, e.g. films/longleg_ap.dcm

    @property
    def view(self) -> str:
        return self.film.view


def choose_films(instances: Sequence[StoredInstance]) -> tuple[dict[str, StoredInstance], dict[str, int]]:
    """The latest-received instance of every view, and views received more than once -> count.

    ``instances`` come from :meth:`JobStore.instances` in order of view, then arrival.
    """
    chosen: dict[str, StoredInstance] = {}
    counts: dict[str, int] = {}
    for inst in instances:
        chosen[inst.film.view] = inst
        counts[inst.film.view] = counts.get(inst.film.view, 0) + 1
    ordered = {v: chosen[v] for v in sorted(chosen, key=_view_rank)}
    return ordered, {v: n for v, n in counts.items() if n > 1}


def _view_rank(view: str) -> tuple[int, str]:
    return (VIEW_ORDER.index(view) if view in VIEW_ORDER else len(VIEW_ORDER), view)


def _source_of(inst: StoredInstance, rel: Path, published: Path | None) -> Path:
    """The stored film, or, when retention has pruned it (appliance/jobs/retention.py), the copy the
    study's published folder kept, if its bytes are the same film (sha256)."""
    if inst.stored_path.is_file():
        return inst.stored_path
    if published is not None:
        copy = published / rel
        if copy.is_file() and file_sha256(copy) == inst.film.sha256:
            log.info("%s film: stored copy pruned, using the published study's copy", inst.film.view)
            return copy
    raise InputError(
        f"{inst.film.view} film: its stored copy was pruned and the published study has no identical copy",
        reason="film_pruned",
    )


def copy_films(
    chosen: Mapping[str, StoredInstance], study_dir: Path, published: Path | None = None
) -> dict[str, StudyFilm]:
    """Copy each chosen film's stored bytes to ``films/<view>.<ext>`` (PNG/TIFF: plus a sidecar JSON
    rebuilt from what the ingest accepted, since the original sidecar is not kept).

    ``published`` is the study's current outbox folder, if any: a re-opened study whose older films
    were pruned from the state store reads them from there instead.
    """
    (study_dir / FILMS_DIR).mkdir(exist_ok=True)
    out: dict[str, StudyFilm] = {}
    for view, inst in chosen.items():
        film = inst.film
        suffix = ".dcm" if film.kind == "dicom" else inst.stored_path.suffix.lower() or ".png"
        rel = Path(FILMS_DIR) / f"{view}{suffix}"
        source = _source_of(inst, rel, published)
        shutil.copyfile(source, study_dir / rel)
        if film.kind != "dicom":
            side = {"view": view, "spacing_mm": list(film.spacing_mm), "side": film.side or None}
            (study_dir / FILMS_DIR / f"{view}.json").write_text(json.dumps(side, indent=2) + "\n")
        out[view] = StudyFilm(film=film, source=source, copy=rel)
    return out


def _geometry(sf: StudyFilm, study_dir: Path) -> dict[str, Any] | None:
    if sf.film.kind != "dicom":
        return None
    try:
        ds = pydicom.dcmread(study_dir / sf.copy, stop_before_pixels=True)
        geom = read_geometry(ds)
    except (GeometryError, OSError, ValueError) as exc:
        log.warning("%s film: projection geometry unreadable (%s); reported as null", sf.view, exc)
        return None
    return None if geom is None else geom.to_dict()


def patient_orientation(path: Path) -> list[str] | None:
    """DICOM PatientOrientation (0020,0020) of a film (row direction, column direction, e.g. ["L", "F"]),
    or None when the file has none or cannot be read. Films are assumed in the standard display; a row
    direction opposite to it means the stored image is mirrored (appliance/landmarks/knee_views.py)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[(0x0020, 0x0020)])
    except (OSError, ValueError, InvalidDicomError) as exc:
        log.warning("PatientOrientation unreadable (%s)", type(exc).__name__)
        return None
    value = ds.get("PatientOrientation")
    if not value:
        return None
    parts = [str(v).strip().upper() for v in ([value] if isinstance(value, str) else list(value))]
    return parts if any(parts) else None


def film_entry(
    sf: StudyFilm,
    study_dir: Path,
    detector_spacing_mm: tuple[float, float] | None = None,
    scale: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``films.<view>`` entry of result.json (no patient data: UIDs, sizes, spacing, hash).
    ``scale`` (``ScaleCalibration.to_json()`` of the measured long-leg film): the magnification the
    measurement applied and its source, when it is not the header's (the calibration sphere)."""
    f = sf.film
    mag = float(f.magnification) if f.magnification else 1.0
    det = detector_spacing_mm or (f.spacing_mm[0] * mag, f.spacing_mm[1] * mag)
    applied = scale.get("magnification") if scale is not None else f.magnification
    source = scale.get("source") if scale is not None else ("header" if f.magnification else None)
    spacing = [d / applied for d in det] if applied else list(f.spacing_mm)
    return {
        "file": sf.copy.as_posix(),
        "kind": f.kind,
        "sop_uid": f.sop_uid,
        "series_uid": f.series_uid,
        "rows": f.rows,
        "columns": f.columns,
        "spacing_mm": spacing,
        "detector_spacing_mm": list(det),
        "magnification": applied,
        "magnification_source": source,
        "calibration_ball": scale.get("calibration_ball") if scale is not None else None,
        "spacing_source": f.spacing_source + (" / calibration sphere" if source == CALIBRATION_BALL else ""),
        "spacing_flag": f.spacing_flag or None,
        "side": f.side or None,
        "photometric": f.photometric,
        "sha256": f.sha256,
        "geometry": _geometry(sf, study_dir),
        "patient_orientation": patient_orientation(study_dir / sf.copy) if f.kind == "dicom" else None,
    }
