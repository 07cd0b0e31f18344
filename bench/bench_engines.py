"""Benchmark the inference engines on the reference networks and record bench/RESULTS_engines.md.

    .venv/bin/python bench/bench_engines.py [--iters 20] [--batch 1] [--threads 0] [--json] [--write]

Exports the reference networks at benchmark scale (export/reference_models.py, scale="bench":
LandmarkNet2D on a 256x256 film, VolumeNet3D on a 64^3 volume) to build/bench_engines/, then times
every backend available on this machine plus PyTorch-CPU in the same process and run (same inputs,
same thread count), so the ORT-CPU/PyTorch-CPU ratio compares like with like. GFLOP/s counts Conv,
ConvTranspose, Gemm and MatMul from the ONNX graph (2 FLOPs per multiply-add) at the p50 latency.
--write replaces bench/RESULTS_engines.md with the table, the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engines.bench import (
    PEAK_GFLOPS,
    BenchSettings,
    available_backend_names,
    bench_model,
    machine_info,
    render_table,
)
from engines.config import EngineConfig
from export.bench_cli import reference_targets

RESULTS = Path(__file__).with_name("RESULTS_engines.md")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[0],
        help="ORT intra-op and torch threads, one run each (0: all)",
    )
    ap.add_argument("--peak-gflops", type=float, default=PEAK_GFLOPS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help=f"write {RESULTS.name}")
    args = ap.parse_args()

    settings = BenchSettings(
        warmup=args.warmup, iters=args.iters, batch=args.batch, peak_gflops=args.peak_gflops
    )
    sections, docs = [], []
    for threads in args.threads:
        config = EngineConfig(cpu_threads=threads)
        names, skipped = available_backend_names(config)
        results = [
            bench_model(path, config, settings, names, skipped, torch_fn)
            for path, torch_fn in reference_targets(Path("build/bench_engines"), threads)
        ]
        table = render_table(results, settings)
        sections.append(
            f"### Threads: {threads or 'all cores'} (ORT intra-op = torch.set_num_threads)\n\n{table}"
        )
        docs.append({"threads": threads, "results": [r.to_json() for r in results]})
    machine = machine_info()
    if args.json:
        print(json.dumps({"machine": machine, "settings": settings.__dict__, "runs": docs}, indent=2))
    else:
        print("\n".join(sections))
    if args.write:
        cmd = "python " + " ".join(["bench/bench_engines.py", *sys.argv[1:]])
        RESULTS.write_text(
            "# Engine benchmarks (issue 6)\n\n"
            f"Command: `{cmd}` (per model also `xr3d bench --reference --threads N`)\n\n"
            f"Machine: {machine['cpu']}, nproc {machine['nproc']}, Python {machine['python']}, "
            f"onnxruntime {machine['onnxruntime']}; 1-min load average at the end "
            f"{machine.get('loadavg_1m')} "
            "(shared machine: absolute numbers are noisy, same-run ratios less so).\n\n"
            f"Date: {machine['date_utc']}\n\n"
            f"Settings: batch {settings.batch}, {settings.warmup} warm-up + {settings.iters} timed runs, "
            f"fp32 peak assumed {settings.peak_gflops:.0f} GFLOP/s (2 cores). GFLOP/s = graph FLOPs / p50. "
            "ORT-CPU/PyTorch-CPU = PyTorch p50 / ORT p50 in the same run. Peak RSS is the process high-water "
            "mark (includes torch); RSS added is the growth from opening the backend through the runs.\n\n"
            + "\n".join(sections)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
