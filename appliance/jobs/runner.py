"""Running one claimed study and publishing its outputs so that no partial output is ever visible.

The processor writes into ``outbox/.tmp-<key>-<random>/``; when it returns, the folder is fsynced and
renamed to ``outbox/<key>/`` (an older result of the same study is first renamed aside to
``.old-<key>-<random>`` and removed afterwards). :func:`clean_outbox` removes what a crash left.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import shutil
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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished folder ``tmp`` to ``final``, replacing an older one."""
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{secrets.token_hex(4)}")
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
        if entry.name.startswith(".tmp-"):
            shutil.rmtree(entry, ignore_errors=True)
            n += 1
        elif entry.name.startswith(".old-"):
            key = entry.name[len(".old-") :].rsplit("-", 1)[0]
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
    tmp = outbox / f".tmp-{job.study_key}-{secrets.token_hex(4)}"
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
        final = outbox / job.study_key
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
    state = store.finish(job, final, time.time())
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
