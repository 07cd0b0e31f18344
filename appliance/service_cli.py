"""``xr3d watch``: the appliance service (hot folder -> durable jobs -> outbox)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType

import pydicom.config

from appliance.config import load_settings
from appliance.jobs.service import Service
from appliance.landmarks.detector import LandmarkDetector
from appliance.pipeline.study import StudyProcessor

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``watch`` subcommand to the xr3d parser."""
    p = sub.add_parser(
        "watch",
        help="watch the inbox and process the studies dropped there (the appliance service)",
        description=(
            "Watch an inbox folder for DICOM (or PNG/TIFF + sidecar JSON) films, group them by study, "
            "process complete studies into the outbox (landmarks and angles of the long-leg film, "
            "pictures, report and DICOM objects, 3D knee when available: docs/study-outputs.md) and "
            "quarantine files that cannot be used. "
            "See docs/ingest.md and docs/config.md. SIGTERM stops cleanly."
        ),
    )
    p.add_argument("--config", type=Path, help="TOML configuration (docs/config.md)")
    p.add_argument("--inbox", type=Path, help="override paths.inbox")
    p.add_argument("--outbox", type=Path, help="override paths.outbox")
    p.add_argument("--state", type=Path, help="override paths.state (job database, stored inputs)")
    p.add_argument("--once", action="store_true", help="process what is there now, then exit (tests, cron)")
    p.add_argument("--models", type=Path, help="folder with the ONNX models (overrides pipeline.models_dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # pydicom's validation warnings quote element values (patient names included): keep them out of
    # the journal. Values are still read; the ingest checks what it needs itself.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    settings = load_settings(
        args.config, overrides={"inbox": args.inbox, "outbox": args.outbox, "state": args.state}
    )
    if args.models is not None:
        settings = replace(settings, pipeline=replace(settings.pipeline, models_dir=args.models.resolve()))
    stop = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("signal %d: stopping after the running studies", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        # The models are loaded once, before the first study: a missing model stops the service at
        # start (exit 2, reason model_missing) instead of failing every study.
        with LandmarkDetector(settings.pipeline.models_dir) as detector:
            processor = StudyProcessor.from_settings(detector, settings.pipeline)
            summary = Service(settings, processor=processor, stop=stop).run(once=args.once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if args.once:
        sys.stdout.write(
            json.dumps({"studies": summary.studies, "files": summary.files, "waiting": summary.waiting_files})
            + "\n"
        )
    return 0
