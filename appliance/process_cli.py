"""``xr3d process``: long-leg AP films -> ``OUT/<StudyInstanceUID>/`` result.json, overlay, CPAK chart."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pydicom.config

from appliance.config import load_settings
from appliance.errors import InputError
from appliance.landmarks.detector import LandmarkDetector
from appliance.process import LOW_CONFIDENCE, process_film

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``process`` subcommand to the xr3d parser."""
    p = sub.add_parser(
        "process",
        help="find landmarks on long-leg AP films and measure them (result.json, overlay, CPAK chart)",
        description=(
            "For each long-leg AP film (DICOM, or PNG/TIFF with a sidecar JSON giving pixel spacing, side "
            "and view): detect the landmarks, measure mHKA, mLDFA, MPTA, JLCA, aHKA, JLO, MAD and CPAK, and "
            "write OUT/<StudyInstanceUID>/result.json, overlay.png, overlay_preview.png and cpak_chart.png "
            "(docs/result-schema.md). A file that cannot be used is reported with its reason code and the "
            "others are still processed; the exit status is then 2."
        ),
    )
    p.add_argument("inputs", metavar="INPUT", nargs="+", type=Path, help="film file(s)")
    p.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per study)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--config", type=Path, help="TOML configuration; its [ingest] and [classify] apply")
    p.add_argument("--models", type=Path, help="folder with the landmark ONNX models (default: models/)")
    p.add_argument(
        "--low-confidence",
        type=float,
        default=LOW_CONFIDENCE,
        help=f"flag landmarks whose confidence is below this (default {LOW_CONFIDENCE})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # pydicom's validation warnings quote element values (patient names included): keep them out.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    if not 0.0 <= args.low_confidence <= 1.0:
        raise InputError("--low-confidence must be in [0, 1]", reason="bad_arguments")
    out: Path = args.out
    # Only the ingest and classify settings are used; the service folders are never touched.
    unused = out / ".xr3d-unused"
    settings = load_settings(
        args.config, overrides={k: unused / k for k in ("inbox", "outbox", "state", "quarantine")}
    )
    processed: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with LandmarkDetector(args.models) as detector:
        for path in args.inputs:
            try:
                res = process_film(path, out, settings, detector, low_confidence=args.low_confidence)
            except InputError as exc:
                failed.append({"input": str(path), "reason": exc.reason, "message": str(exc)})
                sys.stderr.write(f"xr3d process: error: {path}: {exc}\n")
                continue
            doc = res.document
            processed.append(
                {
                    "input": str(path),
                    "study_uid": res.study_uid,
                    "out_dir": str(res.out_dir),
                    "files": list(res.files),
                    "angles_2d": doc["angles_2d"],
                    "cpak": doc["cpak"],
                    "low_confidence_landmarks": doc["flags"]["low_confidence_landmarks"],
                }
            )
            if not args.json:
                a = doc["angles_2d"]
                mhka = "n/a" if a["mHKA"] is None else f"{a['mHKA']:+.1f} deg"
                cpak = doc["cpak"]["label"] if doc["cpak"] else "n/a"
                low = ", ".join(doc["flags"]["low_confidence_landmarks"]) or "none"
                review = ", ".join(doc["flags"]["implausible"])
                sys.stdout.write(
                    f"{path}: {res.out_dir}  mHKA {mhka}, CPAK {cpak}, low-confidence landmarks: {low}"
                    + (f"  NEEDS REVIEW (implausible: {review})" if review else "")
                    + "\n"
                )
    if args.json:
        sys.stdout.write(json.dumps({"processed": processed, "failed": failed}, indent=2) + "\n")
    return 2 if failed else 0
