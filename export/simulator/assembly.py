"""Places the bones in patient space: knee geometry, flexion, limb rotation and stance.

Order of operations (all deterministic from :class:`PhantomParams`):
1. Femoral frame = the right leg's (lateral, anterior, proximal) = (-x, -y, +z), FKC at the origin.
2. Tibia: rotated in the coronal plane by mHKA (= MPTA - mLDFA - JLCA, so the joint lines meet at JLCA),
   dropped by the joint gap, then flexed about the flexion axis through the posterior condyle centres.
3. Whole limb: rotated about its mechanical axis (FHC-AC; external positive), inclined so the ankle
   lies medial of the hip by the adduction angle, leaned sagittally, FHC moved to its place.
4. A left leg is the exact mirror (x -> -x) of the right leg built from the same record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from appliance.analytics import landmarks as lm
from export.simulator.bones import F64, BoneModel
from export.simulator.femur import build_femur
from export.simulator.frames import Rigid, mirror_x, rotation
from export.simulator.params import PhantomParams
from export.simulator.pelvis_patella import PATELLA_FLEXION_RATIO, build_patella, build_pelvis
from export.simulator.tibia import build_tibia

# Right leg, neutral: lateral = -x, anterior = -y, proximal = +z.
NEUTRAL = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class PlacedBone:
    model: BoneModel
    to_world: Rigid  # bone frame -> RIGHT-leg patient space (mirror applied on top for a left leg)


@dataclass(frozen=True)
class Limb:
    params: PhantomParams
    bones: tuple[PlacedBone, ...]
    femur_to_world: Rigid
    tibia_to_world: Rigid

    @property
    def mirrored(self) -> bool:
        return self.params.side == "left"

    def to_patient(self, p_right: F64) -> F64:
        """Right-leg patient space -> actual patient space (mirror for a left leg)."""
        return mirror_x(p_right) if self.mirrored else np.asarray(p_right, dtype=np.float64)

    def landmarks(self) -> dict[str, F64]:
        """Every 3D landmark in patient space (LPS mm)."""
        out: dict[str, F64] = {}
        for b in self.bones:
            for name, q in b.model.landmarks.items():
                out[name] = self.to_patient(b.to_world.apply(q))
        return out

    def patch(self, name: str) -> F64:
        for b in self.bones:
            for patch in b.model.patches:
                if patch.name == name:
                    return self.to_patient(b.to_world.apply(patch.points))
        raise KeyError(name)

    def bone(self, name: str) -> PlacedBone:
        for b in self.bones:
            if b.model.name == name:
                return b
        raise KeyError(name)


def build_limb(p: PhantomParams) -> Limb:
    femur, distal = build_femur(p)
    tibia, fibula, foot = build_tibia(p)

    # --- knee: tibia relative to the femur (femoral frame) -------------------------------------
    mhka = p.mHKA
    # Rotating about +anterior by -mHKA raises the lateral side of the tibial joint line by mHKA
    # relative to the femoral line's frame, which is what makes the lines meet at JLCA.
    R_cor = rotation([0.0, 1.0, 0.0], -mhka)
    # Gaps: medial and lateral compartments differ so the lines converge medially for JLCA > 0.
    c_m, c_l = distal.condyle_centre_medial, distal.condyle_centre_lateral
    span = float(c_l[0] - c_m[0])
    delta = span * math.tan(math.radians(p.JLCA))
    g_m = p.joint_gap - 0.5 * delta
    g_l = p.joint_gap + 0.5 * delta
    lift = max(0.0, 0.6 - min(g_m, g_l))  # never let bone interpenetrate
    g_m += lift
    g_l += lift
    g_0 = g_m + (0.0 - float(c_m[0])) * (g_l - g_m) / span
    tib_in_fem = Rigid(R_cor, np.array([0.0, 0.0, -g_0]))
    # Flexion about the axis through the posterior condyle centres; the tibia and foot swing back.
    axis = c_l - c_m
    flex = Rigid.about(axis, -p.flexion, c_m)
    tib_in_fem = tib_in_fem.then(flex)
    patella_motion = Rigid.about(axis, -PATELLA_FLEXION_RATIO * p.flexion, c_m)
    patella = build_patella(p, distal, patella_motion)

    # --- whole-limb pose, in femoral-frame coordinates first ------------------------------------
    fhc = femur.landmarks[lm.FHC]
    ac = tib_in_fem.apply(tibia.landmarks[lm.AC])
    mech = fhc - ac
    # External rotation turns anterior toward lateral: about +proximal (the mechanical axis) by -angle.
    pose = Rigid.about(mech, -p.rotation, fhc)
    to_neutral_world = Rigid(NEUTRAL, np.zeros(3))
    pose = pose.then(to_neutral_world)
    # Stance: incline the hip-ankle line by the adduction angle (ankle medial = +x for a right leg)
    # and lean it sagittally, both about the femoral head centre.
    fhc_w = pose.apply(fhc)
    ac_w = pose.apply(ac)
    v = fhc_w - ac_w
    current = math.degrees(math.atan2(-v[0], v[2]))  # ankle medial of hip -> positive
    pose = pose.then(Rigid.about([0.0, 1.0, 0.0], -(p.adduction - current), fhc_w))
    # Standing with a bent knee keeps the ankle under the hip (the femur tilts forward, the tibia back):
    # bring the hip-ankle line to vertical in the sagittal plane, then apply the lean.
    v = pose.apply(fhc) - pose.apply(ac)
    sagittal = math.degrees(math.atan2(v[1], v[2]))  # hip posterior of ankle -> positive
    pose = pose.then(Rigid.about([1.0, 0.0, 0.0], sagittal + p.lean, fhc_w))
    target = np.array([-p.hip_half_width, 0.0, 0.0])
    pose = pose.then(Rigid(np.eye(3), target - pose.apply(fhc)))

    femur_w = pose
    tibia_w = tib_in_fem.then(pose)
    placed = [
        PlacedBone(femur, femur_w),
        PlacedBone(tibia, tibia_w),
        PlacedBone(fibula, tibia_w),
        PlacedBone(foot, tibia_w),
        PlacedBone(patella, femur_w),
        PlacedBone(build_pelvis(p, target), Rigid.identity()),
    ]
    return Limb(p, tuple(placed), femur_w, tibia_w)
