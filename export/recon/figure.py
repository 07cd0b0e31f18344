"""The example figure of docs/recon.md: truth vs reconstruction (HU and labels), central coronal and
sagittal slices through the knee, for one held-out item (a ``case_<seed>`` folder of ``xr3d simulate`` or
an eval ``recon_<seed>_<pose>.npz``), reconstructed through the runtime (ONNX Runtime).

    python -m export.recon.figure --item /work/rcdata/eval/case_520000 --models-dir models \
        --out docs/recon_example.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from appliance.recon.infer import Reconstructor
from engines.config import EngineConfig
from export.recon.evaluate import load_case, load_npz

_COLOURS = np.array(
    [[0.12, 0.47, 0.71], [0.17, 0.63, 0.17], [0.55, 0.34, 0.29], [0.5, 0.5, 0.5], [0.09, 0.75, 0.81]]
)


def _coronal(v: NDArray[np.generic], j: int) -> NDArray[np.generic]:
    return np.asarray(v[:, j, :].T[::-1])  # rows: superior at the top; columns: +x (patient left)


def _sagittal(v: NDArray[np.generic], i: int) -> NDArray[np.generic]:
    return np.asarray(v[i, :, :].T[::-1])  # columns: +y (posterior)


def make_figure(item_path: Path, models_dir: Path, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    item = load_case(item_path) if item_path.is_dir() else load_npz(item_path)
    with Reconstructor(models_dir, EngineConfig(backend="auto", cpu_threads=1)) as r:
        rec = r.reconstruct_frames(item.frames, item.mats, np.ones(2, np.float32), item.affine)
    bone = np.argwhere(np.isin(item.labels, (1, 2)))
    ci, cj, _ = (bone.mean(0) if len(bone) else np.full(3, item.labels.shape[0] / 2)).astype(int)
    cols = [
        ("truth HU", item.hu, "hu"),
        ("reconstruction HU", rec.hu.data, "hu"),
        ("truth labels", item.labels, "lab"),
        ("reconstruction labels", rec.labels.data, "lab"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.4))
    for row, (name, cut, idx) in enumerate((("coronal", _coronal, cj), ("sagittal", _sagittal, ci))):
        for col, (label, vol, kind) in enumerate(cols):
            ax = axes[row, col]
            sl = cut(vol, idx)
            if kind == "hu":
                ax.imshow(sl, cmap="gray", vmin=-300, vmax=1500)
            else:
                ax.imshow(_COLOURS[np.clip(sl.astype(int), 0, 4)])
            ax.set_title(f"{label} ({name})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--item", type=Path, required=True, help="case_<seed> folder or eval recon_*.npz")
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    make_figure(args.item, args.models_dir, args.out, args.title or f"{args.item.name}, {args.models_dir}")
    sys.stderr.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
