"""When an inbox file counts as complete (real files; the tracker's clock is passed in)."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.config import IngestSettings
from appliance.ingest.complete import CompletionTracker, is_candidate


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_candidates(tmp_path: Path) -> None:
    s = IngestSettings()
    for name in (".x.dcm", "x.dcm.tmp", "x.part", "x.png.json", "x.json"):
        assert not is_candidate(tmp_path / name, s, tmp_path)
    assert is_candidate(tmp_path / "x.dcm", s, tmp_path)
    assert is_candidate(tmp_path / "sub" / "IM0001", s, tmp_path)
    assert not is_candidate(tmp_path / ".staging" / "IM0001", s, tmp_path)


def test_stable_growing_renamed_and_deferred(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletionTracker(IngestSettings(stable_seconds=2.0), tmp_path, clock)
    growing, renamed = tmp_path / "a.dcm", tmp_path / "b.dcm"
    growing.write_bytes(b"x" * 10)
    tracker.observe(growing)
    (tmp_path / ".b.tmp").write_bytes(b"y")
    os.replace(tmp_path / ".b.tmp", renamed)
    tracker.observe(renamed, renamed=True)
    assert tracker.ready() == [renamed]  # a rename completes a file at once
    clock.t = 1.5
    with open(growing, "ab") as fh:
        fh.write(b"more")
    assert renamed in tracker.ready() and growing not in tracker.ready()  # it changed: clock restarts
    clock.t = 3.0
    assert growing not in tracker.ready()
    clock.t = 3.6
    assert growing in tracker.ready()
    tracker.defer(growing)
    assert growing not in tracker.ready() and tracker.pending() == 1
    with open(growing, "ab") as fh:
        fh.write(b"rest")  # the writer went on: deferred no more, stable again after 2 s
    clock.t = 6.0
    assert growing not in tracker.ready()  # the change is noticed now: it must hold still again
    clock.t = 8.1
    assert growing in tracker.ready()


def test_sidecar_arrival_retries_its_image(tmp_path: Path) -> None:
    clock = Clock()
    tracker = CompletionTracker(IngestSettings(stable_seconds=0.0), tmp_path, clock)
    png = tmp_path / "leg.png"
    png.write_bytes(b"png")
    tracker.observe(png)
    tracker.defer(png)  # read failed: no sidecar yet
    assert tracker.ready() == []
    (tmp_path / "leg.png.json").write_text("{}")
    tracker.observe(tmp_path / "leg.png.json")
    assert tracker.ready() == [png]
