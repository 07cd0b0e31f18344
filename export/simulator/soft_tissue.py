"""Skin, subcutaneous fat and muscle around the posed bones.

The leg's outline is an elliptic tube whose centre and radii follow the bones slice by slice (the leg
stays near vertical for the poses we simulate), joined to the foot (an offset of the foot bones) and to
the hip/buttock region. Girths follow adult anthropometry: mid-thigh circumference ~50-55 cm, knee
~38 cm, calf ~37 cm, ankle ~22 cm (CDC NHANES anthropometric reference data, 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.analytics import landmarks as lm
from export.simulator import sdf_kernels as kern
from export.simulator.assembly import Limb
from export.simulator.bones import F64
from export.simulator.sdf import F, smooth_min


@dataclass(frozen=True)
class SoftTissueProfile:
    """Control sections of the leg, ordered by height: centre (x, y), semi-axes (ML, AP), fat (mm)."""

    z: F64
    cx: F64
    cy: F64
    a: F64
    b: F64
    fat: F64
    pelvis_centre: F64
    pelvis_radii: F64

    def at(self, z: F) -> tuple[F, F, F, F, F]:
        zz = np.asarray(z, dtype=np.float64)
        out = [
            np.interp(zz, self.z, arr).astype(np.float32)
            for arr in (self.cx, self.cy, self.a, self.b, self.fat)
        ]
        return out[0], out[1], out[2], out[3], out[4]


def leg_profile(limb: Limb) -> SoftTissueProfile:
    """Sections in RIGHT-leg patient space (the voxeliser mirrors query points for a left leg)."""
    p = limb.params
    s = p.soft_tissue_scale
    fw, tw = limb.femur_to_world, limb.tibia_to_world
    fhc = fw.apply(limb.bone("femur").model.landmarks[lm.FHC])
    fkc = fw.apply(np.zeros(3))
    tkc = tw.apply(np.zeros(3))
    ac = tw.apply(limb.bone("tibia").model.landmarks[lm.AC])
    med = np.array([1.0, 0.0, 0.0])  # medial for a right leg
    post = np.array([0.0, 1.0, 0.0])

    def along(a: F64, b: F64, t: float) -> F64:
        return a + t * (b - a)

    sections = [
        # (centre, ML semi-axis, AP semi-axis) from the ankle up
        (ac + 28.0 * np.array([0, 0, 1.0]) + 6.0 * post, 30.0, 36.0),
        (along(ac, tkc, 0.35) + 10.0 * post, 36.0, 42.0),
        (along(ac, tkc, 0.70) + 20.0 * post, 49.0, 57.0),
        (along(ac, tkc, 0.88) + 12.0 * post, 47.0, 52.0),
        (fkc + 4.0 * post, 50.0, 51.0),
        (along(fkc, fhc, 0.15) + 2.0 * med, 55.0, 56.0),
        (along(fkc, fhc, 0.50) + 12.0 * med + 4.0 * post, 72.0, 70.0),
        (along(fkc, fhc, 0.85) + 24.0 * med + 6.0 * post, 84.0, 80.0),
        (fhc + 30.0 * med + 10.0 * post, 92.0, 88.0),
        (fhc + np.array([40.0, 12.0, 80.0]), 98.0, 95.0),
    ]
    cs = np.array([c for c, _, _ in sections])
    a = np.array([v for _, v, _ in sections]) * s
    b = np.array([v for _, _, v in sections]) * s
    order = np.argsort(cs[:, 2])
    cs, a, b = cs[order], a[order], b[order]
    # Fat thickness scales with girth; the distal leg carries proportionally less (NHANES skinfolds).
    fat = np.minimum(p.fat_thickness * (a / (84.0 * s)) ** 1.5 * s, 0.45 * np.minimum(a, b))
    pelvis_c = np.array([0.0, 14.0, fhc[2] + 35.0])
    pelvis_r = np.array([p.hip_half_width + 95.0 * s, 112.0 * s, 125.0])
    return SoftTissueProfile(cs[:, 2], cs[:, 0], cs[:, 1], a, b, fat, pelvis_c, pelvis_r)


def soft_tissue_sdf(
    prof: SoftTissueProfile,
    xs: F,
    ys: F,
    zs: F,
    foot_sdf: NDArray[np.float32] | None,
) -> tuple[F, F]:
    """Signed distance to the skin and the local fat thickness on the grid ``xs`` x ``ys`` x ``zs``
    (right-leg coordinates, mm)."""
    cx, cy, a, b, fat = prof.at(zs)
    d, f = kern.soft_tissue_grid(
        np.ascontiguousarray(xs, dtype=np.float32),
        np.ascontiguousarray(ys, dtype=np.float32),
        np.ascontiguousarray(zs, dtype=np.float32),
        cx,
        cy,
        a,
        b,
        fat,
        float(prof.z[0] - 20.0),
        prof.pelvis_centre.astype(np.float32),
        prof.pelvis_radii.astype(np.float32),
        25.0,
    )
    if foot_sdf is not None:
        leg = d
        d = smooth_min(d, foot_sdf, 20.0)
        f = np.where(foot_sdf < leg, np.float32(5.0), f).astype(np.float32)
    return d, f
