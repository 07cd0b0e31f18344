"""Read an xr3d measurement report SR back into plain values (plain pydicom, no highdicom needed).

``read_measurement_groups(ds)`` returns one :class:`SrGroup` per TID 1500 measurement group, keyed by
tracking identifier (``"longleg_ap alignment"``, ``"longleg_ap FHC"``, ``"3D knee"``). Used by the tests
for the round trip and by any consumer that wants the numbers without parsing the tree itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

__all__ = ["SrGroup", "SrNumber", "read_measurement_groups"]

_IMAGING_MEASUREMENTS = ("DCM", "126010")
_MEASUREMENT_GROUP = ("DCM", "125007")
_TRACKING_ID = ("DCM", "112039")
_TRACKING_UID = ("DCM", "112040")


@dataclass(frozen=True)
class SrNumber:
    """A NUM item: ``value`` None when the SR gives a reason (``qualifier``) instead of a number."""

    value: float | None
    unit: str | None
    qualifier: str | None


@dataclass
class SrGroup:
    tracking_id: str
    tracking_uid: str | None = None
    numbers: dict[str, SrNumber] = field(default_factory=dict)  # concept code value -> number
    codes: list[tuple[str, str]] = field(default_factory=list)  # (concept code value, value code value)
    points: list[tuple[float, float]] = field(default_factory=list)  # SCOORD POINT column, row
    points_3d: list[tuple[float, float, float]] = field(default_factory=list)  # SCOORD3D POINT x, y, z (mm)
    frames_of_reference: list[str] = field(default_factory=list)  # of the SCOORD3D points
    point_sources: list[str] = field(default_factory=list)  # SOP instance UIDs the points refer to
    source_images: list[str] = field(default_factory=list)


def _concept(item: Dataset) -> tuple[str, str]:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return ("", "")
    return (str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue))


def _children(item: Dataset) -> Iterable[Dataset]:
    return item.get("ContentSequence") or []


def _number(item: Dataset) -> SrNumber:
    mv = item.get("MeasuredValueSequence") or []
    qual = item.get("NumericValueQualifierCodeSequence") or []
    qualifier = str(qual[0].CodeValue) if qual else None
    if not mv:
        return SrNumber(value=None, unit=None, qualifier=qualifier)
    m = mv[0]
    value = float(m.FloatingPointValue) if "FloatingPointValue" in m else float(m.NumericValue)
    return SrNumber(value=value, unit=str(m.MeasurementUnitsCodeSequence[0].CodeValue), qualifier=qualifier)


def _read_group(container: Dataset) -> SrGroup:
    group = SrGroup(tracking_id="")
    for item in _children(container):
        concept = _concept(item)
        vt = item.ValueType
        if concept == _TRACKING_ID:
            group.tracking_id = str(item.TextValue)
        elif concept == _TRACKING_UID:
            group.tracking_uid = str(item.UID)
        elif vt == "NUM":
            group.numbers[concept[1]] = _number(item)
        elif vt == "CODE":
            group.codes.append((concept[1], str(item.ConceptCodeSequence[0].CodeValue)))
        elif vt == "SCOORD" and item.GraphicType == "POINT":
            data = [float(v) for v in item.GraphicData]
            group.points.append((data[0], data[1]))
            for src in _children(item):
                for ref in src.get("ReferencedSOPSequence") or []:
                    group.point_sources.append(str(ref.ReferencedSOPInstanceUID))
        elif vt == "SCOORD3D" and item.GraphicType == "POINT":
            x, y, z = (float(v) for v in item.GraphicData)
            group.points_3d.append((x, y, z))
            group.frames_of_reference.append(str(item.ReferencedFrameOfReferenceUID))
        elif vt == "IMAGE":
            for ref in item.get("ReferencedSOPSequence") or []:
                group.source_images.append(str(ref.ReferencedSOPInstanceUID))
    return group


def read_measurement_groups(ds: Dataset) -> dict[str, SrGroup]:
    """Tracking identifier -> group, for every measurement group under Imaging Measurements."""
    groups: dict[str, SrGroup] = {}
    for item in _children(ds):
        if _concept(item) != _IMAGING_MEASUREMENTS:
            continue
        for container in _children(item):
            if _concept(container) == _MEASUREMENT_GROUP:
                g = _read_group(container)
                groups[g.tracking_id] = g
    return groups
