"""Learned film encoder (recon-1.1): ray-bound decoding, warm start, ORT-friendly export, loss sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from appliance.recon.infer import CUBE_VOXELS, FILM_PX, cube_affine, cube_to_film_matrix, film_frame  # noqa: E402
from export.recon.dataset import (  # noqa: E402
    ReconSample,
    bone_edge_points,
    bone_edge_voxels,
    index_to_norm,
    small_bone_points,
    surface_voxels,
)
from export.recon.model import N_FIXED, ReconNet, load_film_cnn, load_net, widen_first_layer  # noqa: E402
from export.recon.onnx_io import PARITY_TOL, export_recon  # noqa: E402
from export.recon.train import (  # noqa: E402
    CLASS_W_MAX,
    HARD_FAR_JITTER,
    HARD_JITTER,
    HARD_POOL,
    class_weights,
    mine_hard_points,
)
from tests.test_recon_model import KNEE, _geoms  # noqa: E402


def _mats() -> Any:
    aff = cube_affine(KNEE)
    return torch.from_numpy(
        np.stack(
            [
                cube_to_film_matrix(film_frame(np.zeros((x.rows, x.columns)), x, KNEE).matrix, aff)
                for x in _geoms().values()
            ]
        )
    )[None]


def test_learned_features_reach_a_point_only_along_its_ray() -> None:
    torch.manual_seed(1)
    net = ReconNet(learned=16).eval()
    films = torch.rand(1, 2, FILM_PX, FILM_PX)
    mats, present = _mats(), torch.ones(1, 2)
    pts = torch.tensor([[[0.0, 0.0, 0.0]]])
    with torch.no_grad():
        feats = net.encode(films)
        assert feats.shape == (1, 2, N_FIXED + 16, FILM_PX, FILM_PX)
        hu0, lg0 = net.decoder(feats, mats, present, pts)
        far = films.clone()
        far[:, :, :40, :40] = 0.0
        hu1, lg1 = net.decoder(net.encode(far), mats, present, pts)
        near = films.clone()
        near[:, 0, 120:136, 120:136] = 1.0 - near[:, 0, 120:136, 120:136]
        hu2, _ = net.decoder(net.encode(near), mats, present, pts)
    assert torch.allclose(hu0, hu1) and torch.allclose(lg0, lg1)
    assert not torch.allclose(hu0, hu2)


def test_widened_decoder_starts_where_the_old_one_was() -> None:
    torch.manual_seed(2)
    old, new = ReconNet(learned=0).eval(), ReconNet(learned=16).eval()
    widen_first_layer(old.decoder, new.decoder)
    films = torch.rand(1, 2, FILM_PX, FILM_PX)
    pts = torch.rand(1, 300, 3) * 2.0 - 1.0
    present = torch.tensor([[1.0, 0.0]])
    with torch.no_grad():
        a = old.decoder(old.encode(films), _mats(), present, pts)
        b = new.decoder(new.encode(films), _mats(), present, pts)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
    # ... and a checkpoint round trip rebuilds the same network from its config.
    again = load_net(new.state_dict(), {"hidden": 64, "learned": 16}).eval()
    with torch.no_grad():
        c = again.decoder(again.encode(films), _mats(), present, pts)
    assert torch.equal(b[0], c[0])


def test_export_is_channels_first_and_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(4)
    net = ReconNet(learned=16)
    paths, parity = export_recon(net, tmp_path, seed=4, cfg={"learned": 16})
    assert max(parity.values()) < PARITY_TOL
    ops = [n.op_type for n in onnx.load(str(paths[1])).graph.node]
    # The point MLP is 1x1 convolutions (5 layers), no MatMul left in the decoder graph.
    assert ops.count("Conv") == 5 and "MatMul" not in ops and ops.count("GridSample") == 1


def test_full_resolution_film_level_starts_where_the_old_encoder_was_and_learns() -> None:
    torch.manual_seed(5)
    old, new = ReconNet(learned=16).eval(), ReconNet(learned=16, fine_film=8).eval()
    assert old.encoder.cnn is not None and new.encoder.cnn is not None
    load_film_cnn(old.encoder.cnn, new.encoder.cnn)
    films = torch.rand(1, 2, FILM_PX, FILM_PX)
    with torch.no_grad():
        assert torch.equal(old.encode(films), new.encode(films))
    # The zero head still gets a gradient (its input is the level's maps), so the level trains.
    new.encode(films).square().mean().backward()
    head = new.encoder.cnn.fine_head
    assert head is not None and head.weight.grad is not None and float(head.weight.grad.abs().max()) > 0.0
    # After a step the level changes the maps at full resolution: a 1-pixel detail moves them there.
    with torch.no_grad():
        head.weight.add_(0.1 * torch.randn_like(head.weight))
        dot = films.clone()
        dot[0, 0, 128, 128] = 1.0 - dot[0, 0, 128, 128]
        a, b = new.encode(films), new.encode(dot)
        a_old, b_old = old.encode(films), old.encode(dot)
    diff_new = float((a - b)[0, 0, N_FIXED:, 128, 128].abs().max())
    diff_old = float((a_old - b_old)[0, 0, N_FIXED:, 128, 128].abs().max())
    assert diff_new > diff_old
    # A checkpoint round trip rebuilds it from the config key; dropping the level is refused.
    again = load_net(new.state_dict(), {"hidden": 64, "learned": 16, "fine_film": 8}).eval()
    with torch.no_grad():
        assert torch.equal(again.encode(films), a)
    with pytest.raises(ValueError, match="full-resolution"):
        load_film_cnn(new.encoder.cnn, old.encoder.cnn)
    with pytest.raises(ValueError, match="needs the learned CNN"):
        ReconNet(learned=0, fine_film=8)


def test_export_with_the_full_resolution_level_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(6)
    net = ReconNet(learned=16, fine_film=8)
    cnn = net.encoder.cnn
    assert cnn is not None and cnn.fine_head is not None
    with torch.no_grad():
        cnn.fine_head.weight.normal_(0.0, 0.2)  # a trained level, not the zero start
    _, parity = export_recon(net, tmp_path, seed=6, cfg={"learned": 16, "fine_film": 8})
    assert max(parity.values()) < PARITY_TOL


def _toy_sample() -> ReconSample:
    n = CUBE_VOXELS
    lab = np.zeros((n, n, n), np.uint8)
    lab[20:80, 20:80, 20:80] = 1
    lab[90:96, 30:36, 30:60] = 3
    lab[100:110, 100:110, 100:108] = 4
    hu = (lab > 0).astype(np.int16) * 700
    return ReconSample(
        1, 0, hu, lab, np.zeros((2, 8, 8), np.float32), np.zeros((2, 3, 4), np.float32), np.eye(4),
        surface_voxels(lab, hu), 0.0, bone_edge_voxels(lab),
    )  # fmt: skip


def test_small_bone_points_sit_on_fibula_and_patella() -> None:
    s = _toy_sample()
    idx = small_bone_points(s, np.random.default_rng(0), 500)
    ijk = np.stack(np.unravel_index(idx, s.labels.shape), axis=-1)
    fib = (ijk >= [88, 28, 28]).all(1) & (ijk <= [97, 37, 61]).all(1)
    pat = (ijk >= [98, 98, 98]).all(1) & (ijk <= [111, 111, 109]).all(1)
    assert (fib | pat).all() and 200 <= fib.sum() <= 300


def test_bone_edge_points_sit_on_the_femur_and_tibia_boundary_only() -> None:
    s = _toy_sample()
    edges = set(s.bone_edges.tolist())
    # The femur cube's faces, both sides: none from the fibula or patella boxes, none from its interior.
    ijk = np.stack(np.unravel_index(s.bone_edges, s.labels.shape), axis=-1)
    assert ((ijk >= 19) & (ijk <= 80)).all() and not ((ijk >= 21) & (ijk <= 78)).all(1).any()
    assert len(edges) == (60**3 - 58**3) + 6 * 60**2  # inner shell + face-adjacent outside voxels
    idx = bone_edge_points(s, np.random.default_rng(0), 500)
    near = np.stack(np.unravel_index(idx, s.labels.shape), axis=-1)
    assert ((near >= 18) & (near <= 81)).all() and not ((near >= 22) & (near <= 77)).all(1).any()
    no_edges = ReconSample(s.seed, s.pose, s.hu, s.labels, s.films, s.mats, s.affine, s.surface)
    assert bone_edge_points(no_edges, np.random.default_rng(0), 7).shape == (7,)


def test_class_weights_favour_the_small_bones() -> None:
    w = class_weights([_toy_sample()]).numpy()
    assert w.shape == (5,) and np.all(w >= 1.0) and np.all(w <= CLASS_W_MAX)
    assert w[3] > w[1] and w[4] > w[1] and w[0] == 1.0


def test_hard_points_are_the_worst_boundary_candidates() -> None:
    torch.manual_seed(0)
    s = _toy_sample()
    net = ReconNet(hidden=16)
    feat = torch.randn(1, 2, N_FIXED, 32, 32)
    mats, present = _mats(), torch.ones(1, 2)
    hard = mine_hard_points(net, feat, mats, present, None, [s], None, np.random.default_rng(3), 50)[0]
    # Replay the candidates and score them all: the picks are exactly the 50 highest cross-entropies.
    cand = bone_edge_points(s, np.random.default_rng(3), HARD_POOL * 50, jitter=HARD_JITTER)
    pts = torch.from_numpy(index_to_norm(cand)[None])
    with torch.no_grad():
        _, logits = net.decoder(feat, mats, present, pts)
    ce_all = torch.nn.functional.cross_entropy(
        logits[0], torch.from_numpy(s.labels.reshape(-1)[cand]).long(), reduction="none"
    ).numpy()
    assert sorted(hard.tolist()) == sorted(cand[np.argsort(-ce_all)[:50]].tolist())
    assert ce_all[np.isin(cand, hard)].min() >= np.median(ce_all)
    # within 2 voxels of the femur box's faces
    near = np.stack(np.unravel_index(hard, s.labels.shape), axis=-1)
    assert ((near >= 17) & (near <= 82)).all() and not ((near >= 23) & (near <= 76)).all(1).any()
    # A share of far candidates (up to HARD_FAR_JITTER voxels off the boundary) joins the pool.
    far = mine_hard_points(net, feat, mats, present, None, [s], None, np.random.default_rng(4), 50, far=0.5)[
        0
    ]
    rng = np.random.default_rng(4)
    pool = np.concatenate(
        [
            bone_edge_points(s, rng, HARD_POOL * 25, jitter=HARD_JITTER),
            bone_edge_points(s, rng, HARD_POOL * 25, jitter=HARD_FAR_JITTER),
        ]
    )
    assert len(far) == 50 and np.isin(far, pool).all()
