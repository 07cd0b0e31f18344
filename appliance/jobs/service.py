"""The loop behind ``xr3d watch``: inbox events and scans -> intake -> study jobs -> outbox.

At start: finish interrupted quarantine folders, clean the outbox of partial results, put studies
a crash left ``running`` back in the queue, and scan the whole inbox. Then, every tick: take the
observer's nominations, rescan every ``watch.reconcile_seconds``, take in complete files, promote
ready studies and keep up to ``jobs.workers`` studies running. ``once`` stops when nothing more can be
done now (files still being written or waiting out their grace time stay for the next run).

Store retention (:func:`appliance.jobs.retention.prune_store` with ``retention.store_days``; 0 turns it
off) runs at start and then every :data:`RETENTION_INTERVAL_SECONDS` from the loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import pydicom.config
from watchdog.observers.api import BaseObserver

from appliance.config import Settings
from appliance.ingest.complete import CompletionTracker
from appliance.ingest.quarantine import finish_interrupted
from appliance.ingest.watch import InboxEvents, scan, start_observer
from appliance.jobs.intake import DEFERRED, intake_file
from appliance.jobs.processor import Processor, ingested_only_processor
from appliance.jobs.retention import prune_store
from appliance.jobs.runner import clean_outbox, run_job
from appliance.jobs.store import JobStore
from appliance.receiver.scp import DicomReceiver
from appliance.receiver.sender import PacsSender, PacsSenderThread
from appliance.sdnotify import Notifier

log = logging.getLogger(__name__)

RETENTION_INTERVAL_SECONDS: Final = 86_400.0
"""Retention runs about once a day: films expire by the day, so a finer schedule would only cost I/O."""


@dataclass(frozen=True)
class Summary:
    studies: dict[str, int]
    files: dict[str, int]
    waiting_files: int


class Service:
    def __init__(
        self,
        settings: Settings,
        processor: Processor = ingested_only_processor,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.processor = processor
        self.stop = stop or threading.Event()

    def _prepare(self, store: JobStore) -> None:
        p = self.settings.paths
        for d in (p.inbox, p.outbox, p.state, p.quarantine, p.store):
            d.mkdir(parents=True, exist_ok=True)
        n_q = finish_interrupted(p.quarantine)
        n_o = clean_outbox(p.outbox)
        n_r = store.recover(time.time(), self.settings.jobs.max_attempts)
        if n_q or n_o or n_r:
            log.warning(
                "recovered after an interruption: %d quarantine folder(s), %d partial output(s), "
                "%d interrupted stud(y/ies) re-queued",
                n_q,
                n_o,
                n_r,
            )

    def _prune_store(self) -> None:
        """One retention pass; a failure is logged and tried again at the next pass, never fatal."""
        days = self.settings.retention.store_days
        if days <= 0:
            return
        p = self.settings.paths
        try:
            prune_store(p.database, p.store, time.time(), retention_days=days)
        except (OSError, sqlite3.Error) as exc:
            log.warning("store retention failed (%s); tried again later", type(exc).__name__)

    def run(self, *, once: bool = False) -> Summary:
        s = self.settings
        # pydicom logs file paths at DEBUG (clinics name files after patients) and quotes invalid
        # element values in its validation warnings: keep both out of the journal, whoever runs us.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        store = JobStore(s.paths.database)
        tracker = CompletionTracker(s.ingest, s.paths.inbox)
        events = InboxEvents()
        observer: BaseObserver | None = None
        executor = ThreadPoolExecutor(max_workers=s.jobs.workers, thread_name_prefix="xr3d-job")
        inflight: set[Future[str]] = set()
        notifier = Notifier()  # systemd's Type=notify protocol; inert outside systemd
        receiver: DicomReceiver | None = None
        pacs: PacsSenderThread | None = None
        try:
            self._prepare(store)
            self._prune_store()
            last_prune = time.monotonic()
            if not once:
                observer = start_observer(
                    s.paths.inbox, events, polling=s.watch.polling, interval=s.watch.poll_interval_seconds
                )
            for path in scan(s.paths.inbox):
                tracker.observe(path)
            last_scan = time.monotonic()
            if s.receiver.enabled and not once:
                receiver = DicomReceiver(s.receiver, s.paths.inbox)
                receiver.start()
            if s.pacs.enabled and not once:
                pacs = PacsSenderThread(PacsSender(s.pacs, s.paths.outbox, s.paths.state))
                pacs.start()
            notifier.ready("watching the inbox")
            log.info(
                "watching the inbox (%s)", "once" if once else "polling" if s.watch.polling else "inotify"
            )
            while not self.stop.is_set():
                notifier.tick()
                for path, renamed in events.drain():
                    tracker.observe(path, renamed=renamed)
                if time.monotonic() - last_scan >= s.watch.reconcile_seconds:
                    for path in scan(s.paths.inbox):
                        tracker.observe(path)
                    last_scan = time.monotonic()
                    notifier.status(f"{len(tracker)} inbox file(s) waiting, {len(inflight)} study run(s)")
                tracker.release_deferred_older_than(s.ingest.incomplete_grace_seconds)
                if time.monotonic() - last_prune >= RETENTION_INTERVAL_SECONDS:
                    self._prune_store()
                    last_prune = time.monotonic()
                for path in tracker.ready():
                    if self.stop.is_set():
                        break
                    notifier.tick()  # a large drop takes many files per loop: keep the watchdog fed
                    if intake_file(path, s, store) == DEFERRED:
                        tracker.defer(path)
                    else:
                        tracker.forget(path)
                now = time.time()
                store.promote_ready(now, s.jobs.expected_views, s.jobs.quiet_seconds)
                inflight = {f for f in inflight if not f.done()}
                while len(inflight) < s.jobs.workers and not self.stop.is_set():
                    job = store.claim(time.time())
                    if job is None:
                        break
                    inflight.add(executor.submit(run_job, job, s, store, self.processor))
                if once and not inflight and tracker.pending() == 0 and not store.has_runnable(time.time()):
                    break
                self.stop.wait(s.watch.tick_seconds)
            if once and s.pacs.enabled:
                sender = PacsSender(s.pacs, s.paths.outbox, s.paths.state)
                try:
                    sender.send_pending()
                finally:
                    sender.close()
        finally:
            notifier.stopping("stopping: finishing the running studies")
            if receiver is not None:
                receiver.stop()
            if pacs is not None:
                pacs.stop()
            if observer is not None:
                observer.stop()
                observer.join(timeout=10)
            executor.shutdown(wait=True)
            summary = Summary(store.study_counts(), store.file_counts(), len(tracker))
            store.close()
        log.info("stopped: studies %s, files %s", summary.studies, summary.files)
        return summary
