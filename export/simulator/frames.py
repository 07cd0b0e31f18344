"""Rigid transforms between bone frames and patient space."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def rotation(axis: ArrayLike, angle_deg: float) -> F64:
    """Right-handed rotation by ``angle_deg`` about ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


@dataclass(frozen=True)
class Rigid:
    """``p_out = R @ p_in + t``."""

    R: F64
    t: F64

    @staticmethod
    def identity() -> Rigid:
        return Rigid(np.eye(3), np.zeros(3))

    @staticmethod
    def about(axis: ArrayLike, angle_deg: float, pivot: ArrayLike) -> Rigid:
        """Rotation about the line through ``pivot`` along ``axis``."""
        R = rotation(axis, angle_deg)
        c = np.asarray(pivot, dtype=np.float64)
        return Rigid(R, c - R @ c)

    def apply(self, p: ArrayLike) -> F64:
        return np.asarray(p, dtype=np.float64) @ self.R.T + self.t

    def apply_dir(self, v: ArrayLike) -> F64:
        return np.asarray(v, dtype=np.float64) @ self.R.T

    def inverse(self) -> Rigid:
        return Rigid(self.R.T, -self.R.T @ self.t)

    def then(self, other: Rigid) -> Rigid:
        """First ``self``, then ``other``."""
        return Rigid(other.R @ self.R, other.R @ self.t + other.t)


def mirror_x(p: ArrayLike) -> F64:
    """Reflection through the sagittal midline plane (right leg <-> left leg)."""
    q = np.array(p, dtype=np.float64, copy=True)
    q[..., 0] *= -1.0
    return q
