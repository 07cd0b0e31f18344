"""Stage 3 of the long-leg landmark model (fine patches): network, patch cutting on a real simulated
case (also mirrored), a few real training steps with ONNX export and ORT parity, the runtime stage
(real ONNX Runtime sessions) mapping heatmap peaks back to film pixels with and without mirroring, its
rules (coarse films skipped, large moves refused), and the detector with and without the stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from appliance.analytics.landmarks import LANDMARKS_2D
from appliance.landmarks.detector import (
    CROP_MODEL,
    DEFAULT_MODELS_DIR,
    WHOLE_MODEL,
    LandmarkDetector,
    normalise_side,
)
from appliance.landmarks.fine import FINE_MODEL, MAX_MOVE_MM, FineStage
from engines.config import EngineConfig
from export.datasets.landmark_samples import SeedRangeError, load_case
from export.models.landmark_fine_net import FINE_GEOMETRY, FineNet
from export.models.landmark_net import count_parameters, spatial_softmax
from export.onnx_export import export_onnx
from export.simulator.case import CaseOptions, generate_case
from export.training.landmarks_fine import (
    FineConfig,
    FineResult,
    cut_patches,
    film_landmarks,
    load_fine,
    patch_batch,
    train_fine,
)

TRAIN_SEED = 4245  # training range
EVAL_SEED = 500951  # evaluation range
OPTS = CaseOptions(
    views=("longleg",),
    write_ct=False,
    longleg_pitch=1.0,
    leg_spacing=2.0,
    knee_spacing=1.0,
    contralateral=False,
    preview_max_px=200,
)
CPU = EngineConfig(backend="ort-cpu", cpu_threads=1)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fine_train")
    generate_case(TRAIN_SEED, root, OPTS)
    return root


@pytest.fixture(scope="module")
def trained(train_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> FineResult:
    out = tmp_path_factory.mktemp("fine_out")
    cfg = FineConfig(data=train_dir, out=out, seed=5, steps=3, batch=4, patches_per_landmark=2, threads=1)
    return train_fine(cfg)


def test_network_shape_and_size() -> None:
    net = FineNet().eval()
    x = torch.rand(2, 1, *FINE_GEOMETRY.shape)
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (2, 8, *FINE_GEOMETRY.heatmap_shape)
    # the scaled spatial softmax: each map sums to 2 pi sigma^2
    s = float(2 * np.pi * FINE_GEOMETRY.sigma**2)
    assert torch.allclose(y.sum(dim=(2, 3)), torch.full((2, 8), s), rtol=1e-4)
    assert count_parameters(net) < 250_000  # < 1 MB of float32


@pytest.mark.parametrize("side", ["R", "L"])
def test_patches_hold_their_landmark_near_the_centre(train_dir: Path, side: str) -> None:
    case = load_case(train_dir / f"case_{TRAIN_SEED}")
    rng = np.random.default_rng(0)
    # canonical_side = the case's side: no mirror; the other side: mirrored
    own = normalise_side(case.side)
    canon = own if side == "R" else ("L" if own == "R" else "R")
    patches = cut_patches(case, rng, per_landmark=3, jitter_mm=3.0, canonical_side=canon)
    assert len(patches) == 3 * int(case.in_field.sum())
    c = (FINE_GEOMETRY.cols - 1) / 2.0
    for p in patches:
        off_px = np.abs(p.landmarks[p.target] - c)
        # jitter 3 mm per axis in detector mm = 12 patch pixels at 0.25 mm/px
        assert np.all(off_px <= 3.0 / FINE_GEOMETRY.mm_per_px + 1e-6)
        assert p.visible[p.target]
        assert p.image.shape == FINE_GEOMETRY.shape
    # mirrored patches are the unmirrored ones flipped left-right (same jitter draws)
    if side == "L":
        straight = cut_patches(
            case, np.random.default_rng(0), per_landmark=3, jitter_mm=3.0, canonical_side=case.side
        )
        for a, b in zip(patches, straight, strict=True):
            assert np.allclose(a.landmarks[:, 1], b.landmarks[:, 1])
            assert np.allclose(a.landmarks[:, 0], FINE_GEOMETRY.cols - 1 - b.landmarks[:, 0])


def test_film_landmarks_follow_the_stitched_zones() -> None:
    pts = np.array([[100.0, 50.0], [100.0, 450.0], [100.0, 900.0], [40.0, 1199.0]])
    entry = {
        "rows": 1210,
        "artifacts": {
            "stitch": {"seam_rows": [800, 400], "zone_shifts": [[0, 0], [3, -4], [-2, 1]]},
            "padding": {"top": 10, "bottom": 0, "left": 5, "right": 0, "value": 0.0},
        },
    }
    out = film_landmarks(entry, pts)
    # zones by unpadded row (row - 10): [0, 400) no shift, [400, 800) (drow 3, dcol -4), [800, 1200) (-2, 1)
    assert out.tolist() == [[100.0, 50.0], [96.0, 453.0], [101.0, 898.0], [41.0, 1197.0]]
    assert np.array_equal(film_landmarks({"rows": 1210, "artifacts": {"stitch": None}}, pts), pts)
    assert np.array_equal(film_landmarks({}, pts), pts)


def test_batch_targets_the_patch_landmark(train_dir: Path) -> None:
    case = load_case(train_dir / f"case_{TRAIN_SEED}")
    patches = cut_patches(case, np.random.default_rng(1), per_landmark=1, jitter_mm=3.0, canonical_side="R")
    b = patch_batch(np.random.default_rng(2), patches, 6)
    assert tuple(b.images.shape) == (6, 1, *FINE_GEOMETRY.shape)
    assert tuple(b.heatmaps.shape) == (6, 8, *FINE_GEOMETRY.heatmap_shape)
    assert float(b.weights.sum()) >= 1.0
    assert float(b.images.min()) >= 0.0 and float(b.images.max()) <= 1.0


def test_training_writes_onnx_with_metadata_and_parity(trained: FineResult) -> None:
    assert trained.steps == 3 and np.isfinite(trained.final_loss)
    assert trained.onnx.is_file() and trained.report.is_file() and trained.loss_plot.is_file()
    assert all(d < 1e-3 for _, d in trained.parity)
    meta = {p.key: p.value for p in onnx.load(str(trained.onnx)).metadata_props}
    assert json.loads(meta["xr3d.input_geometry"])["mm_per_px"] == FINE_GEOMETRY.mm_per_px
    assert meta["xr3d.canonical_side"] == "R"
    net, m = load_fine(trained.onnx.parent)
    assert m["train_seed_range"] == [TRAIN_SEED, TRAIN_SEED]
    assert isinstance(net, FineNet)


def test_training_refuses_eval_seeds(tmp_path: Path) -> None:
    generate_case(EVAL_SEED, tmp_path / "ev", OPTS)
    with pytest.raises(SeedRangeError):
        train_fine(FineConfig(data=tmp_path / "ev", out=tmp_path / "o", seed=1, steps=1))


# --- runtime ----------------------------------------------------------------------------------------
class _Brightness(nn.Module):
    """A stand-in 'network' whose heatmaps are the patch's own brightness (log), pooled to stride 2:
    the decoded peak is the brightest spot, so the stage's geometry can be checked exactly."""

    def forward(self, patch: torch.Tensor) -> torch.Tensor:
        p = F.avg_pool2d(patch, 2)
        logits = torch.log(p + 1e-4) * 4.0
        return spatial_softmax(logits.repeat(1, 8, 1, 1), FINE_GEOMETRY.sigma)


def _blob_model(path: Path, **extra: object) -> Path:
    meta = {
        "version": "test",
        "training_seed": 0,
        "input_geometry": FINE_GEOMETRY.to_dict(),
        "landmarks": list(LANDMARKS_2D),
        "max_film_mm_per_px": 0.5,
        "max_move_mm": MAX_MOVE_MM,
        "refines": list(LANDMARKS_2D),
        **extra,
    }
    ex = torch.rand(1, 1, *FINE_GEOMETRY.shape)
    export_onnx(_Brightness(), (ex,), path, input_names=("patch",), output_names=("heatmaps",), metadata=meta)
    return path


def _film_with_blob(
    centre: tuple[float, float], spacing: float, shape: tuple[int, int] = (400, 300)
) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    s = 0.8 / spacing  # 0.8 mm sigma in film pixels
    return np.exp(-((cols - centre[0]) ** 2 + (rows - centre[1]) ** 2) / (2 * s * s)).astype(np.float32)


@pytest.mark.parametrize("mirror", [False, True])
def test_stage_maps_the_peak_back_to_film_pixels(tmp_path: Path, mirror: bool) -> None:
    stage = FineStage(_blob_model(tmp_path / FINE_MODEL), CPU)
    sp = 0.35
    truth = (151.3, 203.7)
    film = _film_with_blob(truth, sp)
    start = np.tile(np.array(truth) + np.array([2.0, -1.5]) / sp, (8, 1))  # 2.5 mm off
    res = stage.refine(film, (sp, sp), start, mirror=mirror)
    assert res.ran and res.moved.all()
    err_mm = np.hypot(*(res.points - np.array(truth)).T) * sp
    assert float(err_mm.max()) < 0.15
    stage.close()


def test_stage_rules_coarse_films_and_large_moves(tmp_path: Path) -> None:
    stage = FineStage(_blob_model(tmp_path / FINE_MODEL), CPU)
    truth = (151.0, 203.0)
    coarse = stage.refine(_film_with_blob(truth, 1.0), (1.0, 1.0), np.tile(truth, (8, 1)))
    assert not coarse.ran and not coarse.moved.any()
    sp = 0.35
    far = np.tile(np.array(truth) + np.array([7.0, 0.0]) / sp, (8, 1))  # 7 mm > MAX_MOVE_MM, in the patch
    res = stage.refine(_film_with_blob(truth, sp), (sp, sp), far)
    assert res.ran and not res.moved.any()
    assert np.array_equal(res.points, far)
    which = np.zeros(8, bool)
    which[2] = True
    near = np.tile(np.array(truth) + 1.0, (8, 1))
    part = stage.refine(_film_with_blob(truth, sp), (sp, sp), near, which=which)
    assert part.moved.tolist() == which.tolist()
    assert np.array_equal(part.points[~which], near[~which])
    stage.close()


def test_stage_blend_and_landmark_subset(tmp_path: Path) -> None:
    path = _blob_model(tmp_path / FINE_MODEL, refines=["MDFC", "LTP"], blend=0.5)
    sp = 0.35
    truth = (151.3, 203.7)
    film = _film_with_blob(truth, sp)
    start = np.tile(np.array(truth) + np.array([2.0, 0.0]) / sp, (8, 1))
    stage = FineStage(path, CPU)
    assert stage.refines == ("MDFC", "LTP") and stage.blend == 0.5
    res = stage.refine(film, (sp, sp), start)
    picked = np.array([n in ("MDFC", "LTP") for n in stage.names])
    assert res.moved.tolist() == picked.tolist()
    assert np.array_equal(res.points[~picked], start[~picked])
    # half way from the start to the blob: 1 mm left of the start
    assert np.allclose((res.points[picked, 0] - start[picked, 0]) * sp, -1.0, atol=0.1)
    stage.close()
    # constructor arguments override the metadata
    full = FineStage(path, CPU, blend=1.0, refines=stage.names)
    res = full.refine(film, (sp, sp), start)
    assert res.moved.all() and np.allclose(res.points, truth, atol=0.15 / sp)
    full.close()


@pytest.mark.skipif(not (DEFAULT_MODELS_DIR / WHOLE_MODEL).is_file(), reason="no shipped landmark models")
def test_detector_uses_the_stage_only_when_its_file_is_there(tmp_path: Path) -> None:
    for n in (WHOLE_MODEL, CROP_MODEL):
        shutil.copy(DEFAULT_MODELS_DIR / n, tmp_path / n)
    rng = np.random.default_rng(3)
    film = rng.random((1200, 500)).astype(np.float32)
    sp = (0.35, 0.35)
    with LandmarkDetector(tmp_path, CPU) as det:
        before = det.detect(film, sp, side="R")
        assert det.fine_stage is None
    assert before.crop_points is None and "landmarks_fine" not in before.model_versions
    _blob_model(tmp_path / FINE_MODEL)
    with LandmarkDetector(tmp_path, CPU) as det:
        after = det.detect(film, sp, side="R")
        off = LandmarkDetector(tmp_path, CPU, fine=False)
        plain = off.detect(film, sp, side="R")
        off.close()
    assert after.crop_points is not None and "stage3" in after.timings_s
    assert after.model_versions["landmarks_fine"] == "test"
    # stages 1-2 unchanged by the stage; stage 3 moves points by at most its limit
    assert np.allclose(after.crop_points, before.points)
    assert np.allclose(plain.points, before.points) and plain.crop_points is None
    # a film coarser than the stage's limit keeps the stage-2 points and does not name the fine model
    with LandmarkDetector(tmp_path, CPU) as det:
        coarse = det.detect(film[::3, ::3], (1.05, 1.05), side="R")
        assert "landmarks_fine" in det.model_versions
    assert coarse.crop_points is None and "landmarks_fine" not in coarse.model_versions
    assert "stage3" not in coarse.timings_s
    move = np.hypot(*(after.points - after.crop_points).T) * 0.35
    assert float(move.max()) <= MAX_MOVE_MM + 1e-6
