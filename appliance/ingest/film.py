"""What the runtime knows about one accepted film (no pixels, no patient data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Film:
    """One accepted input file, described by the values the pipeline needs.

    ``spacing_mm`` is (row, column) spacing in the patient plane; ``spacing_source`` says where it came
    from and ``spacing_flag`` is set when it is an assumption (a configured default) rather than a
    measurement. Patient name, ID and birth date are deliberately not carried.
    """

    sha256: str
    kind: str  # "dicom" or "image"
    study_uid: str
    series_uid: str
    sop_uid: str
    view: str
    side: str  # "L", "R" or "" when unknown
    rows: int
    columns: int
    spacing_mm: tuple[float, float]
    spacing_source: str
    spacing_flag: str  # "" or e.g. "default_spacing"
    magnification: float | None
    modality: str
    body_part: str
    view_position: str
    photometric: str
    bits_stored: int
    transfer_syntax: str

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["spacing_mm"] = list(self.spacing_mm)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Film:
        data = dict(doc)
        data["spacing_mm"] = tuple(float(v) for v in data["spacing_mm"])
        return cls(**data)
