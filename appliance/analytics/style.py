"""Shared look of overlays and charts: colours that stay distinct on a grey film, number formats."""

from __future__ import annotations

from typing import Final

# Saturated colours that stay apart on any grey level and for the common red-green deficiency
# (Okabe & Ito, "Color Universal Design", 2008, adapted brighter for dark backgrounds).
FEMORAL_AXIS: Final = "#00E5FF"
TIBIAL_AXIS: Final = "#FF4FD8"
LOAD_LINE: Final = "#FFD600"
FEMORAL_JOINT: Final = "#7CFF4F"
TIBIAL_JOINT: Final = "#FF9F1A"
LANDMARK: Final = "#FF2A2A"
TEXT: Final = "#FFFFFF"
BOX: Final = "#000000"
MISSING: Final = "#B0B0B0"

FONT: Final = "DejaVu Sans"  # ships with matplotlib: same glyphs, same bytes everywhere
MONO: Final = "DejaVu Sans Mono"

# matplotlib writes its version into PNG "Software"; dropping it keeps files byte-identical.
PNG_METADATA: Final[dict[str, str | None]] = {"Software": None}


def signed(value: float, decimals: int = 1) -> str:
    """``+1.5`` / ``−3.0`` with a true minus sign, as printed in the clinical literature."""
    text = f"{value:+.{decimals}f}"
    return text.replace("-", "\u2212")


def plain(value: float, decimals: int = 1) -> str:
    return f"{value:.{decimals}f}".replace("-", "\u2212")
