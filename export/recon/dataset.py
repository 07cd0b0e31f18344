"""Reconstruction samples in memory and the point / ray / block sampling of one training step."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.errors import InputError
from appliance.recon.infer import CUBE_VOXELS
from appliance.recon.orientation import plateau_axial_deg

log = logging.getLogger(__name__)

_NAME = re.compile(r"recon_(\d+)_(\d+)\.npz$")
BLOCK = 16


@dataclass(frozen=True, eq=False)
class ReconSample:
    seed: int
    pose: int
    hu: NDArray[np.int16]  # (N, N, N)
    labels: NDArray[np.uint8]
    films: NDArray[np.float32]  # (2, 256, 256)
    mats: NDArray[np.float32]  # (2, 3, 4)
    affine: NDArray[np.float64]
    surface: NDArray[np.int64]  # flat indices of voxels on a label or strong HU edge
    axial_deg: float = 0.0  # the knee's axial rotation in the cube (appliance.recon.orientation)
    # flat indices on the femur's and tibia's own boundaries (both sides); see bone_edge_voxels
    bone_edges: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))


def _two_sided_edges(
    shape: tuple[int, ...], differs: Callable[[tuple[slice, ...], tuple[slice, ...]], NDArray[np.bool_]]
) -> NDArray[np.int64]:
    """Flat indices of the voxels on either side of every 6-neighbour pair that ``differs(a, b)`` marks
    (``a`` / ``b``: the slices of the later / earlier voxel of the pairs along one axis)."""
    edge = np.zeros(shape, bool)
    for ax in range(len(shape)):
        a = [slice(None)] * len(shape)
        b = [slice(None)] * len(shape)
        a[ax] = slice(1, None)
        b[ax] = slice(None, -1)
        diff = differs(tuple(a), tuple(b))
        edge[tuple(a)] |= diff
        edge[tuple(b)] |= diff
    return np.flatnonzero(edge)


def surface_voxels(labels: NDArray[np.uint8], hu: NDArray[np.int16]) -> NDArray[np.int64]:
    """Voxels whose label differs from a 6-neighbour, or whose HU jumps by > 300 (skin, cortex)."""
    h = hu.astype(np.int32)
    return _two_sided_edges(labels.shape, lambda a, b: (labels[a] != labels[b]) | (np.abs(h[a] - h[b]) > 300))


def bone_edge_voxels(labels: NDArray[np.uint8], classes: tuple[int, ...] = (1, 2)) -> NDArray[np.int64]:
    """Voxels on either side of the boundary of ``classes`` (default femur and tibia). ``surface_voxels``
    is mostly skin and intra-bone HU edges (about a quarter of it lies on label boundaries, a twentieth
    on the femur's), so the Dice-deciding boundaries of the two large bones get their own pool."""
    inside = np.isin(labels, classes)
    return _two_sided_edges(labels.shape, lambda a, b: inside[a] != inside[b])


def sample_seed(path: Path) -> tuple[int, int]:
    m = _NAME.search(path.name)
    if m is None:
        raise InputError(f"not a reconstruction sample: {path.name}", reason="bad_sample")
    return int(m.group(1)), int(m.group(2))


def load_samples(
    folder: Path,
    seed_range: tuple[int, int],
    max_samples: int | None = None,
    skip: frozenset[tuple[int, int]] = frozenset(),
) -> list[ReconSample]:
    """All samples of ``folder`` whose seed lies in ``seed_range`` (inclusive; others are refused),
    except the (seed, pose) pairs in ``skip``."""
    paths = sorted(folder.glob("recon_*_*.npz"), key=sample_seed)
    out: list[ReconSample] = []
    for p in paths:
        if sample_seed(p) in skip:
            continue
        seed, pose = sample_seed(p)
        if not seed_range[0] <= seed <= seed_range[1]:
            raise InputError(f"{p.name}: seed {seed} outside {seed_range}", reason="seed_range")
        with np.load(p) as d:
            hu = d["hu"].astype(np.int16)
            lab = d["labels"].astype(np.uint8)
            if hu.shape != (CUBE_VOXELS,) * 3:
                raise InputError(f"{p.name}: cube {hu.shape}", reason="bad_sample")
            out.append(
                ReconSample(
                    seed,
                    pose,
                    hu,
                    lab,
                    d["films"].astype(np.float32),
                    d["mats"].astype(np.float32),
                    d["affine"].astype(np.float64),
                    surface_voxels(lab, hu),
                    plateau_axial_deg(lab),
                    bone_edge_voxels(lab),
                )
            )
        if max_samples is not None and len(out) >= max_samples:
            break
    log.info("loaded %d samples from %s", len(out), folder)
    return out


def index_to_norm(flat: NDArray[np.int64]) -> NDArray[np.float32]:
    n = CUBE_VOXELS
    ijk = np.stack(np.unravel_index(flat, (n, n, n)), axis=-1).astype(np.float32)
    return ijk * (2.0 / (n - 1)) - 1.0


def sample_points(
    s: ReconSample, rng: np.random.Generator, n_uniform: int, n_surface: int
) -> NDArray[np.int64]:
    """Flat voxel indices: uniform over the cube plus near-surface (surface voxel +- 1 voxel)."""
    n = CUBE_VOXELS
    uni = rng.integers(0, n**3, n_uniform)
    sur = (
        s.surface[rng.integers(0, len(s.surface), n_surface)]
        if len(s.surface)
        else rng.integers(0, n**3, n_surface)
    )
    ijk = np.stack(np.unravel_index(sur, (n, n, n)), axis=-1) + rng.integers(-1, 2, (n_surface, 3))
    ijk = np.clip(ijk, 0, n - 1)
    return np.concatenate([uni, np.ravel_multi_index(ijk.T, (n, n, n))])


def small_bone_points(s: ReconSample, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    """Flat indices near the fibula and patella surfaces (surface voxel of label 3 or 4 +- 1 voxel), half
    each when both exist: these small bones are otherwise rare among the sampled points."""
    m = CUBE_VOXELS
    lab = s.labels.reshape(-1)[s.surface]
    pools = [s.surface[lab == c] for c in (3, 4)]
    pools = [p for p in pools if len(p)] or [s.surface]
    if not len(pools[0]):
        return rng.integers(0, m**3, n)
    picks = [p[rng.integers(0, len(p), k)] for p, k in zip(pools, _split(n, len(pools)), strict=True)]
    ijk = np.stack(np.unravel_index(np.concatenate(picks), (m, m, m)), axis=-1) + rng.integers(-1, 2, (n, 3))
    ijk = np.clip(ijk, 0, m - 1)
    return np.asarray(np.ravel_multi_index(ijk.T, (m, m, m)), dtype=np.int64)


def bone_edge_points(s: ReconSample, rng: np.random.Generator, n: int, jitter: int = 1) -> NDArray[np.int64]:
    """Flat indices near the femur and tibia boundaries (a ``bone_edges`` voxel +- ``jitter`` voxels);
    uniform over the cube when the sample has none."""
    m = CUBE_VOXELS
    if not len(s.bone_edges):
        return rng.integers(0, m**3, n)
    pick = s.bone_edges[rng.integers(0, len(s.bone_edges), n)]
    ijk = np.stack(np.unravel_index(pick, (m, m, m)), axis=-1) + rng.integers(-jitter, jitter + 1, (n, 3))
    ijk = np.clip(ijk, 0, m - 1)
    return np.asarray(np.ravel_multi_index(ijk.T, (m, m, m)), dtype=np.int64)


def _split(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def block_indices(s: ReconSample, rng: np.random.Generator) -> NDArray[np.int64]:
    """Flat indices of a BLOCK^3 block around a random surface voxel (bone texture and edges)."""
    n = CUBE_VOXELS
    c = np.array(np.unravel_index(s.surface[rng.integers(0, len(s.surface))], (n, n, n)))
    lo = np.clip(c - BLOCK // 2 + rng.integers(-4, 5, 3), 0, n - BLOCK)
    g = np.stack(np.meshgrid(*(np.arange(int(a), int(a) + BLOCK) for a in lo), indexing="ij"), axis=-1)
    return np.asarray(np.ravel_multi_index(g.reshape(-1, 3).T, (n, n, n)), dtype=np.int64)
