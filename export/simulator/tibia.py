"""Tibia, fibula and foot, built in the tibial frame: origin at the tibial knee centre (TKC, plateau
centre between the spines), axes (lateral, anterior, proximal) with the proximal axis along the tibial
mechanical axis (AC -> TKC). The plateau plane makes exactly the requested MPTA with that axis in the
coronal plane and carries the requested posterior slope.

Tibial torsion turns everything distal (malleoli, distal fibula, talus and foot) externally about the
mechanical axis, as in a real tibia whose ankle axis points outward relative to the knee.
"""

from __future__ import annotations

import math

import numpy as np

from appliance.analytics import landmarks as lm
from export.simulator import labels
from export.simulator.bones import F64, BoneModel, SurfacePatch
from export.simulator.frames import rotation
from export.simulator.implants import tibia_metal, tibia_sclerosis
from export.simulator.params import PhantomParams
from export.simulator.sdf import (
    Composite,
    Ellipsoid,
    EllipticCylinder,
    HalfSpace,
    Part,
    Polyline,
    RoundCone,
    Sphere,
)

ANKLE_GAP = 3.0  # tibiotalar joint space on standing films, mm (Imai et al., Foot Ankle Int 2009)


def _t(v: F64) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def plateau_height(p: PhantomParams, lat: float, ant: float) -> float:
    """Height of the plateau plane above TKC at a point (tibial frame)."""
    s_t = math.tan(math.radians(90.0 - p.MPTA))  # medial (lat < 0) lower when MPTA < 90
    return s_t * lat + math.tan(math.radians(p.tibial_slope)) * ant


def _torsion(p: PhantomParams) -> F64:
    # External torsion turns the anterior direction toward lateral: a rotation about +proximal by -angle.
    return rotation([0.0, 0.0, 1.0], -p.tibial_torsion)


def build_tibia(p: PhantomParams) -> tuple[BoneModel, BoneModel, BoneModel]:
    """Tibia, fibula and foot models (all in the tibial frame)."""
    L = p.tibia_mech_length
    A = 0.5 * p.plateau_width
    B = 0.5 * p.plateau_depth
    ant_c = -2.0  # plateau ellipse centre slightly posterior of the spines
    s_t = math.tan(math.radians(90.0 - p.MPTA))
    tan_sl = math.tan(math.radians(p.tibial_slope))
    normal = np.array([-s_t, -tan_sl, 1.0])
    rs = p.tibia_shaft_radius
    R_tor = _torsion(p)
    ac = np.array([0.0, 0.0, -L])

    def distal(v: F64) -> F64:  # apply torsion about the mechanical axis (AC is on it)
        return np.asarray(R_tor @ v, dtype=np.float64)

    parts: list[Part] = [
        # Proximal tibia flares like a trumpet from the shaft to the plateau (Hitt 2003 widths).
        Part(EllipticCylinder(0.0, ant_c, A, B, -6.0, 25.0), cortex_mm=1.2),
        Part(Ellipsoid((0.0, ant_c, -6.0), (A, B, 78.0)), blend=2.0, cortex_mm=1.2),
        Part(HalfSpace((0.0, 0.0, 0.0), _t(normal)), op="clip", blend=1.5),
    ]
    # Tibial spines (intercondylar tubercles), rising 6-9 mm above the plateau.
    for x in (-6.0, 6.0):
        z = plateau_height(p, x, 1.0)
        parts.append(Part(Ellipsoid((x, 1.0, z - 1.0), (5.0, 9.0, 11.0)), blend=2.5, cortex_mm=1.0))
    # Medial plateau is concave: a shallow dish (Hashemi 2008 describes concave medial, flat/convex lateral).
    zmc = plateau_height(p, -0.5 * A, ant_c)
    parts.append(Part(Sphere((-0.5 * A, ant_c, zmc + 70.0 - 1.2), 70.0), op="cut", blend=1.0))
    # Tuberosity, metaphysis and shaft.
    parts.append(Part(Ellipsoid((4.0, B + ant_c - 3.0, -34.0), (12.0, 8.0, 16.0)), blend=6.0, cortex_mm=1.5))
    parts.append(Part(RoundCone((0.0, ant_c + 2.0, -40.0), (0.0, 2.0, -95.0), 0.7 * B, 1.2 * rs), blend=10.0))
    shaft = Polyline(
        ((0.0, 2.0, -95.0), (0.0, 1.5, -0.45 * L), (0.0, 0.0, -L + 75.0)),
        (1.15 * rs, rs, 1.08 * rs),
    )
    parts.append(Part(shaft, blend=8.0, cortex_mm=p.tibia_cortex, marrow=1.0))
    # Anterior crest: makes the shaft cross-section triangular.
    parts.append(
        Part(RoundCone((0.0, 2.0 + 0.75 * rs, -100.0), (0.0, 0.6 * rs, -L + 110.0), 4.0, 3.0), blend=5.0)
    )
    # Distal metaphysis and plafond; the plafond centre is the ankle centre AC.
    dm_a, dm_b = 0.30 * p.plateau_width, 0.38 * p.plateau_depth
    parts.append(
        Part(EllipticCylinder(0.0, 0.0, dm_a, dm_b, -L, -L + 10.0, angle_deg=-p.tibial_torsion), blend=4.0)
    )
    parts.append(Part(Ellipsoid((0.0, 0.0, -L + 10.0), (dm_a, dm_b, 48.0), axes=_axes(distal)), blend=4.0))
    mm_a = distal(np.array([-(dm_a - 5.0), 2.0, -L + 22.0]))
    mm_b = distal(np.array([-(dm_a - 3.0), 4.0, -L - 12.0]))
    parts.append(Part(RoundCone(_t(mm_a), _t(mm_b), 9.0, 5.5), blend=4.0))
    mmal = mm_b + 5.5 * (mm_b - mm_a) / np.linalg.norm(mm_b - mm_a)

    # Plateau landmarks: edges on the coronal line through the spines' AP position (ant = 0), and the
    # anterior/posterior edges of the medial plateau for the slope.
    mtp = np.array([-(A - 1.5), 0.0, plateau_height(p, -(A - 1.5), 0.0)])
    ltp = np.array([A - 1.5, 0.0, plateau_height(p, A - 1.5, 0.0)])
    x_m = -0.5 * A
    yr = B * math.sqrt(1.0 - (x_m / A) ** 2) - 2.0
    mtpa = np.array([x_m, ant_c + yr, plateau_height(p, x_m, ant_c + yr)])
    mtpp = np.array([x_m, ant_c - yr, plateau_height(p, x_m, ant_c - yr)])

    if p.osteophytes:
        parts.append(Part(Sphere(_t(mtp + np.array([-1.5, 0.0, -3.5])), 4.0), blend=3.0))
        parts.append(Part(Sphere(_t(ltp + np.array([1.5, 0.0, -3.5])), 3.0), blend=3.0))

    rim = _plateau_rim(p, A, B, ant_c)
    tibia_shape = Composite(tuple(parts))
    x_m = -0.5 * A
    centre_m = np.array([x_m, ant_c, plateau_height(p, x_m, ant_c)])
    centre_l = np.array([-x_m, ant_c, plateau_height(p, -x_m, ant_c)])
    tibia = BoneModel(
        "tibia",
        labels.TIBIA,
        tibia_shape,
        {
            lm.TKC: np.zeros(3),
            lm.AC: ac,
            lm.MTP: mtp,
            lm.LTP: ltp,
            lm.MTPA: mtpa,
            lm.MTPP: mtpp,
            lm.MMAL: mmal,
        },
        (SurfacePatch("plateau_rim", rim),),
        dense=tibia_sclerosis(p, centre_medial=centre_m, centre_lateral=centre_l, A=A, B=B),
        metal=tibia_metal(p, tibia_shape, ant_c=ant_c),
    )

    # Fibula: head below the lateral plateau, posterolateral; shaft to the lateral malleolus, whose tip
    # lies ~1 cm distal to the medial malleolus.
    head = np.array([A - 3.0, ant_c - 0.72 * B, -30.0])
    lm_a = distal(np.array([dm_a + 5.0, -3.0, -L + 38.0]))
    lm_b = distal(np.array([dm_a + 7.0, -5.0, -L - 22.0]))
    fib_parts = (
        Part(Ellipsoid(_t(head), (10.0, 10.0, 12.5)), cortex_mm=1.2),
        Part(
            Polyline(
                (
                    _t(head + np.array([-1.0, 1.0, -8.0])),
                    _t(0.5 * (head + lm_a) + np.array([1.5, 0, 0])),
                    _t(lm_a),
                ),
                (7.0, 6.0, 6.5),
            ),
            blend=4.0,
            cortex_mm=2.5,
            marrow=0.6,
        ),
        Part(RoundCone(_t(lm_a), _t(lm_b), 9.5, 6.0), blend=5.0, cortex_mm=1.2),
    )
    lmal = lm_b + 6.0 * (lm_b - lm_a) / np.linalg.norm(lm_b - lm_a)
    fibula = BoneModel("fibula", labels.FIBULA, Composite(fib_parts), {lm.LMAL: lmal})

    foot = BoneModel("foot", labels.FOOT, Composite(tuple(_foot_parts(L, distal))), {})
    return tibia, fibula, foot


def _foot_parts(L: float, distal: object) -> list[Part]:
    """Talus (dome under the plafond), calcaneus, midfoot, metatarsals and toes, ankle in neutral."""
    tf = distal  # torsion of the ankle axis
    assert callable(tf)
    top = -L - ANKLE_GAP
    parts = [
        Part(
            Ellipsoid(_t(tf(np.array([0.0, 0.0, top - 19.0]))), (15.5, 23.0, 19.0), axes=_axes(tf)),
            cortex_mm=1.2,
        ),
        Part(
            Ellipsoid(_t(tf(np.array([-4.0, -27.0, top - 30.0]))), (12.0, 13.0, 11.0), axes=_axes(tf)),
            blend=4.0,
        ),
        Part(
            Ellipsoid(_t(tf(np.array([3.0, 30.0, top - 52.0]))), (16.0, 36.0, 20.0), axes=_axes(tf)),
            blend=5.0,
        ),
        Part(
            Ellipsoid(_t(tf(np.array([-9.0, -45.0, top - 38.0]))), (15.0, 8.0, 12.0), axes=_axes(tf)),
            blend=3.0,
        ),
        Part(
            Ellipsoid(_t(tf(np.array([10.0, -42.0, top - 50.0]))), (12.0, 12.0, 11.0), axes=_axes(tf)),
            blend=3.0,
        ),
        Part(
            Ellipsoid(_t(tf(np.array([-5.0, -62.0, top - 47.0]))), (22.0, 12.0, 11.0), axes=_axes(tf)),
            blend=3.0,
        ),
    ]
    for i in range(5):
        base = tf(np.array([-17.0 + 8.5 * i, -72.0, top - 52.0 - 1.5 * i]))
        head = tf(np.array([-24.0 + 12.0 * i, -140.0 + 9.0 * i, top - 68.0]))
        toe = tf(np.array([-26.0 + 13.0 * i, -168.0 + 13.0 * i, top - 70.0]))
        parts.append(
            Part(RoundCone(_t(base), _t(head), 6.0 if i == 0 else 5.0, 4.5), blend=2.0, cortex_mm=1.5)
        )
        parts.append(
            Part(RoundCone(_t(head), _t(toe), 4.5 if i == 0 else 3.5, 3.0), blend=1.5, cortex_mm=1.0)
        )
    return parts


def _axes(tf: object) -> tuple[tuple[float, float, float], ...]:
    assert callable(tf)
    rows = [tf(np.eye(3)[i]) for i in range(3)]
    return tuple((float(r[0]), float(r[1]), float(r[2])) for r in rows)


def _plateau_rim(p: PhantomParams, A: float, B: float, ant_c: float) -> F64:
    """The plateau's outer rim on the plateau plane (a reader picks its medial and lateral corners)."""
    t = np.linspace(0.0, 2.0 * np.pi, 720, endpoint=False)
    x = (A - 1.5) * np.cos(t)
    y = ant_c + (B - 1.5) * np.sin(t)
    z = np.array([plateau_height(p, float(a), float(b)) for a, b in zip(x, y, strict=True)])
    return np.stack([x, y, z], axis=1)
