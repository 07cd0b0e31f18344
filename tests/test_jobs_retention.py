"""Store retention: films of studies done for longer than the period are deleted, nothing else is.

Real SQLite (the service's JobStore writes the rows), real files in a real store folder.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from job_films import film_record

from appliance.ingest.film import Film
from appliance.jobs.retention import RETENTION_DAYS, PruneResult, prune_store
from appliance.jobs.store import JobStore

DAY = 86_400.0
NOW = 1_800_000_000.0
VIEWS = ("longleg_ap", "knee_ap", "knee_lat")


def _film(study: str, sop: str, view: str, sha: str) -> Film:
    return film_record(study, sop, view, sha, series_uid=study + ".9")


class Box:
    """A state folder with a job store and helpers to put studies into a given state at a given time."""

    def __init__(self, root: Path) -> None:
        self.db_path = root / "jobs.sqlite3"
        self.store_dir = root / "store"
        self.store_dir.mkdir(parents=True)
        self.jobs = JobStore(self.db_path)

    def film(self, study: str, n: int, at: float, *, sha: str | None = None, size: int = 1000) -> Path:
        sha = sha or hashlib.sha256(f"{study}/{n}".encode()).hexdigest()
        path = self.store_dir / f"{sha}.dcm"
        path.write_bytes(b"\0" * size)
        self.jobs.add_instance(_film(study, f"{study}.{n}", VIEWS[n % 3], sha), path, at)
        return path

    def done(self, study: str, at: float) -> None:
        self.jobs.promote_ready(at, VIEWS, quiet_seconds=0.0)
        while (job := self.jobs.claim(at)) is not None:
            self.jobs.finish(job, Path("/outbox") / job.study_key, at)
        assert self.jobs.study(study) is not None and self.jobs.study(study).state == "done"  # type: ignore[union-attr]

    def prune(self, days: float = RETENTION_DAYS, now: float = NOW) -> PruneResult:
        return prune_store(self.db_path, self.store_dir, now, retention_days=days)


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path / "state")
    yield b
    b.jobs.close()


def test_old_done_studies_lose_their_films_and_nothing_else_does(box: Box) -> None:
    old = [box.film("1.1", n, NOW - 40 * DAY, size=1000 + n) for n in range(3)]
    box.done("1.1", NOW - 31 * DAY)
    recent = [box.film("1.2", n, NOW - 40 * DAY) for n in range(3)]
    box.done("1.2", NOW - 29 * DAY)
    # Old, but not done: received (waiting for a view), failed, quarantined.
    waiting = box.film("1.3", 1, NOW - 90 * DAY)  # a knee film: waits for its long-leg film
    failed = box.film("1.4", 0, NOW - 90 * DAY)
    quarantined = box.film("1.5", 0, NOW - 90 * DAY)
    box.jobs.promote_ready(NOW - 90 * DAY, ("longleg_ap",), quiet_seconds=1e9)
    for _ in range(2):
        job = box.jobs.claim(NOW - 90 * DAY)
        assert job is not None
        if job.study_uid == "1.4":
            box.jobs.fail(job, "boom", NOW - 90 * DAY, max_attempts=1, backoff=1.0, backoff_max=1.0)
        else:
            box.jobs.quarantine_study(job, "bad_film", "bad", NOW - 90 * DAY)
    states = {row.study_uid: row.state for row in box.jobs.studies()}
    assert states == {"1.1": "done", "1.2": "done", "1.3": "received", "1.4": "failed", "1.5": "quarantined"}

    result = box.prune()

    assert result.studies == 1 and result.deleted_files == 3 and result.deleted_bytes == 1000 + 1001 + 1002
    assert result.already_gone == 0 and result.kept_shared == 0
    assert not any(p.exists() for p in old)
    assert all(p.exists() for p in [*recent, waiting, failed, quarantined])
    # The rows stay: the same film sent again is still a duplicate, the study stays done.
    assert box.jobs.has_instance("1.1.0", old[0].stem)
    assert not box.jobs.add_instance(_film("1.1", "1.1.0", "longleg_ap", old[0].stem), old[0], NOW)
    assert box.jobs.study("1.1").state == "done"  # type: ignore[union-attr]


def test_second_run_finds_nothing_to_delete(box: Box) -> None:
    paths = [box.film("1.1", n, NOW - 60 * DAY) for n in range(2)]
    box.done("1.1", NOW - 50 * DAY)
    first = box.prune()
    second = box.prune()
    assert first.deleted_files == 2 and not any(p.exists() for p in paths)
    assert second.deleted_files == 0 and second.already_gone == 2 and second.studies == 1


def test_the_period_decides(box: Box) -> None:
    path = box.film("1.1", 0, NOW - 20 * DAY)
    box.done("1.1", NOW - 10 * DAY)
    assert box.prune(days=11).deleted_files == 0 and path.exists()
    assert box.prune(days=9).deleted_files == 1 and not path.exists()
    with pytest.raises(ValueError):
        box.prune(days=-1)


def test_a_reopened_study_keeps_its_films(box: Box) -> None:
    old = box.film("1.1", 0, NOW - 60 * DAY)
    box.done("1.1", NOW - 50 * DAY)
    new = box.film("1.1", 1, NOW - 1.0)  # a new film re-opens the done study
    assert box.jobs.study("1.1").state == "received"  # type: ignore[union-attr]
    result = box.prune()
    assert result.studies == 0 and old.exists() and new.exists()


def test_a_file_shared_with_a_study_not_due_is_kept(box: Box) -> None:
    # The same bytes recorded for two studies (an image film sent with two different sidecars).
    shared = box.film("1.1", 0, NOW - 60 * DAY, sha="ab" * 32)
    box.done("1.1", NOW - 50 * DAY)
    box.jobs.add_instance(_film("1.2", "1.2.0", "longleg_ap", "ab" * 32), shared, NOW - 45 * DAY)
    result = box.prune()
    assert result.kept_shared == 1 and result.deleted_files == 0 and shared.exists()
    box.done("1.2", NOW - 40 * DAY)  # "done since" is the finish time: 40 days ago
    assert box.prune().deleted_files == 1 and not shared.exists()


def test_files_outside_the_store_and_sidecars(box: Box, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(b"x" * 10)
    box.jobs.add_instance(_film("1.1", "1.1.0", "longleg_ap", "cd" * 32), outside, NOW - 60 * DAY)
    image = box.store_dir / ("ef" * 32 + ".png")
    image.write_bytes(b"p" * 20)
    sidecar = image.with_name(image.name + ".json")
    sidecar.write_text("{}")
    box.jobs.add_instance(_film("1.1", "1.1.1", "knee_ap", "ef" * 32), image, NOW - 60 * DAY)
    box.done("1.1", NOW - 50 * DAY)
    result = box.prune()
    assert outside.exists()
    assert not image.exists() and not sidecar.exists() and result.deleted_files == 2


def test_runs_beside_an_open_service_connection(box: Box) -> None:
    # The service keeps its JobStore open (WAL); pruning uses its own connection meanwhile.
    path = box.film("1.1", 0, NOW - 60 * DAY)
    box.done("1.1", NOW - 50 * DAY)
    other = sqlite3.connect(str(box.db_path), timeout=5.0)
    try:
        assert other.execute("SELECT COUNT(*) FROM instances").fetchone() == (1,)
        assert box.prune().deleted_files == 1 and not path.exists()
        assert other.execute("SELECT COUNT(*) FROM instances").fetchone() == (1,)
    finally:
        other.close()
