"""Latency, throughput, memory and achieved GFLOP/s per model and backend.

Used by ``xr3d bench``. Every available backend on this machine is timed on the same random inputs
(warm-up runs first, then ``iters`` timed runs with ``time.perf_counter``): p50/p95/mean latency,
throughput (items/s at the benchmark batch), peak RSS while the backend ran (Linux ``VmHWM`` after
resetting it through ``/proc/self/clear_refs``), and the Python-heap peak (``tracemalloc``, one
extra run). For CPU backends the achieved GFLOP/s is the model's FLOP count (Conv, ConvTranspose,
Gemm, MatMul from the ONNX graph, 2 FLOPs per multiply-add) over the p50 latency, compared with the
machine's fp32 peak. A PyTorch callable may be passed per model (export side); it is timed in the
same run, and the latencies of all runners of a model come from interleaved rounds (one call each per
round), so the ORT-CPU/PyTorch-CPU ratio compares like with like on a shared, loaded machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np

from engines.api import Backend, ModelInfo, read_model_info
from engines.config import EngineConfig
from engines.errors import EngineError

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], Any]

PEAK_GFLOPS: Final = 236.0
"""fp32 peak of this 2-core AMD EPYC (Zen 4) box: 2 cores x 32 FLOP/cycle (two 256-bit FMA pipes) x
3.69 GHz. Measured, not taken from a data sheet: a register-only loop of 12 independent FMA chains
reached 118.2 GFLOP/s on each core, on both cores at once (2026-11-24); ONNX Runtime's own sgemm
(512 x 512, one thread) reaches 111. The earlier default, 150, assumed ~2.3 GHz and overstated every
model's share of the peak by 1.6x."""


@dataclass(frozen=True)
class BenchSettings:
    warmup: int = 3
    iters: int = 20
    batch: int = 1
    peak_gflops: float = PEAK_GFLOPS
    seed: int = 0


@dataclass(frozen=True)
class BackendStats:
    backend: str
    p50_ms: float
    p95_ms: float
    mean_ms: float
    throughput_per_s: float
    iters: int
    rss_peak_mb: float | None
    rss_added_mb: float | None
    py_heap_peak_mb: float
    gflops: float | None
    pct_of_peak: float | None


@dataclass(frozen=True)
class ModelBench:
    model: str
    onnx: str
    batch: int
    gflop_per_call: float | None
    stats: tuple[BackendStats, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def get(self, backend: str) -> BackendStats | None:
        return next((s for s in self.stats if s.backend == backend), None)

    @property
    def ort_cpu_vs_torch(self) -> float | None:
        """PyTorch-CPU p50 / ORT-CPU p50 (> 1: ORT faster); None without both."""
        ort, pt = self.get("ort-cpu"), self.get("pytorch-cpu")
        if ort is None or pt is None or ort.p50_ms <= 0:
            return None
        return pt.p50_ms / ort.p50_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "onnx": self.onnx,
            "batch": self.batch,
            "input_shapes": {k: list(v) for k, v in self.input_shapes},
            "gflop_per_call": self.gflop_per_call,
            "ort_cpu_vs_pytorch_cpu": self.ort_cpu_vs_torch,
            "backends": [s.__dict__ for s in self.stats],
            "skipped": dict(self.skipped),
        }


def count_flops(onnx_path: Path, batch: int, feeds: Mapping[str, np.ndarray] | None = None) -> int | None:
    """FLOPs of one call at ``batch`` (Conv/ConvTranspose/Gemm/MatMul); None if ``onnx`` is missing.

    With ``feeds`` the inputs take their shapes (models with symbolic non-batch axes, e.g. the
    reconstruction decoder's point count), and tensors whose shapes static inference cannot derive
    (pads computed in the graph, as in the reconstruction encoder) are measured by one ONNX Runtime run
    that exposes them as outputs; without ``feeds`` a symbolic axis 0 gets ``batch``.
    """
    try:
        import onnx
        from onnx import numpy_helper, shape_inference
    except ImportError:
        log.info("onnx not installed: no FLOP count")
        return None
    model = onnx.load(str(onnx_path))
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        given = (feeds or {}).get(vi.name)
        if given is not None and given.ndim == len(dims):
            for d, n in zip(dims, given.shape, strict=True):
                d.dim_value = int(n)
        elif dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(numpy_helper.to_array(a.t).shape)
    if feeds is not None:
        missing = [
            t
            for node in model.graph.node
            if node.op_type in _COUNTED
            for t in (*node.input[:2], node.output[0])
            if t and t not in shapes
        ]
        if missing:
            shapes.update(_measured_shapes(model, feeds, sorted(set(missing))))
    total = 0
    for node in model.graph.node:
        try:
            total += _node_macs(node, shapes)
        except KeyError as exc:
            log.warning("no shape for %s in %s node %s: FLOPs undercounted", exc, node.op_type, node.name)
    return 2 * total


_COUNTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _measured_shapes(model: Any, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, Any]:
    """Shapes of the intermediate tensors ``names`` from one ONNX Runtime CPU run of ``model``."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for n in names:
        if n not in have:
            probe.graph.output.append(onnx.ValueInfoProto(name=n))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(list(names), {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
    return {n: tuple(np.asarray(v).shape) for n, v in zip(names, outs, strict=True)}


def _node_macs(node: Any, shapes: Mapping[str, tuple[int, ...]]) -> int:
    op = node.op_type
    if op == "Conv":
        return int(np.prod(shapes[node.output[0]])) * int(np.prod(shapes[node.input[1]][1:]))
    if op == "ConvTranspose":
        return int(np.prod(shapes[node.input[0]])) * int(np.prod(shapes[node.input[1]][1:]))
    if op == "Gemm":
        a = shapes[node.input[0]]
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return int(np.prod(shapes[node.output[0]])) * k
    if op == "MatMul":
        return int(np.prod(shapes[node.output[0]])) * shapes[node.input[0]][-1]
    return 0


def random_feeds(info: ModelInfo, batch: int, seed: int = 0) -> Feeds:
    """Uniform [0, 1) inputs with the dynamic batch axis set to ``batch``."""
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in info.inputs:
        shape: list[int] = []
        for i, d in enumerate(spec.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif i == 0:
                shape.append(batch)
            else:
                raise EngineError(f"{info.name}: input {spec.name} has dynamic non-batch axes {spec.shape}")
        feeds[spec.name] = rng.random(tuple(shape)).astype(spec.dtype)
    return feeds


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def _rss_mb() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def rss_baseline() -> float | None:
    """Reset the peak-RSS mark and return the current RSS (MB), or None where unsupported."""
    return _rss_mb() if _reset_peak_rss() else None


def time_run(
    name: str,
    fn: RunFn,
    feeds: Feeds,
    settings: BenchSettings,
    flops: int | None,
    cpu: bool,
    baseline_mb: float | None = None,
) -> BackendStats:
    """Warm up, time ``settings.iters`` runs, then one tracemalloc run.

    ``baseline_mb`` is the RSS from :func:`rss_baseline` taken before the backend was opened, so
    ``rss_added_mb`` covers the session and its run-time arenas; without it the mark is reset here.
    """
    if baseline_mb is None:
        baseline_mb = rss_baseline()
    can_reset = baseline_mb is not None
    for _ in range(settings.warmup):
        fn(feeds)
    times = np.empty(settings.iters)
    for i in range(settings.iters):
        t0 = time.perf_counter()
        fn(feeds)
        times[i] = time.perf_counter() - t0
    rss = _peak_rss_mb() if can_reset else None
    tracemalloc.start()
    try:
        fn(feeds)
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    p50 = float(np.percentile(times, 50))
    gflops = flops / p50 / 1e9 if (flops and cpu and p50 > 0) else None
    return BackendStats(
        backend=name,
        p50_ms=p50 * 1e3,
        p95_ms=float(np.percentile(times, 95)) * 1e3,
        mean_ms=float(times.mean()) * 1e3,
        throughput_per_s=settings.batch / float(times.mean()),
        iters=settings.iters,
        rss_peak_mb=rss,
        rss_added_mb=rss - baseline_mb if rss is not None and baseline_mb is not None else None,
        py_heap_peak_mb=py_peak / 2**20,
        gflops=gflops,
        pct_of_peak=100.0 * gflops / settings.peak_gflops if gflops is not None else None,
    )


def available_backend_names(config: EngineConfig) -> tuple[list[str], list[tuple[str, str]]]:
    """Backends that can run here, and (backend, why not) for the others."""
    from engines.select import probe_machine

    probe = probe_machine(config)
    names, skipped = ["ort-cpu"], []
    if probe.has_ort_cuda:
        names.insert(0, "ort-cuda")
    else:
        skipped.append(("ort-cuda", "ONNX Runtime has no CUDAExecutionProvider"))
    if probe.has_tensorrt:
        names.insert(0, "tensorrt")
    else:
        skipped.append(("tensorrt", "; ".join(e for e in (probe.gpu_error, probe.trt_error) if e)))
    return names, skipped


def open_named(onnx_path: Path, backend: str, config: EngineConfig) -> Backend:
    from engines.ort_backend import OrtBackend

    if backend == "tensorrt":
        from engines.trt_build import ensure_trt_engine
        from engines.trt_runtime import TrtBackend

        res = ensure_trt_engine(onnx_path, config)
        return TrtBackend(res.plan_path, read_model_info(onnx_path), config)
    return OrtBackend(onnx_path, config, device="cuda" if backend == "ort-cuda" else "cpu")


def bench_model(
    onnx_path: Path,
    config: EngineConfig,
    settings: BenchSettings,
    backends: Sequence[str],
    skipped: Sequence[tuple[str, str]] = (),
    torch_fn: RunFn | None = None,
    feeds: Feeds | None = None,
) -> ModelBench:
    """Benchmark one ONNX model on ``backends`` (and ``torch_fn`` as ``pytorch-cpu`` if given).

    ``feeds`` are the inputs to time (a realistic call of a shipped model); default: uniform random
    inputs at ``settings.batch``. Each runner is first run on its own (warm-up, memory figures); with
    more than one runner the latency figures then come from :func:`time_interleaved`, so load from other
    jobs on a shared machine hits every runner alike and the ratios compare like with like.
    """
    info = read_model_info(onnx_path)
    if feeds is None:
        feeds = random_feeds(info, settings.batch, settings.seed)
        flops = count_flops(onnx_path, settings.batch)
    else:
        flops = count_flops(onnx_path, settings.batch, feeds)
    stats = []
    runners: dict[str, RunFn] = {}
    opened: list[Backend] = []
    try:
        for name in backends:
            base = rss_baseline()
            backend = open_named(onnx_path, name, config)
            opened.append(backend)
            log.info("bench %s on %s", info.name, name)
            stats.append(
                time_run(name, backend.run, feeds, settings, flops, cpu=name == "ort-cpu", baseline_mb=base)
            )
            runners[name] = backend.run
        if torch_fn is not None:
            stats.append(time_run("pytorch-cpu", torch_fn, feeds, settings, flops, cpu=True))
            runners["pytorch-cpu"] = torch_fn
        if len(runners) > 1:
            stats = time_interleaved(runners, feeds, settings, flops, stats)
    finally:
        for backend in opened:
            backend.close()
    return ModelBench(
        model=info.name,
        onnx=str(onnx_path),
        batch=settings.batch,
        input_shapes=tuple((k, tuple(int(n) for n in v.shape)) for k, v in feeds.items()),
        gflop_per_call=flops / 1e9 if flops is not None else None,
        stats=tuple(stats),
        skipped=tuple(skipped),
    )


def time_interleaved(
    runners: Mapping[str, RunFn],
    feeds: Feeds,
    settings: BenchSettings,
    flops: int | None,
    stats: Sequence[BackendStats],
) -> list[BackendStats]:
    """``settings.iters`` rounds of one call per runner in turn; returns ``stats`` with their latency,
    throughput and GFLOP/s figures replaced by the interleaved ones (memory figures kept)."""
    times = {name: np.empty(settings.iters) for name in runners}
    for i in range(settings.iters):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn(feeds)
            times[name][i] = time.perf_counter() - t0
    out = []
    for st in stats:
        t = times.get(st.backend)
        if t is None:
            out.append(st)
            continue
        p50 = float(np.percentile(t, 50))
        gflops = flops / p50 / 1e9 if (flops and st.gflops is not None and p50 > 0) else None
        out.append(
            dataclasses.replace(
                st,
                p50_ms=p50 * 1e3,
                p95_ms=float(np.percentile(t, 95)) * 1e3,
                mean_ms=float(t.mean()) * 1e3,
                throughput_per_s=settings.batch / float(t.mean()),
                gflops=gflops,
                pct_of_peak=100.0 * gflops / settings.peak_gflops if gflops is not None else None,
            )
        )
    return out


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import onnxruntime

    info: dict[str, Any] = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }
    with contextlib.suppress(OSError):
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return info


def render_table(results: Sequence[ModelBench], settings: BenchSettings) -> str:
    """Plain-text (Markdown) table of the results."""
    head = (
        "| model | backend | batch | p50 ms | p95 ms | items/s | peak RSS MB | RSS added MB "
        f"| GFLOP/call | GFLOP/s | % of {settings.peak_gflops:.0f} GFLOP/s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        for s in r.stats:
            rows.append(
                f"| {r.model} | {s.backend} | {r.batch} | {s.p50_ms:.2f} | {s.p95_ms:.2f} | "
                f"{s.throughput_per_s:.1f} | {_f(s.rss_peak_mb, 0)} | {_f(s.rss_added_mb, 0)} | "
                f"{_f(r.gflop_per_call, 3)} | {_f(s.gflops, 1)} | {_f(s.pct_of_peak, 1)} |"
            )
    lines = [head + "\n".join(rows), ""]
    for r in results:
        ratio = r.ort_cpu_vs_torch
        if ratio is not None:
            lines.append(f"- {r.model}: ORT-CPU is {ratio:.2f}x PyTorch-CPU (p50 ratio, same run)")
        for b, why in r.skipped:
            lines.append(f"- {r.model}: {b} skipped: {why}")
    return "\n".join(lines) + "\n"


def _f(v: float | None, nd: int) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"
