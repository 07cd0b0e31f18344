"""A voxel volume placed in DICOM patient space (LPS, mm).

``data`` is indexed ``[i, j, k]`` (the same order nibabel returns); ``affine`` maps the homogeneous voxel
index ``(i, j, k, 1)`` of a voxel centre to LPS millimetres. NIfTI files store RAS: convert with
``diag(-1, -1, 1, 1) @ affine_ras`` on the way in and out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from appliance.errors import GeometryError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Volume:
    data: NDArray[np.generic]
    affine: NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise GeometryError(f"volume must be 3D, got shape {self.data.shape}")
        a = np.asarray(self.affine, dtype=np.float64)
        if a.shape != (4, 4) or not np.allclose(a[3], [0, 0, 0, 1]):
            raise GeometryError("affine must be a 4x4 homogeneous matrix")
        if abs(np.linalg.det(a[:3, :3])) < 1e-9:
            raise GeometryError("affine is singular")

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.data.shape
        return int(s[0]), int(s[1]), int(s[2])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        n = np.linalg.norm(np.asarray(self.affine)[:3, :3], axis=0)
        return float(n[0]), float(n[1]), float(n[2])

    def index_to_mm(self, ijk: ArrayLike) -> NDArray[np.float64]:
        p = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
        return p @ self.affine[:3, :3].T + self.affine[:3, 3]

    def mm_to_index(self, xyz: ArrayLike) -> NDArray[np.float64]:
        p = np.atleast_2d(np.asarray(xyz, dtype=np.float64))
        inv = np.linalg.inv(self.affine)
        return p @ inv[:3, :3].T + inv[:3, 3]

    def bounds_mm(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Axis-aligned LPS box enclosing all voxel centres."""
        s = np.array(self.shape) - 1
        corners = np.array([[a, b, c] for a in (0, s[0]) for b in (0, s[1]) for c in (0, s[2])])
        pts = self.index_to_mm(corners)
        return pts.min(axis=0), pts.max(axis=0)


def axis_aligned_affine(origin_mm: ArrayLike, spacing_mm: ArrayLike) -> NDArray[np.float64]:
    """Affine for a grid whose i, j, k run along +x, +y, +z (L, P, S) from ``origin_mm``."""
    a = np.eye(4)
    a[:3, :3] = np.diag(np.asarray(spacing_mm, dtype=np.float64).reshape(3))
    a[:3, 3] = np.asarray(origin_mm, dtype=np.float64).reshape(3)
    return a
