"""Gaussian heatmap targets for N named landmarks (training side).

Each target is an unnormalised Gaussian exp(-d^2 / (2 sigma^2)) with peak 1 at the exact landmark, in the
stride-``s`` heatmap frame of :mod:`appliance.landmarks.heatmaps`. The decoding (log-domain quadratic
peak refinement, soft-argmax) and the frame conversions live there, once, because the runtime detector
needs them and must not import ``export``; they are re-exported here for the training code and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError
from appliance.landmarks.heatmaps import (
    DecodedLandmarks,
    decode_heatmaps,
    heatmap_shape,
    to_input,
    to_output,
)

log = logging.getLogger(__name__)

__all__ = [
    "DecodedLandmarks",
    "HeatmapTargets",
    "decode_heatmaps",
    "encode_heatmaps",
    "heatmap_shape",
    "to_input",
    "to_output",
]

F32 = NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class HeatmapTargets:
    """``heatmaps`` (N, H, W) float32 in [0, 1]; ``mask`` (N,) True where the landmark is a target (a
    hidden or missing landmark has an all-zero map and mask False: its loss must be ignored)."""

    names: tuple[str, ...]
    heatmaps: F32
    mask: NDArray[np.bool_]
    stride: int
    sigma: float


def encode_heatmaps(
    landmarks: ArrayLike,
    visible: ArrayLike | None,
    input_shape: tuple[int, int],
    *,
    stride: int,
    sigma: float,
    names: Sequence[str] | None = None,
) -> HeatmapTargets:
    """One Gaussian map per landmark; ``sigma`` is in heatmap pixels."""
    p = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    n = p.shape[0]
    if sigma <= 0:
        raise InputError(f"sigma must be positive, got {sigma}")
    vis = np.ones(n, bool) if visible is None else np.asarray(visible, dtype=bool).reshape(-1)
    if vis.shape[0] != n:
        raise InputError(f"{n} landmarks but {vis.shape[0]} visibility flags")
    nm = tuple(names) if names is not None else tuple(str(i) for i in range(n))
    if len(nm) != n:
        raise InputError(f"{n} landmarks but {len(nm)} names")
    rows, cols = heatmap_shape(input_shape, stride)
    q = to_output(p, stride)
    mask = vis & np.all(np.isfinite(q), axis=1)
    out = np.zeros((n, rows, cols), np.float32)
    yy = np.arange(rows, dtype=np.float64)
    xx = np.arange(cols, dtype=np.float64)
    for k in np.flatnonzero(mask):
        gx = np.exp(-((xx - q[k, 0]) ** 2) / (2.0 * sigma**2))
        gy = np.exp(-((yy - q[k, 1]) ** 2) / (2.0 * sigma**2))
        out[k] = np.outer(gy, gx).astype(np.float32)
    return HeatmapTargets(names=nm, heatmaps=out, mask=mask, stride=int(stride), sigma=float(sigma))
