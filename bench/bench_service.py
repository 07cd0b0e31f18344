"""Service benchmark: studies per minute and drop-to-result latency of a real ``xr3d watch``.

A simulated three-film study (default simulator resolution: long-leg AP 0.35 mm, knee 0.25 mm pitch;
demo seed 900001 unless ``--template``) is cloned with new UIDs. The service runs as a subprocess with
the shipped models and the default ingest settings (a file must be stable for ``stable_seconds`` = 2 s
before it is read), so the latency is what a clinic would see: from the moment the last film of a study
is in the inbox to the moment its outbox folder appears.

- ``single``: studies dropped one at a time, each after the previous result (latency without queueing)
- ``burst``: N studies dropped at once (throughput; latency includes waiting in the queue)

    .venv/bin/python bench/bench_service.py --single 5 --burst 30 --workers 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pydicom

from appliance.dicomio.uids import uid_from
from export.simulator.case import CaseOptions, generate_case

VIEWS = ("longleg_ap", "knee_ap", "knee_lat")


def template(seed: int, cache: Path) -> Path:
    case = cache / f"case_{seed}"
    if all((case / f"{v}.dcm").is_file() for v in VIEWS):
        return case
    return generate_case(seed, cache, CaseOptions(write_ct=False))


def clone(raw: dict[str, bytes], index: int) -> tuple[str, dict[str, bytes]]:
    study = str(uid_from("bench service", "study", str(index)))
    out: dict[str, bytes] = {}
    for view, data in raw.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = uid_from("bench service", "series", str(index), view)
        ds.SOPInstanceUID = uid_from("bench service", "sop", str(index), view)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out[view] = buf.getvalue()
    return study, out


class Watcher:
    """Polls the outbox and records when each study folder first appears."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.outbox.is_dir():
                now = time.time()
                for p in self.outbox.iterdir():
                    if not p.name.startswith(".") and p.name not in self.seen:
                        self.seen[p.name] = now
            time.sleep(0.02)

    def wait(self, names: set[str], timeout: float) -> None:
        end = time.monotonic() + timeout
        while not names <= set(self.seen):
            if time.monotonic() > end:
                raise SystemExit(f"timed out: {len(names - set(self.seen))} studies without a result")
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def drop(inbox: Path, index: int, films: dict[str, bytes]) -> float:
    for view, data in films.items():
        tmp = inbox / f".s{index}_{view}.part"
        tmp.write_bytes(data)
        os.replace(tmp, inbox / f"s{index}_{view}.dcm")
    return time.time()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(lat: list[float]) -> dict[str, float]:
    return {"n": len(lat), "p50_s": pct(lat, 0.5), "p95_s": pct(lat, 0.95), "max_s": max(lat)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--single", type=int, default=5, help="studies dropped one at a time")
    ap.add_argument("--burst", type=int, default=30, help="studies dropped at once")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=900001, help="template study seed (demo range)")
    ap.add_argument("--cache", type=Path, default=Path("demo_out/samples"), help="shared with xr3d demo")
    args = ap.parse_args()

    tpl = template(args.seed, args.cache)
    raw = {v: (tpl / f"{v}.dcm").read_bytes() for v in VIEWS}
    root = Path(tempfile.mkdtemp(prefix="xr3d-bench-service-"))
    (root / "inbox").mkdir()
    cfg = root / "xr3d.toml"
    cfg.write_text(
        f'[paths]\ninbox = "inbox"\noutbox = "outbox"\nstate = "state"\n[jobs]\nworkers = {args.workers}\n'
    )
    log = open(root / "watch.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "appliance.cli.main", "-v", "watch", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(root))
    watcher = Watcher(root / "outbox")
    results: dict[str, object] = {}
    try:
        single: list[float] = []
        for i in range(args.single):
            study, films = clone(raw, i)
            t = drop(root / "inbox", i, films)
            watcher.wait({study}, 600)
            single.append(watcher.seen[study] - t)
        if single:
            results["single"] = summary(single)
        burst: dict[str, float] = {}
        clones = [clone(raw, 1000 + i) for i in range(args.burst)]
        t_first = time.time()
        for i, (study, films) in enumerate(clones):
            burst[study] = drop(root / "inbox", 1000 + i, films)
        watcher.wait(set(burst), 60 * args.burst + 600)
        if burst:
            lat = [watcher.seen[s] - t for s, t in burst.items()]
            span = max(watcher.seen[s] for s in burst) - t_first
            results["burst"] = {**summary(lat), "studies_per_min": 60.0 * len(burst) / span, "span_s": span}
        stage: dict[str, list[float]] = {}
        for p in (root / "outbox").iterdir():
            doc = json.loads((p / "result.json").read_text())
            for k, v in doc["timings_s"].items():
                stage.setdefault(k, []).append(float(v))
        results["pipeline_median_s"] = {k: statistics.median(v) for k, v in sorted(stage.items())}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        watcher.stop()
        log.close()
    results["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    results["settings"] = {"workers": args.workers, "template_seed": args.seed, "stable_seconds": 2.0}
    print(json.dumps(results, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
