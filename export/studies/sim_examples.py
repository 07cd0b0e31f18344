"""Three simulated patients for the documentation: long-leg film with the truth measurement drawn on it,
and the CPAK chart of the same film.

    .venv/bin/python -m export.studies.sim_examples --cases build/sim_examples --out docs/examples

Cases come from :func:`export.simulator.case.generate_case` with seeds 900001-900003 (the demo range)
and ``write_ct=False``; a case folder that already holds a truth.json is reused, so re-drawing the
pictures costs seconds. The overlay is drawn on the case's long-leg preview PNG, with the truth reader
landmarks (film pixels) scaled to the preview's pixels, and the values are the film's ``angles_2d``
from truth.json (measured from the same landmarks at the film's spacing and magnification).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from appliance.analytics.cpak_chart import render_cpak_chart
from appliance.analytics.overlay import render_overlay
from export.simulator.case import CaseOptions, generate_case

log = logging.getLogger(__name__)

SEEDS: tuple[int, ...] = (900001, 900002, 900003)
OPTIONS = CaseOptions(write_ct=False)
PREVIEW_MAX_PX = 1400  # longer side of the overlay picture
CHART_PX = 800
MAX_BYTES = 400_000


def ensure_case(seed: int, cases_dir: Path, opts: CaseOptions = OPTIONS) -> Path:
    """The case folder for ``seed``, generated unless it already holds a truth.json."""
    folder = cases_dir / f"case_{seed}"
    if (folder / "truth.json").is_file():
        log.info("reusing %s", folder)
        return folder
    log.info("generating case %d into %s", seed, cases_dir)
    return generate_case(seed, cases_dir, opts)


def scale_landmarks(
    landmarks: Mapping[str, Sequence[float]], film_size: tuple[int, int], image_size: tuple[int, int]
) -> dict[str, list[float]]:
    """(col, row) film pixels -> pixels of a resized copy of the film (sizes are (columns, rows)).

    Pixel centres sit at integer coordinates, so the mapping is (p + 0.5) * scale - 0.5 per axis.
    """
    sx = image_size[0] / film_size[0]
    sy = image_size[1] / film_size[1]
    return {
        name: [(float(p[0]) + 0.5) * sx - 0.5, (float(p[1]) + 0.5) * sy - 0.5]
        for name, p in landmarks.items()
    }


def _fit(image: Image.Image, max_px: int) -> Image.Image:
    scale = max_px / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def render_case(case_dir: Path, number: int, out_dir: Path) -> list[Path]:
    """Overlay and CPAK chart for one case; returns the two files."""
    doc: dict[str, Any] = json.loads((case_dir / "truth.json").read_text(encoding="utf-8"))
    film = doc["films"]["longleg_ap"]
    preview = _fit(Image.open(case_dir / film["preview"]).convert("L"), PREVIEW_MAX_PX)
    landmarks = scale_landmarks(film["landmarks_2d"], (film["columns"], film["rows"]), preview.size)
    angles = film["angles_2d"]
    out_dir.mkdir(parents=True, exist_ok=True)
    overlay = out_dir / f"sim_{number}_overlay.png"
    chart = out_dir / f"sim_{number}_cpak.png"
    render_overlay(np.asarray(preview), landmarks, angles, overlay)
    if angles.get("aHKA") is None or angles.get("JLO") is None:
        raise RuntimeError(f"case {doc['seed']}: the long-leg film has no aHKA/JLO")
    render_cpak_chart(float(angles["aHKA"]), float(angles["JLO"]), chart, size_px=CHART_PX)
    for path in (overlay, chart):
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise RuntimeError(f"{path} is {size} bytes, over the {MAX_BYTES} byte budget for docs images")
    log.info(
        "case %d (%s leg): 2D mHKA %+.2f, mLDFA %.2f, MPTA %.2f; 3D mHKA %+.2f; rotation %+.1f, flexion %.1f",
        doc["seed"],
        doc["side"],
        angles["mHKA"],
        angles["mLDFA"],
        angles["MPTA"],
        doc["angles_3d"]["mHKA"],
        doc["params"]["rotation"],
        doc["params"]["flexion"],
    )
    return [overlay, chart]


def summary(case_dir: Path) -> dict[str, Any]:
    """The numbers the docs quote for one case."""
    doc: dict[str, Any] = json.loads((case_dir / "truth.json").read_text(encoding="utf-8"))
    a2 = doc["films"]["longleg_ap"]["angles_2d"]
    return {
        "seed": doc["seed"],
        "side": doc["side"],
        "rotation_deg": doc["params"]["rotation"],
        "flexion_deg": doc["params"]["flexion"],
        "construction": doc["construction"],
        "angles_2d": {k: a2[k] for k in ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO")},
        "angles_3d": {k: doc["angles_3d"][k] for k in ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO")},
        "cpak_2d": a2.get("CPAK"),
        "cpak_3d": doc["cpak"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export.studies.sim_examples", description=__doc__)
    ap.add_argument("--cases", type=Path, default=Path("build/sim_examples"), help="case folders (kept)")
    ap.add_argument("--out", type=Path, default=Path("docs/examples"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.cases.mkdir(parents=True, exist_ok=True)
    summaries = []
    for number, seed in enumerate(SEEDS, start=1):
        folder = ensure_case(seed, args.cases)
        for path in render_case(folder, number, args.out):
            log.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1000)
        summaries.append(summary(folder))
    (args.cases / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
