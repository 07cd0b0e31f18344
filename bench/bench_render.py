"""Picture rendering benchmark: the overlay (film size + preview) and the CPAK chart of one long-leg film.

Times exactly what ``appliance.process.render_pictures`` does for a study, on a real film and the
landmarks the pipeline found on it (``result.json`` of ``xr3d process``), so the figure is the service's
``render`` stage without detection. Make the inputs with (demo seed 900001):

    nice -n 5 .venv/bin/xr3d simulate --n 1 --seed 900001 --views longleg --no-ct --no-contralateral \
        --out /tmp/xr3d_f/sim
    .venv/bin/xr3d process /tmp/xr3d_f/sim/case_900001/longleg_ap.dcm --out /tmp/xr3d_f/out
    .venv/bin/python bench/bench_render.py /tmp/xr3d_f/sim/case_900001/longleg_ap.dcm /tmp/xr3d_f/out/*/

Prints the median of ``--repeat`` runs of each part and the files' sizes.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("film", type=Path, help="the long-leg AP DICOM")
    ap.add_argument("study_dir", type=Path, help="xr3d process output folder with result.json")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    from appliance.analytics.angles2d import measure_2d
    from appliance.analytics.cpak_chart import render_cpak_chart
    from appliance.analytics.overlay import render_overlay
    from appliance.config import load_settings
    from appliance.ingest.reader import read_film
    from appliance.process import OVERLAY_FILE, OVERLAY_PREVIEW_FILE, PREVIEW_MAX_PX, film_image01

    t_import = time.perf_counter() - t0
    doc = json.loads((args.study_dir / "result.json").read_text())
    with tempfile.TemporaryDirectory() as unused:
        # Only the ingest settings are read; the service folders are never created.
        dirs = {k: Path(unused) / k for k in ("inbox", "outbox", "state", "quarantine")}
        film = read_film(args.film, load_settings(None, overrides=dirs))
    image = film_image01(args.film, film)
    lm = {k: [v["col"], v["row"]] for k, v in doc["landmarks"].items() if v is not None}
    spacing = tuple(doc["input"]["detector_spacing_mm"])
    angles = measure_2d(lm, spacing, float(doc["input"]["magnification"] or 1.0), film.side or None)
    assert angles.ahka is not None and angles.jlo is not None

    overlay_s: list[float] = []
    chart_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for _ in range(args.repeat):
            t = time.perf_counter()
            render_overlay(image, lm, angles, out / OVERLAY_FILE, out / OVERLAY_PREVIEW_FILE, PREVIEW_MAX_PX)
            overlay_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            render_cpak_chart(angles.ahka, angles.jlo, out / "cpak_chart.png")
            chart_s.append(time.perf_counter() - t)
        sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    med_o, med_c = statistics.median(overlay_s), statistics.median(chart_s)
    print(f"machine: {platform.machine()} {platform.processor() or ''} python {sys.version.split()[0]}")
    print(f"film {image.shape[1]} x {image.shape[0]} px, {args.repeat} repeats (median s)")
    print(f"first import of the renderers: {t_import:.2f} s")
    print(f"overlay (film size + preview): {med_o:.3f}  (min {min(overlay_s):.3f})")
    print(f"CPAK chart:                    {med_c:.3f}  (min {min(chart_s):.3f})")
    print(f"render total:                  {med_o + med_c:.3f}")
    print("files: " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in sizes.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
