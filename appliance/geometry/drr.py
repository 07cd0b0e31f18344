"""Digitally reconstructed radiographs: line integrals of a voxel volume over a cone-beam detector.

For every detector pixel centre of a :class:`ProjectionGeometry` the integral (value x mm) of the
volume along the segment from the source to that pixel. The integrated field is the trilinear
interpolation of the voxel-centre values inside the volume's voxel box (the index box
``[-0.5, n - 0.5]`` per axis, border values repeated in the half-voxel rim) and zero outside; see
:mod:`appliance.geometry._drr_kernels`. Any affine (oblique, anisotropic) and any geometry work, because
rays are traced in voxel-index space.

Two integrators share that field:

* default (``step_mm=None``): Joseph's method, one node per integer plane of the ray's dominant index
  axis, bilinear on the plane, trapezoidal rule between nodes and the clipped entry/exit points;
* ``step_mm`` given: equal steps of at most ``step_mm`` along the ray with full trilinear lookups.

Uses numba and never torch, so the runtime can re-project reconstructions with it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import GeometryError, InputError
from appliance.geometry import _drr_kernels as _k
from appliance.geometry.projection import ProjectionGeometry
from appliance.geometry.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["RenderStats", "line_integrals", "line_integrals_multi", "render_with_stats"]


@dataclass(frozen=True)
class RenderStats:
    """What one render did: ``nodes`` is the number of interpolation nodes evaluated (all channels
    share a node), ``rays`` the number of detector pixels."""

    rays: int
    nodes: int
    channels: int
    method: str


@contextmanager
def _numba_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` numba threads, restoring the previous count afterwards.

    numba's thread count is per calling thread, so restoring keeps other callers unaffected."""
    if threads is None:
        yield
        return
    limit = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    if threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    previous = numba.get_num_threads()
    numba.set_num_threads(min(int(threads), limit))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _as_stack(data_stack: ArrayLike | Sequence[ArrayLike]) -> NDArray[np.float32]:
    """(C, n0, n1, n2) float32 from an array of that shape, a single 3D array, or a list of 3D arrays."""
    if isinstance(data_stack, list | tuple):
        arrays = [np.asarray(a) for a in data_stack]
        if not arrays:
            raise InputError("no volumes given")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1 or arrays[0].ndim != 3:
            raise InputError(f"volumes must be 3D and share one grid, got shapes {sorted(shapes)}")
        stack = np.stack(arrays, axis=0)
    else:
        stack = np.asarray(data_stack)
        if stack.ndim == 3:
            stack = stack[None]
        if stack.ndim != 4:
            raise InputError(f"volume stack must have shape (C, n0, n1, n2), got {stack.shape}")
    if stack.dtype.kind not in "biuf":
        raise InputError(f"volume values must be numeric, got dtype {stack.dtype}")
    if min(stack.shape) < 1:
        raise InputError(f"empty volume stack {stack.shape}")
    return stack.astype(np.float32, copy=False)


def _ray_frame(affine: NDArray[np.float64], geometry: ProjectionGeometry) -> NDArray[np.float64]:
    """(8, 3): source, pixel (0, 0), per-column and per-row detector steps in index space, then in mm."""
    inv = np.linalg.inv(affine)
    lin, off = inv[:3, :3], inv[:3, 3]
    src_mm = geometry.source
    org_mm = geometry.origin
    du_mm = geometry.pitch_u_mm * geometry.u
    dv_mm = geometry.pitch_v_mm * geometry.v
    src_idx = lin @ src_mm + off
    org_idx = lin @ org_mm + off
    return np.vstack([src_idx, org_idx, lin @ du_mm, lin @ dv_mm, src_mm, org_mm, du_mm, dv_mm])


def _memory_order(affine: NDArray[np.float64], geometry: ProjectionGeometry) -> tuple[int, int, int]:
    """Axis order that puts the central ray's dominant index axis last (fastest in memory).

    Joseph's method then reads four contiguous streams per ray instead of one cache line per node,
    which on the benchmark volumes is worth far more than the one-off transposed copy."""
    src, org, du, dv = _ray_frame(affine, geometry)[:4]
    centre = org + 0.5 * (geometry.columns - 1) * du + 0.5 * (geometry.rows - 1) * dv
    d = np.abs(centre - src)
    dominant = int(np.argmax(d))
    others = [a for a in range(3) if a != dominant]
    return others[0], others[1], dominant


def render_with_stats(
    data_stack: ArrayLike | Sequence[ArrayLike],
    affine: ArrayLike,
    geometry: ProjectionGeometry,
    *,
    step_mm: float | None = None,
    threads: int | None = None,
    reorder: bool = True,
) -> tuple[NDArray[np.float32], RenderStats]:
    """:func:`line_integrals_multi` plus what it cost (used by the benchmark).

    ``reorder=False`` skips the cache-friendly transposed copy (useful when memory is tight)."""
    stack = _as_stack(data_stack)
    aff = np.asarray(affine, dtype=np.float64)
    # Volume validates the affine (shape, homogeneous row, non-singular) with the project's rules.
    Volume(data=stack[0], affine=aff)
    if not np.all(np.isfinite(aff)):
        raise GeometryError("affine has non-finite entries")
    if step_mm is not None and not (np.isfinite(step_mm) and step_mm > 0):
        raise InputError(f"step_mm must be a positive number, got {step_mm}")

    nch = stack.shape[0]
    order = _memory_order(aff, geometry) if reorder else (0, 1, 2)
    # Channel-last and axis-reordered; the affine's columns follow the axes they describe.
    interleaved = np.ascontiguousarray(np.moveaxis(stack, 0, -1).transpose(*order, 3))
    perm_aff = aff.copy()
    perm_aff[:3, :3] = aff[:3, list(order)]
    if not np.all(np.isfinite(interleaved)):
        raise InputError("volume contains NaN or infinite values")
    n0, n1, n2 = (int(s) for s in interleaved.shape[:3])
    flat = interleaved.reshape(-1)

    frame = np.ascontiguousarray(_ray_frame(perm_aff, geometry))
    out = np.empty((nch, geometry.rows, geometry.columns), dtype=np.float32)
    with _numba_threads(threads):
        if step_mm is None:
            nodes = _k.joseph_render(flat, n0, n1, n2, nch, frame, out)
            method = "joseph"
        else:
            nodes = _k.uniform_render(flat, n0, n1, n2, nch, frame, float(step_mm), out)
            method = f"uniform({step_mm:g} mm)"
    stats = RenderStats(rays=geometry.rows * geometry.columns, nodes=int(nodes), channels=nch, method=method)
    log.debug("DRR %s: %d rays, %d nodes, %d channel(s)", method, stats.rays, stats.nodes, nch)
    return out, stats


def line_integrals_multi(
    data_stack: ArrayLike | Sequence[ArrayLike],
    affine: ArrayLike,
    geometry: ProjectionGeometry,
    *,
    step_mm: float | None = None,
    threads: int | None = None,
) -> NDArray[np.float32]:
    """Line integrals of several volumes sharing one grid, in one pass: shape (C, rows, columns).

    ``data_stack`` is a (C, n0, n1, n2) array or a list of C arrays of shape (n0, n1, n2);
    ``affine`` maps voxel-centre indices to LPS mm as in :class:`Volume`."""
    out, _ = render_with_stats(data_stack, affine, geometry, step_mm=step_mm, threads=threads)
    return out


def line_integrals(
    volume: Volume,
    geometry: ProjectionGeometry,
    *,
    step_mm: float | None = None,
    threads: int | None = None,
) -> NDArray[np.float32]:
    """Integral (value x mm) of ``volume`` from the source to every pixel centre: shape (rows, columns).

    Default integrator is Joseph's method; ``step_mm`` switches to equal steps of at most that length
    with trilinear lookups. ``threads`` caps numba's worker threads for this call."""
    out, _ = render_with_stats(volume.data, volume.affine, geometry, step_mm=step_mm, threads=threads)
    return out[0]
