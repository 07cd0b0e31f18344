"""Augmentation records, part 2: pixel-value records (windowing, noise, blur, histogram, compression,
resolution) and film-artefact records (borders, text boxes, grid lines, seams). The public face is
:mod:`export.datasets.augment`."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image
from scipy import ndimage

from appliance.errors import InputError
from export.datasets.aug_records import (
    F32,
    F64,
    Augmented,
    Shape,
    _Base,
    _clip01,
    _PixelOp,
    warp_affine,
)
from export.simulator.film_text import paste_over, text_mask


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
