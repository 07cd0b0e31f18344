"""Alignment from 3D landmarks (LPS mm), each bone measured in its own coronal plane.

Following alignment.md "Why 3D matters": the femoral coronal plane contains the femoral mechanical
axis (FHC->FKC) and is parallel to the mediolateral reference (posterior condylar axis, else the
transepicondylar axis, else MDFC-LDFC, else MTP-LTP); the tibial plane contains the tibial mechanical
axis (TKC->AC) and is parallel to the same mediolateral direction made perpendicular to that axis.
mLDFA is read in the femoral plane, MPTA in the tibial plane, mHKA from both axes projected onto the
femoral plane, and JLCA from the identity mHKA = MPTA - mLDFA - JLCA. Every frame is built from the
landmarks only, so the numbers do not change when the whole set is rigidly moved or mirrored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from appliance.analytics import planar
from appliance.analytics.cpak import cpak_type
from appliance.analytics.flexion_axis import fit_flexion_axis
from appliance.analytics.landmarks import (
    AC,
    FHC,
    FKC,
    LANDMARKS_3D,
    LDFC,
    LEC,
    LPC,
    LTP,
    MDFC,
    MEC,
    MPC,
    MTP,
    MTPA,
    MTPP,
    TKC,
)
from appliance.analytics.points import FloatArray, Points, normalise_side, parse_points
from appliance.analytics.results import Angles3D, FlexionAxisFit
from appliance.errors import GeometryError, InputError

log = logging.getLogger(__name__)

# Mediolateral references in order of preference: (name, medial, lateral).
ML_REFERENCES: tuple[tuple[str, str, str], ...] = (
    ("PCA", MPC, LPC),
    ("TEA", MEC, LEC),
    ("MDFC-LDFC", MDFC, LDFC),
    ("MTP-LTP", MTP, LTP),
)
_ML_NAMES = tuple(n for _, m, lat in ML_REFERENCES for n in (m, lat))

_NEEDS: dict[str, tuple[str, ...]] = {
    "mHKA": (FHC, FKC, TKC, AC),
    "mLDFA": (FHC, FKC, MDFC, LDFC),
    "MPTA": (TKC, AC, MTP, LTP),
    "JLCA": (FHC, FKC, MDFC, LDFC, TKC, AC, MTP, LTP),
    "aHKA": (FHC, FKC, MDFC, LDFC, TKC, AC, MTP, LTP),
    "JLO": (FHC, FKC, MDFC, LDFC, TKC, AC, MTP, LTP),
    "MAD_mm": (FHC, FKC, TKC, AC),
    "femoral_mech_axis_mm": (FHC, FKC),
    "tibial_mech_axis_mm": (TKC, AC),
    "condylar_twist_deg": (FHC, FKC, MEC, LEC, MPC, LPC),
    "tibial_slope_deg": (TKC, AC, MTPA, MTPP),
    "knee_flexion_deg": (FHC, FKC, TKC, AC),
}
# Values whose sign needs to know which way is posterior (see _handedness).
_NEEDS_POSTERIOR = ("condylar_twist_deg", "knee_flexion_deg")


@dataclass(frozen=True)
class _Frame:
    """A bone's coronal frame: origin, unit lateral and unit distal axes (LPS)."""

    origin: FloatArray
    lateral: FloatArray
    distal: FloatArray

    def coronal(self, p: FloatArray) -> FloatArray:
        q = p - self.origin
        return np.array([q @ self.lateral, q @ self.distal])

    @property
    def normal(self) -> FloatArray:
        """distal x lateral: posterior for a right leg, anterior for a left one (see _handedness)."""
        return np.cross(self.distal, self.lateral)


def _unit(v: FloatArray, what: str) -> FloatArray:
    n = float(np.linalg.norm(v))
    if not math.isfinite(n) or n < planar.MIN_SEGMENT_MM:
        raise GeometryError(f"{what}: the landmarks coincide", reason="degenerate")
    return v / n


def _frame(top: FloatArray, bottom: FloatArray, ml: FloatArray, what: str) -> _Frame:
    distal = _unit(bottom - top, f"{what} mechanical axis")
    lateral_raw = ml - (ml @ distal) * distal
    if float(np.linalg.norm(lateral_raw)) < 0.1 * float(np.linalg.norm(ml)):
        raise GeometryError(
            f"the mediolateral reference runs along the {what} axis; landmarks are mislabelled",
            reason="inconsistent_medial_lateral",
        )
    return _Frame(origin=bottom, lateral=_unit(lateral_raw, f"{what} lateral axis"), distal=distal)


def _ml_reference(pts: Points) -> tuple[str, FloatArray] | None:
    for name, med, lat in ML_REFERENCES:
        if med in pts and lat in pts:
            return name, _unit(pts[lat] - pts[med], name)
    return None


def _handedness(
    pts: Points, fem: _Frame | None, tib: _Frame | None, side: str | None, notes: list[str]
) -> int | None:
    """+1 for a right leg, -1 for a left one, from the landmarks where possible.

    In LPS a right leg has (lateral, posterior, distal) = (-x, +y, -z), so distal x lateral is
    posterior; for a left leg it is anterior. Proper rigid motions keep this, a mirror flips it
    together with the side. Anterior/posterior landmark pairs tell us which case we are in.
    """
    votes: list[tuple[str, int]] = []
    if tib is not None and MTPA in pts and MTPP in pts:
        s = float((pts[MTPP] - pts[MTPA]) @ tib.normal)
        if s != 0:
            votes.append(("MTPA->MTPP", 1 if s > 0 else -1))
    if fem is not None and all(n in pts for n in (MEC, LEC, MPC, LPC)):
        back = (pts[MPC] + pts[LPC]) / 2 - (pts[MEC] + pts[LEC]) / 2
        s = float(back @ fem.normal)
        if s != 0:
            votes.append(("epicondyles->posterior condyles", 1 if s > 0 else -1))
    if votes:
        if len({v for _, v in votes}) > 1:
            notes.append(f"anterior/posterior landmarks disagree ({votes}); using {votes[0][0]}")
        return votes[0][1]
    if side is not None:
        notes.append("posterior direction taken from the side label (no anterior/posterior landmarks)")
        return 1 if side == "R" else -1
    return None


def _missing(pts: Points, has_ml: bool, hand: int | None) -> dict[str, list[str]]:
    missing: dict[str, list[str]] = {}
    for key, needs in _NEEDS.items():
        absent = {n for n in needs if n not in pts}
        if not has_ml:
            absent |= {n for n in _ML_NAMES if n not in pts}
        if key in _NEEDS_POSTERIOR and hand is None:
            absent |= {n for n in (MTPA, MTPP) if n not in pts}
        if absent:
            missing[key] = sorted(absent)
    if "aHKA" in missing:
        missing["CPAK"] = missing["aHKA"]
    return missing


def _axial_angle(v: FloatArray, frame: _Frame, posterior: FloatArray) -> float:
    """Direction of ``v`` in the bone's axial plane, from lateral toward posterior, degrees."""
    return math.degrees(math.atan2(float(v @ posterior), float(v @ frame.lateral)))


def _condyle_points(
    posterior_condyle_points: Mapping[str, ArrayLike],
) -> tuple[ArrayLike, ArrayLike]:
    keys = {str(k).strip().lower(): k for k in posterior_condyle_points}
    if set(keys) != {"medial", "lateral"}:
        raise InputError(
            f"posterior_condyle_points needs exactly the keys 'medial' and 'lateral', got {sorted(keys)}",
            reason="bad_condyle_points",
        )
    return posterior_condyle_points[keys["medial"]], posterior_condyle_points[keys["lateral"]]


def measure_3d(
    landmarks: Mapping[str, Sequence[float] | None],
    side: str | None = None,
    posterior_condyle_points: Mapping[str, ArrayLike] | None = None,
    *,
    strict: bool = False,
) -> Angles3D:
    """Measure alignment from 3D landmarks in LPS millimetres (names from ``landmarks.LANDMARKS_3D``).

    ``side`` is only compared with the landmarks, or used to find "posterior" when no anterior/posterior
    landmark pair is present. ``posterior_condyle_points``: {"medial": (N,3), "lateral": (M,3)}
    surface points for the flexion-axis fit. ``strict``: raise MissingLandmarksError instead of
    returning None values.
    """
    side_n = normalise_side(side)
    pts = parse_points(landmarks, 3, LANDMARKS_3D)
    notes: list[str] = []
    ref = _ml_reference(pts)
    ml_name = ref[0] if ref else None
    fem = tib = None
    if ref is not None:
        if FHC in pts and FKC in pts:
            fem = _frame(pts[FHC], pts[FKC], ref[1], "femoral")
        if TKC in pts and AC in pts:
            tib = _frame(pts[TKC], pts[AC], ref[1], "tibial")
    hand = _handedness(pts, fem, tib, side_n, notes)
    side_from = None if hand is None else ("R" if hand > 0 else "L")
    if side_n is not None and side_from is not None and side_from != side_n:
        notes.append(f"side is {side_n} but the landmarks form a {side_from} leg in LPS (mirrored data?)")
    missing = _missing(pts, ref is not None, hand)

    def have(key: str) -> bool:
        return key not in missing

    mldfa = mpta = mhka = jlca = mad = twist = slope = flexion = None
    if fem is not None:
        F = {n: fem.coronal(p) for n, p in pts.items()}
        if have("mLDFA"):
            mldfa = planar.mldfa_deg(F[FHC], F[FKC], F[MDFC], F[LDFC])
        if have("mHKA"):
            # Projecting the tibial points projects the tibial axis onto the femoral plane.
            mhka = planar.mhka_deg(F[FHC], F[FKC], F[TKC], F[AC])
        if have("MAD_mm"):
            mad = planar.mad_mm(F[FHC], F[AC], (F[FKC] + F[TKC]) / 2)
        if hand is not None:
            posterior = hand * fem.normal
            if have("condylar_twist_deg"):
                # Positive = TEA externally rotated relative to the PCA (its lateral end lies more
                # posterior), the usual sense of the posterior condylar angle (Berger et al., Clin
                # Orthop 1993;286:40-47: about 3.5 deg in men, 0.3 deg in women, surgical TEA).
                twist = planar.wrap_deg(
                    _axial_angle(pts[LEC] - pts[MEC], fem, posterior)
                    - _axial_angle(pts[LPC] - pts[MPC], fem, posterior)
                )
            if have("knee_flexion_deg"):
                a_t = pts[AC] - pts[TKC]
                # Femoral axis is (posterior 0, distal 1) here; flexion swings the ankle posterior.
                flexion = math.degrees(math.atan2(float(a_t @ posterior), float(a_t @ fem.distal)))
    if tib is not None:
        if have("MPTA"):
            T = {n: tib.coronal(pts[n]) for n in (TKC, AC, MTP, LTP)}
            mpta = planar.mpta_deg(T[TKC], T[AC], T[MTP], T[LTP])
        if have("tibial_slope_deg"):
            v = pts[MTPP] - pts[MTPA]
            down = float(v @ tib.distal)
            sagittal = v - (v @ tib.lateral) * tib.lateral - down * tib.distal
            # Positive = plateau descends posteriorly (posterior slope).
            slope = math.degrees(math.atan2(down, float(np.linalg.norm(sagittal))))
    if mhka is not None and mpta is not None and mldfa is not None:
        jlca = mpta - mldfa - mhka
    ahka = mpta - mldfa if mpta is not None and mldfa is not None else None
    jlo = mpta + mldfa if mpta is not None and mldfa is not None else None

    axis: FlexionAxisFit | None = None
    if posterior_condyle_points is not None:
        medial, lateral = _condyle_points(posterior_condyle_points)
        tea = pts[LEC] - pts[MEC] if MEC in pts and LEC in pts else None
        pca = pts[LPC] - pts[MPC] if MPC in pts and LPC in pts else None
        axis = fit_flexion_axis(medial, lateral, tea=tea, pca=pca)

    result = Angles3D(
        mhka=mhka,
        mldfa=mldfa,
        mpta=mpta,
        jlca=jlca,
        ahka=ahka,
        jlo=jlo,
        mad_mm=mad,
        femoral_mech_axis_mm=float(np.linalg.norm(pts[FKC] - pts[FHC]))
        if have("femoral_mech_axis_mm")
        else None,
        tibial_mech_axis_mm=float(np.linalg.norm(pts[AC] - pts[TKC]))
        if have("tibial_mech_axis_mm")
        else None,
        condylar_twist_deg=twist,
        tibial_slope_deg=slope,
        knee_flexion_deg=flexion,
        cpak=cpak_type(ahka, jlo) if ahka is not None and jlo is not None else None,
        flexion_axis=axis,
        ml_reference=ml_name,
        missing=missing,
        side=side_n,
        side_from_landmarks=side_from,
        notes=tuple(notes),
    )
    for note in notes:
        log.info("measure_3d: %s", note)
    if strict:
        result.raise_for_missing()
    return result
