"""Label-logit calibration (export/recon/calibrate.py) and its use at runtime (appliance/recon/infer.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import InputError
from appliance.recon.infer import (
    CUBE_VOXELS,
    DECODER_MODEL,
    LABEL_OFFSETS_META,
    N_CLASSES,
    Reconstructor,
    cube_affine,
    cube_to_film_matrix,
    film_frame,
    parse_label_offsets,
)
from export.recon.calibrate import (
    BAND,
    OFFSET_RANGE,
    REPORT_NAME,
    band_case,
    calibrate,
    case_dice,
    fit_offsets,
    mean_dice,
    write_offsets,
)

torch = pytest.importorskip("torch")

from export.recon.model import ReconNet  # noqa: E402
from export.recon.onnx_io import export_recon  # noqa: E402
from tests.test_recon_context import KNEE, _geoms  # noqa: E402


def _biased_case(rng: np.random.Generator, n: int, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.choice(N_CLASSES, size=n, p=[0.6, 0.15, 0.15, 0.05, 0.05]).astype(np.uint8)
    logits = 3.0 * np.eye(N_CLASSES, dtype=np.float32)[truth] + rng.normal(0, 1.5, (n, N_CLASSES))
    return (logits + bias).astype(np.float32), truth


def test_fit_offsets_undoes_a_logit_bias() -> None:
    rng = np.random.default_rng(3)
    bias = np.array([0.0, 0.0, 0.0, 2.0, 1.0], np.float32)  # fibula and patella over-predicted
    fair = [_biased_case(rng, 20000, np.zeros(N_CLASSES, np.float32)) for _ in range(4)]
    cases = [band_case(lg + bias, t) for lg, t in fair]
    off = fit_offsets(cases)
    assert off[0] == 0.0
    # The same logits without the bias fit to offsets larger by the bias (argmax(l + b + o) = argmax(l + o')).
    off_fair = fit_offsets([band_case(lg, t) for lg, t in fair])
    assert np.allclose(off - off_fair, -bias, atol=0.5)
    before, after = mean_dice(cases, np.zeros(N_CLASSES)), mean_dice(cases, off)
    assert after[2] > before[2] + 0.02 and after[3] > before[3] + 0.01
    # At least as good as undoing the known bias exactly (the fit maximises Dice, not accuracy).
    assert np.sum(after) >= np.sum(mean_dice(cases, -bias)) - 1e-3


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    offs=st.lists(st.floats(OFFSET_RANGE[0], OFFSET_RANGE[1]), min_size=4, max_size=4),
)
def test_band_counts_equal_the_full_argmax(seed: int, offs: list[float]) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, N_CLASSES, 3000).astype(np.uint8)
    logits = (rng.normal(0, 6.0, (3000, N_CLASSES))).astype(np.float32)
    off = np.array([0.0, *offs])
    pred = np.argmax(logits + off.astype(np.float32), axis=1)
    full = []
    for c in range(1, N_CLASSES):
        p, t = pred == c, truth == c
        den = 2 * (p & t).sum() + (p & ~t).sum() + (~p & t).sum()
        full.append(2 * (p & t).sum() / den if den else np.nan)
    got = case_dice(band_case(logits, truth, BAND), off)
    assert np.allclose(got, full, equal_nan=True)


def test_offset_metadata_is_validated() -> None:
    z = parse_label_offsets(None)
    assert set(z) == {"biplanar", "ap_only"} and not z["biplanar"].any()
    ok = parse_label_offsets(json.dumps({"biplanar": [0, -1, -0.5, -2, -3]}))
    assert ok["biplanar"].tolist() == [0, -1, -0.5, -2, -3] and not ok["ap_only"].any()
    for bad in (
        "{",
        json.dumps({"biplanar": [0, 1]}),
        json.dumps({"lateral": [0] * 5}),
        '{"ap_only": [0, 0, 0, 0, NaN]}',
    ):
        with pytest.raises(InputError) as e:
            parse_label_offsets(bad)
        assert e.value.reason == "bad_model_metadata"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("recon_models")
    torch.manual_seed(5)
    export_recon(ReconNet(learned=16, context=16), d, seed=5, cfg={"learned": 16, "context": 16})
    return d


def _frames(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = _geoms()
    affine = cube_affine(KNEE)
    frames = [
        film_frame(rng.random((g[k].rows, g[k].columns)).astype(np.float32), g[k], KNEE)
        for k in ("knee_ap", "knee_lat")
    ]
    mats = np.stack([cube_to_film_matrix(f.matrix, affine) for f in frames])
    return np.stack([f.image for f in frames]), mats, affine


def test_runtime_adds_the_offsets_of_its_mode(models: Path, tmp_path: Path) -> None:
    for f in models.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    offsets = {"biplanar": [0.0, -1.0, 0.5, -2.0, -3.0], "ap_only": [0.0, 0.0, 0.0, 1.0, 0.0]}
    write_offsets(tmp_path / DECODER_MODEL, offsets)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / DECODER_MODEL)).metadata_props}
    assert json.loads(meta[LABEL_OFFSETS_META]) == offsets and "xr3d.model_version" in meta
    frames, mats, _ = _frames(np.random.default_rng(1))
    pts = np.random.default_rng(2).uniform(-1, 1, (500, 3)).astype(np.float32)
    with Reconstructor(tmp_path) as r:
        for mode, present in (("biplanar", (1.0, 1.0)), ("ap_only", (1.0, 0.0))):
            enc = r.encode(frames, mats, np.array(present, np.float32))
            assert enc.mode == mode
            _, raw = r.decode(enc, pts, calibrated=False)
            _, cal = r.decode(enc, pts)
            assert np.allclose(cal - raw, np.array(offsets[mode], np.float32), atol=1e-6)
    # A decoder with broken offsets refuses to open, naming the metadata.
    model = onnx.load(str(tmp_path / DECODER_MODEL))
    for p in model.metadata_props:
        if p.key == LABEL_OFFSETS_META:
            p.value = json.dumps({"biplanar": [0, 1]})
    onnx.save(model, str(tmp_path / DECODER_MODEL))
    with pytest.raises(InputError) as e:
        Reconstructor(tmp_path)
    assert e.value.reason == "bad_model_metadata"


def _sample(folder: Path, seed: int) -> None:
    frames, mats, affine = _frames(np.random.default_rng(seed))
    labels = np.zeros((CUBE_VOXELS,) * 3, np.uint8)
    labels[30:70, 40:100, 40:100] = 1
    labels[75:110, 40:100, 40:100] = 2
    np.savez_compressed(
        folder / f"recon_{seed}_0.npz", seed=seed, films=frames, mats=mats, affine=affine, labels=labels
    )


def test_calibrate_writes_offsets_and_report_and_refuses_training_seeds(models: Path, tmp_path: Path) -> None:
    mdir, data = tmp_path / "m", tmp_path / "data"
    mdir.mkdir()
    data.mkdir()
    for f in models.iterdir():
        (mdir / f.name).write_bytes(f.read_bytes())
    _sample(data, 21001)
    with pytest.raises(InputError) as e:
        calibrate(mdir, data, train_seeds=[21001], stride=4)
    assert e.value.reason == "seed_overlap"
    cal = calibrate(mdir, data, train_seeds=[20000], stride=4)
    assert set(cal.offsets) == {"biplanar", "ap_only"} and cal.seeds == [21001]
    for mode in cal.offsets:
        assert np.nansum(cal.dice_after[mode]) >= np.nansum(cal.dice_before[mode]) - 1e-9
    report = json.loads((mdir / REPORT_NAME).read_text())
    assert report["offsets"] == cal.offsets
    with Reconstructor(mdir) as r:
        assert r.label_offsets["biplanar"].tolist() == pytest.approx(cal.offsets["biplanar"])
    with pytest.raises(InputError) as e:
        calibrate(mdir, tmp_path / "empty")
    assert e.value.reason == "no_data"
