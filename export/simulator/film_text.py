"""Text as pixels: masks of printed characters for rulers, lead markers and burned-in labels.

Uses Pillow's built-in bitmap font (shipped inside Pillow, nothing is downloaded), scaled to the wanted
height. The blocky upscaled glyphs look like the console fonts of many CR/DR systems.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from appliance.errors import InputError

log = logging.getLogger(__name__)

F32 = NDArray[np.float32]


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default_imagefont()


def text_mask(text: str, height_px: int, *, bold: bool = False) -> F32:
    """Coverage mask (0..1) of ``text`` with capital height ``height_px``; lines split on ``\\n``."""
    if height_px < 4:
        raise InputError("text height must be at least 4 pixels")
    if not text:
        return np.zeros((height_px, 1), np.float32)
    font = _font()
    lines = text.split("\n")
    line_h = 11  # the built-in font's cell height
    width = max(1, *(int(font.getbbox(line)[2]) for line in lines))
    img = Image.new("L", (width + 2, line_h * len(lines) + 2), 0)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((1, 1 + i * line_h), line, fill=255, font=font)
    if bold:
        arr0 = np.asarray(img)
        img = Image.fromarray(np.maximum(arr0, np.roll(arr0, 1, axis=1)))
    scale = height_px / line_h
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    # Bilinear keeps the edges soft enough to look printed rather than aliased.
    out = img.resize(size, Image.Resampling.BILINEAR)
    return (np.asarray(out, dtype=np.float32) / 255.0).astype(np.float32)


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
