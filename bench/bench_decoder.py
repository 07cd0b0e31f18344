"""Reconstruction decoder: ONNX Runtime (CPU) vs PyTorch (CPU) on the same points, each at its best chunk.

    .venv/bin/python bench/bench_decoder.py [--points 131072] [--rounds 8] [--threads 1] [--json]
                                            [--onnx models/recon_decoder.onnx] [--order grid random]

The work: decode ``--points`` points (HU + 5 label logits each) with the shipped ``recon.pt`` weights and
real encoder features of a film pair (export/recon/onnx_io.py ``example_inputs``). Point order ``grid``
is the runtime's (a sub-grid of the cube in index order, as ``Reconstructor`` decodes it); ``random`` is
uniform in the cube (what ``xr3d bench --shipped`` feeds).

Each side splits the points into chunks of its own choosing, per call:

* ``ort@C``: the shipped ONNX (``PointDecoder.forward_channels_first``) through ``engines.OrtBackend``,
  C points per call (the runtime's ``DECODER_CHUNK`` is one of them);
* ``torch@C``: ``PointDecoder.forward`` (Linear layers on points-last tensors, ``grid_sample``), PyTorch's
  fastest form, under ``torch.inference_mode``;
* ``torch-cf@C``: PyTorch running the export form itself (to show it is not faster for PyTorch).

Configurations run interleaved (one call each per round, ``--rounds`` rounds) in one process so load from
other jobs on the shared box hits all of them alike; the report gives per-configuration medians, each
side's best chunk, the ratio of the best medians, and the 1-minute load average per round.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from appliance.recon.infer import CUBE_VOXELS, DECODER_CHUNK, DEFAULT_MODELS_DIR
from engines.config import EngineConfig
from engines.ort_backend import OrtBackend
from export.recon.model import load_net
from export.recon.onnx_io import example_inputs

CHUNKS = (131072, 65536, 32768, 16384, 8192)


def _points(order: str, n: int) -> np.ndarray:
    if order == "random":
        g = torch.Generator().manual_seed(0)
        return (torch.rand(1, n, 3, generator=g) * 2.0 - 1.0).numpy()
    nc = CUBE_VOXELS // 2  # the runtime's coarse 2 mm pass, in its order
    idx = np.stack(np.meshgrid(*(np.arange(nc) * 2,) * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return (idx.astype(np.float32) * np.float32(2.0 / (CUBE_VOXELS - 1)) - np.float32(1.0))[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", type=Path, default=DEFAULT_MODELS_DIR / "recon_decoder.onnx")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_MODELS_DIR / "recon.pt")
    ap.add_argument("--points", type=int, default=131072)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--order", nargs="+", default=["grid", "random"], choices=["grid", "random"])
    ap.add_argument("--chunks", type=int, nargs="+", default=list(CHUNKS))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    net = load_net(ck["net"], ck.get("config", {})).eval()
    film, mats, present, _ = example_inputs()
    with torch.inference_mode():
        feats = net.encoder(film)[None].contiguous()
    backend = OrtBackend(args.onnx, EngineConfig(cpu_threads=args.threads), device="cpu")
    f_np, m_np, p_np = feats.numpy(), mats.numpy(), present.numpy()

    def ort_run(pts: np.ndarray, chunk: int) -> None:
        for s in range(0, pts.shape[1], chunk):
            backend.run({"features": f_np, "mats": m_np, "present": p_np, "points": pts[:, s : s + chunk]})

    def torch_run(fn: Callable[..., object], pts: torch.Tensor, chunk: int) -> None:
        with torch.inference_mode():
            for s in range(0, pts.shape[1], chunk):
                fn(feats, mats, present, pts[:, s : s + chunk])

    report: dict[str, object] = {
        "onnx": str(args.onnx),
        "points": args.points,
        "threads": args.threads,
        "rounds": args.rounds,
        "runtime_chunk": DECODER_CHUNK,
        "orders": {},
    }
    try:
        for order in args.order:
            pts_np = np.ascontiguousarray(_points(order, args.points))
            pts_t = torch.from_numpy(pts_np)
            runs: dict[str, Callable[[], None]] = {}
            for c in args.chunks:
                runs[f"ort@{c}"] = partial(ort_run, pts_np, c)
                runs[f"torch@{c}"] = partial(torch_run, net.decoder.forward, pts_t, c)
            runs[f"torch-cf@{DECODER_CHUNK}"] = partial(
                torch_run, net.decoder.forward_channels_first, pts_t, DECODER_CHUNK
            )
            for fn in runs.values():  # warm-up
                fn()
            times: dict[str, list[float]] = {k: [] for k in runs}
            loads = []
            for _ in range(args.rounds):
                for k, fn in runs.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append((time.perf_counter() - t0) * 1e3)
                loads.append(os.getloadavg()[0])
            med = {k: float(np.median(v)) for k, v in times.items()}
            best_ort = min((k for k in med if k.startswith("ort@")), key=med.__getitem__)
            best_torch = min((k for k in med if k.startswith("torch")), key=med.__getitem__)
            report["orders"][order] = {  # type: ignore[index]
                "median_ms": {k: round(v, 1) for k, v in med.items()},
                "min_ms": {k: round(min(v), 1) for k, v in times.items()},
                "best_ort": best_ort,
                "best_torch": best_torch,
                "ort_runtime_chunk_ms": round(med[f"ort@{DECODER_CHUNK}"], 1)
                if f"ort@{DECODER_CHUNK}" in med
                else None,
                "ratio_best": round(med[best_torch] / med[best_ort], 2),
                "ratio_runtime_chunk_vs_best_torch": round(med[best_torch] / med[f"ort@{DECODER_CHUNK}"], 2)
                if f"ort@{DECODER_CHUNK}" in med
                else None,
                "load_1min": {"min": min(loads), "median": float(np.median(loads)), "max": max(loads)},
            }
    finally:
        backend.close()
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for order, r in report["orders"].items():  # type: ignore[attr-defined]
            sys.stdout.write(
                f"{order} points ({args.points}, {args.threads} thread(s), load {r['load_1min']}):\n"
            )
            for k, v in r["median_ms"].items():
                sys.stdout.write(f"  {k:<16} median {v:8.1f} ms  min {r['min_ms'][k]:8.1f} ms\n")
            sys.stdout.write(
                f"  best ORT {r['best_ort']}, best PyTorch {r['best_torch']}: "
                f"PyTorch / ORT = {r['ratio_best']}x;"
                f" ORT at the runtime chunk {DECODER_CHUNK}: {r['ratio_runtime_chunk_vs_best_torch']}x\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
