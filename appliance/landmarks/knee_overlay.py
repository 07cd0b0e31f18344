"""A knee film with its detected landmarks, the lines they define and the measured values (PNG).

Knee AP: femoral joint line MDFC-LDFC, tibial joint line MTP-LTP, knee centres, JLCA. Knee lateral:
medial plateau line MTPA-MTPP, tibial axis TKC-TAX, femoral axis FAX-FKC, slope and flexion.
Low-confidence landmarks are drawn in orange with their confidence. Drawn at the film's own size,
longer side capped at ``max_px`` (knee films are ~1000 x 1200 px).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw

from appliance.landmarks.knee_views import KNEE_AP

log = logging.getLogger(__name__)

__all__ = ["render_knee_overlay"]

_LINES: Final = {
    KNEE_AP: (("MDFC", "LDFC"), ("MTP", "LTP")),
    "knee_lat": (("MTPA", "MTPP"), ("TKC", "TAX"), ("FAX", "FKC")),
}
_LABELS: Final = {
    "JLCA": "JLCA",
    "tibial_slope_deg": "posterior tibial slope",
    "knee_flexion_deg": "knee flexion",
}
OK_RGB: Final = (60, 220, 90)
LOW_RGB: Final = (255, 150, 0)
LINE_RGB: Final = (80, 170, 255)


def _grey8(image: ArrayLike) -> Image.Image:
    a = np.asarray(image, dtype=np.float32)
    lo, hi = (
        float(v)
        for v in np.percentile(a[:: max(1, a.shape[0] // 512), :: max(1, a.shape[1] // 512)], [0.5, 99.5])
    )
    if hi <= lo:
        hi = lo + 1.0
    g = np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(g, mode="L").convert("RGB")


def render_knee_overlay(
    image: ArrayLike,
    view: str,
    landmarks: Mapping[str, Mapping[str, float | bool]],
    values: Mapping[str, float | None],
    path: Path,
    *,
    max_px: int = 1200,
) -> Path:
    """Write the overlay of ``landmarks`` (name -> col, row, confidence, low_confidence) on ``image``."""
    im = _grey8(image)
    s = min(1.0, max_px / max(im.size))
    if s < 1.0:
        im = im.resize(
            (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.BILINEAR
        )
    draw = ImageDraw.Draw(im)
    r = max(3, round(0.006 * max(im.size)))
    width = max(1, r // 2)

    def xy(n: str) -> tuple[float, float] | None:
        p = landmarks.get(n)
        if p is None:
            return None
        x, y = float(p["col"]) * s, float(p["row"]) * s
        return (x, y) if np.isfinite(x) and np.isfinite(y) else None

    for a, b in _LINES.get(view, ()):
        pa, pb = xy(a), xy(b)
        if pa is not None and pb is not None:
            draw.line([pa, pb], fill=LINE_RGB, width=width)
    for n, p in landmarks.items():
        q = xy(n)
        if q is None:
            continue
        low = bool(p.get("low_confidence", False))
        colour = LOW_RGB if low else OK_RGB
        draw.ellipse([q[0] - r, q[1] - r, q[0] + r, q[1] + r], outline=colour, width=width)
        text = f"{n} {float(p.get('confidence', 0.0)):.2f}" if low else n
        draw.text((q[0] + r + 2, q[1] - r - 2), text, fill=colour)
    lines = [f"{view.replace('_', ' ')}"]
    for k, v in values.items():
        lines.append(f"{_LABELS.get(k, k)}: " + ("not measured" if v is None else f"{v:+.1f} deg"))
    draw.rectangle([4, 4, 250, 8 + 14 * len(lines)], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((8, 6 + 14 * i), line, fill=(255, 255, 255))
    path = Path(path)
    im.save(path, format="PNG")
    log.debug("knee overlay written (%d x %d)", im.size[0], im.size[1])
    return path
