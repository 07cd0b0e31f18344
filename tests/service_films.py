"""Real DICOM studies for the service tests and the service benchmark, made cheaply: one simulated
study (three films) is rendered once, then cloned with new UIDs (and patient data filled in, which must
never reach a log or an output). The bad files of the acceptance tests are made from these clones."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from appliance.dicomio.uids import uid_from
from export.simulator.case import CaseOptions, generate_case

VIEWS = ("longleg_ap", "knee_ap", "knee_lat")
PHI = {"PatientName": "Quixote^Dulcinea", "PatientID": "PID7731XQ", "PatientBirthDate": "19410523"}
# Coarse and small, so the real pipeline (landmark models, overlay) takes well under a second per study.
TEMPLATE_OPTS = CaseOptions(
    views=("longleg", "knee-ap", "knee-lat"),
    write_ct=False,
    longleg_pitch=0.8,
    knee_pitch=0.8,
    leg_spacing=2.0,
    knee_spacing=1.25,
    contralateral=False,
    preview_max_px=200,
)
BAD_KINDS = ("corrupt", "truncated", "partial", "duplicated", "unsupported")
# What the intake must say about each bad file (docs/ingest.md). A partial file is completed later and a
# duplicate is dropped, so neither is quarantined.
QUARANTINE_REASON = {"corrupt": "not_dicom", "truncated": "truncated", "unsupported": "not_lower_limb"}


TEMPLATE_SEED = 900970  # demo/docs seed range, outside training and evaluation


def make_template(seed: int, out: Path) -> Path:
    """One simulated three-film study (demo seed range); returns its folder."""
    return generate_case(seed, out, TEMPLATE_OPTS)


def cached_template(cache_dir: Path, seed: int = TEMPLATE_SEED) -> Path:
    """The template study, rendered once per checkout (pytest's cache folder) and reused after."""
    case = cache_dir / f"case_{seed}"
    if all((case / f"{v}.dcm").is_file() for v in VIEWS) and (case / "truth.json").is_file():
        return case
    try:
        return make_template(seed, cache_dir)
    except OSError:
        # Another test process rendered the same case at the same moment and won the rename.
        if all((case / f"{v}.dcm").is_file() for v in VIEWS):
            return case
        raise


class StudyFactory:
    """Clones of the template study: ``films(i)`` -> {view: DICOM bytes} with UIDs unique to ``i``."""

    def __init__(self, template: Path, tag: str = "xr3d service test") -> None:
        # Bytes, parsed afresh per clone: a Dataset.copy() shares its data elements, so clones made in
        # several threads at once would overwrite each other's UIDs.
        self._bytes = {v: (template / f"{v}.dcm").read_bytes() for v in VIEWS}
        self.tag = tag

    def study_uid(self, index: int) -> str:
        return str(uid_from(self.tag, "study", str(index)))

    def films(self, index: int, views: tuple[str, ...] = VIEWS) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for view in views:
            ds = pydicom.dcmread(io.BytesIO(self._bytes[view]))
            ds.StudyInstanceUID = self.study_uid(index)
            ds.SeriesInstanceUID = uid_from(self.tag, "series", str(index), view)
            ds.SOPInstanceUID = uid_from(self.tag, "sop", str(index), view)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for kw, value in PHI.items():
                setattr(ds, kw, value)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            out[view] = buf.getvalue()
        return out


def chest_film() -> bytes:
    """A real chest radiograph (pydicom-data RG1): a valid DICOM film the appliance does not support."""
    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        raise RuntimeError("pydicom-data is not installed")
    return Path(str(path)).read_bytes()


def corrupt(data: bytes) -> bytes:
    """A file whose header is overwritten with garbage (the DICM marker and the meta group gone)."""
    junk = bytes((i * 151 + 17) % 256 for i in range(2048))
    return junk + data[2048:]


def drop(inbox: Path, name: str, data: bytes) -> None:
    """Copy into the inbox under a hidden name, then rename: how a well-behaved sender delivers."""
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)


def drop_slowly(inbox: Path, name: str, data: bytes, pause_s: float = 1.0) -> None:
    """Written in place in two parts with a pause: the first part is seen, unreadable, deferred."""
    with open(inbox / name, "wb") as fh:
        fh.write(data[: len(data) // 3])
        fh.flush()
        time.sleep(pause_s)
        fh.write(data[len(data) // 3 :])


def write_config(root: Path, *, workers: int = 1, **ingest: float) -> Path:
    ing = {"stable_seconds": 0.3, "incomplete_grace_seconds": 4.0, **ingest}
    text = (
        '[paths]\ninbox = "inbox"\noutbox = "outbox"\nstate = "state"\n'
        "[ingest]\n" + "".join(f"{k} = {v}\n" for k, v in ing.items()) + "[jobs]\nquiet_seconds = 600\n"
        f"max_attempts = 3\nbackoff_seconds = 0.2\nworkers = {workers}\n"
        "[watch]\ntick_seconds = 0.05\nreconcile_seconds = 1.0\n"
    )
    cfg = root / "xr3d.toml"
    cfg.write_text(text)
    (root / "inbox").mkdir(exist_ok=True)
    return cfg


def watch_cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "appliance.cli.main", "-v", "watch", "--config", str(cfg), *extra]


def start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    fh = open(log, "ab")  # noqa: SIM115 - the child keeps it; closed when the test's process exits
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(log.parent))


def db_rows(root: Path, sql: str) -> list[tuple[object, ...]]:
    db = root / "state" / "jobs.sqlite3"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def wait_for(
    what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes] | None = None, deadline_s: float = 300
) -> None:
    """Poll ``cond`` until true; a generous deadline only turns a hang into a failure (not a timing test)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"watcher exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def visible_outputs(outbox: Path) -> list[Path]:
    return sorted(p for p in outbox.iterdir() if not p.name.startswith(".")) if outbox.is_dir() else []


def assert_no_phi(*texts: str) -> None:
    blob = "\n".join(texts)
    for value in (*PHI.values(), "Quixote", "Dulcinea", "1941-05-23"):
        assert value not in blob, f"patient data {value!r} leaked"
