"""A small analytic knee (femur with two spherical condyles, tibia with a tilted flat plateau) and its
films, shared by the tests of appliance.recon; built in memory, no simulator, no /tmp data.

Right leg in LPS: lateral is -x, posterior +y, proximal +z. The phantom's landmarks are known exactly,
so the 3D landmark code can be checked against them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from appliance.geometry.drr import line_integrals
from appliance.geometry.projection import ProjectionGeometry, centred_geometry
from appliance.geometry.volume import Volume, axis_aligned_affine
from appliance.recon.consistency import hu_to_mu
from appliance.recon.types import FilmView, Reconstruction

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Phantom:
    recon: Reconstruction
    landmarks: dict[str, F64]  # exact, LPS mm
    side: str = "R"


def build_phantom(
    *,
    n: int = 110,
    condyle_radius: float = 14.0,
    condyle_drop_mm: float = 1.5,  # lateral condyle higher by this much (mLDFA != 90)
    plateau_tilt_deg: float = 3.0,  # medial plateau lower (MPTA < 90)
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Phantom:
    """1 mm grid of ``n``^3 voxels centred on ``offset_mm``; the joint line is near z = 0."""
    off = np.asarray(offset_mm, dtype=np.float64)
    origin = off - (n - 1) / 2.0
    affine = axis_aligned_affine(origin, (1.0, 1.0, 1.0))
    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float64),) * 3, indexing="ij")
    x, y, z = origin[0] + i - off[0], origin[1] + j - off[1], origin[2] + k - off[2]
    hu = np.full((n, n, n), -1000.0, dtype=np.float32)
    hu[x**2 + y**2 <= 50.0**2] = 40.0
    labels = np.zeros((n, n, n), dtype=np.uint8)

    r = condyle_radius
    c_med = np.array([18.0, 0.0, 2.0 + r])  # medial: +x for a right leg
    c_lat = np.array([-18.0, 0.0, 2.0 + r + condyle_drop_mm])
    femur = (x**2 + y**2 <= 12.0**2) & (z >= 2.0 + r)
    femur |= (np.abs(x) <= 18.0) & (np.abs(y) <= 10.0) & (z >= 2.0 + r) & (z <= 2.0 + r + 14.0)
    for c in (c_med, c_lat):
        femur |= (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r**2
    s = np.tan(np.radians(plateau_tilt_deg))
    plateau = -2.0 - s * x  # medial (+x) lower
    tibia = ((x / 34.0) ** 2 + (y / 24.0) ** 2 <= 1.0) & (z <= plateau) & (z >= -60.0)
    tibia |= (x**2 + y**2 <= 13.0**2) & (z < -60.0)
    patella = (x**2 + (y + 40.0) ** 2 / 0.5 + (z - 20.0) ** 2 <= 10.0**2) & ~femur
    for lab, mask in ((1, femur), (2, tibia), (4, patella)):
        labels[mask] = lab
        hu[mask] = 900.0
    # A cortex: the bone rim brighter than the inside, as on CT.
    bone = labels > 0
    rim = bone & ~ndimage.binary_erosion(bone, iterations=2)
    hu[rim] = 1500.0

    lm = {
        "MDFC": c_med - np.array([0.0, 0.0, r]),
        "LDFC": c_lat - np.array([0.0, 0.0, r]),
        "MPC": c_med + np.array([0.0, r, 0.0]),
        "LPC": c_lat + np.array([0.0, r, 0.0]),
        "MTP": np.array([32.5, 0.0, -2.0 - s * 32.5]),
        "LTP": np.array([-32.5, 0.0, -2.0 + s * 32.5]),
        "FHC": np.array([-15.0, 0.0, 440.0]),
        "AC": np.array([5.0, 0.0, -400.0]),
    }
    lm["FKC"] = 0.5 * (lm["MDFC"] + lm["LDFC"])
    lm["TKC"] = 0.5 * (lm["MTP"] + lm["LTP"])
    vol = Volume(hu, affine)
    return Phantom(
        Reconstruction(vol, Volume(labels, affine), model="phantom"),
        {k: v + off for k, v in lm.items()},
    )


def knee_geometries(pitch_mm: float = 0.5, size_mm: float = 150.0) -> dict[str, ProjectionGeometry]:
    """Knee AP (source anterior) and lateral (source on the patient's left... for a right knee, medial)."""

    def geometry(
        name: str, beam_dir: tuple[int, int, int], u_dir: tuple[int, int, int]
    ) -> ProjectionGeometry:
        return centred_geometry(
            name=name,
            isocenter_mm=(0.0, 0.0, 0.0),
            beam_dir=beam_dir,
            u_dir=u_dir,
            sid_mm=1100.0,
            sod_mm=1000.0,
            width_mm=size_mm,
            height_mm=size_mm,
            pitch_mm=pitch_mm,
        )

    return {
        "knee_ap": geometry("knee_ap", (0, 1, 0), (1, 0, 0)),
        "knee_lat": geometry("knee_lat", (-1, 0, 0), (0, -1, 0)),
    }


def longleg_geometry() -> ProjectionGeometry:
    return centred_geometry(
        name="longleg_ap",
        isocenter_mm=(0.0, 0.0, 20.0),
        beam_dir=(0, 1, 0),
        u_dir=(1, 0, 0),
        sid_mm=2500.0,
        sod_mm=2300.0,
        width_mm=400.0,
        height_mm=1000.0,
        pitch_mm=1.0,
    )


def film_of(recon: Reconstruction, geometry: ProjectionGeometry, seed: int = 0) -> FilmView:
    """A film as a console would make it: transmission, log, a non-linear tone curve, unsharp masking
    and noise, bone bright in [0, 1]."""
    p = line_integrals(Volume(hu_to_mu(np.asarray(recon.volume.data)), recon.volume.affine), geometry)
    x = p / max(float(p.max()), 1e-6)
    x = x**0.7
    x = x + 0.6 * (x - ndimage.gaussian_filter(x, 6.0))
    rng = np.random.default_rng(seed)
    x = x + rng.normal(0.0, 0.01, x.shape)
    x = np.clip((x - x.min()) / (x.max() - x.min()), 0.0, 1.0)
    return FilmView(geometry.name, x.astype(np.float32), geometry)


def moved_bone(recon: Reconstruction, label: int, T: F64) -> Reconstruction:
    """``recon`` with bone ``label`` moved by the 4x4 LPS transform ``T`` (old place: soft tissue)."""
    A = recon.volume.affine
    M = np.linalg.inv(A) @ np.linalg.inv(T) @ A
    hu = np.asarray(recon.volume.data, dtype=np.float32)
    lab = np.asarray(recon.labels.data)
    hu_m = ndimage.affine_transform(hu, M[:3, :3], M[:3, 3], order=1, mode="nearest")
    mask_m = ndimage.affine_transform((lab == label).astype(np.float32), M[:3, :3], M[:3, 3], order=1) > 0.5
    old = ndimage.binary_dilation(lab == label, iterations=1)
    hu_new = np.where(mask_m, hu_m, np.where(old & (lab != label) | (lab == label), 40.0, hu))
    lab_new = np.where(lab == label, 0, lab).astype(np.uint8)
    lab_new[mask_m] = label
    return Reconstruction(Volume(hu_new.astype(np.float32), A), Volume(lab_new, A), recon.model)


def test_phantom_landmarks_lie_on_the_bones() -> None:
    ph = build_phantom()
    lab = ph.recon.labels
    for name, bone in (("MDFC", 1), ("LDFC", 1), ("MTP", 2), ("LTP", 2)):
        idx = np.rint(lab.mm_to_index(ph.landmarks[name])[0]).astype(int)
        window = np.asarray(lab.data)[tuple(slice(a - 2, a + 3) for a in idx)]
        assert (window == bone).any(), name
