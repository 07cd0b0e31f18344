"""Coded concepts of the xr3d measurement report (docs/outputs.md lists them all).

DICOM (DCM), SNOMED CT (SCT) and UCUM codes are used where the standard has one. Alignment angles,
the knee landmarks, CPAK and xr3d's review reasons have no standard codes, so they live in the private
coding scheme ``99XR3D``, declared in the SR's CodingSchemeIdentificationSequence. Code values never
change once released: a reader may key on them.
"""

from __future__ import annotations

from typing import Final

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

__all__ = [
    "ANGLE_CODES",
    "LANDMARK_CODES",
    "PRIVATE_SCHEME",
    "REVIEW_REASON_CODES",
    "UNIT_DEGREE",
    "UNIT_MM",
    "UNIT_ONE",
    "cpak_code",
    "private",
]

PRIVATE_SCHEME: Final = "99XR3D"
PRIVATE_SCHEME_NAME: Final = "xr3d knee alignment concepts"
PRIVATE_SCHEME_VERSION: Final = "1"


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


UNIT_DEGREE: Final = CodedConcept(value="deg", scheme_designator="UCUM", meaning="degree")
UNIT_MM: Final = CodedConcept(value="mm", scheme_designator="UCUM", meaning="millimeter")
UNIT_ONE: Final = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")

# result.json key -> (code value, code meaning, unit). Definitions and signs: docs/measure-schema.md
# and /work/shared/reference/alignment.md (mHKA < 0 is varus; JLCA > 0 converges medially).
_ANGLES: Final[dict[str, tuple[str, str, CodedConcept]]] = {
    "mHKA": ("MHKA", "Mechanical hip-knee-ankle angle", UNIT_DEGREE),
    "mLDFA": ("MLDFA", "Mechanical lateral distal femoral angle", UNIT_DEGREE),
    "MPTA": ("MPTA", "Medial proximal tibial angle", UNIT_DEGREE),
    "JLCA": ("JLCA", "Joint line convergence angle", UNIT_DEGREE),
    "aHKA": ("AHKA", "Arithmetic hip-knee-ankle angle", UNIT_DEGREE),
    "JLO": ("JLO", "Joint line obliquity", UNIT_DEGREE),
    "MAD_mm": ("MAD", "Mechanical axis deviation", UNIT_MM),
    "femoral_mech_axis_mm": ("FMAL", "Femoral mechanical axis length", UNIT_MM),
    "tibial_mech_axis_mm": ("TMAL", "Tibial mechanical axis length", UNIT_MM),
    "condylar_twist_deg": ("CTWIST", "Condylar twist angle", UNIT_DEGREE),
    "tibial_slope_deg": ("TSLOPE", "Posterior tibial slope", UNIT_DEGREE),
    "knee_flexion_deg": ("KFLEX", "Knee flexion angle", UNIT_DEGREE),
}
ANGLE_CODES: Final[dict[str, tuple[CodedConcept, CodedConcept]]] = {
    key: (private(v, m), unit) for key, (v, m, unit) in _ANGLES.items()
}

LANDMARK_CODES: Final[dict[str, CodedConcept]] = {
    "FHC": private("FHC", "Femoral head centre"),
    "FKC": private("FKC", "Femoral knee centre"),
    "MDFC": private("MDFC", "Most distal point of medial femoral condyle"),
    "LDFC": private("LDFC", "Most distal point of lateral femoral condyle"),
    "MTP": private("MTP", "Medial tibial plateau point"),
    "LTP": private("LTP", "Lateral tibial plateau point"),
    "TKC": private("TKC", "Tibial knee centre"),
    "AC": private("AC", "Ankle centre"),
}

REVIEW_REASON_CODES: Final[dict[str, CodedConcept]] = {
    "low_confidence": private("RLOWCONF", "Low-confidence landmark"),
    "femoral_axis_tilt": private("RFEMTILT", "Femoral axis implausibly tilted"),
    "tibial_axis_tilt": private("RTIBTILT", "Tibial axis implausibly tilted"),
    "femoral_length": private("RFEMLEN", "Femoral length implausible"),
    "tibial_length": private("RTIBLEN", "Tibial length implausible"),
    "side_mismatch": private("RSIDE", "Film side label differs from anatomy"),
    "default_spacing": private("RSPACING", "Pixel spacing assumed"),
    "reconstruction_not_consistent": private("RRECON", "Reconstruction not consistent with films"),
    "landmarks_need_review": private("RLANDMRK", "Landmarks need review"),
    "side_conflict": private("RSIDECON", "Films disagree on the side"),
    "no_longleg_film": private("RNOLL", "No long-leg film"),
    "view_received_more_than_once": private("RDUPVIEW", "View received more than once"),
    "reconstruction_unavailable": private("RRECONNA", "Reconstruction not available"),
    "reconstruction_failed": private("RRECONFL", "Reconstruction failed"),
}
REVIEW_REASON_OTHER: Final = private("ROTHER", "Other flag")

# Concept names of the qualitative evaluations and non-angle measurements.
CPAK_TYPE: Final = private("CPAK", "CPAK phenotype")
NEEDS_REVIEW: Final = private("REVIEW", "Needs review before use")
REVIEW_REASON: Final = private("RREASON", "Flag raised by xr3d")
LOW_CONFIDENCE: Final = private("LOWCONF", "Low-confidence landmark")
CONFIDENCE: Final = private("CONF", "Landmark detection confidence")
RECON_CONSISTENT: Final = private("RECONOK", "Reconstruction consistent with films")
RECON_SCORE: Final = private("RECONSC", "Reconstruction consistency score")
PROCEDURE: Final = private("LLALIGN", "Lower limb alignment analysis")
METHOD_2D: Final = private("M2D", "Measured on frontal radiograph")
METHOD_3D: Final = private("M3D", "Measured on 3D reconstruction")
LANDMARK_FINDING: Final = private("LANDMARK", "Anatomical landmark")

YES: Final = CodedConcept.from_code(codes.SCT.Yes)
NO: Final = CodedConcept.from_code(codes.SCT.No)
MEASUREMENT_FAILURE: Final = CodedConcept.from_code(codes.DCM.MeasurementFailure)
LOWER_LIMB: Final = CodedConcept(value="61685007", scheme_designator="SCT", meaning="Lower limb")
KNEE: Final = CodedConcept(value="72696002", scheme_designator="SCT", meaning="Knee")
LATERALITY: Final = {
    "L": CodedConcept.from_code(codes.SCT.Left),
    "R": CodedConcept.from_code(codes.SCT.Right),
}

_ROMAN: Final = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX")


def cpak_code(cpak_type: int) -> CodedConcept:
    """The value code of CPAK type 1..9 (MacDessi et al., Bone Joint J 2021)."""
    if not 1 <= cpak_type <= 9:
        raise ValueError(f"CPAK type {cpak_type} is not 1..9")
    label = _ROMAN[cpak_type - 1]
    return private(f"CPAK{label}", f"CPAK type {label}")


def yes_no(flag: bool) -> CodedConcept:
    return YES if flag else NO
