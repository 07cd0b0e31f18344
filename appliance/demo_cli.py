"""``xr3d demo``: the bundled sample studies through the service's own pipeline, end to end.

The sample studies are simulated films (demo seeds 900001-900002, no CT) made on the first run with the
``xr3d simulate`` subcommand and kept in ``OUT/samples/``; later runs reuse them. Each run copies them
into a fresh ``OUT/inbox/`` and runs the service once (:class:`~appliance.jobs.service.Service` with the
real :class:`~appliance.pipeline.study.StudyProcessor`): intake, job store, processing, atomic publishing
into ``OUT/outbox/<StudyInstanceUID>/``. It then prints a table of the angles and CPAK types, next to the
simulator's exact values, and the outbox path.

The simulator lives in ``export`` (which the runtime never imports), so it is run as a subprocess; an
install without it can still run the demo on any folder of films given with ``--samples``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final

import pydicom
import pydicom.config

from appliance.config import load_settings, settings_from_mapping
from appliance.errors import InputError
from appliance.jobs.service import Service
from appliance.landmarks.detector import LandmarkDetector
from appliance.pipeline.study import StudyProcessor

log = logging.getLogger(__name__)

DEMO_SEEDS: Final = (900001, 900002)
FILM_NAMES: Final = ("longleg_ap.dcm", "knee_ap.dcm", "knee_lat.dcm")
ANGLES: Final = ("mHKA", "mLDFA", "MPTA", "JLCA", "aHKA", "JLO")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand to the xr3d parser."""
    p = sub.add_parser(
        "demo",
        help="process the bundled sample studies end to end and print their angles and CPAK types",
        description=(
            "Simulate two sample studies on the first run (long-leg AP, knee AP and lateral films; demo "
            f"seeds {DEMO_SEEDS[0]}-{DEMO_SEEDS[-1]}; cached in OUT/samples), drop them into a fresh inbox "
            "and run the service's pipeline once over it: OUT/outbox/<StudyInstanceUID>/ holds result.json, "
            "the overlay, the CPAK chart and the other outputs (docs/study-outputs.md)."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="demo folder (default demo_out)")
    p.add_argument(
        "--samples",
        type=Path,
        help="use the DICOM films under this folder instead of the simulated samples (any layout)",
    )
    p.add_argument("--models", type=Path, help="folder with the ONNX models (default: pipeline.models_dir)")
    p.add_argument(
        "--config",
        type=Path,
        help="use the [pipeline] settings of this TOML file (its paths are not used)",
    )
    p.add_argument("--workers", type=int, default=2, help="studies processed in parallel (default 2)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run)


def _has_simulator() -> bool:
    return any(ep.name == "simulate" for ep in entry_points(group="xr3d.commands"))


def ensure_samples(samples: Path) -> list[Path]:
    """The case folders of the sample studies, simulated on first use."""
    cases = [samples / f"case_{seed}" for seed in DEMO_SEEDS]
    if all((c / name).is_file() for c in cases for name in FILM_NAMES):
        return cases
    if not _has_simulator():
        raise InputError(
            "the sample studies are not there and this install has no simulator (`xr3d simulate`, "
            "from the export package); give films with --samples DIR",
            reason="demo_samples_missing",
        )
    sys.stderr.write(f"simulating {len(DEMO_SEEDS)} sample studies into {samples} (first run only) ...\n")
    samples.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "appliance.cli.main",
        "simulate",
        "--n",
        str(len(DEMO_SEEDS)),
        "--seed",
        str(DEMO_SEEDS[0]),
        "--out",
        str(samples),
        "--no-ct",
        "--workers",
        "2",
    ]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise InputError(f"simulating the samples failed (exit {done.returncode})", reason="demo_simulate")
    return cases


def _drop(films: list[Path], inbox: Path) -> None:
    """Copy the films into the inbox the way a PACS export should: hidden name, then rename."""
    inbox.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(films):
        dst = inbox / f"{i:03d}_{src.name}"
        tmp = inbox / f".{dst.name}.part"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def _truth_by_study(films: list[Path]) -> dict[str, Mapping[str, Any]]:
    """Exact angles of simulated samples (truth.json next to the film), by StudyInstanceUID."""
    out: dict[str, Mapping[str, Any]] = {}
    for f in films:
        truth = f.parent / "truth.json"
        if f.name != "longleg_ap.dcm" or not truth.is_file():
            continue
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID)
        doc = json.loads(truth.read_text())
        out[uid] = {
            "angles_2d": doc.get("films", {}).get("longleg_ap", {}).get("angles_2d") or {},
            "cpak": doc.get("cpak"),
            "seed": doc.get("seed"),
        }
    return out


def _fmt(v: Any, width: int = 7) -> str:
    return f"{v:+{width}.1f}" if isinstance(v, int | float) else f"{'n/a':>{width}}"


def run(args: argparse.Namespace) -> int:
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    if not 1 <= args.workers <= 16:
        raise InputError("--workers must be between 1 and 16", reason="bad_arguments")
    out: Path = args.out.resolve()
    if args.samples is not None:
        films = sorted(p for p in Path(args.samples).rglob("*.dcm") if p.is_file())
        if not films:
            raise InputError(f"no .dcm files under {args.samples}", reason="demo_samples_missing")
    else:
        films = [c / name for c in ensure_samples(out / "samples") for name in FILM_NAMES]
    for name in ("inbox", "outbox", "state"):
        shutil.rmtree(out / name, ignore_errors=True)
    _drop(films, out / "inbox")
    settings = settings_from_mapping(
        {
            "paths": {"inbox": "inbox", "outbox": "outbox", "state": "state"},
            "ingest": {"stable_seconds": 0.0},
            "jobs": {"quiet_seconds": 0.0, "workers": args.workers},
            "watch": {"tick_seconds": 0.05},
        },
        base_dir=out,
    )
    if args.config is not None:
        # Only [pipeline] is taken: the demo keeps its own folders and fast timings.
        own = {name: out / name for name in ("inbox", "outbox", "state")}
        settings = replace(settings, pipeline=load_settings(args.config, overrides=own).pipeline)
    pipeline = settings.pipeline
    if args.models is not None:
        pipeline = replace(pipeline, models_dir=args.models.resolve())
    with LandmarkDetector(pipeline.models_dir) as detector:
        processor = StudyProcessor.from_settings(detector, pipeline)
        summary = Service(settings, processor=processor).run(once=True)
    truth = _truth_by_study(films)
    rows = []
    for folder in sorted(p for p in settings.paths.outbox.iterdir() if not p.name.startswith(".")):
        doc = json.loads((folder / "result.json").read_text())
        t = truth.get(doc["study_uid"], {})
        rows.append(
            {
                "study": folder.name,
                "seed": t.get("seed"),
                "status": doc["status"],
                "side": doc["side"],
                "angles_2d": doc["angles_2d"],
                "cpak": (doc["cpak"] or {}).get("label"),
                "cpak_borderline": (doc["cpak"] or {}).get("borderline") or [],
                "needs_review": doc["flags"]["needs_review"],
                "truth_angles_2d": t.get("angles_2d"),
                "truth_cpak": (t.get("cpak") or {}).get("label"),
                "files": len(doc["files"]),
                "stages": {k: v["status"] for k, v in doc["flags"].get("stages", {}).items()},
                "reasons": doc["flags"].get("reasons", []),
            }
        )
    if args.json:
        sys.stdout.write(json.dumps({"outbox": str(settings.paths.outbox), "studies": rows}, indent=2) + "\n")
    else:
        _print_table(rows)
        stages = sorted({f"{k} {v}" for r in rows for k, v in r["stages"].items()})
        sys.stdout.write(
            f"\nstages: {', '.join(stages) or 'none'} (reasons per study in result.json flags.reasons)\n"
            f"studies {summary.studies}, files {summary.files}\n"
            f"outputs (result.json, overlay, CPAK chart, films, ...): {settings.paths.outbox}/\n"
        )
    ok = summary.studies.get("done", 0) == len(rows) and rows
    return 0 if ok else 1


def _print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'study (seed)':<16}{'side':>5}" + "".join(f"{a:>8}" for a in ANGLES) + f"{'CPAK':>6}  review"
    sys.stdout.write(head + "\n" + "-" * len(head) + "\n")
    for r in rows:
        name = str(r["seed"]) if r["seed"] is not None else r["study"][-12:]
        a = r["angles_2d"] or {}
        sys.stdout.write(
            f"{name:<16}{r['side'] or '?':>5}"
            + "".join(f" {_fmt(a.get(k))}" for k in ANGLES)
            + f"{r['cpak'] or 'n/a':>6}  {'YES' if r['needs_review'] else 'no'}"
            + ("" if r["status"] == "measured" else f" ({r['status']})")
            + (f"  CPAK borderline {'/'.join(r['cpak_borderline'])}" if r.get("cpak_borderline") else "")
            + "\n"
        )
        if r["truth_angles_2d"]:
            t = r["truth_angles_2d"]
            sys.stdout.write(
                f"{'  simulated':<16}{'':>5}"
                + "".join(f" {_fmt(t.get(k))}" for k in ANGLES)
                + f"{r['truth_cpak'] or 'n/a':>6}\n"
            )
