"""Numba kernels for the hot signed-distance primitives (points (N, 3) float32 -> (N,) float32).

The numpy formulations in sdf.py allocate several temporaries per primitive; at 1 mm over a whole limb
that dominated phantom build time, so the inner loops run compiled and in parallel here.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit
from numpy.typing import NDArray

F = NDArray[np.float32]


@njit(cache=True, fastmath=True)
def ellipsoid(p: F, c: F, rot: F, r: F) -> F:  # pragma: no cover - compiled
    n = p.shape[0]
    out = np.empty(n, np.float32)
    for i in range(n):
        dx = p[i, 0] - c[0]
        dy = p[i, 1] - c[1]
        dz = p[i, 2] - c[2]
        q0 = rot[0, 0] * dx + rot[0, 1] * dy + rot[0, 2] * dz
        q1 = rot[1, 0] * dx + rot[1, 1] * dy + rot[1, 2] * dz
        q2 = rot[2, 0] * dx + rot[2, 1] * dy + rot[2, 2] * dz
        k0 = math.sqrt((q0 / r[0]) ** 2 + (q1 / r[1]) ** 2 + (q2 / r[2]) ** 2)
        k1 = math.sqrt((q0 / (r[0] * r[0])) ** 2 + (q1 / (r[1] * r[1])) ** 2 + (q2 / (r[2] * r[2])) ** 2)
        if k1 < 1e-6:
            k1 = 1e-6
        out[i] = k0 * (k0 - 1.0) / k1
    return out


@njit(cache=True, fastmath=True)
def sphere(p: F, c: F, radius: float) -> F:  # pragma: no cover - compiled
    n = p.shape[0]
    out = np.empty(n, np.float32)
    for i in range(n):
        dx = p[i, 0] - c[0]
        dy = p[i, 1] - c[1]
        dz = p[i, 2] - c[2]
        out[i] = math.sqrt(dx * dx + dy * dy + dz * dz) - radius
    return out


@njit(cache=True, fastmath=True)
def round_cone(p: F, a: F, b: F, ra: float, rb: float) -> F:  # pragma: no cover - compiled
    n = p.shape[0]
    out = np.empty(n, np.float32)
    ab0 = b[0] - a[0]
    ab1 = b[1] - a[1]
    ab2 = b[2] - a[2]
    L2 = ab0 * ab0 + ab1 * ab1 + ab2 * ab2
    for i in range(n):
        d0 = p[i, 0] - a[0]
        d1 = p[i, 1] - a[1]
        d2 = p[i, 2] - a[2]
        t = (d0 * ab0 + d1 * ab1 + d2 * ab2) / L2
        if t < 0.0:
            t = 0.0
        elif t > 1.0:
            t = 1.0
        e0 = d0 - t * ab0
        e1 = d1 - t * ab1
        e2 = d2 - t * ab2
        out[i] = math.sqrt(e0 * e0 + e1 * e1 + e2 * e2) - (ra + (rb - ra) * t)
    return out


@njit(cache=True, fastmath=True)
def rounded_box(p: F, c: F, rot: F, half: F, rounding: float) -> F:  # pragma: no cover - compiled
    n = p.shape[0]
    out = np.empty(n, np.float32)
    for i in range(n):
        dx = p[i, 0] - c[0]
        dy = p[i, 1] - c[1]
        dz = p[i, 2] - c[2]
        q0 = abs(rot[0, 0] * dx + rot[0, 1] * dy + rot[0, 2] * dz) - half[0]
        q1 = abs(rot[1, 0] * dx + rot[1, 1] * dy + rot[1, 2] * dz) - half[1]
        q2 = abs(rot[2, 0] * dx + rot[2, 1] * dy + rot[2, 2] * dz) - half[2]
        o0 = max(q0, 0.0)
        o1 = max(q1, 0.0)
        o2 = max(q2, 0.0)
        inside = min(max(q0, max(q1, q2)), 0.0)
        out[i] = math.sqrt(o0 * o0 + o1 * o1 + o2 * o2) + inside - rounding
    return out


@njit(cache=True, fastmath=True)
def elliptic_cylinder(
    p: F, cx: float, cy: float, a: float, b: float, z0: float, z1: float, ca: float, sa: float
) -> F:  # pragma: no cover - compiled
    n = p.shape[0]
    out = np.empty(n, np.float32)
    for i in range(n):
        x = p[i, 0] - cx
        y = p[i, 1] - cy
        xr = ca * x + sa * y
        yr = -sa * x + ca * y
        k0 = math.sqrt((xr / a) ** 2 + (yr / b) ** 2)
        k1 = math.sqrt((xr / (a * a)) ** 2 + (yr / (b * b)) ** 2)
        if k1 < 1e-6:
            k1 = 1e-6
        d2 = k0 * (k0 - 1.0) / k1
        dz = max(z0 - p[i, 2], p[i, 2] - z1)
        o2 = max(d2, 0.0)
        oz = max(dz, 0.0)
        out[i] = math.sqrt(o2 * o2 + oz * oz) + min(max(d2, dz), 0.0)
    return out


@njit(cache=True, fastmath=True)
def rigid(p: F, R: F, t: F) -> F:  # pragma: no cover - compiled
    """``R @ p + t`` for every point (float32), without numpy's small-matmul overhead."""
    n = p.shape[0]
    out = np.empty((n, 3), np.float32)
    for i in range(n):
        x = p[i, 0]
        y = p[i, 1]
        z = p[i, 2]
        for r in range(3):
            out[i, r] = R[r, 0] * x + R[r, 1] * y + R[r, 2] * z + t[r]
    return out


@njit(cache=True, fastmath=True)
def soft_tissue_grid(
    xs: F, ys: F, zs: F, cx: F, cy: F, a: F, b: F, fat: F, z_close: float, pc: F, pr: F, blend: float
) -> tuple[F, F]:  # pragma: no cover - compiled
    """Skin signed distance and fat thickness on a grid (right-leg coordinates).

    Per slice k the leg is an ellipse (centre cx[k], cy[k], semi-axes a[k], b[k]) closed below
    ``z_close``; it joins the hip/buttock ellipsoid (centre pc, radii pr) with a smooth minimum.
    """
    nx, ny, nz = xs.shape[0], ys.shape[0], zs.shape[0]
    d = np.empty((nx, ny, nz), np.float32)
    f = np.empty((nx, ny, nz), np.float32)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                dx = xs[i] - cx[k]
                dy = ys[j] - cy[k]
                k0 = math.sqrt((dx / a[k]) ** 2 + (dy / b[k]) ** 2)
                k1 = math.sqrt((dx / (a[k] * a[k])) ** 2 + (dy / (b[k] * b[k])) ** 2)
                if k1 < 1e-6:
                    k1 = 1e-6
                leg = k0 * (k0 - 1.0) / k1
                leg = max(leg, z_close - zs[k])
                qx = (xs[i] - pc[0]) / pr[0]
                qy = (ys[j] - pc[1]) / pr[1]
                qz = (zs[k] - pc[2]) / pr[2]
                p0 = math.sqrt(qx * qx + qy * qy + qz * qz)
                p1 = math.sqrt((qx / pr[0]) ** 2 + (qy / pr[1]) ** 2 + (qz / pr[2]) ** 2)
                if p1 < 1e-6:
                    p1 = 1e-6
                pel = p0 * (p0 - 1.0) / p1
                h = min(max(0.5 + 0.5 * (pel - leg) / blend, 0.0), 1.0)
                d[i, j, k] = pel * (1.0 - h) + leg * h - blend * h * (1.0 - h)
                f[i, j, k] = fat[k]
    return d, f


@njit(cache=True, fastmath=True)
def tile_sample(q: F, tile: F, scale: float) -> F:  # pragma: no cover - compiled
    """Periodic nearest lookup of a cubic noise tile at points ``q`` (mm), ``scale`` mm per texel."""
    n = q.shape[0]
    m = tile.shape[0]
    out = np.empty(n, np.float32)
    for i in range(n):
        a = math.floor(q[i, 0] / scale) % m
        b = math.floor(q[i, 1] / scale) % m
        c = math.floor(q[i, 2] / scale) % m
        out[i] = tile[a, b, c]
    return out
