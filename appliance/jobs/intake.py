"""One complete inbox file -> an accepted instance in the store, a dropped duplicate, or quarantine.

Order of steps keeps every crash harmless: the file is copied into ``state/store/<sha256>`` (temporary
name, fsync, rename), then recorded in the database, then removed from the inbox. A crash before the
record leaves the inbox file to be read again; after it, the re-read finds a duplicate.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

from appliance.config import Settings
from appliance.ingest.errors import IngestError
from appliance.ingest.image_reader import sidecar_of
from appliance.ingest.quarantine import quarantine_file
from appliance.ingest.reader import MAYBE_INCOMPLETE, file_sha256, is_image_file, read_film
from appliance.jobs.runner import ENVIRONMENT_ERRNOS
from appliance.jobs.store import JobStore

log = logging.getLogger(__name__)

ACCEPTED, DUPLICATE, QUARANTINED, DEFERRED, GONE, ERROR = (
    "accepted",
    "duplicate",
    "quarantined",
    "deferred",
    "gone",
    "error",
)


def _copy_durably(src: Path, dst: Path) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _companions(path: Path) -> tuple[Path, ...]:
    if not is_image_file(path):
        return ()
    side = sidecar_of(path)
    return () if side is None else (side,)


def _remove(paths: tuple[Path, ...]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def intake_file(path: Path, settings: Settings, store: JobStore, *, final: bool = False) -> str:
    """Handle one complete inbox file; returns one of the outcome constants. Never raises.

    ``final``: the file is not going to change any more (its grace time is over), so a read failure
    that could mean "still being written" is quarantined instead of deferred.
    """
    try:
        return _intake(path, settings, store, final=final)
    except OSError as exc:
        if exc.errno in ENVIRONMENT_ERRNOS:
            # Disk full or unwritable state: the file is fine, keep it in the inbox; the next scan
            # of the inbox tries again.
            log.error("cannot take in an inbox file now (%s); it stays in the inbox", exc.strerror)
            return ERROR
        return _guarded_quarantine(path, settings, store)
    except sqlite3.Error as exc:
        if _database_unwritable(exc):
            # The job database's disk is full or read-only: the same as above, never the file's fault.
            log.error("cannot record an inbox file now (%s); it stays in the inbox", exc)
            return ERROR
        return _guarded_quarantine(path, settings, store)
    except Exception:
        return _guarded_quarantine(path, settings, store)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException:
        # A native extension's panic (pyo3's PanicException derives from BaseException) is one bad file,
        # not a reason to stop the service.
        return _guarded_quarantine(path, settings, store)


_UNWRITABLE_SQLITE = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")


def _database_unwritable(exc: sqlite3.Error) -> bool:
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    return name.startswith(_UNWRITABLE_SQLITE)


def _guarded_quarantine(path: Path, settings: Settings, store: JobStore) -> str:
    # The guard (as pynetdicom wraps each handler): log, set the file aside if we can, carry on.
    log.exception("unexpected error taking in an inbox file")
    try:
        if path.exists():
            quarantine_file(
                path,
                settings.paths.quarantine,
                reason="internal_error",
                message="unexpected error during intake",
                sha256=None,
                companions=_companions(path),
            )
            store.record_file(None, QUARANTINED, "internal_error", time.time())
            return QUARANTINED
    except Exception:
        log.exception("could not quarantine the file either; it stays in the inbox")
    return ERROR


def _intake(path: Path, settings: Settings, store: JobStore, *, final: bool) -> str:
    try:
        st = path.stat()
        sha = file_sha256(path)
    except FileNotFoundError:
        return GONE
    try:
        film = read_film(path, settings, sha)
    except IngestError as exc:
        age = time.time() - st.st_mtime
        if exc.reason in MAYBE_INCOMPLETE and not final and age < settings.ingest.incomplete_grace_seconds:
            log.debug("file %s not readable yet (%s); waiting for more data", sha[:12], exc.reason)
            return DEFERRED
        quarantine_file(
            path,
            settings.paths.quarantine,
            reason=exc.reason,
            message=str(exc.args[0]) if exc.args else exc.reason,
            sha256=sha,
            companions=_companions(path),
        )
        store.record_file(sha, QUARANTINED, exc.reason, time.time())
        return QUARANTINED
    companions = _companions(path)
    if store.has_instance(film.sop_uid, sha):
        store.record_file(sha, DUPLICATE, None, time.time())
        _remove((path, *companions))
        log.info("file %s is a copy of an instance already received; dropped", sha[:12])
        return DUPLICATE
    suffix = path.suffix.lower() if is_image_file(path) else ".dcm"
    stored = settings.paths.store / f"{sha}{suffix}"
    _copy_durably(path, stored)
    added = store.add_instance(film, stored, time.time())
    _remove((path, *companions))
    if not added:
        log.info("file %s is a copy of an instance already received; dropped", sha[:12])
        return DUPLICATE
    log.info(
        "accepted %s film %s (%s, spacing %.3f mm from %s%s)",
        film.view,
        sha[:12],
        film.side or "side unknown",
        film.spacing_mm[0],
        film.spacing_source,
        ", FLAGGED " + film.spacing_flag if film.spacing_flag else "",
    )
    return ACCEPTED
