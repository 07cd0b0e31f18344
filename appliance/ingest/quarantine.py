"""Moving a rejected file aside: ``quarantine/<UTC stamp>-<hash prefix>/`` holds the file (and its
sidecar) under its own name plus ``reason.json``::

    {"schema": 1, "reason": "truncated", "message": "...", "description": "...",
     "sha256": "...", "size_bytes": 1234, "quarantined_at": "2026-11-24T01:02:03Z"}

The record holds no tag values and no file name (clinic exports often name files after the patient).
The folder is assembled under a hidden temporary name and renamed into place, so an operator never
sees a file without its reason; :func:`finish_interrupted` completes folders a crash left behind.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

from appliance.ingest.errors import REASONS

log = logging.getLogger(__name__)

RECORD_NAME = "reason.json"
_TMP_PREFIX = ".tmp-"


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError:
        shutil.move(str(src), str(dst))  # another file system: copy, then remove


def quarantine_file(
    path: Path,
    root: Path,
    *,
    reason: str,
    message: str,
    sha256: str | None,
    companions: tuple[Path, ...] = (),
) -> Path:
    """Move ``path`` (and ``companions`` such as a sidecar) into a new quarantine folder."""
    now = datetime.now(UTC)
    key = (sha256 or secrets.token_hex(8))[:12]
    name = f"{now.strftime('%Y%m%dT%H%M%S')}-{key}-{secrets.token_hex(2)}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{_TMP_PREFIX}{name}"
    tmp.mkdir()
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    record = {
        "schema": 1,
        "reason": reason,
        "message": message,
        "description": REASONS.get(reason, ""),
        "sha256": sha256,
        "size_bytes": size,
        "quarantined_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for src in (path, *companions):
        if src.exists():
            _move(src, tmp / src.name)
    final = root / name
    os.replace(tmp, final)
    log.warning("quarantined a file (sha256 %s): [%s] %s", key, reason, message)
    return final


def finish_interrupted(root: Path) -> int:
    """Rename folders a crash left under their temporary names into place; returns how many."""
    if not root.is_dir():
        return 0
    done = 0
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.startswith(_TMP_PREFIX):
            os.replace(entry, root / entry.name[len(_TMP_PREFIX) :])
            done += 1
    return done


def read_records(root: Path) -> list[dict[str, object]]:
    """Every quarantine record under ``root`` (for tests and operators)."""
    records: list[dict[str, object]] = []
    if not root.is_dir():
        return records
    for entry in sorted(root.iterdir()):
        rec = entry / RECORD_NAME
        if entry.is_dir() and not entry.name.startswith(".") and rec.is_file():
            doc = json.loads(rec.read_text(encoding="utf-8"))
            doc["files"] = sorted(p.name for p in entry.iterdir() if p.name != RECORD_NAME)
            records.append(doc)
    return records
