"""Render a volume saved by bench/bench_drr.py with DiffDRR on CPU, timed (median of N after a warm-up).

Run ONLY with the peer venv's python (torch lives there, never in the project's venv):

    .venv-peers/bin/python bench/peers/diffdrr_render.py --volume V.npy --meta V.json --out IMG.npy

Geometry mapping. DiffDRR's ``DRR.render(density, source, target)`` integrates the volume along the
segments ``source -> target`` given in the world frame of the subject's affine (voxel index -> world),
scales by the segment length, and returns value x length. We hand it OUR affine (voxel centre index ->
LPS mm) as that affine and, as targets, the LPS mm position of every detector pixel centre from our
ProjectionGeometry (``origin + col * pitch_u * u + row * pitch_v * v``), row-major. So both renderers
integrate the same segments of the same field definition's support: DiffDRR's voxel planes sit at
index -0.5 .. n - 0.5 (``voxel_shift=0.5``), the same voxel box ours clips to. DiffDRR's camera model
(Detector, poses, its ``reorient`` frame change) is bypassed on purpose: it would only add a second,
error-prone mapping of the same rays. Values are used as given (no HU-to-density conversion).

Prints one JSON line: timings and what was rendered.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffdrr.drr import DRR
from torchio import ScalarImage, Subject


def pixel_targets(geo: dict, rows: int, cols: int) -> np.ndarray:
    origin = np.asarray(geo["detector_origin_mm"], dtype=np.float64)
    u = np.asarray(geo["u_dir"], dtype=np.float64)
    v = np.asarray(geo["v_dir"], dtype=np.float64)
    u /= np.linalg.norm(u)
    v /= np.linalg.norm(v)
    r, c = np.mgrid[0:rows, 0:cols]
    pts = origin + c[..., None] * geo["pitch_u_mm"] * u + r[..., None] * geo["pitch_v_mm"] * v
    return pts.reshape(-1, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", type=Path, required=True, help=".npy float32 volume indexed [i, j, k]")
    ap.add_argument("--meta", type=Path, required=True, help="JSON with 'affine' (4x4) and 'geometry'")
    ap.add_argument("--out", type=Path, required=True, help="where to save the (rows, cols) image .npy")
    ap.add_argument("--renderer", choices=["siddon", "trilinear"], default="siddon")
    ap.add_argument("--n-points", type=int, default=0, help="trilinear samples per ray (0: 2 x max dim)")
    ap.add_argument("--patch-size", type=int, default=64, help="render rays in chunks of patch^2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = np.load(args.volume).astype(np.float32)
    meta = json.loads(args.meta.read_text())
    affine = np.asarray(meta["affine"], dtype=np.float64)
    geo = meta["geometry"]
    rows, cols = int(geo["rows"]), int(geo["columns"])

    image = ScalarImage(tensor=torch.from_numpy(data)[None], affine=affine)
    subject = Subject(
        volume=image,
        density=image,
        mask=None,
        reorient=torch.eye(4),
        orientation=None,
        fiducials=None,
    )
    kwargs: dict = {}
    if args.renderer == "trilinear":
        kwargs["n_points"] = args.n_points or 2 * max(data.shape)
    drr = DRR(
        subject,
        sdd=float(geo["sid_mm"]),
        height=rows,
        width=cols,
        delx=float(geo["pitch_u_mm"]),
        dely=float(geo["pitch_v_mm"]),
        renderer=args.renderer,
        patch_size=args.patch_size,
    )
    source = torch.tensor(geo["source_mm"], dtype=torch.float32).reshape(1, 1, 3)
    target = torch.from_numpy(pixel_targets(geo, rows, cols).astype(np.float32))[None]

    def render() -> torch.Tensor:
        with torch.no_grad():
            return drr.render(drr.density, source, target, **kwargs)

    t = time.perf_counter()
    img = render()  # warm-up
    warm = time.perf_counter() - t
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        img = render()
        times.append(time.perf_counter() - t)
    out = img.reshape(rows, cols).numpy().astype(np.float32)
    np.save(args.out, out)
    import diffdrr

    print(
        json.dumps(
            {
                "peer": "diffdrr",
                "diffdrr_version": diffdrr.__version__,
                "torch_version": torch.__version__,
                "renderer": args.renderer,
                "torch_threads": torch.get_num_threads(),
                "patch_size": args.patch_size,
                "n_points": kwargs.get("n_points"),
                "warmup_s": warm,
                "times_s": times,
                "median_s": statistics.median(times),
                "rays": rows * cols,
                "image": str(args.out),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
