"""``train_recon`` end to end on two tiny synthetic samples: steps, checkpoint, report, ONNX export; the
report survives a failed export."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from appliance.errors import InputError  # noqa: E402
from appliance.recon.infer import CONTEXT_MODEL, CUBE_VOXELS, FILM_PX, ORIENT_MODEL, cube_affine  # noqa: E402
from export.recon.calibrate import calibrate, ensure_orient_model  # noqa: E402
from export.recon.train import TrainConfig, train_recon  # noqa: E402
from tests.test_recon_model import KNEE  # noqa: E402
from tests.test_recon_model_learned import _mats  # noqa: E402


def _write_samples(folder: Path, seeds: tuple[int, ...] = (20000, 20001)) -> None:
    rng = np.random.default_rng(0)
    n = CUBE_VOXELS
    g = np.indices((n, n, n), dtype=np.float32)
    for seed in seeds:
        labels = np.zeros((n, n, n), np.uint8)
        labels[((g - 50.0) ** 2).sum(0) < 30.0**2] = 1
        labels[((g - 95.0) ** 2).sum(0) < 25.0**2] = 2
        labels[((g - np.array([70.0, 110.0, 72.0])[:, None, None, None]) ** 2).sum(0) < 6.0**2] = 3
        labels[((g - np.array([30.0, 72.0, 120.0])[:, None, None, None]) ** 2).sum(0) < 9.0**2] = 4
        hu = np.where(labels > 0, 700, 0).astype(np.int16) + rng.integers(-20, 20, labels.shape).astype(
            np.int16
        )
        np.savez_compressed(
            folder / f"recon_{seed}_0.npz",
            hu=hu,
            labels=labels,
            films=rng.random((2, FILM_PX, FILM_PX)).astype(np.float16),
            mats=_mats()[0].numpy().astype(np.float32),
            affine=cube_affine(KNEE),
            seed=seed,
        )


def test_train_recon_writes_checkpoint_report_and_onnx(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_samples(data)
    cfg = TrainConfig(
        data=data, out=tmp_path / "run", seed=3, steps=4, n_uniform=256, n_surface=256, n_small=128
    )
    res = train_recon(cfg)
    assert res.steps == 4 and res.checkpoint.is_file() and res.loss_plot.is_file()
    doc = json.loads(res.report.read_text())
    assert doc["steps"] == 4 and doc["seed_range"] == [20000, 20001] and doc["config"]["context"] == 16
    assert [Path(p).name for p in doc["onnx"]][1] == CONTEXT_MODEL
    assert max(doc["parity_max_abs_diff"].values()) < 1e-3
    assert all(np.isfinite(v) for v in doc["final_losses"].values())


def test_report_survives_a_failed_export(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_samples(data)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the models folder should go")
    cfg = TrainConfig(
        data=data,
        out=tmp_path / "run",
        seed=4,
        steps=2,
        n_uniform=128,
        n_surface=128,
        n_small=64,
        n_bone=64,  # the femur/tibia boundary points go through a training step too
        n_hard=32,  # and so do the mined hard points
        context=0,
        learned=0,
        models_dir=blocker,
    )
    with pytest.raises(OSError):
        train_recon(cfg)
    doc = json.loads((tmp_path / "run" / "train_report.json").read_text())
    assert doc["steps"] == 2 and doc["onnx"] == [] and doc["config"]["n_bone"] == 64
    assert doc["config"]["n_hard"] == 32
    assert all(np.isfinite(v) for v in doc["final_losses"].values())
    assert (tmp_path / "run" / "recon.pt").is_file()


def test_a_canonical_calibration_gets_the_shipped_orientation_model(tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / ORIENT_MODEL).write_bytes(b"orientation model")
    run = tmp_path / "run"
    run.mkdir()
    path = ensure_orient_model(run, shipped)
    assert path == run / ORIENT_MODEL and path.read_bytes() == b"orientation model"
    # One already beside the new models (e.g. a newly trained one) is kept.
    path.write_bytes(b"newer")
    assert ensure_orient_model(run, shipped).read_bytes() == b"newer"
    with pytest.raises(InputError) as e:
        ensure_orient_model(tmp_path / "empty_run_dir_is_fine", tmp_path / "nowhere")
    assert e.value.reason == "model_missing"


def test_calibrating_a_canonical_model_brings_the_orientation_model_along(tmp_path: Path) -> None:
    # `xr3d train recon-calibrate` on a knee-canonical run folder, which has no recon_orient.onnx of its own:
    # the shipped one is copied beside the new decoder and the calibration runs through it.
    data, held_out = tmp_path / "data", tmp_path / "calib"
    data.mkdir()
    held_out.mkdir()
    _write_samples(data)
    _write_samples(held_out, seeds=(21000,))
    run = tmp_path / "run"
    cfg = TrainConfig(
        data=data, out=run, seed=5, steps=1, n_uniform=64, n_surface=64, n_small=32, context=0, canonical=True
    )
    train_recon(cfg)
    assert not (run / ORIENT_MODEL).exists()
    cal = calibrate(run, held_out, train_seeds=(20000, 20001), stride=6)
    assert (run / ORIENT_MODEL).is_file() and cal.seeds == [21000]
    assert set(cal.offsets) == {"biplanar", "ap_only"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--p-drop-lat", "1.5"], "--p-drop-lat must lie in [0, 1], got 1.5"),
        (["--hard-far", "1.5"], "--hard-far must lie in [0, 1], got 1.5"),
        (["--lr=0"], "--lr must lie in (0, 0.1]"),
        (["--lr=-1e-3"], "--lr must lie in (0, 0.1]"),
        (["--lr=0.5"], "--lr must lie in (0, 0.1]"),
        (["--fine-film", "8", "--learned", "0"], "--fine-film needs --learned > 0"),
    ],
)
def test_train_cli_refuses_a_bad_argument_before_creating_the_run(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli.main import main

    args = ["train", "recon", "--out", str(tmp_path / "run"), "--seed", "1", *extra]
    assert main(args) == 2
    assert f"[bad_argument] {message}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_cli_passes_the_lateral_drop_rate_and_learning_rate_to_the_run(tmp_path: Path) -> None:
    from appliance.cli.main import main

    data = tmp_path / "data"
    data.mkdir()
    _write_samples(data)
    out = tmp_path / "run"
    args = ["train", "recon", "--out", str(out), "--seed", "3", "--data", str(data), "--steps", "1"]
    args += ["--p-drop-lat", "1.0", "--lr", "4e-4", "--context", "0", "--learned", "0", "--no-export"]
    assert main(args) == 0
    doc = json.loads((out / "train_report.json").read_text())
    assert doc["config"]["p_drop_lat"] == 1.0 and doc["config"]["lr"] == 4e-4 and doc["steps"] == 1


def test_a_warm_start_can_add_the_full_resolution_film_level(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_samples(data)
    base = TrainConfig(
        data=data, out=tmp_path / "a", seed=3, steps=1, n_uniform=128, n_surface=128, n_small=64, context=0,
        export=False,
    )  # fmt: skip
    first = train_recon(base)
    res = train_recon(replace(base, out=tmp_path / "b", init_from=first.checkpoint, fine_film=4))
    ck = torch.load(res.checkpoint, map_location="cpu", weights_only=False)
    assert ck["config"]["fine_film"] == 4 and any(k.startswith("encoder.cnn.fine.") for k in ck["net"])
