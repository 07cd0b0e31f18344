"""Numba kernels behind :mod:`appliance.geometry.drr`.

Everything here works in voxel-index space of one grid. The continuous field that is integrated is
defined once, for both kernels:

* the volume occupies the union of its voxels, the index box ``[-0.5, n - 0.5]`` on every axis;
* inside that box the value is the trilinear interpolation of the voxel-centre values, with indices
  clamped to ``[0, n - 1]`` (so the half-voxel rim repeats the border value, which makes a constant
  volume integrate to exactly the path length through its voxel box);
* outside the box the value is zero.

Data arrive flattened, channel-last: ``flat[((i * n1 + j) * n2 + k) * C + c]``, so the several
channels a simulator asks for share every address computation and every cache line.

Ray geometry arrives as one (8, 3) ``frame``: source, pixel (0, 0), per-column step and per-row step
in index space, then the same four in mm. A ray runs from the source (``t = 0``) to a detector pixel
centre (``t = 1``); its index-space point is ``src + t * d``. Integrals are computed in ``t`` and
scaled by the ray's length in mm.

The marching helpers and both renderers stay in this one file on purpose: numba's on-disk cache
(``cache=True``) is keyed to the source file of the function it compiled, so a renderer that inlined a
helper from another module would keep running the stale, cached helper after that module changed.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange
from numpy.typing import NDArray

# Rays whose index-space direction component is below this are treated as parallel to that slab.
_PARALLEL_EPS = 1e-12


@njit(cache=True, inline="always")
def _clip_to_box(
    sx: float, sy: float, sz: float, dx: float, dy: float, dz: float, n0: int, n1: int, n2: int
) -> tuple[float, float]:
    """Slab method: the ``t`` interval (within [0, 1]) where the ray is inside the voxel box."""
    t0 = 0.0
    t1 = 1.0
    for a in range(3):
        if a == 0:
            s, d, hi = sx, dx, n0 - 0.5
        elif a == 1:
            s, d, hi = sy, dy, n1 - 0.5
        else:
            s, d, hi = sz, dz, n2 - 0.5
        if abs(d) < _PARALLEL_EPS:
            if s < -0.5 or s > hi:
                return 1.0, 0.0
        else:
            ta = (-0.5 - s) / d
            tb = (hi - s) / d
            if ta > tb:
                ta, tb = tb, ta
            t0 = max(t0, ta)
            t1 = min(t1, tb)
    return t0, t1


@njit(cache=True, inline="always")
def _cell(p: float, n: int) -> tuple[int, float]:
    """Lower neighbour index and fraction for a clamped linear interpolation along one axis."""
    p = min(max(p, 0.0), n - 1.0)
    f = min(int(p), max(n - 2, 0))
    return f, p - f


@njit(cache=True)
def _trilinear_into(
    flat: NDArray[np.float32],
    n0: int,
    n1: int,
    n2: int,
    nch: int,
    x: float,
    y: float,
    z: float,
    out: NDArray[np.float64],
) -> None:
    """Clamped trilinear value of every channel at index point (x, y, z), written into ``out``."""
    i, fx = _cell(x, n0)
    j, fy = _cell(y, n1)
    k, fz = _cell(z, n2)
    s0 = n1 * n2 * nch if n0 > 1 else 0
    s1 = n2 * nch if n1 > 1 else 0
    s2 = nch if n2 > 1 else 0
    base = ((i * n1 + j) * n2 + k) * nch
    w000 = (1 - fx) * (1 - fy) * (1 - fz)
    w100 = fx * (1 - fy) * (1 - fz)
    w010 = (1 - fx) * fy * (1 - fz)
    w110 = fx * fy * (1 - fz)
    w001 = (1 - fx) * (1 - fy) * fz
    w101 = fx * (1 - fy) * fz
    w011 = (1 - fx) * fy * fz
    w111 = fx * fy * fz
    for c in range(nch):
        b = base + c
        out[c] = (
            w000 * flat[b]
            + w100 * flat[b + s0]
            + w010 * flat[b + s1]
            + w110 * flat[b + s0 + s1]
            + w001 * flat[b + s2]
            + w101 * flat[b + s0 + s2]
            + w011 * flat[b + s1 + s2]
            + w111 * flat[b + s0 + s1 + s2]
        )


@njit(cache=True, inline="always")
def _trapezoid(
    t0: float,
    t1: float,
    t_first: float,
    t_last: float,
    dt: float,
    f_in: float,
    f_out: float,
    first: float,
    last: float,
    total: float,
) -> float:
    """Trapezoidal rule over entry, the plane nodes (sum ``total``, spacing ``dt``) and exit, in t."""
    return (
        0.5 * (t_first - t0) * (f_in + first)
        + dt * (total - 0.5 * (first + last))
        + 0.5 * (t1 - t_last) * (last + f_out)
    )


@njit(cache=True, inline="always")
def _march_clamped(
    flat: NDArray[np.float32],
    q0: int,
    st_a: int,
    st_b: int,
    st_e: int,
    st_b1: int,
    st_e1: int,
    pb0: float,
    pe0: float,
    step_b: float,
    step_e: float,
    nb: int,
    ne: int,
    n_from: int,
    n_to: int,
) -> float:
    """Sum of bilinear plane values for nodes ``n_from <= n < n_to`` of one channel.

    Node n sits on plane ``q0 + n * st_a`` (flat offset, channel included) at in-plane position
    ``(pb0 + n * step_b, pe0 + n * step_e)``; ``st_b1`` / ``st_e1`` are the neighbour offsets (0 for
    an axis of length 1). Positions are recomputed from n, not accumulated, so long rays do not drift.
    """
    b_hi = nb - 1.0
    e_hi = ne - 1.0
    ib_max = max(nb - 2, 0)
    ie_max = max(ne - 2, 0)
    total = 0.0
    for n in range(n_from, n_to):
        pb = min(max(pb0 + n * step_b, 0.0), b_hi)
        pe = min(max(pe0 + n * step_e, 0.0), e_hi)
        ib = min(int(pb), ib_max)
        ie = min(int(pe), ie_max)
        fb = pb - ib
        fe = pe - ie
        q = q0 + n * st_a + ib * st_b + ie * st_e
        lo = flat[q] + fb * (flat[q + st_b1] - flat[q])
        hi = flat[q + st_e1] + fb * (flat[q + st_e1 + st_b1] - flat[q + st_e1])
        total += lo + fe * (hi - lo)
    return total


@njit(cache=True, inline="always")
def _inside_range(p0: float, step: float, n_cells: int, count: int) -> tuple[int, int]:
    """A range of nodes n (a subset of [0, count)) with ``0 <= p0 + n * step < n_cells - 1``.

    There the clamps are no-ops and truncation is floor, so the unclamped loop is exact. The range
    is shrunk by one node at each end so rounding in the division can only make it smaller."""
    top = n_cells - 1.0
    if n_cells < 2:
        return 0, 0
    if step == 0.0:
        return (0, count) if 0.0 <= p0 < top else (0, 0)
    lo_t = (0.0 - p0) / step
    hi_t = (top - p0) / step
    if lo_t > hi_t:
        lo_t, hi_t = hi_t, lo_t
    # Clamp before converting: a near-zero step gives huge quotients that do not fit an int.
    lo_t = min(max(lo_t, -2.0), count + 2.0)
    hi_t = min(max(hi_t, -2.0), count + 2.0)
    lo = max(math.ceil(lo_t) + 1, 0)
    hi = min(math.floor(hi_t), count)
    return lo, max(lo, hi)


@njit(cache=True, inline="always")
def _march_fast(
    flat: NDArray[np.float32],
    q0: int,
    st_a: int,
    st_b: int,
    st_e: int,
    pb0: float,
    pe0: float,
    step_b: float,
    step_e: float,
    n_from: int,
    n_to: int,
) -> float:
    """:func:`_march_clamped` for nodes known to lie inside the grid (see :func:`_inside_range`)."""
    total = 0.0
    for n in range(n_from, n_to):
        pb = pb0 + n * step_b
        pe = pe0 + n * step_e
        ib = int(pb)
        ie = int(pe)
        fb = pb - ib
        fe = pe - ie
        q = q0 + n * st_a + ib * st_b + ie * st_e
        lo = flat[q] + fb * (flat[q + st_b] - flat[q])
        hi = flat[q + st_e] + fb * (flat[q + st_e + st_b] - flat[q + st_e])
        total += lo + fe * (hi - lo)
    return total


@njit(cache=True, inline="always")
def _march_pair_fast(
    flat: NDArray[np.float32],
    q0: int,
    st_a: int,
    st_b: int,
    st_e: int,
    pb0: float,
    pe0: float,
    step_b: float,
    step_e: float,
    n_from: int,
    n_to: int,
) -> tuple[float, float]:
    """:func:`_march_fast` for channels at ``q0`` and ``q0 + 1`` at once: they share every weight and,
    being interleaved, every cache line (the simulator's water + bone pair)."""
    total0 = 0.0
    total1 = 0.0
    for n in range(n_from, n_to):
        pb = pb0 + n * step_b
        pe = pe0 + n * step_e
        ib = int(pb)
        ie = int(pe)
        fb = pb - ib
        fe = pe - ie
        w00 = (1.0 - fb) * (1.0 - fe)
        w10 = fb * (1.0 - fe)
        w01 = (1.0 - fb) * fe
        w11 = fb * fe
        q = q0 + n * st_a + ib * st_b + ie * st_e
        q10 = q + st_b
        q01 = q + st_e
        q11 = q01 + st_b
        total0 += w00 * flat[q] + w10 * flat[q10] + w01 * flat[q01] + w11 * flat[q11]
        total1 += w00 * flat[q + 1] + w10 * flat[q10 + 1] + w01 * flat[q01 + 1] + w11 * flat[q11 + 1]
    return total0, total1


@njit(cache=True)
def _march(
    flat: NDArray[np.float32],
    q0: int,
    st_a: int,
    st_b: int,
    st_e: int,
    st_b1: int,
    st_e1: int,
    pb0: float,
    pe0: float,
    step_b: float,
    step_e: float,
    nb: int,
    ne: int,
    n_from: int,
    n_to: int,
) -> float:
    """Sum over nodes [n_from, n_to): unclamped where the ray is safely inside, clamped near edges."""
    lo_b, hi_b = _inside_range(pb0, step_b, nb, n_to)
    lo_e, hi_e = _inside_range(pe0, step_e, ne, n_to)
    lo = min(max(lo_b, lo_e, n_from), n_to)
    hi = max(min(hi_b, hi_e, n_to), lo)
    head = _march_clamped(
        flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, n_from, lo
    )
    body = _march_fast(flat, q0, st_a, st_b, st_e, pb0, pe0, step_b, step_e, lo, hi)
    tail = _march_clamped(
        flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, hi, n_to
    )
    return head + body + tail


@njit(cache=True)
def _march_pair(
    flat: NDArray[np.float32],
    q0: int,
    st_a: int,
    st_b: int,
    st_e: int,
    st_b1: int,
    st_e1: int,
    pb0: float,
    pe0: float,
    step_b: float,
    step_e: float,
    nb: int,
    ne: int,
    n_from: int,
    n_to: int,
) -> tuple[float, float]:
    """:func:`_march` for two interleaved channels."""
    lo_b, hi_b = _inside_range(pb0, step_b, nb, n_to)
    lo_e, hi_e = _inside_range(pe0, step_e, ne, n_to)
    lo = min(max(lo_b, lo_e, n_from), n_to)
    hi = max(min(hi_b, hi_e, n_to), lo)
    # The clamped head and tail are a few nodes at most: one channel at a time is fine there.
    a0 = _march_clamped(
        flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, n_from, lo
    )
    a1 = _march_clamped(
        flat, q0 + 1, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, n_from, lo
    )
    b0, b1 = _march_pair_fast(flat, q0, st_a, st_b, st_e, pb0, pe0, step_b, step_e, lo, hi)
    c0 = _march_clamped(flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, hi, n_to)
    c1 = _march_clamped(
        flat, q0 + 1, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, hi, n_to
    )
    return a0 + b0 + c0, a1 + b1 + c1


@njit(parallel=True, fastmath=False, cache=True)
def joseph_render(
    flat: NDArray[np.float32],
    n0: int,
    n1: int,
    n2: int,
    nch: int,
    frame: NDArray[np.float64],
    out: NDArray[np.float32],
) -> int:
    """Joseph's method: one node per integer plane of the ray's dominant index axis.

    On such a plane trilinear interpolation reduces to bilinear in the other two axes (4 loads, not
    8). The nodes, plus the clipped entry and exit points, are combined with the trapezoidal rule, so
    the result is exact whenever the field is linear along the ray between nodes and in particular
    for a constant volume. Returns the number of interpolation nodes evaluated (for benchmarks).
    """
    rows = out.shape[1]
    cols = out.shape[2]
    src_idx, org_idx, du_idx, dv_idx = frame[0], frame[1], frame[2], frame[3]
    src_mm, org_mm, du_mm, dv_mm = frame[4], frame[5], frame[6], frame[7]
    dims = np.array([n0, n1, n2])
    strides = np.array([n1 * n2 * nch, n2 * nch, nch])
    counts = np.zeros(rows, dtype=np.int64)
    for r in prange(rows):
        f_in = np.empty(nch)
        f_out = np.empty(nch)
        nodes = 0
        for c in range(cols):
            px = org_idx[0] + c * du_idx[0] + r * dv_idx[0]
            py = org_idx[1] + c * du_idx[1] + r * dv_idx[1]
            pz = org_idx[2] + c * du_idx[2] + r * dv_idx[2]
            dx = px - src_idx[0]
            dy = py - src_idx[1]
            dz = pz - src_idx[2]
            t0, t1 = _clip_to_box(src_idx[0], src_idx[1], src_idx[2], dx, dy, dz, n0, n1, n2)
            if not t1 > t0:
                for ch in range(nch):
                    out[ch, r, c] = 0.0
                continue
            # Ray length in mm: index-space t maps linearly onto the mm segment source -> pixel.
            ex = org_mm[0] + c * du_mm[0] + r * dv_mm[0] - src_mm[0]
            ey = org_mm[1] + c * du_mm[1] + r * dv_mm[1] - src_mm[1]
            ez = org_mm[2] + c * du_mm[2] + r * dv_mm[2] - src_mm[2]
            length_mm = math.sqrt(ex * ex + ey * ey + ez * ez)

            sx, sy, sz = src_idx[0], src_idx[1], src_idx[2]
            _trilinear_into(flat, n0, n1, n2, nch, sx + t0 * dx, sy + t0 * dy, sz + t0 * dz, f_in)
            _trilinear_into(flat, n0, n1, n2, nch, sx + t1 * dx, sy + t1 * dy, sz + t1 * dz, f_out)
            nodes += 2

            # Dominant axis a; b and e are the two interpolated axes.
            ax, ay, az = abs(dx), abs(dy), abs(dz)
            if ax >= ay and ax >= az:
                a, b, e = 0, 1, 2
                sa, sb, se, da, db, de = sx, sy, sz, dx, dy, dz
            elif ay >= az:
                a, b, e = 1, 0, 2
                sa, sb, se, da, db, de = sy, sx, sz, dy, dx, dz
            else:
                a, b, e = 2, 0, 1
                sa, sb, se, da, db, de = sz, sx, sy, dz, dx, dy
            na, nb, ne = dims[a], dims[b], dims[e]

            a0 = sa + t0 * da
            a1 = sa + t1 * da
            if da > 0:
                m_first = max(math.ceil(a0), 0)
                m_last = min(math.floor(a1), na - 1)
                count = m_last - m_first + 1
                step = 1
            else:
                m_first = min(math.floor(a0), na - 1)
                m_last = max(math.ceil(a1), 0)
                count = m_first - m_last + 1
                step = -1
            if count <= 0:
                for ch in range(nch):
                    out[ch, r, c] = 0.5 * (t1 - t0) * (f_in[ch] + f_out[ch]) * length_mm
                continue

            dt = 1.0 / abs(da)
            t_first = (m_first - sa) / da
            t_last = t_first + (count - 1) * dt
            st_a = step * strides[a]
            st_b, st_e = strides[b], strides[e]
            st_b1 = st_b if nb > 1 else 0
            st_e1 = st_e if ne > 1 else 0
            pb0 = sb + t_first * db
            pe0 = se + t_first * de
            step_b = dt * db
            step_e = dt * de
            nodes += count
            q_first = m_first * strides[a]
            ch = 0
            while ch < nch:
                q0 = q_first + ch
                if ch + 1 < nch:
                    tot0, tot1 = _march_pair(
                        flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, 0, count
                    )
                    fst0, fst1 = _march_pair(
                        flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, 0, 1
                    )
                    lst0, lst1 = _march_pair(
                        flat,
                        q0,
                        st_a,
                        st_b,
                        st_e,
                        st_b1,
                        st_e1,
                        pb0,
                        pe0,
                        step_b,
                        step_e,
                        nb,
                        ne,
                        count - 1,
                        count,
                    )
                    out[ch, r, c] = (
                        _trapezoid(t0, t1, t_first, t_last, dt, f_in[ch], f_out[ch], fst0, lst0, tot0)
                        * length_mm
                    )
                    out[ch + 1, r, c] = (
                        _trapezoid(t0, t1, t_first, t_last, dt, f_in[ch + 1], f_out[ch + 1], fst1, lst1, tot1)
                        * length_mm
                    )
                    ch += 2
                else:
                    tot0 = _march(
                        flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, 0, count
                    )
                    fst0 = _march(
                        flat, q0, st_a, st_b, st_e, st_b1, st_e1, pb0, pe0, step_b, step_e, nb, ne, 0, 1
                    )
                    lst0 = _march(
                        flat,
                        q0,
                        st_a,
                        st_b,
                        st_e,
                        st_b1,
                        st_e1,
                        pb0,
                        pe0,
                        step_b,
                        step_e,
                        nb,
                        ne,
                        count - 1,
                        count,
                    )
                    out[ch, r, c] = (
                        _trapezoid(t0, t1, t_first, t_last, dt, f_in[ch], f_out[ch], fst0, lst0, tot0)
                        * length_mm
                    )
                    ch += 1
        counts[r] = nodes
    return int(counts.sum())


@njit(parallel=True, fastmath=False, cache=True)
def uniform_render(
    flat: NDArray[np.float32],
    n0: int,
    n1: int,
    n2: int,
    nch: int,
    frame: NDArray[np.float64],
    step_mm: float,
    out: NDArray[np.float32],
) -> int:
    """Trapezoidal rule with equal steps of at most ``step_mm`` and full trilinear interpolation.

    Slower than :func:`joseph_render` (8 loads per node, usually more nodes) but its error is set by
    ``step_mm`` alone, which makes it an independent check on Joseph's method. Returns the number of
    interpolation nodes evaluated.
    """
    rows = out.shape[1]
    cols = out.shape[2]
    src_idx, org_idx, du_idx, dv_idx = frame[0], frame[1], frame[2], frame[3]
    src_mm, org_mm, du_mm, dv_mm = frame[4], frame[5], frame[6], frame[7]
    counts = np.zeros(rows, dtype=np.int64)
    for r in prange(rows):
        acc = np.empty(nch)
        val = np.empty(nch)
        nodes = 0
        for c in range(cols):
            px = org_idx[0] + c * du_idx[0] + r * dv_idx[0]
            py = org_idx[1] + c * du_idx[1] + r * dv_idx[1]
            pz = org_idx[2] + c * du_idx[2] + r * dv_idx[2]
            dx = px - src_idx[0]
            dy = py - src_idx[1]
            dz = pz - src_idx[2]
            t0, t1 = _clip_to_box(src_idx[0], src_idx[1], src_idx[2], dx, dy, dz, n0, n1, n2)
            if not t1 > t0:
                for ch in range(nch):
                    out[ch, r, c] = 0.0
                continue
            ex = org_mm[0] + c * du_mm[0] + r * dv_mm[0] - src_mm[0]
            ey = org_mm[1] + c * du_mm[1] + r * dv_mm[1] - src_mm[1]
            ez = org_mm[2] + c * du_mm[2] + r * dv_mm[2] - src_mm[2]
            length_mm = math.sqrt(ex * ex + ey * ey + ez * ez)
            seg_mm = (t1 - t0) * length_mm
            steps = max(1, math.ceil(seg_mm / step_mm))
            dt = (t1 - t0) / steps
            for ch in range(nch):
                acc[ch] = 0.0
            for n in range(steps + 1):
                t = t0 + n * dt
                _trilinear_into(
                    flat, n0, n1, n2, nch, src_idx[0] + t * dx, src_idx[1] + t * dy, src_idx[2] + t * dz, val
                )
                w = 0.5 if (n == 0 or n == steps) else 1.0
                for ch in range(nch):
                    acc[ch] += w * val[ch]
            nodes += steps + 1
            for ch in range(nch):
                out[ch, r, c] = acc[ch] * dt * length_mm
        counts[r] = nodes
    return int(counts.sum())
