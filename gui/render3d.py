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
    cam: F32,
    faces: NDArray[np.int32],
    colour: F32,
    scale: float,
    light: F32,
    image: F32,
    depth: F32,
) -> None:
    """Z-buffer fill of every triangle; ``cam`` holds vertices in camera axes (mm), flat Lambert shade."""
    h, w = depth.shape
    ox, oy = w / 2.0, h / 2.0
    for t in range(faces.shape[0]):
        a, b, c = faces[t, 0], faces[t, 1], faces[t, 2]
        ex1, ey1, ez1 = cam[b, 0] - cam[a, 0], cam[b, 1] - cam[a, 1], cam[b, 2] - cam[a, 2]
        ex2, ey2, ez2 = cam[c, 0] - cam[a, 0], cam[c, 1] - cam[a, 1], cam[c, 2] - cam[a, 2]
        nx, ny, nz = ey1 * ez2 - ez1 * ey2, ez1 * ex2 - ex1 * ez2, ex1 * ey2 - ey1 * ex2
        norm = math.sqrt(nx * nx + ny * ny + nz * nz)
        if norm < 1e-12:
            continue
        # Two-sided: the winding order of a mesh does not matter.
        s = AMBIENT + (1.0 - AMBIENT) * abs(nx * light[0] + ny * light[1] + nz * light[2]) / norm
        x0, y0, z0 = ox + scale * cam[a, 0], oy - scale * cam[a, 1], cam[a, 2]
        x1, y1, z1 = ox + scale * cam[b, 0], oy - scale * cam[b, 1], cam[b, 2]
        x2, y2, z2 = ox + scale * cam[c, 0], oy - scale * cam[c, 1], cam[c, 2]
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
        return np.ascontiguousarray((image * 255 + 0.5).astype(np.uint8))
    rot = camera.rotation.astype(np.float32)
    cam = (np.asarray(verts, np.float32) - camera.centre.astype(np.float32)) @ rot.T
    # Light from the viewer, slightly above and to the right.
    light = np.array([0.25, 0.35, 0.9], np.float32)
    light /= np.linalg.norm(light)
    depth = np.full((height, width), -np.inf, np.float32)
    _raster(
        np.ascontiguousarray(cam),
        np.ascontiguousarray(faces, np.int32),
        np.ascontiguousarray(face_rgb, np.float32),
        float(camera.scale),
        light,
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
