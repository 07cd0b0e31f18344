"""The durable job store: one SQLite database in WAL mode with synchronous=FULL.

Tables: ``instances`` (one accepted file, keyed by SOPInstanceUID + SHA-256 of the file, so the same
instance is recorded once however often it is dropped), ``studies`` (one job per StudyInstanceUID)
and ``files`` (the outcome of every inbox file: accepted, duplicate, quarantined).

Study states::

    received --(expected views present, or quiet period over)--> queued --claim--> running
    running --> done | queued (retry after backoff) | failed (attempts exhausted) | quarantined

``attempts`` is counted when a study is claimed, so a study that kills the process (SIGKILL, OOM) uses
up its attempts too: after a restart :meth:`JobStore.recover` re-queues it, or fails it once the
attempts are exhausted; a poison study therefore cannot block the queue. A new instance arriving for
a study that is queued, done or failed puts it back to ``received`` (it is processed again with the
new film); one arriving while it runs bumps ``generation`` and the run's result is not taken as final.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from appliance.ingest.film import Film

STATES = ("received", "queued", "running", "done", "failed", "quarantined")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    study_key TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL DEFAULT 0,
    claimed_generation INTEGER,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_arrival REAL NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    error TEXT,
    reason TEXT,
    result_dir TEXT
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    view TEXT NOT NULL,
    film_json TEXT NOT NULL,
    stored_path TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (sop_uid, sha256)
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    at REAL NOT NULL
);
"""


def study_key(study_uid: str) -> str:
    """A short, non-identifying name for a study (outbox folder, log lines)."""
    return hashlib.sha256(study_uid.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class StoredInstance:
    film: Film
    stored_path: Path


@dataclass(frozen=True)
class StudyJob:
    study_uid: str
    study_key: str
    attempts: int
    generation: int


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    study_key: str
    state: str
    attempts: int
    error: str | None
    reason: str | None
    result_dir: str | None


class JobStore:
    """Thread-safe access to the job database (one connection, serialised by a lock)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # --- intake -------------------------------------------------------------------------------------

    def has_instance(self, sop_uid: str, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM instances WHERE sop_uid = ? AND sha256 = ?", (sop_uid, sha256)
            ).fetchone()
        return row is not None

    def add_instance(self, film: Film, stored_path: Path, now: float) -> bool:
        """Record an accepted film; False (and nothing changes) when this exact instance is known."""
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM instances WHERE sop_uid = ? AND sha256 = ?", (film.sop_uid, film.sha256)
            ).fetchone():
                db.execute(
                    "INSERT INTO files (sha256, outcome, reason, at) VALUES (?, 'duplicate', NULL, ?)",
                    (film.sha256, now),
                )
                return False
            row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (film.study_uid,)).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO studies (study_uid, study_key, state, last_arrival, created, updated) "
                    "VALUES (?, ?, 'received', ?, ?, ?)",
                    (film.study_uid, study_key(film.study_uid), now, now, now),
                )
            elif row[0] == "running":
                db.execute(
                    "UPDATE studies SET generation = generation + 1, last_arrival = ?, updated = ? "
                    "WHERE study_uid = ?",
                    (now, now, film.study_uid),
                )
            else:
                db.execute(
                    "UPDATE studies SET state = 'received', attempts = 0, error = NULL, reason = NULL, "
                    "generation = generation + 1, last_arrival = ?, updated = ? WHERE study_uid = ?",
                    (now, now, film.study_uid),
                )
            db.execute(
                "INSERT INTO instances (sop_uid, sha256, study_uid, view, film_json, stored_path, received) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    film.sop_uid,
                    film.sha256,
                    film.study_uid,
                    film.view,
                    json.dumps(film.to_json()),
                    str(stored_path),
                    now,
                ),
            )
            db.execute(
                "INSERT INTO files (sha256, outcome, reason, at) VALUES (?, 'accepted', NULL, ?)",
                (film.sha256, now),
            )
        return True

    def record_file(self, sha256: str | None, outcome: str, reason: str | None, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO files (sha256, outcome, reason, at) VALUES (?, ?, ?, ?)",
                (sha256, outcome, reason, now),
            )

    # --- scheduling ---------------------------------------------------------------------------------

    def promote_ready(self, now: float, expected_views: tuple[str, ...], quiet_seconds: float) -> int:
        """received -> queued for studies with every expected view, or quiet for ``quiet_seconds``."""
        promoted = 0
        with self._tx() as db:
            rows = db.execute(
                "SELECT study_uid, last_arrival FROM studies WHERE state = 'received'"
            ).fetchall()
            for uid, last in rows:
                views = {
                    v
                    for (v,) in db.execute("SELECT DISTINCT view FROM instances WHERE study_uid = ?", (uid,))
                }
                if set(expected_views) <= views or now - last >= quiet_seconds:
                    db.execute(
                        "UPDATE studies SET state = 'queued', next_attempt_at = ?, updated = ? "
                        "WHERE study_uid = ?",
                        (now, now, uid),
                    )
                    promoted += 1
        return promoted

    def claim(self, now: float) -> StudyJob | None:
        """The next runnable study (oldest due first), marked running with one more attempt."""
        with self._tx() as db:
            row = db.execute(
                "SELECT study_uid, study_key, attempts, generation FROM studies "
                "WHERE state = 'queued' AND next_attempt_at <= ? ORDER BY next_attempt_at, created LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE studies SET state = 'running', attempts = attempts + 1, claimed_generation = ?, "
                "updated = ? WHERE study_uid = ?",
                (row[3], now, row[0]),
            )
        return StudyJob(study_uid=row[0], study_key=row[1], attempts=row[2] + 1, generation=row[3])

    def has_runnable(self, now: float) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM studies WHERE state = 'queued' AND next_attempt_at <= ? LIMIT 1", (now,)
            ).fetchone()
        return row is not None

    def finish(self, job: StudyJob, result_dir: Path, now: float) -> str:
        """running -> done, or back to received when a new film arrived during the run."""
        with self._tx() as db:
            (generation,) = db.execute(
                "SELECT generation FROM studies WHERE study_uid = ?", (job.study_uid,)
            ).fetchone()
            state = "done" if generation == job.generation else "received"
            db.execute(
                "UPDATE studies SET state = ?, error = NULL, reason = NULL, result_dir = ?, updated = ?, "
                "attempts = CASE WHEN ? = 'received' THEN 0 ELSE attempts END WHERE study_uid = ?",
                (state, str(result_dir), now, state, job.study_uid),
            )
        return state

    def fail(
        self, job: StudyJob, error: str, now: float, *, max_attempts: int, backoff: float, backoff_max: float
    ) -> str:
        """running -> queued after an exponential backoff, or failed when attempts are exhausted."""
        with self._tx() as db:
            if job.attempts >= max_attempts:
                state, due = "failed", now
            else:
                state, due = "queued", now + min(backoff_max, backoff * 2 ** (job.attempts - 1))
            db.execute(
                "UPDATE studies SET state = ?, error = ?, next_attempt_at = ?, updated = ? "
                "WHERE study_uid = ?",
                (state, error[:2000], due, now, job.study_uid),
            )
        return state

    def retry_later(self, job: StudyJob, error: str, due: float, now: float) -> None:
        """running -> queued without using up the attempt (the environment failed, not the study)."""
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET state = 'queued', attempts = MAX(attempts - 1, 0), error = ?, "
                "next_attempt_at = ?, updated = ? WHERE study_uid = ?",
                (error[:2000], due, now, job.study_uid),
            )

    def quarantine_study(self, job: StudyJob, reason: str, error: str, now: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET state = 'quarantined', reason = ?, error = ?, updated = ? "
                "WHERE study_uid = ?",
                (reason, error[:2000], now, job.study_uid),
            )

    def recover(self, now: float, max_attempts: int) -> int:
        """After a crash: running studies go back to queued (or failed when out of attempts)."""
        with self._tx() as db:
            db.execute(
                "UPDATE studies SET state = 'failed', error = 'interrupted on every attempt', updated = ? "
                "WHERE state = 'running' AND attempts >= ?",
                (now, max_attempts),
            )
            cur = db.execute(
                "UPDATE studies SET state = 'queued', next_attempt_at = ?, updated = ? "
                "WHERE state = 'running'",
                (now, now),
            )
            return cur.rowcount

    # --- queries ------------------------------------------------------------------------------------

    def instances(self, study_uid: str) -> list[StoredInstance]:
        with self._lock:
            rows = self._db.execute(
                "SELECT film_json, stored_path FROM instances WHERE study_uid = ? ORDER BY view, received",
                (study_uid,),
            ).fetchall()
        return [StoredInstance(Film.from_json(json.loads(doc)), Path(p)) for doc, p in rows]

    def study(self, study_uid: str) -> StudyRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT study_uid, study_key, state, attempts, error, reason, result_dir FROM studies "
                "WHERE study_uid = ?",
                (study_uid,),
            ).fetchone()
        return None if row is None else StudyRow(*row)

    def studies(self) -> list[StudyRow]:
        with self._lock:
            rows = self._db.execute(
                "SELECT study_uid, study_key, state, attempts, error, reason, result_dir FROM studies "
                "ORDER BY created"
            ).fetchall()
        return [StudyRow(*r) for r in rows]

    def study_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
        return {state: n for state, n in rows}

    def file_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT outcome, COUNT(*) FROM files GROUP BY outcome").fetchall()
        return {outcome: n for outcome, n in rows}

    def open_work(self) -> int:
        """Studies not yet in a final state."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM studies WHERE state IN ('received', 'queued', 'running')"
            ).fetchone()
        return int(n)
