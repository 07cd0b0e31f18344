"""The shipped reconstruction model on one freshly simulated held-out anatomy (slow: simulation + decode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.recon.infer import DEFAULT_MODELS_DIR, ENCODER_MODEL

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (DEFAULT_MODELS_DIR / ENCODER_MODEL).is_file(), reason="no shipped recon model")
def test_shipped_model_finds_femur_and_tibia(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from export.recon.data import make_samples
    from export.recon.evaluate import evaluate_all

    # An evaluation-range seed never used in training or in the documented eval sets.
    make_samples(545000, tmp_path, poses=1)
    s = evaluate_all(tmp_path, DEFAULT_MODELS_DIR, threads=1)
    row = s["rows"]["biplanar"]
    # Far below the issue-5 targets (docs/recon.md), but a broken geometry or model gives ~0.
    assert row["dice_femur"]["mean"] > 0.5
    assert row["dice_tibia"]["mean"] > 0.5
    assert row["psnr_db"]["mean"] > 15.0
