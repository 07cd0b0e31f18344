"""The CPAK grid with one patient's point (MacDessi et al., Bone Joint J 2021;103-B(2):329-337).

Layout as the classification table in alignment.md and the paper's grid: aHKA across (varus left,
valgus right), JLO down the page with apex distal in the top row, so type I is top-left and IX
bottom-right. Values outside the drawn range (aHKA -10..+10, JLO 170..190) are pinned to the edge
with an arrow marker and the true numbers in the title.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from appliance.analytics import style
from appliance.analytics.cpak import (
    AHKA_VALGUS_ABOVE,
    AHKA_VARUS_BELOW,
    JLO_APEX_DISTAL_BELOW,
    JLO_APEX_PROXIMAL_ABOVE,
    ROMAN,
    cpak_type,
)
from appliance.analytics.overlay import write_png
from appliance.errors import InputError

log = logging.getLogger(__name__)

AHKA_RANGE = (-10.0, 10.0)
JLO_RANGE = (170.0, 190.0)
_CELL_COLOURS = ("#DCE9F7", "#EEF3E2", "#F7E3DC")  # varus / neutral / valgus columns, light tints
_PATIENT = "#D00000"


def render_cpak_chart(ahka: float, jlo: float, out_png: str | Path, size_px: int = 800) -> None:
    """Draw the 3x3 CPAK grid with the patient's (aHKA, JLO) and write a square PNG of ``size_px``."""
    if not (math.isfinite(ahka) and math.isfinite(jlo)):
        raise InputError("CPAK chart needs finite aHKA and JLO", reason="bad_angle")
    cpak = cpak_type(ahka, jlo)
    dpi = 100.0
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0.12, 0.11, 0.66, 0.72))
    x_edges = (AHKA_RANGE[0], AHKA_VARUS_BELOW, AHKA_VALGUS_ABOVE, AHKA_RANGE[1])
    y_edges = (JLO_RANGE[0], JLO_APEX_DISTAL_BELOW, JLO_APEX_PROXIMAL_ABOVE, JLO_RANGE[1])
    for row in range(3):
        for col in range(3):
            number = 3 * row + col + 1
            mine = number == cpak.type
            x0, x1 = x_edges[col], x_edges[col + 1]
            y0, y1 = y_edges[row], y_edges[row + 1]
            ax.add_patch(
                Rectangle(
                    (x0, y0),
                    x1 - x0,
                    y1 - y0,
                    facecolor=_CELL_COLOURS[col],
                    edgecolor="#202020" if not mine else _PATIENT,
                    lw=1.2 if not mine else 3.5,
                    zorder=1 if not mine else 2,
                )
            )
            # In the patient's cell the numeral moves to the half away from the patient's point.
            ty = (y0 + y1) / 2
            if mine:
                ty = y0 + (0.25 if jlo > ty else 0.75) * (y1 - y0)
            ax.text(
                (x0 + x1) / 2,
                ty,
                ROMAN[number - 1],
                ha="center",
                va="center",
                fontsize=30 if mine else 24,
                fontweight="bold",
                fontfamily=style.FONT,
                color=_PATIENT if mine else "#505050",
                alpha=1.0 if mine else 0.75,
                zorder=3,
            )
    ax.set_xlim(*AHKA_RANGE)
    ax.set_ylim(JLO_RANGE[1], JLO_RANGE[0])  # apex distal (low JLO) at the top, as in the table
    ax.set_xticks([-10, -6, AHKA_VARUS_BELOW, 0, AHKA_VALGUS_ABOVE, 6, 10])
    ax.set_yticks([170, 174, JLO_APEX_DISTAL_BELOW, 180, JLO_APEX_PROXIMAL_ABOVE, 186, 190])
    ax.tick_params(labelsize=12)
    ax.set_xlabel("aHKA = MPTA − mLDFA (°)     ← varus  |  valgus →", fontsize=13, fontfamily=style.FONT)
    ax.set_ylabel("JLO = MPTA + mLDFA (°)", fontsize=13, fontfamily=style.FONT)
    for col, name in enumerate(("Varus\n< −2°", "Neutral\n−2° to +2°", "Valgus\n> +2°")):
        ax.text(
            (x_edges[col] + x_edges[col + 1]) / 2,
            JLO_RANGE[0] - 0.4,
            name,
            ha="center",
            va="bottom",
            fontsize=12,
            fontfamily=style.FONT,
        )
    for row, name in enumerate(("Apex distal\n< 177°", "Neutral\n177–183°", "Apex proximal\n> 183°")):
        ax.text(
            AHKA_RANGE[1] + 0.4,
            (y_edges[row] + y_edges[row + 1]) / 2,
            name,
            ha="left",
            va="center",
            fontsize=12,
            fontfamily=style.FONT,
        )

    x = min(max(ahka, AHKA_RANGE[0]), AHKA_RANGE[1])
    y = min(max(jlo, JLO_RANGE[0]), JLO_RANGE[1])
    outside = (x, y) != (ahka, jlo)
    # Off the chart, the marker points toward where the patient really lies (JLO grows downward).
    if ahka != x:
        marker = "<" if ahka < x else ">"
    elif jlo != y:
        marker = "^" if jlo < y else "v"
    else:
        marker = "o"
    ax.plot([x], [y], marker=marker, ms=18, mfc=_PATIENT, mec="white", mew=2.5, zorder=5, clip_on=False)
    fig.suptitle(
        f"CPAK type {cpak.label}  —  aHKA {style.signed(ahka)}°, JLO {style.plain(jlo)}°"
        + ("  (outside chart)" if outside else ""),
        fontsize=16,
        fontweight="bold",
        fontfamily=style.FONT,
        y=0.985,
    )
    fig.text(
        0.5,
        0.925,
        f"{cpak.ahka_category}, {cpak.jlo_category.replace('_', ' ')}; boundaries count as neutral",
        ha="center",
        fontsize=12,
        fontfamily=style.FONT,
        color="#303030",
    )
    # The same pixels as savefig, written by the overlay's fast PNG writer (up filter, zlib level 1).
    canvas.draw()
    write_png(out_png, np.asarray(canvas.buffer_rgba())[..., :3])
