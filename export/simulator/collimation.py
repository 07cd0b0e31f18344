"""Where the collimated field is, what it must keep open, and what a film can show under its blades.

A radiographer collimates to the anatomy being measured: on a standing long-leg film both legs' bones from
the hips to the ankles stay in the field, on a knee film the condyles and the plateau. The blades are
sampled freely (``film_artifacts.sample_artifacts``) and then opened just enough that the bone the film is
for stays inside with a margin (:func:`keep_open`): without this, ~17 % of simulated long-leg films had a
blade through the measured knee, whose hidden plateau the truth still called visible (2026-11-24).

A landmark under a blade is not on the film (the blades pass < 1 % of the fluence), so the truth marks it
out of field (:func:`in_open_field`), whatever the detector's size.

Coordinates are film (col, row) pixels of the unpadded, unstitched image the field is applied to
(``film_artifacts.render_with_artifacts``): a landmark's visibility is decided where the ray hits the
detector, before the stitching shifts zones.
"""

from __future__ import annotations

import dataclasses
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from export.simulator.film_artifacts import CollimationRecord

__all__ = ["BONE_PATH_MM", "KEEP_MARGIN_MM", "bone_outline", "field_uv", "in_open_field", "keep_open"]

F64 = NDArray[np.float64]

KEEP_MARGIN_MM: Final = 8.0
"""Soft tissue a radiographer leaves open beyond the bone (the penumbra is added on top)."""
BONE_PATH_MM: Final = 3.0
"""Bone-basis path length (mm) above which a detector pixel is counted as showing bone."""


def field_uv(points: ArrayLike, shape: tuple[int, int], angle_deg: float) -> F64:
    """(N, 2) film (col, row) -> (u, v) in the field's rotated frame, centred on the film (pixels)."""
    rows, cols = shape
    p = np.asarray(points, np.float64).reshape(-1, 2)
    cc = p[:, 0] - (cols - 1) / 2.0
    rr = p[:, 1] - (rows - 1) / 2.0
    a = np.deg2rad(angle_deg)
    return np.stack([np.cos(a) * cc + np.sin(a) * rr, -np.sin(a) * cc + np.cos(a) * rr], axis=1)


def in_open_field(
    points: ArrayLike, shape: tuple[int, int], c: CollimationRecord | None
) -> NDArray[np.bool_]:
    """Whether each film (col, row) point lies inside the open field (the same rectangle as
    ``film_artifacts.field_mask``; None = no collimation, everything open)."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    if c is None:
        return np.ones(len(p), bool)
    rows, cols = shape
    uv = field_uv(p, shape, c.angle_deg)
    return np.asarray(
        (uv[:, 0] >= -cols / 2.0 + c.left * cols)
        & (uv[:, 0] <= cols / 2.0 - c.right * cols)
        & (uv[:, 1] >= -rows / 2.0 + c.top * rows)
        & (uv[:, 1] <= rows / 2.0 - c.bottom * rows),
        bool,
    )


def keep_open(
    c: CollimationRecord,
    shape: tuple[int, int],
    pitch_mm: float,
    keep: ArrayLike,
    margin_mm: float = KEEP_MARGIN_MM,
) -> CollimationRecord:
    """``c`` with each blade pulled back (never pushed in) so every ``keep`` (N, 2) film point lies at
    least ``margin_mm`` + twice the penumbra inside the field; points off the film are ignored."""
    rows, cols = shape
    p = np.asarray(keep, np.float64).reshape(-1, 2)
    on = (p[:, 0] >= 0) & (p[:, 0] <= cols - 1) & (p[:, 1] >= 0) & (p[:, 1] <= rows - 1)
    if not on.any():
        return c
    uv = field_uv(p[on], shape, c.angle_deg)
    m = (margin_mm + 2.0 * c.penumbra_mm) / pitch_mm

    def limit(current: float, room_px: float, size: int) -> float:
        return float(min(current, max(0.0, room_px / size)))

    return dataclasses.replace(
        c,
        left=limit(c.left, uv[:, 0].min() + cols / 2.0 - m, cols),
        right=limit(c.right, cols / 2.0 - uv[:, 0].max() - m, cols),
        top=limit(c.top, uv[:, 1].min() + rows / 2.0 - m, rows),
        bottom=limit(c.bottom, rows / 2.0 - uv[:, 1].max() - m, rows),
    )


def bone_outline(bone_path_mm: ArrayLike, row_range: tuple[float, float], step: int = 4) -> F64:
    """(N, 2) film (col, row): the outermost bone pixels (bone path > :data:`BONE_PATH_MM`) of every
    ``step``-th row within ``row_range``: what the field must keep on the sides."""
    b = np.asarray(bone_path_mm)
    r0 = max(0, int(np.floor(row_range[0])))
    r1 = min(b.shape[0] - 1, int(np.ceil(row_range[1])))
    out: list[tuple[float, float]] = []
    for r in range(r0, r1 + 1, max(1, step)):
        cols = np.flatnonzero(b[r] > BONE_PATH_MM)
        if cols.size:
            out += [(float(cols[0]), float(r)), (float(cols[-1]), float(r))]
    return np.asarray(out, np.float64).reshape(-1, 2)
