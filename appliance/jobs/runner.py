"""Running one claimed study and publishing its outputs so that no partial output is ever visible.

The processor writes into ``outbox/.<name>.tmp-<pid>-<random>/``; when it returns, every file and
folder in it is fsynced and it is renamed to ``outbox/<name>/`` (an older result of the same study is
first renamed aside to ``.<name>.old-<random>`` and removed afterwards). ``<name>`` is the
StudyInstanceUID (docs/study-outputs.md), or the study key for an identifier that is not a plain DICOM
UID. :func:`clean_outbox` removes what a crash left, including the older ``.tmp-<key>-*`` names.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import sqlite3
import time
import traceback
from pathlib import Path

from appliance.config import Settings
from appliance.errors import InputError
from appliance.jobs.processor import Processor, StudyInput
from appliance.jobs.store import JobStore, StudyJob

log = logging.getLogger(__name__)

# OSErrors that mean the machine, not the study, is the problem.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


_PLAIN_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def outbox_name(study_uid: str, study_key: str) -> str:
    """The study's folder name in the outbox: its UID when that is a plain DICOM UID, else its key."""
    return study_uid if len(study_uid) <= 64 and _PLAIN_UID.fullmatch(study_uid) else study_key


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older one."""
    for root, _dirs, files in os.walk(tmp):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(root))
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_outbox(outbox: Path) -> int:
    """Remove temporary folders of interrupted runs; put back a result renamed aside mid-publish."""
    if not outbox.is_dir():
        return 0
    n = 0
    for entry in outbox.iterdir():
        name = entry.name
        if not name.startswith("."):
            continue
        if name.startswith(".tmp-") or ".tmp-" in name:
            shutil.rmtree(entry, ignore_errors=True)
            n += 1
        elif ".old-" in name:
            if name.startswith(".old-"):  # the earlier naming, .old-<key>-<random>
                key = name[len(".old-") :].rsplit("-", 1)[0]
            else:
                key = name[1:].rsplit(".old-", 1)[0]
            final = outbox / key
            if final.exists():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                os.replace(entry, final)
            n += 1
    return n


def run_job(job: StudyJob, settings: Settings, store: JobStore, processor: Processor) -> str:
    """Process one claimed study; returns its new state. Never raises."""
    outbox = settings.paths.outbox
    name = outbox_name(job.study_uid, job.study_key)
    tmp = outbox / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        outbox.mkdir(parents=True, exist_ok=True)
        study = StudyInput(
            study_uid=job.study_uid,
            study_key=job.study_key,
            instances=tuple(store.instances(job.study_uid)),
            expected_views=settings.jobs.expected_views,
        )
        tmp.mkdir()
        processor(study, tmp)
        final = outbox / name
        publish(tmp, final)
    except InputError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        store.quarantine_study(job, exc.reason, str(exc), time.time())
        log.warning("study %s quarantined: [%s]", job.study_key, exc.reason)
        return "quarantined"
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno not in ENVIRONMENT_ERRNOS:
            return _failed(job, settings, store, exc)
        # Disk full, read-only or unwritable outbox: not the study's fault. Keep its inputs, do not
        # use up an attempt, try again after the base backoff.
        now = time.time()
        store.retry_later(
            job, f"outbox not writable: {exc.strerror}", now + settings.jobs.backoff_seconds, now
        )
        log.error("study %s: outbox not writable (%s); will retry", job.study_key, exc.strerror)
        return "queued"
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return _failed(job, settings, store, exc)
    try:
        state = store.finish(job, final, time.time())
    except sqlite3.Error as exc:
        # The result is published but the job database cannot record it (its disk is full or read-only):
        # the study stays "running" and the next start re-queues it, which republishes the same result.
        log.error("study %s published, not recorded (%s); redone after a restart", job.study_key, exc)
        return "running"
    log.info("study %s %s (%d film(s))", job.study_key, state, len(study.instances))
    return state


def _failed(job: StudyJob, settings: Settings, store: JobStore, exc: BaseException) -> str:
    j = settings.jobs
    state = store.fail(
        job,
        "".join(traceback.format_exception_only(exc)).strip(),
        time.time(),
        max_attempts=j.max_attempts,
        backoff=j.backoff_seconds,
        backoff_max=j.backoff_max_seconds,
    )
    log.warning(
        "study %s attempt %d failed (%s); now %s", job.study_key, job.attempts, type(exc).__name__, state
    )
    return state
