"""Gaussian heatmap targets for N named landmarks and their sub-pixel decoding.

Coordinates are (col, row) in input-image pixels with pixel centres at integers. Output pixel j of a
stride-``s`` heatmap covers input pixels [j s, (j + 1) s), so its centre sits at input coordinate
``j s + (s - 1) / 2``; :func:`to_output` / :func:`to_input` convert between the two frames.

Each target is an unnormalised Gaussian exp(-d^2 / (2 sigma^2)) (peak 1 at the exact landmark). Its
logarithm is a quadratic, so a parabola fitted to the log of the three samples around the maximum in each
axis recovers the centre exactly (quadratic peak refinement in the log domain, as in DARK: Zhang et al.,
CVPR 2020); a local soft-argmax is offered as the alternative. Both return a confidence: the heatmap's
value at the peak (1 for a perfect target, lower for a weak or smeared prediction).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError

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
F64 = NDArray[np.float64]
_EPS = 1e-12


def heatmap_shape(input_shape: tuple[int, int], stride: int) -> tuple[int, int]:
    """(rows, cols) of the heatmap of an input of ``input_shape`` at ``stride`` (ceil division)."""
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    return -(-int(input_shape[0]) // stride), -(-int(input_shape[1]) // stride)


def to_output(points: ArrayLike, stride: int) -> F64:
    """Input-pixel (col, row) -> heatmap-pixel (col, row)."""
    p = np.asarray(points, dtype=np.float64)
    return np.asarray((p - (stride - 1) / 2.0) / stride, dtype=np.float64)


def to_input(points: ArrayLike, stride: int) -> F64:
    """Heatmap-pixel (col, row) -> input-pixel (col, row)."""
    p = np.asarray(points, dtype=np.float64)
    return np.asarray(p * stride + (stride - 1) / 2.0, dtype=np.float64)


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


@dataclass(frozen=True, eq=False)
class DecodedLandmarks:
    """``points`` (N, 2) (col, row) in input pixels, ``confidence`` (N,) in [0, 1]."""

    points: F64
    confidence: F64


def _log_parabola(lm1: float, l0: float, lp1: float) -> float:
    """Vertex offset in (-0.5, 0.5]-ish of a parabola through log samples at -1, 0, +1."""
    den = lm1 - 2.0 * l0 + lp1
    if den >= -_EPS:  # not a maximum (flat or convex): keep the integer peak
        return 0.0
    return float(np.clip(0.5 * (lm1 - lp1) / den, -1.0, 1.0))


def decode_heatmaps(
    heatmaps: ArrayLike,
    stride: int,
    *,
    method: Literal["quadratic", "softargmax"] = "quadratic",
    window: int = 3,
) -> DecodedLandmarks:
    """Sub-pixel peak of each (H, W) map of ``heatmaps`` (N, H, W), mapped back to input pixels.

    ``quadratic``: integer argmax refined by a parabola through the log of its neighbours per axis
    (exact for Gaussian peaks). ``softargmax``: probability-weighted mean of the positive values within
    ``window`` heatmap pixels of the argmax (choose ``window`` >= 4 sigma; a window clipped by the map
    border biases the estimate toward the interior)."""
    h = np.asarray(heatmaps, dtype=np.float64)
    if h.ndim != 3:
        raise InputError(f"heatmaps must have shape (N, H, W), got {h.shape}")
    n, rows, cols = h.shape
    pts = np.full((n, 2), np.nan)
    conf = np.zeros(n)
    for k in range(n):
        m = h[k]
        if not np.all(np.isfinite(m)):
            raise InputError("heatmaps contain NaN or infinite values")
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        peak = float(m[r, c])
        conf[k] = float(np.clip(peak, 0.0, 1.0))
        if peak <= 0:
            continue
        if method == "quadratic":
            lg = np.log(np.maximum(m, _EPS))
            dc = _log_parabola(lg[r, c - 1], lg[r, c], lg[r, c + 1]) if 0 < c < cols - 1 else 0.0
            dr = _log_parabola(lg[r - 1, c], lg[r, c], lg[r + 1, c]) if 0 < r < rows - 1 else 0.0
            pts[k] = (c + dc, r + dr)
        elif method == "softargmax":
            r0, r1 = max(0, r - window), min(rows, r + window + 1)
            c0, c1 = max(0, c - window), min(cols, c + window + 1)
            w = np.maximum(m[r0:r1, c0:c1], 0.0)
            yy, xx = np.mgrid[r0:r1, c0:c1]
            s = float(w.sum())
            pts[k] = (float((w * xx).sum()) / s, float((w * yy).sum()) / s)
        else:
            raise InputError(f"unknown decoding method {method!r}")
    return DecodedLandmarks(points=to_input(pts, stride), confidence=conf)
