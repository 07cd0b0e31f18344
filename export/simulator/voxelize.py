"""Turns a posed limb into a CT-like volume: HU, labels and a metal map on an LPS grid.

Every voxel's value comes from signed distances evaluated at its centre, so edges get a linear
partial-volume ramp one voxel wide (no staircase) at any resolution. Work proceeds in slabs of axial
slices to bound memory, and each bone is evaluated only inside its bounding box.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.geometry.volume import Volume, axis_aligned_affine
from export.simulator import labels
from export.simulator import sdf_kernels as kern
from export.simulator.assembly import Limb, PlacedBone
from export.simulator.bones import F64
from export.simulator.soft_tissue import SoftTissueProfile, leg_profile, soft_tissue_sdf

log = logging.getLogger(__name__)

METAL_HU = 3071.0  # what a 12-bit CT stores for metal (saturated)


@dataclass(frozen=True)
class Materials:
    """Tissue HU of one case, sampled once per case.

    Cortical bone 1200-1900 HU, cancellous 150-450, yellow marrow about -50..+30, muscle 35-60, fat
    -120..-80, skin ~40 (Schneider et al., Phys Med Biol 1996;41:111; Hounsfield-scale tables in
    Bushberg, The Essential Physics of Medical Imaging, 3rd ed., ch. 10).
    """

    cortical: float
    trabecular: float
    trabecular_noise: float
    marrow: float
    muscle: float
    fat: float
    skin: float
    sclerosis: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def sample_materials(rng: np.random.Generator) -> Materials:
    return Materials(
        cortical=float(rng.uniform(1450.0, 1850.0)),
        trabecular=float(rng.uniform(180.0, 360.0)),
        trabecular_noise=float(rng.uniform(60.0, 130.0)),
        marrow=float(rng.uniform(-40.0, 20.0)),
        muscle=float(rng.uniform(38.0, 58.0)),
        fat=float(rng.uniform(-115.0, -85.0)),
        skin=float(rng.uniform(30.0, 60.0)),
        sclerosis=float(rng.uniform(350.0, 700.0)),
    )


@dataclass(frozen=True)
class Grid:
    """Axis-aligned LPS grid: voxel (i, j, k) centre = origin + spacing * (i, j, k)."""

    origin: tuple[float, float, float]
    spacing: float
    shape: tuple[int, int, int]

    @staticmethod
    def covering(lo: F64, hi: F64, spacing: float) -> Grid:
        n = np.ceil((np.asarray(hi) - np.asarray(lo)) / spacing).astype(int) + 1
        return Grid(
            (float(lo[0]), float(lo[1]), float(lo[2])), float(spacing), (int(n[0]), int(n[1]), int(n[2]))
        )

    def axis(self, a: int) -> NDArray[np.float32]:
        return (self.origin[a] + self.spacing * np.arange(self.shape[a])).astype(np.float32)

    def affine(self) -> F64:
        return axis_aligned_affine(self.origin, (self.spacing,) * 3)


@dataclass(frozen=True)
class VoxelResult:
    hu: Volume  # int16 HU
    labels: Volume  # uint8, values from labels.py
    metal: Volume  # float32 metal volume fraction (physics needs it: CT saturates on metal)


def _noise_tile(seed: int, n: int = 48) -> NDArray[np.float32]:
    """A periodic band-limited noise tile (unit variance): trabecular and muscle texture."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((n, n, n))
    f = np.fft.fftfreq(n)
    fx, fy, fz = np.meshgrid(f, f, f, indexing="ij")
    r = np.sqrt(fx**2 + fy**2 + fz**2)
    band = np.exp(-(((r - 0.18) / 0.08) ** 2))  # ~3-voxel features
    out = np.real(np.fft.ifftn(np.fft.fftn(white) * band))
    out /= out.std() + 1e-9
    return out.astype(np.float32)


def _bone_world_box(b: PlacedBone, mirrored: bool) -> tuple[F64, F64]:
    lo, hi = b.model.bbox()
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    w = b.to_world.apply(corners)
    if mirrored:
        w[:, 0] *= -1.0
    return w.min(axis=0), w.max(axis=0)


@dataclass
class _Slab:
    """Per-slab accumulators (local to one call; never shared)."""

    hu_bone: NDArray[np.float32]
    occ_total: NDArray[np.float32]
    best: NDArray[np.float32]
    label: NDArray[np.uint8]
    metal: NDArray[np.float32]
    foot_sdf: NDArray[np.float32] | None = None


def _add_bone(
    acc: _Slab,
    b: PlacedBone,
    pts: NDArray[np.float32],
    sl: tuple[slice, slice, slice],
    h: float,
    materials: Materials,
    tile: NDArray[np.float32],
    is_foot: bool,
) -> None:
    """Accumulate one bone's occupancy, HU, label and metal inside the slab sub-block ``sl``."""
    inv = b.to_world.inverse()
    q = kern.rigid(
        np.ascontiguousarray(pts[sl].reshape(-1, 3)), inv.R.astype(np.float32), inv.t.astype(np.float32)
    )
    d, cortex, marrow = b.model.shape.sdf_and_cortex(q)
    shp = pts[sl].shape[:-1]
    d, cortex, marrow = d.reshape(shp), cortex.reshape(shp), marrow.reshape(shp)
    if is_foot:
        acc.foot_sdf = np.full(acc.best.shape, np.float32(1e3))
        acc.foot_sdf[sl] = d - 9.0  # skin ~9 mm outside the foot bones
    occ = np.clip(0.5 - d / h, 0.0, 1.0)
    w_cort = np.clip((cortex + d) / 0.8 + 0.5, 0.0, 1.0)  # depth below the surface is -d
    trab = materials.trabecular + materials.trabecular_noise * kern.tile_sample(q, tile, 0.7).reshape(shp)
    core = marrow * materials.marrow + (1.0 - marrow) * trab
    val = w_cort * materials.cortical + (1.0 - w_cort) * core
    for shape, weight in b.model.dense:
        dd = shape.sdf(q).reshape(shp)
        val = val + weight * materials.sclerosis * np.clip(-dd / 3.0, 0.0, 1.0) * (1.0 - w_cort)
    acc.hu_bone[sl] += occ * val
    acc.occ_total[sl] += occ
    acc.label[sl] = np.where(occ > acc.best[sl], np.uint8(b.model.label), acc.label[sl])
    acc.best[sl] = np.maximum(acc.best[sl], occ)
    for m in b.model.metal:
        md = m.sdf(q).reshape(shp)
        acc.metal[sl] = np.maximum(acc.metal[sl], np.clip(0.5 - md / h, 0.0, 1.0))


def _soft_tissue(
    prof: SoftTissueProfile,
    xs_right: NDArray[np.float32],
    ys: NDArray[np.float32],
    zs: NDArray[np.float32],
    pts: NDArray[np.float32],
    foot_sdf: NDArray[np.float32] | None,
    h: float,
    materials: Materials,
    tile: NDArray[np.float32],
) -> tuple[NDArray[np.float32], NDArray[np.uint8]]:
    """HU and label of skin, fat and muscle (air outside) on one slab."""
    ds, fat = soft_tissue_sdf(prof, xs_right, ys, zs, foot_sdf)
    skin_occ = np.clip(0.5 - ds / h, 0.0, 1.0)
    depth = -ds
    w_skin = np.clip((1.8 - depth) / 0.8 + 0.5, 0.0, 1.0)
    w_fat = np.clip((fat - depth) / 1.5 + 0.5, 0.0, 1.0)
    tex = kern.tile_sample(np.ascontiguousarray(pts.reshape(-1, 3)), tile, 1.6).reshape(ds.shape)
    # Intermuscular fat septa: thin fatty sheets where the slow texture crosses zero.
    septa = np.exp(-((tex / 0.12) ** 2)) * 0.6
    muscle = materials.muscle + 6.0 * tex
    inner = (1.0 - septa) * muscle + septa * materials.fat
    soft = w_skin * materials.skin + (1.0 - w_skin) * (
        w_fat * (materials.fat + 8.0 * tex) + (1 - w_fat) * inner
    )
    value = (skin_occ * soft + (1.0 - skin_occ) * -1000.0).astype(np.float32)
    label = np.where(skin_occ >= 0.5, np.uint8(labels.SOFT_TISSUE), np.uint8(labels.AIR))
    return value, label


def voxelize(
    limb: Limb,
    grid: Grid,
    materials: Materials,
    *,
    soft_tissue: bool = True,
    slab: int = 24,
) -> VoxelResult:
    """Evaluate the limb on ``grid``. Deterministic for a given limb, grid and materials."""
    p = limb.params
    nz = grid.shape[2]
    h = grid.spacing
    hu = np.full(grid.shape, -1000, dtype=np.int16)
    lab = np.zeros(grid.shape, dtype=np.uint8)
    metal = np.zeros(grid.shape, dtype=np.float32)
    tile = _noise_tile(p.texture_seed)
    tile2 = _noise_tile(p.texture_seed + 1)
    xs, ys, zs = grid.axis(0), grid.axis(1), grid.axis(2)
    prof: SoftTissueProfile = leg_profile(limb)
    boxes = [_bone_world_box(b, limb.mirrored) for b in limb.bones]
    foot = limb.bone("foot")
    sign = np.float32(-1.0 if limb.mirrored else 1.0)

    for k0 in range(0, nz, slab):
        k1 = min(nz, k0 + slab)
        X, Y, Z = np.meshgrid(xs, ys, zs[k0:k1], indexing="ij")
        pts = np.stack([X * sign, Y, Z], axis=-1)  # right-leg space
        acc = _Slab(
            hu_bone=np.zeros(X.shape, np.float32),
            occ_total=np.zeros(X.shape, np.float32),
            best=np.zeros(X.shape, np.float32),
            label=np.zeros(X.shape, np.uint8),
            metal=np.zeros(X.shape, np.float32),
        )
        for b, (blo, bhi) in zip(limb.bones, boxes, strict=True):
            sl = _overlap(blo - 3 * h, bhi + 3 * h, xs, ys, zs[k0:k1])
            if sl is not None:
                _add_bone(acc, b, pts, sl, h, materials, tile, b is foot)
        # Bones that touch (fibular head on the tibia) overlap by a voxel: average, never add, their HU.
        hu_bone = np.where(acc.occ_total > 1.0, acc.hu_bone / np.maximum(acc.occ_total, 1.0), acc.hu_bone)
        occ_total = np.minimum(acc.occ_total, 1.0)
        if soft_tissue:
            soft_val, lab_soft = _soft_tissue(
                prof, xs * sign, ys, zs[k0:k1], pts, acc.foot_sdf, h, materials, tile2
            )
        else:
            soft_val = np.full(X.shape, -1000.0, np.float32)
            lab_soft = np.zeros(X.shape, np.uint8)
        met = acc.metal
        value = soft_val * (1.0 - occ_total) + hu_bone
        value = value * (1.0 - met) + METAL_HU * met
        hu[:, :, k0:k1] = np.clip(np.rint(value), -1024, 3071).astype(np.int16)
        bone_lab = np.where(acc.best >= 0.5, acc.label, lab_soft)
        lab[:, :, k0:k1] = np.where(met >= 0.5, np.uint8(labels.METAL), bone_lab)
        metal[:, :, k0:k1] = met
    aff = grid.affine()
    log.debug("voxelised %s voxels at %.2f mm", grid.shape, h)
    return VoxelResult(Volume(hu, aff), Volume(lab, aff), Volume(metal, aff))


def _overlap(
    lo: F64, hi: F64, xs: NDArray[np.float32], ys: NDArray[np.float32], zs: NDArray[np.float32]
) -> tuple[slice, slice, slice] | None:
    out = []
    for a, (lo_a, hi_a) in enumerate(zip(lo, hi, strict=True)):
        ax = (xs, ys, zs)[a]
        i0 = int(np.searchsorted(ax, lo_a, side="left"))
        i1 = int(np.searchsorted(ax, hi_a, side="right"))
        if i1 <= i0:
            return None
        out.append(slice(i0, i1))
    return out[0], out[1], out[2]


def limb_bounds(limb: Limb, *, soft_tissue: bool = True, margin: float = 12.0) -> tuple[F64, F64]:
    """LPS box enclosing the limb (bones, skin) plus a margin."""
    los, his = [], []
    for b in limb.bones:
        lo, hi = _bone_world_box(b, limb.mirrored)
        los.append(lo)
        his.append(hi)
    lo = np.min(los, axis=0)
    hi = np.max(his, axis=0)
    if soft_tissue:
        prof = leg_profile(limb)
        cx = prof.cx * (-1.0 if limb.mirrored else 1.0)
        lo = np.minimum(lo, [float(np.min(cx - prof.a)), float(np.min(prof.cy - prof.b)), lo[2]])
        hi = np.maximum(hi, [float(np.max(cx + prof.a)), float(np.max(prof.cy + prof.b)), float(prof.z[-1])])
    return lo - margin, hi + margin
