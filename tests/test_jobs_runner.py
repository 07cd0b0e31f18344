"""Running studies in-process: retries, poison studies, quarantined studies, an unwritable outbox,
and no patient data in the log. Real files (the RG3 lower leg of pydicom-data), real folders, real
SQLite, the real service loop in ``--once`` mode; only the processor is a test's own function."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from appliance.config import Settings, settings_from_mapping
from appliance.dicomio.uids import uid_from
from appliance.errors import InputError
from appliance.jobs.processor import StudyInput, ingested_only_processor
from appliance.jobs.service import Service
from appliance.jobs.store import JobStore

PHI = {"PatientName": "Quixote^Dulcinea", "PatientID": "PID7731XQ", "PatientBirthDate": "19410523"}


def _settings(root: Path, **jobs: float) -> Settings:
    doc = {
        "ingest": {"stable_seconds": 0.0, "incomplete_grace_seconds": 0.0, "missing_spacing": "default"},
        "jobs": {"quiet_seconds": 0.0, "max_attempts": 2, "backoff_seconds": 0.0, **jobs},
        "watch": {"tick_seconds": 0.01},
    }
    return settings_from_mapping(
        doc, base_dir=root, overrides={"inbox": root / "in", "outbox": root / "out", "state": root / "st"}
    )


def _drop_study(root: Path, name: str) -> str:
    """One real RG3 film as study ``name`` (new UIDs, patient data filled in); returns its UID."""
    src = get_testdata_file("RG3_UNCR.dcm", download=False)
    if src is None:
        pytest.skip("pydicom-data not installed")
    ds = pydicom.dcmread(str(src))
    ds.StudyInstanceUID = uid_from("runner test", name)
    ds.SOPInstanceUID = uid_from("runner test sop", name)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for kw, value in PHI.items():
        setattr(ds, kw, value)
    (root / "in").mkdir(parents=True, exist_ok=True)
    ds.save_as(root / "in" / f"{name}.dcm")
    return str(ds.StudyInstanceUID)


def _state(s: Settings, uid: str) -> tuple[str, int]:
    store = JobStore(s.paths.database)
    try:
        row = store.study(uid)
        assert row is not None
        return row.state, row.attempts
    finally:
        store.close()


def test_poison_study_fails_after_bounded_retries_and_does_not_block(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    poison, good = _drop_study(tmp_path, "poison"), _drop_study(tmp_path, "good")
    calls: list[str] = []

    def processor(study: StudyInput, out: Path) -> None:
        calls.append(study.study_key)
        if study.study_uid == poison:
            raise RuntimeError("model crashed")
        ingested_only_processor(study, out)

    summary = Service(s, processor=processor).run(once=True)
    assert summary.studies == {"done": 1, "failed": 1}
    assert _state(s, poison) == ("failed", 2) and _state(s, good) == ("done", 1)
    assert len(calls) == 3
    result = json.loads(next((tmp_path / "out").iterdir()).joinpath("result.json").read_text())
    assert result["views"]["knee_ap"][0]["spacing_flag"] == "default_spacing"
    assert result["flags"] == ["default_spacing"]


def test_input_error_quarantines_the_study(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    uid = _drop_study(tmp_path, "bad")

    def processor(study: StudyInput, out: Path) -> None:
        raise InputError("the long-leg film is missing", reason="missing_view")

    assert Service(s, processor=processor).run(once=True).studies == {"quarantined": 1}
    assert _state(s, uid) == ("quarantined", 1)
    assert not list((tmp_path / "out").iterdir())


def test_unwritable_outbox_keeps_the_study_and_recovers(tmp_path: Path) -> None:
    s = _settings(tmp_path, backoff_seconds=0.0)
    uid = _drop_study(tmp_path, "full")
    disk_full = {"on": True}

    def processor(study: StudyInput, out: Path) -> None:
        if disk_full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        ingested_only_processor(study, out)

    runs = 0

    def counting(study: StudyInput, out: Path) -> None:
        nonlocal runs
        runs += 1
        if runs >= 5:
            disk_full["on"] = False  # space came back
        processor(study, out)

    summary = Service(s, processor=counting).run(once=True)
    assert summary.studies == {"done": 1}
    assert runs == 5  # four failures did not use up the two attempts
    assert _state(s, uid) == ("done", 1)
    assert len(list(s.paths.store.iterdir())) == 1  # the input was kept throughout


def test_no_patient_data_in_any_log_record(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = _settings(tmp_path)
    _drop_study(tmp_path, "phi")
    (tmp_path / "in" / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with caplog.at_level(logging.DEBUG):
        Service(s).run(once=True)
    assert any("accepted" in r.getMessage() for r in caplog.records)
    assert any("quarantined" in r.getMessage() for r in caplog.records)
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in (*PHI.values(), "Quixote", "Dulcinea"):
        assert value not in text


def test_polling_observer_and_stop_event(tmp_path: Path) -> None:
    """The long-running loop with watchdog's polling observer (network shares); the stop event (what
    SIGTERM sets) ends it cleanly. Files in hidden sub-folders and temporaries are left alone."""
    import threading
    import time

    doc = {
        "ingest": {"stable_seconds": 0.1, "missing_spacing": "default"},
        "jobs": {"quiet_seconds": 0.0},
        "watch": {"polling": True, "poll_interval_seconds": 0.2, "tick_seconds": 0.05},
    }
    inbox = tmp_path / ".hidden-parent" / "in"  # a hidden folder above the inbox is fine
    s = settings_from_mapping(
        doc,
        base_dir=tmp_path,
        overrides={"inbox": inbox, "outbox": tmp_path / "out", "state": tmp_path / "st"},
    )
    stop = threading.Event()
    service = Service(s, stop=stop)
    thread = threading.Thread(target=service.run)
    thread.start()
    try:
        while not s.paths.database.exists():
            time.sleep(0.05)
        (inbox / ".staging").mkdir(parents=True, exist_ok=True)
        (inbox / ".staging" / "later.dcm").write_bytes(b"in progress")
        (inbox / "upload.dcm.part").write_bytes(b"in progress")
        uid = _drop_study(tmp_path, "poll")  # written to tmp_path/in, then moved into the inbox
        (tmp_path / "in" / "poll.dcm").rename(inbox / "poll.dcm")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(s.paths.outbox.glob("*/result.json")):
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert _state(s, uid) == ("done", 1)
    assert sorted(p.name for p in inbox.rglob("*") if p.is_file()) == ["later.dcm", "upload.dcm.part"]
