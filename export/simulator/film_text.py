"""Text as pixels: masks of printed characters for rulers, lead markers and burned-in labels.

Uses the font embedded in Pillow (``ImageFont.load_default(size)``: a scalable font shipped inside the
Pillow wheel, nothing is downloaded), falling back to Pillow's built-in bitmap font, scaled with
nearest-neighbour so glyph edges stay sharp, when Pillow was built without FreeType.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont, features

from appliance.errors import InputError

log = logging.getLogger(__name__)

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class TextRecord:
    """A label the console burns into the processed image (no physical object)."""

    text: str
    row: int
    col: int
    height_px: int
    value: float  # display brightness of the glyphs
    boxed: bool  # on a black box, as many consoles print annotations


@dataclass(frozen=True)
class PaddingRecord:
    """Constant bars added around an exported film (PACS export to a fixed aspect ratio)."""

    top: int
    bottom: int
    left: int
    right: int
    value: float


_CAP_HEIGHT_PER_EM = 0.7  # capital height of the embedded font as a fraction of its size


@lru_cache(maxsize=64)
def _scalable(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _render(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, line_h: int, bold: bool) -> F32:
    lines = text.split("\n")
    width = max(1, *(int(font.getbbox(line)[2]) for line in lines))
    stroke = max(1, line_h // 12) if bold else 0
    img = Image.new("L", (width + 2 + 2 * stroke, line_h * len(lines) + 2 + 2 * stroke), 0)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text(
            (1 + stroke, 1 + stroke + i * line_h),
            line,
            fill=255,
            font=font,
            stroke_width=stroke,
            stroke_fill=255,
        )
    return (np.asarray(img, dtype=np.float32) / 255.0).astype(np.float32)


def _crop_rows(mask: F32) -> F32:
    inked = np.flatnonzero(mask.max(axis=1) > 0.05)
    return mask if inked.size == 0 else mask[inked[0] : inked[-1] + 1]


def text_mask(text: str, height_px: int, *, bold: bool = False) -> F32:
    """Coverage mask (0..1) of ``text`` whose capitals are about ``height_px`` tall; ``\\n`` splits lines.
    Rows without ink above the first and below the last line are cropped."""
    if height_px < 4:
        raise InputError("text height must be at least 4 pixels")
    if not text:
        return np.zeros((height_px, 1), np.float32)
    if features.check("freetype2"):
        size = max(4, round(height_px / _CAP_HEIGHT_PER_EM))
        return _crop_rows(_render(text, _scalable(size), round(size * 1.25), bold))
    bitmap = ImageFont.load_default_imagefont()
    small = _render(text, bitmap, 11, bold)
    scale = max(1, round(height_px / 8))  # the bitmap font's capitals are ~8 px tall
    big = np.kron(small, np.ones((scale, scale), np.float32))
    return _crop_rows(big.astype(np.float32))


def paste_max(canvas: F32, mask: F32, row: int, col: int, value: float) -> None:
    """In place: ``canvas = max(canvas, value * mask)`` over the mask placed at (row, col), clipped."""
    _blend(canvas, mask, row, col, value, np.maximum)


def paste_add(canvas: F32, mask: F32, row: int, col: int, value: float) -> None:
    """In place: ``canvas += value * mask`` over the mask placed at (row, col), clipped."""
    _blend(canvas, mask, row, col, value, np.add)


def paste_over(canvas: F32, mask: F32, row: int, col: int, value: float) -> None:
    """In place: alpha-composite ``value`` onto the canvas with the mask as coverage."""
    r0, c0 = max(row, 0), max(col, 0)
    r1 = min(row + mask.shape[0], canvas.shape[0])
    c1 = min(col + mask.shape[1], canvas.shape[1])
    if r1 <= r0 or c1 <= c0:
        return
    m = mask[r0 - row : r1 - row, c0 - col : c1 - col]
    region = canvas[r0:r1, c0:c1]
    region[...] = region * (1.0 - m) + np.float32(value) * m


def _blend(canvas: F32, mask: F32, row: int, col: int, value: float, op: np.ufunc) -> None:
    r0, c0 = max(row, 0), max(col, 0)
    r1 = min(row + mask.shape[0], canvas.shape[0])
    c1 = min(col + mask.shape[1], canvas.shape[1])
    if r1 <= r0 or c1 <= c0:
        return
    m = mask[r0 - row : r1 - row, c0 - col : c1 - col]
    region = canvas[r0:r1, c0:c1]
    region[...] = op(region, np.float32(value) * m)


def burn_text(bright: F32, t: TextRecord) -> None:
    """In place: draw ``t`` into a display-brightness image (1 = white)."""
    mask = text_mask(t.text, t.height_px)
    if t.boxed:
        pad = max(2, t.height_px // 3)
        box = np.ones((mask.shape[0] + 2 * pad, mask.shape[1] + 2 * pad), np.float32)
        paste_over(bright, box, t.row - pad, t.col - pad, 0.0)
    paste_over(bright, mask, t.row, t.col, t.value)


def pad_image(img: F32, p: PaddingRecord) -> F32:
    """The image inside constant bars; content moves by (p.left, p.top) pixels."""
    return np.pad(img, ((p.top, p.bottom), (p.left, p.right)), constant_values=np.float32(p.value))
