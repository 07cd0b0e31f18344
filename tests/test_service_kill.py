"""Kill test: a real ``xr3d watch`` (real study pipeline, real SQLite store, real inbox) is SIGKILLed
several times while it works, then restarted: every study ends done, none is left twice or half-written,
nothing is lost. After every kill, every folder visible in the outbox must be complete (result.json
parses and every file it lists is there), which is what "no partial output ever visible" means for a
reader such as the GUI."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from service_films import (
    VIEWS,
    StudyFactory,
    assert_no_phi,
    cached_template,
    db_rows,
    start,
    visible_outputs,
    wait_for,
    watch_cmd,
    write_config,
)

KILLS = 3


@pytest.fixture(scope="module")
def factory(request: pytest.FixtureRequest) -> StudyFactory:
    return StudyFactory(cached_template(request.config.cache.mkdir("xr3d_service_template")), tag="kill")


def _assert_complete(outbox: Path) -> None:
    for out in visible_outputs(outbox):
        doc = json.loads((out / "result.json").read_text())
        assert doc["schema"] == "xr3d.result/1" and doc["status"] == "measured"
        missing = [f for f in doc["files"] if not (out / f).is_file()]
        assert not missing, f"{out.name}: listed but absent {missing}"
        assert sorted(doc["films"]) == sorted(VIEWS)


def _done(root: Path) -> int:
    return int(str(db_rows(root, "SELECT COUNT(*) FROM studies WHERE state = 'done'")[0][0]))


def _working_after(root: Path, n_done: int) -> Callable[[], bool]:
    def cond() -> bool:
        states = [s for (s,) in db_rows(root, "SELECT state FROM studies")]
        return states.count("done") >= n_done and "running" in states

    return cond


def _started(log: Path, n: int) -> Callable[[], bool]:
    # The line comes after the recovery step, so stale "running" rows of the killed process are gone.
    return lambda: log.read_text(errors="replace").count("watching the inbox") >= n


def test_sigkill_repeatedly_then_restart_finishes_every_study(tmp_path: Path, factory: StudyFactory) -> None:
    cfg = write_config(tmp_path, workers=2)
    n = 9
    for i in range(n):
        for view, data in factory.films(i).items():
            (tmp_path / "inbox" / f"s{i}_{view}.dcm").write_bytes(data)
    log = tmp_path / "watch.log"
    rng = random.Random(20261124)
    for k in range(KILLS):
        before = _done(tmp_path) if k else 0
        proc = start(watch_cmd(cfg), log)
        try:
            # This process has recovered and finished one more study; kill it at a random moment while
            # another is being processed or published.
            wait_for(f"start {k + 1}", _started(log, k + 1), proc)
            wait_for(f"a study running after {before + 1} done", _working_after(tmp_path, before + 1), proc)
            time.sleep(rng.uniform(0.0, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _assert_complete(tmp_path / "outbox")

    done = subprocess.run(
        watch_cmd(cfg, "--once"), capture_output=True, text=True, timeout=900, cwd=str(tmp_path), check=True
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["studies"] == {"done": n}
    assert summary["files"].get("accepted") == 3 * n and "quarantined" not in summary["files"]
    rows = db_rows(tmp_path, "SELECT state, attempts FROM studies")
    assert len(rows) == n and all(state == "done" and 1 <= int(str(a)) <= 3 for state, a in rows)
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM instances") == [(3 * n,)]
    assert not [p for p in (tmp_path / "inbox").rglob("*") if p.is_file()]
    outputs = visible_outputs(tmp_path / "outbox")
    assert sorted(p.name for p in outputs) == sorted(factory.study_uid(i) for i in range(n))
    assert not [p for p in (tmp_path / "outbox").iterdir() if p.name.startswith(".")]
    _assert_complete(tmp_path / "outbox")
    text = log.read_text(errors="replace")
    assert text.count("watching the inbox") == KILLS
    assert text.count("recovered after an interruption") + done.stderr.count("recovered after") == KILLS
    assert_no_phi(text, done.stderr)
