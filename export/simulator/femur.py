"""The femur, built in its own frame: origin at the femoral knee centre (FKC), axes (lateral,
anterior, proximal) with the proximal axis along the mechanical axis (FKC -> FHC) and the lateral axis
parallel to the posterior condylar axis. The distal condyles are placed so that the line through their
most distal points makes exactly the requested mLDFA with the mechanical axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from appliance.analytics import landmarks as lm
from export.simulator import labels
from export.simulator.bones import F64, BoneModel, SurfacePatch, ellipsoid_surface
from export.simulator.implants import femur_metal, femur_sclerosis
from export.simulator.params import PhantomParams
from export.simulator.sdf import Composite, Ellipsoid, Part, Polyline, RoundCone, Sphere

LAT = np.array([1.0, 0.0, 0.0])
ANT = np.array([0.0, 1.0, 0.0])
PROX = np.array([0.0, 0.0, 1.0])


def _t(v: F64) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


@dataclass(frozen=True)
class DistalFemur:
    """Distal femur geometry the tibia and patella are placed against."""

    condyle_centre_medial: F64  # centre of the medial posterior-condyle circle (sagittal)
    condyle_centre_lateral: F64
    radius_medial: float
    radius_lateral: float
    trochlea_front: float  # anterior extent of the trochlea (ant coordinate)


def _neck_geometry(p: PhantomParams) -> tuple[F64, F64, F64]:
    """Neck direction n (shaft -> head), neck-shaft junction J, and shaft direction d_s.

    Chooses the junction so the shaft line meets the knee level at a fixed point and makes the requested
    anatomical-mechanical angle with the mechanical axis in the coronal plane (Moreland 1987).
    """
    L = p.femur_mech_length
    fhc = np.array([0.0, 0.0, L])
    knee_entry = np.array([1.0, 7.0, 0.0])  # shaft line at joint level: just lateral, anterior third
    tan_ama = math.tan(math.radians(p.femur_ama))
    theta = math.radians(180.0 - p.neck_shaft_angle)
    av = math.radians(p.anteversion)
    d_s = np.array([math.sin(math.radians(p.femur_ama)), 0.0, math.cos(math.radians(p.femur_ama))])
    n = PROX.copy()
    J = fhc.copy()
    for _ in range(8):
        h0 = -math.cos(av) * LAT + math.sin(av) * ANT
        h = h0 - (h0 @ d_s) * d_s
        h /= np.linalg.norm(h)
        n = math.cos(theta) * d_s + math.sin(theta) * h
        # Coronal condition: J_lat - x0 = J_prox * tan(AMA) with J = FHC - l n.
        ell = (knee_entry[0] + L * tan_ama) / (-n[0] + n[2] * tan_ama)
        J = fhc - ell * n
        d_s = J - knee_entry
        d_s /= np.linalg.norm(d_s)
    return n, J, d_s


def build_femur(p: PhantomParams) -> tuple[BoneModel, DistalFemur]:
    L = p.femur_mech_length
    fhc = np.array([0.0, 0.0, L])
    cw = p.condylar_width
    notch_half = 0.12 * cw
    a_c = 0.19 * cw  # ML semi-axis of each condyle
    d = notch_half + a_c  # condyle centre offset from the notch centre
    t_f = math.tan(math.radians(90.0 - p.mLDFA))  # distal joint line: prox = t_f * lat

    r_m, r_l = p.condyle_radius_medial, p.condyle_radius_lateral
    post = r_l + 2.0  # posterior condyles tangent to the plane ant = -post (defines the PCA)
    mdfc = np.array([-d, r_m - post, -t_f * d])
    ldfc = np.array([d, r_l - post, t_f * d])
    c_m = mdfc + np.array([0.0, 0.0, r_m])
    c_l = ldfc + np.array([0.0, 0.0, r_l])
    mpc = c_m - np.array([0.0, r_m, 0.0])
    lpc = c_l - np.array([0.0, r_l, 0.0])

    parts: list[Part] = []
    # Condyle "wheels": circular in the sagittal plane (the flexion facets), elliptic in the coronal.
    for c, r in ((c_m, r_m), (c_l, r_l)):
        parts.append(Part(Ellipsoid(_t(c), (a_c, r, r)), cortex_mm=1.3))
    # Distal/anterior extension of each condyle: longer and flatter, kept clear of the distal point
    # (bottom 1.5 mm above it, blend 1 mm) so the condyle's lowest point stays exactly where placed.
    for c, r in ((c_m, r_m), (c_l, r_l)):
        ext_c = c + np.array([0.0, 0.55 * r, 0.12 * r + 1.5])
        parts.append(Part(Ellipsoid(_t(ext_c), (a_c * 0.95, 1.25 * r, 1.12 * r)), blend=1.0, cortex_mm=1.3))
    zc = 0.5 * (c_m[2] + c_l[2])
    # Trochlear facets: the lateral one more prominent; the groove forms between them.
    troch_y = 0.5 * (c_m[1] + c_l[1]) + 0.95 * r_l
    lat_facet = np.array([0.45 * d, troch_y, zc + 8.0])
    med_facet = np.array([-0.45 * d, troch_y - 2.0, zc + 6.0])
    parts.append(Part(Ellipsoid(_t(lat_facet), (0.75 * a_c + 4, 0.62 * r_l, 0.9 * r_l)), blend=3.0))
    parts.append(Part(Ellipsoid(_t(med_facet), (0.75 * a_c + 3, 0.55 * r_l, 0.85 * r_l)), blend=3.0))
    trochlea_front = troch_y + 0.62 * r_l
    # Metaphysis joining the condyles to the shaft.
    meta_c = np.array([0.0, 0.5 * (c_m[1] + c_l[1]) + 8.0, zc + 45.0])
    parts.append(Part(Ellipsoid(_t(meta_c), (0.5 * cw - 1.0, 17.5, 56.0)), blend=6.0, cortex_mm=1.6))
    # Epicondyles: the TEA is externally rotated by the condylar twist relative to the PCA, i.e. its
    # lateral end lies posterior of the PCA-parallel line (external rotation turns lateral to posterior).
    tw = math.radians(p.condylar_twist)
    tea_dir = np.array([math.cos(tw), -math.sin(tw), 0.0])
    mid_e = np.array([0.0, 0.5 * (c_m[1] + c_l[1]) + 3.0, zc + 4.0])
    mec = mid_e - 0.5 * p.epicondylar_width * tea_dir
    lec = mid_e + 0.5 * p.epicondylar_width * tea_dir
    for e, sgn in ((mec, -1.0), (lec, 1.0)):
        parts.append(Part(Sphere(_t(e - sgn * 7.0 * tea_dir), 7.0), blend=4.0, cortex_mm=1.5))

    # Proximal femur.
    n, J, d_s = _neck_geometry(p)
    rh = p.head_radius
    parts.append(Part(Sphere(_t(fhc), rh), blend=0.0, cortex_mm=1.8))
    parts.append(
        Part(RoundCone(_t(fhc - 0.3 * rh * n), _t(J), 0.68 * rh, 0.92 * rh), blend=5.0, cortex_mm=2.0)
    )
    # Shaft with anterior bow, from the junction down to the metaphysis.
    knee_end = np.array([1.0, 7.0, 0.0]) + 55.0 * d_s
    top = J + 20.0 * d_s
    n_seg = 6
    pts = []
    radii = []
    rs = p.femur_shaft_radius
    for i in range(n_seg + 1):
        s = i / n_seg
        q = knee_end + s * (top - knee_end)
        q = q + p.femur_bow * 4.0 * s * (1.0 - s) * ANT
        pts.append(_t(q))
        radii.append(
            rs * (1.45 - 0.45 * min(1.0, s * 4.0))
            if s < 0.25
            else rs * (1.0 + 0.25 * max(0.0, s - 0.7) / 0.3)
        )
    parts.append(Part(Polyline(tuple(pts), tuple(radii)), blend=8.0, cortex_mm=p.femur_cortex, marrow=1.0))
    # Greater and lesser trochanters.
    gt = J + np.array([22.0, -6.0, 0.0]) + np.array([0.0, 0.0, (fhc[2] - 8.0) - J[2]])
    parts.append(Part(Ellipsoid(_t(gt), (13.0, 17.0, 22.0)), blend=9.0, cortex_mm=1.5))
    lt_base = J - 48.0 * d_s
    lt = lt_base + np.array([-12.0, -10.0, 0.0])
    parts.append(Part(Sphere(_t(lt), 8.5), blend=6.0, cortex_mm=1.5))

    if p.osteophytes:
        # Marginal osteophytes at the medial and lateral condyle edges, above the distal points so the
        # landmarks (which readers place on the original contour) are unchanged.
        parts.append(Part(Sphere(_t(c_m + np.array([-a_c - 1.0, 0.0, 2.0 - 0.4 * r_m])), 4.0), blend=3.0))
        parts.append(Part(Sphere(_t(c_l + np.array([a_c + 1.0, 0.0, 2.0 - 0.4 * r_l])), 3.0), blend=3.0))

    fkc = np.zeros(3)
    marks = {
        lm.FHC: fhc,
        lm.FKC: fkc,
        lm.MDFC: mdfc,
        lm.LDFC: ldfc,
        lm.MEC: mec,
        lm.LEC: lec,
        lm.MPC: mpc,
        lm.LPC: lpc,
    }
    # Patches a reader looks at: the distal surfaces of each condyle wheel.
    patches = (
        SurfacePatch(lm.MDFC, ellipsoid_surface(c_m, np.array([a_c, r_m, r_m]), n=96, keep="-z")),
        SurfacePatch(lm.LDFC, ellipsoid_surface(c_l, np.array([a_c, r_l, r_l]), n=96, keep="-z")),
        SurfacePatch("posterior_medial", _posterior_arc(c_m, r_m)),
        SurfacePatch("posterior_lateral", _posterior_arc(c_l, r_l)),
    )
    shape = Composite(tuple(parts))
    metal = femur_metal(
        p,
        shape,
        zc=zc,
        fhc=fhc,
        junction=J,
        shaft_point=np.array([1.0, 7.0, 0.0]),
        shaft_dir=d_s,
        shaft_radius=rs,
    )
    dense = femur_sclerosis(p, mdfc=mdfc, ldfc=ldfc, a_c=a_c, r=0.5 * (r_m + r_l))
    model = BoneModel("femur", labels.FEMUR, shape, marks, patches, dense=dense, metal=metal)
    distal = DistalFemur(c_m, c_l, r_m, r_l, float(trochlea_front))
    return model, distal


def _posterior_arc(centre: F64, r: float) -> F64:
    """Posterior condyle surface points in the condyle's central sagittal plane, from the
    distal-posterior round to the posterior-proximal edge (the flexion-axis circle fit uses them)."""
    ang = np.radians(np.linspace(-60.0, 80.0, 36))
    return np.stack(
        [np.full_like(ang, centre[0]), centre[1] - r * np.cos(ang), centre[2] + r * np.sin(ang)], axis=1
    )
