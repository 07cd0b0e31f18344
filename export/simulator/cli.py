"""``xr3d simulate``: write N simulated cases (films, CT, truth) deterministically from a seed."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from appliance.errors import InputError
from export.simulator.case import CaseOptions, generate_case
from export.simulator.params import SamplingOptions
from export.simulator.views import VIEWS

log = logging.getLogger(__name__)

# Seed ranges are disjoint by purpose, so a training set can never contain an evaluation case.
SEED_RANGES = {
    "train": (0, 499_999),
    "eval": (500_000, 899_999),
    "demo": (900_000, 999_999),
}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate",
        help="render simulated lower-limb studies (DICOM films, CT, exact truth)",
        description=(
            "Build anatomical lower-limb phantoms, render the requested films (standing long-leg AP, "
            "knee AP, knee lateral) as DICOM DX with PNG previews, write the CT and label volumes as NIfTI "
            "and truth.json with every landmark and angle. Case k uses seed S+k; the same seed always "
            f"gives the same case. Seed ranges: train {SEED_RANGES['train']}, eval {SEED_RANGES['eval']}, "
            f"demo {SEED_RANGES['demo']}."
        ),
    )
    p.add_argument("--n", type=int, required=True, help="number of cases")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, required=True, help="seed of the first case")
    p.add_argument(
        "--views",
        default="longleg,knee-ap,knee-lat",
        help=f"comma-separated films to render, from {','.join(VIEWS)} (default: all)",
    )
    p.add_argument("--side", choices=("left", "right", "random"), default="random")
    p.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    p.add_argument("--max-rotation", type=float, default=20.0, help="limb rotation range +-deg (default 20)")
    p.add_argument("--max-flexion", type=float, default=15.0, help="knee flexion range 0..deg (default 15)")
    p.add_argument(
        "--robustness",
        action="store_true",
        help="turn on implants, osteophytes and sclerosis (robustness sets)",
    )
    p.add_argument("--no-ct", action="store_true", help="skip writing NIfTI CT and label volumes")
    p.add_argument("--no-contralateral", action="store_true", help="leave the other leg off long-leg films")
    p.add_argument("--longleg-pitch", type=float, default=0.35, help="long-leg detector pixel pitch, mm")
    p.add_argument("--knee-pitch", type=float, default=0.25, help="knee detector pixel pitch, mm")
    p.add_argument("--leg-spacing", type=float, default=1.0, help="voxel size of the whole-leg volume, mm")
    p.add_argument("--knee-spacing", type=float, default=0.5, help="voxel size of the knee volume, mm")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace) -> CaseOptions:
    views = tuple(v.strip() for v in str(args.views).split(",") if v.strip())
    bad = [v for v in views if v not in VIEWS]
    if bad or not views:
        raise InputError(f"unknown view(s) {bad or views}; choose from {', '.join(VIEWS)}", reason="bad_view")
    if args.n < 1:
        raise InputError("--n must be at least 1", reason="bad_argument")
    if args.seed < 0:
        raise InputError("--seed must be non-negative", reason="bad_argument")
    if args.workers < 1:
        raise InputError("--workers must be at least 1", reason="bad_argument")
    if not (0 <= args.max_rotation <= 45 and 0 <= args.max_flexion <= 30):
        raise InputError("rotation must be within 0..45 and flexion within 0..30 deg", reason="bad_argument")
    if not (0.05 <= args.longleg_pitch <= 2.0 and 0.05 <= args.knee_pitch <= 2.0):
        raise InputError("pixel pitch must be within 0.05..2 mm", reason="bad_argument")
    if not (0.25 <= args.knee_spacing <= args.leg_spacing <= 4.0):
        raise InputError("voxel sizes must satisfy 0.25 <= knee <= leg <= 4 mm", reason="bad_argument")
    rob = bool(args.robustness)
    sampling = SamplingOptions(
        side=args.side,
        max_rotation=float(args.max_rotation),
        max_flexion=float(args.max_flexion),
        implants=rob,
        osteophytes=rob,
        sclerosis=rob,
    )
    return CaseOptions(
        views=views,
        sampling=sampling,
        write_ct=not args.no_ct,
        contralateral=not args.no_contralateral,
        longleg_pitch=float(args.longleg_pitch),
        knee_pitch=float(args.knee_pitch),
        leg_spacing=float(args.leg_spacing),
        knee_spacing=float(args.knee_spacing),
    )


def run(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder: {exc.strerror}", reason="bad_output") from exc
    seeds = [args.seed + k for k in range(args.n)]
    failures = 0
    bar = tqdm(total=len(seeds), desc="simulate", unit="case", file=sys.stderr, disable=None)
    if args.workers == 1:
        for s in seeds:
            generate_case(s, out, opts)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=args.workers) as pool:
            futs = {pool.submit(generate_case, s, out, opts): s for s in seeds}
            for f in as_completed(futs):
                try:
                    f.result()
                except Exception:
                    failures += 1
                    log.exception("case with seed %d failed", futs[f])
                bar.update()
    bar.close()
    sys.stdout.write(f"wrote {len(seeds) - failures} case(s) to {out}\n")
    sys.stdout.write(summary_table(out, seeds))
    return 1 if failures else 0


def summary_table(out: Path, seeds: list[int]) -> str:
    """One line per written case: what was simulated and what a reader measures on its long-leg film."""
    lines = [
        f"{'case':<14}{'side':<7}{'CPAK':<6}{'mHKA 3D':>9}{'mHKA film':>11}{'mLDFA':>8}{'MPTA':>7}"
        f"{'rot':>6}{'flex':>6}  films"
    ]
    for s in seeds:
        tpath = out / f"case_{s}" / "truth.json"
        if not tpath.is_file():
            lines.append(f"case_{s:<9} FAILED (see log)")
            continue
        t = json.loads(tpath.read_text())
        a3, p = t["angles_3d"], t["params"]
        film = t["films"].get("longleg_ap", {}).get("angles_2d") or {}
        m2 = film.get("mHKA")
        lines.append(
            f"{'case_' + str(s):<14}{t['side']:<7}{t['cpak']['label'] if t['cpak'] else '-':<6}"
            f"{a3['mHKA']:>+9.1f}{(f'{m2:+.1f}' if m2 is not None else '-'):>11}{a3['mLDFA']:>8.1f}"
            f"{a3['MPTA']:>7.1f}{p['rotation']:>+6.0f}{p['flexion']:>6.0f}  {', '.join(sorted(t['films']))}"
        )
    return "\n".join(lines) + "\n"
