"""Painting drawing operations into 8-bit RGB pixels, and writing them as PNG.

The operations (:class:`Segment`, :class:`Dot`, :class:`Label`, :class:`CornerBox`) are laid out in film
pixels by the overlay (``appliance.analytics.overlay``) and painted here at any scale: lines, dots and
boxes antialiased from each pixel centre's exact distance to the shape; text with Pillow's FreeType
rendering of the DejaVu fonts that ship with matplotlib, basic layout (not raqm, which a box may or may not
have), so the same operations always give the same bytes. :func:`write_png` uses the "up" filter and zlib
level 1: about the size of Pillow's level-3 file at half the time of Pillow's fastest (its per-row adaptive
filter choice dominates on a 14 MB picture).
"""

from __future__ import annotations

import importlib.util
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageColor, ImageDraw, ImageFont

from appliance.analytics import style
from appliance.errors import Xr3dError

__all__ = [
    "PNG_ZLIB_LEVEL",
    "Corner",
    "CornerBox",
    "Dot",
    "Fonts",
    "Label",
    "Op",
    "Pixels",
    "Rgb",
    "Segment",
    "paint",
    "write_png",
]

PNG_ZLIB_LEVEL: Final = 1
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_DASH = (3.7, 1.6)  # on, off in line widths (matplotlib's "--")
_ROW_CHUNK = 256  # long lines are painted in bands of rows, each only as wide as the line there
Rgb = tuple[int, int, int]
Pixels = NDArray[np.uint8]
Corner = tuple[str, str]  # (top|bottom, left|right)
# The colour key: (colour, what it marks, dashed).
_KEY_ENTRIES: tuple[tuple[str, str, bool], ...] = (
    (style.FEMORAL_AXIS, "femoral mech. axis", False),
    (style.TIBIAL_AXIS, "tibial mech. axis", False),
    (style.LOAD_LINE, "hip–ankle line (MAD)", True),
    (style.FEMORAL_JOINT, "femoral joint line", False),
    (style.TIBIAL_JOINT, "tibial joint line", False),
)


# --- drawing operations, in film pixels -----------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    p: tuple[float, float]
    q: tuple[float, float]
    width: float
    colour: str
    dashed: bool = False


@dataclass(frozen=True)
class Dot:
    centre: tuple[float, float]
    radius: float
    colour: str
    edge: str
    edge_width: float


@dataclass(frozen=True)
class Label:
    """Text centred on ``at``: boxed (angle values) or with a black halo (landmark names)."""

    at: tuple[float, float]
    text: str
    colour: str
    size: float
    bold: bool
    boxed: bool
    line_width: float


@dataclass(frozen=True)
class CornerBox:
    """The value box (monospace lines) or the colour key (``lines`` empty) in a corner of the film."""

    corner: Corner
    lines: tuple[str, ...]
    size: float
    line_width: float
    film: tuple[int, int]  # (width, height) px


Op = Segment | Dot | Label | CornerBox


# --- painting: operations into 8-bit RGB pixels at a scale ----------------------------------------


@lru_cache(maxsize=1)
def _font_dir() -> Path:
    # matplotlib's own copy of DejaVu, located without importing matplotlib (a second of start-up).
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise Xr3dError("matplotlib (for its DejaVu fonts) is not installed", reason="missing_fonts")
    return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"


class Fonts:
    """The fonts of one rendering. Not shared between calls: a FreeType face must not be used by two
    threads at once, and the service renders studies in parallel threads."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, float], ImageFont.FreeTypeFont] = {}

    def get(self, kind: str, size: float) -> ImageFont.FreeTypeFont:
        font = self._loaded.get((kind, size))
        if font is None:
            name = {"sans": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf", "mono": "DejaVuSansMono.ttf"}[
                kind
            ]
            font = ImageFont.truetype(
                str(_font_dir() / name), size=max(1.0, size), layout_engine=ImageFont.Layout.BASIC
            )
            self._loaded[(kind, size)] = font
        return font


def _rgb(colour: str) -> Rgb:
    r, g, b = ImageColor.getrgb(colour)[:3]
    return r, g, b


def _blend(
    px: Pixels, alpha: NDArray[np.float32], x0: int, y0: int, colour: str, opacity: float = 1.0
) -> None:
    """Paint ``colour`` with coverage ``alpha`` (rows, cols in [0, 1]) at (x0, y0), clipped to the picture."""
    h, w = px.shape[:2]
    ah, aw = alpha.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + aw, w), min(y0 + ah, h)
    if cx0 >= cx1 or cy0 >= cy1:
        return
    a = alpha[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0, None] * np.float32(opacity)
    region = px[cy0:cy1, cx0:cx1]
    base = region.astype(np.float32)
    base += (np.asarray(_rgb(colour), np.float32) - base) * a
    base += 0.5
    region[...] = base.astype(np.uint8)


def _paint_segment(px: Pixels, seg: Segment, s: float) -> None:
    h, w = px.shape[:2]
    p = np.array([_at(seg.p[0], s), _at(seg.p[1], s)])
    q = np.array([_at(seg.q[0], s), _at(seg.q[1], s)])
    r = max(seg.width * s, 1.0) / 2
    d = q - p
    length = float(np.hypot(*d))
    if length < 1e-6:
        return
    pad = r + 1.0
    ylo = max(0, math.floor(min(p[1], q[1]) - pad))
    yhi = min(h, math.ceil(max(p[1], q[1]) + pad) + 1)
    on, off = (_DASH[0] * 2 * r, _DASH[1] * 2 * r) if seg.dashed else (0.0, 0.0)
    for y0 in range(ylo, yhi, _ROW_CHUNK):
        y1 = min(y0 + _ROW_CHUNK, yhi)
        # Columns the line can reach within these rows.
        if abs(d[1]) > 1e-9:
            ta, tb = sorted(((y0 - pad - p[1]) / d[1], (y1 + pad - p[1]) / d[1]))
            ta, tb = max(ta, 0.0), min(tb, 1.0)
            if ta > tb:
                continue
            xa, xb = sorted((p[0] + ta * d[0], p[0] + tb * d[0]))
        else:
            xa, xb = sorted((p[0], q[0]))
        x0, x1 = max(0, math.floor(xa - pad)), min(w, math.ceil(xb + pad) + 1)
        if x0 >= x1:
            continue
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(p[0])
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(p[1])
        along = (xs * np.float32(d[0]) + ys * np.float32(d[1])) / np.float32(length)
        t = np.clip(along, 0.0, length)
        dist = np.hypot(xs - t * np.float32(d[0] / length), ys - t * np.float32(d[1] / length))
        alpha = np.clip(np.float32(r + 0.5) - dist, 0.0, 1.0)
        if seg.dashed:
            phase = np.mod(along, np.float32(on + off))
            inside = np.where(
                phase < on, np.minimum(phase, on - phase), -np.minimum(phase - on, on + off - phase)
            )
            alpha *= np.clip(inside + np.float32(0.5), 0.0, 1.0)
        _blend(px, alpha, x0, y0, seg.colour)


def _disc_alpha(cx: float, cy: float, r: float) -> tuple[NDArray[np.float32], int, int]:
    x0, y0 = math.floor(cx - r - 1), math.floor(cy - r - 1)
    n = math.ceil(2 * r + 3)
    xs = np.arange(x0, x0 + n, dtype=np.float32)[None, :] - np.float32(cx)
    ys = np.arange(y0, y0 + n, dtype=np.float32)[:, None] - np.float32(cy)
    return np.clip(np.float32(r + 0.5) - np.hypot(xs, ys), 0.0, 1.0), x0, y0


def _paint_dot(px: Pixels, dot: Dot, s: float) -> None:
    cx, cy = _at(dot.centre[0], s), _at(dot.centre[1], s)
    edge = max(dot.edge_width * s, 0.5)
    outer, x0, y0 = _disc_alpha(cx, cy, dot.radius * s + edge / 2)
    _blend(px, outer, x0, y0, dot.edge)
    inner, x0, y0 = _disc_alpha(cx, cy, max(dot.radius * s - edge / 2, 0.5))
    _blend(px, inner, x0, y0, dot.colour)


def _paint_box(
    px: Pixels,
    box: tuple[float, float, float, float],
    radius: float,
    edge: str,
    edge_width: float,
    opacity: float,
) -> None:
    """A rounded box (x0, y0, x1, y1): black face and an ``edge`` outline, both at ``opacity``."""
    bx0, by0, bx1, by1 = box
    x0, y0 = math.floor(bx0 - edge_width - 1), math.floor(by0 - edge_width - 1)
    xs = np.arange(x0, math.ceil(bx1 + edge_width + 2), dtype=np.float32)[None, :]
    ys = np.arange(y0, math.ceil(by1 + edge_width + 2), dtype=np.float32)[:, None]
    half_w, half_h = (bx1 - bx0) / 2, (by1 - by0) / 2
    radius = min(radius, half_w, half_h)
    qx = np.abs(xs - np.float32((bx0 + bx1) / 2)) - np.float32(half_w - radius)
    qy = np.abs(ys - np.float32((by0 + by1) / 2)) - np.float32(half_h - radius)
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    sdf = outside + np.minimum(np.maximum(qx, qy), 0.0) - np.float32(radius)
    _blend(px, np.clip(np.float32(0.5) - sdf, 0.0, 1.0), x0, y0, style.BOX, opacity)
    ring = np.clip(np.float32(max(edge_width, 0.5) / 2 + 0.5) - np.abs(sdf), 0.0, 1.0)
    _blend(px, ring, x0, y0, edge, opacity)


def _at(v: float, s: float) -> float:
    """A film pixel coordinate at scale ``s`` (pixel centres: (v + 0.5) * s - 0.5)."""
    return v * s + (s - 1) / 2


def _paint_text(
    px: Pixels,
    xy: tuple[float, float],
    text: str,
    font: ImageFont.FreeTypeFont,
    colour: str,
    anchor: str,
    s: float,
    halo: int = 0,
) -> None:
    """``text`` rendered at film scale, anchored at film pixel ``xy``, and painted at scale ``s``.

    Below film scale the glyph mask is box-filtered down rather than rendered small, so the preview
    shows the full picture's letters (hinting would widen tiny text past its box) at its own size.
    """
    for fill, stroke in (((style.BOX, halo),) if halo else ()) + ((colour, 0),):
        left, top, right, bottom = (int(v) for v in font.getbbox(text, anchor=anchor, stroke_width=stroke))
        mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
        ImageDraw.Draw(mask).text(
            (-left, -top), text, font=font, fill=255, anchor=anchor, stroke_width=stroke, stroke_fill=255
        )
        x0, y0 = xy[0] + left, xy[1] + top  # the mask's corner, film pixels
        if s != 1.0:
            small = (max(1, round(mask.width * s)), max(1, round(mask.height * s)))
            mask = mask.resize(small, Image.Resampling.BOX)
        alpha = np.asarray(mask, dtype=np.float32) / np.float32(255.0)
        _blend(px, alpha, round(x0 * s), round(y0 * s), fill)


def _paint_label(px: Pixels, lab: Label, s: float, fonts: Fonts) -> None:
    font = fonts.get("bold" if lab.bold else "sans", lab.size)
    x, y = lab.at
    if lab.boxed:
        left, top, right, bottom = font.getbbox(lab.text, anchor="mm")
        pad = 0.25 * lab.size
        box = (x + left - pad, y + top - pad, x + right + pad, y + bottom + pad)
        scaled = (_at(box[0], s), _at(box[1], s), _at(box[2], s), _at(box[3], s))
        _paint_box(px, scaled, pad * s, lab.colour, lab.line_width * s, 0.8)
        _paint_text(px, (x, y), lab.text, font, lab.colour, "mm", s)
    else:
        # The halo is 0.35 font sizes wide in all (as matplotlib's stroke was): half on each side.
        _paint_text(px, (x, y), lab.text, font, lab.colour, "mm", s, halo=max(1, round(0.175 * lab.size)))


def _paint_corner_box(px: Pixels, cb: CornerBox, s: float, fonts: Fonts) -> None:
    w, h = cb.film
    size = cb.size
    if cb.lines:
        font = fonts.get("mono", size)
        pad, step = 0.5 * size, 1.2 * size
        inner_w = max(font.getlength(line) for line in cb.lines)
        inner_h = step * (len(cb.lines) - 1) + size
        gap_x, gap_y = 0.015 * w, 0.01 * h
    else:
        font = fonts.get("sans", size)
        pad, step = 0.4 * size, 1.5 * size
        handle = 2.0 * size
        inner_w = handle + 0.8 * size + max(font.getlength(e[1]) for e in _KEY_ENTRIES)
        inner_h = step * (len(_KEY_ENTRIES) - 1) + size
        gap_x = gap_y = 0.5 * size
    box_w, box_h = inner_w + 2 * pad, inner_h + 2 * pad
    x0 = gap_x if cb.corner[1] == "left" else w - gap_x - box_w
    y0 = gap_y if cb.corner[0] == "top" else h - gap_y - box_h
    box = (_at(x0, s), _at(y0, s), _at(x0 + box_w, s), _at(y0 + box_h, s))
    _paint_box(px, box, pad * s, style.TEXT, cb.line_width * s, 0.85)
    if cb.lines:
        for i, line in enumerate(cb.lines):
            _paint_text(px, (x0 + pad, y0 + pad + i * step + size / 2), line, font, style.TEXT, "lm", s)
        return
    for i, (colour, name, dashed) in enumerate(_KEY_ENTRIES):
        yc = y0 + pad + i * step + size / 2
        seg = Segment((x0 + pad, yc), (x0 + pad + handle, yc), cb.line_width, colour, dashed)
        _paint_segment(px, seg, s)
        _paint_text(px, (x0 + pad + handle + 0.8 * size, yc), name, font, style.TEXT, "lm", s)


def paint(film: Pixels, ops: Sequence[Op], s: float, fonts: Fonts) -> Pixels:
    """RGB pixels of ``film`` (grey or RGB) with ``ops`` (film pixels) painted at scale ``s``."""
    px = np.empty((*film.shape[:2], 3), dtype=np.uint8)
    px[...] = film[..., None] if film.ndim == 2 else film
    for op in ops:
        if isinstance(op, Segment):
            _paint_segment(px, op, s)
        elif isinstance(op, Dot):
            _paint_dot(px, op, s)
        elif isinstance(op, Label):
            _paint_label(px, op, s, fonts)
        else:
            _paint_corner_box(px, op, s, fonts)
    return px


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: str | Path, px: Pixels, level: int = PNG_ZLIB_LEVEL) -> None:
    """8-bit RGB (rows, cols, 3) as a PNG: every row "up"-filtered (the row above subtracted; the
    first row's "above" is zeros), one zlib stream, no ancillary chunks."""
    if px.ndim != 3 or px.shape[2] != 3 or px.dtype != np.uint8:
        raise ValueError(f"write_png takes 8-bit RGB (rows, cols, 3), got {px.dtype} {px.shape}")
    h, w = px.shape[:2]
    rows = np.ascontiguousarray(px).reshape(h, w * 3)
    raw = np.empty((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 2  # PNG filter type 2, "Up"
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 wraps modulo 256, as PNG wants
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, no interlace
    data = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw.data, level)) + _chunk(b"IEND", b"")
    Path(path).write_bytes(_PNG_SIGNATURE + data)
