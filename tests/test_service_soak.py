"""Soak: many studies copied into a real watched inbox by several threads at once while a real
``xr3d watch`` runs the real study pipeline (shipped landmark models, ONNX Runtime CPU) with two
workers; a share of the studies come with a bad file or arrive badly. Checked by counting: every valid
study done exactly once (one attempt, one processing log line, one complete outbox folder), every bad
file quarantined with its reason, duplicates dropped, nothing left in the inbox, nothing lost.

Bad kinds (one per affected study, in rotation): ``corrupt`` (an extra file whose header is garbage:
not_dicom), ``truncated`` (an extra copy of the knee AP cut short: truncated), ``partial`` (the long-leg
film written in place in two parts with a pause: first seen unreadable, then completed and accepted),
``duplicated`` (the knee lateral film delivered twice: dropped), ``unsupported`` (a real chest film with
this study's UIDs: not_lower_limb).
"""

from __future__ import annotations

import io
import json
import re
import signal
import threading
from pathlib import Path

import pydicom
import pytest
from service_films import (
    BAD_KINDS,
    QUARANTINE_REASON,
    VIEWS,
    StudyFactory,
    assert_no_phi,
    cached_template,
    chest_film,
    corrupt,
    db_rows,
    drop,
    drop_slowly,
    start,
    visible_outputs,
    wait_for,
    watch_cmd,
    write_config,
)

from appliance.dicomio.uids import uid_from
from appliance.ingest.quarantine import read_records


@pytest.fixture(scope="module")
def factory(request: pytest.FixtureRequest) -> StudyFactory:
    return StudyFactory(cached_template(request.config.cache.mkdir("xr3d_service_template")), tag="soak")


def _unsupported(index: int, study_uid: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(chest_film()))
    ds.StudyInstanceUID = study_uid
    ds.SOPInstanceUID = uid_from("soak chest", str(index))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def run_soak(root: Path, factory: StudyFactory, n: int, bad_every: int, threads: int = 4) -> None:
    """``n`` studies, every ``bad_every``-th one with the next bad kind; asserts the final counts."""
    cfg = write_config(root, workers=2, incomplete_grace_seconds=8.0)
    inbox = root / "inbox"
    kinds = {i: BAD_KINDS[(i // bad_every) % len(BAD_KINDS)] for i in range(0, n, bad_every)}

    def copy(indices: list[int]) -> None:
        for i in indices:
            films = factory.films(i)
            kind = kinds.get(i, "")
            for view, data in films.items():
                if kind == "partial" and view == "longleg_ap":
                    drop_slowly(inbox, f"s{i}_{view}.dcm", data)
                else:
                    drop(inbox, f"s{i}_{view}.dcm", data)
            if kind == "corrupt":
                drop(inbox, f"s{i}_corrupt.dcm", corrupt(films["knee_ap"]))
            elif kind == "truncated":
                drop(inbox, f"s{i}_cut.dcm", films["knee_ap"][:5000])
            elif kind == "duplicated":
                drop(inbox, f"s{i}_again.dcm", films["knee_lat"])
            elif kind == "unsupported":
                drop(inbox, f"s{i}_chest.dcm", _unsupported(i, factory.study_uid(i)))

    log = root / "watch.log"
    proc = start(watch_cmd(cfg), log)
    expected_q = {QUARANTINE_REASON[k]: 0 for k in QUARANTINE_REASON}
    for k in kinds.values():
        if k in QUARANTINE_REASON:
            expected_q[QUARANTINE_REASON[k]] += 1
    n_dup = sum(k == "duplicated" for k in kinds.values())
    try:
        workers = [threading.Thread(target=copy, args=(list(range(t, n, threads)),)) for t in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        wait_for(
            f"{n} studies done",
            lambda: db_rows(root, "SELECT state, COUNT(*) FROM studies GROUP BY state") == [("done", n)],
            proc,
            deadline_s=120 + 30 * n,  # a liveness bound only: generous for a busy CI box
        )
        wait_for(
            "every bad file quarantined",
            lambda: len(read_records(root / "state" / "quarantine")) == sum(expected_q.values()),
            proc,
        )
        wait_for("an empty inbox", lambda: not [p for p in inbox.rglob("*") if p.is_file()], proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    counts = {str(o): c for o, c in db_rows(root, "SELECT outcome, COUNT(*) FROM files GROUP BY outcome")}
    assert counts == {
        "accepted": 3 * n,
        **({"duplicate": n_dup} if n_dup else {}),
        "quarantined": sum(expected_q.values()),
    }
    got: dict[str, int] = {}
    for rec in read_records(root / "state" / "quarantine"):
        got[str(rec["reason"])] = got.get(str(rec["reason"]), 0) + 1
    assert got == {r: c for r, c in expected_q.items() if c}
    assert db_rows(root, "SELECT MIN(attempts), MAX(attempts) FROM studies") == [(1, 1)]
    assert db_rows(root, "SELECT COUNT(*) FROM instances") == [(3 * n,)]

    outputs = visible_outputs(root / "outbox")
    assert sorted(p.name for p in outputs) == sorted(factory.study_uid(i) for i in range(n))
    assert not [p for p in (root / "outbox").iterdir() if p.name.startswith(".")]
    for out in outputs:
        doc = json.loads((out / "result.json").read_text())
        assert doc["status"] == "measured" and sorted(doc["films"]) == sorted(VIEWS)
        assert all((out / f).is_file() for f in doc["files"])
    text = log.read_text(errors="replace")
    # Processed exactly once: one pipeline log line per study, naming its key.
    keys = re.findall(r"appliance\.pipeline\.study: study ([0-9a-f]{16}) measured", text)
    assert len(keys) == n and len(set(keys)) == n
    assert_no_phi(text, *(p.read_text() for p in (root / "outbox").rglob("*.json")))


def test_soak_20_studies_every_bad_kind(tmp_path: Path, factory: StudyFactory) -> None:
    """The default-suite size: 20 studies (60 films), 5 of them (one per bad kind) affected."""
    run_soak(tmp_path, factory, n=20, bad_every=4)


@pytest.mark.slow
def test_soak_300_studies_10_percent_bad(tmp_path: Path, factory: StudyFactory) -> None:
    """Issue 7's soak: 300 studies (900 films + 24 extra files), 30 (10 %) affected, 6 of each kind."""
    run_soak(tmp_path, factory, n=300, bad_every=10)
