"""Measurement overlay on a long-leg film: axes, joint lines, landmarks and every angle where it is read.

The drawing is laid out once in film pixels (:func:`_layout`, a list of drawing operations) and then
painted straight into 8-bit RGB pixels with numpy: lines, dots and boxes are antialiased from each
pixel centre's exact distance to the shape; text is Pillow's FreeType rendering of the DejaVu fonts
that ship with matplotlib. The full-size picture is painted at the film's own pixel size (so it lies
over the film 1:1); the preview is painted from the same operations at the preview's scale onto a
downsampled film instead of shrinking the full picture. (The matplotlib figure at film size this
replaces took ~1.4 s per study; BENCHMARKS.md, "Picture rendering".)

Same inputs, same bytes: the painting is plain arithmetic, text uses Pillow's basic layout (not raqm,
which a box may or may not have) and the PNGs hold only image chunks. They are written by
:func:`write_png` with the "up" filter and zlib level 1: about the size of Pillow's level-3 file at
half the time of Pillow's fastest (its per-row adaptive filter choice dominates on a 14 MB picture).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from PIL import Image, ImageColor, ImageDraw, ImageFont

from appliance.analytics import style
from appliance.analytics.cpak import Cpak, cpak_type
from appliance.analytics.landmarks import AC, DESCRIPTIONS, FHC, FKC, LANDMARKS_2D, LDFC, LTP, MDFC, MTP, TKC
from appliance.analytics.points import FloatArray
from appliance.analytics.results import KEYS_2D, Angles2D
from appliance.errors import InputError, Xr3dError

log = logging.getLogger(__name__)

PNG_ZLIB_LEVEL: Final = 1
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_LEGEND_KEYS = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO", "MAD_mm")
# Where each landmark's name goes, in font heights along (lateral, distal).
_NAME_OFFSETS: dict[str, tuple[float, float]] = {
    MDFC: (-2.4, -0.6),
    LDFC: (2.4, -0.6),
    MTP: (-2.2, 0.8),
    LTP: (2.2, 0.8),
    FKC: (0.0, -1.1),
    TKC: (0.0, 1.2),
}
_KEY_ENTRIES: tuple[tuple[str, str, bool], ...] = (
    (style.FEMORAL_AXIS, "femoral mech. axis", False),
    (style.TIBIAL_AXIS, "tibial mech. axis", False),
    (style.LOAD_LINE, "hip–ankle line (MAD)", True),
    (style.FEMORAL_JOINT, "femoral joint line", False),
    (style.TIBIAL_JOINT, "tibial joint line", False),
)
_Corner = tuple[str, str]  # (top|bottom, left|right)
_CORNERS: tuple[_Corner, ...] = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))
_DASH = (3.7, 1.6)  # on, off in line widths (matplotlib's "--")
_ROW_CHUNK = 256  # long lines are painted in bands of rows, each only as wide as the line there
Rgb = tuple[int, int, int]
Pixels = NDArray[np.uint8]


# --- layout: what is drawn where, in film pixels ------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    p: tuple[float, float]
    q: tuple[float, float]
    width: float
    colour: str
    dashed: bool = False


@dataclass(frozen=True)
class _Dot:
    centre: tuple[float, float]
    radius: float
    colour: str
    edge: str
    edge_width: float


@dataclass(frozen=True)
class _Label:
    """Text centred on ``at``: boxed (angle values) or with a black halo (landmark names)."""

    at: tuple[float, float]
    text: str
    colour: str
    size: float
    bold: bool
    boxed: bool
    line_width: float


@dataclass(frozen=True)
class _CornerBox:
    """The value box (monospace lines) or the colour key (``lines`` empty) in a corner of the film."""

    corner: _Corner
    lines: tuple[str, ...]
    size: float
    line_width: float
    film: tuple[int, int]  # (width, height) px


_Op = _Segment | _Dot | _Label | _CornerBox


def _sample_drawing(pts: Mapping[str, FloatArray]) -> FloatArray:
    """Points along every drawn segment, to keep boxes off the drawing."""
    segments = [(FHC, AC), (FHC, FKC), (TKC, AC), (MDFC, LDFC), (MTP, LTP)]
    samples = [p for p in pts.values()]
    t = np.linspace(0.0, 1.0, 60)[:, None]
    for a, b in segments:
        if a in pts and b in pts:
            samples.extend(pts[a] + t * (pts[b] - pts[a]))
    return np.array(samples) if samples else np.zeros((0, 2))


def _best_corner(
    obstacles: FloatArray, box: tuple[float, float], image: tuple[int, int], exclude: _Corner | None
) -> tuple[_Corner, int]:
    """The corner whose (width, height) px box covers the fewest drawing samples, and that count."""
    w, h = image
    best: tuple[int, _Corner] | None = None
    for corner in _CORNERS:
        if corner == exclude:
            continue
        x0 = 0.0 if corner[1] == "left" else w - box[0]
        y0 = 0.0 if corner[0] == "top" else h - box[1]
        inside = (
            (obstacles[:, 0] >= x0)
            & (obstacles[:, 0] <= x0 + box[0])
            & (obstacles[:, 1] >= y0)
            & (obstacles[:, 1] <= y0 + box[1])
        )
        count = int(inside.sum()) if len(obstacles) else 0
        if best is None or count < best[0]:
            best = (count, corner)
    assert best is not None
    return best[1], best[0]


def _display_image(image: ArrayLike) -> Pixels:
    """8-bit grey (rows, cols) or RGB (rows, cols, 3). Grey films are windowed on robust percentiles."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if rgb.dtype == np.uint8:
            return np.ascontiguousarray(rgb)
        top = max(float(np.nanmax(rgb)), 1e-12)
        return (np.clip(np.nan_to_num(rgb.astype(np.float32) / top), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"overlay needs a 2D grey or RGB image, got shape {arr.shape}", reason="bad_image")
    grey = arr.astype(np.float32, copy=False)
    finite = np.isfinite(grey)
    if not finite.any():
        raise InputError("overlay image has no finite pixels", reason="bad_image")
    # 0.5/99.5 % keeps burned-in markers and collimator edges from flattening the bone contrast;
    # a strided sample is plenty for percentiles and keeps this fast on full-size films.
    step = max(1, int(math.sqrt(grey.size / 1_000_000)))
    sample = grey[::step, ::step]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        sample = grey[finite]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.nan_to_num(grey, nan=lo, posinf=hi, neginf=lo)  # a new array: scaled in place below
    scaled -= lo
    scaled *= 255.0 / (hi - lo)
    scaled += 0.5
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def _angle_values(
    angles: Angles2D | Mapping[str, float | None],
) -> tuple[dict[str, float | None], Cpak | None]:
    if isinstance(angles, Angles2D):
        return angles.to_dict(), angles.cpak
    values = {k: (None if angles.get(k) is None else float(angles[k])) for k in KEYS_2D if k in angles}  # type: ignore[arg-type]
    a, j = values.get("aHKA"), values.get("JLO")
    return values, cpak_type(a, j) if a is not None and j is not None else None


def _unit(v: FloatArray) -> FloatArray | None:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else None


def _legend_lines(values: Mapping[str, float | None], cpak: Cpak | None) -> list[str]:
    lines = []
    for key in _LEGEND_KEYS:
        v = values.get(key)
        name = "MAD" if key == "MAD_mm" else key
        if v is None:
            lines.append(f"{name:<6}     —")
        elif key == "MAD_mm":
            lines.append(f"{name:<6}{style.signed(v):>7} mm")
        elif key == "mHKA":
            tag = "varus" if v < 0 else ("valgus" if v > 0 else "")
            lines.append(f"{name:<6}{style.signed(v):>7}°  {tag}")
        elif key in ("JLCA", "aHKA"):
            lines.append(f"{name:<6}{style.signed(v):>7}°")
        else:
            lines.append(f"{name:<6}{style.plain(v):>7}°")
    if cpak is None:
        lines.append("CPAK       —")
    else:
        lines.append(f"CPAK  {cpak.label:>7}")
        lines.append(f"({cpak.ahka_category}, {cpak.jlo_category.replace('_', ' ')})")
    return lines


def _xy(p: FloatArray) -> tuple[float, float]:
    return float(p[0]), float(p[1])


def _layout(
    pts: Mapping[str, FloatArray],
    values: Mapping[str, float | None],
    cpak: Cpak | None,
    w: int,
    h: int,
) -> list[_Op]:
    """Every drawing operation, in painting order, in film pixels (col, row of pixel centres)."""
    size = float(max(h, w))
    # ~1.2 % of the film's long side, but at most 2 % of its width so the value box fits beside a
    # one-leg crop (about 1:3); never below 12 px.
    font_px = max(12.0, min(0.012 * size, 0.02 * w))
    lw = max(2.0, size / 700.0)
    ops: list[_Op] = []

    def line(a: str, b: str, colour: str, extend: float = 0.0, dashed: bool = False) -> None:
        if a in pts and b in pts:
            d = pts[b] - pts[a]
            ops.append(_Segment(_xy(pts[a] - extend * d), _xy(pts[b] + extend * d), lw, colour, dashed))

    line(FHC, AC, style.LOAD_LINE, dashed=True)
    line(FHC, FKC, style.FEMORAL_AXIS)
    line(TKC, AC, style.TIBIAL_AXIS)
    line(MDFC, LDFC, style.FEMORAL_JOINT, extend=0.6)
    line(MTP, LTP, style.TIBIAL_JOINT, extend=0.6)

    # Lateral and distal directions in the image, from the landmarks (as the measurement does).
    lateral = None
    for med, lat in ((MDFC, LDFC), (MTP, LTP)):
        if lateral is None and med in pts and lat in pts:
            lateral = _unit(pts[lat] - pts[med])
    top = pts.get(FHC)
    bottom = pts.get(AC)
    distal = _unit(bottom - top) if top is not None and bottom is not None else np.array([0.0, 1.0])
    if distal is None:
        distal = np.array([0.0, 1.0])
    if lateral is None:
        lateral = np.array([distal[1], -distal[0]])
    knee_names = [n for n in (FKC, TKC) if n in pts]
    knee = np.mean([pts[n] for n in knee_names], axis=0) if knee_names else None

    # MAD: the perpendicular from the knee centre to the hip-ankle line.
    if knee is not None and top is not None and bottom is not None and values.get("MAD_mm") is not None:
        u = _unit(bottom - top)
        if u is not None:
            foot = top + float((knee - top) @ u) * u
            ops.append(_Segment(_xy(knee), _xy(foot), lw, style.LOAD_LINE))

    margin = 2.5 * font_px

    def label(at: FloatArray | None, text: str, colour: str) -> None:
        if at is None:
            return
        x = float(np.clip(at[0], margin * 2, w - margin * 2))
        y = float(np.clip(at[1], margin, h - margin))
        ops.append(_Label((x, y), text, colour, font_px, bold=True, boxed=True, line_width=lw * 0.6))

    def at(name: str, lat: float, dist: float) -> FloatArray | None:
        p = pts.get(name)
        return None if p is None else p + font_px * (lat * lateral + dist * distal)

    def fmt(key: str, signed: bool = False) -> str | None:
        v = values.get(key)
        if v is None:
            return None
        return (style.signed(v) if signed else style.plain(v)) + "°"

    text = fmt("mLDFA")
    if text:
        label(at(LDFC, 4.0, -2.5), f"mLDFA {text}", style.FEMORAL_JOINT)
    text = fmt("MPTA")
    if text:
        label(at(MTP, -4.0, 2.5), f"MPTA {text}", style.TIBIAL_JOINT)
    text = fmt("JLCA", signed=True)
    if text and LDFC in pts and LTP in pts:
        label((pts[LDFC] + pts[LTP]) / 2 + font_px * 8.0 * lateral, f"JLCA {text}", style.TEXT)
    text = fmt("mHKA", signed=True)
    if text and knee is not None:
        label(knee + font_px * (-8.0 * lateral - 3.5 * distal), f"mHKA {text}", style.FEMORAL_AXIS)
    mad = values.get("MAD_mm")
    if mad is not None and knee is not None:
        label(
            knee + font_px * (-8.0 * lateral + 5.0 * distal), f"MAD {style.signed(mad)} mm", style.LOAD_LINE
        )

    # Landmarks last so they sit on top of the lines; names pushed outward so the knee stays legible.
    for name, p in pts.items():
        ops.append(_Dot(_xy(p), 0.35 * font_px, style.LANDMARK, "white", lw * 0.5))
        lat_off, dist_off = _NAME_OFFSETS.get(name, (1.6, 0.0))
        q = p + font_px * (lat_off * lateral + dist_off * distal)
        ops.append(_Label(_xy(q), name, style.TEXT, 0.8 * font_px, bold=False, boxed=False, line_width=0.0))
        log.debug("landmark %s (%s) at %s", name, DESCRIPTIONS.get(name, name), p)

    # Value box and colour key in the corners that cover the fewest landmarks and lines; shrink the
    # value box a little rather than hide a landmark under it.
    lines = _legend_lines(values, cpak)
    obstacles = _sample_drawing(pts)
    for box_scale in (1.0, 0.85, 0.7):
        value_box = (
            box_scale * (max(len(s) for s in lines) * 0.62 * font_px + font_px),
            box_scale * (len(lines) * 1.25 + 1.0) * font_px,
        )
        corner_value, hits = _best_corner(obstacles, value_box, (w, h), exclude=None)
        if hits == 0:
            break
    key_box = (22.0 * 0.75 * 0.62 * font_px + 3.0 * font_px, 5.0 * 1.3 * 0.75 * font_px + font_px)
    corner_key, _ = _best_corner(obstacles, key_box, (w, h), exclude=corner_value)
    ops.append(_CornerBox(corner_value, tuple(lines), font_px * box_scale, lw * 0.5, (w, h)))
    ops.append(_CornerBox(corner_key, (), 0.75 * font_px, lw, (w, h)))
    return ops


# --- painting: operations into 8-bit RGB pixels at a scale ----------------------------------------


@lru_cache(maxsize=1)
def _font_dir() -> Path:
    # matplotlib's own copy of DejaVu, located without importing matplotlib (a second of start-up).
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise Xr3dError("matplotlib (for its DejaVu fonts) is not installed", reason="missing_fonts")
    return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"


class _Fonts:
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


def _paint_segment(px: Pixels, seg: _Segment, s: float) -> None:
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


def _paint_dot(px: Pixels, dot: _Dot, s: float) -> None:
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


def _paint_label(px: Pixels, lab: _Label, s: float, fonts: _Fonts) -> None:
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


def _paint_corner_box(px: Pixels, cb: _CornerBox, s: float, fonts: _Fonts) -> None:
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
        seg = _Segment((x0 + pad, yc), (x0 + pad + handle, yc), cb.line_width, colour, dashed)
        _paint_segment(px, seg, s)
        _paint_text(px, (x0 + pad + handle + 0.8 * size, yc), name, font, style.TEXT, "lm", s)


def _paint(film: Pixels, ops: Sequence[_Op], s: float, fonts: _Fonts) -> Pixels:
    """RGB pixels of ``film`` (grey or RGB) with ``ops`` (film pixels) painted at scale ``s``."""
    px = np.empty((*film.shape[:2], 3), dtype=np.uint8)
    px[...] = film[..., None] if film.ndim == 2 else film
    for op in ops:
        if isinstance(op, _Segment):
            _paint_segment(px, op, s)
        elif isinstance(op, _Dot):
            _paint_dot(px, op, s)
        elif isinstance(op, _Label):
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


def render_overlay(
    image: ArrayLike,
    landmarks_2d: Mapping[str, Sequence[float] | None],
    angles: Angles2D | Mapping[str, float | None],
    out_png: str | Path,
    preview_png: str | Path | None = None,
    preview_max_px: int = 1024,
) -> None:
    """Draw the 2D measurement over ``image`` and write ``out_png`` at the image's own pixel size.

    ``landmarks_2d`` are (col, row) pixels of ``image``; ``angles`` an Angles2D or a mapping of the
    JSON keys (mHKA, mLDFA, MPTA, JLCA, aHKA, JLO, MAD_mm). ``preview_png``, if given, is the same
    drawing scaled so its longer side is at most ``preview_max_px``.
    """
    disp = _display_image(image)
    h, w = disp.shape[:2]
    pts: dict[str, FloatArray] = {}
    for name, raw in landmarks_2d.items():
        if (
            name in LANDMARKS_2D
            and raw is not None
            and np.all(np.isfinite(np.asarray(raw, dtype=np.float64)))
        ):
            pts[name] = np.asarray(raw, dtype=np.float64)[:2]
    values, cpak = _angle_values(angles)
    ops = _layout(pts, values, cpak, w, h)

    fonts = _Fonts()
    write_png(out_png, _paint(disp, ops, 1.0, fonts))
    if preview_png is not None:
        scale = min(1.0, preview_max_px / float(max(h, w)))
        small = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        film = np.asarray(Image.fromarray(disp).resize(small, Image.Resampling.LANCZOS, reducing_gap=3.0))
        # The film may round down by a pixel; the drawing uses the scale the film really got.
        s = small[0] / w if w >= h else small[1] / h
        write_png(preview_png, _paint(film, ops, s, fonts))
