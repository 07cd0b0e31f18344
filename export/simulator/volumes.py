"""The volumes one case renders from: the whole leg at 1 mm, the knee at 0.5 mm, and optionally the
other leg at 2 mm (it appears beside the measured one on a bilateral long-leg film).

Volumes of different resolution are joined without seams by cross-fading: each volume's attenuation
is weighted by a smooth ramp across the shared boundary and the weights add up to one everywhere, so
the line integrals through the pieces sum to the line integral through the whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from appliance.analytics import landmarks as lm
from appliance.geometry.drr import line_integrals_multi
from appliance.geometry.projection import ProjectionGeometry
from export.simulator.assembly import Limb
from export.simulator.bones import F64
from export.simulator.spectra import hu_to_basis
from export.simulator.voxelize import Grid, Materials, VoxelResult, limb_bounds, voxelize

RAMP_MM = 6.0  # cross-fade width between volumes
KNEE_HALF = np.array([80.0, 80.0, 100.0])  # knee volume: 160 x 160 x 200 mm around the joint


@dataclass(frozen=True)
class RenderPiece:
    """Basis-material maps (3, nx, ny, nz) of one volume, already multiplied by its blend weight."""

    basis: NDArray[np.float32]
    affine: F64

    def project(self, geom: ProjectionGeometry) -> NDArray[np.float32]:
        return line_integrals_multi(self.basis, self.affine, geom)


@dataclass(frozen=True)
class CaseVolumes:
    leg: VoxelResult
    knee: VoxelResult
    pieces: tuple[RenderPiece, ...]  # leg and knee pieces (knee films)
    contralateral: RenderPiece | None  # added for the long-leg film only
    skin_lo: F64
    skin_hi: F64
    knee_skin_lo: F64
    knee_skin_hi: F64


def _ramp_inside(coord: NDArray[np.float32], lo: float, hi: float) -> NDArray[np.float32]:
    """1 well inside [lo, hi], falling linearly to 0 at the ends over RAMP_MM."""
    return np.clip(np.minimum(coord - lo, hi - coord) / RAMP_MM, 0.0, 1.0).astype(np.float32)


def _basis(vox: VoxelResult, slab: int = 32) -> NDArray[np.float32]:
    """HU -> (water, bone, metal) in slabs (hu_to_basis works in float64)."""
    hu = vox.hu.data
    out = np.empty((3, *hu.shape), np.float32)
    for k0 in range(0, hu.shape[2], slab):
        k1 = min(hu.shape[2], k0 + slab)
        out[:, :, :, k0:k1] = hu_to_basis(hu[:, :, k0:k1], vox.metal.data[:, :, k0:k1])
    return out


def knee_box(limb: Limb) -> tuple[F64, F64]:
    L = limb.landmarks()
    centre = 0.5 * (L[lm.FKC] + L[lm.TKC])
    return centre - KNEE_HALF, centre + KNEE_HALF


def _skin_box(vox: VoxelResult, grid: Grid) -> tuple[F64, F64]:
    inside = np.nonzero(np.asarray(vox.labels.data, dtype=np.uint8) > 0)
    idx_lo = np.array([a.min() for a in inside], dtype=float)
    idx_hi = np.array([a.max() for a in inside], dtype=float)
    o = np.array(grid.origin)
    return o + idx_lo * grid.spacing, o + idx_hi * grid.spacing


def build_volumes(
    limb: Limb,
    materials: Materials,
    *,
    contralateral: Limb | None = None,
    leg_spacing: float = 1.0,
    knee_spacing: float = 0.5,
) -> CaseVolumes:
    lo, hi = limb_bounds(limb)
    sign = 1.0 if limb.params.side == "left" else -1.0  # +1: this leg lies at x > 0
    # Cut at the midline (with room for the cross-fade) so the other half of the pelvis belongs to
    # the other leg's volume.
    if sign < 0:
        hi[0] = min(hi[0], RAMP_MM)
    else:
        lo[0] = max(lo[0], -RAMP_MM)
    leg_grid = Grid.covering(lo, hi, leg_spacing)
    leg = voxelize(limb, leg_grid, materials)
    kb_lo, kb_hi = knee_box(limb)
    knee_grid = Grid.covering(kb_lo, kb_hi, knee_spacing)
    knee = voxelize(limb, knee_grid, materials)

    # Blend weights: knee volume ramps in from its faces; the leg volume takes the rest. Across the
    # midline the leg fades out toward the other leg.
    kx, ky, kz = (knee_grid.axis(a) for a in range(3))
    w_knee = (
        _ramp_inside(kx, kx[0], kx[-1])[:, None, None]
        * _ramp_inside(ky, ky[0], ky[-1])[None, :, None]
        * _ramp_inside(kz, kz[0], kz[-1])[None, None, :]
    )
    knee_basis = _basis(knee) * w_knee[None]
    lx, ly, lz = (leg_grid.axis(a) for a in range(3))
    w_k_on_leg = (
        _ramp_inside(lx, float(kx[0]), float(kx[-1]))[:, None, None]
        * _ramp_inside(ly, float(ky[0]), float(ky[-1]))[None, :, None]
        * _ramp_inside(lz, float(kz[0]), float(kz[-1]))[None, None, :]
    )
    w_mid = np.clip(0.5 + sign * lx / (2.0 * RAMP_MM), 0.0, 1.0).astype(np.float32)
    leg_basis = _basis(leg)
    leg_basis *= (1.0 - w_k_on_leg)[None]
    leg_basis *= w_mid[None, :, None, None]
    pieces = (RenderPiece(leg_basis, leg_grid.affine()), RenderPiece(knee_basis, knee_grid.affine()))

    contra_piece: RenderPiece | None = None
    if contralateral is not None:
        clo, chi = limb_bounds(contralateral)
        if sign < 0:
            clo[0] = max(clo[0], -RAMP_MM)
        else:
            chi[0] = min(chi[0], RAMP_MM)
        cgrid = Grid.covering(clo, chi, 2.0)
        cvox = voxelize(contralateral, cgrid, materials)
        cx = cgrid.axis(0)
        w_c = np.clip(0.5 - sign * cx / (2.0 * RAMP_MM), 0.0, 1.0).astype(np.float32)
        cb = _basis(cvox) * w_c[None, :, None, None]
        contra_piece = RenderPiece(cb, cgrid.affine())

    s_lo, s_hi = _skin_box(leg, leg_grid)
    k_lo, k_hi = _skin_box(knee, knee_grid)
    return CaseVolumes(leg, knee, pieces, contra_piece, s_lo, s_hi, k_lo, k_hi)


def path_images(
    vols: CaseVolumes, geom: ProjectionGeometry, *, with_contralateral: bool
) -> NDArray[np.float32]:
    """Summed basis path lengths (3, rows, cols) in mm through every piece."""
    total = np.zeros((3, geom.rows, geom.columns), np.float32)
    for piece in vols.pieces:
        total += piece.project(geom)
    if with_contralateral and vols.contralateral is not None:
        total += vols.contralateral.project(geom)
    return total
