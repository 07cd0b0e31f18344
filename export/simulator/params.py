"""Phantom parameters: one frozen, JSON-serialisable record per simulated limb.

Following TorchIO's pattern, randomness lives only in :func:`sample_params`; building the phantom from a
:class:`PhantomParams` is deterministic, so every case can be replayed from its record (truth.json keeps
it). Ranges come from published adult population data; each is cited where it is drawn. Lengths in mm,
angles in degrees. The record describes a RIGHT leg; a left leg is its exact mirror image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from appliance.errors import InputError


@dataclass(frozen=True)
class PhantomParams:
    side: str  # "left" | "right"
    # --- global size -----------------------------------------------------------------------------
    hip_half_width: float  # midline to femoral head centre
    # --- femur --------------------------------------------------------------------------------
    femur_mech_length: float  # FHC -> FKC
    head_radius: float
    neck_shaft_angle: float
    anteversion: float
    femur_ama: float  # anatomical-mechanical angle of the femur
    femur_shaft_radius: float
    femur_cortex: float  # mid-shaft cortical thickness
    femur_bow: float  # anterior bow sagitta of the shaft
    condylar_width: float  # ML width of the distal femur across the condyles
    epicondylar_width: float
    condyle_radius_medial: float  # sagittal radius of the posterior condyle
    condyle_radius_lateral: float
    condylar_twist: float  # TEA relative to the posterior condylar axis, external positive
    # --- tibia / fibula / foot ------------------------------------------------------------------
    tibia_mech_length: float  # TKC -> AC
    plateau_width: float  # ML
    plateau_depth: float  # AP
    tibial_slope: float  # posterior slope of the plateau
    tibia_shaft_radius: float
    tibia_cortex: float
    tibial_torsion: float  # external rotation of the ankle axis relative to the knee
    # --- coronal alignment (the truth the films must reproduce) ---------------------------------
    mLDFA: float
    MPTA: float
    JLCA: float  # positive: joint lines converge medially (medial narrowing)
    joint_gap: float  # mean tibiofemoral gap (cartilage + meniscus) on a standing film
    # --- pose ------------------------------------------------------------------------------------
    rotation: float  # whole-limb rotation about the mechanical axis, external positive
    flexion: float  # knee flexion
    adduction: float  # inclination of the hip-ankle line from vertical, ankle medial positive
    lean: float  # sagittal tilt of the whole limb about the hip, ankle posterior positive
    # --- soft tissue -----------------------------------------------------------------------------
    soft_tissue_scale: float  # 1.0 average adult; obese patients up to ~1.7
    fat_thickness: float  # subcutaneous fat at the thigh
    # --- optional realism (robustness sets) -----------------------------------------------------
    osteophytes: bool = False
    sclerosis: bool = False
    implant: str = "none"  # "none" | "tka" | "plate" | "hip_stem"
    texture_seed: int = 0

    def __post_init__(self) -> None:
        if self.side not in ("left", "right"):
            raise InputError(f"side must be 'left' or 'right', not {self.side!r}", reason="bad_side")
        if self.implant not in ("none", "tka", "plate", "hip_stem"):
            raise InputError(f"unknown implant {self.implant!r}", reason="bad_implant")

    # Derived alignment, exact by construction (alignment.md identities).
    @property
    def aHKA(self) -> float:
        return self.MPTA - self.mLDFA

    @property
    def JLO(self) -> float:
        return self.MPTA + self.mLDFA

    @property
    def mHKA(self) -> float:
        return self.MPTA - self.mLDFA - self.JLCA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhantomParams:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown phantom parameters {sorted(unknown)}", reason="bad_params")
        return cls(**d)

    def replace(self, **changes: Any) -> PhantomParams:
        d = self.to_dict()
        d.update(changes)
        return PhantomParams.from_dict(d)


@dataclass(frozen=True)
class SamplingOptions:
    """What a data set asks of the sampler (robustness sets turn the realism options on)."""

    side: str = "random"  # "left" | "right" | "random"
    max_rotation: float = 20.0
    max_flexion: float = 15.0
    implants: bool = False
    osteophytes: bool = False
    sclerosis: bool = False
    # Share of cases drawn uniformly over the CPAK grid rather than from the population, so rare types
    # (VII-IX) occur often enough to learn and to evaluate.
    cpak_uniform_share: float = 0.35


def _tn(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """Truncated normal by rejection (the ranges are wide, so this terminates quickly)."""
    for _ in range(1000):
        x = float(rng.normal(mean, sd))
        if lo <= x <= hi:
            return x
    return float(np.clip(mean, lo, hi))


def _sample_coronal(rng: np.random.Generator, uniform_share: float) -> tuple[float, float, float]:
    """mLDFA, MPTA and JLCA.

    Population: MacDessi et al., Bone Joint J 2021;103-B(2):329-337 (CPAK): aHKA -0.8 +- 2.8 deg in
    healthy knees and about -2.5 +- 4.0 in arthritic knees; JLO 176.6 +- 3.4 (apex distal commoner).
    Paley, Principles of Deformity Correction (2002): mLDFA 87.5 (85-90), MPTA 87.5 (85-90), JLCA 0-2.
    The issue asks mLDFA and MPTA in 80-96 and JLCA 0-6 (narrowing medial or lateral), with mHKA
    spanning about -15 (varus) to +12 (valgus).
    """
    for _ in range(10000):
        if rng.random() < uniform_share:
            # Uniform over a box that covers all nine CPAK cells with margin.
            ahka = float(rng.uniform(-9.0, 8.0))
            jlo = float(rng.uniform(169.0, 189.0))
        else:
            ahka = _tn(rng, -1.8, 3.6, -12.0, 10.0)
            jlo = _tn(rng, 176.6, 3.4, 166.0, 190.0)
        mldfa = (jlo - ahka) / 2.0
        mpta = (jlo + ahka) / 2.0
        if not (80.0 <= mldfa <= 96.0 and 80.0 <= mpta <= 96.0):
            continue
        # Joint-space narrowing follows the deformity: medial in varus knees, lateral in valgus
        # (Cooke et al., Osteoarthritis Cartilage 2007; JLCA grows with OA severity).
        mag = float(rng.gamma(1.6, 1.0))
        p_medial = 0.85 if ahka < -1 else (0.2 if ahka > 2 else 0.5)
        jlca = min(mag, 6.0) * (1.0 if rng.random() < p_medial else -1.0)
        if rng.random() < 0.15:
            jlca = float(rng.uniform(-0.5, 0.5))
        mhka = ahka - jlca
        if -16.0 <= mhka <= 12.5:
            return mldfa, mpta, jlca
    raise RuntimeError("coronal alignment sampler did not converge")  # pragma: no cover


def sample_params(rng: np.random.Generator, options: SamplingOptions | None = None) -> PhantomParams:
    """Draw one limb. Each range below carries its source."""
    o = options or SamplingOptions()
    side = o.side if o.side in ("left", "right") else ("left" if rng.random() < 0.5 else "right")
    # Overall body size: one factor scales lengths and widths together so a limb stays proportionate
    # (stature CV about 4-5 %: NCD-RisC, eLife 2016); sex-linked width differences add to it.
    size = _tn(rng, 1.0, 0.05, 0.86, 1.15)
    male = rng.random() < 0.5
    width = size * (1.04 if male else 0.95)

    mldfa, mpta, jlca = _sample_coronal(rng, o.cpak_uniform_share)

    # Condyle radii: medial posterior condyle slightly larger than lateral (Iwaki, Pinskerova &
    # Freeman, JBJS Br 2000;82:1189: flexion facet radii ~21-22 mm medial, ~20-21 mm lateral).
    r_lat = _tn(rng, 20.5, 1.5, 17.0, 25.0) * width
    r_med = r_lat + _tn(rng, 1.0, 0.8, -0.5, 3.0) * width

    flex_max = o.max_flexion
    flexion = float(rng.uniform(0.0, 3.0)) if rng.random() < 0.5 else float(rng.uniform(0.0, flex_max))
    flexion = min(flexion, flex_max)

    implant = "none"
    if o.implants and rng.random() < 0.5:
        implant = str(rng.choice(["tka", "plate", "hip_stem"]))

    return PhantomParams(
        side=side,
        # Inter-hip-centre distance ~160-200 mm (Bertz et al., radiographic norms; Lenaerts 2008).
        hip_half_width=_tn(rng, 88.0, 6.0, 75.0, 102.0) * width,
        # Femoral mechanical length 430 +- 25 mm, tibial 370 +- 25 mm in adults (Paley 2002, table 1-2;
        # Bellemans et al., CORR 2012;470:45).
        femur_mech_length=_tn(rng, 430.0, 25.0, 370.0, 500.0) * size / 1.0,
        # Femoral head diameter 45 +- 4 mm (Noble et al., CORR 1988;235:148).
        head_radius=_tn(rng, 22.5, 2.0, 19.0, 27.0) * width,
        # Neck-shaft angle 128.8 +- 5.9 deg (Gilligan et al., Am J Phys Anthropol 2013;150:67; Boese
        # et al., JBJS Am 2016;98:e18 meta-analysis 126-131).
        neck_shaft_angle=_tn(rng, 129.0, 5.5, 117.0, 141.0),
        # Femoral anteversion 13 +- 8 deg by CT (Yoshioka et al., JBJS Am 1987;69:873; Koerner 2013).
        anteversion=_tn(rng, 13.0, 7.5, -5.0, 32.0),
        # Femoral anatomical-mechanical angle 5.7 +- 1.1 deg (Deakin et al., Knee 2012;19:867;
        # Moreland, Bassett & Hanker, JBJS Am 1987;69:745: 6 deg).
        femur_ama=_tn(rng, 5.8, 1.1, 3.5, 8.5),
        # Mid-shaft femoral diameter ~27-29 mm, cortex 5-7 mm (Ruff & Hayes, Am J Phys Anthropol 1983).
        femur_shaft_radius=_tn(rng, 13.5, 1.0, 11.0, 16.0) * width,
        femur_cortex=_tn(rng, 5.8, 0.8, 3.5, 8.0) * width,
        # Anterior bow radius of curvature 120 +- 36 cm (Egol et al., J Orthop Trauma 2004;18:410):
        # sagitta over a 350 mm shaft of 8-18 mm.
        femur_bow=_tn(rng, 12.0, 3.0, 5.0, 20.0) * size,
        # Distal femur ML 72-84 mm, tibial plateau ML 70-82 mm, AP 47-52 mm (Hitt et al., JBJS Am
        # 2003;85-A suppl 4:115 "Anthropometric measurements of the human knee").
        condylar_width=_tn(rng, 76.0, 4.5, 64.0, 90.0) * width,
        epicondylar_width=_tn(rng, 84.0, 5.0, 70.0, 98.0) * width,
        condyle_radius_medial=r_med,
        condyle_radius_lateral=r_lat,
        # Condylar twist angle (TEA vs PCA) 3.1 +- 2.0 deg (Griffin et al., J Arthroplasty 2000;15:354).
        condylar_twist=_tn(rng, 3.1, 2.0, -1.5, 8.0),
        tibia_mech_length=_tn(rng, 370.0, 25.0, 310.0, 440.0) * size,
        plateau_width=_tn(rng, 75.0, 4.5, 63.0, 88.0) * width,
        plateau_depth=_tn(rng, 49.0, 3.0, 41.0, 57.0) * width,
        # Medial posterior tibial slope 7 +- 3.5 deg (Hashemi et al., JBJS Am 2008;90:2724).
        tibial_slope=_tn(rng, 7.0, 3.0, 0.0, 14.0),
        tibia_shaft_radius=_tn(rng, 12.0, 0.9, 9.5, 14.5) * width,
        tibia_cortex=_tn(rng, 5.0, 0.7, 3.0, 7.0) * width,
        # External tibial torsion ~30 deg by CT, wide spread (Strecker et al., JBJS Br 1997;79:1019,
        # "Length and torsion of the lower limb", 505 limbs).
        tibial_torsion=_tn(rng, 28.0, 7.0, 8.0, 45.0),
        mLDFA=mldfa,
        MPTA=mpta,
        JLCA=jlca,
        # Standing medial joint space ~4-6 mm in non-arthritic knees (Buckland-Wright, OA Cart 1995).
        joint_gap=_tn(rng, 5.0, 0.8, 3.5, 7.0),
        rotation=float(rng.uniform(-o.max_rotation, o.max_rotation)),
        flexion=flexion,
        # Hip-ankle line inclined ~1-4 deg from vertical in double-leg stance (Moreland 1987).
        adduction=_tn(rng, 2.5, 1.0, 0.0, 5.0),
        lean=float(rng.uniform(-3.0, 3.0)),
        soft_tissue_scale=_tn(rng, 1.05, 0.18, 0.8, 1.7),
        fat_thickness=_tn(rng, 14.0, 7.0, 3.0, 45.0),
        osteophytes=bool(o.osteophytes and rng.random() < 0.6),
        sclerosis=bool(o.sclerosis and rng.random() < 0.6),
        implant=implant,
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def neutral_params(side: str = "right", **overrides: Any) -> PhantomParams:
    """An average limb with zero rotation and flexion; tests override the alignment they need."""
    base = PhantomParams(
        side=side,
        hip_half_width=88.0,
        femur_mech_length=430.0,
        head_radius=22.5,
        neck_shaft_angle=129.0,
        anteversion=13.0,
        femur_ama=5.8,
        femur_shaft_radius=13.5,
        femur_cortex=5.8,
        femur_bow=12.0,
        condylar_width=76.0,
        epicondylar_width=84.0,
        condyle_radius_medial=21.5,
        condyle_radius_lateral=20.5,
        condylar_twist=3.0,
        tibia_mech_length=370.0,
        plateau_width=75.0,
        plateau_depth=49.0,
        tibial_slope=7.0,
        tibia_shaft_radius=12.0,
        tibia_cortex=5.0,
        tibial_torsion=28.0,
        mLDFA=87.5,
        MPTA=87.0,
        JLCA=1.0,
        joint_gap=5.0,
        rotation=0.0,
        flexion=0.0,
        adduction=2.5,
        lean=0.0,
        soft_tissue_scale=1.0,
        fat_thickness=12.0,
    )
    return base.replace(**overrides) if overrides else base


def deg(x: float) -> float:
    return math.radians(x)
