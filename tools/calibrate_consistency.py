"""Calibrate the reconstruction consistency threshold on simulated evaluation cases.

Good: each case's truth knee CT + labels (cut to the runtime's 144 mm cube around the knee) against its
own knee AP and lateral films. Bad, per case: the lateral film of another patient (a mismatched
AP/lateral pair), another patient's reconstruction, the reconstruction mirrored left/right, shifted
5 mm and 10 mm, rotated 5 deg and 10 deg. The score is the worst view's gradient correlation
(:mod:`appliance.recon.consistency`). Prints JSON: every score, the ROC AUC, the threshold halfway
between the worst good and the best bad score (or, if they overlap, the one with the fewest errors),
and the error rates at that threshold and at the shipped one.

    nice -n 5 .venv/bin/python -m tools.calibrate_consistency /tmp/xr3d_a2/eval/case_5100*

With ``--network`` the good case is the shipped network's reconstruction from the case's own films (what
the runtime scores), the corruptions are applied to it, and one more bad trial is added: the network's
reconstruction *from* a mismatched AP/lateral pair, scored against that pair (what happens at runtime when
two patients' films are combined).

Seeds must be evaluation seeds (500000-899999).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from appliance.recon.consistency import ConsistencySettings, score_views
from appliance.recon.types import FilmView, Reconstruction
from tools.recon_sim_cases import SimCase, cropped, load_case, mirrored, rotated, shifted

CUBE_MM = 144.0


def knee_cube(case: SimCase) -> Reconstruction:
    lm = case.truth["landmarks_3d"]
    centre = 0.5 * (np.asarray(lm["FKC"]) + np.asarray(lm["TKC"]))
    return cropped(case.recon, centre, CUBE_MM)


def overall(recon: Reconstruction, films: list[FilmView]) -> tuple[float, dict[str, float]]:
    per_view, _ = score_views(recon, films)
    return min(per_view.values()), per_view


def roc_auc(good: list[float], bad: list[float]) -> float:
    """Probability that a random good score exceeds a random bad one (ties count half)."""
    g = np.asarray(good)[:, None]
    b = np.asarray(bad)[None, :]
    return float(((g > b).sum() + 0.5 * (g == b).sum()) / (g.size * b.size))


def choose_threshold(good: list[float], bad: list[float]) -> float:
    if min(good) > max(bad):
        return 0.5 * (min(good) + max(bad))
    cands = np.unique(np.concatenate([good, bad]))
    errors = [(np.sum(np.asarray(good) < t) + np.sum(np.asarray(bad) >= t), -t) for t in cands]
    return float(-min(errors)[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", nargs="+", type=Path, help="simulated case folders (xr3d simulate)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--network", action="store_true", help="good = the shipped network's reconstruction")
    args = ap.parse_args(argv)
    cases = [load_case(p) for p in args.cases]
    for c in cases:
        if not 500000 <= int(c.truth["seed"]) <= 899999:
            print(f"{c.folder}: seed {c.truth['seed']} is not an evaluation seed", file=sys.stderr)  # noqa: T201
            return 2
    if args.network:
        from appliance.recon.study import network_reconstructor

        cubes = [network_reconstructor({v: c.films[v] for v in ("knee_ap", "knee_lat")}) for c in cases]
    else:
        cubes = [knee_cube(c) for c in cases]
    rows: list[dict[str, object]] = []
    for i, c in enumerate(cases):
        other = (i + 1) % len(cases)
        own = [c.films["knee_ap"], c.films["knee_lat"]]
        rec = cubes[i]
        trials: list[tuple[str, bool, Reconstruction, list[FilmView]]] = [
            ("truth", True, rec, own),
            ("lateral_of_other_patient", False, rec, [c.films["knee_ap"], cases[other].films["knee_lat"]]),
            ("other_patient_recon", False, cubes[other], own),
            ("mirrored_left_right", False, mirrored(rec), own),
            ("shifted_5mm_S", False, shifted(rec, np.array([0.0, 0.0, 5.0])), own),
            ("shifted_10mm_L", False, shifted(rec, np.array([10.0, 0.0, 0.0])), own),
            ("rotated_5deg_AP_axis", False, rotated(rec, np.array([0.0, 1.0, 0.0]), 5.0), own),
            ("rotated_10deg_SI_axis", False, rotated(rec, np.array([0.0, 0.0, 1.0]), 10.0), own),
        ]
        if args.network:
            pair = {"knee_ap": c.films["knee_ap"], "knee_lat": cases[other].films["knee_lat"]}
            trials.append(
                ("recon_from_mismatched_pair", False, network_reconstructor(pair), list(pair.values()))
            )
        trials[0] = ("network" if args.network else "truth", True, rec, own)
        for name, good, r, films in trials:
            score, per_view = overall(r, films)
            rows.append(
                {"seed": c.truth["seed"], "trial": name, "good": good, "score": score, "per_view": per_view}
            )
            print(f"{c.truth['seed']} {name:28s} {score:.3f}", file=sys.stderr)  # noqa: T201
    good_s = [float(r["score"]) for r in rows if r["good"]]  # type: ignore[arg-type]
    bad_s = [float(r["score"]) for r in rows if not r["good"]]  # type: ignore[arg-type]
    thr = choose_threshold(good_s, bad_s)
    shipped = ConsistencySettings().threshold

    def rates(t: float) -> dict[str, float]:
        return {
            "threshold": round(t, 4),
            "false_reject_rate": float(np.mean(np.asarray(good_s) < t)),
            "false_accept_rate": float(np.mean(np.asarray(bad_s) >= t)),
        }

    doc = {
        "good_is": "network reconstruction" if args.network else "truth CT",
        "seeds": sorted({int(r["seed"]) for r in rows}),  # type: ignore[call-overload]
        "n_good": len(good_s),
        "n_bad": len(bad_s),
        "roc_auc": roc_auc(good_s, bad_s),
        "good_min": min(good_s),
        "good_median": float(np.median(good_s)),
        "bad_max": max(bad_s),
        "bad_median": float(np.median(bad_s)),
        "bad_max_by_trial": {
            t: max(float(r["score"]) for r in rows if r["trial"] == t)  # type: ignore[arg-type]
            for t in sorted({str(r["trial"]) for r in rows if not r["good"]})
        },
        "chosen": rates(thr),
        "shipped": rates(shipped),
        "rows": rows,
    }
    text = json.dumps(doc, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
