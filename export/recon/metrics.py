"""Reconstruction accuracy measures (pure numpy / scipy): PSNR, 3D SSIM, Dice, ASSD, HD95, re-projection NCC.

Conventions (docs/recon.md):
* HU are clipped to [HU_LO, HU_HI] = [-1000, 2000] before PSNR and SSIM; PSNR uses that 3000 HU range as
  the peak; SSIM is the 3D SSIM of the clipped HU scaled to [0, 1] with a Gaussian window (sigma 1.5 voxels),
  K1 = 0.01, K2 = 0.03, averaged over the region.
* ASSD: mean of the distances from every surface voxel of one mask to the other surface, both directions
  pooled; HD95: the larger of the two directed 95th percentiles (mm, voxel spacing taken into account).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

HU_LO, HU_HI = -1000.0, 2000.0


def psnr(pred: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None) -> float:
    p = np.clip(np.asarray(pred, np.float64), HU_LO, HU_HI)
    t = np.clip(np.asarray(truth, np.float64), HU_LO, HU_HI)
    m = np.ones(p.shape, bool) if mask is None else np.asarray(mask, bool)
    mse = float(np.mean((p[m] - t[m]) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10((HU_HI - HU_LO) ** 2 / mse)


def ssim3d(pred: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None, sigma: float = 1.5) -> float:
    x = (np.clip(np.asarray(pred, np.float64), HU_LO, HU_HI) - HU_LO) / (HU_HI - HU_LO)
    y = (np.clip(np.asarray(truth, np.float64), HU_LO, HU_HI) - HU_LO) / (HU_HI - HU_LO)
    c1, c2 = 0.01**2, 0.03**2

    def g(a: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(ndimage.gaussian_filter(a, sigma, truncate=3.5))

    mx, my = g(x), g(y)
    sxx = g(x * x) - mx * mx
    syy = g(y * y) - my * my
    sxy = g(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    m = np.ones(s.shape, bool) if mask is None else np.asarray(mask, bool)
    return float(s[m].mean())


def dice(a: ArrayLike, b: ArrayLike) -> float:
    x, y = np.asarray(a, bool), np.asarray(b, bool)
    s = int(x.sum()) + int(y.sum())
    return 1.0 if s == 0 else 2.0 * float((x & y).sum()) / s


def _surface(m: NDArray[np.bool_]) -> NDArray[np.bool_]:
    return m & ~ndimage.binary_erosion(m, border_value=0)


def surface_distances(
    a: ArrayLike, b: ArrayLike, spacing: tuple[float, float, float]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Distances (mm) from the surface voxels of ``a`` to the surface of ``b`` and back."""
    x, y = np.asarray(a, bool), np.asarray(b, bool)
    sx, sy = _surface(x), _surface(y)
    if not sx.any() or not sy.any():
        return np.array([np.inf]), np.array([np.inf])
    dy = ndimage.distance_transform_edt(~sy, sampling=spacing)
    dx = ndimage.distance_transform_edt(~sx, sampling=spacing)
    return np.asarray(dy[sx], np.float64), np.asarray(dx[sy], np.float64)


def assd_hd95(a: ArrayLike, b: ArrayLike, spacing: tuple[float, float, float]) -> tuple[float, float]:
    d1, d2 = surface_distances(a, b, spacing)
    if not (np.isfinite(d1).all() and np.isfinite(d2).all()):
        return math.inf, math.inf
    assd = float(np.concatenate([d1, d2]).mean())
    hd95 = float(max(np.percentile(d1, 95), np.percentile(d2, 95)))
    return assd, hd95


def ncc(a: ArrayLike, b: ArrayLike, mask: ArrayLike | None = None) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mask is not None:
        m = np.asarray(mask, bool)
        x, y = x[m], y[m]
    x = x - x.mean()
    y = y - y.mean()
    d = float(np.linalg.norm(x) * np.linalg.norm(y))
    return 0.0 if d == 0 else float((x * y).sum() / d)
