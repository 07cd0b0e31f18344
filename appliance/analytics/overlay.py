"""Measurement overlay on a long-leg film: axes, joint lines, landmarks and every angle where it is read.

The drawing is laid out once in film pixels (:func:`_layout`, a list of drawing operations) and then
painted straight into 8-bit RGB pixels (``appliance.analytics.paint``). The full-size picture is
painted at the film's own pixel size (so it lies over the film 1:1); the preview is painted from the
same operations at the preview's scale onto a downsampled film instead of shrinking the full picture.
(The matplotlib figure at film size this replaces took ~1.4 s per study; BENCHMARKS.md, "Picture
rendering".)

Same inputs, same bytes (see ``paint``); ``write_png`` is re-exported for the chart writers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from appliance.analytics import style
from appliance.analytics.cpak import Cpak, cpak_type
from appliance.analytics.landmarks import AC, DESCRIPTIONS, FHC, FKC, LANDMARKS_2D, LDFC, LTP, MDFC, MTP, TKC
from appliance.analytics.paint import (
    Corner,
    CornerBox,
    Dot,
    Fonts,
    Label,
    Op,
    Pixels,
    Segment,
    paint,
    write_png,
)
from appliance.analytics.points import FloatArray
from appliance.analytics.results import KEYS_2D, Angles2D
from appliance.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["render_overlay", "write_png"]

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
_CORNERS: tuple[Corner, ...] = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))


# --- layout: what is drawn where, in film pixels ------------------------------------------------


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
    obstacles: FloatArray, box: tuple[float, float], image: tuple[int, int], exclude: Corner | None
) -> tuple[Corner, int]:
    """The corner whose (width, height) px box covers the fewest drawing samples, and that count."""
    w, h = image
    best: tuple[int, Corner] | None = None
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
        if cpak.borderline:
            lines.append(f"borderline {'/'.join(cpak.borderline)}")
    return lines


def _xy(p: FloatArray) -> tuple[float, float]:
    return float(p[0]), float(p[1])


def _layout(
    pts: Mapping[str, FloatArray],
    values: Mapping[str, float | None],
    cpak: Cpak | None,
    w: int,
    h: int,
) -> list[Op]:
    """Every drawing operation, in painting order, in film pixels (col, row of pixel centres)."""
    size = float(max(h, w))
    # ~1.2 % of the film's long side, but at most 2 % of its width so the value box fits beside a
    # one-leg crop (about 1:3); never below 12 px.
    font_px = max(12.0, min(0.012 * size, 0.02 * w))
    lw = max(2.0, size / 700.0)
    ops: list[Op] = []

    def line(a: str, b: str, colour: str, extend: float = 0.0, dashed: bool = False) -> None:
        if a in pts and b in pts:
            d = pts[b] - pts[a]
            ops.append(Segment(_xy(pts[a] - extend * d), _xy(pts[b] + extend * d), lw, colour, dashed))

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
            ops.append(Segment(_xy(knee), _xy(foot), lw, style.LOAD_LINE))

    margin = 2.5 * font_px

    def label(at: FloatArray | None, text: str, colour: str) -> None:
        if at is None:
            return
        x = float(np.clip(at[0], margin * 2, w - margin * 2))
        y = float(np.clip(at[1], margin, h - margin))
        ops.append(Label((x, y), text, colour, font_px, bold=True, boxed=True, line_width=lw * 0.6))

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
        ops.append(Dot(_xy(p), 0.35 * font_px, style.LANDMARK, "white", lw * 0.5))
        lat_off, dist_off = _NAME_OFFSETS.get(name, (1.6, 0.0))
        q = p + font_px * (lat_off * lateral + dist_off * distal)
        ops.append(Label(_xy(q), name, style.TEXT, 0.8 * font_px, bold=False, boxed=False, line_width=0.0))
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
    ops.append(CornerBox(corner_value, tuple(lines), font_px * box_scale, lw * 0.5, (w, h)))
    ops.append(CornerBox(corner_key, (), 0.75 * font_px, lw, (w, h)))
    return ops


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

    fonts = Fonts()
    write_png(out_png, paint(disp, ops, 1.0, fonts))
    if preview_png is not None:
        scale = min(1.0, preview_max_px / float(max(h, w)))
        small = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        film = np.asarray(Image.fromarray(disp).resize(small, Image.Resampling.LANCZOS, reducing_gap=3.0))
        # The film may round down by a pixel; the drawing uses the scale the film really got.
        s = small[0] / w if w >= h else small[1] / h
        write_png(preview_png, paint(film, ops, s, fonts))
