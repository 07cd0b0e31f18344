"""Disk full and read-only outbox under a real ``xr3d watch`` (real pipeline and store): the service
reports the problem (log line, error text in the job store), keeps the study's inputs and does not use
up its attempts, publishes nothing partial, and finishes the study once space (or write access) returns.

The outbox is a real small tmpfs mount (root only): too small for the study's films, or remounted
read-only; "space returns" is a remount with a larger size or read-write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
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

pytestmark = pytest.mark.skipif(
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
def small_outbox(root: Path, options: str) -> Iterator[Path]:
    outbox = root / "outbox"
    outbox.mkdir()
    try:
        _mount(outbox, options)
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    try:
        yield outbox
    finally:
        subprocess.run(["umount", "-l", str(outbox)], check=False)


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


def test_disk_full_outbox_keeps_the_study_and_recovers(tmp_path: Path, factory: StudyFactory) -> None:
    # 256 KiB: smaller than the long-leg film's copy, so the first write into the study folder fails.
    with small_outbox(tmp_path, "size=256k"):
        _run_until_recovered(tmp_path, factory, "No space left on device", "size=64m")


def test_read_only_outbox_keeps_the_study_and_recovers(tmp_path: Path, factory: StudyFactory) -> None:
    with small_outbox(tmp_path, "size=64m") as outbox:
        _remount(outbox, "ro")
        _run_until_recovered(tmp_path, factory, "Read-only file system", "rw")
