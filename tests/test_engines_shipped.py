"""``xr3d export onnx`` and ``xr3d bench --shipped`` on the shipped models (models/)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.cli.main import main
from appliance.recon.infer import DEFAULT_MODELS_DIR
from engines.bench import count_flops
from engines.config import EngineConfig
from engines.ort_backend import OrtBackend

pytest.importorskip("torch")

MODELS = DEFAULT_MODELS_DIR
needs_models = pytest.mark.skipif(
    not all((MODELS / f).is_file() for f in ("recon.pt", "recon_decoder.onnx", "landmarks_whole.pt")),
    reason="shipped model files missing",
)


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    b = OrtBackend(path, EngineConfig(cpu_threads=1), device="cpu")
    try:
        return dict(b.run(feeds))
    finally:
        b.close()


@needs_models
def test_reexported_decoder_matches_shipped_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "onnx", "--model", "recon_decoder", "--out", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["parity_ok"] and row["tensorrt_ops_ok"]
    rng = np.random.default_rng(7)
    film = rng.random((2, 1, 256, 256), dtype=np.float32)
    feats = _run(MODELS / "recon_encoder.onnx", {"film": film})["features"][None]
    mats = np.zeros((1, 2, 3, 4), np.float32)
    mats[0, 0] = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 0.1, 0, 1]], np.float32)
    mats[0, 1] = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [0.1, 0, 0, 1]], np.float32)
    # A point count different from the export example: the point axis must stay dynamic.
    points = (rng.random((1, 3000, 3), dtype=np.float32) * 2 - 1).astype(np.float32)
    feeds = {"features": feats, "mats": mats, "present": np.ones((1, 2), np.float32), "points": points}
    if (MODELS / "recon_context.onnx").is_file():  # recon-1.2+: the decoder also samples the 3D context
        feeds["context"] = _run(
            MODELS / "recon_context.onnx", {k: feeds[k] for k in ("features", "mats", "present")}
        )["context"]
    new, ref = _run(tmp_path / "recon_decoder.onnx", feeds), _run(MODELS / "recon_decoder.onnx", feeds)
    assert new["hu"].shape == (1, 3000) and new["logits"].shape == (1, 3000, 5)
    assert np.abs(ref["logits"]).max() > 0.1  # not a degenerate all-zero output
    for k in ("hu", "logits"):
        assert np.abs(new[k] - ref[k]).max() < 1e-4


@needs_models
def test_bench_shipped_json(capsys: pytest.CaptureFixture[str]) -> None:
    from export.export_cli import SHIPPED_MODELS, recon_chunk

    args = ["bench", "--shipped", "--iters", "2", "--warmup", "0", "--threads", "1", "--json"]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    by_name = {r["model"]: r for r in doc["results"]}
    peak = doc["settings"]["peak_gflops"]
    assert peak > 0
    assert set(by_name) == {m.name for m in SHIPPED_MODELS}
    assert by_name["recon_decoder"]["input_shapes"]["points"] == [1, recon_chunk(), 3]
    assert by_name["recon_encoder"]["input_shapes"]["film"] == [2, 1, 256, 256]
    for r in doc["results"]:
        backends = {b["backend"]: b for b in r["backends"]}
        assert {"ort-cpu", "pytorch-cpu"} <= set(backends)
        assert r["gflop_per_call"] > 0 and r["ort_cpu_vs_pytorch_cpu"] > 0
        for b in backends.values():
            assert b["p95_ms"] >= b["p50_ms"] > 0 and b["throughput_per_s"] > 0
            assert b["gflops"] > 0 and b["pct_of_peak"] == pytest.approx(100 * b["gflops"] / peak)
            assert b["rss_peak_mb"] is None or b["rss_peak_mb"] > 0


@needs_models
def test_flops_of_encoder_scale_with_views() -> None:
    # The encoder's pads are computed in-graph, so static shape inference alone finds no conv shapes.
    one = count_flops(MODELS / "recon_encoder.onnx", 1, {"film": np.zeros((1, 1, 256, 256), np.float32)})
    two = count_flops(MODELS / "recon_encoder.onnx", 1, {"film": np.zeros((2, 1, 256, 256), np.float32)})
    assert one is not None and one > 0 and two == 2 * one
