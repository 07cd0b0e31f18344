"""The optional PACS sender: C-STORE the DICOM objects of published studies (``outbox/<study>/dicom/``).

Off by default (``[pacs] enabled = false``). Every ``pacs.scan_seconds`` the outbox is scanned for
``*.dcm`` files under each published study's ``dicom/`` folder (hidden, unfinished output folders are
skipped); each (relative path, SHA-256) pair not yet sent is C-STOREd over one association. What was
sent is recorded in ``<state>/pacs.sqlite3``, so a restart never sends an object twice, while a study
processed again (new bytes, same path) is sent again. A failure (PACS down, refused, a non-success
status) is logged and the object retried after ``pacs.retry_seconds``; nothing here can stop the service.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from appliance.config import PacsSettings

log = logging.getLogger(__name__)

DATABASE_NAME = "pacs.sqlite3"
_MAX_CONTEXTS = 120  # DICOM allows 128 presentation contexts per association; keep a margin


@dataclass(frozen=True)
class Pending:
    relpath: str
    sha256: str
    path: Path


@dataclass(frozen=True)
class SendSummary:
    sent: int
    failed: int
    waiting: int  # failed earlier, not yet due for a retry


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def outbox_objects(outbox: Path) -> list[Path]:
    """Every ``*.dcm`` under ``outbox/<study>/dicom/`` of published (non-hidden) study folders."""
    found: list[Path] = []
    if not outbox.is_dir():
        return found
    for study in sorted(outbox.iterdir()):
        if study.name.startswith(".") or not (study / "dicom").is_dir():
            continue
        for root, dirs, files in os.walk(study / "dicom"):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(Path(root) / f for f in sorted(files) if f.lower().endswith(".dcm"))
    return found


class SentLedger:
    """What was sent (and what failed when), in SQLite; one connection, used by one thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (relpath TEXT NOT NULL, sha256 TEXT NOT NULL, "
            "sent_at REAL, attempts INTEGER NOT NULL DEFAULT 0, last_try REAL, last_status INTEGER, "
            "PRIMARY KEY (relpath, sha256))"
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def state(self, relpath: str, sha256: str) -> tuple[float | None, float | None]:
        row = self._db.execute(
            "SELECT sent_at, last_try FROM objects WHERE relpath = ? AND sha256 = ?", (relpath, sha256)
        ).fetchone()
        return (None, None) if row is None else (row[0], row[1])

    def record(self, item: Pending, *, ok: bool, status: int | None, now: float) -> None:
        self._db.execute(
            "INSERT INTO objects (relpath, sha256, sent_at, attempts, last_try, last_status) "
            "VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (relpath, sha256) DO UPDATE SET "
            "sent_at = excluded.sent_at, attempts = attempts + 1, last_try = excluded.last_try, "
            "last_status = excluded.last_status",
            (item.relpath, item.sha256, now if ok else None, now, status),
        )
        self._db.commit()

    def sent_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM objects WHERE sent_at IS NOT NULL").fetchone()[0])


class PacsSender:
    """Sends the outbox's pending DICOM objects to the configured PACS; :meth:`send_pending` is one pass."""

    def __init__(self, settings: PacsSettings, outbox: Path, state: Path) -> None:
        self.settings = settings
        self.outbox = outbox
        self._ledger_path = state / DATABASE_NAME
        self._ledger: SentLedger | None = None

    @property
    def ledger(self) -> SentLedger:
        # Opened lazily so it belongs to the thread that sends (sqlite3 connections are per thread).
        if self._ledger is None:
            self._ledger = SentLedger(self._ledger_path)
        return self._ledger

    def close(self) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def pending(self, now: float) -> tuple[list[Pending], int]:
        """Objects to send now, and how many wait out their retry delay."""
        due: list[Pending] = []
        waiting = 0
        for path in outbox_objects(self.outbox):
            try:
                sha = _sha256(path)
            except OSError:
                continue  # republished while we looked: the next pass sees the new file
            rel = path.relative_to(self.outbox).as_posix()
            sent_at, last_try = self.ledger.state(rel, sha)
            if sent_at is not None:
                continue
            if last_try is not None and now - last_try < self.settings.retry_seconds:
                waiting += 1
                continue
            due.append(Pending(rel, sha, path))
        return due, waiting

    def send_pending(self, now: float | None = None) -> SendSummary:
        """One pass: never raises (failures are logged and recorded for a later retry)."""
        now = time.time() if now is None else now
        try:
            due, waiting = self.pending(now)
        except Exception:
            log.exception("cannot scan the outbox for objects to send to the PACS")
            return SendSummary(0, 0, 0)
        sent = failed = 0
        for start in range(0, len(due), _MAX_CONTEXTS // 2):
            batch = due[start : start + _MAX_CONTEXTS // 2]
            try:
                ok, bad = self._send_batch(batch, now)
            except Exception:  # the guard: a pass never raises; the objects stay due
                log.exception("PACS: sending a batch failed")
                ok, bad = 0, len(batch)
            sent, failed = sent + ok, failed + bad
        if sent or failed:
            log.info(
                "PACS: sent %d object(s), %d failed (retry after %.0f s)",
                sent,
                failed,
                self.settings.retry_seconds,
            )
        return SendSummary(sent, failed, waiting)

    def _datasets(self, batch: list[Pending], now: float) -> list[tuple[Pending, pydicom.Dataset]]:
        out: list[tuple[Pending, pydicom.Dataset]] = []
        for item in batch:
            try:
                ds = pydicom.dcmread(item.path)
                if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                    raise ValueError("no SOP class or instance UID")
                out.append((item, ds))
            except Exception as exc:
                log.error("PACS: cannot read an outbox object (%s); not sent", type(exc).__name__)
                self.ledger.record(item, ok=False, status=None, now=now)
        return out

    def _send_batch(self, batch: list[Pending], now: float) -> tuple[int, int]:
        s = self.settings
        items = self._datasets(batch, now)
        failed = len(batch) - len(items)
        if not items:
            return 0, failed
        ae = AE(ae_title=s.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.timeout_seconds
        contexts: set[tuple[str, str]] = set()
        for _, ds in items:
            ts = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
            contexts.add((str(ds.SOPClassUID), ts))
        for sop_class, ts in sorted(contexts):
            # The stored syntax, plus the two uncompressed ones (a compressed object is decompressed for a
            # PACS that accepts only those: see _fit_to_accepted).
            syntaxes = list(dict.fromkeys([ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
            ae.add_requested_context(sop_class, syntaxes)
        try:
            assoc = ae.associate(s.host, s.port, ae_title=s.called_aet)
        except Exception:
            log.exception("PACS: association to %s:%d failed", s.host, s.port)
            assoc = None
        if assoc is None or not assoc.is_established:
            log.warning(
                "PACS %s at %s:%d did not accept an association; will retry", s.called_aet, s.host, s.port
            )
            for item, _ in items:
                self.ledger.record(item, ok=False, status=None, now=now)
            return 0, failed + len(items)
        sent = 0
        try:
            for item, ds in items:
                status: int | None = None
                try:
                    _fit_to_accepted(ds, assoc.accepted_contexts)
                    rsp = assoc.send_c_store(ds)
                    status = int(rsp.Status) if "Status" in rsp else None
                except Exception as exc:
                    log.error("PACS: C-STORE failed (%s)", type(exc).__name__)
                ok = status is not None and (status == 0x0000 or 0xB000 <= status <= 0xBFFF)
                self.ledger.record(item, ok=ok, status=status, now=now)
                if ok:
                    sent += 1
                else:
                    failed += 1
                    log.warning(
                        "PACS refused an object (status %s)", "none" if status is None else f"0x{status:04X}"
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        return sent, failed


def _fit_to_accepted(ds: pydicom.Dataset, accepted: list[Any]) -> None:
    """Decompress ``ds`` in place when the peer accepted its SOP class only uncompressed.

    pynetdicom converts between the uncompressed syntaxes by itself but refuses to send a compressed
    object (our RLE overlay) on an uncompressed context; pydicom decodes RLE natively, so the PACS still
    gets the identical pixels.
    """
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None or not ts.is_compressed:
        return
    offered = {str(c.transfer_syntax[0]) for c in accepted if c.abstract_syntax == ds.SOPClassUID}
    if str(ts) not in offered:
        ds.decompress()


class PacsSenderThread:
    """Runs :meth:`PacsSender.send_pending` every ``scan_seconds`` on its own thread until stopped."""

    def __init__(self, sender: PacsSender) -> None:
        self.sender = sender
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xr3d-pacs", daemon=True)

    def start(self) -> None:
        log.info(
            "PACS sender on: %s at %s:%d as %s",
            self.sender.settings.called_aet,
            self.sender.settings.host,
            self.sender.settings.port,
            self.sender.settings.calling_aet,
        )
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self.sender.send_pending()
                except Exception:  # the guard: log and keep going
                    log.exception("PACS sender pass failed")
                self._stop.wait(self.sender.settings.scan_seconds)
        finally:
            self.sender.close()
