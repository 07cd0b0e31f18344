"""The watchdog observer on the inbox: inotify by default, polling for network shares.

Events only nominate paths; whether a path is complete is decided by
:class:`~appliance.ingest.complete.CompletionTracker`, and the service also rescans the whole inbox
periodically because inotify drops events under load (queue overflow) and sees nothing on NFS/SMB.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver


def _path(value: bytes | str) -> Path:
    return Path(os.fsdecode(value))


class InboxEvents(FileSystemEventHandler):
    """Collects (path, renamed_in) nominations from the observer thread for the service loop."""

    def __init__(self) -> None:
        super().__init__()
        self._queue: queue.SimpleQueue[tuple[Path, bool]] = queue.SimpleQueue()

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._queue.put((_path(event.src_path), False))

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._queue.put((_path(event.src_path), False))

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._queue.put((_path(event.src_path), False))

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._queue.put((_path(event.dest_path), True))

    def drain(self) -> list[tuple[Path, bool]]:
        out: list[tuple[Path, bool]] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out


def start_observer(inbox: Path, handler: InboxEvents, *, polling: bool, interval: float) -> BaseObserver:
    observer: BaseObserver = PollingObserver(timeout=interval) if polling else Observer()
    observer.schedule(handler, str(inbox), recursive=True)
    observer.daemon = True
    observer.start()
    return observer


def scan(inbox: Path) -> list[Path]:
    """Every regular file under ``inbox``, skipping hidden folders."""
    found: list[Path] = []
    for root, dirs, files in os.walk(inbox):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / name for name in files)
    return found
