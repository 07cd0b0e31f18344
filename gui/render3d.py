"""A small software renderer for the bone surfaces: orthographic camera, z-buffer, flat Lambert shading.

Why not VTK or Qt Quick 3D: both need an OpenGL (or RHI) context inside the Qt window, which the
offscreen Qt platform that the tests, the screenshot command and headless workstations use does not
provide here (docs/gui.md has the evidence). A few hundred thousand triangles of a knee rasterise in a
few tens of milliseconds with numba (already a runtime dependency), which is interactive enough for
rotating and zooming, and the picture is the same on every machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import numba
import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
AMBIENT: Final = 0.25
# Anterior view in LPS: patient's left to the viewer's right (as on an AP film), superior up, the viewer
# in front of the patient (toward -y).
AP_VIEW: Final = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def rotation(axis: NDArray[np.float64], angle_rad: float) -> NDArray[np.float64]:
    """Rotation matrix about a unit ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


@dataclass(frozen=True)
class Camera:
    """``rotation``: world (LPS mm) to camera axes (right, up, toward the viewer); ``scale``: px per mm."""

    rotation: NDArray[np.float64] = field(default_factory=lambda: AP_VIEW.copy())
    centre: NDArray[np.float64] = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0

    def orbit(self, yaw_rad: float, pitch_rad: float) -> Camera:
        """Turn the object about the screen's vertical (yaw) and horizontal (pitch) axes."""
        r = rotation(np.array([1.0, 0.0, 0.0]), pitch_rad) @ rotation(np.array([0.0, 1.0, 0.0]), yaw_rad)
        return Camera(r @ self.rotation, self.centre, self.scale)

    def zoomed(self, factor: float) -> Camera:
        return Camera(self.rotation, self.centre, self.scale * factor)


@numba.njit(cache=True, nogil=True)
def _raster(
    sx: F32, sy: F32, sz: F32, faces: NDArray[np.int32], shade: F32, colour: F32, image: F32, depth: F32
) -> None:
    h, w = depth.shape
    for t in range(faces.shape[0]):
        a, b, c = faces[t, 0], faces[t, 1], faces[t, 2]
        x0, y0, z0 = sx[a], sy[a], sz[a]
        x1, y1, z1 = sx[b], sy[b], sz[b]
        x2, y2, z2 = sx[c], sy[c], sz[c]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if abs(area) < 1e-12:
            continue
        xmin = max(math.floor(min(x0, min(x1, x2))), 0)
        xmax = min(math.ceil(max(x0, max(x1, x2))), w - 1)
        ymin = max(math.floor(min(y0, min(y1, y2))), 0)
        ymax = min(math.ceil(max(y0, max(y1, y2))), h - 1)
        inv = 1.0 / area
        for py in range(ymin, ymax + 1):
            fy = py + 0.5
            for px in range(xmin, xmax + 1):
                fx = px + 0.5
                w0 = ((x1 - fx) * (y2 - fy) - (x2 - fx) * (y1 - fy)) * inv
                w1 = ((x2 - fx) * (y0 - fy) - (x0 - fx) * (y2 - fy)) * inv
                w2 = 1.0 - w0 - w1
                if w0 < 0.0 or w1 < 0.0 or w2 < 0.0:
                    continue
                z = w0 * z0 + w1 * z1 + w2 * z2
                if z > depth[py, px]:
                    depth[py, px] = z
                    s = shade[t]
                    image[py, px, 0] = colour[t, 0] * s
                    image[py, px, 1] = colour[t, 1] * s
                    image[py, px, 2] = colour[t, 2] * s


def render(
    verts: F32,
    faces: NDArray[np.int32],
    face_rgb: F32,
    camera: Camera,
    size: tuple[int, int],
    background: tuple[int, int, int] = (32, 36, 44),
) -> NDArray[np.uint8]:
    """RGB image (height, width, 3) of the triangles ``faces`` of ``verts`` (world mm), colours in [0, 1]."""
    width, height = size
    image = np.empty((height, width, 3), np.float32)
    image[:] = np.asarray(background, np.float32) / 255.0
    if len(faces) == 0:
        return (image * 255).astype(np.uint8)
    v = (np.asarray(verts, np.float64) - camera.centre) @ camera.rotation.T
    sx = (width / 2.0 + camera.scale * v[:, 0]).astype(np.float32)
    sy = (height / 2.0 - camera.scale * v[:, 1]).astype(np.float32)
    sz = v[:, 2].astype(np.float32)
    tri = v[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    # Light from the viewer, slightly above; two-sided so winding order does not matter.
    light = np.array([0.25, 0.35, 0.9])
    light /= np.linalg.norm(light)
    shade = (AMBIENT + (1.0 - AMBIENT) * np.abs(n @ light)).astype(np.float32)
    depth = np.full((height, width), -np.inf, np.float32)
    _raster(
        sx,
        sy,
        sz,
        np.ascontiguousarray(faces, np.int32),
        shade,
        np.ascontiguousarray(face_rgb, np.float32),
        image,
        depth,
    )
    return np.ascontiguousarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))


def fit_camera(
    verts: F32, size: tuple[int, int], rot: NDArray[np.float64] | None = None, margin: float = 0.9
) -> Camera:
    """A camera centred on ``verts`` that shows all of them."""
    if len(verts) == 0:
        return Camera()
    lo, hi = verts.min(axis=0).astype(np.float64), verts.max(axis=0).astype(np.float64)
    centre = (lo + hi) / 2.0
    radius = float(np.linalg.norm(hi - lo)) / 2.0
    return Camera(
        AP_VIEW.copy() if rot is None else rot, centre, margin * min(size) / (2.0 * max(radius, 1e-6))
    )
