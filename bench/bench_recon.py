"""Reconstruction time: films + geometry -> 144 mm HU and label cube at 1 mm (appliance.recon.infer).

    .venv/bin/python bench/bench_recon.py --case DIR/case_<seed> [--repeats 3] [--json] [--ap-only]

Reads knee_ap.dcm / knee_lat.dcm of a simulated case (``xr3d simulate``), opens the shipped models once
(through engines) and times ``Reconstructor.reconstruct`` after one warm-up; prints per-stage timings,
the number of decoded points, the backend and the 1-minute load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray

from appliance.dicomio.geometry_tags import read_geometry
from appliance.geometry.projection import ProjectionGeometry
from appliance.ingest.presentation import bone_bright_unit
from appliance.recon.infer import DEFAULT_MODELS_DIR, Reconstructor
from engines.config import EngineConfig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=Path, required=True)
    ap.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--ap-only", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    films: dict[str, tuple[NDArray[np.float32], ProjectionGeometry]] = {}
    t0 = time.perf_counter()
    for v in ("knee_ap",) if args.ap_only else ("knee_ap", "knee_lat"):
        ds = pydicom.dcmread(args.case / f"{v}.dcm")
        g = read_geometry(ds)
        if g is None:
            raise SystemExit(f"{args.case / v}.dcm has no recorded projection geometry")
        films[v] = (bone_bright_unit(ds, ds.pixel_array), g)
    t_read = time.perf_counter() - t0
    runs = []
    with Reconstructor(args.models_dir, EngineConfig(cpu_threads=args.threads)) as r:
        r.reconstruct(films)  # warm-up (session allocation)
        cpu = []
        for _ in range(args.repeats):
            c0 = time.process_time()
            res = r.reconstruct(films)
            cpu.append(round(time.process_time() - c0, 3))
            runs.append(dict(res.timings_s))
        backend, points = res.backend, res.decoded_points
    totals = [x["total"] for x in runs]
    out = {
        "case": str(args.case),
        "views": list(films),
        "read_dicom_s": round(t_read, 3),
        "total_s_median": statistics.median(totals),
        "total_s_runs": totals,
        "cpu_s_runs": cpu,
        "stages_last": runs[-1],
        "decoded_points": points,
        "backend": backend,
        "threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "nproc": os.cpu_count(),
    }
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        sys.stdout.write(
            f"reconstruction ({'+'.join(films)}): median {out['total_s_median']:.2f} s over {args.repeats} "
            f"(runs {totals}, CPU s {cpu}); stages {runs[-1]}; {points} points decoded; {backend}, "
            f"{args.threads} threads; load average {out['load_average_1min']:.1f} on {out['nproc']} CPUs\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
