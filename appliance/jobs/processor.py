"""The processing step of a study, as a callable, and the default one.

A :data:`Processor` receives the study's films and a fresh, empty folder, and writes its outputs
there; the runner publishes the folder atomically. It raises :class:`~appliance.errors.InputError`
when the study itself cannot be processed (the study is quarantined, not retried) and anything else
for a failure worth retrying.

The real processor is :class:`appliance.pipeline.study.StudyProcessor` (``xr3d watch``, ``xr3d demo``).
:func:`ingested_only_processor` is the model-free fallback the service uses when no processor is given
(tests of the job machinery): it records what would be processed, and says so in ``status``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import __version__
from appliance.jobs.store import StoredInstance

RESULT_SCHEMA = "xr3d.result/0"


@dataclass(frozen=True)
class StudyInput:
    study_uid: str
    study_key: str
    instances: tuple[StoredInstance, ...]
    expected_views: tuple[str, ...]


Processor = Callable[[StudyInput, Path], None]


def write_json_durably(path: Path, doc: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def ingested_only_processor(study: StudyInput, out_dir: Path) -> None:
    """Write result.json describing the films found; no measurement is made (status ingested_only)."""
    films = [inst.film for inst in study.instances]
    views: dict[str, list[dict[str, Any]]] = {}
    for film in films:
        views.setdefault(film.view, []).append(
            {
                "sop_instance_uid": film.sop_uid,
                "series_instance_uid": film.series_uid,
                "side": film.side or None,
                "rows": film.rows,
                "columns": film.columns,
                "spacing_mm": list(film.spacing_mm),
                "spacing_source": film.spacing_source,
                "spacing_flag": film.spacing_flag or None,
                "magnification": film.magnification,
                "photometric": film.photometric,
                "bits_stored": film.bits_stored,
                "transfer_syntax": film.transfer_syntax or None,
                "input_sha256": film.sha256,
            }
        )
    sides = sorted({f.side for f in films if f.side})
    flags = sorted({f.spacing_flag for f in films if f.spacing_flag})
    doc = {
        "schema": RESULT_SCHEMA,
        "status": "ingested_only",
        "note": (
            "Placeholder: the films were received and classified, but no landmarks were detected and "
            "no angles were measured (the processing pipeline is not installed in this build)."
        ),
        "software": f"xr3d {__version__}",
        "study_instance_uid": study.study_uid,
        "views": views,
        "missing_views": [v for v in study.expected_views if v not in views],
        "sides": sides,
        "flags": flags,
        "angles": None,
    }
    write_json_durably(out_dir / "result.json", doc)
