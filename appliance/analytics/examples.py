"""Example overlays and CPAK charts on a plain synthetic background (docs/examples).

    .venv/bin/python -m appliance.analytics.examples docs/examples

The simulator team regenerates these on simulated films; these only show the drawing style.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from appliance.analytics.angles2d import measure_2d
from appliance.analytics.angles3d import measure_3d
from appliance.analytics.cpak_chart import render_cpak_chart
from appliance.analytics.overlay import render_overlay
from appliance.analytics.synthetic import LegSpec, film_2d, leg_3d, synthetic_film

SPACING_MM = 0.5
SHAPE = (1900, 700)

# (file stem, side, leg): one of the commonest healthy phenotypes (I, V) and a valgus one (III);
# frequencies in MacDessi et al. 2021 (alignment.md).
CASES: tuple[tuple[str, str, LegSpec], ...] = (
    ("type1_varus", "R", LegSpec(mldfa=89.0, mpta=85.0, jlca=1.5)),
    ("type5_neutral", "L", LegSpec(mldfa=90.0, mpta=90.5, jlca=0.5)),
    ("type3_valgus", "R", LegSpec(mldfa=85.0, mpta=89.0, jlca=-0.5)),
)


def write_examples(out_dir: Path) -> list[Path]:
    """Render every case; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for stem, side, spec in CASES:
        origin = (400.0, 120.0) if side == "R" else (300.0, 120.0)
        lm = film_2d(spec, side, (SPACING_MM, SPACING_MM), origin_px=origin)
        angles = measure_2d(lm, SPACING_MM, side=side)
        image = synthetic_film(lm, SHAPE, SPACING_MM)
        overlay = out_dir / f"{stem}_overlay.png"
        chart = out_dir / f"{stem}_cpak.png"
        render_overlay(image, lm, angles, overlay)
        if angles.ahka is None or angles.jlo is None:
            raise RuntimeError(f"example {stem} lost aHKA/JLO: {angles.missing}")
        render_cpak_chart(angles.ahka, angles.jlo, chart)
        written += [overlay, chart]
    # One landmark file in the `xr3d measure` format, 2D and 3D, for the schema document.
    stem, side, spec = CASES[0]
    doc = {
        "side": side,
        "pixel_spacing_mm": [SPACING_MM, SPACING_MM],
        "magnification": 1.0,
        "landmarks_2d": {k: [round(v, 3) for v in p] for k, p in film_2d(spec, side, (0.5, 0.5)).items()},
        "landmarks_3d": {
            k: [round(float(v), 3) for v in p] for k, p in leg_3d(spec, side, flexion_deg=5.0).items()
        },
    }
    assert measure_3d(doc["landmarks_3d"]).mhka is not None  # type: ignore[arg-type]
    landmarks = out_dir / "example_landmarks.json"
    landmarks.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    written.append(landmarks)
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("docs/examples")
    for path in write_examples(out):
        sys.stdout.write(f"{path}  ({np.round(path.stat().st_size / 1024, 1)} KiB)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
