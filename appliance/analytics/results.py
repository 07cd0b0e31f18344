"""Typed results of the alignment measurements and their JSON keys (docs/measure-schema.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from appliance.analytics.cpak import Cpak
from appliance.errors import MissingLandmarksError

# JSON key -> attribute name. The order is the order of tables and legends.
KEYS_2D: Final[dict[str, str]] = {
    "mHKA": "mhka",
    "mLDFA": "mldfa",
    "MPTA": "mpta",
    "JLCA": "jlca",
    "aHKA": "ahka",
    "JLO": "jlo",
    "MAD_mm": "mad_mm",
    "femoral_mech_axis_mm": "femoral_mech_axis_mm",
    "tibial_mech_axis_mm": "tibial_mech_axis_mm",
}

KEYS_3D: Final[dict[str, str]] = {
    **KEYS_2D,
    "condylar_twist_deg": "condylar_twist_deg",
    "tibial_slope_deg": "tibial_slope_deg",
    "knee_flexion_deg": "knee_flexion_deg",
}

# Units for readable tables; anything not listed is in degrees.
UNITS: Final[dict[str, str]] = {
    "MAD_mm": "mm",
    "femoral_mech_axis_mm": "mm",
    "tibial_mech_axis_mm": "mm",
}


def _raise_for_missing(missing: Mapping[str, list[str]], keys: tuple[str, ...]) -> None:
    wanted = [k for k in (keys or tuple(missing)) if k in missing]
    if not wanted:
        return
    names = sorted({n for k in wanted for n in missing[k]})
    raise MissingLandmarksError(names, needed_for=", ".join(wanted))


@dataclass(frozen=True)
class Angles2D:
    """Coronal alignment read from one AP long-leg film (degrees; ``*_mm`` in mm at the patient).

    A value is None when landmarks it needs are absent; ``missing`` then names them per key.
    ``apparent_side`` is the leg the landmarks imply if the film is displayed in the standard
    radiological convention (patient's right on the viewer's left); it differs from ``side`` for a
    mirrored film or a wrong side label, which changes no number but is worth a look.
    """

    mhka: float | None
    mldfa: float | None
    mpta: float | None
    jlca: float | None
    ahka: float | None
    jlo: float | None
    mad_mm: float | None
    femoral_mech_axis_mm: float | None
    tibial_mech_axis_mm: float | None
    cpak: Cpak | None
    missing: dict[str, list[str]] = field(default_factory=dict)
    side: str | None = None
    apparent_side: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, float | None]:
        return {key: getattr(self, attr) for key, attr in KEYS_2D.items()}

    def value(self, key: str) -> float | None:
        """A value by its JSON key (``"mHKA"``, ``"MAD_mm"``...)."""
        value: float | None = getattr(self, KEYS_2D[key])
        return value

    def raise_for_missing(self, *keys: str) -> None:
        """Raise MissingLandmarksError if any of ``keys`` (default: any value) could not be measured."""
        _raise_for_missing(self.missing, keys)


@dataclass(frozen=True)
class FlexionAxisFit:
    """Flexion-extension axis: one axis through the centres of circles fitted to each posterior condyle.

    ``direction`` is a unit vector pointing from the medial to the lateral condyle; the centres are
    the circle centres (on the axis) at the mean axial position of each condyle's points.
    """

    direction: tuple[float, float, float]
    medial_centre: tuple[float, float, float]
    lateral_centre: tuple[float, float, float]
    medial_radius_mm: float
    lateral_radius_mm: float
    rms_mm: float
    angle_to_tea_deg: float | None
    angle_to_pca_deg: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "direction": list(self.direction),
            "medial_centre": list(self.medial_centre),
            "lateral_centre": list(self.lateral_centre),
            "medial_radius_mm": self.medial_radius_mm,
            "lateral_radius_mm": self.lateral_radius_mm,
            "rms_mm": self.rms_mm,
            "angle_to_tea_deg": self.angle_to_tea_deg,
            "angle_to_pca_deg": self.angle_to_pca_deg,
        }


@dataclass(frozen=True)
class Angles3D:
    """Alignment measured in each bone's own coronal plane (alignment.md "Why 3D matters").

    ``ml_reference`` names the mediolateral direction both planes use ("PCA", "TEA", "MDFC-LDFC" or
    "MTP-LTP"). ``side_from_landmarks`` is the leg the landmarks' handedness implies in LPS.
    """

    mhka: float | None
    mldfa: float | None
    mpta: float | None
    jlca: float | None
    ahka: float | None
    jlo: float | None
    mad_mm: float | None
    femoral_mech_axis_mm: float | None
    tibial_mech_axis_mm: float | None
    condylar_twist_deg: float | None
    tibial_slope_deg: float | None
    knee_flexion_deg: float | None
    cpak: Cpak | None
    flexion_axis: FlexionAxisFit | None = None
    ml_reference: str | None = None
    missing: dict[str, list[str]] = field(default_factory=dict)
    side: str | None = None
    side_from_landmarks: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, float | None]:
        return {key: getattr(self, attr) for key, attr in KEYS_3D.items()}

    def value(self, key: str) -> float | None:
        value: float | None = getattr(self, KEYS_3D[key])
        return value

    def raise_for_missing(self, *keys: str) -> None:
        _raise_for_missing(self.missing, keys)
