"""Augmentation for the landmark model, in the TorchIO pattern: sample a record, then apply it.

Every random transform first draws its parameters into a frozen, JSON-serialisable record
(``sample_*(rng, ...) -> record``); ``apply(image, landmarks, record)`` then applies the record
deterministically to a float image in [0, 1] (1 = bone bright) *and* to the landmark coordinates
(column, row; pixel centres at integers), so the image and its targets can never drift apart. A
:class:`Compose` record holds the whole chain: store ``compose.to_dict()`` next to a training sample and
``apply(image, landmarks, Compose.from_dict(d))`` reproduces it bit for bit (noise transforms carry their
own seed). Landmarks that leave the image or are covered by a blank border / text box are flagged in
``visible``, never dropped.

Which transforms and why: docs/augmentation.md (real films: ../shared/reference/films.md).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final, Protocol, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image
from scipy import ndimage

from appliance.errors import InputError
from export.simulator.film_text import paste_over, text_mask

log = logging.getLogger(__name__)

__all__ = [
    "AffineRecord",
    "AugmentConfig",
    "Augmented",
    "BlurRecord",
    "BorderRecord",
    "ClaheRecord",
    "Compose",
    "CropRecord",
    "EqualizeRecord",
    "FlipRecord",
    "GammaRecord",
    "GaussianNoiseRecord",
    "GridLinesRecord",
    "InvertRecord",
    "JpegRecord",
    "LetterboxRecord",
    "LowResolutionRecord",
    "PadRecord",
    "PoissonNoiseRecord",
    "QuantizeRecord",
    "Record",
    "SeamRecord",
    "SigmoidRecord",
    "TextBoxRecord",
    "UnsharpRecord",
    "WindowRecord",
    "apply",
    "clahe",
    "compose_of",
    "crop_stage_config",
    "equalize",
    "record_from_dict",
    "sample_affine",
    "sample_augmentation",
    "sample_blur",
    "sample_border",
    "sample_clahe",
    "sample_flip",
    "sample_gamma",
    "sample_gaussian_noise",
    "sample_grid_lines",
    "sample_jpeg",
    "sample_low_resolution",
    "sample_marker",
    "sample_one_leg_crop",
    "sample_pad",
    "sample_poisson_noise",
    "sample_seam",
    "sample_sigmoid",
    "sample_text",
    "sample_unsharp",
    "sample_window",
    "transform_points",
    "visible_in",
    "warp_affine",
    "warp_mask",
]

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


# --- pixel records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowRecord(_PixelOp):
    """A new VOI window: [low, high] -> [0, 1], clipped (window/level changes of viewers and exports)."""

    kind: ClassVar[str] = "window"
    low: float
    high: float

    def pixels(self, image: F32) -> F32:
        return (image - np.float32(self.low)) / np.float32(max(self.high - self.low, 1e-6))


@dataclass(frozen=True)
class GammaRecord(_PixelOp):
    kind: ClassVar[str] = "gamma"
    gamma: float

    def pixels(self, image: F32) -> F32:
        return np.power(np.clip(image, 0.0, 1.0), np.float32(self.gamma))


@dataclass(frozen=True)
class SigmoidRecord(_PixelOp):
    """A console-style S-shaped tone curve, normalised so 0 -> 0 and 1 -> 1."""

    kind: ClassVar[str] = "sigmoid"
    slope: float
    centre: float

    def pixels(self, image: F32) -> F32:
        k, c = self.slope, self.centre
        lo, hi = 1.0 / (1.0 + np.exp(k * c)), 1.0 / (1.0 + np.exp(-k * (1.0 - c)))
        y = 1.0 / (1.0 + np.exp(np.float32(-k) * (image - np.float32(c))))
        return ((y - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)


@dataclass(frozen=True)
class InvertRecord(_PixelOp):
    """MONOCHROME1-style inversion (a PNG export that kept the stored polarity: bone dark)."""

    kind: ClassVar[str] = "invert"

    def pixels(self, image: F32) -> F32:
        return np.float32(1.0) - image


@dataclass(frozen=True)
class GaussianNoiseRecord(_PixelOp):
    kind: ClassVar[str] = "gaussian_noise"
    sigma: float
    seed: int

    def pixels(self, image: F32) -> F32:
        rng = np.random.default_rng(self.seed)
        return image + np.float32(self.sigma) * rng.standard_normal(image.shape, dtype=np.float32)


@dataclass(frozen=True)
class PoissonNoiseRecord(_PixelOp):
    """Quantum noise of a low-dose film: brightness x is read as attenuation, N = photons exp(-a x)
    counts are drawn, and x' = -ln(N' / photons) / a. Bone (bright, few photons) gets noisier than
    soft tissue, as on a real radiograph."""

    kind: ClassVar[str] = "poisson_noise"
    photons: float
    attenuation: float
    seed: int

    def pixels(self, image: F32) -> F32:
        rng = np.random.default_rng(self.seed)
        lam = self.photons * np.exp(-self.attenuation * image.astype(np.float64))
        counts = np.maximum(rng.poisson(lam), 0.5)
        return (-np.log(counts / self.photons) / self.attenuation).astype(np.float32)


@dataclass(frozen=True)
class BlurRecord(_PixelOp):
    kind: ClassVar[str] = "blur"
    sigma_px: float

    def pixels(self, image: F32) -> F32:
        return np.asarray(ndimage.gaussian_filter(image, self.sigma_px, mode="nearest"), np.float32)


@dataclass(frozen=True)
class UnsharpRecord(_PixelOp):
    """Unsharp-mask edge enhancement: x + amount (x - G_sigma x)."""

    kind: ClassVar[str] = "unsharp"
    sigma_px: float
    amount: float

    def pixels(self, image: F32) -> F32:
        low = ndimage.gaussian_filter(image, self.sigma_px, mode="nearest")
        return (image + np.float32(self.amount) * (image - low)).astype(np.float32)


def _bin_index(image: F32, bins: int) -> NDArray[np.intp]:
    return np.clip((np.clip(image, 0.0, 1.0) * bins).astype(np.intp), 0, bins - 1)


def equalize(image: ArrayLike, bins: int = 256) -> F32:
    """Global histogram equalisation: each value maps to its cumulative frequency."""
    img = np.asarray(image, dtype=np.float32)
    q = _bin_index(img, bins)
    cdf = np.cumsum(np.bincount(q.ravel(), minlength=bins)).astype(np.float64)
    cdf /= max(cdf[-1], 1.0)
    return cdf[q].astype(np.float32)


def _tile_lut(hist: NDArray[np.int64], clip_limit: float) -> F64:
    bins = hist.size
    n = float(hist.sum())
    if n == 0:
        return np.linspace(0.0, 1.0, bins)
    limit = max(1.0, clip_limit * n / bins)
    h = np.minimum(hist.astype(np.float64), limit)
    h += (n - h.sum()) / bins  # redistribute the clipped excess evenly
    cdf = np.cumsum(h)
    return np.asarray(cdf / cdf[-1], dtype=np.float64)


def clahe(image: ArrayLike, tiles: tuple[int, int] = (8, 8), clip_limit: float = 2.0, bins: int = 256) -> F32:
    """Contrast-limited adaptive histogram equalisation (Zuiderveld, Graphics Gems IV, 1994).

    The image is split into ``tiles`` (rows, cols); each tile's histogram is clipped at ``clip_limit``
    times the mean bin count and the excess spread evenly; every pixel then maps through the four nearest
    tiles' cumulative histograms, bilinearly weighted by its distance to their centres."""
    img = np.asarray(image, dtype=np.float32)
    rows, cols = img.shape
    ty, tx = max(1, min(int(tiles[0]), rows)), max(1, min(int(tiles[1]), cols))
    q = _bin_index(img, bins)
    re = np.linspace(0, rows, ty + 1).astype(int)
    ce = np.linspace(0, cols, tx + 1).astype(int)
    luts = np.empty((ty, tx, bins), np.float64)
    for i in range(ty):
        for j in range(tx):
            block = q[re[i] : re[i + 1], ce[j] : ce[j + 1]]
            luts[i, j] = _tile_lut(np.bincount(block.ravel(), minlength=bins), clip_limit)

    def axis_weights(edges: NDArray[Any], n: int) -> tuple[NDArray[np.intp], NDArray[np.intp], F64]:
        centres = (edges[:-1] + edges[1:]) / 2.0 - 0.5
        f = np.interp(np.arange(n), centres, np.arange(centres.size, dtype=np.float64))
        i0 = np.floor(f).astype(np.intp)
        i1 = np.minimum(i0 + 1, centres.size - 1)
        return i0, i1, f - i0

    y0, y1, wy = axis_weights(re, rows)
    x0, x1, wx = axis_weights(ce, cols)
    wy2, wx2 = wy[:, None], wx[None, :]
    out = (
        (1 - wy2) * (1 - wx2) * luts[y0[:, None], x0[None, :], q]
        + (1 - wy2) * wx2 * luts[y0[:, None], x1[None, :], q]
        + wy2 * (1 - wx2) * luts[y1[:, None], x0[None, :], q]
        + wy2 * wx2 * luts[y1[:, None], x1[None, :], q]
    )
    return out.astype(np.float32)


@dataclass(frozen=True)
class ClaheRecord(_PixelOp):
    kind: ClassVar[str] = "clahe"
    tiles_rows: int
    tiles_cols: int
    clip_limit: float
    bins: int = 256

    def pixels(self, image: F32) -> F32:
        return clahe(image, (self.tiles_rows, self.tiles_cols), self.clip_limit, self.bins)


@dataclass(frozen=True)
class EqualizeRecord(_PixelOp):
    kind: ClassVar[str] = "equalize"
    bins: int = 256

    def pixels(self, image: F32) -> F32:
        return equalize(image, self.bins)


@dataclass(frozen=True)
class QuantizeRecord(_PixelOp):
    """Rounding to ``bits`` (8-bit PNG/JPEG exports)."""

    kind: ClassVar[str] = "quantize"
    bits: int = 8

    def pixels(self, image: F32) -> F32:
        m = float(2**self.bits - 1)
        return (np.rint(np.clip(image, 0.0, 1.0) * m) / m).astype(np.float32)


@dataclass(frozen=True)
class JpegRecord(_PixelOp):
    """8-bit JPEG encode/decode at ``quality`` (Pillow/libjpeg: deterministic for a given build)."""

    kind: ClassVar[str] = "jpeg"
    quality: int

    def pixels(self, image: F32) -> F32:
        u8 = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(u8).save(buf, format="JPEG", quality=int(self.quality))
        buf.seek(0)
        with Image.open(buf) as im:
            return (np.asarray(im.convert("L"), dtype=np.float32) / 255.0).astype(np.float32)


@dataclass(frozen=True)
class LowResolutionRecord(_PixelOp):
    """Downsample by ``factor`` (anti-aliased) and interpolate back to the same grid: a film exported
    at ``factor`` x the current pixel size. Pixel areas are preserved, so landmarks do not move."""

    kind: ClassVar[str] = "low_resolution"
    factor: float

    def pixels(self, image: F32) -> F32:
        f = float(self.factor)
        if f <= 1.0:
            return image.copy()
        rows, cols = image.shape
        small = (max(1, int(np.ceil(rows / f))), max(1, int(np.ceil(cols / f))))
        # Small pixel q covers original [f q - 0.5, f (q + 1) - 0.5): p = f q + (f - 1) / 2.
        down = np.array([[1 / f, 0, -(f - 1) / (2 * f)], [0, 1 / f, -(f - 1) / (2 * f)], [0, 0, 1]])
        lo = warp_affine(image, down, small, mode="nearest")
        return warp_affine(lo, np.linalg.inv(down), (rows, cols), antialias=False, mode="nearest")


# --- film artefact records ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BorderRecord(_Base):
    """Collimation-like blank borders (the console's electronic shutter): bands of ``value`` inside the
    image, in pixels from each edge. Landmarks under a band are hidden."""

    kind: ClassVar[str] = "border"
    top: int
    bottom: int
    left: int
    right: int
    value: float

    def transform(self, s: Augmented) -> Augmented:
        img = s.image.copy()
        rows, cols = img.shape
        v = np.float32(self.value)
        img[: max(self.top, 0)] = v
        img[rows - max(self.bottom, 0) :] = v
        img[:, : max(self.left, 0)] = v
        img[:, cols - max(self.right, 0) :] = v
        c, r = s.landmarks[:, 0], s.landmarks[:, 1]
        with np.errstate(invalid="ignore"):
            inside = (
                (c >= self.left - 0.5)
                & (c <= cols - self.right - 0.5)
                & (r >= self.top - 0.5)
                & (r <= rows - self.bottom - 0.5)
            )
        return Augmented(img, s.landmarks.copy(), s.visible & inside)


@dataclass(frozen=True)
class TextBoxRecord(_Base):
    """Burned-in annotation or lead side marker: glyphs of brightness ``value`` at (row, col), capitals
    ``height_px`` tall, optionally on a black box. Landmarks under the text's bounding box (or its black
    box) are hidden."""

    kind: ClassVar[str] = "text"
    text: str
    row: int
    col: int
    height_px: int
    value: float
    boxed: bool
    bold: bool = False

    def _box(self, mask_shape: Shape) -> tuple[int, int, int, int]:
        pad = max(2, self.height_px // 3) if self.boxed else 0
        return self.row - pad, self.col - pad, mask_shape[0] + 2 * pad, mask_shape[1] + 2 * pad

    def transform(self, s: Augmented) -> Augmented:
        img = s.image.copy()
        mask = text_mask(self.text, max(4, self.height_px), bold=self.bold)
        r0, c0, h, w = self._box(cast(Shape, mask.shape))
        if self.boxed:
            paste_over(img, np.ones((h, w), np.float32), r0, c0, 0.0)
        paste_over(img, mask, self.row, self.col, self.value)
        c, r = s.landmarks[:, 0], s.landmarks[:, 1]
        with np.errstate(invalid="ignore"):
            covered = (c >= c0 - 0.5) & (c <= c0 + w - 0.5) & (r >= r0 - 0.5) & (r <= r0 + h - 0.5)
        return Augmented(_clip01(img), s.landmarks.copy(), s.visible & ~covered)


@dataclass(frozen=True)
class GridLinesRecord(_PixelOp):
    """The stripe shadow of a stationary anti-scatter grid: x (1 - amplitude (1 + cos) / 2) along
    columns (``vertical``) or rows, with a period in pixels (aliased, so often a coarse moire)."""

    kind: ClassVar[str] = "grid"
    period_px: float
    vertical: bool
    amplitude: float
    phase: float

    def pixels(self, image: F32) -> F32:
        n = image.shape[1] if self.vertical else image.shape[0]
        prof = 1.0 - self.amplitude * 0.5 * (
            1.0 + np.cos(2 * np.pi * np.arange(n) / self.period_px + self.phase)
        )
        p = prof.astype(np.float32)
        return image * (p[None, :] if self.vertical else p[:, None])


@dataclass(frozen=True)
class SeamRecord(_PixelOp):
    """Stitching seams: each zone between ``seam_rows`` gets its own gain and offset (intensity steps
    between exposures), and a thin line of ``line_gain`` marks each seam."""

    kind: ClassVar[str] = "seam"
    seam_rows: tuple[int, ...]
    gains: tuple[float, ...]
    offsets: tuple[float, ...]
    line_px: int
    line_gain: float

    def pixels(self, image: F32) -> F32:
        if len(self.gains) != len(self.seam_rows) + 1 or len(self.offsets) != len(self.gains):
            raise InputError("a seam record needs one gain and one offset per zone")
        out = image.copy()
        bounds = [0, *sorted(self.seam_rows), image.shape[0]]
        for k, (a, b) in enumerate(itertools.pairwise(bounds)):
            out[a:b] = out[a:b] * np.float32(self.gains[k]) + np.float32(self.offsets[k])
        for seam in self.seam_rows:
            lo = max(0, seam - self.line_px // 2)
            out[lo : lo + self.line_px] *= np.float32(self.line_gain)
        return out


# --- compose, serialisation, apply --------------------------------------------------------------------
@dataclass(frozen=True)
class Compose(_Base):
    """An ordered chain of records: the complete, replayable description of one augmented sample."""

    kind: ClassVar[str] = "compose"
    transforms: tuple[Record, ...] = ()

    def transform(self, s: Augmented) -> Augmented:
        for t in self.transforms:
            s = t.transform(s)
        return s

    def matrix(self, shape: Shape) -> tuple[F64, Shape]:
        m, cur = np.eye(3), (int(shape[0]), int(shape[1]))
        for t in self.transforms:
            mt, cur = t.matrix(cur)
            m = mt @ m
        return m, cur

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "transforms": [t.to_dict() for t in self.transforms]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Compose:
        rec = record_from_dict(d)
        if not isinstance(rec, Compose):
            raise InputError(f"expected a compose record, got {d.get('kind')!r}", reason="bad_augmentation")
        return rec


_RECORDS: Final[Mapping[str, type]] = MappingProxyType(
    {
        cls.kind: cls
        for cls in (
            AffineRecord,
            FlipRecord,
            CropRecord,
            PadRecord,
            LetterboxRecord,
            WindowRecord,
            GammaRecord,
            SigmoidRecord,
            InvertRecord,
            GaussianNoiseRecord,
            PoissonNoiseRecord,
            BlurRecord,
            UnsharpRecord,
            ClaheRecord,
            EqualizeRecord,
            QuantizeRecord,
            JpegRecord,
            LowResolutionRecord,
            BorderRecord,
            TextBoxRecord,
            GridLinesRecord,
            SeamRecord,
        )
    }
)


def record_from_dict(d: Mapping[str, Any]) -> Record:
    """Rebuild any record (including a :class:`Compose`) from its ``to_dict()``."""
    kind = d.get("kind")
    if kind == Compose.kind:
        return Compose(tuple(record_from_dict(t) for t in d.get("transforms", ())))
    cls = _RECORDS.get(str(kind))
    if cls is None:
        raise InputError(f"unknown augmentation record kind {kind!r}", reason="bad_augmentation")
    fields = {f.name for f in dataclasses.fields(cls)}
    body = {k: v for k, v in d.items() if k != "kind"}
    if not set(body) <= fields:
        raise InputError(
            f"{cls.__name__}: unknown fields {sorted(set(body) - fields)}", reason="bad_augmentation"
        )
    return cast(Record, cls(**{k: _tuplify(v) for k, v in body.items()}))


def apply(
    image: ArrayLike, landmarks: ArrayLike, record: Record, visible: ArrayLike | None = None
) -> Augmented:
    """Apply ``record`` to a float image in [0, 1] and its (N, 2) (col, row) landmarks.

    ``visible`` (default: inside the image) is and-ed with what the transforms leave visible.
    Deterministic: the same inputs and record give bit-identical outputs."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise InputError(f"image must be 2D, got shape {img.shape}")
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2).copy()
    vis = visible_in(lm, cast(Shape, img.shape))
    if visible is not None:
        vis &= np.asarray(visible, dtype=bool).reshape(-1)
    out = record.transform(Augmented(_clip01(img), lm, vis))
    log.debug("augmented %s -> %s with %s", img.shape, out.image.shape, record.kind)
    return out


# --- sampling -----------------------------------------------------------------------------------------
def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def sample_affine(
    rng: np.random.Generator,
    shape: Shape,
    max_angle_deg: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_shift_frac: float = 0.05,
) -> AffineRecord:
    return AffineRecord(
        angle_deg=float(rng.uniform(-max_angle_deg, max_angle_deg)),
        scale=float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1])))),
        shift_col=float(rng.uniform(-max_shift_frac, max_shift_frac) * shape[1]),
        shift_row=float(rng.uniform(-max_shift_frac, max_shift_frac) * shape[0]),
        fill=0.0,
    )


def sample_flip(rng: np.random.Generator, p: float = 0.5) -> FlipRecord:
    return FlipRecord(horizontal=bool(rng.random() < p))


def sample_one_leg_crop(
    rng: np.random.Generator,
    shape: Shape,
    landmarks: ArrayLike,
    visible: ArrayLike | None = None,
    half_width_frac: tuple[float, float] = (0.2, 0.35),
    max_trim_frac: float = 0.03,
) -> CropRecord:
    """A "one leg per image" export: columns around the measured leg (the landmarks' mean column),
    slightly trimmed at top and bottom."""
    rows, cols = shape
    p = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    ok = np.all(np.isfinite(p), axis=1)
    if visible is not None:
        ok &= np.asarray(visible, dtype=bool).reshape(-1)
    centre = float(np.mean(p[ok, 0])) if ok.any() else (cols - 1) / 2.0
    centre += float(rng.uniform(-0.05, 0.05) * cols)
    half = float(rng.uniform(*half_width_frac) * cols)
    left = max(0, round(centre - half))
    right = min(cols, round(centre + half))
    top = int(rng.uniform(0.0, max_trim_frac) * rows)
    bottom = rows - int(rng.uniform(0.0, max_trim_frac) * rows)
    return CropRecord(top=top, left=left, height=max(1, bottom - top), width=max(1, right - left), fill=0.0)


def sample_pad(rng: np.random.Generator, shape: Shape, max_frac: float = 0.1) -> PadRecord:
    r, c = shape
    t, b = (int(rng.uniform(0, max_frac) * r) for _ in range(2))
    lf, rt = (int(rng.uniform(0, max_frac) * c) for _ in range(2))
    return PadRecord(top=t, bottom=b, left=lf, right=rt, value=float(rng.choice([0.0, 0.0, 1.0])))


def sample_border(rng: np.random.Generator, shape: Shape, max_frac: float = 0.08) -> BorderRecord:
    r, c = shape
    return BorderRecord(
        top=int(rng.uniform(0, max_frac) * r),
        bottom=int(rng.uniform(0, max_frac) * r),
        left=int(rng.uniform(0, max_frac) * c),
        right=int(rng.uniform(0, max_frac) * c),
        value=float(rng.choice([0.0, 0.0, 1.0])),
    )


_LABELS: Final = ("STANDING AP", "LONG LEG", "WB", "ERECT", "STITCHED", "FULL LEG", "AP", "120 cm", "PACS")


def sample_text(rng: np.random.Generator, shape: Shape, pixel_mm: float) -> TextBoxRecord:
    """Console annotation in the top or bottom margin band: capitals 3-10 mm tall (burned-in labels of
    real films; larger than the simulator's 3-7 mm because exports often rescale the overlay)."""
    r, c = shape
    h = max(5, round(float(rng.uniform(3.0, 10.0)) / pixel_mm))
    label = str(rng.choice(_LABELS))
    if rng.random() < 0.3:
        label += f"\n{int(rng.integers(60, 95))} kV"
    band = rng.uniform(0.0, 0.08) if rng.random() < 0.5 else rng.uniform(0.88, 0.97)
    return TextBoxRecord(
        text=label,
        row=int(band * r),
        col=int(rng.uniform(0.0, 0.8) * c),
        height_px=h,
        value=float(rng.uniform(0.8, 1.0)),
        boxed=bool(rng.random() < 0.4),
    )


def sample_marker(rng: np.random.Generator, shape: Shape, pixel_mm: float) -> TextBoxRecord:
    """A lead L/R side marker (8-20 mm letters, as in the simulator): bold, bright, near the top."""
    r, c = shape
    return TextBoxRecord(
        text=str(rng.choice(["L", "R", "LT", "RT"])),
        row=int(rng.uniform(0.0, 0.2) * r),
        col=int(rng.uniform(0.0, 0.9) * c),
        height_px=max(5, round(float(rng.uniform(8.0, 20.0)) / pixel_mm)),
        value=1.0,
        boxed=False,
        bold=True,
    )


def sample_grid_lines(rng: np.random.Generator) -> GridLinesRecord:
    return GridLinesRecord(
        period_px=float(rng.uniform(2.2, 8.0)),
        vertical=bool(rng.random() < 0.7),
        amplitude=float(rng.uniform(0.02, 0.08)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
    )


def sample_seam(rng: np.random.Generator, shape: Shape) -> SeamRecord:
    rows = shape[0]
    n = int(rng.choice([2, 3]))
    seams = tuple(int(rows * (k / n + rng.uniform(-0.05, 0.05))) for k in range(1, n))
    return SeamRecord(
        seam_rows=seams,
        gains=tuple(float(np.exp(rng.normal(0.0, 0.06))) for _ in range(n)),
        offsets=tuple(float(rng.normal(0.0, 0.03)) for _ in range(n)),
        line_px=int(rng.integers(1, 4)),
        line_gain=float(rng.uniform(0.8, 1.25)),
    )


def sample_window(rng: np.random.Generator) -> WindowRecord:
    return WindowRecord(low=float(rng.uniform(-0.1, 0.15)), high=float(rng.uniform(0.85, 1.1)))


def sample_gamma(rng: np.random.Generator, lo: float = 0.6, hi: float = 1.6) -> GammaRecord:
    return GammaRecord(gamma=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))


def sample_sigmoid(rng: np.random.Generator) -> SigmoidRecord:
    return SigmoidRecord(slope=float(rng.uniform(2.0, 8.0)), centre=float(rng.uniform(0.35, 0.65)))


def sample_gaussian_noise(rng: np.random.Generator, max_sigma: float = 0.04) -> GaussianNoiseRecord:
    return GaussianNoiseRecord(sigma=float(rng.uniform(0.003, max_sigma)), seed=_seed(rng))


def sample_poisson_noise(rng: np.random.Generator) -> PoissonNoiseRecord:
    return PoissonNoiseRecord(
        photons=float(np.exp(rng.uniform(np.log(300.0), np.log(30000.0)))),
        attenuation=float(rng.uniform(2.0, 4.0)),
        seed=_seed(rng),
    )


def sample_blur(rng: np.random.Generator, max_sigma_px: float = 1.5) -> BlurRecord:
    return BlurRecord(sigma_px=float(rng.uniform(0.3, max_sigma_px)))


def sample_unsharp(rng: np.random.Generator) -> UnsharpRecord:
    return UnsharpRecord(sigma_px=float(rng.uniform(1.0, 4.0)), amount=float(rng.uniform(0.2, 1.5)))


def sample_clahe(rng: np.random.Generator) -> ClaheRecord:
    t = int(rng.integers(4, 13))
    return ClaheRecord(
        tiles_rows=t, tiles_cols=max(2, t // 2), clip_limit=float(rng.uniform(1.5, 4.0)), bins=256
    )


def sample_jpeg(rng: np.random.Generator) -> JpegRecord:
    return JpegRecord(quality=int(rng.integers(40, 96)))


def sample_low_resolution(
    rng: np.random.Generator, pixel_mm: float, target_mm: tuple[float, float] = (1.0, 2.0)
) -> LowResolutionRecord:
    """Export resolution of 1-2 mm per pixel (issue 4, films.md) for an image at ``pixel_mm``."""
    return LowResolutionRecord(factor=max(1.0, float(rng.uniform(*target_mm)) / pixel_mm))


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities of each transform in :func:`sample_augmentation` (ranges: the ``sample_*``)."""

    p_affine: float = 0.8
    max_angle_deg: float = 10.0
    p_flip: float = 0.5
    p_seam: float = 0.3
    p_grid: float = 0.15
    p_border: float = 0.3
    max_texts: int = 3
    p_marker: float = 0.5
    p_blur: float = 0.3
    p_gaussian_noise: float = 0.4
    p_poisson_noise: float = 0.3
    p_unsharp: float = 0.3
    p_window: float = 0.5
    p_gamma: float = 0.5
    p_sigmoid: float = 0.3
    p_one_leg_crop: float = 0.3  # whole films; crop_stage_config() turns it off
    p_pad: float = 0.2
    p_clahe: float = 0.3
    p_equalize: float = 0.1
    p_low_resolution: float = 0.4
    p_invert: float = 0.05
    p_quantize: float = 0.5
    p_jpeg: float = 0.3


def crop_stage_config() -> AugmentConfig:
    """The preset for high-resolution joint crops: no one-leg crop (the crop already holds one joint),
    less padding, fewer texts and markers (at 0.5 mm/px a marker fills a quarter of the crop, and
    annotations sit in the film's margins, rarely over a joint); everything else as for whole films."""
    return dataclasses.replace(AugmentConfig(), p_one_leg_crop=0.0, p_pad=0.1, max_texts=1, p_marker=0.2)


def sample_augmentation(
    rng: np.random.Generator,
    shape: Shape,
    landmarks: ArrayLike,
    *,
    pixel_mm: float,
    config: AugmentConfig | None = None,
    out_shape: Shape | None = None,
) -> Compose:
    """Sample one chain in the order things happen to a real film: patient pose on the detector
    (rotation/scale/shift, mirror), film artefacts (seams, grid, shutter, text, markers), detector and
    console (blur, noise, edge enhancement, window and tone curves), then export (one-leg crop, padding,
    equalisation, low resolution, inversion, 8-bit, JPEG) and finally a letterbox to ``out_shape``."""
    cfg = config or AugmentConfig()
    cur: Shape = (int(shape[0]), int(shape[1]))
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    ts: list[Record] = []

    def add(t: Record) -> None:
        nonlocal cur, pts
        m, cur = t.matrix(cur)
        pts = transform_points(m, pts)
        ts.append(t)

    if rng.random() < cfg.p_affine:
        add(sample_affine(rng, cur, cfg.max_angle_deg))
    if rng.random() < cfg.p_flip:
        add(FlipRecord(True))
    if rng.random() < cfg.p_seam:
        add(sample_seam(rng, cur))
    if rng.random() < cfg.p_grid:
        add(sample_grid_lines(rng))
    if rng.random() < cfg.p_border:
        add(sample_border(rng, cur))
    for _ in range(int(rng.integers(0, cfg.max_texts + 1))):
        add(sample_text(rng, cur, pixel_mm))
    if rng.random() < cfg.p_marker:
        add(sample_marker(rng, cur, pixel_mm))
    if rng.random() < cfg.p_blur:
        add(sample_blur(rng))
    if rng.random() < cfg.p_gaussian_noise:
        add(sample_gaussian_noise(rng))
    if rng.random() < cfg.p_poisson_noise:
        add(sample_poisson_noise(rng))
    if rng.random() < cfg.p_unsharp:
        add(sample_unsharp(rng))
    if rng.random() < cfg.p_window:
        add(sample_window(rng))
    if rng.random() < cfg.p_gamma:
        add(sample_gamma(rng))
    if rng.random() < cfg.p_sigmoid:
        add(sample_sigmoid(rng))
    if rng.random() < cfg.p_one_leg_crop:
        add(sample_one_leg_crop(rng, cur, pts, visible_in(pts, cur)))
    if rng.random() < cfg.p_pad:
        add(sample_pad(rng, cur))
    if rng.random() < cfg.p_clahe:
        add(sample_clahe(rng))
    elif rng.random() < cfg.p_equalize:
        add(EqualizeRecord())
    if rng.random() < cfg.p_low_resolution:
        low = sample_low_resolution(rng, pixel_mm)
        if low.factor > 1.05:  # already as coarse as an export: nothing to do
            add(low)
    if rng.random() < cfg.p_invert:
        add(InvertRecord())
    if rng.random() < cfg.p_quantize:
        add(QuantizeRecord(8))
    if rng.random() < cfg.p_jpeg:
        add(sample_jpeg(rng))
    if out_shape is not None and cur != (int(out_shape[0]), int(out_shape[1])):
        add(LetterboxRecord(int(out_shape[0]), int(out_shape[1])))
    return Compose(tuple(ts))


def warp_mask(mask: ArrayLike, record: Record) -> NDArray[np.bool_]:
    """A label mask (e.g. a projected bone mask) through the geometry of ``record``: nearest-neighbour
    resampling with the record's total (col, row) affine; pixel-value transforms do not touch it."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"mask must be 2D, got shape {m.shape}")
    mat, out_shape = record.matrix(cast(Shape, m.shape))
    out = warp_affine(m.astype(np.float32), mat, out_shape, fill=0.0, order=0, antialias=False)
    return np.asarray(out > 0.5, dtype=np.bool_)


def compose_of(records: Sequence[Record]) -> Compose:
    """A :class:`Compose` of ``records`` (flattening nested ones)."""
    flat: list[Record] = []
    for r in records:
        flat.extend(r.transforms if isinstance(r, Compose) else (r,))
    return Compose(tuple(flat))
