"""3D angle error of appliance.recon.bones3d with the simulator's truth labels as the reconstruction.

Each case's truth knee labels, cut to the runtime's 144 mm cube around the knee and resampled to 1 mm,
plus the long-leg film's truth reader landmarks (FHC, AC) and its recorded geometry, go through
:func:`appliance.recon.bones3d.landmarks_from_labels`; the angles are compared with truth.json's
``angles_3d``. This isolates the landmark method's error from the network's. Prints JSON: per-case
errors, MAE and max per angle, and the MAE over the coronal angles (mHKA, mLDFA, MPTA, JLCA, aHKA, JLO).

    nice -n 5 .venv/bin/python -m tools.eval_bones3d /tmp/xr3d_a2/eval/case_5100*

Seeds must be evaluation seeds (500000-899999).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from appliance.recon.bones3d import DEFAULT_DEPTH_MODEL, DEPTH_MODELS, LongLegLandmarks, landmarks_from_labels
from tools.calibrate_consistency import knee_cube
from tools.recon_sim_cases import load_case

CORONAL = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO")
OTHERS = ("condylar_twist_deg", "tibial_slope_deg", "knee_flexion_deg")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", type=Path)
    ap.add_argument("--depth-model", default=DEFAULT_DEPTH_MODEL, choices=DEPTH_MODELS)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for folder in args.cases:
        case = load_case(folder)
        seed = int(case.truth["seed"])
        if not 500000 <= seed <= 899999:
            print(f"{folder}: seed {seed} is not an evaluation seed", file=sys.stderr)  # noqa: T201
            return 2
        ll = case.truth["films"]["longleg_ap"]["landmarks_2d"]
        side = "R" if case.truth["side"] == "right" else "L"
        marks = LongLegLandmarks(case.films["longleg_ap"].geometry, tuple(ll["FHC"]), tuple(ll["AC"]))
        got = landmarks_from_labels(
            knee_cube(case).labels,
            side,
            marks,
            depth_model=args.depth_model,
        )
        truth = case.truth["angles_3d"]
        err = {k: float(got.angles.value(k) - truth[k]) for k in (*CORONAL, *OTHERS)}
        lm_err = {
            k: float(np.linalg.norm(np.asarray(got.points[k]) - np.asarray(case.truth["landmarks_3d"][k])))
            for k in got.points
        }
        rows.append({"seed": seed, "side": side, "angle_error_deg": err, "landmark_error_mm": lm_err})
        print(seed, {k: round(v, 2) for k, v in err.items()}, file=sys.stderr)  # noqa: T201
    keys = (*CORONAL, *OTHERS)
    errs = {k: np.abs([r["angle_error_deg"][k] for r in rows]) for k in keys}
    doc = {
        "seeds": [r["seed"] for r in rows],
        "depth_model": args.depth_model,
        "mae_deg": {k: float(v.mean()) for k, v in errs.items()},
        "max_abs_deg": {k: float(v.max()) for k, v in errs.items()},
        "mae_coronal_deg": float(np.mean([errs[k].mean() for k in CORONAL])),
        "landmark_mae_mm": {
            k: float(np.mean([r["landmark_error_mm"][k] for r in rows])) for k in rows[0]["landmark_error_mm"]
        },
        "rows": rows,
    }
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
