"""Registration recovery on simulated cases: displace the truth femur and tibia by known random rigid
motions, register them back to the case's own knee films, report what is left.

    nice -n 5 .venv/bin/python -m tools.eval_register /tmp/xr3d_a2/eval/case_51000[0-2] \
        --rot-deg 4 --shift-mm 4

The displacement of each bone is a rotation of ``--rot-deg`` about a random axis through its centroid
and a translation of ``--shift-mm`` in a random direction (numpy seed = the case seed, evaluation seeds
only). Remaining error = RMS displacement of the bone's voxels under (correction @ displacement) and the
remaining rotation angle.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from appliance.recon.register import register_bones, rigid_matrix, rms_displacement_mm
from appliance.recon.types import FEMUR, TIBIA
from tools.calibrate_consistency import knee_cube
from tools.recon_sim_cases import load_case, moved_bone


def _angle_deg(T: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(T[:3, :3]) - 1.0) / 2.0, -1.0, 1.0))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", type=Path)
    ap.add_argument("--rot-deg", type=float, default=4.0)
    ap.add_argument("--shift-mm", type=float, default=4.0)
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for folder in args.cases:
        case = load_case(folder)
        seed = int(case.truth["seed"])
        if not 500000 <= seed <= 899999:
            print(f"{folder}: seed {seed} is not an evaluation seed", file=sys.stderr)  # noqa: T201
            return 2
        rng = np.random.default_rng(seed)
        recon = knee_cube(case)
        films = [case.films["knee_ap"], case.films["knee_lat"]]
        lab = np.asarray(recon.labels.data)
        wrong: dict[int, np.ndarray] = {}
        pts: dict[int, np.ndarray] = {}
        for label in (FEMUR, TIBIA):
            p = recon.labels.index_to_mm(np.argwhere(lab == label))
            axis = rng.normal(size=3)
            direction = rng.normal(size=3)
            T = rigid_matrix(
                np.radians(args.rot_deg) * axis / np.linalg.norm(axis),
                args.shift_mm * direction / np.linalg.norm(direction),
                p.mean(axis=0),
            )
            recon = moved_bone(recon, label, T)
            wrong[label], pts[label] = T, p
        t0 = time.perf_counter()
        result = register_bones(recon, films)
        seconds = time.perf_counter() - t0
        for label, name in ((FEMUR, "femur"), (TIBIA, "tibia")):
            left = result.poses[name].matrix @ wrong[label]
            rows.append(
                {
                    "seed": seed,
                    "bone": name,
                    "start_rms_mm": rms_displacement_mm(wrong[label], pts[label]),
                    "left_rms_mm": rms_displacement_mm(left, pts[label]),
                    "left_rotation_deg": _angle_deg(left),
                    "residual_mm": result.poses[name].residual_mm,
                    "evaluations": result.poses[name].evaluations,
                    "seconds_both_bones": seconds,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)  # noqa: T201
    doc = {
        "rot_deg": args.rot_deg,
        "shift_mm": args.shift_mm,
        "max_left_rms_mm": max(r["left_rms_mm"] for r in rows),
        "max_left_rotation_deg": max(r["left_rotation_deg"] for r in rows),
        "rows": rows,
    }
    print(json.dumps(doc, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
