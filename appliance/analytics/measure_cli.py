"""``xr3d measure``: alignment angles and CPAK from a landmark file."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from appliance.analytics.io import format_table, load_measure_input, measure, measurement_to_json
from appliance.errors import InputError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``measure`` subcommand to the xr3d parser."""
    p = sub.add_parser(
        "measure",
        help="alignment angles (mHKA, mLDFA, MPTA, JLCA, aHKA, JLO, MAD) and CPAK from a landmark file",
        description=(
            "Measure knee alignment from a landmark file with keys side, pixel_spacing_mm, magnification, "
            "landmarks_2d ({name: [col, row]} pixels on an AP long-leg film) and/or landmarks_3d "
            "({name: [x, y, z]} LPS mm). See docs/measure-schema.md. mHKA < 0 is varus."
        ),
    )
    p.add_argument("landmarks", metavar="LANDMARKS.json", help="landmark file (JSON)")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON document")
    p.add_argument("--strict", action="store_true", help="fail (exit 2) if any value cannot be measured")
    p.add_argument("--cpak-chart", metavar="PNG", help="also draw the CPAK chart of the patient to PNG")
    p.add_argument("--overlay", metavar="PNG", help="also draw the 2D measurement over --image to PNG")
    p.add_argument("--image", metavar="FILM", help="film image for --overlay (PNG/JPEG/TIFF via Pillow)")
    p.set_defaults(func=run)


def _load_image(path: str) -> Any:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            # Grey (8/16/32-bit, float) and RGB go through as they are; palette, bilevel and
            # grey+alpha images become RGB so the overlay sees what a viewer shows.
            if im.mode not in ("L", "I;16", "I;16B", "I;16L", "I", "F", "RGB", "RGBA"):
                return np.asarray(im.convert("RGB"))
            return np.asarray(im)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such image", reason="file_not_found") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not an image Pillow can read", reason="bad_image") from exc


def run(args: argparse.Namespace) -> int:
    inp = load_measure_input(args.landmarks)
    result = measure(inp, strict=args.strict)
    if args.overlay or args.image:
        if not (args.overlay and args.image):
            raise InputError("--overlay and --image go together", reason="bad_arguments")
        if result.angles_2d is None or inp.landmarks_2d is None:
            raise InputError("--overlay needs landmarks_2d in the file", reason="no_landmarks")
        from appliance.analytics.overlay import render_overlay

        render_overlay(_load_image(args.image), inp.landmarks_2d, result.angles_2d, args.overlay)
    if args.cpak_chart:
        cpak, _ = result.cpak
        a = result.angles_2d if result.angles_2d is not None and result.angles_2d.cpak else result.angles_3d
        if cpak is None or a is None or a.ahka is None or a.jlo is None:
            raise InputError("--cpak-chart needs aHKA and JLO, which could not be measured", reason="no_cpak")
        from appliance.analytics.cpak_chart import render_cpak_chart

        render_cpak_chart(a.ahka, a.jlo, args.cpak_chart)
    if args.json:
        sys.stdout.write(json.dumps(measurement_to_json(result), indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(format_table(result, title=f"xr3d measure: {args.landmarks}"))
    return 0
