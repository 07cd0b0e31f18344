"""Heatmap geometry and sub-pixel peak decoding, shared by the runtime detector and the training side.

Coordinates are (col, row) in input-image pixels with pixel centres at integers. Output pixel j of a
stride-``s`` heatmap covers input pixels [j s, (j + 1) s), so its centre sits at input coordinate
``j s + (s - 1) / 2``; :func:`to_output` / :func:`to_input` convert between the two frames.

A training target is an unnormalised Gaussian exp(-d^2 / (2 sigma^2)) (``export.datasets.heatmaps``),
whose logarithm is a quadratic: a parabola fitted to the log of the three samples around the maximum in
each axis recovers the centre exactly (quadratic peak refinement in the log domain, as in DARK: Zhang et
al., CVPR 2020). A local soft-argmax is offered as the alternative. Both return a confidence: the
heatmap's value at the peak (1 for a perfect target, lower for a weak or smeared prediction).

This module is the one copy of the decoding (the runtime must not import ``export``; ``export`` imports
this). It also holds the sample-frame affine both sides use to cut whole-film frames and joint crops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "DecodedLandmarks",
    "decode_heatmaps",
    "frame_affine",
    "heatmap_shape",
    "to_input",
    "to_output",
]

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


def frame_affine(
    f_col: float, f_row: float, centre: tuple[float, float], shape: tuple[int, int], *, mirror: bool = False
) -> F64:
    """Sample -> film affine (3x3 on (col, row, 1)) of an axis-aligned frame of ``shape`` whose centre
    sits on ``centre`` (film px) and whose pixels are ``f_col`` x ``f_row`` film pixels. With ``mirror``
    the frame's columns run right to left over the film (a left leg then looks like a right leg)."""
    cq = ((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    fc = -f_col if mirror else f_col
    return np.array(
        [[fc, 0.0, centre[0] - fc * cq[0]], [0.0, f_row, centre[1] - f_row * cq[1]], [0.0, 0.0, 1.0]]
    )


@dataclass(frozen=True, eq=False)
class DecodedLandmarks:
    """``points`` (N, 2) (col, row) in input pixels, ``confidence`` (N,) in [0, 1]."""

    points: F64
    confidence: F64


def _log_parabola(lm1: float, l0: float, lp1: float) -> float:
    """Vertex offset of a parabola through log samples at -1, 0, +1 (clipped to one pixel)."""
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
    border biases the estimate toward the interior). A map without a positive value (a hidden
    landmark's all-zero target) decodes to NaN with confidence 0."""
    h = np.asarray(heatmaps, dtype=np.float64)
    if h.ndim != 3:
        raise InputError(f"heatmaps must have shape (N, H, W), got {h.shape}", reason="bad_heatmaps")
    if not np.all(np.isfinite(h)):
        raise InputError("heatmaps contain NaN or infinite values", reason="bad_heatmaps")
    if method not in ("quadratic", "softargmax"):
        raise InputError(f"unknown decoding method {method!r}")
    n, rows, cols = h.shape
    pts = np.full((n, 2), np.nan)
    conf = np.zeros(n)
    for k in range(n):
        m = h[k]
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
        else:
            r0, r1 = max(0, r - window), min(rows, r + window + 1)
            c0, c1 = max(0, c - window), min(cols, c + window + 1)
            w = np.maximum(m[r0:r1, c0:c1], 0.0)
            yy, xx = np.mgrid[r0:r1, c0:c1]
            s = float(w.sum())
            pts[k] = (float((w * xx).sum()) / s, float((w * yy).sum()) / s)
    return DecodedLandmarks(points=to_input(pts, stride), confidence=conf)
