"""3D shape context (recon-1.2): trilinear sampling form, back-projection geometry, warm start, ONNX
export and the runtime with the third model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
F = torch.nn.functional

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from appliance.errors import InputError  # noqa: E402
from appliance.recon.infer import CONTEXT_MODEL, CUBE_VOXELS, FILM_PX, Reconstructor  # noqa: E402
from engines.opcheck import check_onnx_file  # noqa: E402
from export.recon.context import GRID, back_project, grid_points, project, sample_volume  # noqa: E402
from export.recon.model import ReconNet, net_from_config, widen_first_layer  # noqa: E402
from export.recon.onnx_io import PARITY_TOL, export_recon  # noqa: E402
from tests.test_recon_model import KNEE, _geoms  # noqa: E402
from tests.test_recon_model_learned import _mats  # noqa: E402


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), spread=st.floats(0.2, 1.3))
def test_tiled_sampling_is_trilinear_interpolation(seed: int, spread: float) -> None:
    """The 2D-GridSample form equals PyTorch's own 3D trilinear sampling (border outside the cube), to the
    fp32 resolution of a row position in the 1024-row tiling (~1e-4 pixel)."""
    g = torch.Generator().manual_seed(seed)
    vol = torch.rand(1, 3, GRID, GRID, GRID, generator=g)
    pts = (torch.rand(1, 500, 3, generator=g) * 2.0 - 1.0) * spread
    ref = F.grid_sample(
        vol, pts.flip(-1).view(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border", align_corners=True
    ).view(1, 3, -1)
    assert torch.allclose(sample_volume(vol, pts), ref, atol=3e-4)


def test_grid_points_sample_their_own_voxels() -> None:
    vol = torch.arange(GRID**3, dtype=torch.float32).view(1, 1, GRID, GRID, GRID)
    got = sample_volume(vol, grid_points()[None])
    assert torch.allclose(got.view(-1), vol.view(-1), atol=0.05)  # values up to 32767: fp32 positions


def test_back_projection_follows_the_real_ray() -> None:
    """A bright spot on the AP film lights exactly the grid points whose ray passes through it."""
    mats = _mats()
    target = torch.tensor([[[0.3, -0.2, 0.1]]])
    uv = project(mats, target)[0, 0, 0]  # normalised frame position of the target on the AP film
    film = torch.zeros(1, 2, 1, FILM_PX, FILM_PX)
    px = ((uv + 1.0) * 0.5 * (FILM_PX - 1)).round().long()
    film[0, 0, 0, px[1] - 1 : px[1] + 2, px[0] - 1 : px[0] + 2] = 1.0
    pts = grid_points()[None]
    bp = back_project(film, mats, torch.ones(1, 2), pts)[0]  # (2, G^3): AP, lateral
    lit = pts[0][bp[0] > 0.2]
    assert len(lit) >= GRID // 2  # the ray crosses the whole cube
    assert float(bp[1].abs().max()) == 0.0  # nothing on the lateral film
    # Every lit grid point projects onto the spot (within the 3-pixel spot, in normalised units).
    d = (project(mats, lit[None])[0, 0] - uv).abs().max()
    assert float(d) < 3.0 / (FILM_PX - 1) * 2.0
    # ... and the absent flag removes the view.
    assert float(back_project(film, mats, torch.tensor([[0.0, 1.0]]), pts).abs().max()) == 0.0


def test_context_model_is_a_widened_recon_11() -> None:
    """Warm start from a model without context: the context columns start at zero, so the new model
    computes exactly what the old one did, whatever its context volume holds."""
    torch.manual_seed(6)
    old, new = ReconNet(learned=16).eval(), ReconNet(learned=16, context=16).eval()
    widen_first_layer(old.decoder, new.decoder)
    assert new.encoder.cnn is not None and old.encoder.cnn is not None
    new.encoder.cnn.load_state_dict(old.encoder.cnn.state_dict())
    films = torch.rand(1, 2, FILM_PX, FILM_PX)
    pts = torch.rand(1, 400, 3) * 2.0 - 1.0
    present = torch.ones(1, 2)
    with torch.no_grad():
        feats = new.encode(films)
        ctx = new.make_context(feats, _mats(), present)
        assert ctx is not None and ctx.shape == (1, 16, GRID, GRID, GRID)
        a = old.decoder(old.encode(films), _mats(), present, pts)
        b = new.decoder(feats, _mats(), present, pts, ctx)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    with pytest.raises(ValueError, match="context"):
        new.decoder(feats, _mats(), present, pts)


def test_context_export_parity_opcheck_and_runtime(tmp_path: Path) -> None:
    torch.manual_seed(7)
    net = ReconNet(learned=16, context=16)
    paths, parity = export_recon(net, tmp_path, seed=7, cfg={"learned": 16, "context": 16})
    assert [p.name for p in paths] == ["recon_encoder.onnx", CONTEXT_MODEL, "recon_decoder.onnx"]
    assert max(parity.values()) < PARITY_TOL and "context_ap_only" in parity
    for p in paths:
        report = check_onnx_file(p)
        assert report.ok and not report.warnings, report.summary()
    names = [i.name for i in onnx.load(str(paths[2])).graph.input]
    assert names == ["features", "mats", "present", "context", "points"]
    # The runtime opens all three and its voxels equal PyTorch at the same points.
    g = _geoms()
    rng = np.random.default_rng(8)
    films = {k: (rng.random((x.rows, x.columns)).astype(np.float32), x) for k, x in g.items()}
    with Reconstructor(tmp_path) as r:
        a = r.reconstruct(films, refine=False)
    assert a.hu.shape == (CUBE_VOXELS,) * 3 and np.allclose(a.centre_mm, KNEE)
    from appliance.recon.infer import cube_to_film_matrix, film_frame

    with torch.no_grad():
        frames = [film_frame(films[k][0], films[k][1], KNEE) for k in ("knee_ap", "knee_lat")]
        mats = torch.from_numpy(np.stack([cube_to_film_matrix(f.matrix, a.hu.affine) for f in frames]))[None]
        feats = net.encode(torch.from_numpy(np.stack([f.image for f in frames]))[None])
        ctx = net.make_context(feats, mats, torch.ones(1, 2))
        idx = np.array([[0, 0, 0], [70, 72, 10], [142, 2, 96]])
        pts = torch.from_numpy((idx * 2.0 / (CUBE_VOXELS - 1) - 1.0).astype(np.float32))[None]
        hu_t, _ = net.decoder(feats, mats, torch.ones(1, 2), pts, ctx)
    got = a.hu.data[idx[:, 0], idx[:, 1], idx[:, 2]] / 1000.0
    assert np.allclose(got, hu_t.numpy()[0], atol=PARITY_TOL)
    # A decoder that needs the context refuses to open without its file.
    (tmp_path / CONTEXT_MODEL).unlink()
    with pytest.raises(InputError) as e:
        Reconstructor(tmp_path)
    assert e.value.reason == "model_missing"


def test_a_wider_decoder_starts_as_the_narrow_one_and_learns() -> None:
    """Warm start into wider hidden layers (hidden 64 -> 128): same function at the start; the added units
    get gradients (their outgoing weights), so they are not dead."""
    torch.manual_seed(9)
    old = ReconNet(hidden=64, learned=16, context=16).eval()
    new = ReconNet(hidden=128, learned=16, context=16).eval()
    widen_first_layer(old.decoder, new.decoder)
    films = torch.rand(1, 2, FILM_PX, FILM_PX)
    pts = torch.rand(1, 300, 3) * 2.0 - 1.0
    present = torch.ones(1, 2)
    with torch.no_grad():
        feats = old.encode(films)
        ctx = torch.randn(1, 16, GRID, GRID, GRID)
        a = old.decoder(feats, _mats(), present, pts, ctx)
    b = new.decoder(feats, _mats(), present, pts, ctx)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    (b[0].square().mean() + b[1].square().mean()).backward()
    last = new.decoder.mlp[-1]
    assert isinstance(last, torch.nn.Linear) and last.weight.grad is not None
    assert last.weight.grad[:, 32:].abs().sum() > 0  # the added units' outgoing weights learn


def test_a_finer_context_grid_warm_starts_exports_and_runs(tmp_path: Path) -> None:
    """The context grid is a config value (``context_grid``): the convolutions do not depend on it, so a
    finer grid loads a coarser one's weights; the grid reaches the checkpoint config, the ONNX context
    output and the runtime, which samples whatever grid the context model produces."""
    with pytest.raises(ValueError, match="multiple of 4"):
        ReconNet(learned=16, context=16, context_grid=30)
    torch.manual_seed(10)
    coarse = ReconNet(learned=16, context=16)
    fine = net_from_config({"learned": 16, "context": 16, "context_grid": 16})
    assert fine.context is not None and coarse.context is not None
    fine.context.load_state_dict(coarse.context.state_dict())
    fine.decoder.load_state_dict(coarse.decoder.state_dict())
    assert net_from_config({"learned": 16, "context": 16}).context.grid_n == GRID  # type: ignore[union-attr]
    paths, parity = export_recon(
        fine, tmp_path, seed=10, cfg={"learned": 16, "context": 16, "context_grid": 16}
    )
    assert max(parity.values()) < PARITY_TOL
    out = onnx.load(str(paths[1])).graph.output[0]
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims[-3:] == [16, 16, 16]
    g = _geoms()
    rng = np.random.default_rng(11)
    films = {k: (rng.random((x.rows, x.columns)).astype(np.float32), x) for k, x in g.items()}
    with Reconstructor(tmp_path) as r:
        a = r.reconstruct(films, refine=False)
    assert a.hu.shape == (CUBE_VOXELS,) * 3 and np.isfinite(a.hu.data).all()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), w=st.integers(8, 64), h=st.integers(8, 64))
def test_back_projection_samples_the_align_corners_true_positions(seed: int, w: int, h: int) -> None:
    """``back_project`` samples with ``align_corners=False`` (ONNX Runtime's fast path) at remapped
    coordinates; it must equal sampling the projected positions with ``align_corners=True``, inside the
    frame, at its edges and outside (zero padding)."""
    g = torch.Generator().manual_seed(seed)
    feat = torch.rand(1, 2, 3, h, w, generator=g)
    mats = torch.randn(1, 2, 3, 4, generator=g) * 0.5
    mats[..., 2, 3] = 2.0
    pts = torch.rand(1, 400, 3, generator=g) * 2.4 - 1.2
    present = torch.tensor([[1.0, 1.0]])
    uv = project(mats, pts).reshape(2, 1, 400, 2)
    ref = torch.nn.functional.grid_sample(
        feat.reshape(2, 3, h, w), uv, mode="bilinear", padding_mode="zeros", align_corners=True
    ).reshape(1, 6, 400)
    got = back_project(feat, mats, present, pts)
    assert torch.allclose(got, ref, atol=1e-5)
