"""``xr3d eval knee-landmarks``: refuses training seeds; on a real simulated eval case (slow) reports
per-landmark errors, angle errors and timings through a real ONNX Runtime session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli.main import main
from export.datasets.landmark_samples import SeedRangeError

torch = pytest.importorskip("torch")


def test_eval_refuses_training_seeds(tmp_path: Path) -> None:
    from export.evaluation.knee_eval import evaluate_knee

    case = tmp_path / "case_4000"
    case.mkdir()
    (case / "truth.json").write_text("{}")
    with pytest.raises(SeedRangeError):
        evaluate_knee(tmp_path)


@pytest.mark.slow
def test_eval_on_a_simulated_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from export.models.knee_landmark_net import CHANNELS, KNEE_GEOMETRY, KneeLandmarkNet
    from export.simulator.case import CaseOptions, generate_case
    from export.training.knee_landmarks import KNEE_ONNX, MODEL_VERSION, export_knee_model

    opts = CaseOptions(views=("knee-ap", "knee-lat"), write_ct=False, knee_pitch=0.5, knee_spacing=1.0)
    generate_case(500599, tmp_path / "eval", opts)  # held-out range (docs/knee-landmarks.md)
    models = tmp_path / "models"
    meta = {
        "version": MODEL_VERSION,
        "training_seed": 1,
        "input_geometry": KNEE_GEOMETRY.to_dict(),
        "channels": list(CHANNELS),
        "views": {
            "knee_ap": ["FKC", "MDFC", "LDFC", "MTP", "LTP", "TKC"],
            "knee_lat": ["FKC", "TKC", "MTPA", "MTPP", "FAX", "TAX"],
        },
    }
    g = KNEE_GEOMETRY
    export_knee_model(KneeLandmarkNet(), models / KNEE_ONNX, meta, torch.zeros((1, 1, g.rows, g.cols)))
    rc = main(
        ["eval", "knee-landmarks", "--data", str(tmp_path / "eval"), "--models-dir", str(models), "--json"]
    )
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    assert s["seeds"] == [500599] and s["films"] == 2
    assert s["landmark_error_mm"]["per_view"]["knee_ap"]["n"] == 6
    assert s["landmark_error_mm"]["all"]["median"] > 0
    assert set(s["angles_abs_error_deg"]) == {"JLCA", "tibial_slope_deg", "knee_flexion_deg"}
    # The truth measured on its own projections agrees with the 3D truth to a few degrees.
    assert s["angles_abs_error_deg"]["tibial_slope_deg"]["truth2d_vs_3d"]["mean"] < 4.0
    assert s["seconds_per_film"]["n"] == 2 and s["ap_orientation_from_image"]["films"] == 1
