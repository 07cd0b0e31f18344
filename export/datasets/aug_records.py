"""Augmentation records, part 1: the sample state, the affine warp, the record machinery and the geometric
records (they move pixels and landmarks together). The public face is :mod:`export.datasets.augment`."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from appliance.errors import InputError

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Shape = tuple[int, int]


# --- state ------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Augmented:
    """An image in [0, 1] with its landmarks (N, 2) as (col, row) and their visibility (N,)."""

    image: F32
    landmarks: F64
    visible: NDArray[np.bool_]


def visible_in(landmarks: ArrayLike, shape: Shape) -> NDArray[np.bool_]:
    """True where a (col, row) point lies on a pixel of an image of ``shape`` (rows, cols)."""
    p = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    rows, cols = shape
    with np.errstate(invalid="ignore"):
        ok = (p[:, 0] >= -0.5) & (p[:, 0] <= cols - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] <= rows - 0.5)
    return np.asarray(ok & np.all(np.isfinite(p), axis=1), dtype=np.bool_)


def transform_points(matrix: ArrayLike, points: ArrayLike) -> F64:
    """Apply a 3x3 homogeneous affine on (col, row) to (N, 2) points (NaN stays NaN)."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return np.asarray(p @ m[:2, :2].T + m[:2, 2], dtype=np.float64)


def _clip01(img: NDArray[Any]) -> F32:
    return np.clip(np.nan_to_num(img, nan=0.0), 0.0, 1.0).astype(np.float32)


def warp_affine(
    image: NDArray[Any],
    forward: ArrayLike,
    out_shape: Shape,
    *,
    fill: float = 0.0,
    order: int = 1,
    antialias: bool = True,
    mode: str = "constant",
) -> F32:
    """Resample ``image`` so that source point p lands on ``forward @ p`` in an ``out_shape`` image.

    ``forward`` is a 3x3 affine on (col, row) pixel coordinates (pixel centres at integers). Shrinking
    maps are low-pass filtered first (Gaussian, sigma = (1/s - 1) / 2 for a scale s < 1), so fine
    detail aliases no more than it would on a detector of the coarser pitch. Only the source window the
    output needs is filtered, so small crops of large films are cheap. Outside the source: ``fill``
    (``mode="constant"``) or the nearest edge pixel (``mode="nearest"``)."""
    fwd = np.asarray(forward, dtype=np.float64)
    if fwd.shape != (3, 3) or not np.all(np.isfinite(fwd)):
        raise InputError(f"affine must be a finite 3x3 matrix, got shape {fwd.shape}")
    inv = np.linalg.inv(fwd)
    src = np.asarray(image, dtype=np.float32)
    rows_o, cols_o = int(out_shape[0]), int(out_shape[1])
    if rows_o < 1 or cols_o < 1:
        raise InputError(f"output shape must be positive, got {out_shape}")
    sv = np.linalg.svd(fwd[:2, :2], compute_uv=False)
    sigma = 0.5 * (1.0 / float(sv.min()) - 1.0) if antialias and sv.min() < 1.0 else 0.0
    corners = np.array([[0, 0], [cols_o - 1, 0], [0, rows_o - 1], [cols_o - 1, rows_o - 1]], np.float64)
    sc = transform_points(inv, corners)
    margin = int(np.ceil(3.0 * sigma)) + 2
    c0 = max(0, int(np.floor(sc[:, 0].min())) - margin)
    c1 = min(src.shape[1], int(np.ceil(sc[:, 0].max())) + margin + 1)
    r0 = max(0, int(np.floor(sc[:, 1].min())) - margin)
    r1 = min(src.shape[0], int(np.ceil(sc[:, 1].max())) + margin + 1)
    if c1 <= c0 or r1 <= r0:
        return np.full((rows_o, cols_o), np.float32(fill), np.float32)
    win = src[r0:r1, c0:c1]
    if sigma > 0.05:
        win = ndimage.gaussian_filter(win, sigma, mode="nearest")
    # ndimage works in (row, col): input = M_rc @ output + offset_rc.
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    m_rc = swap @ inv[:2, :2] @ swap
    off_rc = swap @ (inv[:2, 2] - np.array([c0, r0], np.float64))
    out = ndimage.affine_transform(
        win, m_rc, offset=off_rc, output_shape=(rows_o, cols_o), order=order, mode=mode, cval=fill
    )
    return np.asarray(out, dtype=np.float32)


# --- record machinery -------------------------------------------------------------------------------
class Record(Protocol):
    """What every transform record offers."""

    kind: ClassVar[str]

    def transform(self, s: Augmented) -> Augmented: ...

    def matrix(self, shape: Shape) -> tuple[F64, Shape]: ...

    def to_dict(self) -> dict[str, Any]: ...


class _Base:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(cast(Any, self))}
        return {"kind": self.kind, **_plain(d)}

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        """The (col, row) affine this record applies to landmarks and the output shape."""
        return np.eye(3), (int(shape[0]), int(shape[1]))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list | tuple) else x


class _PixelOp(_Base, ABC):
    """A transform of pixel values only: landmarks and visibility pass unchanged."""

    @abstractmethod
    def pixels(self, image: F32) -> F32: ...

    def transform(self, s: Augmented) -> Augmented:
        return Augmented(_clip01(self.pixels(s.image)), s.landmarks.copy(), s.visible.copy())


class _GeometricOp(_Base):
    """A transform that moves pixels: landmarks follow ``matrix``; leaving the image hides them."""

    fill_value: ClassVar[float] = 0.0

    def warp(self, image: F32, m: F64, out_shape: Shape) -> F32:
        return warp_affine(image, m, out_shape, fill=self._fill())

    def _fill(self) -> float:
        return float(getattr(self, "fill", self.fill_value))

    def transform(self, s: Augmented) -> Augmented:
        m, out_shape = self.matrix(cast(Shape, s.image.shape))
        img = _clip01(self.warp(s.image, m, out_shape))
        lm = transform_points(m, s.landmarks)
        return Augmented(img, lm, s.visible & visible_in(lm, out_shape))


def _centre(shape: Shape) -> F64:
    return np.array([(shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0])


def _translation(dc: float, dr: float) -> F64:
    m = np.eye(3)
    m[0, 2], m[1, 2] = dc, dr
    return m


# --- geometric records --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AffineRecord(_GeometricOp):
    """Rotation (deg, counter-clockwise as displayed), isotropic scale and shift (px) about the image
    centre; the output keeps the input shape. p' = c + s R (p - c) + t."""

    kind: ClassVar[str] = "affine"
    angle_deg: float
    scale: float
    shift_col: float
    shift_row: float
    fill: float = 0.0

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        a = np.deg2rad(self.angle_deg)
        c = _centre(shape)
        lin = self.scale * np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        m = np.eye(3)
        m[:2, :2] = lin
        m[:2, 2] = c - lin @ c + np.array([self.shift_col, self.shift_row])
        return m, (int(shape[0]), int(shape[1]))


@dataclass(frozen=True)
class FlipRecord(_GeometricOp):
    """Horizontal mirror (col -> cols - 1 - col). Landmarks keep their names: a mirrored right leg is
    anatomically a left leg, and medial/lateral follow the anatomy, not the image side."""

    kind: ClassVar[str] = "flip"
    horizontal: bool = True

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        m = np.eye(3)
        if self.horizontal:
            m[0, 0], m[0, 2] = -1.0, shape[1] - 1.0
        return m, (int(shape[0]), int(shape[1]))

    def warp(self, image: F32, m: F64, out_shape: Shape) -> F32:
        return image[:, ::-1].copy() if self.horizontal else image.copy()


@dataclass(frozen=True)
class CropRecord(_GeometricOp):
    """Integer window [top, top + height) x [left, left + width); parts outside the image are ``fill``."""

    kind: ClassVar[str] = "crop"
    top: int
    left: int
    height: int
    width: int
    fill: float = 0.0

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        return _translation(-self.left, -self.top), (self.height, self.width)

    def warp(self, image: F32, m: F64, out_shape: Shape) -> F32:
        out = np.full(out_shape, np.float32(self.fill), np.float32)
        r0, c0 = max(self.top, 0), max(self.left, 0)
        r1 = min(self.top + self.height, image.shape[0])
        c1 = min(self.left + self.width, image.shape[1])
        if r1 > r0 and c1 > c0:
            out[r0 - self.top : r1 - self.top, c0 - self.left : c1 - self.left] = image[r0:r1, c0:c1]
        return out


@dataclass(frozen=True)
class PadRecord(_GeometricOp):
    """Constant bars around the image (PACS exports padded to a fixed aspect); content moves."""

    kind: ClassVar[str] = "pad"
    top: int
    bottom: int
    left: int
    right: int
    value: float = 0.0

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        return _translation(self.left, self.top), (
            int(shape[0]) + self.top + self.bottom,
            int(shape[1]) + self.left + self.right,
        )

    def warp(self, image: F32, m: F64, out_shape: Shape) -> F32:
        pads = ((self.top, self.bottom), (self.left, self.right))
        return np.pad(image, pads, constant_values=np.float32(self.value)).astype(np.float32)


@dataclass(frozen=True)
class LetterboxRecord(_GeometricOp):
    """Scale to fit ``rows`` x ``cols`` keeping the aspect ratio, centred, the rest ``fill``: how any
    augmented image reaches the model's fixed input shape. Deterministic given the input shape."""

    kind: ClassVar[str] = "letterbox"
    rows: int
    cols: int
    fill: float = 0.0

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        s = min(self.rows / shape[0], self.cols / shape[1])
        # Pixel areas map onto pixel areas: p' + 0.5 = s (p + 0.5) + offset.
        off_c = (self.cols - s * shape[1]) / 2.0
        off_r = (self.rows - s * shape[0]) / 2.0
        m = np.array([[s, 0.0, s * 0.5 - 0.5 + off_c], [0.0, s, s * 0.5 - 0.5 + off_r], [0.0, 0.0, 1.0]])
        return m, (self.rows, self.cols)
