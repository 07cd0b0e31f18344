"""Write a simulated film as a Digital X-Ray Image Storage - For Presentation object.

The object carries the modules the DX IOD (PS3.3 A.26) makes mandatory, plus the acquisition and
positioning attributes a reader of knee films relies on (SID, source-patient distance, magnification,
kVp, mAs) and the full projection geometry in a private block (see :mod:`geometry_tags`).

Spacing: a DX film records the detector pitch in ImagerPixelSpacing and the magnification at the
anatomy in EstimatedRadiographicMagnificationFactor. PixelSpacing (Basic Pixel Spacing Calibration
macro, PS3.3 10.7) is Type 1C, required only when the image has been calibrated to the patient, so by
default it is *not* written: equal to the detector pitch it would invite readers to take detector
millimetres for anatomy millimetres. With ``FilmInfo.calibrate_for_magnification`` the film is marked
as corrected for geometric magnification, as some clinical systems do: PixelSpacing = detector pitch /
magnification, PixelSpacingCalibrationType GEOMETRY and a description of the assumption.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import DSfloat

from appliance.dicomio.geometry_tags import write_geometry
from appliance.dicomio.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, is_valid_uid
from appliance.geometry.projection import ProjectionGeometry

log = logging.getLogger(__name__)

DX_FOR_PRESENTATION_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.1.1"

View = Literal["longleg_ap", "knee_ap", "knee_lat"]
Side = Literal["L", "R"]
Photometric = Literal["MONOCHROME1", "MONOCHROME2"]
ViewPosition = Literal["AP", "PA", "LL", "RL"]

# (BodyPartExamined defined term, SNOMED CT code, code meaning) per view. A long-leg film shows
# hip to ankle, so the coded region is "Lower limb"; the closest Body Part Examined defined term
# (PS3.16 Annex L) is LEG. Both knee views image the knee region.
_ANATOMY: dict[str, tuple[str, str, str]] = {
    "longleg_ap": ("LEG", "61685007", "Lower limb"),
    "knee_ap": ("KNEE", "72696002", "Knee"),
    "knee_lat": ("KNEE", "72696002", "Knee"),
}
_FRONTAL_VIEWS = frozenset({"longleg_ap", "knee_ap"})
# ViewCodeSequence entries (CID 4010 "DX View") matching each ViewPosition.
_VIEW_CODES: dict[str, tuple[str, str]] = {
    "AP": ("399348003", "antero-posterior"),
    "PA": ("399300004", "postero-anterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}

# Letters of PS3.3 C.7.6.1.1.1 for the +x, +y, +z (LPS) directions and their opposites.
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))
# A direction component below this fraction of the unit vector is left out of the orientation
# string, so a detector tilted by a few degrees still reads "L" rather than "LHP".
_ORIENTATION_MIN_COMPONENT = 0.25

_DA = re.compile(r"^(\d{8})?$")
_TM = re.compile(r"^(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?$")
# Value-length limits of the VRs the text fields are written with (PS3.5 6.2).
_MAX_LEN = {"SH": 16, "LO": 64, "PN": 64, "ST": 1024}


@dataclass(frozen=True)
class FilmInfo:
    """Everything about a film that is not pixels or geometry.

    Dates are DICOM DA strings (YYYYMMDD) and times TM strings (HHMMSS[.ffffff]); empty means
    unknown (the attributes are Type 2 and written empty). ViewPosition is derived from the geometry's
    beam direction; ``view_position``, when given, must agree with it. BodyPartExamined and the coded
    anatomic region follow from ``view``. ``magnification_factor`` defaults to SID divided by
    ``source_to_patient_mm``.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    view: View
    laterality: Side
    source_to_patient_mm: float
    window_center: float
    window_width: float
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: Literal["M", "F", "O", ""] = ""
    study_date: str = ""
    study_time: str = ""
    study_id: str = ""
    accession: str = ""
    study_description: str = ""
    series_description: str = ""
    series_number: int = 1
    instance_number: int = 1
    kvp: float | None = None
    exposure_mas: float | None = None
    magnification_factor: float | None = None
    view_position: ViewPosition | None = None
    frame_of_reference_uid: str | None = None
    burned_in_annotation: bool = False
    calibrate_for_magnification: bool = False
    derived: bool = False
    derivation_description: str = ""
    manufacturer: str = "xr3d simulator"
    manufacturer_model_name: str = "xr3d DRR"
    software_version: str = IMPLEMENTATION_VERSION_NAME

    def __post_init__(self) -> None:
        for name in ("study_uid", "series_uid", "sop_uid"):
            if not is_valid_uid(getattr(self, name)):
                raise ValueError(f"FilmInfo.{name} is not a valid UID")
        if self.frame_of_reference_uid is not None and not is_valid_uid(self.frame_of_reference_uid):
            raise ValueError("FilmInfo.frame_of_reference_uid is not a valid UID")
        if self.view not in _ANATOMY:
            raise ValueError(f"unknown view {self.view!r}")
        if self.laterality not in ("L", "R"):
            raise ValueError(f"laterality must be 'L' or 'R', got {self.laterality!r}")
        if self.patient_sex not in ("M", "F", "O", ""):
            raise ValueError("patient_sex must be M, F, O or empty")
        for name in ("patient_birth_date", "study_date"):
            if not _DA.match(getattr(self, name)):
                raise ValueError(f"FilmInfo.{name} must be YYYYMMDD or empty")
        if not _TM.match(self.study_time):
            raise ValueError("FilmInfo.study_time must be HHMMSS[.ffffff] or empty")
        for name, vr in (
            ("patient_name", "PN"),
            ("patient_id", "LO"),
            ("study_id", "SH"),
            ("accession", "SH"),
            ("study_description", "LO"),
            ("series_description", "LO"),
            ("derivation_description", "ST"),
            ("manufacturer", "LO"),
            ("manufacturer_model_name", "LO"),
            ("software_version", "LO"),
        ):
            value = getattr(self, name)
            if len(value) > _MAX_LEN[vr] or "\\" in value:
                raise ValueError(f"FilmInfo.{name} is too long for {vr} or contains a backslash")
        if self.source_to_patient_mm <= 0:
            raise ValueError("source_to_patient_mm must be positive")
        if self.window_width < 1:
            raise ValueError("window_width must be >= 1 (PS3.3 C.11.2.1.2)")
        if self.magnification_factor is not None and self.magnification_factor <= 0:
            raise ValueError("magnification_factor must be positive")
        if self.kvp is not None and self.kvp <= 0:
            raise ValueError("kvp must be positive")
        if self.exposure_mas is not None and self.exposure_mas < 0:
            raise ValueError("exposure_mas must be non-negative")
        if not (0 <= self.series_number < 2**31 and 0 <= self.instance_number < 2**31):
            raise ValueError("series_number and instance_number must fit an IS")


def _ds(value: float) -> DSfloat:
    # auto_format keeps the decimal string within the 16 characters DS allows.
    return DSfloat(float(value), auto_format=True)


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def orientation_letters(direction: NDArray[np.float64] | tuple[float, float, float]) -> str:
    """Patient-orientation string (e.g. "L", "FP") of an LPS direction, strongest component first."""
    d = np.asarray(direction, dtype=np.float64).reshape(3)
    d = d / float(np.linalg.norm(d))
    order = np.argsort(-np.abs(d), kind="stable")
    letters = [
        _AXIS_LETTERS[axis][0 if d[axis] > 0 else 1]
        for axis in order
        if abs(d[axis]) >= _ORIENTATION_MIN_COMPONENT
    ]
    return "".join(letters)


def view_position_from_geometry(geometry: ProjectionGeometry) -> ViewPosition:
    """AP/PA/LL/RL from the direction the beam travels (source toward detector).

    A lateral view is named for the side against the detector: beam toward patient left -> LL.
    """
    beam = -geometry.normal
    axis = int(np.argmax(np.abs(beam[:2])))
    if axis == 1:
        return "AP" if beam[1] > 0 else "PA"
    return "LL" if beam[0] > 0 else "RL"


def _check_pixels(pixels: NDArray[np.uint16], bits_stored: int, geometry: ProjectionGeometry) -> None:
    if pixels.ndim != 2:
        raise ValueError(f"film pixels must be 2D, got shape {pixels.shape}")
    if pixels.dtype.kind != "u" or pixels.dtype.itemsize != 2:
        raise ValueError(f"film pixels must be uint16, got {pixels.dtype}")
    if pixels.shape != (geometry.rows, geometry.columns):
        raise ValueError(
            f"pixels {pixels.shape} do not match the geometry's (rows, columns) "
            f"({geometry.rows}, {geometry.columns})"
        )
    if not 6 <= bits_stored <= 16:
        raise ValueError("DX BitsStored must be between 6 and 16")
    if pixels.size and int(pixels.max()) >= 2**bits_stored:
        raise ValueError(f"pixel values exceed {bits_stored} stored bits")


def build_dx_dataset(
    pixels: NDArray[np.uint16],
    *,
    bits_stored: int,
    photometric: Photometric,
    geometry: ProjectionGeometry,
    info: FilmInfo,
) -> Dataset:
    """The complete DX dataset (with file meta) that :func:`write_dx` saves."""
    _check_pixels(pixels, bits_stored, geometry)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported photometric interpretation {photometric!r}")
    view_position = view_position_from_geometry(geometry)
    if info.view_position is not None and info.view_position != view_position:
        raise ValueError(
            f"view position {info.view_position!r} contradicts the geometry's beam ({view_position})"
        )
    frontal = view_position in ("AP", "PA")
    if frontal != (info.view in _FRONTAL_VIEWS):
        raise ValueError(f"view {info.view!r} does not match view position {view_position!r}")
    sid = geometry.source_to_detector_mm()
    if info.source_to_patient_mm >= sid:
        raise ValueError("source_to_patient_mm must be less than the source-detector distance")
    magnification = info.magnification_factor or sid / info.source_to_patient_mm
    body_part, region_code, region_meaning = _ANATOMY[info.view]
    now = datetime.now(UTC)

    ds = Dataset()
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = DX_FOR_PRESENTATION_SOP_CLASS_UID
    ds.SOPInstanceUID = info.sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.patient_birth_date
    ds.PatientSex = info.patient_sex
    # General Study
    ds.StudyInstanceUID = info.study_uid
    ds.StudyDate = info.study_date
    ds.StudyTime = info.study_time
    ds.ReferringPhysicianName = ""
    ds.StudyID = info.study_id
    ds.AccessionNumber = info.accession
    if info.study_description:
        ds.StudyDescription = info.study_description
    # General Series + DX Series
    ds.Modality = "DX"
    ds.SeriesInstanceUID = info.series_uid
    ds.SeriesNumber = info.series_number
    if info.series_description:
        ds.SeriesDescription = info.series_description
    ds.BodyPartExamined = body_part
    ds.PresentationIntentType = "FOR PRESENTATION"
    # Frame of Reference: only when the caller ties films together (e.g. AP and lateral of one knee).
    if info.frame_of_reference_uid is not None:
        ds.FrameOfReferenceUID = info.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = info.manufacturer
    ds.ManufacturerModelName = info.manufacturer_model_name
    ds.SoftwareVersions = info.software_version
    # General Image
    ds.InstanceNumber = info.instance_number
    ds.ContentDate = info.study_date
    ds.ContentTime = info.study_time
    ds.PatientOrientation = [orientation_letters(geometry.u), orientation_letters(geometry.v)]
    ds.BurnedInAnnotation = "YES" if info.burned_in_annotation else "NO"
    # DX Image
    ds.ImageType = ["DERIVED" if info.derived else "ORIGINAL", "PRIMARY"]
    if info.derivation_description:
        ds.DerivationDescription = info.derivation_description
    ds.PixelIntensityRelationship = "LOG"
    # Bone (less beam intensity) displays bright either way: high stored values for MONOCHROME2
    # (sign -1), low stored values for MONOCHROME1 (sign +1).
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = _ds(0.0)
    ds.RescaleSlope = _ds(1.0)
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.LossyImageCompression = "00"
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = int(pixels.shape[0])
    ds.Columns = int(pixels.shape[1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    # VOI LUT
    ds.WindowCenter = _ds(info.window_center)
    ds.WindowWidth = _ds(info.window_width)
    ds.VOILUTFunction = "LINEAR"
    # DX Anatomy Imaged
    ds.ImageLaterality = info.laterality
    ds.AnatomicRegionSequence = Sequence([_code(region_code, region_meaning)])
    # DX Detector
    ds.DetectorType = "SCINTILLATOR"
    ds.ImagerPixelSpacing = [_ds(geometry.pitch_v_mm), _ds(geometry.pitch_u_mm)]
    if info.calibrate_for_magnification:
        ds.PixelSpacing = [_ds(geometry.pitch_v_mm / magnification), _ds(geometry.pitch_u_mm / magnification)]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Imager pixel spacing / estimated magnification"
    # DX Positioning
    ds.ViewPosition = view_position
    ds.ViewCodeSequence = Sequence([_code(*_VIEW_CODES[view_position])])
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence()
    # Type 2: a simulated film has no positioner to name.
    ds.PositionerType = ""
    ds.DistanceSourceToDetector = _ds(sid)
    ds.DistanceSourceToPatient = _ds(info.source_to_patient_mm)
    ds.EstimatedRadiographicMagnificationFactor = _ds(magnification)
    # X-Ray Acquisition Dose / Generation
    if info.kvp is not None:
        ds.KVP = _ds(info.kvp)
    if info.exposure_mas is not None:
        ds.Exposure = round(info.exposure_mas)
        ds.ExposureInuAs = round(info.exposure_mas * 1000.0)
    # Acquisition Context (mandatory module; nothing to say, so the Type 2 sequence is empty)
    ds.AcquisitionContextSequence = Sequence()
    write_geometry(ds, geometry)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds


def save_atomically(ds: Dataset, path: Path) -> None:
    """Save ``ds`` as a DICOM file so that ``path`` is either absent, the old file, or complete.

    The data goes to a hidden temporary file in the same directory (same file system, so the rename
    is atomic) and is fsynced before ``os.replace``; a watcher never sees a half-written film.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as fh:
            ds.save_as(fh, enforce_file_format=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_dx(
    path: Path,
    pixels: NDArray[np.uint16],
    *,
    bits_stored: int,
    photometric: Photometric,
    geometry: ProjectionGeometry,
    info: FilmInfo,
) -> None:
    """Write one film as DX For Presentation, little-endian explicit VR, atomically."""
    ds = build_dx_dataset(
        pixels, bits_stored=bits_stored, photometric=photometric, geometry=geometry, info=info
    )
    save_atomically(ds, path)
    log.debug("wrote DX film (%s, %dx%d)", info.view, ds.Columns, ds.Rows)
