"""Disk full and read-only outbox under a real ``xr3d watch`` (real pipeline and store): the service
reports the problem (log line, error text in the job store), keeps the study's inputs and does not use
up its attempts, publishes nothing partial, and finishes the study once space (or write access) returns.

The outbox (or the state folder) is a real small tmpfs mount (root only): too small for the study's
films, or remounted read-only; "space returns" is a remount with a larger size or read-write. A job
database refusing writes is made real with SQLite's ``query_only``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from service_films import (
    VIEWS,
    StudyFactory,
    assert_no_phi,
    cached_template,
    db_rows,
    drop,
    start,
    visible_outputs,
    wait_for,
    watch_cmd,
    write_config,
)

from appliance.config import settings_from_mapping
from appliance.ingest.quarantine import read_records
from appliance.jobs.intake import ACCEPTED, ERROR, intake_file
from appliance.jobs.processor import StudyInput, ingested_only_processor
from appliance.jobs.runner import run_job
from appliance.jobs.store import JobStore

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a small tmpfs needs root"
)


@pytest.fixture(scope="module")
def factory(request: pytest.FixtureRequest) -> StudyFactory:
    return StudyFactory(cached_template(request.config.cache.mkdir("xr3d_service_template")), tag="diskfull")


def _mount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], check=True)


def _remount(target: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(target)], check=True)


@contextmanager
def small_mount(folder: Path, options: str) -> Iterator[Path]:
    folder.mkdir(parents=True)
    try:
        _mount(folder, options)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextmanager
def small_outbox(root: Path, options: str) -> Iterator[Path]:
    with small_mount(root / "outbox", options) as outbox:
        yield outbox


def _stuck_with(root: Path, text: str) -> bool:
    rows = db_rows(root, "SELECT state, attempts, error FROM studies")
    return len(rows) == 1 and rows[0][0] in ("queued", "running") and text in str(rows[0][2] or "")


def _run_until_recovered(root: Path, factory: StudyFactory, error_text: str, give_back: str) -> None:
    cfg = write_config(root)
    films = factory.films(1)
    log = root / "watch.log"
    proc = start(watch_cmd(cfg), log)
    try:
        for view, data in films.items():
            drop(root / "inbox", f"{view}.dcm", data)
        wait_for(f"the study held back ({error_text})", lambda: _stuck_with(root, error_text), proc)
        wait_for("the service to report it", lambda: "outbox not writable" in log.read_text(), proc)
        # Inputs kept, attempts not used up, nothing visible in the outbox.
        stored = sorted(p.name for p in (root / "state" / "store").iterdir())
        assert len(stored) == 3 and db_rows(root, "SELECT COUNT(*) FROM instances") == [(3,)]
        assert db_rows(root, "SELECT attempts FROM studies")[0][0] in (0, 1)  # 1 while a retry runs
        assert visible_outputs(root / "outbox") == []
        _remount(root / "outbox", give_back)
        wait_for("the study done", lambda: db_rows(root, "SELECT state FROM studies") == [("done",)], proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outs = visible_outputs(root / "outbox")
    assert [p.name for p in outs] == [factory.study_uid(1)]
    doc = json.loads((outs[0] / "result.json").read_text())
    assert doc["status"] == "measured" and sorted(doc["films"]) == sorted(VIEWS)
    assert all((outs[0] / f).is_file() for f in doc["files"])
    assert not [p for p in (root / "outbox").iterdir() if p.name.startswith(".")]
    assert db_rows(root, "SELECT attempts, error FROM studies") == [(1, None)]
    assert_no_phi(log.read_text(errors="replace"))


@needs_root
def test_disk_full_outbox_keeps_the_study_and_recovers(tmp_path: Path, factory: StudyFactory) -> None:
    # 256 KiB: smaller than the long-leg film's copy, so the first write into the study folder fails.
    with small_outbox(tmp_path, "size=256k"):
        _run_until_recovered(tmp_path, factory, "No space left on device", "size=64m")


@needs_root
def test_read_only_outbox_keeps_the_study_and_recovers(tmp_path: Path, factory: StudyFactory) -> None:
    with small_outbox(tmp_path, "size=64m") as outbox:
        _remount(outbox, "ro")
        _run_until_recovered(tmp_path, factory, "Read-only file system", "rw")


@needs_root
def test_full_state_disk_leaves_films_in_the_inbox_until_space_returns(
    tmp_path: Path, factory: StudyFactory
) -> None:
    """The intake side: the job store's disk (state/) has room for the knee films but not the long-leg
    film. That film stays in the inbox (not quarantined), and is taken in once space returns."""
    cfg = write_config(tmp_path)
    films = factory.films(2)
    log = tmp_path / "watch.log"
    with small_mount(tmp_path / "state", "size=1m") as state:
        proc = start(watch_cmd(cfg), log)
        try:
            for view, data in films.items():
                drop(tmp_path / "inbox", f"{view}.dcm", data)
            wait_for("the service to report it", lambda: "stays in the inbox" in log.read_text(), proc)
            assert (tmp_path / "inbox" / "longleg_ap.dcm").read_bytes() == films["longleg_ap"]
            assert db_rows(tmp_path, "SELECT COUNT(*) FROM files WHERE outcome = 'quarantined'") == [(0,)]
            _remount(state, "size=64m")
            wait_for(
                "the study done", lambda: db_rows(tmp_path, "SELECT state FROM studies") == [("done",)], proc
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not (tmp_path / "inbox" / "longleg_ap.dcm").exists()
    assert [p.name for p in visible_outputs(tmp_path / "outbox")] == [factory.study_uid(2)]


def test_unwritable_job_database_leaves_the_file_in_the_inbox(tmp_path: Path, factory: StudyFactory) -> None:
    """SQLite refusing writes (SQLITE_READONLY, made real with ``query_only`` on the store's connection):
    the file is neither lost nor quarantined; it is taken in once the database is writable again."""
    s = settings_from_mapping(
        {"ingest": {"stable_seconds": 0.0}},
        base_dir=tmp_path,
        overrides={"inbox": tmp_path / "in", "outbox": tmp_path / "out", "state": tmp_path / "st"},
    )
    s.paths.inbox.mkdir(parents=True)
    film = s.paths.inbox / "knee_ap.dcm"
    film.write_bytes(factory.films(3, views=("knee_ap",))["knee_ap"])
    store = JobStore(s.paths.database)
    try:
        store._db.execute("PRAGMA query_only = ON")
        assert intake_file(film, s, store) == ERROR
        assert film.is_file() and not read_records(s.paths.quarantine)
        store._db.execute("PRAGMA query_only = OFF")
        assert intake_file(film, s, store) == ACCEPTED
        assert not film.exists() and store.file_counts() == {"accepted": 1}
    finally:
        store.close()


def test_published_but_unrecorded_study_is_redone_after_restart(
    tmp_path: Path, factory: StudyFactory
) -> None:
    """The job database becomes unwritable while a study runs: run_job does not raise, the published
    result stays complete, and the restart's recovery puts the study back in the queue."""
    s = settings_from_mapping(
        {"ingest": {"stable_seconds": 0.0}, "jobs": {"quiet_seconds": 0.0}},
        base_dir=tmp_path,
        overrides={"inbox": tmp_path / "in", "outbox": tmp_path / "out", "state": tmp_path / "st"},
    )
    s.paths.inbox.mkdir(parents=True)
    for view, data in factory.films(4).items():
        (s.paths.inbox / f"{view}.dcm").write_bytes(data)
    store = JobStore(s.paths.database)
    try:
        for f in sorted(s.paths.inbox.iterdir()):
            assert intake_file(f, s, store) == ACCEPTED
        assert store.promote_ready(time.time(), s.jobs.expected_views, s.jobs.quiet_seconds) == 1
        job = store.claim(time.time())
        assert job is not None

        def processor(study: StudyInput, out: Path) -> None:
            ingested_only_processor(study, out)
            store._db.execute("PRAGMA query_only = ON")  # the disk goes read-only mid-run

        assert run_job(job, s, store, processor) == "running"
        assert [p.name for p in visible_outputs(s.paths.outbox)] == [factory.study_uid(4)]
        store._db.execute("PRAGMA query_only = OFF")
        assert store.recover(time.time(), s.jobs.max_attempts) == 1
        assert store.study_counts() == {"queued": 1}
    finally:
        store.close()
