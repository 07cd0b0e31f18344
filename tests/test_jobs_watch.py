"""The service end to end: a real inbox watched by watchdog in a real ``xr3d watch`` subprocess, a
real SQLite job store, real DICOM files (a simulated study re-identified per test), SIGTERM and
SIGKILL. Waiting is bounded by generous deadlines; nothing asserts on how long anything took.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from service_films import db_rows, start

from appliance.dicomio.uids import uid_from
from appliance.ingest.quarantine import read_records
from export.simulator.case import CaseOptions, generate_case

SEED = 900900
VIEWS = ("longleg_ap", "knee_ap", "knee_lat")
# Patient data written into every test film: none of it may ever reach a log line or an output.
PHI = {"PatientName": "Quixote^Dulcinea", "PatientID": "PID7731XQ", "PatientBirthDate": "19410523"}
DEADLINE_S = 300.0  # liveness bound; a loaded 2-core box once needed more than 90 s


@pytest.fixture(scope="module")
def sim_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    opts = CaseOptions(
        views=("longleg", "knee-ap", "knee-lat"),
        write_ct=False,
        longleg_pitch=1.0,
        knee_pitch=0.8,
        leg_spacing=2.5,
        knee_spacing=1.25,
    )
    return generate_case(SEED, tmp_path_factory.mktemp("sim"), opts)


def study_bytes(sim_case: Path, index: int) -> dict[str, bytes]:
    """The three films of study ``index``: new UIDs, patient data filled in."""
    out: dict[str, bytes] = {}
    study_uid = uid_from("xr3d test study", str(index))
    for view in VIEWS:
        ds = pydicom.dcmread(sim_case / f"{view}.dcm")
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = uid_from("xr3d test series", str(index), view)
        ds.SOPInstanceUID = uid_from("xr3d test sop", str(index), view)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for kw, value in PHI.items():
            setattr(ds, kw, value)
        path = sim_case.parent / f".tmp-{os.getpid()}-{index}-{view}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[view] = path.read_bytes()
        path.unlink()
    return out


def write_config(root: Path, **ingest: float) -> Path:
    ing = {"stable_seconds": 0.3, "incomplete_grace_seconds": 3.0, **ingest}
    text = (
        '[paths]\ninbox = "inbox"\noutbox = "outbox"\nstate = "state"\n'
        "[ingest]\n" + "".join(f"{k} = {v}\n" for k, v in ing.items()) + "[jobs]\nquiet_seconds = 600\n"
        "max_attempts = 3\nbackoff_seconds = 0.2\n"
        "[watch]\ntick_seconds = 0.05\nreconcile_seconds = 1.0\n"
    )
    cfg = root / "xr3d.toml"
    cfg.write_text(text)
    (root / "inbox").mkdir(exist_ok=True)
    return cfg


def watch_cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli.main", "-vv", "watch", "--config", str(cfg), *extra]


def wait_for(what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def inbox_files(root: Path) -> list[Path]:
    return [p for p in (root / "inbox").rglob("*") if p.is_file()]


def assert_no_phi(root: Path, log: Path) -> None:
    text = log.read_text(errors="replace")
    assert text.strip(), "the watcher logged nothing: the PHI check would be vacuous"
    for p in [*(root / "outbox").rglob("*.json"), *(root / "state" / "quarantine").rglob("*.json")]:
        text += p.read_text()
    for value in (*PHI.values(), "Quixote", "Dulcinea", "1941-05-23"):
        assert value not in text, f"patient data {value!r} leaked into logs or records"


def test_watch_study_in_any_order_duplicates_and_bad_files(tmp_path: Path, sim_case: Path) -> None:
    cfg = write_config(tmp_path)
    log = tmp_path / "watch.log"
    proc = start(watch_cmd(cfg), log)
    try:
        inbox = tmp_path / "inbox"
        films = study_bytes(sim_case, 1)
        wait_for("the job database", lambda: (tmp_path / "state" / "jobs.sqlite3").exists(), proc)

        def renamed_in(view: str) -> None:
            tmp = inbox / f".{view}.dcm.part"
            tmp.write_bytes(films[view])
            os.replace(tmp, inbox / f"{view}.dcm")

        def written_slowly(view: str) -> None:
            data = films[view]
            with open(inbox / f"{view}.dcm", "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                time.sleep(1.0)  # longer than stable_seconds: the half file is seen, read, deferred
                fh.write(data[len(data) // 2 :])

        def plain(view: str) -> None:
            (inbox / f"{view}.dcm").write_bytes(films[view])

        order = list(zip(VIEWS, (written_slowly, renamed_in, plain), strict=True))
        random.Random(7).shuffle(order)
        for view, how in order:
            how(view)
        # Bad files, each with the reason it must be quarantined for.
        chest = get_testdata_file("RG1_UNCR.dcm", download=False)
        (inbox / "chest.dcm").write_bytes(Path(str(chest)).read_bytes())
        (inbox / "notes.txt").write_text("scanned referral letter")
        (inbox / "cut.dcm").write_bytes(films["knee_ap"][:3000])

        wait_for(
            "the study to be done",
            lambda: db_rows(tmp_path, "SELECT state FROM studies") == [("done",)],
            proc,
        )
        wait_for(
            "three quarantined files", lambda: len(read_records(tmp_path / "state" / "quarantine")) == 3, proc
        )
        wait_for("an empty inbox", lambda: not inbox_files(tmp_path), proc)

        (inbox / "copy_of_knee_ap.dcm").write_bytes(films["knee_ap"])  # the same instance again
        wait_for(
            "the duplicate to be dropped",
            lambda: db_rows(tmp_path, "SELECT COUNT(*) FROM files WHERE outcome = 'duplicate'") == [(1,)],
            proc,
        )
        wait_for("an empty inbox", lambda: not inbox_files(tmp_path), proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert db_rows(tmp_path, "SELECT state, attempts FROM studies") == [("done", 1)]
    reasons = sorted(str(r["reason"]) for r in read_records(tmp_path / "state" / "quarantine"))
    assert reasons == ["not_dicom", "not_lower_limb", "truncated"]
    outputs = [p for p in (tmp_path / "outbox").iterdir()]
    assert len(outputs) == 1 and not outputs[0].name.startswith(".")
    result = json.loads((outputs[0] / "result.json").read_text())
    # xr3d watch runs the study pipeline (appliance/pipeline): docs/study-outputs.md
    assert result["schema"] == "xr3d.result/1" and result["status"] == "measured"
    assert sorted(result["films"]) == sorted(VIEWS) and result["missing_views"] == []
    assert result["side"] == "R"
    assert_no_phi(tmp_path, log)
    assert "SIGTERM" in log.read_text() or "signal 15" in log.read_text()


SLOW_SERVICE = """
import logging, sys, time
from pathlib import Path
from appliance.config import load_settings
from appliance.jobs.processor import ingested_only_processor
from appliance.jobs.service import Service

def slow(study, out):
    (out / "result.json").write_text('{"partial": ')  # a half-written output, never to be seen
    time.sleep(0.3)
    ingested_only_processor(study, out)

logging.basicConfig(level=logging.DEBUG)
Service(load_settings(Path(sys.argv[1])), processor=slow).run()
"""


PLACEHOLDER_SERVICE = """
import logging, signal, sys, threading
from pathlib import Path
from appliance.config import load_settings
from appliance.jobs.service import Service

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
logging.basicConfig(level=logging.INFO)
Service(load_settings(Path(sys.argv[1])), stop=stop).run()
"""


def _running_after(root: Path, n_done: int) -> Callable[[], bool]:
    def cond() -> bool:
        states = [s for (s,) in db_rows(root, "SELECT state FROM studies")]
        return states.count("done") >= n_done and "running" in states

    return cond


def test_sigkill_then_restart_finishes_every_study(tmp_path: Path, sim_case: Path) -> None:
    cfg = write_config(tmp_path)
    n = 6
    for i in range(n):
        for view, data in study_bytes(sim_case, 100 + i).items():
            (tmp_path / "inbox" / f"s{i}_{view}.dcm").write_bytes(data)
    log = tmp_path / "watch.log"
    for kill_round in range(2):
        proc = start([sys.executable, "-c", SLOW_SERVICE, str(cfg)], log)
        try:
            # A new study done since the last kill proves this process recovered and is working.
            wait_for(
                f"a study running after {kill_round + 1} done (round {kill_round})",
                _running_after(tmp_path, kill_round + 1),
                proc,
            )
            time.sleep(0.1)  # somewhere inside the processor or the publish step
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for out in (tmp_path / "outbox").iterdir():
            if not out.name.startswith("."):  # anything visible is complete
                assert json.loads((out / "result.json").read_text())["status"] == "ingested_only"
    done = subprocess.run(
        watch_cmd(cfg, "--once"), capture_output=True, text=True, timeout=300, cwd=str(tmp_path), check=True
    )
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["studies"] == {"done": n}
    assert summary["files"].get("accepted") == 3 * n and "quarantined" not in summary["files"]
    rows = db_rows(tmp_path, "SELECT state, attempts FROM studies")
    assert len(rows) == n and all(state == "done" and 1 <= int(a) <= 3 for state, a in rows)
    outputs = sorted((tmp_path / "outbox").iterdir())
    assert len(outputs) == n and not any(p.name.startswith(".") for p in outputs)
    for out in outputs:  # done before the kills (test processor) or by xr3d watch (study pipeline)
        assert json.loads((out / "result.json").read_text())["status"] in ("ingested_only", "measured")
    with open(log, "a") as fh:
        fh.write(done.stderr)
    assert_no_phi(tmp_path, log)


@pytest.mark.slow
def test_soak_300_studies_10_percent_bad(tmp_path: Path, sim_case: Path) -> None:
    """300 studies (900 films) copied in by 4 threads while the watcher runs; 30 of them (10 %) carry a
    bad file (truncated, not DICOM, a chest film) or a duplicate, or arrive partial at first."""
    cfg = write_config(tmp_path, incomplete_grace_seconds=5.0)
    inbox = tmp_path / "inbox"
    n = 300
    log = tmp_path / "watch.log"
    # The job machinery at scale, with the model-free processor: the same soak with the real study
    # pipeline is tests/test_service_soak.py.
    proc = start([sys.executable, "-c", PLACEHOLDER_SERVICE, str(cfg)], log)
    chest = Path(str(get_testdata_file("RG1_UNCR.dcm", download=False))).read_bytes()
    bad_kinds = ["truncated", "not_dicom", "chest", "duplicate", "partial"] * 6
    expected_quarantine = {"truncated": 6, "not_dicom": 6, "not_lower_limb": 6}

    def copy(indices: list[int]) -> None:
        for i in indices:
            films = study_bytes(sim_case, 1000 + i)
            kind = bad_kinds[i] if i < len(bad_kinds) else ""
            for view, data in films.items():
                target = inbox / f"s{i}_{view}.dcm"
                if kind == "partial" and view == "longleg_ap":
                    with open(target, "wb") as fh:
                        fh.write(data[: len(data) // 3])
                        fh.flush()
                        time.sleep(1.0)
                        fh.write(data[len(data) // 3 :])
                    continue
                tmp = inbox / f".{target.name}.tmp"
                tmp.write_bytes(data)
                os.replace(tmp, target)
            extra = inbox / f"s{i}_extra.dcm"
            if kind == "truncated":
                extra.write_bytes(films["knee_ap"][:5000])
            elif kind == "not_dicom":
                extra.write_text("not a film")
            elif kind == "chest":
                extra.write_bytes(chest)
            elif kind == "duplicate":
                extra.write_bytes(films["knee_lat"])

    try:
        threads = [threading.Thread(target=copy, args=(list(range(k, n, 4)),)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(
            "every study done",
            lambda: db_rows(tmp_path, "SELECT state, COUNT(*) FROM studies GROUP BY state") == [("done", n)],
            proc,
        )
        wait_for("an empty inbox", lambda: not inbox_files(tmp_path), proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    counts = dict(db_rows(tmp_path, "SELECT outcome, COUNT(*) FROM files GROUP BY outcome"))
    assert counts == {"accepted": 3 * n, "duplicate": 6, "quarantined": 18}
    got: dict[str, int] = {}
    for rec in read_records(tmp_path / "state" / "quarantine"):
        got[str(rec["reason"])] = got.get(str(rec["reason"]), 0) + 1
    assert got == expected_quarantine
    assert db_rows(tmp_path, "SELECT MAX(attempts) FROM studies") == [(1,)]
    assert len([p for p in (tmp_path / "outbox").iterdir() if not p.name.startswith(".")]) == n
    assert_no_phi(tmp_path, log)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path, sim_case: Path) -> None:
    """30 studies; the watcher is SIGKILLed five times at random moments (during intake, processing
    or publishing), then runs to the end: every study done once, no output partial, nothing lost."""
    cfg = write_config(tmp_path)
    n = 30
    for i in range(n):
        for view, data in study_bytes(sim_case, 5000 + i).items():
            (tmp_path / "inbox" / f"s{i}_{view}.dcm").write_bytes(data)
    log = tmp_path / "watch.log"
    rng = random.Random(11)
    for _ in range(5):
        proc = start([sys.executable, "-c", SLOW_SERVICE, str(cfg)], log)
        try:
            wait_for("the job database", lambda: (tmp_path / "state" / "jobs.sqlite3").exists(), proc)
            time.sleep(rng.uniform(0.5, 2.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        for out in (tmp_path / "outbox").iterdir():
            if not out.name.startswith("."):
                assert json.loads((out / "result.json").read_text())["status"] == "ingested_only"
    subprocess.run(watch_cmd(cfg, "--once"), capture_output=True, timeout=600, cwd=str(tmp_path), check=True)
    rows = db_rows(tmp_path, "SELECT state, attempts FROM studies")
    assert len(rows) == n and all(state == "done" and 1 <= int(a) <= 3 for state, a in rows)
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM instances") == [(3 * n,)]
    assert db_rows(tmp_path, "SELECT COUNT(*) FROM files WHERE outcome = 'quarantined'") == [(0,)]
    assert not inbox_files(tmp_path)
    outputs = sorted((tmp_path / "outbox").iterdir())
    assert len(outputs) == n and not any(p.name.startswith(".") for p in outputs)
    assert_no_phi(tmp_path, log)
