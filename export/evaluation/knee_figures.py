"""Example figure for docs/knee-landmarks.md: knee AP and lateral overlays of held-out simulated cases,
predicted landmarks (the runtime overlay) with the truth as small white crosses.

``python -m export.evaluation.knee_figures --data DIR --seeds S1 S2 --out docs/knee_landmarks_examples.png``
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import pydicom
from PIL import Image, ImageDraw

from appliance.landmarks.knee_detector import KneeLandmarkDetector
from appliance.landmarks.knee_overlay import render_knee_overlay
from appliance.landmarks.knee_views import KNEE_VIEWS, measure_knee_film
from engines.config import EngineConfig
from export.datasets.knee_samples import load_knee_case
from export.datasets.landmark_samples import build_index

log = logging.getLogger(__name__)

__all__ = ["example_figure", "main"]

TILE_PX = 520


def example_figure(data: Path, seeds: list[int], out: Path, models_dir: Path | None = None) -> Path:
    """One row per seed, one column per knee view; each tile the overlay at TILE_PX height."""
    index = build_index(data, "eval", seeds)
    tiles: list[list[Image.Image]] = []
    with (
        KneeLandmarkDetector(models_dir, EngineConfig(cpu_threads=1)) as det,
        tempfile.TemporaryDirectory() as tmp,
    ):
        for seed in index.seeds:
            row: list[Image.Image] = []
            for view in KNEE_VIEWS:
                case = load_knee_case(index.folder(seed), view)
                ds = pydicom.dcmread(
                    index.folder(seed) / case.truth["films"][view]["file"], stop_before_pixels=True
                )
                po = list(ds.get("PatientOrientation") or []) or None
                d = det.detect(
                    case.film.image, case.film.spacing_mm, view, side=case.side, patient_orientation=po
                )
                values = measure_knee_film(view, d.as_dict(), case.film.spacing_mm, case.magnification)
                path = Path(tmp) / f"{seed}_{view}.png"
                render_knee_overlay(case.film.image, view, d.landmarks_json(), values, path, max_px=4000)
                im = Image.open(path).convert("RGB")
                draw = ImageDraw.Draw(im)
                for p in case.landmarks:
                    draw.line([(p[0] - 4, p[1]), (p[0] + 4, p[1])], fill=(255, 255, 255))
                    draw.line([(p[0], p[1] - 4), (p[0], p[1] + 4)], fill=(255, 255, 255))
                s = TILE_PX / im.size[1]
                row.append(im.resize((round(im.size[0] * s), TILE_PX), Image.Resampling.BILINEAR))
            tiles.append(row)
    width = max(sum(t.size[0] for t in r) for r in tiles)
    canvas = Image.new("RGB", (width, TILE_PX * len(tiles)), (0, 0, 0))
    for i, r in enumerate(tiles):
        x = 0
        for t in r:
            canvas.paste(t, (x, i * TILE_PX))
            x += t.size[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG", optimize=True)
    log.info("figure %s (%d x %d)", out, *canvas.size)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models-dir", type=Path, default=None)
    a = p.parse_args(argv)
    example_figure(a.data, a.seeds, a.out, a.models_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
