"""Signed-distance shape primitives for building bones (negative inside, millimetres).

Bones are unions of a few smooth primitives, each placed in its bone's local frame. A signed distance
(exact, or a close bound near the surface) gives both a smooth partial-volume edge when voxelised (no
staircase at 1 mm) and the depth below the surface that decides cortical shell versus cancellous core.
All functions are vectorised over points of shape (..., 3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from export.simulator import sdf_kernels as kern

F = NDArray[np.float32]


def _as_f32(x: NDArray[np.floating] | float) -> F:
    return np.asarray(x, dtype=np.float32)


def _flat(p: F, kernel: Callable[[F], F]) -> F:
    """Run a compiled (N, 3) kernel on points of any leading shape."""
    q = np.ascontiguousarray(p, dtype=np.float32).reshape(-1, 3)
    return np.asarray(kernel(q), dtype=np.float32).reshape(p.shape[:-1])


class Shape(ABC):
    """A shape with a signed distance and an axis-aligned bounding box (local frame, mm)."""

    @abstractmethod
    def sdf(self, p: F) -> F: ...

    @abstractmethod
    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...


@dataclass(frozen=True)
class Sphere(Shape):
    centre: tuple[float, float, float]
    radius: float

    def sdf(self, p: F) -> F:
        return _flat(p, lambda q: kern.sphere(q, _as_f32(np.array(self.centre)), float(self.radius)))

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        c = np.array(self.centre)
        return c - self.radius, c + self.radius


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``radii`` along the columns of ``axes`` (a rotation, local frame).

    Uses the first-order distance estimate k0 (k0 - 1) / k1 (Quilez): exact zero set, accurate
    within a fraction of a millimetre near the surface, which is all voxelisation needs.
    """

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    axes: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def _rot(self) -> NDArray[np.float64]:
        return np.array(self.axes, dtype=np.float64).reshape(3, 3)

    def sdf(self, p: F) -> F:
        c = _as_f32(np.array(self.centre))
        rot = np.ascontiguousarray(_as_f32(self._rot()))
        r = _as_f32(np.array(self.radii))
        return _flat(p, lambda q: kern.ellipsoid(q, c, rot, r))

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        rot = self._rot()  # rows are the ellipsoid axes in local coordinates
        ext = np.sqrt(((rot.T * np.array(self.radii)) ** 2).sum(axis=1))
        c = np.array(self.centre)
        return c - ext, c + ext


@dataclass(frozen=True)
class RoundCone(Shape):
    """A capsule whose radius varies linearly from ``r_a`` at ``a`` to ``r_b`` at ``b``."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    r_a: float
    r_b: float

    def sdf(self, p: F) -> F:
        a = np.array(self.a, dtype=np.float32)
        b = np.array(self.b, dtype=np.float32)
        return _flat(p, lambda q: kern.round_cone(q, a, b, float(self.r_a), float(self.r_b)))

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        a, b = np.array(self.a), np.array(self.b)
        r = max(self.r_a, self.r_b)
        return np.minimum(a, b) - r, np.maximum(a, b) + r


@dataclass(frozen=True)
class Polyline(Shape):
    """A tube along a polyline with radii per vertex (a bowed shaft)."""

    points: tuple[tuple[float, float, float], ...]
    radii: tuple[float, ...]

    def sdf(self, p: F) -> F:
        d: F | None = None
        for i in range(len(self.points) - 1):
            seg = RoundCone(self.points[i], self.points[i + 1], self.radii[i], self.radii[i + 1]).sdf(p)
            d = seg if d is None else np.minimum(d, seg)
        assert d is not None
        return d

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        pts = np.array(self.points)
        r = max(self.radii)
        return pts.min(axis=0) - r, pts.max(axis=0) + r


@dataclass(frozen=True)
class RoundedBox(Shape):
    """Box of half-extents ``half`` (before rounding) with edge radius ``rounding``, rotated by ``axes``."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    rounding: float
    axes: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def sdf(self, p: F) -> F:
        rot = np.ascontiguousarray(np.array(self.axes, dtype=np.float32).reshape(3, 3))
        c = np.array(self.centre, dtype=np.float32)
        half = np.array(self.half, dtype=np.float32)
        return _flat(p, lambda q: kern.rounded_box(q, c, rot, half, float(self.rounding)))

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        rot = np.array(self.axes, dtype=np.float64).reshape(3, 3)
        h = np.array(self.half) + self.rounding
        ext = np.abs(rot.T) @ h
        c = np.array(self.centre)
        return c - ext, c + ext


@dataclass(frozen=True)
class EllipticCylinder(Shape):
    """Elliptic cylinder along local z between ``z0`` and ``z1``, semi-axes ``a`` (x) and ``b`` (y),
    centred at ``(cx, cy)``; rotated about z by ``angle_deg`` (before the centre offset)."""

    cx: float
    cy: float
    a: float
    b: float
    z0: float
    z1: float
    angle_deg: float = 0.0

    def sdf(self, p: F) -> F:
        t = float(np.radians(self.angle_deg))
        args = (float(self.cx), float(self.cy), float(self.a), float(self.b), float(self.z0), float(self.z1))
        return _flat(p, lambda q: kern.elliptic_cylinder(q, *args, float(np.cos(t)), float(np.sin(t))))

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        r = max(self.a, self.b)
        return (
            np.array([self.cx - r, self.cy - r, self.z0]),
            np.array([self.cx + r, self.cy + r, self.z1]),
        )


@dataclass(frozen=True)
class HalfSpace(Shape):
    """Points with (p - point) . normal <= 0 are inside. Used only to cut (intersect) other shapes."""

    point: tuple[float, float, float]
    normal: tuple[float, float, float]

    def sdf(self, p: F) -> F:
        n = np.array(self.normal, dtype=np.float32)
        n = n / np.linalg.norm(n)
        return _as_f32((p - np.array(self.point, dtype=np.float32)) @ n)

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return np.full(3, -np.inf), np.full(3, np.inf)


def smooth_min(a: F, b: F, k: float) -> F:
    """Polynomial smooth minimum: a blended union with a fillet of about ``k`` mm."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return _as_f32(b * (1 - h) + a * h - k * h * (1 - h))


def smooth_max(a: F, b: F, k: float) -> F:
    return _as_f32(-smooth_min(-a, -b, k))


@dataclass(frozen=True)
class Part:
    """One primitive of a bone and how it joins the shape built so far.

    ``op`` is "union", "cut" (subtract) or "clip" (intersect); ``blend`` is the fillet in mm.
    ``cortex_mm`` is the cortical thickness this part contributes and ``marrow`` how much of its core
    is fatty marrow (1, diaphysis) rather than trabecular bone (0); both blend across parts.
    """

    shape: Shape
    op: str = "union"
    blend: float = 0.0
    cortex_mm: float = 1.5
    marrow: float = 0.0


@dataclass(frozen=True)
class Composite(Shape):
    """An ordered CSG list of parts, evaluated left to right."""

    parts: tuple[Part, ...] = field(default_factory=tuple)

    def sdf(self, p: F) -> F:
        d, _, _ = self.sdf_and_cortex(p)
        return d

    def sdf_and_cortex(self, p: F) -> tuple[F, F, F]:
        """Signed distance, blended cortical thickness and marrow share (from the nearest union parts)."""
        d: F | None = None
        cortex: F | None = None
        marrow: F | None = None
        for part in self.parts:
            s = part.shape.sdf(p)
            if part.op == "union":
                if d is None or cortex is None or marrow is None:
                    d = s
                    cortex = np.full_like(s, part.cortex_mm)
                    marrow = np.full_like(s, part.marrow)
                    continue
                # Weight each part's properties by how close the point is to it (soft nearest-part).
                w = np.clip(0.5 + 0.5 * (d - s) / max(part.blend, 4.0), 0.0, 1.0)
                cortex = _as_f32(cortex * (1 - w) + part.cortex_mm * w)
                marrow = _as_f32(marrow * (1 - w) + part.marrow * w)
                d = smooth_min(d, s, part.blend)
            elif d is None:
                raise ValueError("a composite must start with a union part")
            elif part.op == "cut":
                d = smooth_max(d, -s, part.blend)
            elif part.op == "clip":
                d = smooth_max(d, s, part.blend)
            else:
                raise ValueError(f"unknown CSG op {part.op!r}")
        if d is None or cortex is None or marrow is None:
            raise ValueError("empty composite")
        return d, cortex, marrow

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        for part in self.parts:
            if part.op != "union":
                continue
            a, b = part.shape.bbox()
            lo = np.minimum(lo, a)
            hi = np.maximum(hi, b)
        return lo, hi


@dataclass(frozen=True)
class Shell(Shape):
    """The inner band of ``thickness`` mm below the surface of ``inner`` (implant shells)."""

    inner: Composite
    thickness: float

    def sdf(self, p: F) -> F:
        d = self.inner.sdf(p)
        return _as_f32(np.maximum(d, -d - self.thickness))

    def bbox(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        return self.inner.bbox()
