"""``xr3d process``: long-leg AP and knee AP / lateral films -> ``OUT/<StudyInstanceUID>/`` result.json,
overlays, CPAK chart (one folder per study; appliance/process_batch.py)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydicom.config

from appliance.config import load_settings
from appliance.errors import InputError
from appliance.landmarks.detector import LandmarkDetector
from appliance.landmarks.knee_confidence import KNEE_LOW_CONFIDENCE
from appliance.pipeline.knee import KneeDetectorHolder
from appliance.process import LOW_CONFIDENCE, ProcessResult
from appliance.process_batch import process_films

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``process`` subcommand to the xr3d parser."""
    p = sub.add_parser(
        "process",
        help="find landmarks on long-leg AP and knee films and measure them (result.json, overlays, CPAK)",
        description=(
            "For each long-leg AP film (DICOM, or PNG/TIFF/JPEG with a sidecar JSON giving pixel spacing, "
            "side and view): detect the landmarks, measure mHKA, mLDFA, MPTA, JLCA, aHKA, JLO, MAD and CPAK, "
            "and write OUT/<StudyInstanceUID>/result.json, overlay.png, overlay_preview.png and "
            "cpak_chart.png. Knee AP / lateral films are measured with the knee landmark model (JLCA; "
            "posterior tibial slope and flexion) into the same study folder: knee_films in result.json and "
            "knee_overlay_<view>.png (docs/result-schema.md). A file that cannot be used is reported with "
            "its reason code and the others are still processed; the exit status is then 2."
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
    p.add_argument(
        "--knee-low-confidence",
        type=float,
        default=KNEE_LOW_CONFIDENCE,
        help=f"the same for knee AP / lateral film landmarks (default {KNEE_LOW_CONFIDENCE})",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # pydicom's validation warnings quote element values (patient names included): keep them out.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    for name in ("low_confidence", "knee_low_confidence"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise InputError(f"--{name.replace('_', '-')} must be in [0, 1]", reason="bad_arguments")
    out: Path = args.out
    # Only the ingest and classify settings are used; the service folders are never touched.
    unused = out / ".xr3d-unused"
    settings = load_settings(
        args.config, overrides={k: unused / k for k in ("inbox", "outbox", "state", "quarantine")}
    )
    with LandmarkDetector(args.models) as detector:
        knees = KneeDetectorHolder(args.models)
        batch = process_films(
            args.inputs,
            out,
            settings,
            detector,
            knees,
            low_confidence=args.low_confidence,
            knee_low_confidence=args.knee_low_confidence,
        )
    failed = [{"input": str(f.input), "reason": f.reason, "message": f.message} for f in batch.failures]
    for f in batch.failures:
        sys.stderr.write(f"xr3d process: error: {f.input}: {f.message}\n")
    processed = [_summary(s.result, s.inputs) for s in batch.results]
    if args.json:
        sys.stdout.write(json.dumps({"processed": processed, "failed": failed}, indent=2) + "\n")
    else:
        for s in batch.results:
            sys.stdout.write(_line(s.result.document, s.result.out_dir) + "\n")
    return 2 if failed else 0


def _summary(res: ProcessResult, inputs: tuple[Path, ...]) -> dict[str, Any]:
    doc = res.document
    return {
        "input": str(inputs[0]) if len(inputs) == 1 else [str(p) for p in inputs],
        "study_uid": res.study_uid,
        "out_dir": str(res.out_dir),
        "files": list(res.files),
        "angles_2d": doc["angles_2d"],
        "cpak": doc["cpak"],
        "low_confidence_landmarks": doc["flags"]["low_confidence_landmarks"],
        "knee_films": {
            v: {
                "measurements": e["measurements"],
                "low_confidence_landmarks": e["flags"]["low_confidence_landmarks"],
            }
            for v, e in doc.get("knee_films", {}).items()
        },
    }


def _line(doc: Mapping[str, Any], out_dir: Path) -> str:
    parts = [f"{out_dir}"]
    if doc["input"] is not None:
        a = doc["angles_2d"]
        mhka = "n/a" if a["mHKA"] is None else f"{a['mHKA']:+.1f} deg"
        cpak = doc["cpak"]["label"] if doc["cpak"] else "n/a"
        low = ", ".join(doc["flags"]["low_confidence_landmarks"]) or "none"
        parts.append(f"mHKA {mhka}, CPAK {cpak}, low-confidence landmarks: {low}")
        review = ", ".join(doc["flags"].get("implausible", {}))
        if review:
            parts.append(f"NEEDS REVIEW (implausible: {review})")
    for view, e in doc.get("knee_films", {}).items():
        values = ", ".join(
            f"{k} {'n/a' if v is None else f'{v:+.1f} deg'}" for k, v in e["measurements"].items()
        )
        low = ", ".join(e["flags"]["low_confidence_landmarks"]) or "none"
        parts.append(f"{view}: {values}, low-confidence landmarks: {low}")
    return "  ".join(parts)
