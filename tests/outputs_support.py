"""Shared inputs of the tests/test_outputs_*.py files.

``tests/data/outputs_study/`` holds one study produced by the real pipeline (not hand-written):

    .venv/bin/xr3d simulate --n 1 --seed 900001 --views longleg --no-ct --no-contralateral --out SIM
    .venv/bin/xr3d process SIM/case_900001/longleg_ap.dcm --out OUT

``result.json`` is OUT/<study>/result.json (schema xr3d.process/1) as written; ``longleg_ap_header.dcm``
the source film without its pixel data (the writers only read its headers); ``overlay.png`` the
overlay preview (the full-size overlay is 3714 x 1229 px, too big to commit); ``cpak_chart.png`` as
written. Seed 900001 is in the demo/docs range.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

STUDY_DIR = Path(__file__).parent / "data" / "outputs_study"
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def result_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((STUDY_DIR / "result.json").read_text(encoding="utf-8"))
    return doc


def source_film() -> Dataset:
    return pydicom.dcmread(STUDY_DIR / "longleg_ap_header.dcm")


def with_changes(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out.update(changes)
    return out


@pytest.fixture
def strict_reading() -> Iterator[None]:
    """pydicom raises on any invalid value while reading (restored afterwards)."""
    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        pydicom.config.settings.reading_validation_mode = old


def as_result_v1(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The xr3d.process/1 document rewritten as the shared xr3d.result/1 (docs/study-outputs.md)."""
    inp = doc["input"]
    out = {
        "schema": "xr3d.result/1",
        "software": doc["software"],
        "status": "measured",
        "study_uid": doc["study_uid"],
        "side": doc["side"],
        "films": {inp["view"]: {**inp, "file": f"films/{inp['view']}.dcm", "geometry": None}},
        "missing_views": ["knee_ap", "knee_lat"],
        "landmarks_2d": {inp["view"]: copy.deepcopy(doc["landmarks"])},
        "angles_2d": dict(doc["angles_2d"]),
        "cpak": copy.deepcopy(doc["cpak"]),
        "angles_3d": None,
        "landmarks_3d": None,
        "reconstruction": None,
        "flags": {**copy.deepcopy(doc["flags"]), "reasons": []},
        "engine": dict(doc["engine"]),
        "model_versions": dict(doc["model_versions"]),
        "timings_s": {"total": 1.0},
        "files": ["result.json"],
    }
    out.update(changes)
    return out
