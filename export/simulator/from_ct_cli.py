"""``xr3d simulate-ct``: render DICOM films from a clinic's own CT (see docs/simulate-from-ct.md)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any

from appliance.errors import InputError
from export.simulator.from_ct import DEFAULT_PITCH_MM, render_from_ct
from export.simulator.views import VIEWS

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "simulate-ct",
        help=(
            "render DICOM films from a real CT (NIfTI or DICOM series) for training on a clinic's own data"
        ),
        description=(
            "Project a real CT (a .nii/.nii.gz file or a folder holding one DICOM CT series) with the "
            "simulator's projector, X-ray physics, film artefacts and DICOM writer: knee AP, knee lateral "
            "and, if the CT reaches from hip to ankle, the standing long-leg AP. Writes DICOM DX films, PNG "
            "previews and truth.json (geometry, exposure, artefacts and the exact projection of every "
            "landmark given with --landmarks) into OUT/ct_<fingerprint>_<seed>. The same CT and seed always "
            "give the same films. Negative coordinates need the '=' form: --knee-centre=-12.5,40,610."
        ),
    )
    p.add_argument("--ct", type=Path, required=True, help="CT: NIfTI file or DICOM series folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (created)")
    p.add_argument("--seed", type=int, required=True, help="seed of the acquisition and noise draws")
    p.add_argument(
        "--views",
        default="knee-ap,knee-lat",
        help=f"comma-separated films, from {','.join(VIEWS)} (default: knee-ap,knee-lat)",
    )
    p.add_argument("--side", choices=("left", "right"), required=True, help="which knee the CT shows")
    p.add_argument(
        "--knee-centre",
        metavar="X,Y,Z",
        help="knee joint centre in LPS mm (default: FKC/TKC midpoint of --landmarks, else CT centre)",
    )
    p.add_argument(
        "--landmarks",
        type=Path,
        metavar="FILE",
        help='JSON of landmarks in LPS mm, {"FKC": [x, y, z], "TKC": [...], ...}; FKC and TKC required',
    )
    p.add_argument(
        "--remove-table",
        action="store_true",
        help="keep only the largest connected body component above -500 HU (drops the CT couch)",
    )
    p.add_argument(
        "--longleg-pitch",
        type=float,
        default=DEFAULT_PITCH_MM["longleg"],
        help="long-leg detector pixel pitch, mm",
    )
    p.add_argument(
        "--knee-pitch", type=float, default=DEFAULT_PITCH_MM["knee-ap"], help="knee detector pixel pitch, mm"
    )
    p.set_defaults(func=run)


def parse_views(text: str) -> tuple[str, ...]:
    views = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in views if v not in VIEWS]
    if bad or not views or len(set(views)) != len(views):
        raise InputError(
            f"unknown or repeated view(s) in {text!r}; choose from {', '.join(VIEWS)}", reason="bad_view"
        )
    return views


def parse_point(text: str) -> tuple[float, float, float]:
    parts = [s.strip() for s in text.split(",")]
    try:
        values = [float(s) for s in parts]
    except ValueError as exc:
        raise InputError(f"--knee-centre must be X,Y,Z in mm, got {text!r}", reason="bad_argument") from exc
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InputError(
            f"--knee-centre must be three finite numbers X,Y,Z, got {text!r}", reason="bad_argument"
        )
    return values[0], values[1], values[2]


def run(args: argparse.Namespace) -> int:
    views = parse_views(str(args.views))
    if args.seed < 0:
        raise InputError("--seed must be non-negative", reason="bad_argument")
    knee = parse_point(args.knee_centre) if args.knee_centre is not None else None
    pitch = {
        "longleg": float(args.longleg_pitch),
        "knee-ap": float(args.knee_pitch),
        "knee-lat": float(args.knee_pitch),
    }
    out = render_from_ct(
        args.ct,
        args.out,
        seed=int(args.seed),
        views=views,
        side=str(args.side),
        knee_centre_mm=knee,
        landmarks_path=args.landmarks,
        pitch_mm={k: v for k, v in pitch.items() if k in views},
        remove_table=bool(args.remove_table),
    )
    sys.stdout.write(f"wrote {len(views)} film(s) to {out}\n")
    return 0
