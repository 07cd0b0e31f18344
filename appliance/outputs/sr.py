"""The study's measurements as a Comprehensive 3D SR with a TID 1500 Measurement Report (highdicom).

``build_sr(result, sources, created=...)`` returns the SR Dataset; ``write_sr(path, ...)`` saves it.
``result`` is the result document (``xr3d.result/1`` or ``xr3d.process/1``); ``sources`` maps a view
(``"longleg_ap"``, ``"knee_ap"``, ``"knee_lat"``) to the source film's pydicom Dataset (headers are
enough). The measured film must be among them, else InputError(``missing_source``).

Content tree (codes: :mod:`appliance.outputs.sr_codes`, docs/outputs.md):

* one TID 1501 measurement group per measured film, tracking identifier ``"<view> alignment"`` + UID,
  finding site lower limb with laterality, source image = the film: every 2D value (mHKA, mLDFA,
  MPTA, JLCA, aHKA, JLO in UCUM ``deg``; MAD and the mechanical axis lengths in ``mm``); the CPAK type,
  "needs review" (SCT Yes/No) and one "reason for review" per reason as qualitative evaluations;
* one TID 1410 planar ROI group per landmark: an SCOORD POINT in the film's image coordinates
  (PS3.3 C.18.6.1.2: the top-left corner of the first pixel is 0,0, so result.json's pixel-centre
  coordinates are written plus 0.5), the detection confidence and a low-confidence Yes/No;
* one TID 1501 group per measured knee AP / lateral film (result.json ``knee_films``), tracking identifier
  ``"<view> knee film"``, finding site knee, source image = that film: its measurements (knee AP: JLCA;
  lateral: posterior tibial slope, knee flexion), when that film's dataset is among ``sources``;
* with ``angles_3d``: a TID 1501 group "3D knee" (method: measured on the 3D reconstruction) with the
  3D angles and, with a reconstruction, its consistency with the films (Yes/No and the score).

The document is COMPLETE, UNVERIFIED and PRELIMINARY (automatic values). ``verification=`` makes it
VERIFIED and FINAL with the clinician as a person observer; ``predecessor=`` names the SR it replaces
(e.g. the GUI's corrected landmarks written as a new SR that supersedes the automatic one).

A value that could not be measured is never written as a number: its NUM item has an empty Measured
Value Sequence and the qualifier DCM 114006 "Measurement failure" (PS3.3 C.18.1.1, CID 42).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    ImageRegion,
    ImageRegion3D,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PersonObserverIdentifyingAttributes,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from appliance import __version__
from appliance.errors import InputError
from appliance.outputs import sr_codes as C
from appliance.outputs.common import (
    CHARACTER_SET,
    DEFAULT_EQUIPMENT,
    Equipment,
    content_key,
    copy_patient_study,
    dicom_date_time,
    output_uid,
    require_source,
    save,
    set_equipment,
    stamp,
)
from appliance.outputs.study_result import Landmark, StudyResult, parse_result

log = logging.getLogger(__name__)

__all__ = ["SR_SERIES_NUMBER", "Verification", "build_sr", "write_sr"]

SR_SERIES_NUMBER: Final = 9001
SR_SERIES_DESCRIPTION: Final = "xr3d alignment measurements"
PIXEL_CORNER_OFFSET: Final = 0.5  # result.json: first pixel centre at 0,0; SCOORD: its corner at 0,0
ANGLES_2D: Final = (
    "mHKA",
    "mLDFA",
    "MPTA",
    "JLCA",
    "aHKA",
    "JLO",
    "MAD_mm",
    "femoral_mech_axis_mm",
    "tibial_mech_axis_mm",
)


@dataclass(frozen=True)
class Verification:
    """Who attests the report's values: a DICOM person name (``FAMILY^GIVEN``) and organisation."""

    observer_name: str
    organization: str


def _measurement(key: str, value: float | None) -> Measurement:
    name, unit = C.ANGLE_CODES[key]
    if value is not None:
        return Measurement(name=name, value=float(value), unit=unit)
    # highdicom only builds (and re-parses) NUM items with a value; the placeholder is removed from the
    # finished document by _drop_failed_values.
    return Measurement(name=name, value=0.0, unit=unit, qualifier=C.MEASUREMENT_FAILURE)


def _drop_failed_values(item: Dataset) -> int:
    """Empty the Measured Value Sequence of every NUM qualified "Measurement failure": the standard's
    way to say "no value, and why" (PS3.3 C.18.1.1; CID 42). Returns how many were emptied."""
    n = 0
    for child in item.get("ContentSequence") or []:
        qual = child.get("NumericValueQualifierCodeSequence") or []
        if child.get("ValueType") == "NUM" and qual and qual[0].CodeValue == C.MEASUREMENT_FAILURE.value:
            child.MeasuredValueSequence = []
            n += 1
        n += _drop_failed_values(child)
    return n


def _finding_sites(side: str | None, site: CodedConcept) -> list[FindingSite]:
    lat = C.LATERALITY.get(side or "")
    return [FindingSite(anatomic_location=site, laterality=lat)]


def _algorithm(result: StudyResult) -> AlgorithmIdentification:
    params = [f"{k}={v}" for k, v in sorted(result.model_versions.items())]
    if result.engine:
        params.append(f"engine={result.engine}")
    return AlgorithmIdentification(name="xr3d", version=__version__, parameters=params or None)


def _review_evaluations(result: StudyResult) -> list[QualitativeEvaluation]:
    evals = [QualitativeEvaluation(C.NEEDS_REVIEW, C.yes_no(result.needs_review))]
    for reason in result.review_reasons:
        code = C.REVIEW_REASON_CODES.get(reason, C.REVIEW_REASON_OTHER)
        evals.append(QualitativeEvaluation(C.REVIEW_REASON, code))
    return evals


def _film_group(
    result: StudyResult, view: str, source: Dataset, key: str
) -> MeasurementsAndQualitativeEvaluations:
    measurements = [_measurement(k, result.angles_2d.get(k)) for k in ANGLES_2D]
    evaluations: list[QualitativeEvaluation] = []
    if result.cpak is not None:
        evaluations.append(QualitativeEvaluation(C.CPAK_TYPE, C.cpak_code(result.cpak.type)))
    evaluations.extend(_review_evaluations(result))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=output_uid(key, "sr.group", view), identifier=f"{view} alignment"
        ),
        method=C.METHOD_2D,
        algorithm_id=_algorithm(result),
        finding_sites=_finding_sites(result.side, C.LOWER_LIMB),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _landmark_group(
    result: StudyResult, view: str, lm: Landmark, source: Dataset, key: str
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    point = np.array([[lm.col + PIXEL_CORNER_OFFSET, lm.row + PIXEL_CORNER_OFFSET]], dtype=np.float64)
    region = ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=point,
        source_image=SourceImageForRegion.from_source_image(source),
    )
    measurements = []
    if lm.confidence is not None:
        measurements.append(Measurement(name=C.CONFIDENCE, value=float(lm.confidence), unit=C.UNIT_ONE))
    finding = C.LANDMARK_CODES.get(lm.name, C.private(lm.name[:16], f"Landmark {lm.name}"[:64]))
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=output_uid(key, "sr.landmark", view, lm.name), identifier=f"{view} {lm.name}"
        ),
        referenced_region=region,
        finding_type=finding,
        finding_category=C.LANDMARK_FINDING,
        algorithm_id=_algorithm(result),
        measurements=measurements or None,
        qualitative_evaluations=[QualitativeEvaluation(C.LOW_CONFIDENCE, C.yes_no(lm.low_confidence))],
    )


def _landmark_3d_group(
    result: StudyResult, name: str, xyz: tuple[float, float, float], key: str
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    # The reconstruction's LPS frame is the one the CT series declares (same key, same UID), so the
    # points can be shown on that series.
    region = ImageRegion3D(
        graphic_type=hd.sr.GraphicTypeValues3D.POINT,
        graphic_data=np.array([xyz], dtype=np.float64),
        frame_of_reference_uid=output_uid(key, "ct.frame_of_reference"),
    )
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=output_uid(key, "sr.landmark", "3d", name), identifier=f"3D {name}"
        ),
        referenced_region=region,
        finding_type=C.LANDMARK_CODES.get(name, C.private(name[:16], f"Landmark {name}"[:64])),
        finding_category=C.LANDMARK_FINDING,
        method=C.METHOD_3D,
        algorithm_id=_algorithm(result),
    )


def _knee_film_group(
    result: StudyResult, view: str, source: Dataset, key: str
) -> MeasurementsAndQualitativeEvaluations:
    values = result.knee_measurements[view]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=output_uid(key, "sr.group", "knee film", view), identifier=f"{view} knee film"
        ),
        method=C.METHOD_2D,
        algorithm_id=_algorithm(result),
        finding_sites=_finding_sites(result.side, C.KNEE),
        measurements=[_measurement(k, v) for k, v in values.items() if k in C.ANGLE_CODES] or None,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _group_3d(
    result: StudyResult, sources: Mapping[str, Dataset], key: str
) -> MeasurementsAndQualitativeEvaluations | None:
    if result.angles_3d is None and result.consistency is None:
        return None
    measurements = [_measurement(k, v) for k, v in (result.angles_3d or {}).items() if k in C.ANGLE_CODES]
    evaluations: list[QualitativeEvaluation] = []
    if result.consistency is not None:
        evaluations.append(QualitativeEvaluation(C.RECON_CONSISTENT, C.yes_no(result.consistency.consistent)))
        if result.consistency.score is not None:
            measurements.append(
                Measurement(name=C.RECON_SCORE, value=result.consistency.score, unit=C.UNIT_ONE)
            )
    views = [v for v in (result.reconstruction_views or ("knee_ap", "knee_lat")) if v in sources]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=output_uid(key, "sr.group", "3d"), identifier="3D knee"),
        method=C.METHOD_3D,
        algorithm_id=_algorithm(result),
        finding_sites=_finding_sites(result.side, C.KNEE),
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[SourceImageForMeasurementGroup.from_source_image(sources[v]) for v in views] or None,
    )


def _coding_scheme_item() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = C.PRIVATE_SCHEME
    item.CodingSchemeName = C.PRIVATE_SCHEME_NAME
    item.CodingSchemeVersion = C.PRIVATE_SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = "xr3d"
    return item


def build_sr(
    result: Mapping[str, Any] | StudyResult,
    sources: Mapping[str, Dataset],
    *,
    created: datetime | None = None,
    equipment: Equipment = DEFAULT_EQUIPMENT,
    key: str | None = None,
    series_number: int = SR_SERIES_NUMBER,
    verification: Verification | None = None,
    predecessor: Dataset | None = None,
) -> Dataset:
    """The Comprehensive 3D SR of ``result`` (module docstring). ``key`` (default: the result's
    :func:`~appliance.outputs.common.content_key`) seeds the UIDs; ``created`` defaults to now (UTC).

    ``verification``: a clinician attests the values (e.g. after correcting landmarks in the GUI): the
    SR is VERIFIED and FINAL, with the person as an observer. ``predecessor``: the SR this one replaces
    (PredecessorDocumentsSequence; same study required)."""
    parsed = result if isinstance(result, StudyResult) else parse_result(result)
    if key is None:
        if isinstance(result, StudyResult):
            raise ValueError("build_sr needs key= when given a parsed StudyResult")
        key = content_key(result)
    if predecessor is not None and str(predecessor.get("StudyInstanceUID")) != parsed.study_uid:
        raise InputError("the predecessor SR belongs to another study", reason="missing_source")
    if verification is not None or predecessor is not None:
        # A verified or superseding document is a new object even when the values did not change.
        extra = [verification.observer_name, verification.organization] if verification else []
        extra.append(str(predecessor.SOPInstanceUID) if predecessor is not None else "")
        key = output_uid(key, "sr.version", *extra)
    if not sources:
        raise InputError(
            "no source film dataset given: the SR must join the original study", reason="missing_source"
        )
    for v in sorted(sources):
        ref = require_source(sources[v], f"{v} film")
        if ref.study_uid != parsed.study_uid:
            raise InputError(
                f"{v} film belongs to study {ref.study_uid}, the result to {parsed.study_uid}",
                reason="missing_source",
            )
    view = parsed.measured_view
    groups: list[Any] = []
    if view is not None:
        source = sources.get(view)
        require_source(source, f"{view} film")
        assert source is not None  # require_source raised otherwise
        groups.append(_film_group(parsed, view, source, key))
        groups.extend(_landmark_group(parsed, view, lm, source, key) for lm in parsed.landmarks.get(view, ()))
    groups.extend(
        _knee_film_group(parsed, v, sources[v], key)
        for v in sorted(parsed.knee_measurements)
        if v in sources and parsed.knee_measurements[v]
    )
    g3d = _group_3d(parsed, sources, key)
    if g3d is not None:
        groups.append(g3d)
    groups.extend(_landmark_3d_group(parsed, n, p, key) for n, p in sorted(parsed.landmarks_3d.items()))
    if not groups:
        raise InputError("the result holds no measurement to report", reason="nothing_to_report")
    patient_source = sources[view] if view is not None else sources[sorted(sources)[0]]
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=output_uid("device", equipment.device_serial_number),
            name="xr3d",
            manufacturer_name=equipment.manufacturer,
            model_name=equipment.model_name,
            serial_number=equipment.device_serial_number,
        ),
    )
    person = None
    if verification is not None:
        person = ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(
                name=verification.observer_name
            ),
        )
    report = MeasurementReport(
        observation_context=ObservationContext(
            observer_person_context=person, observer_device_context=observer
        ),
        procedure_reported=C.PROCEDURE,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    evidence: Sequence[Dataset] = [sources[v] for v in sorted(sources)]
    sr = Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=output_uid(key, "sr.series"),
        series_number=series_number,
        sop_instance_uid=output_uid(key, "sr.instance"),
        instance_number=1,
        manufacturer=equipment.manufacturer,
        is_complete=True,
        is_final=verification is not None,
        is_verified=verification is not None,
        verifying_observer_name=verification.observer_name if verification else None,
        verifying_organization=verification.organization if verification else None,
        previous_versions=[predecessor] if predecessor is not None else None,
        series_description=SR_SERIES_DESCRIPTION,
    )
    _drop_failed_values(sr)
    copy_patient_study(patient_source, sr)
    sr.SpecificCharacterSet = CHARACTER_SET
    set_equipment(sr, equipment)
    sr.CodingSchemeIdentificationSequence = [_coding_scheme_item()]
    when = created or datetime.now(UTC)
    stamp(sr, when, "Content", "InstanceCreation", "Series")
    if verification is not None:
        sr.VerifyingObserverSequence[0].VerificationDateTime = "".join(dicom_date_time(when))
    log.info(
        "SR built: %d landmark(s), %d of %d 2D values measured",
        len(parsed.landmarks.get(view, ())) if view is not None else 0,
        sum(parsed.angles_2d.get(k) is not None for k in ANGLES_2D),
        len(ANGLES_2D),
    )
    return sr


def write_sr(path: Path, result: Mapping[str, Any], sources: Mapping[str, Dataset], **kwargs: Any) -> Path:
    """``build_sr(result, sources, **kwargs)`` saved to ``path``."""
    return save(build_sr(result, sources, **kwargs), Path(path))
