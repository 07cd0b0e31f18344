"""The one-page A4 PDF report for the surgeon (matplotlib's PDF backend).

``render_report_pdf(out_pdf, result, source, images)`` draws :func:`report_content`'s content: header
with patient and study (the patient's name is printed on the page, never logged nor put in the PDF
metadata), warning banners (a reconstruction "not consistent with the films" first, in red), the angle
table with normal ranges and out-of-range values highlighted, the CPAK type and chart, the overlay
thumbnail, the reconstruction slices and reprojections with the consistency verdict when there is a
reconstruction, and a footer with the disclaimer, the sources of the ranges and the software/model
versions. ``ReportImages.from_study_dir(dir)`` finds the pictures of docs/study-outputs.md.

Deterministic: the PDF's CreationDate is the study's date/time (StudyDate/StudyTime of the source,
else ``fallback_date``, else 2000-01-01), nothing else varies, so the same inputs give the same bytes.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset

from appliance.outputs.report_content import ReportContent, report_content
from appliance.outputs.study_result import StudyResult

log = logging.getLogger(__name__)

__all__ = ["A4_INCHES", "ReportImages", "render_report_pdf", "study_datetime"]

A4_INCHES: Final = (8.27, 11.69)
THUMB_MAX_PX: Final = 900  # pictures are downsampled before embedding: a few hundred kB per page
_RED: Final = "#C00000"
_RED_BG: Final = "#FBE3E3"
_AMBER_BG: Final = "#FFF1CC"
_GREY: Final = "#555555"
_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ReportImages:
    """The pictures a report can show; any may be missing."""

    overlay: Path | None = None
    cpak_chart: Path | None = None
    recon_slices: Path | None = None
    reprojections: tuple[Path, ...] = ()

    @classmethod
    def from_study_dir(cls, study_dir: Path) -> ReportImages:
        """overlay_preview.png (else overlay.png), cpak_chart.png, recon/slices.png,
        recon/reprojection_*.png of a study folder (docs/study-outputs.md), those that exist."""
        d = Path(study_dir)

        def found(*names: str) -> Path | None:
            return next((d / n for n in names if (d / n).is_file()), None)

        return cls(
            overlay=found("overlay_preview.png", "overlay.png"),
            cpak_chart=found("cpak_chart.png"),
            recon_slices=found("recon/slices.png"),
            reprojections=tuple(sorted((d / "recon").glob("reprojection_*.png")))
            if (d / "recon").is_dir()
            else (),
        )


def study_datetime(source: Dataset | None, fallback: datetime | None = None) -> datetime:
    """StudyDate + StudyTime of ``source`` as an aware UTC datetime (DICOM gives no zone; taken as
    UTC), else ``fallback``, else 2000-01-01. Used for the PDF metadata so output is reproducible."""
    if source is not None:
        date = str(source.get("StudyDate") or "")
        time = str(source.get("StudyTime") or "").split(".")[0].ljust(6, "0")[:6]
        try:
            return datetime.strptime(date + time, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            pass
    return fallback if fallback is not None else _EPOCH


def _thumb(path: Path | None) -> NDArray[np.uint8] | None:
    if path is None:
        return None
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
            scale = THUMB_MAX_PX / max(rgb.size)
            if scale < 1:
                size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
                rgb = rgb.resize(size, Image.Resampling.LANCZOS)
            return np.asarray(rgb, dtype=np.uint8)
    except OSError:
        log.warning("report: picture %s could not be read, left out", Path(path).name)
        return None


def _image(
    fig: Figure,
    rect: tuple[float, float, float, float],
    path: Path | None,
    caption: str,
    *,
    title: bool = True,
) -> None:
    ax = fig.add_axes(rect)
    ax.set_axis_off()
    pixels = _thumb(path)
    if pixels is None:
        ax.text(0.5, 0.5, f"{caption}: not available", ha="center", va="center", fontsize=8, color=_GREY)
        return
    ax.imshow(pixels, interpolation="antialiased")
    if title:
        ax.set_title(caption, fontsize=8, pad=2)


def _header(fig: Figure, c: ReportContent) -> None:
    fig.text(0.05, 0.972, "xr3d", fontsize=16, weight="bold", va="center")
    fig.text(0.15, 0.972, c.title, fontsize=14, va="center")
    fig.text(
        0.95,
        0.972,
        "PLANNING AID - REVIEW BEFORE USE",
        fontsize=8,
        weight="bold",
        color=_RED,
        ha="right",
        va="center",
    )
    half = (len(c.header) + 1) // 2
    for n, (label, value) in enumerate(c.header):
        x = 0.05 if n < half else 0.52
        y = 0.945 - 0.016 * (n % half)
        fig.text(x, y, f"{label}:", fontsize=8, color=_GREY, va="top")
        fig.text(x + 0.11, y, value[:60], fontsize=8, va="top")


def _banners(fig: Figure, c: ReportContent, top: float) -> float:
    y = top
    for n, text in enumerate(c.banners):
        red = n == 0 and c.not_consistent
        h = 0.024
        fig.patches.append(
            Rectangle(
                (0.05, y - h),
                0.90,
                h,
                transform=fig.transFigure,
                facecolor=_RED_BG if red or text.startswith("NEEDS") else _AMBER_BG,
                edgecolor=_RED if red else "#B08000",
                linewidth=1.5 if red else 0.8,
            )
        )
        fig.text(
            0.06,
            y - h / 2,
            text[:120],
            fontsize=9 if red else 8,
            weight="bold",
            color=_RED if red else "black",
            va="center",
        )
        y -= h + 0.006
    if c.notes:
        fig.text(0.05, y - 0.004, c.notes[:150], fontsize=7.5, color=_GREY, va="top")
        y -= 0.018
    return y


def _table(ax: Axes, c: ReportContent) -> None:
    ax.set_axis_off()
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    cols = [("Value", 0.0), ("Film (2D)", 0.15)]
    if c.has_3d:
        cols.append(("3D", 0.45))
    cols.append(("Normal", 0.65 if c.has_3d else 0.60))
    n = len(c.rows) + 1
    dy = 1.0 / (n + 1)
    for name, x in cols:
        ax.text(x + 0.01, 1 - dy, name, fontsize=8.5, weight="bold", va="center")
    ax.plot([0, 1], [1 - 1.5 * dy, 1 - 1.5 * dy], color="black", linewidth=0.6)
    for i, row in enumerate(c.rows):
        y = 1 - (i + 2) * dy
        if row.out_of_range:
            ax.add_patch(Rectangle((0, y - dy / 2), 1, dy, facecolor=_RED_BG, edgecolor="none"))
        plain: dict[str, Any] = {"fontsize": 8.5, "va": "center"}
        red: dict[str, Any] = {**plain, "color": _RED, "weight": "bold"}
        ax.text(0.01, y, row.label + (" *" if row.flagged else ""), **(red if row.out_of_range else plain))
        ax.text(cols[1][1] + 0.01, y, row.value_text, **(red if row.out_of_range_2d else plain))
        if c.has_3d:
            ax.text(cols[2][1] + 0.01, y, row.value_3d_text or "-", **(red if row.out_of_range_3d else plain))
        ax.text(cols[-1][1] + 0.01, y, row.normal_text, fontsize=8, va="center", color=_GREY)
    notes = ["Red: outside the normal range."]
    if any(r.flagged for r in c.rows):
        notes.append("* depends on a flagged landmark: check on the overlay.")
    ax.text(0.01, 0.0, " ".join(notes), fontsize=7, color=_GREY, va="bottom")


def _footer(fig: Figure, c: ReportContent) -> None:
    y = 0.075
    for n, line in enumerate(c.footer):
        for part in textwrap.wrap(line, width=120 if n == 0 else 150):
            fig.text(
                0.05,
                y,
                part,
                fontsize=7.5 if n == 0 else 6.5,
                weight="bold" if n == 0 else "normal",
                color="black" if n == 0 else _GREY,
                va="top",
            )
            y -= 0.013 if n == 0 else 0.011


def render_report_pdf(
    out_pdf: Path,
    result: Mapping[str, Any] | StudyResult,
    source: Dataset | None,
    images: ReportImages = ReportImages(),
    *,
    fallback_date: datetime | None = None,
) -> Path:
    """Write the one-page report to ``out_pdf`` (module docstring) and return the path."""
    content = report_content(result, source)
    fig = Figure(figsize=A4_INCHES)
    _header(fig, content)
    y = _banners(fig, content, top=0.862)
    top = min(y, 0.862) - 0.01
    _table(fig.add_axes((0.05, top - 0.21, 0.52, 0.21)), content)
    cpak_top = top - 0.235
    fig.text(0.05, cpak_top, content.cpak_text, fontsize=9, weight="bold", va="top")
    knee = 0.0
    if content.knee_text:
        fig.text(0.05, cpak_top - 0.016, content.knee_text[:110], fontsize=7.5, va="top")
        knee = 0.014  # the chart moves down below the knee-film line
    _image(fig, (0.08, cpak_top - 0.265 - knee, 0.45, 0.245), images.cpak_chart, "CPAK chart", title=False)
    _image(fig, (0.60, cpak_top - 0.26, 0.35, top - cpak_top + 0.26), images.overlay, "Overlay (long-leg AP)")
    recon_top = cpak_top - 0.275 - knee
    if content.consistency_text is not None or images.recon_slices is not None or images.reprojections:
        fig.text(
            0.05,
            recon_top,
            content.consistency_text or "3D reconstruction",
            fontsize=9,
            weight="bold",
            color=_RED if content.not_consistent else "black",
            va="top",
        )
        bottom = 0.105
        height = recon_top - 0.04 - bottom
        _image(fig, (0.05, bottom, 0.44, height), images.recon_slices, "Reconstruction slices")
        reps: Sequence[Path | None] = images.reprojections or (None,)
        w = 0.44 / len(reps)
        for n, p in enumerate(reps):
            name = p.stem.removeprefix("reprojection_") if p is not None else ""
            _image(fig, (0.51 + n * w, bottom, w - 0.01, height), p, f"Film | reprojection {name}".strip())
    else:
        fig.text(0.05, recon_top, "No 3D reconstruction for this study.", fontsize=8, color=_GREY, va="top")
    _footer(fig, content)
    when = study_datetime(source, fallback_date)
    metadata = {
        "Title": content.pdf_title,
        "Author": "xr3d",
        "Subject": "Lower limb alignment (planning aid)",
        "Creator": content.footer[2][:200],
        "Producer": "xr3d (matplotlib)",
        "CreationDate": when,
    }
    out_pdf = Path(out_pdf)
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_pdf, format="pdf", metadata=metadata)
    log.info("report PDF written (%d rows, %d banner(s))", len(content.rows), len(content.banners))
    return out_pdf
