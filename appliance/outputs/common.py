"""What every DICOM object xr3d writes into a study shares: patient/study copied from the source film,
UIDs, dates, equipment and the file meta.

The objects join the original study: Patient and General Study attributes are copied verbatim from a
source film (same StudyInstanceUID), each object gets its own new SeriesInstanceUID, and it references
the source image(s) it was derived from.

UIDs are derived (:func:`appliance.dicomio.uids.uid_from`) from a *content key* of the result plus the
kind of object: writing the same result twice gives the same UIDs (a PACS overwrites instead of
duplicating), while any change of the result gives new ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from appliance import __version__
from appliance.dicomio.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, uid_from
from appliance.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_EQUIPMENT",
    "PATIENT_STUDY_KEYWORDS",
    "Equipment",
    "SourceRef",
    "base_dataset",
    "content_key",
    "copy_patient_study",
    "dicom_date_time",
    "finish_file_meta",
    "output_uid",
    "referenced_image_item",
    "require_source",
    "save",
    "set_equipment",
    "stamp",
]

# Patient (PS3.3 C.7.1.1), Patient Study (C.7.2.2) and General Study (C.7.2.1) attributes. Copied
# verbatim when present so the new objects sort under the same patient and study in any archive.
PATIENT_STUDY_KEYWORDS: Final[tuple[str, ...]] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
)
# Type 2 attributes of those modules: written empty when the source lacks them.
_TYPE2: Final[tuple[str, ...]] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
CHARACTER_SET: Final = "ISO_IR 192"  # UTF-8: names copied from any source survive unchanged


@dataclass(frozen=True)
class Equipment:
    """General / Enhanced General Equipment of the objects xr3d writes (PS3.3 C.7.5.1, C.7.5.2)."""

    manufacturer: str = "xr3d"
    model_name: str = "xr3d appliance"
    device_serial_number: str = "xr3d-appliance"
    software_versions: str = f"xr3d {__version__}"
    institution_name: str = ""


DEFAULT_EQUIPMENT: Final = Equipment()


def stamp(ds: Dataset, when: datetime, *prefixes: str) -> None:
    """Set ``<prefix>Date`` and ``<prefix>Time`` (e.g. ``Content``, ``Series``) to ``when``."""
    da, tm = dicom_date_time(when)
    for p in prefixes:
        setattr(ds, f"{p}Date", da)
        setattr(ds, f"{p}Time", tm)


@dataclass(frozen=True)
class SourceRef:
    """The identifying UIDs of one source image."""

    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str | None = field(default=None)


def require_source(ds: Dataset | None, what: str = "source film") -> SourceRef:
    """The UIDs of ``ds``; raises InputError(``missing_source``) when there is no usable dataset."""
    if ds is None:
        raise InputError(
            f"no {what} dataset given: outputs must join the original study", reason="missing_source"
        )
    if not isinstance(ds, Dataset):
        raise InputError(f"{what} is not a pydicom Dataset ({type(ds).__name__})", reason="missing_source")
    missing = [
        k for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID") if not ds.get(k)
    ]
    if missing:
        raise InputError(f"{what} lacks {', '.join(missing)}", reason="missing_source")
    for_uid = ds.get("FrameOfReferenceUID")
    return SourceRef(
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        study_uid=str(ds.StudyInstanceUID),
        frame_of_reference_uid=str(for_uid) if for_uid else None,
    )


def copy_patient_study(src: Dataset, dst: Dataset) -> None:
    """Copy the Patient, Patient Study and General Study attributes of ``src`` into ``dst``."""
    for kw in PATIENT_STUDY_KEYWORDS:
        if kw in src:
            dst[kw] = copy.deepcopy(src[kw])
    for kw in _TYPE2:
        if kw not in dst:
            setattr(dst, kw, "")


def content_key(result: Mapping[str, Any]) -> str:
    """A hash of the result document without its timings (which differ on every run)."""
    stable = {k: v for k, v in result.items() if k not in ("timings_s", "files")}
    raw = json.dumps(stable, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def output_uid(key: str, kind: str, *parts: str) -> str:
    """The UID of output ``kind`` (``"sr.series"``, ``"ct.instance"``, ...) for result ``key``."""
    return uid_from("xr3d outputs v1", key, kind, *parts)


def dicom_date_time(when: datetime) -> tuple[str, str]:
    """DA and TM strings of ``when`` (converted to UTC when it carries a zone)."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


def set_equipment(ds: Dataset, equipment: Equipment) -> None:
    """General and Enhanced General Equipment (the latter's attributes are all Type 1 for SR/CT)."""
    ds.Manufacturer = equipment.manufacturer
    ds.ManufacturerModelName = equipment.model_name
    ds.DeviceSerialNumber = equipment.device_serial_number
    ds.SoftwareVersions = equipment.software_versions
    if equipment.institution_name:
        ds.InstitutionName = equipment.institution_name


def referenced_image_item(ref: SourceRef) -> Dataset:
    """One item of a ReferencedImageSequence / SourceImageSequence."""
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def referenced_series_items(refs: Sequence[SourceRef]) -> list[Dataset]:
    """ReferencedSeriesSequence-style items (series UID + its instances) for ``refs``."""
    by_series: dict[str, list[SourceRef]] = {}
    for r in refs:
        by_series.setdefault(r.series_uid, []).append(r)
    items = []
    for series_uid, members in by_series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = [referenced_image_item(m) for m in members]
        items.append(item)
    return items


def finish_file_meta(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> None:
    """File meta for ``ds`` (Part 10), naming xr3d as the implementation."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(str(ds.SOPClassUID))
    meta.MediaStorageSOPInstanceUID = UID(str(ds.SOPInstanceUID))
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a Part 10 file (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    log.debug("wrote %s (%s)", path.name, ds.SOPClassUID)
    return path


def base_dataset(
    source: Dataset,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    modality: str,
    created: datetime,
    equipment: Equipment,
    instance_number: int = 1,
) -> Dataset:
    """Patient/study copied from ``source``; new series; SOP Common; equipment; content date/time."""
    require_source(source)
    ds = Dataset()
    ds.SpecificCharacterSet = CHARACTER_SET
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    stamp(ds, created, "InstanceCreation")
    copy_patient_study(source, ds)
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    stamp(ds, created, "Series", "Content")
    ds.InstanceNumber = instance_number
    set_equipment(ds, equipment)
    finish_file_meta(ds)
    return ds
