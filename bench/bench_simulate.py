"""Simulator throughput: cases per minute on this machine, with the time per stage.

Usage: .venv/bin/python bench/bench_simulate.py [--n 3] [--workers 1] [--json]
Cases use seeds from the demo range (900_700+) with the default options of `xr3d simulate`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from export.simulator.case import CaseOptions, generate_case


def _one(seed: int, out: str) -> dict[str, float]:
    t0 = time.perf_counter()
    case = generate_case(seed, Path(out), CaseOptions())
    timing = json.loads((case / "truth.json").read_text())["timing_s"]
    return {"wall": time.perf_counter() - t0, "volumes": timing["volumes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    seeds = [900_700 + k for k in range(args.n)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if args.workers == 1:
            runs = [_one(s, tmp) for s in seeds]
        else:
            with ProcessPoolExecutor(args.workers) as pool:
                runs = list(pool.map(_one, seeds, [tmp] * len(seeds)))
        wall = time.perf_counter() - t0
    res = {
        "cases": args.n,
        "workers": args.workers,
        "wall_s": round(wall, 1),
        "cases_per_minute": round(60.0 * args.n / wall, 2),
        "mean_case_s": round(sum(r["wall"] for r in runs) / len(runs), 1),
        "mean_volumes_s": round(sum(r["volumes"] for r in runs) / len(runs), 1),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        for k, v in res.items():
            print(f"{k:>18}: {v}")


if __name__ == "__main__":
    main()
