"""The SQLite job store: idempotency, readiness, retries with backoff, poison studies, recovery."""

from __future__ import annotations

from pathlib import Path

from job_films import film_record as _film

from appliance.jobs.store import JobStore

VIEWS = ("longleg_ap", "knee_ap", "knee_lat")


def test_same_instance_is_recorded_once_and_survives_reopen(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    assert store.add_instance(_film("1.1", "1.1.1", "knee_ap"), tmp_path / "a", 0.0)
    assert not store.add_instance(_film("1.1", "1.1.1", "knee_ap"), tmp_path / "a", 1.0)
    assert store.has_instance("1.1.1", "h1.1.1")
    store.close()
    store = JobStore(tmp_path / "db.sqlite3")
    assert len(store.instances("1.1")) == 1
    assert store.file_counts() == {"accepted": 1, "duplicate": 1}
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_ready_when_views_complete_or_quiet(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    for i, view in enumerate(VIEWS):
        store.add_instance(_film("1.1", f"1.1.{i}", view), tmp_path / "a", 0.0)
    store.add_instance(_film("1.2", "1.2.1", "knee_ap"), tmp_path / "b", 0.0)
    assert store.promote_ready(1.0, VIEWS, quiet_seconds=100.0) == 1
    assert store.study("1.1").state == "queued" and store.study("1.2").state == "received"
    assert store.promote_ready(100.0, VIEWS, quiet_seconds=100.0) == 1
    assert store.study("1.2").state == "queued"


def test_retry_backoff_and_poison_study_does_not_block(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    store.add_instance(_film("9.9", "9.9.1", "knee_ap"), tmp_path / "p", 0.0)
    store.add_instance(_film("1.1", "1.1.1", "knee_ap"), tmp_path / "g", 0.5)
    store.promote_ready(1.0, VIEWS, quiet_seconds=0.0)
    poison = store.claim(1.0)
    assert poison is not None and poison.study_uid == "9.9" and poison.attempts == 1
    assert store.fail(poison, "boom", 1.0, max_attempts=2, backoff=10.0, backoff_max=60.0) == "queued"
    good = store.claim(1.0)  # the poison study waits out its backoff; the next one runs
    assert good is not None and good.study_uid == "1.1"
    assert store.finish(good, tmp_path / "out", 2.0) == "done"
    assert store.claim(5.0) is None
    again = store.claim(11.0)
    assert again is not None and again.study_uid == "9.9" and again.attempts == 2
    assert store.fail(again, "boom", 11.0, max_attempts=2, backoff=10.0, backoff_max=60.0) == "failed"
    assert store.study("9.9").error == "boom"
    assert store.study_counts() == {"done": 1, "failed": 1}


def test_recover_after_crash_requeues_or_fails(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    store.add_instance(_film("1.1", "1.1.1", "knee_ap"), tmp_path / "a", 0.0)
    store.promote_ready(0.0, VIEWS, quiet_seconds=0.0)
    assert store.claim(0.0) is not None  # then the process dies
    store.close()
    store = JobStore(tmp_path / "db.sqlite3")
    assert store.recover(1.0, max_attempts=2) == 1
    job = store.claim(1.0)
    assert job is not None and job.attempts == 2  # dies again: out of attempts
    assert store.recover(2.0, max_attempts=2) == 0
    assert store.study("1.1").state == "failed"


def test_new_film_reopens_a_done_study_and_a_running_one(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "db.sqlite3")
    store.add_instance(_film("1.1", "1.1.1", "knee_ap"), tmp_path / "a", 0.0)
    store.promote_ready(0.0, VIEWS, quiet_seconds=0.0)
    job = store.claim(0.0)
    assert job is not None
    store.add_instance(_film("1.1", "1.1.2", "knee_lat"), tmp_path / "b", 0.5)  # arrives mid-run
    assert store.finish(job, tmp_path / "out", 1.0) == "received"
    store.promote_ready(2.0, VIEWS, quiet_seconds=0.0)
    job = store.claim(2.0)
    assert job is not None and store.finish(job, tmp_path / "out", 3.0) == "done"
    store.add_instance(_film("1.1", "1.1.3", "longleg_ap"), tmp_path / "c", 4.0)
    assert store.study("1.1").state == "received"
