"""What every bone builder returns: its shape and its landmarks in the bone's own frame.

Bone frames use axes (lateral, anterior, proximal) of a RIGHT leg, a right-handed frame; the assembly
places each frame in patient space and mirrors the whole limb for a left leg.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from export.simulator.sdf import Composite, Shape

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class SurfacePatch:
    """Points sampled on a part of a bone surface (local frame) that a reader looks at on a film,
    e.g. the distal surface of a condyle; the truth picks the extreme projected point from these."""

    name: str
    points: F64


@dataclass(frozen=True)
class BoneModel:
    name: str
    label: int
    shape: Composite
    landmarks: dict[str, F64] = field(default_factory=dict)
    patches: tuple[SurfacePatch, ...] = ()
    # Regions of extra density (subchondral sclerosis): shape and a weight of the case's sclerosis HU.
    dense: tuple[tuple[Shape, float], ...] = ()
    # Metal implant parts fixed to this bone.
    metal: tuple[Shape, ...] = ()

    def bbox(self) -> tuple[F64, F64]:
        return self.shape.bbox()


def ellipsoid_surface(
    centre: F64, radii: F64, *, n: int = 64, keep: str | None = None, axes: F64 | None = None
) -> F64:
    """Points on an ellipsoid surface; ``keep`` = "-z", "-y", ... keeps the half facing that way."""
    u = np.linspace(0.0, np.pi, n)
    v = np.linspace(0.0, 2 * np.pi, 2 * n, endpoint=False)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    unit = np.stack([np.sin(uu) * np.cos(vv), np.sin(uu) * np.sin(vv), np.cos(uu)], axis=-1).reshape(-1, 3)
    if keep is not None:
        axis = "xyz".index(keep[1])
        sign = -1.0 if keep[0] == "-" else 1.0
        unit = unit[sign * unit[:, axis] > 0.0]
    pts = unit * radii
    if axes is not None:
        pts = pts @ axes
    return np.asarray(pts + centre, dtype=np.float64)
