"""The 0.3 crop head and what came with it: the stride-2 crop network and its checkpoint round trip,
the soft-argmax coordinate loss, test-time averaging of shifted crops in the detector (batched and
chunked to the engine's batch limit), and the bone masks with their Dice in the evaluation (a real small
simulated case with label volumes, real ONNX Runtime sessions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance.landmarks.detector import DEFAULT_MODELS_DIR, WHOLE_MODEL, LandmarkDetector
from engines.config import EngineConfig
from export.datasets.heatmaps import encode_heatmaps, to_output
from export.datasets.landmark_samples import CaseData, load_case
from export.evaluation.landmarks_eval import evaluate, mask_dice
from export.evaluation.landmarks_report import format_summary
from export.models.landmark_net import CROP_GEOMETRY, CropNet, WholeFilmNet, crop_geometry
from export.simulator.case import CaseOptions, generate_case
from export.training.landmarks import CROP_PT, WHOLE_PT, load_trained
from export.training.landmarks_batches import coord_loss

EVAL_SEED = 500961  # evaluation range; simulated with label volumes for the mask Dice
OPTS = CaseOptions(
    views=("longleg",),
    write_ct=True,
    longleg_pitch=1.0,
    leg_spacing=2.0,
    knee_spacing=1.0,
    contralateral=True,
    preview_max_px=200,
)
shipped = pytest.mark.skipif(
    not (DEFAULT_MODELS_DIR / WHOLE_MODEL).is_file(), reason="no shipped landmark models in models/"
)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lm_ct")
    generate_case(EVAL_SEED, root, OPTS)
    return root


@pytest.fixture(scope="module")
def case(case_dir: Path) -> CaseData:
    return load_case(case_dir / f"case_{EVAL_SEED}")


def test_stride2_crop_net_shapes_and_geometry() -> None:
    torch.manual_seed(0)
    net = CropNet(12, 2).eval()
    with torch.no_grad():
        h = net(torch.rand(2, 1, *CROP_GEOMETRY.shape))
    assert net.geometry.stride == 2 and net.geometry.sigma == 2.0
    assert h.shape == (2, 8, CROP_GEOMETRY.rows // 2, CROP_GEOMETRY.cols // 2)
    assert crop_geometry(4) == CROP_GEOMETRY
    with pytest.raises(ValueError):
        CropNet(8, 3)


def test_load_trained_rebuilds_the_recorded_crop_network(tmp_path: Path) -> None:
    torch.manual_seed(1)
    whole, crop = WholeFilmNet(), CropNet(12, 2)
    meta = {"arch": crop.arch(), "version": "test"}
    torch.save({"state": whole.state_dict(), "metadata": json.dumps({})}, tmp_path / WHOLE_PT)
    torch.save({"state": crop.state_dict(), "metadata": json.dumps(meta)}, tmp_path / CROP_PT)
    _, got, m = load_trained(tmp_path)
    assert got.arch() == {"width": 12, "stride": 2}
    assert m["crop"]["arch"] == {"width": 12, "stride": 2}
    for k, v in crop.state_dict().items():
        assert torch.equal(v, got.state_dict()[k])
    # weights saved without "arch" (0.1 / 0.2) are the stride-4 width-8 network
    torch.save({"state": CropNet().state_dict(), "metadata": json.dumps({})}, tmp_path / CROP_PT)
    assert load_trained(tmp_path)[1].arch() == {"width": 8, "stride": 4}


def test_coord_loss_measures_the_soft_argmax_distance_and_pulls_toward_the_landmark() -> None:
    shape, stride = (160, 224), 2
    truth = np.array([[101.3, 57.8]])
    t = encode_heatmaps(truth, None, shape, stride=stride, sigma=2.0)
    pts = torch.from_numpy(to_output(truth, stride)[None].astype(np.float32))
    w = torch.ones(1, 1)
    # logits = log of the target: the soft-argmax is the landmark itself (up to the map border)
    exact = torch.from_numpy(np.log(np.maximum(t.heatmaps, 1e-30))[None])
    assert float(coord_loss(exact, pts, w, 1.0)) < 0.01
    # the same peak moved 3 cells to the right is 3 cells off, 1.5 mm at 0.5 mm cells
    moved = torch.roll(exact, shifts=3, dims=3).requires_grad_(True)
    d = coord_loss(moved, pts, w, 0.5)
    assert abs(float(d.detach()) - 1.5) < 0.01
    d.backward()
    assert moved.grad is not None
    g = moved.grad[0, 0]
    r, c = np.unravel_index(int(np.argmax(t.heatmaps[0])), t.heatmaps[0].shape)
    # lowering the loss raises logits left of the moved peak (toward the truth), lowers those right
    assert float(g[r, c + 1]) < 0 < float(g[r, c + 5])


def test_mask_dice() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_dice(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert mask_dice(a, b) == pytest.approx(0.5)


@shipped
def test_shifted_crops_average_to_the_mean_of_single_shift_runs(case: CaseData) -> None:
    shifts = ((0.0, 0.0), (-1.25, 1.25), (1.25, -1.25))
    cfg = EngineConfig(backend="ort-cpu")
    with LandmarkDetector(config=cfg, tta_shifts_mm=shifts) as det:
        both = det.detect(case.film.image, case.film.spacing_mm, case.side)
    singles = []
    for s in shifts:
        with LandmarkDetector(config=cfg, tta_shifts_mm=(s,)) as det:
            singles.append(det.detect(case.film.image, case.film.spacing_mm, case.side))
    np.testing.assert_allclose(both.points, np.mean([d.points for d in singles], axis=0), atol=1e-4)
    np.testing.assert_allclose(both.confidence, np.mean([d.confidence for d in singles], axis=0), atol=1e-5)
    # the shifted runs differ: averaging them is not a no-op
    assert np.max(np.abs(singles[1].points - singles[2].points)) > 1e-3
    # crops are batched in chunks of the engine's max batch; the chunk size does not change results
    with LandmarkDetector(config=EngineConfig(backend="ort-cpu", max_batch=1), tta_shifts_mm=shifts) as det:
        one = det.detect(case.film.image, case.film.spacing_mm, case.side)
    np.testing.assert_allclose(one.points, both.points, atol=1e-4)


@shipped
def test_bone_masks_sit_on_the_film_and_are_scored_by_the_evaluation(case_dir: Path, case: CaseData) -> None:
    with LandmarkDetector(config=EngineConfig(backend="ort-cpu")) as det:
        out = det.detect(case.film.image, case.film.spacing_mm, case.side)
        rows, cols, stride = det.whole_geometry
        a1 = det.whole_frame(case.film.image.shape, case.film.spacing_mm, mirror=det._mirror(out.side))
    assert out.bone_masks is not None and out.mask_to_film is not None
    assert out.bone_masks.shape == (2, rows // stride, cols // stride)
    assert np.all((out.bone_masks >= 0) & (out.bone_masks <= 1))
    # mask cell (0, 0) is the centre of the first stride x stride block of the stage-1 input
    c = (stride - 1) / 2.0
    np.testing.assert_allclose(out.mask_to_film @ [0, 0, 1], a1 @ [c, c, 1])
    s = evaluate(case_dir, None, EngineConfig(backend="ort-cpu"))
    assert set(s.mask_dice) == {"femur", "tibia"}
    assert all(v["n"] == 1 and 0.0 <= v["mean"] <= 1.0 for v in s.mask_dice.values())
    assert "mask Dice femur" in format_summary(s)
    json.dumps(s.to_dict())
