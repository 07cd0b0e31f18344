"""The knee landmark network and its ONNX export: shapes, TensorRT-friendly ops, PyTorch vs ONNX Runtime
parity (<= 1e-3) on a real film window, the shipped model's metadata, and training (tiny, seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from appliance.landmarks.detector import DEFAULT_MODELS_DIR
from appliance.landmarks.knee_views import KNEE_AP, KNEE_LANDMARKS, KNEE_LAT
from engines.config import EngineConfig
from engines.ort_backend import OrtBackend

torch = pytest.importorskip("torch")

SHIPPED_PT = DEFAULT_MODELS_DIR / "knee_landmarks.pt"
SHIPPED_ONNX = DEFAULT_MODELS_DIR / "knee_landmarks.onnx"
shipped = pytest.mark.skipif(
    not (SHIPPED_PT.is_file() and SHIPPED_ONNX.is_file()), reason="shipped knee model missing"
)


def _film_window() -> np.ndarray:
    """A realistic input: a knee-like smooth image with a bright 'bone' band and noise, in [0, 1]."""
    from export.models.knee_landmark_net import KNEE_GEOMETRY

    g = KNEE_GEOMETRY
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[0 : g.rows, 0 : g.cols].astype(np.float32)
    img = 0.6 * np.exp(-(((cc - g.cols / 2) / 60.0) ** 2)) + 0.3 * (rr > g.rows / 2)
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def test_network_shapes_and_channels() -> None:
    from export.models.knee_landmark_net import CHANNELS, KNEE_GEOMETRY, KneeLandmarkNet, view_channels

    g = KNEE_GEOMETRY
    net = KneeLandmarkNet().eval()
    with torch.no_grad():
        out = net(torch.from_numpy(_film_window())[None, None])
    assert out.shape == (1, len(CHANNELS), *g.heatmap_shape)
    assert [CHANNELS[i].split(".", 1)[1] for i in view_channels(KNEE_AP)] == list(KNEE_LANDMARKS[KNEE_AP])
    assert [CHANNELS[i].split(".", 1)[1] for i in view_channels(KNEE_LAT)] == list(KNEE_LANDMARKS[KNEE_LAT])
    # spatial softmax scaled by 2 pi sigma^2: every map sums to that constant
    sums = out.sum(dim=(2, 3)).numpy()
    np.testing.assert_allclose(sums, 2 * np.pi * g.sigma**2, rtol=1e-4)


def test_export_parity_and_ops(tmp_path: Path) -> None:
    from export.models.knee_landmark_net import CHANNELS, KNEE_GEOMETRY, KneeLandmarkNet
    from export.onnx_export import check_onnx
    from export.training.knee_landmarks import MODEL_VERSION, export_knee_model

    torch.manual_seed(5)
    net = KneeLandmarkNet()
    meta = {
        "version": MODEL_VERSION,
        "training_seed": 5,
        "input_geometry": KNEE_GEOMETRY.to_dict(),
        "channels": list(CHANNELS),
        "views": {v: list(n) for v, n in KNEE_LANDMARKS.items()},
    }
    x = torch.from_numpy(_film_window())[None, None]
    worst = export_knee_model(net, tmp_path / "k.onnx", meta, x)
    assert worst <= 1e-3
    report = check_onnx(tmp_path / "k.onnx")
    assert report.ok, report.summary()
    b = OrtBackend(tmp_path / "k.onnx", EngineConfig(cpu_threads=1), device="cpu")
    try:
        assert b.info.version == MODEL_VERSION and b.info.training_seed == 5
        assert json.loads(b.info.meta["xr3d.channels"]) == list(CHANNELS)
        two = np.concatenate([x.numpy(), x.numpy()[:, :, ::-1, :].copy()])  # dynamic batch
        assert b.run({"film": two})["heatmaps"].shape[0] == 2
    finally:
        b.close()


@shipped
def test_shipped_onnx_matches_shipped_weights() -> None:
    from export.training.knee_landmarks import load_knee_model

    net, meta = load_knee_model(DEFAULT_MODELS_DIR)
    x = _film_window()[None, None]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    b = OrtBackend(SHIPPED_ONNX, EngineConfig(cpu_threads=1), device="cpu")
    try:
        got = b.run({"film": x})["heatmaps"]
        assert b.info.version == meta["version"] and b.info.training_seed == meta["training_seed"]
        geom = b.info.input_geometry
        assert (geom["rows"], geom["cols"], geom["mm_per_px"]) == (480, 384, 0.5)
    finally:
        b.close()
    assert float(np.abs(ref).max()) > 0.01  # a real, non-degenerate output
    assert float(np.abs(got - ref).max()) <= 1e-3
    assert 4000 <= meta["train_seed_range"][0] <= meta["train_seed_range"][1] <= 4999
    assert SHIPPED_ONNX.stat().st_size < 1_000_000


@pytest.mark.slow
def test_training_is_deterministic_by_seed(tmp_path: Path) -> None:
    from export.simulator.case import CaseOptions, generate_case
    from export.training.knee_landmarks import KneeTrainConfig, load_knee_model, train_knee_landmarks

    opts = CaseOptions(views=("knee-ap", "knee-lat"), write_ct=False, knee_pitch=0.5, knee_spacing=1.0)
    data = tmp_path / "data"
    generate_case(4999, data, opts)  # a training-range seed (docs/knee-landmarks.md)
    nets = []
    for run in ("a", "b"):
        cfg = KneeTrainConfig(data=data, out=tmp_path / run, seed=7, steps=3, batch=2)
        res = train_knee_landmarks(cfg)
        assert (
            res.steps == 3
            and res.loss_plot.is_file()
            and res.onnx.is_file()
            and res.parity_max_abs_diff <= 1e-3
        )
        assert json.loads(res.report.read_text())["train_seeds"] == [4999]
        nets.append(load_knee_model(tmp_path / run)[0].state_dict())
    for k in nets[0]:
        assert torch.equal(nets[0][k], nets[1][k]), k
