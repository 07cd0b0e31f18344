"""The patella (femoral frame) and the acetabular part of the hemipelvis (right-leg patient space)."""

from __future__ import annotations

import numpy as np

from export.simulator import labels
from export.simulator.bones import F64, BoneModel
from export.simulator.femur import DistalFemur
from export.simulator.frames import Rigid
from export.simulator.params import PhantomParams
from export.simulator.sdf import Composite, Ellipsoid, HalfSpace, Part, RoundCone, Sphere

# Patellar tracking: the patella slides down the trochlea by roughly two thirds of the knee's flexion
# angle over the first 30 deg (Nha et al., J Orthop Res 2008;26:1067).
PATELLA_FLEXION_RATIO = 0.65


def _t(v: F64) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def build_patella(p: PhantomParams, distal: DistalFemur, flexion_axis: Rigid) -> BoneModel:
    """Patella over the trochlea, in the femoral frame, moved along with knee flexion.

    ``flexion_axis`` maps the patella from its extended position to its flexed one.
    Patellar width ~40-50 mm, height ~45-55, thickness ~20-25 (Baldwin & House, Knee 2005).
    """
    zc = 0.5 * (distal.condyle_centre_medial[2] + distal.condyle_centre_lateral[2])
    s = p.condylar_width / 76.0
    centre = np.array([3.0, distal.trochlea_front + 9.5 * s, zc + 30.0 * s])
    centre = flexion_axis.apply(centre)
    axes = flexion_axis.R.T  # rows: patella axes after flexion
    shape = Composite(
        (
            Part(
                Ellipsoid(_t(centre), (21.5 * s, 10.5 * s, 23.5 * s), axes=tuple(_t(r) for r in axes)),
                cortex_mm=1.4,
            ),
        )
    )
    return BoneModel("patella", labels.PATELLA, shape, {})


def build_pelvis(p: PhantomParams, fhc_world: F64) -> BoneModel:
    """Acetabulum, lower ilium, ischium and pubic ramus of the RIGHT hemipelvis, in patient space.

    Acetabular inclination ~40-45 deg and anteversion ~15-20 deg (Murray, JBJS Br 1993 definitions;
    Tannast et al., CORR 2007 normal values); cartilage gap ~2.5 mm around the head.
    """
    h = fhc_world
    rh = p.head_radius
    # Opening direction of the cup: lateral (-x), inferior and anterior (-y) for a right hip.
    n_open = np.array([-0.62, -0.30, -0.72])
    n_open /= np.linalg.norm(n_open)
    r_in = rh + 2.5
    shell_c = h
    parts = (
        Part(Sphere(_t(shell_c), r_in + 7.0), cortex_mm=1.8),
        Part(Sphere(_t(shell_c), r_in), op="cut", blend=0.5),
        Part(HalfSpace(_t(h + 0.25 * rh * n_open), _t(n_open)), op="clip", blend=2.0),
        # Ilium above the acetabulum, flaring laterally upward.
        Part(
            # The wing is seen nearly face-on in an AP view: a broad, thin, rounded fan above the cup.
            Ellipsoid(
                _t(h + np.array([12.0, 10.0, 62.0])),
                (46.0, 8.0, 42.0),
                axes=((0.9, 0.26, 0.35), (-0.28, 0.96, 0.0), (-0.34, -0.1, 0.94)),
            ),
            blend=10.0,
            cortex_mm=1.5,
        ),
        # Ischium down and back; pubic ramus toward the symphysis at the midline.
        Part(
            RoundCone(
                _t(h + np.array([12.0, 16.0, -14.0])), _t(h + np.array([22.0, 28.0, -62.0])), 14.0, 10.0
            ),
            blend=8.0,
        ),
        Part(
            RoundCone(
                _t(h + np.array([14.0, -14.0, -6.0])),
                (-4.0, float(h[1] - 30.0), float(h[2] - 28.0)),
                10.0,
                8.5,
            ),
            blend=8.0,
        ),
    )
    return BoneModel("pelvis", labels.PELVIS, Composite(parts), {})
