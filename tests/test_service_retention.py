"""The service prunes ``state/store/`` with ``[retention] store_days``: at start and from its loop.

Real DICOM films through the real intake, the real SQLite job store, real files in the store; the
"long ago" is made by moving a finished study's ``updated`` time back in the database (time travel,
the only thing faked). The processor is the service's ingested-only one: retention does not depend on
what a study's outputs are, and it keeps the test fast.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from service_films import StudyFactory, cached_template, drop

import appliance.jobs.service as service_mod
from appliance.config import Settings, settings_from_mapping
from appliance.jobs.service import Service

DAY = 86_400.0


@pytest.fixture(scope="module")
def factory(request: pytest.FixtureRequest) -> StudyFactory:
    template = cached_template(request.config.cache.mkdir("xr3d_service_template"))
    return StudyFactory(template, tag="xr3d retention test")


def _settings(root: Path, store_days: float) -> Settings:
    doc = {
        "ingest": {"stable_seconds": 0.0},
        "jobs": {"quiet_seconds": 0.0, "backoff_seconds": 0.0},
        "watch": {"tick_seconds": 0.02},
        "retention": {"store_days": store_days},
    }
    over = {"inbox": root / "in", "outbox": root / "out", "state": root / "st"}
    s = settings_from_mapping(doc, base_dir=root, overrides=over)
    s.paths.inbox.mkdir(parents=True)
    return s


def _stored(s: Settings, study_uid: str) -> list[Path]:
    db = sqlite3.connect(str(s.paths.database))
    try:
        rows = db.execute("SELECT stored_path FROM instances WHERE study_uid = ?", (study_uid,)).fetchall()
    finally:
        db.close()
    return [Path(p) for (p,) in rows]


def _age(s: Settings, study_uid: str, days: float) -> None:
    db = sqlite3.connect(str(s.paths.database))
    try:
        with db:
            db.execute(
                "UPDATE studies SET updated = ? WHERE study_uid = ?", (time.time() - days * DAY, study_uid)
            )
    finally:
        db.close()


def _two_done_studies(s: Settings, factory: StudyFactory) -> tuple[str, str]:
    old, recent = factory.study_uid(41), factory.study_uid(42)
    for i in (41, 42):
        for view, data in factory.films(i).items():
            drop(s.paths.inbox, f"{i}_{view}.dcm", data)
    summary = Service(s).run(once=True)
    assert summary.studies == {"done": 2}
    for uid in (old, recent):
        assert len(_stored(s, uid)) == 3 and all(p.is_file() for p in _stored(s, uid))
    return old, recent


def test_service_start_prunes_old_done_study(tmp_path: Path, factory: StudyFactory) -> None:
    s = _settings(tmp_path, store_days=30)
    old, recent = _two_done_studies(s, factory)
    _age(s, old, 31)
    _age(s, recent, 29)
    Service(s).run(once=True)  # a (re)start: retention runs before the inbox is read
    assert not any(p.exists() for p in _stored(s, old))
    assert all(p.is_file() for p in _stored(s, recent))
    # only the files go: the rows stay for duplicate detection
    assert len(_stored(s, old)) == 3
    # the published results are untouched
    assert (s.paths.outbox / old / "result.json").is_file()


def test_store_days_zero_keeps_forever(tmp_path: Path, factory: StudyFactory) -> None:
    s = _settings(tmp_path, store_days=0)
    old, _ = _two_done_studies(s, factory)
    _age(s, old, 3650)
    Service(s).run(once=True)
    assert all(p.is_file() for p in _stored(s, old))


def test_running_service_prunes_again_later(
    tmp_path: Path, factory: StudyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop prunes again after RETENTION_INTERVAL_SECONDS (one day; shortened here)."""
    s = _settings(tmp_path, store_days=30)
    old, recent = _two_done_studies(s, factory)
    monkeypatch.setattr(service_mod, "RETENTION_INTERVAL_SECONDS", 0.2)
    stop = threading.Event()
    svc = Service(s, stop=stop)
    runner = threading.Thread(target=svc.run, daemon=True)
    runner.start()
    try:
        # The study becomes old while the service runs: only a pass from the loop can delete its films.
        _age(s, old, 40)
        deadline = time.monotonic() + 120  # a generous bound only turns a hang into a failure
        while any(p.exists() for p in _stored(s, old)) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(timeout=60)
    assert not runner.is_alive()
    assert not any(p.exists() for p in _stored(s, old))
    assert all(p.is_file() for p in _stored(s, recent))
