"""``xr3d bench``: latency, throughput, memory and GFLOP/s per model and backend, with the PyTorch-CPU
reference for the shipped and reference networks (torch imported lazily: ``--onnx`` works on a
runtime-only install)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.errors import InputError
from export.export_cli import SHIPPED_MODELS, add_engine_args, engine_config, export_shipped, say


def register_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from engines.bench import PEAK_GFLOPS

    p = sub.add_parser(
        "bench",
        help="latency p50/p95, throughput, memory and GFLOP/s per model and backend",
        description=(
            "Benchmark ONNX models on every backend available here (TensorRT, ORT-CUDA, ORT-CPU). "
            "--shipped times every shipped model (models/*.onnx: landmarks_whole, landmarks_crop, "
            "landmarks_fine, recon_encoder, recon_context, recon_decoder, recon_orient, knee_landmarks) on a "
            "realistic call (landmark stages at their input geometry, "
            "the encoder on an AP+lateral film pair, the decoder on one runtime chunk of points) and its "
            "PyTorch module on PyTorch-CPU in the same run (needs torch) for the ORT-CPU/PyTorch-CPU "
            "ratio; --reference does the same for the reference networks; --onnx FILE... times any ONNX "
            "file on random inputs."
        ),
    )
    p.add_argument("--onnx", type=Path, nargs="+", default=[], metavar="FILE")
    p.add_argument("--reference", action="store_true", help="benchmark the reference networks (+ PyTorch)")
    p.add_argument(
        "--shipped", action="store_true", help="benchmark every shipped model (+ PyTorch-CPU, needs torch)"
    )
    p.add_argument(
        "--models-dir", type=Path, default=None, help="where --shipped finds the ONNX files (default models/)"
    )
    p.add_argument(
        "--work", type=Path, default=Path("build/bench_engines"), help="where --reference writes ONNX"
    )
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument(
        "--peak-gflops", type=float, default=PEAK_GFLOPS, help="this machine's fp32 peak (GFLOP/s)"
    )
    p.add_argument("--backends", nargs="+", default=None, help="subset, e.g. ort-cpu")
    p.add_argument("--json", action="store_true")
    add_engine_args(p)
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from engines.bench import BenchSettings, available_backend_names, bench_model, machine_info, render_table

    if not args.onnx and not args.reference and not args.shipped:
        raise InputError(
            "nothing to benchmark: give --shipped (the shipped models), --onnx FILE... or --reference",
            reason="no_models",
        )
    config = engine_config(args)
    settings = BenchSettings(
        warmup=args.warmup, iters=args.iters, batch=args.batch, peak_gflops=args.peak_gflops
    )
    names, skipped = available_backend_names(config)
    if args.backends:
        unknown = set(args.backends) - set(names)
        if unknown:
            raise InputError(
                f"backend(s) {', '.join(sorted(unknown))} not available here", reason="bad_backend"
            )
        names = list(args.backends)
    targets: list[tuple[Path, Any, Any]] = [(f, None, None) for f in args.onnx]
    if args.reference:
        targets += [(p, fn, None) for p, fn in reference_targets(args.work, config.cpu_threads)]
    if args.shipped:
        targets += shipped_targets(args.models_dir, args.work, config.cpu_threads)
    results = []
    for path, torch_fn, feeds in targets:
        say(f"bench {path.name} on {', '.join(names)}{' + pytorch-cpu' if torch_fn else ''}")
        results.append(bench_model(path, config, settings, names, skipped, torch_fn, feeds))
    machine = machine_info()
    if args.json:
        doc = {"machine": machine, "settings": settings.__dict__, "results": [r.to_json() for r in results]}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        sys.stdout.write(f"machine: {machine}\n\n{render_table(results, settings)}")
    return 0


def _torch_runner(module: Any, names: tuple[str, ...]) -> Any:
    import torch

    def run(feeds: dict[str, Any]) -> Any:
        with torch.inference_mode():
            return module(*(torch.from_numpy(feeds[k]) for k in names))

    return run


def shipped_targets(models_dir: Path | None, work: Path, threads: int) -> list[tuple[Path, Any, Any]]:
    """(ONNX, PyTorch runner, realistic feeds) per shipped model.

    The ONNX timed is the shipped file in ``models_dir`` (what the runtime loads); a model whose file is
    missing there is exported to ``work`` first.
    """
    import os

    import torch

    from appliance.recon.infer import DEFAULT_MODELS_DIR

    torch.set_num_threads(threads or os.cpu_count() or 1)  # same thread count as ONNX Runtime
    d = models_dir or DEFAULT_MODELS_DIR
    out: list[tuple[Path, Any, Any]] = []
    for model in SHIPPED_MODELS:
        spec = model.build()
        path = d / f"{model.name}.onnx"
        if not path.is_file():
            path = work / f"{model.name}.onnx"
            export_shipped(model, spec, path, 17, fp16=False)
        feeds = {n: t.detach().cpu().numpy() for n, t in zip(spec.input_names, spec.example, strict=True)}
        out.append((path, _torch_runner(spec.module, spec.input_names), feeds))
    return out


def reference_targets(work: Path, threads: int) -> list[tuple[Path, Any]]:
    """Export the reference networks (bench scale) and pair each ONNX with a PyTorch runner."""
    import os

    import torch

    from export.onnx_export import export_onnx
    from export.reference_models import REFERENCE_NAMES, build_reference

    torch.set_num_threads(threads or os.cpu_count() or 1)  # same thread count as ONNX Runtime
    out = []
    for n in REFERENCE_NAMES:
        spec = build_reference(n, scale="bench")
        path = work / f"{spec.name}.onnx"
        export_onnx(
            spec.module,
            spec.example,
            path,
            input_names=spec.input_names,
            output_names=spec.output_names,
            metadata=spec.metadata,
            name=spec.name,
        )
        out.append((path, _torch_runner(spec.module, spec.input_names)))
    return out
