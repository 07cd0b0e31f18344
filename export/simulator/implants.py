"""Optional realism for robustness sets: metal implants and subchondral sclerosis, in bone frames.

Implants are drawn where they sit in a real limb but never move a landmark: a knee replacement's metal
replaces the outer layer of the bone it covers (the articular surface keeps its place), a hip stem fills
the canal and the head, a plate lies on the lateral cortex. Real arthroplasty changes the joint line by a
few millimetres; the truth here stays that of the bone, which is what the angles are defined on.
Prevalence: implants appear in a good share of orthopaedic long-leg films (films.md).
"""

from __future__ import annotations

import numpy as np

from export.simulator.bones import F64
from export.simulator.params import PhantomParams
from export.simulator.sdf import (
    Composite,
    Ellipsoid,
    HalfSpace,
    Part,
    RoundCone,
    RoundedBox,
    Shape,
    Shell,
    Sphere,
)

# Femoral and tibial TKA components are 2-4 mm of CoCr / Ti over the resected bone (e.g. implant
# catalogues: femoral component thickness ~9 mm at the condyles including cement is replaced bone; the
# metal itself a few mm).
TKA_FEMORAL_MM = 3.0
TKA_TRAY_MM = 3.5


def _t(v: F64) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def femur_metal(
    p: PhantomParams,
    femur: Composite,
    *,
    zc: float,
    fhc: F64,
    junction: F64,
    shaft_point: F64,
    shaft_dir: F64,
    shaft_radius: float,
) -> tuple[Shape, ...]:
    if p.implant == "tka":
        # The component wraps the condyles and trochlea up to ~1 cm above the condyle centres.
        return (
            Composite(
                (
                    Part(Shell(femur, TKA_FEMORAL_MM)),
                    Part(HalfSpace((0.0, 0.0, zc + 10.0), (0.0, 0.0, 1.0)), op="clip", blend=1.0),
                )
            ),
        )
    if p.implant == "hip_stem":
        stem_end = junction - 140.0 * shaft_dir
        return (
            Sphere(_t(fhc), p.head_radius - 0.3),
            RoundCone(_t(fhc), _t(junction), 7.5, 8.5),
            RoundCone(_t(junction), _t(stem_end), 0.62 * shaft_radius, 0.38 * shaft_radius),
        )
    if p.implant == "plate":
        # A lateral distal femoral locking plate with five bicortical screws, following the shaft axis.
        def on_shaft(z: float) -> F64:
            return np.asarray(shaft_point + (z - shaft_point[2]) / shaft_dir[2] * shaft_dir, dtype=np.float64)

        off = 1.25 * shaft_radius + 2.2
        mid = on_shaft(125.0) + np.array([off, 0.0, 0.0])
        axes = (
            (float(shaft_dir[2]), 0.0, -float(shaft_dir[0])),
            (0.0, 1.0, 0.0),
            (float(shaft_dir[0]), 0.0, float(shaft_dir[2])),
        )
        parts: list[Shape] = [RoundedBox(_t(mid), (2.2, 7.0, 85.0), 1.0, axes=axes)]
        for z in (60.0, 95.0, 130.0, 165.0, 200.0):
            c = on_shaft(z)
            parts.append(
                RoundCone(
                    _t(c + np.array([off + 2.0, 0.0, 0.0])),
                    _t(c - np.array([0.9 * shaft_radius, 0, 0])),
                    2.2,
                    2.0,
                )
            )
        return tuple(parts)
    return ()


def tibia_metal(p: PhantomParams, tibia: Composite, *, ant_c: float) -> tuple[Shape, ...]:
    if p.implant != "tka":
        return ()
    tray = Composite(
        (
            Part(Shell(tibia, TKA_TRAY_MM)),
            Part(HalfSpace((0.0, 0.0, -7.0), (0.0, 0.0, -1.0)), op="clip", blend=1.0),
        )
    )
    keel = RoundCone((0.0, ant_c, -4.0), (0.0, ant_c, -48.0), 8.0, 4.5)
    return (tray, keel)


def femur_sclerosis(
    p: PhantomParams, *, mdfc: F64, ldfc: F64, a_c: float, r: float
) -> tuple[tuple[Shape, float], ...]:
    """Dense subchondral bone under the loaded condyle: medial in varus knees, lateral in valgus
    (Buckland-Wright, Osteoarthritis Cartilage 2004: sclerosis tracks the narrowed compartment)."""
    if not p.sclerosis:
        return ()
    c = mdfc if p.JLCA >= 0 else ldfc
    return ((Ellipsoid(_t(c + np.array([0.0, 0.0, 5.0])), (0.8 * a_c, 0.7 * r, 7.0)), 1.0),)


def tibia_sclerosis(
    p: PhantomParams, *, centre_medial: F64, centre_lateral: F64, A: float, B: float
) -> tuple[tuple[Shape, float], ...]:
    if not p.sclerosis:
        return ()
    c = centre_medial if p.JLCA >= 0 else centre_lateral
    return ((Ellipsoid(_t(c + np.array([0.0, 0.0, -5.0])), (0.35 * A, 0.6 * B, 7.0)), 1.0),)
