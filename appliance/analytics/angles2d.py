"""Coronal alignment from landmarks on one AP long-leg film (alignment.md, "Angles").

Pixel coordinates are (col, row) with the centre of the first pixel at (0, 0). They are converted
to millimetres at the patient (pixel spacing, then divided by the magnification SID/SOD), and then
into the canonical frame of ``planar`` (x lateral, y distal) built from the landmarks themselves:
distal from the hip toward the ankle, lateral from the medial toward the lateral condyle/plateau.
No display convention is assumed, so left, right, mirrored and rotated films give the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from appliance.analytics import planar
from appliance.analytics.cpak import cpak_type
from appliance.analytics.landmarks import AC, FHC, FKC, LANDMARKS_2D, LDFC, LTP, MDFC, MTP, TKC
from appliance.analytics.points import FloatArray, Points, normalise_side, parse_points, positive_finite
from appliance.analytics.results import Angles2D
from appliance.errors import GeometryError, InputError

log = logging.getLogger(__name__)

# Landmarks each value needs outright. The sign of mHKA and MAD also needs one medial/lateral pair
# and MAD needs one knee centre; those alternatives are checked separately below.
_NEEDS: dict[str, tuple[str, ...]] = {
    "mHKA": (FHC, FKC, TKC, AC),
    "mLDFA": (FHC, FKC, MDFC, LDFC),
    "MPTA": (TKC, AC, MTP, LTP),
    "JLCA": (MDFC, LDFC, MTP, LTP),
    "aHKA": (FHC, FKC, MDFC, LDFC, TKC, AC, MTP, LTP),
    "JLO": (FHC, FKC, MDFC, LDFC, TKC, AC, MTP, LTP),
    "MAD_mm": (FHC, AC),
    "femoral_mech_axis_mm": (FHC, FKC),
    "tibial_mech_axis_mm": (TKC, AC),
}
_ML_PAIRS: tuple[tuple[str, str], ...] = ((MDFC, LDFC), (MTP, LTP))


def _spacing(pixel_spacing_mm: float | Sequence[float]) -> tuple[float, float]:
    """(row, col) spacing in mm, the DICOM PixelSpacing order."""
    if isinstance(pixel_spacing_mm, int | float):
        s = positive_finite(pixel_spacing_mm, "pixel spacing", "bad_spacing")
        return s, s
    values = list(pixel_spacing_mm)
    if len(values) != 2:
        raise InputError("pixel spacing must be a number or (row, col) pair", reason="bad_spacing")
    return (
        positive_finite(values[0], "row pixel spacing", "bad_spacing"),
        positive_finite(values[1], "column pixel spacing", "bad_spacing"),
    )


def _ml_vector(pts: Points) -> FloatArray | None:
    """Medial -> lateral direction from whichever joint-line pairs are present (mm)."""
    vectors = [pts[lat] - pts[med] for med, lat in _ML_PAIRS if med in pts and lat in pts]
    if not vectors:
        return None
    if len(vectors) == 2 and float(vectors[0] @ vectors[1]) < 0:
        # One pair has medial and lateral swapped: every signed angle would be wrong.
        raise GeometryError(
            "MDFC->LDFC and MTP->LTP point in opposite directions; medial/lateral labels are inconsistent",
            reason="inconsistent_medial_lateral",
        )
    total: FloatArray = np.sum(vectors, axis=0)
    return total


def _mean(pts: Points, names: Sequence[str]) -> FloatArray | None:
    present = [pts[n] for n in names if n in pts]
    return np.mean(present, axis=0) if present else None


def _distal_vector(pts: Points, ml: FloatArray | None) -> FloatArray | None:
    """A vector pointing roughly distally (hip -> ankle); only its sense relative to ``ml`` matters."""
    knee = _mean(pts, (FKC, TKC, MDFC, LDFC, MTP, LTP))
    top = pts.get(FHC)
    bottom = pts.get(AC)
    if top is not None and bottom is not None:
        return bottom - top
    if top is not None and knee is not None:
        return knee - top
    if bottom is not None and knee is not None:
        return bottom - knee
    # Knee only: the tibial joint line lies distal to the femoral one.
    fem = _mean(pts, (MDFC, LDFC))
    tib = _mean(pts, (MTP, LTP))
    if ml is None or fem is None or tib is None:
        return None
    perp = np.array([-ml[1], ml[0]])
    return perp if float(perp @ (tib - fem)) > 0 else -perp


def _canonical(pts: Points, ml: FloatArray, distal: FloatArray) -> Points:
    """Points in the (lateral, distal) frame; origin at the centroid for numerical comfort."""
    d = distal / np.linalg.norm(distal)
    lat = np.array([d[1], -d[0]])
    if float(lat @ ml) < 0:
        lat = -lat
    if abs(float(ml @ d)) > 0.9 * float(np.linalg.norm(ml)):
        raise GeometryError(
            "the medial-lateral landmarks run along the limb axis; landmarks are mislabelled",
            reason="inconsistent_medial_lateral",
        )
    origin = np.mean(list(pts.values()), axis=0)
    return {name: np.array([(p - origin) @ lat, (p - origin) @ d]) for name, p in pts.items()}


def _apparent_side(ml: FloatArray, distal: FloatArray) -> str:
    """Leg implied by a standard radiological display: right leg has lateral toward -col (viewer's left)."""
    # z of (lateral x distal) in (col, row): -1 for a right leg shown conventionally, +1 for a left.
    cross = float(ml[0] * distal[1] - ml[1] * distal[0])
    return "R" if cross < 0 else "L"


def _missing(pts: Points) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    ml_names = [n for pair in _ML_PAIRS for n in pair]
    has_ml = any(a in pts and b in pts for a, b in _ML_PAIRS)
    for key, needs in _NEEDS.items():
        absent = {n for n in needs if n not in pts}
        if key in ("mHKA", "MAD_mm") and not has_ml:
            absent |= {n for n in ml_names if n not in pts}
        if key == "MAD_mm" and FKC not in pts and TKC not in pts:
            absent |= {FKC, TKC}
        if absent:
            missing[key] = sorted(absent)
    if "aHKA" in missing:
        missing["CPAK"] = missing["aHKA"]
    return missing


def measure_2d(
    landmarks: Mapping[str, Sequence[float] | None],
    pixel_spacing_mm: float | tuple[float, float] = 1.0,
    magnification: float = 1.0,
    side: str | None = None,
    *,
    strict: bool = False,
) -> Angles2D:
    """Measure one AP long-leg film.

    ``landmarks``: name -> (col, row) pixels (names from ``landmarks.LANDMARKS_2D``; 3D-only names
    are ignored, unknown names raise InputError). ``pixel_spacing_mm``: scalar or (row, col).
    ``magnification``: SID/SOD; distances are divided by it. ``side`` is only compared with the
    landmarks (see ``Angles2D.apparent_side``). With ``strict`` any value that cannot be measured
    raises MissingLandmarksError; otherwise it is None and listed in ``missing``.
    """
    side_n = normalise_side(side)
    row_mm, col_mm = _spacing(pixel_spacing_mm)
    mag = positive_finite(magnification, "magnification", "bad_magnification")
    raw = parse_points(landmarks, 2, LANDMARKS_2D)
    # (col, row) pixels -> (x, y) mm at the patient; anisotropic pixels change angles, so convert first.
    scale = np.array([col_mm, row_mm]) / mag
    pts: Points = {name: p * scale for name, p in raw.items()}

    missing = _missing(pts)
    notes: list[str] = []
    ml = _ml_vector(pts)
    distal = _distal_vector(pts, ml)
    apparent = None
    c: Points = {}
    if ml is not None and distal is not None:
        c = _canonical(pts, ml, distal)
        apparent = _apparent_side(ml, distal)
        if side_n is not None and apparent != side_n:
            notes.append(
                f"side is {side_n} but the landmarks look like a {apparent} leg in the standard "
                "radiological display: the film is mirrored or the side label is wrong (numbers unaffected)"
            )

    def have(key: str) -> bool:
        return key not in missing and bool(c)

    mldfa = planar.mldfa_deg(c[FHC], c[FKC], c[MDFC], c[LDFC]) if have("mLDFA") else None
    mpta = planar.mpta_deg(c[TKC], c[AC], c[MTP], c[LTP]) if have("MPTA") else None
    jlca = planar.jlca_deg(c[MDFC], c[LDFC], c[MTP], c[LTP]) if have("JLCA") else None
    mhka = planar.mhka_deg(c[FHC], c[FKC], c[TKC], c[AC]) if have("mHKA") else None
    mad = None
    if have("MAD_mm"):
        knee_names = [n for n in (FKC, TKC) if n in c]
        if len(knee_names) == 1:
            notes.append(f"MAD uses {knee_names[0]} alone as the knee centre")
        mad = planar.mad_mm(c[FHC], c[AC], np.mean([c[n] for n in knee_names], axis=0))
    ahka = mpta - mldfa if mpta is not None and mldfa is not None else None
    jlo = mpta + mldfa if mpta is not None and mldfa is not None else None
    fem_len = float(np.linalg.norm(pts[FKC] - pts[FHC])) if FHC in pts and FKC in pts else None
    tib_len = float(np.linalg.norm(pts[AC] - pts[TKC])) if TKC in pts and AC in pts else None

    result = Angles2D(
        mhka=mhka,
        mldfa=mldfa,
        mpta=mpta,
        jlca=jlca,
        ahka=ahka,
        jlo=jlo,
        mad_mm=mad,
        femoral_mech_axis_mm=fem_len,
        tibial_mech_axis_mm=tib_len,
        cpak=cpak_type(ahka, jlo) if ahka is not None and jlo is not None else None,
        missing=missing,
        side=side_n,
        apparent_side=apparent,
        notes=tuple(notes),
    )
    for note in notes:
        log.info("measure_2d: %s", note)
    if strict:
        result.raise_for_missing()
    return result
