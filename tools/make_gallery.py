"""Render the six documented simulated cases and assemble docs/gallery/ (previews + a contact sheet).

Usage: .venv/bin/python tools/make_gallery.py [--out docs/gallery] [--work /tmp/xr3d_gallery]
Seeds (demo range): right varus rotated, left valgus rotated, right valgus, left varus, right flexed, left
valgus externally rotated.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from export.simulator.case import CaseOptions, generate_case

SEEDS = (900036, 900004, 900033, 900027, 900032, 900018)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("docs/gallery"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/xr3d_gallery"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    tiles = []
    for seed in SEEDS:
        case = args.work / f"case_{seed}"
        if not (case / "truth.json").exists():
            case = generate_case(seed, args.work, CaseOptions(write_ct=False))
        t = json.loads((case / "truth.json").read_text())
        p = t["params"]
        label = (
            f"seed {seed}  {t['side']}  mHKA {t['angles_3d']['mHKA']:+.1f}  CPAK {t['cpak']['label']}  "
            f"rot {p['rotation']:+.0f}  flex {p['flexion']:.0f}"
        )
        row = []
        for name in ("longleg_ap", "knee_ap", "knee_lat"):
            im = Image.open(case / f"{name}.png").convert("L")
            h = 560
            im = im.resize((max(1, round(im.size[0] * h / im.size[1])), h), Image.Resampling.LANCZOS)
            dst = args.out / f"case_{seed}_{name}.png"
            small = im.copy()
            small.thumbnail((600, 600))
            small.save(dst, optimize=True)
            row.append(im)
        w = sum(i.size[0] for i in row) + 10 * (len(row) - 1)
        tile = Image.new("L", (w, 560 + 24), 255)
        x = 0
        for i in row:
            tile.paste(i, (x, 24))
            x += i.size[0] + 10
        ImageDraw.Draw(tile).text((4, 4), label, fill=0)
        tiles.append(tile)
        shutil.copy(case / "truth.json", args.out / f"case_{seed}_truth.json")
    cols = 2
    tw = max(t.size[0] for t in tiles)
    th = max(t.size[1] for t in tiles)
    sheet = Image.new("L", (cols * tw + 20, ((len(tiles) + 1) // cols) * (th + 20)), 255)
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * (tw + 20), (k // cols) * (th + 20)))
    sheet.thumbnail((2400, 2400))
    sheet.save(args.out / "gallery.png", optimize=True)


if __name__ == "__main__":
    main()
