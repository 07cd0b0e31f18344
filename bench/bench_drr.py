"""Benchmark the DRR projector on realistic sizes, optionally against DiffDRR (the peer).

    .venv/bin/python bench/bench_drr.py [--json] [--case knee|longleg|all] [--no-peer]

Cases (synthetic phantoms, linear attenuation in 1/mm):
  knee     300 x 300 x 300 voxels of 0.5 mm, AP view onto 1024 x 1024 pixels of 0.2 mm
  longleg  220 x 220 x 1000 voxels of 1 mm, AP view onto 860 x 2600 pixels of 0.5 mm

Ours: median of 3 timed renders after one warm-up (the warm-up absorbs numba's JIT / cache load).
The one-off reordered copy of the volume is inside every timed render. "nodes" are interpolation
nodes (Joseph: one bilinear lookup per crossed voxel plane, plus entry/exit trilinear lookups).

Peer: if .venv-peers/bin/python exists (bench/peers/make_venv.sh builds it), the volume and geometry
are written as .npy + JSON to --workdir and bench/peers/diffdrr_render.py renders them with DiffDRR
(Siddon by default, --peer-renderer trilinear for its trilinear backend) on CPU (median of 3 after a
warm-up); we then report the time ratio and how well the two images agree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from numpy.typing import NDArray

from appliance.geometry.drr import render_with_stats
from appliance.geometry.projection import ProjectionGeometry, centred_geometry
from appliance.geometry.volume import axis_aligned_affine

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_SCRIPT = ROOT / "bench" / "peers" / "diffdrr_render.py"

# Linear attenuation at ~60 keV, 1/mm: water 0.2059 cm^2/g x 1.0 g/cm^3 (NIST XCOM / Hubbell &
# Seltzer tables); ICRU cortical bone ~0.315 cm^2/g x 1.92 g/cm^3; cancellous taken as ~half of that.
MU_SOFT = 0.0206
MU_CORTICAL = 0.060
MU_CANCELLOUS = 0.030

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Case:
    name: str
    data: F32  # (C, n0, n1, n2)
    affine: NDArray[np.float64]
    geometry: ProjectionGeometry


def _edge(sd: NDArray[np.float32], width: float) -> F32:
    """Occupancy from a signed distance (mm): a linear partial-volume ramp one voxel wide."""
    return np.clip(0.5 - sd / np.float32(width), 0.0, 1.0).astype(np.float32)


def _axes(shape: tuple[int, int, int], spacing: float) -> tuple[F32, F32, F32]:
    """Broadcastable x, y, z (mm, LPS) of the voxel centres of a grid centred on the origin."""
    ax = [((np.arange(n, dtype=np.float32) - (n - 1) / 2) * spacing) for n in shape]
    return ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]


def _ellipsoid_sd(
    x: F32, y: F32, z: F32, c: tuple[float, float, float], r: tuple[float, float, float]
) -> F32:
    q = np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)
    return ((q - 1.0) * min(r)).astype(np.float32)


def _cyl_sd(x: F32, y: F32, c: tuple[float, float], r: float | F32) -> F32:
    return (np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2) - r).astype(np.float32)


def _bone(sd: F32, w: float, cortex_mm: float) -> F32:
    """Cancellous core with a cortical shell of ``cortex_mm``."""
    solid = _edge(sd, w)
    core = _edge(sd + np.float32(cortex_mm), w)
    return (MU_CORTICAL * (solid - core) + MU_CANCELLOUS * core).astype(np.float32)


def knee_case() -> Case:
    shape, h = (300, 300, 300), 0.5
    x, y, z = _axes(shape, h)
    soft = _edge(np.sqrt((x / 65.0) ** 2 + (y / 55.0) ** 2) * 55.0 - 55.0 + 0 * z, h)
    # Femur: shaft above the joint plus two condyles; tibia: plateau plus shaft; patella; fibula.
    femur_sd = np.minimum(
        np.where(z > 30, _cyl_sd(x, y, (0.0, 5.0), 14.0), np.float32(1e3)),
        np.minimum(
            _ellipsoid_sd(x, y, z, (-20.0, 5.0, 18.0), (19.0, 25.0, 21.0)),
            _ellipsoid_sd(x, y, z, (20.0, 5.0, 18.0), (19.0, 25.0, 21.0)),
        ),
    )
    tibia_sd = np.minimum(
        _ellipsoid_sd(x, y, z, (0.0, 5.0, -22.0), (38.0, 28.0, 18.0)),
        np.where(z < -20, _cyl_sd(x, y, (0.0, 5.0), 15.0), np.float32(1e3)),
    )
    patella_sd = _ellipsoid_sd(x, y, z, (0.0, -38.0, 20.0), (20.0, 8.0, 20.0))
    fibula_sd = np.where(z < -15, _cyl_sd(x, y, (32.0, 18.0), 7.0), np.float32(1e3))
    bone = np.maximum.reduce(
        [
            _bone(s.astype(np.float32), h, c)
            for s, c in ((femur_sd, 2.5), (tibia_sd, 2.5), (patella_sd, 1.5), (fibula_sd, 2.0))
        ]
    )
    soft = soft * (1.0 - np.minimum(bone / MU_CANCELLOUS, 1.0))  # bone displaces soft tissue
    affine = axis_aligned_affine(-(np.array(shape) - 1) / 2 * h, (h, h, h))
    geo = centred_geometry(
        name="knee AP",
        isocenter_mm=(0.0, 0.0, 0.0),
        beam_dir=(0.0, 1.0, 0.0),  # anterior -> posterior
        u_dir=(1.0, 0.0, 0.0),  # columns towards patient left
        sid_mm=1000.0,
        sod_mm=900.0,
        width_mm=1024 * 0.2,
        height_mm=1024 * 0.2,
        pitch_mm=0.2,
    )
    data = np.stack([(MU_SOFT * soft).astype(np.float32), bone.astype(np.float32)])
    return Case("knee", data, affine, geo)


def longleg_case() -> Case:
    shape, h = (220, 220, 1000), 1.0
    x, y, z = _axes(shape, h)
    # z runs from the ankle (-500) to above the hip (+500): limb radius tapers from 80 to 40 mm.
    radius = (60.0 + 0.04 * z).astype(np.float32)
    soft = _edge(_cyl_sd(x, y, (0.0, 0.0), radius), h)
    femur_sd = np.minimum(
        np.where(z > 20, _cyl_sd(x + 0.03 * (z - 20), y, (0.0, 5.0), 14.0), np.float32(1e3)),
        _ellipsoid_sd(x, y, z, (0.0, 5.0, 20.0), (40.0, 28.0, 22.0)),
    )
    femur_sd = np.minimum(femur_sd, _ellipsoid_sd(x, y, z, (-40.0, 5.0, 440.0), (24.0, 24.0, 24.0)))
    tibia_sd = np.minimum(
        _ellipsoid_sd(x, y, z, (0.0, 5.0, -15.0), (38.0, 28.0, 16.0)),
        np.where((z < -10) & (z > -440), _cyl_sd(x, y, (0.0, 5.0), 13.0), np.float32(1e3)),
    )
    bone = np.maximum(_bone(femur_sd.astype(np.float32), h, 3.0), _bone(tibia_sd.astype(np.float32), h, 3.0))
    soft = soft * (1.0 - np.minimum(bone / MU_CANCELLOUS, 1.0))
    affine = axis_aligned_affine(-(np.array(shape) - 1) / 2 * h, (h, h, h))
    geo = centred_geometry(
        name="long leg AP",
        isocenter_mm=(0.0, 0.0, 0.0),
        beam_dir=(0.0, 1.0, 0.0),
        u_dir=(1.0, 0.0, 0.0),
        sid_mm=2500.0,
        sod_mm=2300.0,
        width_mm=860 * 0.5,
        height_mm=2600 * 0.5,
        pitch_mm=0.5,
    )
    data = np.stack([(MU_SOFT * soft).astype(np.float32), bone.astype(np.float32)])
    return Case("longleg", data, affine, geo)


def time_ours(case: Case, channels: int, repeats: int, threads: int | None) -> dict[str, object]:
    data = case.data[:channels] if channels > 1 else case.data.sum(axis=0, keepdims=True)
    render_with_stats(data, case.affine, case.geometry, threads=threads)  # warm-up / JIT
    times: list[float] = []
    cpu: list[float] = []
    out = None
    stats = None
    for _ in range(repeats):
        # CPU time alongside wall time: on a shared machine wall time also measures the neighbours.
        t, c = time.perf_counter(), time.process_time()
        out, stats = render_with_stats(data, case.affine, case.geometry, threads=threads)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    assert out is not None and stats is not None
    med = statistics.median(times)
    return {
        "channels": channels,
        "times_s": times,
        "median_s": med,
        "cpu_s": cpu,
        "median_cpu_s": statistics.median(cpu),
        "rays": stats.rays,
        "nodes": stats.nodes,
        "rays_per_s": stats.rays / med,
        "nodes_per_s": stats.nodes / med,
        "channel_samples_per_s": stats.nodes * channels / med,
        "image": out[0] if channels == 1 else None,
    }


def compare(ours: F32, peer: F32) -> dict[str, float]:
    """How alike two renders are: NCC, relative L2 error, and the centroid shift in pixels."""
    a = ours.astype(np.float64)
    b = peer.astype(np.float64)
    a0, b0 = a - a.mean(), b - b.mean()
    ncc = float((a0 * b0).sum() / np.sqrt((a0**2).sum() * (b0**2).sum()))
    rel_l2 = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    rr, cc = np.mgrid[0 : a.shape[0], 0 : a.shape[1]]

    def centroid(im: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array([(im * cc).sum(), (im * rr).sum()]) / im.sum()

    shift = centroid(a) - centroid(b)
    return {
        "ncc": ncc,
        "rel_l2_error": rel_l2,
        "mean_ratio": float(a.mean() / b.mean()),
        "p99_abs_diff": float(np.percentile(np.abs(a - b), 99)),
        "max_value_ours": float(a.max()),
        "centroid_shift_px": [float(shift[0]), float(shift[1])],
    }


def run_peer(
    case: Case, image: F32, workdir: Path, repeats: int, timeout_s: float, renderer: str = "siddon"
) -> dict[str, object]:
    workdir.mkdir(parents=True, exist_ok=True)
    vol_path = workdir / f"{case.name}_volume.npy"
    meta_path = workdir / f"{case.name}_meta.json"
    out_path = workdir / f"{case.name}_diffdrr_{renderer}.npy"
    np.save(vol_path, case.data.sum(axis=0))
    np.save(workdir / f"{case.name}_ours.npy", image)
    meta_path.write_text(json.dumps({"affine": case.affine.tolist(), "geometry": case.geometry.to_dict()}))
    cmd = [str(PEER_PYTHON), str(PEER_SCRIPT), "--volume", str(vol_path), "--meta", str(meta_path)]
    cmd += ["--out", str(out_path), "--repeats", str(repeats), "--renderer", renderer]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"peer timed out after {timeout_s:.0f} s", "command": " ".join(cmd)}
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-2000:], "command": " ".join(cmd)}
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["command"] = " ".join(cmd)
    result["agreement"] = compare(image, np.load(out_path))
    return result


def machine() -> dict[str, object]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "logical_cpus": len(os.sched_getaffinity(0)),
        "numba_threads": numba.get_num_threads(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_1_5_15": list(os.getloadavg()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="DRR projector benchmark")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument("--case", choices=["knee", "longleg", "all"], default="all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--peer-timeout", type=float, default=3600.0)
    ap.add_argument(
        "--peer-renderer",
        choices=["siddon", "trilinear"],
        default="siddon",
        help="DiffDRR backend: siddon (its default, nearest voxel) or trilinear (2 x max dim samples/ray)",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/xr3d_bench_drr"))
    args = ap.parse_args(argv)

    makers = {"knee": knee_case, "longleg": longleg_case}
    names = list(makers) if args.case == "all" else [args.case]
    report: dict[str, object] = {"machine": machine(), "cases": {}}
    for name in names:
        case = makers[name]()
        n0, n1, n2 = case.data.shape[1:]
        g = case.geometry
        entry: dict[str, object] = {
            "volume": f"{n0}x{n1}x{n2} @ {np.linalg.norm(case.affine[:3, 0]):g} mm",
            "detector": f"{g.columns}x{g.rows} @ {g.pitch_u_mm:g} mm",
        }
        single = time_ours(case, 1, args.repeats, args.threads)
        image = single.pop("image")
        entry["ours_1ch"] = single
        dual = time_ours(case, 2, args.repeats, args.threads)
        dual.pop("image")
        entry["ours_2ch"] = dual
        if not args.no_peer:
            if PEER_PYTHON.exists():
                assert isinstance(image, np.ndarray)
                peer = run_peer(
                    case, image, args.workdir, args.repeats, args.peer_timeout, args.peer_renderer
                )
                if "median_s" in peer:
                    peer["time_ratio_peer_over_ours"] = float(peer["median_s"]) / float(single["median_s"])  # type: ignore[arg-type]
                entry["peer"] = peer
            else:
                entry["peer"] = {"error": f"{PEER_PYTHON} missing: run bash bench/peers/make_venv.sh"}
        report["cases"][name] = entry  # type: ignore[index]
        if not args.json:
            print_case(name, entry)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(json.dumps(report["machine"]))
    return 0


def print_case(name: str, e: dict[str, object]) -> None:
    print(f"== {name}: volume {e['volume']}, detector {e['detector']}")
    for key in ("ours_1ch", "ours_2ch"):
        r = e[key]
        assert isinstance(r, dict)
        runs = ", ".join(f"{t:.3f}" for t in r["times_s"])
        print(
            f"  xr3d {r['channels']} ch: median {r['median_s']:.3f} s ({runs}), cpu {r['median_cpu_s']:.3f} s"
            f"  {r['rays_per_s'] / 1e6:.2f} Mrays/s  {r['nodes_per_s'] / 1e6:.0f} Mnodes/s"
        )
    peer = e.get("peer")
    if isinstance(peer, dict):
        if "error" in peer:
            print(f"  DiffDRR: ERROR {peer['error']}")
        else:
            a = peer["agreement"]
            assert isinstance(a, dict)
            ratio = peer["time_ratio_peer_over_ours"]
            print(
                f"  DiffDRR {peer['renderer']}: median {peer['median_s']:.3f} s, ratio {ratio:.1f}x;"
                f" NCC {a['ncc']:.5f}, rel L2 {a['rel_l2_error']:.4f}, mean ratio {a['mean_ratio']:.5f},"
                f" centroid shift {a['centroid_shift_px'][0]:+.3f}, {a['centroid_shift_px'][1]:+.3f} px"
            )


if __name__ == "__main__":
    sys.exit(main())
