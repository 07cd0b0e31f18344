"""``xr3d export`` and ``xr3d bench`` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli.main import main
from engines.bench import count_flops
from tests.reference_onnx import export_reference


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_reference(tmp_path_factory.mktemp("cli"), "volume3d")


def test_export_onnx_all_needs_trained_weights_or_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from export import export_cli

    # With an empty registry, --all says so and points to --reference.
    monkeypatch.setattr(export_cli, "SHIPPED_MODELS", ())
    assert main(["export", "onnx", "--all", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "[no_shipped_models]" in err and "SHIPPED_MODELS" in err and "--reference" in err
    monkeypatch.undo()
    # An unknown model name is a clear error whatever the registry holds.
    assert main(["export", "onnx", "--model", "no-such-model", "--out", str(tmp_path)]) == 2


def test_bench_json_on_this_machine(onnx_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["bench", "--onnx", str(onnx_file), "--iters", "3", "--warmup", "1", "--threads", "1", "--json"]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["machine"]["nproc"] >= 1 and doc["machine"]["cpu"]
    (res,) = doc["results"]
    assert res["model"] == "ref-volume3d"
    ort = next(b for b in res["backends"] if b["backend"] == "ort-cpu")
    assert ort["p95_ms"] >= ort["p50_ms"] > 0 and ort["throughput_per_s"] > 0
    assert ort["gflops"] > 0 and ort["pct_of_peak"] > 0
    flops = count_flops(onnx_file, 1)
    assert flops is not None and res["gflop_per_call"] == pytest.approx(flops / 1e9)


def test_flop_count_matches_hand_count(onnx_file: Path) -> None:
    # VolumeNet3D(width=8) on 16^3: conv 1->8 k3, pool, conv 8->16 k3 at 8^3, convT 16->8 k2 s2,
    # conv 16->8 k3 at 16^3, conv 8->1 k1; 2 FLOPs per multiply-add.
    v16, v8 = 16**3, 8**3
    macs = v16 * 8 * 27 + v8 * 16 * 8 * 27 + v8 * 16 * 8 * 8 + v16 * 8 * 16 * 27 + v16 * 8
    assert count_flops(onnx_file, 1) == 2 * macs
    assert count_flops(onnx_file, 2) == 4 * macs


def test_bench_without_models_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench"]) == 2
    assert "--shipped" in capsys.readouterr().err


def test_export_triton_cli(onnx_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "triton", "--onnx", str(onnx_file), "--out", str(tmp_path / "repo"), "--cpu"]) == 0
    cfg = (tmp_path / "repo" / "ref-volume3d_onnx" / "config.pbtxt").read_text()
    assert "KIND_CPU" in cfg and 'platform: "onnxruntime_onnx"' in cfg
