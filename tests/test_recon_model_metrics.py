"""Reconstruction accuracy measures and the seed-range guards of the recon data loaders."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from appliance.errors import InputError
from export.recon import metrics as M


def _ball(n: int, r: float, centre: tuple[float, float, float]) -> np.ndarray:
    i, j, k = np.indices((n, n, n))
    return ((i - centre[0]) ** 2 + (j - centre[1]) ** 2 + (k - centre[2]) ** 2) <= r * r


def test_dice_and_surface_distance_of_shifted_balls() -> None:
    a = _ball(48, 12.0, (24, 24, 24))
    b = _ball(48, 12.0, (27, 24, 24))  # shifted 3 voxels along i
    assert M.dice(a, a) == 1.0
    assert 0.6 < M.dice(a, b) < 0.9
    assd, hd95 = M.assd_hd95(a, a, (1.0, 1.0, 1.0))
    assert assd == 0.0 and hd95 == 0.0
    assd, hd95 = M.assd_hd95(a, b, (1.0, 1.0, 1.0))
    assert 0.8 < assd < 3.0 and 2.0 <= hd95 <= 3.5
    # spacing scales distances
    assd2, _ = M.assd_hd95(a, b, (2.0, 2.0, 2.0))
    assert assd2 == pytest.approx(2.0 * assd, rel=1e-6)
    assert M.assd_hd95(a, np.zeros_like(a), (1.0, 1.0, 1.0)) == (math.inf, math.inf)


def test_psnr_and_ssim() -> None:
    rng = np.random.default_rng(0)
    truth = rng.uniform(-1000, 1500, (24, 24, 24)).astype(np.float32)
    assert M.psnr(truth, truth) == math.inf
    noisy = truth + rng.normal(0, 30.0, truth.shape).astype(np.float32)
    p = M.psnr(noisy, truth)
    assert p == pytest.approx(10 * math.log10(3000.0**2 / 900.0), abs=0.3)
    assert M.ssim3d(truth, truth) == pytest.approx(1.0, abs=1e-9)
    assert M.ssim3d(noisy, truth) < M.ssim3d(truth, truth)
    mask = np.zeros(truth.shape, bool)
    mask[:12] = True
    worse = noisy.copy()
    worse[12:] += 500.0  # outside the region: must not count
    assert M.psnr(worse, truth, mask) == pytest.approx(M.psnr(noisy, truth, mask))


def test_ncc() -> None:
    x = np.linspace(0, 1, 50)
    assert M.ncc(x, 3 * x + 2) == pytest.approx(1.0)
    assert M.ncc(x, -x) == pytest.approx(-1.0)


def test_loaders_refuse_the_wrong_seed_range(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from export.recon.data import EVAL_SEEDS, TRAIN_SEEDS
    from export.recon.dataset import load_samples
    from export.recon.evaluate import evaluate_all

    assert TRAIN_SEEDS[1] < EVAL_SEEDS[0]
    np.savez(tmp_path / "recon_520000_0.npz", hu=np.zeros(1))
    with pytest.raises(InputError):
        load_samples(tmp_path, TRAIN_SEEDS)
    other = tmp_path / "train"
    other.mkdir()
    np.savez(other / "recon_20000_0.npz", hu=np.zeros(1))
    with pytest.raises(InputError):
        evaluate_all(other, tmp_path)
