"""Measurement overlay on a long-leg film: axes, joint lines, landmarks and every angle where it is read.

Drawn with matplotlib's Agg canvas (no pyplot state, no display) at exactly the film's pixel size,
so the overlay can be laid over the film 1:1; an optional preview is the same picture scaled down.
The annotations are drawn on a transparent layer and composited over the 8-bit film with Pillow,
whose PNGs carry no version or time stamp: the same inputs give byte-identical files.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike, NDArray
from PIL import Image

from appliance.analytics import style
from appliance.analytics.cpak import Cpak, cpak_type
from appliance.analytics.landmarks import AC, DESCRIPTIONS, FHC, FKC, LANDMARKS_2D, LDFC, LTP, MDFC, MTP, TKC
from appliance.analytics.points import FloatArray
from appliance.analytics.results import KEYS_2D, Angles2D
from appliance.errors import InputError

log = logging.getLogger(__name__)

_DPI = 100.0
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
_Corner = tuple[str, str]  # (top|bottom, left|right)
_LegendLoc = Literal["upper left", "upper right", "lower left", "lower right"]
_LEGEND_LOC: dict[_Corner, _LegendLoc] = {
    ("top", "left"): "upper left",
    ("top", "right"): "upper right",
    ("bottom", "left"): "lower left",
    ("bottom", "right"): "lower right",
}
_CORNERS: tuple[_Corner, ...] = (("top", "left"), ("top", "right"), ("bottom", "left"), ("bottom", "right"))


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


def _display_image(image: ArrayLike) -> NDArray[np.uint8]:
    """8-bit RGB for imshow. Grey films are windowed on robust percentiles.

    Handing matplotlib 8-bit RGB instead of floats through a colormap keeps a 7000 x 2500 film
    to a few hundred MB and seconds instead of gigabytes.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if rgb.dtype == np.uint8:
            return np.ascontiguousarray(rgb)
        top = max(float(np.nanmax(rgb)), 1e-12)
        return (np.clip(np.nan_to_num(rgb.astype(np.float32) / top), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"overlay needs a 2D grey or RGB image, got shape {arr.shape}", reason="bad_image")
    grey = arr.astype(np.float32)
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
    scaled = np.clip((np.nan_to_num(grey, nan=lo) - lo) * (255.0 / (hi - lo)) + 0.5, 0.0, 255.0).astype(
        np.uint8
    )
    return np.repeat(scaled[:, :, None], 3, axis=2)


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

    size = float(max(h, w))
    # ~1.2 % of the film's long side, but at most 2 % of its width so the value box fits beside a
    # one-leg crop (about 1:3); never below 12 px.
    font_px = max(12.0, min(0.012 * size, 0.02 * w))
    font_pt = font_px * 72.0 / _DPI
    lw_pt = max(2.0, size / 700.0) * 72.0 / _DPI
    halo: list[patheffects.AbstractPathEffect] = [
        patheffects.withStroke(linewidth=font_pt * 0.35, foreground="black")
    ]

    # Annotations only, on a transparent canvas; the film is composited underneath afterwards.
    # (imshow of a full-size film makes matplotlib resample it in float RGBA: ~2 GB, ~10 s.)
    # The 0.01 px keeps Agg's integer canvas from rounding a side down to one pixel short.
    fig = Figure(figsize=((w + 0.01) / _DPI, (h + 0.01) / _DPI), dpi=_DPI)
    fig.patch.set_alpha(0.0)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()

    def line(a: str, b: str, colour: str, extend: float = 0.0, dashed: bool = False) -> None:
        if a in pts and b in pts:
            p, q = pts[a], pts[b]
            d = q - p
            p2, q2 = p - extend * d, q + extend * d
            ax.plot(
                [p2[0], q2[0]],
                [p2[1], q2[1]],
                color=colour,
                lw=lw_pt,
                ls="--" if dashed else "-",
                solid_capstyle="round",
            )

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
            ax.plot([knee[0], foot[0]], [knee[1], foot[1]], color=style.LOAD_LINE, lw=lw_pt)

    margin = 2.5 * font_px

    def label(at: FloatArray | None, text: str, colour: str) -> None:
        if at is None:
            return
        x = float(np.clip(at[0], margin * 2, w - margin * 2))
        y = float(np.clip(at[1], margin, h - margin))
        ax.text(
            x,
            y,
            text,
            color=colour,
            fontsize=font_pt,
            fontfamily=style.FONT,
            fontweight="bold",
            ha="center",
            va="center",
            bbox={
                "boxstyle": "round,pad=0.25",
                "fc": style.BOX,
                "ec": colour,
                "alpha": 0.8,
                "lw": lw_pt * 0.6,
            },
        )

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
        ax.plot(
            [p[0]], [p[1]], "o", ms=font_pt * 0.7, mfc=style.LANDMARK, mec="white", mew=lw_pt * 0.5, zorder=5
        )
        lat_off, dist_off = _NAME_OFFSETS.get(name, (1.6, 0.0))
        q = p + font_px * (lat_off * lateral + dist_off * distal)
        t = ax.text(
            q[0],
            q[1],
            name,
            color=style.TEXT,
            fontsize=font_pt * 0.8,
            fontfamily=style.FONT,
            ha="center",
            va="center",
            zorder=6,
        )
        t.set_path_effects(halo)
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
    fx = {"left": 0.015, "right": 0.985}
    fy = {"top": 0.99, "bottom": 0.01}
    ax.text(
        fx[corner_value[1]],
        fy[corner_value[0]],
        "\n".join(lines),
        transform=ax.transAxes,
        color=style.TEXT,
        fontsize=font_pt * box_scale,
        fontfamily=style.MONO,
        ha=corner_value[1],
        va=corner_value[0],
        bbox={
            "boxstyle": "round,pad=0.5",
            "fc": style.BOX,
            "ec": style.TEXT,
            "alpha": 0.85,
            "lw": lw_pt * 0.5,
        },
        zorder=10,
    )
    keys = [
        Line2D([], [], color=style.FEMORAL_AXIS, lw=lw_pt, label="femoral mech. axis"),
        Line2D([], [], color=style.TIBIAL_AXIS, lw=lw_pt, label="tibial mech. axis"),
        Line2D([], [], color=style.LOAD_LINE, lw=lw_pt, ls="--", label="hip–ankle line (MAD)"),
        Line2D([], [], color=style.FEMORAL_JOINT, lw=lw_pt, label="femoral joint line"),
        Line2D([], [], color=style.TIBIAL_JOINT, lw=lw_pt, label="tibial joint line"),
    ]
    leg = ax.legend(
        handles=keys,
        loc=_LEGEND_LOC[corner_key],
        prop={"family": style.FONT, "size": font_pt * 0.75},
        facecolor=style.BOX,
        edgecolor=style.TEXT,
        framealpha=0.85,
        labelcolor=style.TEXT,
    )
    leg.set_zorder(10)

    canvas.draw()
    layer = np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[:h, :w])
    film = Image.fromarray(disp, "RGB").convert("RGBA")
    # Agg's buffer holds straight (not premultiplied) alpha, which is what alpha_composite expects.
    picture = Image.alpha_composite(film, Image.fromarray(layer, "RGBA")).convert("RGB")
    # Pillow writes no time or version chunks: identical inputs give identical bytes.
    picture.save(str(out_png), format="PNG")
    if preview_png is not None:
        scale = min(1.0, preview_max_px / size)
        small = (max(1, math.floor(w * scale)), max(1, math.floor(h * scale)))
        picture.resize(small, Image.Resampling.LANCZOS).save(str(preview_png), format="PNG")
