"""Opening a study in the workstation GUI: click on the worklist row -> first film image painted.

Runs the real window offscreen (QT_QPA_PLATFORM=offscreen). Each repeat makes a fresh window (no cached
pixels) and clicks the study's row with a real mouse event; the time runs until the film view's viewport
has been painted with the film. Also timed: the 3D tab's surfaces (meshes read and rendered), its
slices (volume read in a worker thread) and one 3D re-render (what a rotation step costs).

    .venv/bin/python bench/bench_gui.py --outbox DIR [--repeat 5]
    .venv/bin/python bench/bench_gui.py --case demo_out/case_900001   # builds the study from a simulated case

A study can be built from a simulated case (tests/gui_fixtures.build_study: real films, the shipped
landmark models, the simulator's CT standing in for the reconstruction).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["QT_QPA_PLATFORM"] = "offscreen"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from gui.app import make_app
from gui.main_window import MainWindow


def one_open(outbox: Path, uid: str) -> tuple[float, float, float, tuple[int, int], float]:
    w = MainWindow(outbox, "bench")
    w.resize(1600, 1000)
    w.show()
    QApplication.processEvents()
    row = w.proxy.mapFromSource(w.model.index(w.model.row_of(uid), 0))
    rect = w.table.visualRect(row)
    t0 = time.perf_counter()
    left, no_mod = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    QTest.mouseClick(w.table.viewport(), left, no_mod, rect.center())
    w.film_view.viewport().repaint()
    t_first = time.perf_counter() - t0
    shown = w.film_view.displayed_pixels()
    assert shown is not None, "no film image after the click"
    t1 = time.perf_counter()
    w.tabs.setCurrentIndex(1)
    w.recon.mesh_view.repaint()
    t_3d = time.perf_counter() - t1
    w.recon.wait_for_volume()
    t_vol = time.perf_counter() - t1
    w.recon.mesh_view.camera = w.recon.mesh_view.camera.orbit(0.1, 0.05)  # type: ignore[union-attr]
    w.recon.mesh_view.repaint()
    t_rot = w.recon.mesh_view.last_render_s
    w.close()
    w.deleteLater()
    QApplication.processEvents()
    return t_first, t_3d, t_rot, (int(shown.shape[0]), int(shown.shape[1])), t_vol


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outbox", type=Path, help="an outbox with processed studies")
    ap.add_argument("--case", type=Path, help="a simulated case folder to build a study from")
    ap.add_argument("--study", help="study UID (default: the first in the outbox)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    make_app()
    if args.outbox is None:
        if args.case is None:
            ap.error("give --outbox or --case")
        from tests.gui_fixtures import build_study

        args.outbox = Path(tempfile.mkdtemp(prefix="bench_gui_")) / "outbox"
        build_study(args.case, args.outbox)
    uid = args.study or sorted(p.name for p in args.outbox.iterdir() if (p / "result.json").is_file())[0]
    runs = [one_open(args.outbox, uid) for _ in range(args.repeat + 1)][1:]  # first run warms numba and fonts
    firsts = [r[0] for r in runs]
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, Qt offscreen")
    print(f"film shape (rows, cols): {runs[0][3]}")
    print(
        f"click -> first film image: median {statistics.median(firsts):.3f} s, max {max(firsts):.3f} s "
        f"({args.repeat} runs after one warm-up)"
    )
    t3d = statistics.median(r[1] for r in runs)
    print(f"3D tab: surfaces shown after median {t3d:.3f} s")
    print(
        "3D tab: slices shown (volume read in a worker thread) after median "
        f"{statistics.median(r[4] for r in runs):.3f} s"
    )
    print(f"3D re-render (one rotation step): median {statistics.median(r[2] for r in runs):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
