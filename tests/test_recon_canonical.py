"""Knee-canonical reconstruction end to end on tiny synthetic samples: training in the turned cube, the
exported frame metadata, the orientation model (training, ONNX, held-out refusal) and the runtime that
turns the cube by the model's estimate or a given angle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from appliance.errors import InputError  # noqa: E402
from appliance.recon.infer import (  # noqa: E402
    FRAME_CANONICAL,
    FRAME_META,
    FRAME_PATIENT,
    ORIENT_MODEL,
    Reconstructor,
)
from appliance.recon.orientation import (  # noqa: E402
    ap_yaw_deg,
    axial_rotation,
    rotate_mats,
    to_canonical,
)
from export.recon.model import load_net  # noqa: E402
from export.recon.orient import (  # noqa: E402
    OrientConfig,
    OrientNet,
    evaluate_orient,
    export_orient,
    film_angle_deg,
    predict,
    train_orient,
)
from export.recon.train import TrainConfig, train_recon  # noqa: E402
from tests.test_recon_orientation import _plateau  # noqa: E402
from tests.test_recon_train_small import _write_samples  # noqa: E402


@pytest.fixture(scope="module")
def canonical_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("canon")
    data = root / "data"
    data.mkdir()
    _write_samples(data)
    cfg = TrainConfig(
        data=data,
        out=root / "run",
        seed=5,
        steps=2,
        n_uniform=128,
        n_surface=128,
        n_small=64,
        hidden=16,
        canonical=True,
    )
    train_recon(cfg)
    # The runtime needs an orientation model beside a canonical decoder; an untrained one serves the tests
    # that give the angle themselves (the orientation test below replaces it with a trained one).
    export_orient(OrientNet(width=8), root / "run", seed=0)
    return root


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def test_the_decoder_records_its_frame(canonical_run: Path) -> None:
    run = canonical_run / "run"
    assert _meta(run / "recon_decoder.onnx")[FRAME_META] == FRAME_CANONICAL
    doc = json.loads((run / "train_report.json").read_text())
    assert doc["config"]["canonical"] is True


def test_a_canonical_decoder_without_the_orientation_model_is_refused(
    canonical_run: Path, tmp_path: Path
) -> None:
    for f in (canonical_run / "run").glob("recon_*.onnx"):
        if f.name != ORIENT_MODEL:
            shutil.copy(f, tmp_path / f.name)
    with pytest.raises(InputError) as e:
        Reconstructor(tmp_path)
    assert e.value.reason == "model_missing" and ORIENT_MODEL in str(e.value)


def test_the_orientation_target_is_the_plateau_angle_relative_to_the_ap_film() -> None:
    mats = np.zeros((2, 3, 4), np.float32)
    t = np.radians(6.0)
    mats[0, 2, :3] = (-np.sin(t), np.cos(t), 0.0)  # the AP detector turned +6 deg
    mats[0, 2, 3] = 1.0
    assert ap_yaw_deg(mats[0]) == pytest.approx(6.0, abs=1e-4)
    assert film_angle_deg(_plateau(15.0), mats) == pytest.approx(9.0, abs=1.0)


def test_orientation_model_trains_exports_and_refuses_its_own_seeds(canonical_run: Path) -> None:
    data = canonical_run / "data"
    net, report = train_orient(
        OrientConfig(data=data, out=canonical_run / "orient", seed=2, epochs=1, width=8)
    )
    assert report["samples"] == 2 and report["train_seeds"] == [20000, 20001]
    assert np.isfinite(report["train_fit"]["mae_deg"])
    path, parity = export_orient(net, canonical_run / "run", seed=2)
    assert path.name == ORIENT_MODEL and parity < 1e-2
    assert _meta(path)["xr3d.model_version"].startswith("orient-")
    with pytest.raises(InputError) as e:
        evaluate_orient(net, data, set(report["train_seeds"]))
    assert e.value.reason == "seed_overlap"
    # The runtime: the estimate is the model's angle on the films plus the AP film's turn.
    with np.load(data / "recon_20000_0.npz") as d:
        films, mats, affine = d["films"].astype(np.float32), d["mats"], d["affine"]
    expected = float(predict(net, films[None].astype(np.float16))[0]) + ap_yaw_deg(mats[0])
    with Reconstructor(canonical_run / "run") as r:
        assert r.canonical
        assert r.estimate_axial_deg(films, mats) == pytest.approx(expected, abs=0.05)
        # Without the lateral film the model sees zeros in its place, as trained for AP-only studies.
        ap_films = films.copy()
        ap_films[1] = 0.0
        ap_expected = float(predict(net, ap_films[None].astype(np.float16))[0]) + ap_yaw_deg(mats[0])
        assert r.estimate_axial_deg(films, mats, (1.0, 0.0)) == pytest.approx(ap_expected, abs=0.05)
        rec = r.reconstruct_frames(films, mats, np.ones(2, np.float32), affine, refine=False)
        assert rec.axial_deg == pytest.approx(expected, abs=0.05)
        given = r.reconstruct_frames(
            films, mats, np.ones(2, np.float32), affine, refine=False, axial_deg=12.0
        )
        assert given.axial_deg == 12.0
        assert given.labels.data.shape == rec.labels.data.shape
        assert np.allclose(given.labels.affine, affine)  # outputs stay on the patient-aligned grid


def test_runtime_decodes_in_the_frame_training_used(canonical_run: Path) -> None:
    """ONNX Runtime with a given turn equals the PyTorch network fed exactly what train_step feeds it:
    matrices ``M R`` and points ``R^T p``."""
    run = canonical_run / "run"
    ck = torch.load(run / "recon.pt", map_location="cpu", weights_only=False)
    net = load_net(ck["net"], ck["config"]).eval()
    with np.load(canonical_run / "data" / "recon_20001_0.npz") as d:
        films, mats = d["films"].astype(np.float32), d["mats"].astype(np.float32)
    pts = np.random.default_rng(1).uniform(-1.0, 1.0, (500, 3)).astype(np.float32)
    present = np.ones(2, np.float32)
    R = axial_rotation(-17.0)
    with Reconstructor(run) as r:
        enc = r.encode(films, mats, present, axial_deg=-17.0)
        hu, logits = r.decode(enc, pts, calibrated=False)
    with torch.no_grad():
        feat = net.encoder(torch.from_numpy(films[:, None]))[None]
        m = torch.from_numpy(rotate_mats(mats, R))[None]
        pres = torch.from_numpy(present)[None]
        ctx = net.make_context(feat, m, pres)
        hu_t, lg_t = net.decoder(feat, m, pres, torch.from_numpy(to_canonical(pts, R))[None], ctx)
    assert np.abs(hu - hu_t[0].numpy()).max() < 1e-3
    assert np.abs(logits - lg_t[0].numpy()).max() < 1e-3
    # And a turn does change what is decoded (the frame is not ignored).
    with Reconstructor(run) as r:
        hu0, _ = r.decode(r.encode(films, mats, present, axial_deg=0.0), pts, calibrated=False)
    assert np.abs(hu0 - hu).max() > 1e-4


def test_a_patient_frame_model_is_unchanged_by_the_axial_argument(
    canonical_run: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(
        data=canonical_run / "data",
        out=tmp_path / "run",
        seed=6,
        steps=1,
        n_uniform=64,
        n_surface=64,
        n_small=32,
        hidden=16,
    )
    train_recon(cfg)
    assert _meta(tmp_path / "run" / "recon_decoder.onnx")[FRAME_META] == FRAME_PATIENT
    with np.load(canonical_run / "data" / "recon_20000_0.npz") as d:
        films, mats = d["films"].astype(np.float32), d["mats"]
    pts = np.random.default_rng(2).uniform(-1.0, 1.0, (300, 3)).astype(np.float32)
    with Reconstructor(tmp_path / "run") as r:
        assert not r.canonical
        a = r.decode(r.encode(films, mats, np.ones(2, np.float32)), pts)[0]
        enc = r.encode(films, mats, np.ones(2, np.float32), axial_deg=20.0)
        b = r.decode(enc, pts)[0]
    assert np.array_equal(a, b)
    assert enc.axial_deg is None and enc.rotation is None  # nothing turned, nothing reported
