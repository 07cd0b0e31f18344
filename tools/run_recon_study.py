"""Run appliance.recon.study.reconstruct_study on a simulated case with the truth CT as the
"reconstruction" (the 144 mm cube the runtime reconstructs; ``--network``: the shipped network
instead), print the result.json parts and timings.

    nice -n 5 .venv/bin/python -m tools.run_recon_study /tmp/xr3d_a2/eval/case_510000 /tmp/xr3d_a2/study

``--shift-mm X Y Z`` / ``--rotate-si-deg A`` move the truth volume to show a failing consistency check.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from appliance.recon.study import reconstruct_study
from appliance.recon.types import FilmView, Reconstruction
from tools.calibrate_consistency import knee_cube
from tools.recon_sim_cases import load_case, rotated, shifted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shift-mm", type=float, nargs=3)
    ap.add_argument("--network", action="store_true", help="use the shipped network instead of the truth")
    ap.add_argument("--rotate-si-deg", type=float, help="rotate the volume about S-I through its centre")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    case = load_case(args.case)
    recon = knee_cube(case)
    if args.shift_mm:
        recon = shifted(recon, np.asarray(args.shift_mm, dtype=np.float64))
    if args.rotate_si_deg:
        recon = rotated(recon, np.array([0.0, 0.0, 1.0]), args.rotate_si_deg)
    ll = case.truth["films"]["longleg_ap"]["landmarks_2d"]
    landmarks_2d = {"longleg_ap": {k: {"col": v[0], "row": v[1]} for k, v in ll.items()}}

    def reconstructor(views: dict[str, FilmView]) -> Reconstruction:
        return recon

    args.out.mkdir(parents=True, exist_ok=True)
    result = reconstruct_study(
        dict(case.films),
        args.out,
        side="R" if case.truth["side"] == "right" else "L",
        landmarks_2d=landmarks_2d,
        reconstructor=None if args.network else reconstructor,  # type: ignore[arg-type]
    )
    doc = {**result.to_json(), "notes": list(result.notes), "timings_s": dict(result.timings_s)}
    doc["truth_angles_3d"] = case.truth["angles_3d"]
    print(json.dumps(doc, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
